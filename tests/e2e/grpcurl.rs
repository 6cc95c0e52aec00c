//! The grpcurl walkthrough of docs/protocol.md ("Without a client library: grpcurl and
//! JSON") run as written against the real broker: every `sh` block of that section, in order,
//! through `bash` with the `grpcurl` on PATH and the broker's address in place of
//! `127.0.0.1:7171`; the JSON each command prints is checked.
//!
//! The commands are Go grpcurl's. The Rust port, which the test installs into `target/tools`
//! when no `grpcurl` is on PATH (`cargo install --locked grpcurl-rs`), takes them unchanged: it accepts Go's single-dash flags (`-plaintext`, `-d`),
//! reads `-d @` from standard input, prints the same JSON and exits with 64 plus the gRPC
//! status code on an error, as Go grpcurl does. The one difference, which the walkthrough
//! mentions, is that it reads all of standard input before it sends the first request of a
//! bidirectional stream, where Go grpcurl sends each request as it reads it; the walkthrough's
//! here-document gives both the whole input at once. So nothing is translated here.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Broker, PATIENCE, workspace_root};

const SECTION: &str = "## Without a client library: grpcurl and JSON";
/// The broker address the walkthrough's commands name.
const DOC_ADDR: &str = "127.0.0.1:7171";

/// One command of the walkthrough: a `sh` block.
struct Step {
    /// The method it calls, for example `runnel.v1.AdminService/CreateTopic`.
    method: String,
    /// The block, as written.
    script: String,
}

impl Step {
    /// The request of a `-d '...'` command.
    fn request(&self) -> Value {
        let start = self.script.find("-d '").map(|i| i + 4);
        let json = start.and_then(|s| Some(&self.script[s..s + self.script[s..].find('\'')?]));
        let json = json.unwrap_or_else(|| panic!("no -d '...' in {}", self.script));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
    }

    /// The requests of a `-d @` command: the lines of its here-document.
    fn stdin_requests(&self) -> Vec<Value> {
        let lines = self
            .script
            .lines()
            .skip_while(|l| !l.contains("<<'EOF'"))
            .skip(1);
        lines
            .take_while(|l| *l != "EOF")
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// The `sh` blocks of the section headed `heading` in the file `doc` (a path from the
/// workspace root), in order.
fn sh_blocks(doc: &str, heading: &str) -> Vec<String> {
    let path = workspace_root().join(doc);
    let text = std::fs::read_to_string(&path).expect("read the document");
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{} has no section {heading:?}", path.display()));
    let section = &text[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

/// The `sh` blocks of the walkthrough section, in order (its `json` blocks show answers).
fn walkthrough() -> Vec<Step> {
    sh_blocks("docs/protocol.md", SECTION)
        .into_iter()
        .map(|script| {
            let method = script
                .split_whitespace()
                .find(|w| w.starts_with("runnel.v1."))
                .unwrap_or_else(|| panic!("no runnel.v1 method in {script}"))
                .to_owned();
            Step { method, script }
        })
        .collect()
}

#[test]
fn the_readme_s_grpcurl_commands_are_walkthrough_commands() {
    let tested: Vec<String> = walkthrough().into_iter().map(|s| s.script).collect();
    let shown = sh_blocks("README.md", "## From any language");
    assert!(!shown.is_empty(), "README.md shows no grpcurl command");
    for block in shown {
        assert!(
            tested.contains(&block),
            "README.md shows a command that docs/protocol.md's walkthrough does not run:\n{block}"
        );
    }
}

/// The `PATH` for the walkthrough's commands: the caller's, and if it has no `grpcurl`, the
/// directory where this suite installs the Rust port once (`target/tools/bin`, with `cargo
/// install --locked grpcurl-rs`, a few minutes the first time; it needs crates.io).
fn grpcurl_path() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file());
    if on_path {
        return path;
    }
    let root = workspace_root().join("target").join("tools");
    let bin = root.join("bin");
    if !bin.join("grpcurl").is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["install", "--locked", "--quiet", "grpcurl-rs", "--root"])
            .arg(&root)
            .status()
            .expect("run cargo install");
        assert!(
            status.success(),
            "grpcurl is not on PATH and `cargo install --locked grpcurl-rs` failed ({status}); \
             install grpcurl (Go grpcurl works too) and run the test again"
        );
    }
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("a PATH of valid directories")
}

/// A `bash` running `step` against `b` (`exec`, so that killing it stops grpcurl).
fn command(step: &Step, b: &Broker) -> (Command, String) {
    static PATH: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(grpcurl_path);
    let script = format!(
        "exec {}",
        step.script.replace(DOC_ADDR, &b.grpc.to_string())
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&script).env("PATH", path);
    (cmd, script)
}

