//! `runnel-bench` against the real broker: tiny runs whose JSON output must parse and whose
//! counts must match what was asked. No timing is asserted (timing belongs in
//! `docs/benchmarks.md`).

use std::process::Command;

use serde_json::Value;

use crate::harness::{self, Broker};

/// Runs `runnel-bench --broker <b> --output json <args>` and parses its one JSON object.
fn bench_json(b: &Broker, args: &[&str]) -> Value {
    let out = Command::new(harness::runnel_bench())
        .env_remove("RUNNEL_BROKER")
        .args(["--broker", &b.grpc.to_string(), "--output", "json"])
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run runnel-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runnel-bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_latency(v: &Value, count: u64) {
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {v}");
    }
    assert_eq!(v["count"], count, "{v}");
}

#[tokio::test]
async fn bench_e2e_produce_and_consume_report_what_they_did_as_json() {
    let b = Broker::start().await;
    let e2e = bench_json(
        &b,
        &[
            "e2e",
            "--topic",
            "bench",
            "--records",
            "2000",
            "--partitions",
            "2",
            "--batch-size",
            "100",
            "--linger",
            "1ms",
            "--send",
            "all",
        ],
    );
    assert_eq!(e2e["mode"], "e2e");
    assert_eq!(e2e["config"]["send"], "all");
    assert_eq!(e2e["records"], 2000, "{e2e}");
    assert_eq!(e2e["bytes"], 2000 * 1024);
    assert_eq!(e2e["errors"], 0);
    assert_eq!(e2e["details"]["produced"], 2000);
    assert!(e2e["records_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    assert!(e2e["mb_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    assert!(e2e["seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert_latency(&e2e["latency_ms"], 2000);
    assert_latency(&e2e["ack_latency_ms"], 2000);
    assert_eq!(e2e["config"]["partitions"], 2);
    assert_eq!(e2e["config"]["batch_size"], 100);
    // CPU per record: the bench's own always; the broker's only with its pid.
    let cpu = &e2e["cpu_us_per_record"];
    assert!(cpu["client"].as_f64().is_some_and(|us| us >= 0.0), "{cpu}");
    assert!(cpu["broker"].is_null() && cpu["other"].is_null(), "{cpu}");

    let pid = b.pid().to_string();
    let produced = bench_json(
        &b,
        &[
            "produce",
            "--broker-pid",
            &pid,
            "--topic",
            "bench",
            "--records",
            "1000",
            "--producers",
            "2",
            "--record-size",
            "100",
            "--acks",
            "durable",
            "--compression",
            "lz4",
        ],
    );
    assert_eq!(produced["mode"], "produce");
    assert_eq!(produced["records"], 1000, "{produced}");
    assert_eq!(produced["bytes"], 100_000);
    assert_latency(&produced["latency_ms"], 1000);
    assert_eq!(produced["config"]["acks"], "durable");
    let cpu = &produced["cpu_us_per_record"];
    assert!(cpu["broker"].as_f64().is_some_and(|us| us >= 0.0), "{cpu}");

    // The topic holds 3000 records now; consume reads 2500 of them and cleans up.
    let consumed = bench_json(
        &b,
        &[
            "consume",
            "--topic",
            "bench",
            "--records",
            "2500",
            "--consumers",
            "2",
            "--cleanup",
        ],
    );
    assert_eq!(consumed["mode"], "consume");
    assert_eq!(consumed["records"], 2500, "{consumed}");
    assert!(consumed["latency_ms"].is_null());
    let topics = b
        .admin()
        .list_topics(runnel_proto::pb::ListTopicsRequest {})
        .await
        .expect("list topics")
        .into_inner();
    assert!(
        topics.topics.iter().all(|t| t.topic != "bench"),
        "--cleanup deleted the topic: {topics:?}"
    );
}

#[test]
fn bench_startup_stops_opens_and_recovers_the_real_broker_and_reports_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(harness::runnel_bench())
        .args(["--output", "json", "startup", "--runneld"])
        .arg(harness::runneld())
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--partitions",
            "8",
            "--bytes",
            "1MiB",
            "--bytes-per-partition",
            "512KiB",
            "--rounds",
            "2",
            "--quiet",
        ])
        .output()
        .expect("run runnel-bench startup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runnel-bench startup failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(v["mode"], "startup");
    let scenarios = v["scenarios"].as_array().expect("scenarios");
    let names: Vec<_> = scenarios.iter().map(|s| s["scenario"].clone()).collect();
    assert_eq!(names, ["clean", "kill9-large", "kill9-torn"], "{v}");
    for s in scenarios {
        let rounds = s["rounds"].as_array().expect("rounds");
        assert_eq!(rounds.len(), 2, "{s}");
        for r in rounds {
            assert!(r["open_seconds"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        }
        assert!(s["open_seconds"]["median"].as_f64().is_some(), "{s}");
        assert_eq!(s["records_recovered"], s["records"], "nothing lost: {s}");
    }
    let (clean, large, torn) = (&scenarios[0], &scenarios[1], &scenarios[2]);
    assert_eq!(clean["partitions"], 8);
    assert_eq!(clean["records"], 8);
    assert_eq!(clean["bytes"], 8 * 1024);
    assert!(
        clean["stop_seconds"]["median"].as_f64().is_some(),
        "{clean}"
    );
    assert!(
        clean["rounds"][0]["stop_seconds"].as_f64().is_some(),
        "{clean}"
    );
    assert_eq!(large["partitions"], 2);
    assert_eq!(large["bytes"], 1 << 20);
    assert_eq!(large["segment_bytes"], 2u64 << 30);
    assert!(large["stop_seconds"].is_null(), "{large}");
    assert_eq!(torn["partitions"], 8);
    assert_eq!(torn["rounds"][1]["torn_files"], 8, "{torn}");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read --dir").count(),
        0,
        "the temporary data directories are removed"
    );
}

/// `scripts/peers/bench_peers.py`, the driver of `scripts/bench-peers.sh`, with only Runnel
/// present: every workload it runs on Runnel is recorded with the counts asked for, and the
/// tables print. The peers themselves (Iggy, NATS) are not installed in CI.
#[test]
fn the_peers_driver_runs_every_runnel_workload_and_prints_its_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The driver runs both binaries from their directory: have both built (and settled for
    // the whole suite, so no other test's build replaces one while the driver runs it).
    harness::runneld();
    let bin = harness::runnel_bench()
        .parent()
        .expect("the binaries' directory");
    let out = Command::new("python3")
        .arg(harness::workspace_root().join("scripts/peers/bench_peers.py"))
        .env_remove("RUNNEL_BROKER")
        .env_remove("IGGY_BIN")
        .env_remove("NATS_SERVER")
        .env("RUNNEL_BIN", bin)
        .env("RUNNEL_PORT", harness::free_addr().port().to_string())
        .env("BENCH_DIR", dir.path())
        .env("ROUNDS", "1")
        .env("MESSAGES", "4000")
        .env("BATCH", "100")
        .env("DURABLE_MESSAGES", "3")
        .env("SETTLE_MAX", "0")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let results = std::fs::read_to_string(dir.path().join("results.jsonl")).expect("results");
    let rows: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let count = |system: &str, workload: &str| {
        rows.iter()
            .filter(|r| r["system"] == system && r["workload"] == workload)
            .map(|r| r["messages"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    for w in [
        "produce1",
        "consume1",
        "produce4",
        "consume4",
        "produce1-100",
        "produce4-100",
    ] {
        assert_eq!(count("runnel", w), [4000], "{w}: {results}\n{stderr}");
    }
    for w in ["produce1", "produce4"] {
        assert_eq!(count("runnel-send", w), [4000], "{w}: {results}\n{stderr}");
    }
    assert_eq!(count("runnel", "durable1"), [3], "{results}");
    assert_eq!(count("runnel", "durable16"), [48], "{results}");
    assert_eq!(
        rows.iter().filter(|r| r["system"] == "dd").count(),
        4,
        "a dd yardstick before each produce workload: {results}"
    );
    for r in rows.iter().filter(|r| r["system"] != "dd") {
        for key in ["messages_per_sec", "server_us_per_msg", "client_us_per_msg"] {
            assert!(r[key].as_f64().is_some_and(|x| x >= 0.0), "{key}: {r}");
        }
    }
    assert!(stdout.contains("| workload | runnel msg/s |"), "{stdout}");
    assert!(stdout.contains("| durable16 |"), "{stdout}");
}

#[tokio::test]
async fn bench_kafka_fetch_reads_what_was_produced_over_the_kafka_listener() {
    let kafka = harness::free_addr();
    let listen = format!("kafka.listen={kafka}");
    let b = Broker::start_with(&["--set", &listen]).await;
    let produced = bench_json(
        &b,
        &[
            "produce",
            "--topic",
            "kf",
            "--records",
            "3000",
            "--record-size",
            "100",
        ],
    );
    assert_eq!(produced["records"], 3000, "{produced}");
    let fetched = bench_json(
        &b,
        &[
            "kafka-fetch",
            "--kafka",
            &kafka.to_string(),
            "--topic",
            "kf",
            "--records",
            "3000",
            "--batch-size",
            "64",
        ],
    );
    assert_eq!(fetched["mode"], "kafka-fetch", "{fetched}");
    assert_eq!(fetched["records"], 3000, "{fetched}");
    assert!(
        fetched["details"]["fetches"]
            .as_u64()
            .is_some_and(|n| n > 1),
        "{fetched}"
    );
    // Past the end, it says so and fails.
    let out = Command::new(harness::runnel_bench())
        .env_remove("RUNNEL_BROKER")
        .args([
            "kafka-fetch",
            "--kafka",
            &kafka.to_string(),
            "--topic",
            "kf",
            "--records",
            "9999",
        ])
        .output()
        .expect("run runnel-bench");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ends at offset 3000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
