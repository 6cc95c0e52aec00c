//! The `runnel` CLI against the real broker: stdout, stderr and exit codes of real runs.
//!
//! Exit codes (docs/cli.md): 0 ok, 1 other failure, 2 usage, 3 not found, 4 connection,
//! 5 not allowed (tested with authentication on, in `security.rs`).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{Broker, free_addr, runnel, runnel_command, wait_bounded};

/// A `runnel` command with a clean environment, talking to `b`.
fn cli(b: &Broker) -> Command {
    let mut cmd = runnel_command();
    cmd.arg("--broker").arg(b.grpc.to_string());
    cmd
}

fn run(b: &Broker, args: &[&str]) -> Output {
    cli(b).args(args).output().expect("run runnel")
}

fn run_with_input(b: &Broker, args: &[&str], input: &[u8]) -> Output {
    let mut child = cli(b)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for runnel");
    writer.join().expect("writer").expect("write stdin");
    out
}

/// Asserts success and returns stdout.
fn ok(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "runnel {args:?} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

fn run_ok(b: &Broker, args: &[&str]) -> String {
    ok(args, &run(b, args))
}

fn json(b: &Broker, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let stdout = run_ok(b, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

/// Asserts a failure: the exit code, one line on stderr naming `needle`, nothing on stdout.
fn assert_error(args: &[&str], out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "runnel {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "runnel {args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(stderr.starts_with("runnel: "), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
}

fn lines(n: usize, f: impl Fn(usize) -> String) -> Vec<String> {
    (0..n).map(f).collect()
}

fn input_of(lines: &[String]) -> Vec<u8> {
    let mut input = lines.join("\n").into_bytes();
    input.push(b'\n');
    input
}

#[tokio::test]
async fn cli_produces_20000_lines_over_3_partitions_and_consumes_exactly_them() {
    let b = Broker::start().await;
    let out = run_ok(&b, &["topic", "create", "bulk", "--partitions", "3"]);
    assert_eq!(out, "topic \"bulk\" has 3 partition(s)\n");

    let sent = lines(20_000, |i| format!("key-{i}\tvalue-{i}"));
    let args = ["produce", "bulk", "--key-separator", "\\t"];
    let out = run_with_input(&b, &args, &input_of(&sent));
    assert!(
        ok(&args, &out).is_empty(),
        "produce prints nothing on stdout"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("produced 20000 record(s)"), "{stderr:?}");

    // Keys spread the records over the three partitions.
    let d = json(&b, &["topic", "describe", "bulk"]);
    let ends: Vec<u64> = d["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["log_end_offset"].as_u64().expect("log end"))
        .collect();
    assert_eq!(ends.len(), 3);
    assert_eq!(ends.iter().sum::<u64>(), 20_000);
    assert!(ends.iter().all(|e| *e > 0), "{ends:?}");

    // Exactly those records back, key and value.
    let args = ["consume", "bulk", "--format", "key-value"];
    let stdout = run_ok(&b, &args);
    let mut got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), 20_000);
    got.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);

    // Values alone, in offset order within a partition.
    let stdout = run_ok(&b, &["consume", "bulk", "--partition", "1"]);
    let values: Vec<u64> = stdout
        .lines()
        .map(|l| l["value-".len()..].parse().expect("a number"))
        .collect();
    assert_eq!(values.len() as u64, ends[1]);
    let stdout = run_ok(&b, &["consume", "bulk", "--count", "7"]);
    assert_eq!(stdout.lines().count(), 7);

    // Into `head -1`: a broken pipe is a clean exit, with nothing on stderr.
    let dir = tempfile::tempdir().expect("temp dir");
    let status_file = dir.path().join("status");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"{ "$1" --broker "$2" consume bulk; echo $? > "$3"; } | head -1"#)
        .arg("sh")
        .arg(runnel())
        .arg(b.grpc.to_string())
        .arg(&status_file)
        .env("XDG_CONFIG_HOME", "/nonexistent-runnel-test-config")
        .output()
        .expect("run sh");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let status = std::fs::read_to_string(&status_file).expect("status");
    assert_eq!(status.trim(), "0", "runnel's exit code");
}

#[tokio::test]
async fn cli_output_json_parses() {
    let b = Broker::start().await;
    let v = json(
        &b,
        &["topic", "create", "j", "-p", "2", "--retention", "7d"],
    );
    assert_eq!(v["name"], "j");
    assert_eq!(v["partition_count"], 2);
    assert_eq!(v["config"]["retention_ms"], 604_800_000u64);
    let v = json(&b, &["produce", "j", "-k", ":", "-H", "trace=t1"]);
    assert_eq!(v["records"], 0, "no input, no records");
    let args = [
        "--output", "json", "produce", "j", "-k", ":", "-H", "trace=t1",
    ];
    let out = run_with_input(&b, &args, b"k1:v1\nk2:v2\nk3:v3\n");
    let v: Value = serde_json::from_str(&ok(&args, &out)).expect("JSON");
    assert_eq!(v["records"], 3);

    let v = json(&b, &["topic", "list"]);
    assert_eq!(v, serde_json::json!([{"name": "j", "partition_count": 2}]));
    let v = json(&b, &["topic", "describe", "j"]);
    assert_eq!(v["overrides"], serde_json::json!(["retention_ms"]));
    assert_eq!(v["partitions"].as_array().map(Vec::len), Some(2));

    // consume --output json prints JSON lines with every field.
    let stdout = run_ok(&b, &["--output", "json", "consume", "j"]);
    let mut keys = Vec::new();
    for line in stdout.lines() {
        let r: Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(r["topic"], "j");
        assert!(r["partition"].is_u64() && r["offset"].is_u64() && r["timestamp"].is_i64());
        assert_eq!(
            r["headers"][0],
            serde_json::json!({"name": "trace", "value": "t1"})
        );
        assert_eq!(
            r["value"].as_str().map(|v| &v[1..]),
            r["key"].as_str().map(|k| &k[1..])
        );
        keys.push(r["key"].as_str().expect("key").to_owned());
    }
    keys.sort();
    assert_eq!(keys, ["k1", "k2", "k3"]);

    let v = json(&b, &["offsets", "j", "--time", "now-1h"]);
    let rows = v.as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let latest: u64 = rows
        .iter()
        .map(|r| r["latest"].as_u64().expect("latest"))
        .sum();
    assert_eq!(latest, 3);
    assert!(rows.iter().all(|r| r["at_time"]["offset"] == 0));
    let v = json(&b, &["broker", "info"]);
    assert!(v["version"].is_string() && v["uptime_ms"].is_u64());
    assert!(v["disk_total_bytes"].as_u64() > Some(0));
    assert_eq!(run_ok(&b, &["broker", "health"]), "serving\n");
    assert_eq!(
        json(&b, &["broker", "health"]),
        serde_json::json!({"serving": true})
    );

    run_ok(&b, &["consume", "j", "--group", "jg"]);
    let v = json(&b, &["group", "list"]);
    assert_eq!(
        v,
        serde_json::json!([{"group": "jg", "state": "EMPTY", "member_count": 0}])
    );
    let v = json(&b, &["group", "describe", "jg"]);
    let lag: u64 = v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["lag"].as_u64().expect("lag"))
        .sum();
    assert_eq!(lag, 0);
    let v = json(
        &b,
        &[
            "group",
            "reset-offsets",
            "jg",
            "--all-topics",
            "--to-earliest",
        ],
    );
    assert_eq!(v["executed"], false);
    assert_eq!(v["offsets"].as_array().map(Vec::len), Some(2));
    let v = json(&b, &["topic", "add-partitions", "j", "--count", "1"]);
    assert_eq!(v["partition_count"], 3);
}

#[tokio::test]
async fn cli_errors_are_one_line_with_distinct_exit_codes() {
    let b = Broker::start().await;
    run_ok(&b, &["topic", "create", "exists"]);
    let cases: [(&[&str], i32, &str); 11] = [
        (&["topic", "create", "bad name"], 2, "is invalid"),
        (
            &["topic", "create", "x", "--partitions", "0"],
            2,
            "INVALID_PARTITION_COUNT",
        ),
        (
            &["topic", "create", "x", "--retention", "7"],
            2,
            "invalid duration",
        ),
        (&["topic", "create", "exists"], 1, "already exists"),
        (
            &["topic", "describe", "missing"],
            3,
            "topic \"missing\" does not exist",
        ),
        (&["topic", "delete", "missing"], 3, "does not exist"),
        (
            &["consume", "missing"],
            3,
            "topic \"missing\" does not exist; create it with `runnel topic create missing`",
        ),
        (
            &["produce", "missing"],
            3,
            "topic \"missing\" does not exist; create it with `runnel topic create missing`",
        ),
        (&["consume", "exists", "--partition", "5"], 3, "partition 5"),
        (&["group", "describe", "nobody"], 3, "does not exist"),
        (
            &["consume", "exists", "--from", "yesterday"],
            2,
            "invalid time",
        ),
    ];
    for (args, code, needle) in cases {
        assert_error(args, &run(&b, args), code, needle);
    }
    let args = ["--profile", "nope", "topic", "list"];
    let out = runnel_command().args(args).output().expect("run runnel");
    assert_error(&args, &out, 3, "profile \"nope\" not found");
    // The metrics port answers a gRPC call with what it is.
    let metrics = b.metrics.to_string();
    let args = ["--broker", &metrics, "topic", "list"];
    let out = runnel_command().args(args).output().expect("run runnel");
    assert_error(
        &args,
        &out,
        4,
        "this is the metrics port of runneld (Prometheus over HTTP/1.1), not its gRPC port",
    );
    // No broker there: exit 4.
    let args = ["--broker", &free_addr().to_string(), "topic", "list"];
    let out = runnel_command().args(args).output().expect("run runnel");
    assert_error(&args, &out, 4, "broker unreachable at");
    let args = ["--broker", &free_addr().to_string(), "broker", "health"];
    let out = runnel_command().args(args).output().expect("run runnel");
    assert_error(&args, &out, 4, "broker unreachable at");
    // --if-exists and --if-not-exists succeed.
    run_ok(&b, &["topic", "delete", "missing", "--if-exists"]);
    run_ok(&b, &["topic", "create", "exists", "--if-not-exists"]);
}

#[tokio::test]
async fn cli_reset_offsets_without_execute_changes_nothing() {
    let b = Broker::start().await;
    run_ok(&b, &["topic", "create", "r", "-p", "2"]);
    let sent = lines(30, |i| format!("k{i}:v{i}"));
    let args = ["produce", "r", "-k", ":", "-q"];
    ok(&args, &run_with_input(&b, &args, &input_of(&sent)));
    assert_eq!(
        run_ok(&b, &["consume", "r", "--group", "g"])
            .lines()
            .count(),
        30
    );

    let committed = |b: &Broker| -> Vec<(u64, u64)> {
        let v = json(b, &["group", "describe", "g"]);
        v["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| {
                (
                    p["committed_offset"].as_u64().expect("committed"),
                    p["log_end_offset"].as_u64().expect("end"),
                )
            })
            .collect()
    };
    let before = committed(&b);
    assert!(before.iter().all(|(c, end)| c == end), "{before:?}");
    assert_eq!(before.iter().map(|(c, _)| c).sum::<u64>(), 30);

    // The plan alone: shown on stdout, nothing changed.
    let args = [
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "r",
        "--to-earliest",
    ];
    let out = run(&b, &args);
    let stdout = ok(&args, &out);
    assert!(stdout.starts_with("TOPIC"), "{stdout}");
    assert_eq!(stdout.lines().count(), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--execute"));
    assert_eq!(committed(&b), before);
    let args = [
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "r:0",
        "--shift-by",
        "-2",
    ];
    run_ok(&b, &args);
    assert_eq!(committed(&b), before);

    // With --execute the offsets move, and the group reads everything again.
    let mut args = args.to_vec();
    args.push("--execute");
    run_ok(&b, &args);
    let after = committed(&b);
    assert_eq!(after[0].0, before[0].0 - 2);
    assert_eq!(after[1], before[1]);
    assert_eq!(
        run_ok(&b, &["consume", "r", "--group", "g"])
            .lines()
            .count(),
        2
    );
    run_ok(
        &b,
        &[
            "group",
            "reset-offsets",
            "g",
            "--all-topics",
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(committed(&b).iter().all(|(c, _)| *c == 0));
    let stdout = run_ok(
        &b,
        &[
            "consume",
            "r",
            "--group",
            "g",
            "--format",
            "key-value",
            "-k",
            ":",
        ],
    );
    let mut got: Vec<&str> = stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);

    run_ok(&b, &["group", "delete", "g"]);
    let args = ["group", "describe", "g"];
    assert_error(&args, &run(&b, &args), 3, "does not exist");
}

#[tokio::test]
async fn cli_follow_waits_for_new_records_and_count_stops_it() {
    let b = Broker::start().await;
    run_ok(&b, &["topic", "create", "f"]);
    let args = ["produce", "f", "-q"];
    ok(&args, &run_with_input(&b, &args, b"a\nb\n"));
    let mut child = cli(&b)
        .args(["consume", "f", "--follow", "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel");
    ok(&args, &run_with_input(&b, &args, b"c\nd\ne\n"));
    wait_bounded(&mut child);
    let out = child.wait_with_output().expect("output");
    assert_eq!(ok(&["consume", "--follow"], &out), "a\nb\nc\nd\n");
    assert!(out.stderr.is_empty());
    // Without --follow it stops at the log end.
    assert_eq!(run_ok(&b, &["consume", "f"]), "a\nb\nc\nd\ne\n");
    assert_eq!(run_ok(&b, &["consume", "f", "--from", "latest"]), "");
    assert_eq!(run_ok(&b, &["consume", "f", "--from", "3"]), "d\ne\n");
    assert_eq!(run_ok(&b, &["consume", "f", "--from", "99"]), "");
}

#[tokio::test]
async fn cli_topic_lifecycle_binary_values_and_profiles() {
    let b = Broker::start().await;
    let args = [
        "topic",
        "create",
        "life",
        "-p",
        "2",
        "--retention",
        "7d",
        "--durability",
        "always",
        "--max-batch-bytes",
        "2MiB",
    ];
    run_ok(&b, &args);
    let stdout = run_ok(&b, &["topic", "describe", "life"]);
    assert!(stdout.contains("retention              7d"), "{stdout}");
    assert!(stdout.contains("max-batch-bytes        2MiB"), "{stdout}");
    assert!(stdout.contains("always"), "{stdout}");
    run_ok(&b, &["topic", "alter", "life", "--retention", "1d"]);
    let v = json(&b, &["topic", "describe", "life"]);
    assert_eq!(v["config"]["retention_ms"], 86_400_000u64);
    run_ok(&b, &["topic", "alter", "life", "--reset", "retention"]);
    let v = json(&b, &["topic", "describe", "life"]);
    assert!(
        !v["overrides"]
            .as_array()
            .expect("overrides")
            .contains(&"retention_ms".into())
    );
    assert_eq!(
        run_ok(&b, &["topic", "add-partitions", "life", "--to", "4"]),
        "topic \"life\" has 4 partition(s)\n"
    );

    // Bytes that are not UTF-8 come back escaped in text, base64 in JSON.
    let args = ["produce", "life", "--partition", "3", "-q"];
    ok(&args, &run_with_input(&b, &args, b"\xff\xfe\nplain\n"));
    assert_eq!(
        run_ok(&b, &["consume", "life", "--partition", "3"]),
        "\\xff\\xfe\nplain\n"
    );
    let stdout = run_ok(
        &b,
        &["consume", "life", "-p", "3", "--format", "json", "-n", "1"],
    );
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["value_base64"], "//4=");
    let stdout = run_ok(
        &b,
        &[
            "consume",
            "life",
            "-p",
            "3",
            "--template",
            "{partition}/{offset}:{value}",
        ],
    );
    assert_eq!(stdout, "3/0:\\xff\\xfe\n3/1:plain\n");

    // A profile names the broker.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[profiles.test]\nbroker = \"{}\"\n", b.grpc),
    )
    .expect("write config");
    let out = runnel_command()
        .args([
            "--config",
            path(&config),
            "--profile",
            "test",
            "topic",
            "list",
        ])
        .output()
        .expect("run runnel");
    assert!(ok(&["--profile"], &out).contains("life"));
    let out = runnel_command()
        .env("RUNNEL_PROFILE", "test")
        .env("RUNNEL_CLI_CONFIG", &config)
        .args(["topic", "list"])
        .output()
        .expect("run runnel");
    assert!(ok(&["RUNNEL_PROFILE"], &out).contains("life"));

    run_ok(&b, &["topic", "delete", "life"]);
    assert_eq!(run_ok(&b, &["topic", "list"]), "TOPIC  PARTITIONS\n");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test]
async fn a_quota_set_with_the_cli_slows_its_client_ids_producer_to_the_rate() {
    let b = Broker::start_with(&["--set", "quotas.burst_ms=100"]).await;
    run_ok(&b, &["topic", "create", "metered"]);
    let out = run_ok(&b, &["quota", "set", "slow", "--produce-rate", "200KiB"]);
    assert_eq!(out, "quotas of client id \"slow\" set\n");
    let listed = json(&b, &["quota", "list"]);
    assert_eq!(listed["clients"][0]["client_id"], "slow");
    assert_eq!(
        listed["clients"][0]["effective"]["produce_bytes_per_sec"],
        200 << 10
    );
    assert_eq!(
        listed["clients"][0]["rates"]["fetch_bytes_per_sec"],
        Value::Null
    );
    assert_eq!(listed["defaults"]["produce_bytes_per_sec"], 0);

    // The client sends its id on the produce stream; its batches are read at the rate.
    let client = runnel_client::Client::connect_with(runnel_client::ClientConfig {
        client_id: Some("slow".into()),
        ..runnel_client::ClientConfig::new(b.grpc.to_string())
    })
    .await
    .expect("connect");
    let producer = client
        .producer(runnel_client::ProducerConfig::default())
        .await
        .expect("producer");
    let value = "v".repeat(1000);
    let started = std::time::Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..600 {
        let record =
            runnel_client::ProducerRecord::new("metered", value.clone()).key(i.to_string());
        deliveries.push(producer.send(record).await.expect("queued"));
    }
    for d in deliveries {
        runnel_test_support::within(d)
            .await
            .expect("delivered, not failed");
    }
    let took = started.elapsed();
    // 600 KB at 200 KiB/s, less the 100 ms burst and the last request's wait.
    assert!(
        took >= std::time::Duration::from_millis(2000),
        "600 KB at 200 KiB/s took {took:?}"
    );
    producer.close().await.expect("close");

    run_ok(&b, &["quota", "delete", "slow"]);
    let args = ["quota", "delete", "slow"];
    assert_error(
        &args,
        &run(&b, &args),
        3,
        "client id \"slow\" has no quotas of its own",
    );
}