/// Every JSON value in `text`, in order, up to the first incomplete one.
fn json_values(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

/// Runs a command that ends by itself; asserts it succeeds and returns what it printed.
fn run(step: &Step, b: &Broker) -> Vec<Value> {
    let (mut cmd, script) = command(step, b);
    let out = cmd.output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\nexited with {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    json_values(&stdout)
}

/// Runs a command that streams until stopped, until `enough` says what it printed is enough
/// (bounded by [`PATIENCE`]); then stops it and returns what it printed.
fn run_until(step: &Step, b: &Broker, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let (mut cmd, script) = command(step, b);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0; 8192];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut printed = Vec::new();
    let values = loop {
        let values = json_values(&String::from_utf8_lossy(&printed));
        if enough(&values) {
            break values;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(bytes) => printed.extend(bytes),
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < PATIENCE => {}
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reap grpcurl");
                panic!(
                    "{script}\nended ({}) or timed out before printing what was expected\n\
                     --- stdout\n{}\n--- stderr\n{}",
                    out.status,
                    String::from_utf8_lossy(&printed),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    values
}

/// A number that proto3 JSON prints as a string (64-bit) or a number, 0 when left out.
fn number(v: &Value) -> u64 {
    match v {
        Value::Null => 0,
        Value::String(s) => s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}")),
        other => other
            .as_u64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

/// A record as (offset, key, value, headers), whether read or given to Produce.
fn record(v: &Value) -> (u64, Value, Value, Value) {
    let headers = v.get("headers").cloned().unwrap_or_else(|| json!([]));
    (
        number(&v["offset"]),
        v["key"].clone(),
        v["value"].clone(),
        headers,
    )
}

#[tokio::test]
async fn the_grpcurl_walkthrough_of_the_protocol_doc_works_as_written() {
    let steps = walkthrough();
    let methods: Vec<&str> = steps.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "runnel.v1.AdminService/CreateTopic",
            "runnel.v1.ProduceService/Produce",
            "runnel.v1.ConsumeService/Fetch",
            "runnel.v1.ConsumeService/Subscribe",
            "runnel.v1.GroupService/Consume",
            "runnel.v1.GroupService/DescribeGroup",
        ],
        "the walkthrough changed: check the new commands here too"
    );
    let [create, produce, fetch, subscribe, consume, describe] = &steps[..] else {
        unreachable!("six steps, as asserted above");
    };
    let b = Broker::start().await;

    // What the walkthrough sends: the topic, the records, the partition read and acknowledged.
    let topic = create.request()["topic"].clone();
    let partition_count = number(&create.request()["partitionCount"]);
    let sent = &produce.request()["partitions"][0]["records"];
    let sent: Vec<_> = sent
        .as_array()
        .expect("records")
        .iter()
        .map(record)
        .collect();
    let expected: Vec<_> = (0u64..)
        .zip(&sent)
        .map(|(offset, (_, key, value, headers))| {
            (offset, key.clone(), value.clone(), headers.clone())
        })
        .collect();
    let partition = number(&fetch.request()["partitions"][0]["partition"]);
    let requests = consume.stdin_requests();
    let processed = requests
        .iter()
        .find_map(|r| r.get("processed"))
        .expect("a processed request");
    let group = &requests[0]["start"]["join"]["group"];

    let created = run(create, &b);
    assert_eq!(created[0]["topic"]["topic"], topic, "{created:?}");
    assert_eq!(
        number(&created[0]["topic"]["partitionCount"]),
        partition_count
    );

    let produced = run(produce, &b);
    let result = &produced[0]["results"][0];
    assert!(result.get("error").is_none(), "{produced:?}");
    assert_eq!(number(&result["partition"]), partition, "{produced:?}");
    assert_eq!(
        number(&result["batches"][0]["baseOffset"]),
        0,
        "{produced:?}"
    );

    let fetched = run(fetch, &b);
    let result = &fetched[0]["results"][0];
    assert!(result.get("error").is_none(), "{fetched:?}");
    let records: Vec<_> = result["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(record)
        .collect();
    assert_eq!(records, expected, "{fetched:?}");
    assert_eq!(number(&result["nextOffset"]), expected.len() as u64);

    // Every partition on one stream: stop once the records are there.
    let streamed_records = |values: &[Value]| -> Vec<_> {
        values
            .iter()
            .filter(|v| number(&v["partition"]) == partition)
            .flat_map(|v| v["records"].as_array().cloned().unwrap_or_default())
            .map(|r| record(&r))
            .collect()
    };
    let named = |values: &[Value]| -> BTreeSet<u64> {
        values.iter().map(|v| number(&v["partition"])).collect()
    };
    let streamed = run_until(subscribe, &b, |values| {
        streamed_records(values).len() >= expected.len()
            && named(values).len() as u64 == partition_count
    });
    assert_eq!(streamed_records(&streamed), expected, "{streamed:?}");
    assert!(streamed.iter().all(|v| v["topic"] == topic), "{streamed:?}");

    // A member alone in the group gets every partition; the records it may print before the
    // stream ends are the ones produced.
    let consumed = run(consume, &b);
    assert!(
        consumed[0]["joined"]["memberId"].is_string(),
        "{consumed:?}"
    );
    let assigned = consumed
        .iter()
        .find_map(|v| v.get("assignment"))
        .unwrap_or_else(|| panic!("no assignment: {consumed:?}"));
    assert_eq!(
        assigned["assigned"],
        json!([{"topic": topic, "partitions": (0..partition_count).collect::<Vec<_>>()}]),
        "{consumed:?}"
    );
    for response in consumed.iter().filter_map(|v| v.get("records")) {
        assert_eq!(response["topic"], topic, "{consumed:?}");
        for r in response["records"].as_array().into_iter().flatten() {
            assert!(expected.contains(&record(r)), "{consumed:?}");
        }
    }

    // The acknowledgement was committed: the offset after it, and no lag.
    let described = run(describe, &b);
    let group_partitions = described[0]["partitions"].as_array().expect("partitions");
    let acked = group_partitions
        .iter()
        .find(|p| number(&p["partition"]) == number(&processed["partition"]))
        .unwrap_or_else(|| panic!("{described:?}"));
    assert_eq!(described[0]["group"], *group);
    assert_eq!(described[0]["state"], "GROUP_STATE_EMPTY", "{described:?}");
    assert_eq!(
        number(&acked["committedOffset"]),
        number(&processed["offset"]) + 1
    );
    assert_eq!(number(&acked["logEndOffset"]), expected.len() as u64);
    assert_eq!(acked["lag"], "0", "{described:?}");
}
