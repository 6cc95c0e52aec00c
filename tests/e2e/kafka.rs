//! The Kafka protocol listener against real Kafka clients.
//!
//! - kcat (librdkafka), Debian's package: metadata, idempotent produce with every codec
//!   librdkafka writes, consume from the start and by time, and records crossing between the
//!   protocols byte for byte (keys, values, headers, timestamps).
//! - confluent-kafka (PyPI; it bundles librdkafka), driven by `kafka/clients.py`: idempotent
//!   producers and a consumer group of three, under the classic protocol and under the
//!   consumer protocol (KIP-848), that shares the partitions, rebalances when a member exits,
//!   commits offsets that gRPC reads, and resumes from them.
//!
//! kcat must be on PATH (Debian: `apt-get install kcat`); without it its test says so and
//! passes, unless `RUNNEL_KAFKA_CLIENT_TESTS=required` (set by `.ci/run`) makes it fail.
//! confluent-kafka goes into the virtualenv `target/kafka-venv` on first use (PyPI).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// `kcat` with `args` against `broker`, `input` on stdin.
fn kcat(broker: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(broker)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write to kcat");
    drop(stdin);
    let out = child.wait_with_output().expect("kcat");
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn kcat_found() -> bool {
    let found = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let required = std::env::var("RUNNEL_KAFKA_CLIENT_TESTS").is_ok_and(|v| v == "required");
        let why = "the Kafka client test needs kcat on PATH (Debian: apt-get install kcat)";
        assert!(!required, "{why}");
        eprintln!("SKIPPED: {why}");
    }
    found
}

#[tokio::test]
async fn kcat_produces_and_consumes_and_records_cross_protocols_byte_for_byte() {
    if !kcat_found() {
        return;
    }
    let kafka = free_addr();
    let listen = format!("kafka.listen={kafka}");
    let b = Broker::start_with(&["--set", &listen]).await;
    let k = kafka.to_string();
    create_topic(&b, "events", 2).await;

    let listing = String::from_utf8(kcat(&k, &["-L"], b"").stdout).expect("UTF-8");
    assert!(
        listing.contains("topic \"events\" with 2 partitions"),
        "{listing}"
    );
    assert!(listing.contains(&format!("broker 0 at {k}")), "{listing}");

    // Idempotent produce with every codec librdkafka writes.
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..50)
            .map(|i| format!("key-{codec}-{i}:{codec}-{i}"))
            .collect();
        let input = lines.join("\n") + "\n";
        kcat(
            &k,
            &[
                "-P",
                "-t",
                "events",
                "-p",
                "0",
                "-K:",
                "-z",
                codec,
                "-X",
                "enable.idempotence=true",
            ],
            input.as_bytes(),
        );
        expected.extend(lines);
    }
    let consumed = kcat(
        &k,
        &[
            "-C",
            "-t",
            "events",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %k:%s\n",
        ],
        b"",
    );
    let got: Vec<String> = String::from_utf8(consumed.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    let numbered: Vec<String> = expected
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i} {l}"))
        .collect();
    assert_eq!(got, numbered, "250 records, once each, in order");

    // Read over gRPC: the same keys and values at the same offsets.
    let batches = fetch_all(&b, "events", 0, 0).await;
    let records: Vec<runnel_format::Record> = batches
        .iter()
        .flat_map(|batch| {
            let batch =
                runnel_format::RecordBatch::new(batch.clone(), usize::MAX).expect("a batch");
            runnel_format::compression::records(&batch, 1 << 20)
                .expect("every codec decodes")
                .map(|r| r.expect("a record"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(records.len(), 250);
    for (r, line) in records.iter().zip(&expected) {
        let (key, value) = line.split_once(':').expect("key:value");
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
    }

    // Produced over gRPC, with headers and a timestamp; read by kcat byte for byte.
    let mut builder = runnel_format::BatchBuilder::new();
    builder.push(
        Some(b"grpc-key"),
        Some(b"grpc-value"),
        &[
            (b"trace".as_slice(), Some(b"abc".as_slice())),
            (b"empty".as_slice(), None),
        ],
        1_700_000_123_456,
    );
    let r = produce(&b, "events", 1, vec![builder.build()]).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let read = kcat(
        &k,
        &[
            "-C",
            "-t",
            "events",
            "-p",
            "1",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%T|%k|%s|%h\n",
        ],
        b"",
    );
    assert_eq!(
        String::from_utf8(read.stdout).expect("UTF-8"),
        "0|1700000123456|grpc-key|grpc-value|trace=abc,empty=NULL\n"
    );

    // Offsets by time: the first record at or after a timestamp.
    let query = kcat(&k, &["-Q", "-t", "events:1:1700000123000"], b"");
    let text = String::from_utf8(query.stdout).expect("UTF-8");
    assert!(text.contains("events [1] offset 0"), "{text}");

    // An unknown topic is refused as Kafka refuses it; the broker goes on.
    let mut refused = Command::new("kcat")
        .args(["-b", &k, "-P", "-t", "nowhere"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    refused
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"x\n")
        .expect("write");
    let out = refused.wait_with_output().expect("kcat");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown topic or partition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = describe_topic(&b, "events").await;
    assert_eq!(d.partitions[0].log_end_offset, 250);
}

/// A confluent-kafka consumer group member (`kafka/clients.py member`).
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Member {
    /// Asks the member to close (it leaves the group).
    fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the members printed, as it arrives.
struct Group {
    events: mpsc::Receiver<(usize, serde_json::Value)>,
    sender: mpsc::Sender<(usize, serde_json::Value)>,
    /// Each member's partitions now.
    assigned: BTreeMap<usize, BTreeSet<u64>>,
    /// Each key read, with the members that read it.
    keys: BTreeMap<String, BTreeSet<usize>>,
    closed: BTreeSet<usize>,
    python: PathBuf,
    script: PathBuf,
    broker: String,
    /// Client settings for every command (`KAFKA_CLIENT_CONFIG`).
    config: serde_json::Value,
}

impl Group {
    fn new(broker: &str) -> Self {
        let root = workspace_root();
        let python =
            crate::python::venv_python(&root, "tests/e2e/kafka/requirements.txt", "kafka-venv");
        let (sender, events) = mpsc::channel();
        Group {
            events,
            sender,
            assigned: BTreeMap::new(),
            keys: BTreeMap::new(),
            closed: BTreeSet::new(),
            python,
            script: root.join("tests/e2e/kafka/clients.py"),
            broker: broker.to_owned(),
            config: serde_json::json!({}),
        }
    }

    /// `clients.py` with `args`, the client settings in its environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .args(args)
            .env("KAFKA_CLIENT_CONFIG", self.config.to_string());
        cmd
    }

    /// Runs a one-shot command and returns what it printed.
    fn run(&self, args: &[&str]) -> serde_json::Value {
        let out = self.command(args).output().expect("run clients.py");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "clients.py {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Produces `count` records keyed `prefix-0` on, idempotently.
    fn produce(&self, topic: &str, count: usize, prefix: &str) {
        let report = self.run(&["produce", &self.broker, topic, &count.to_string(), prefix]);
        assert_eq!(report["delivered"], count, "{report}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    }

    /// Starts member number `index` of `group` on `topic` under `protocol`.
    fn member(&self, index: usize, group: &str, topic: &str, protocol: &str) -> Member {
        let mut child = self
            .command(&["member", &self.broker, group, topic, protocol])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run clients.py member");
        let stdout = child.stdout.take().expect("stdout");
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("member {index} printed {line:?}: {e}"));
                if sender.send((index, event)).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Member { child, stdin }
    }

    /// Applies events until `done` holds; panics with what was seen if it does not within
    /// two minutes (a hang, not a timing target).
    fn until(&mut self, what: &str, done: impl Fn(&Group) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not reached; assigned {:?}, closed {:?}, {} keys read",
                self.assigned,
                self.closed,
                self.keys.len()
            );
            let Ok((member, event)) = self.events.recv_timeout(left.min(Duration::from_secs(1)))
            else {
                continue;
            };
            match event["event"].as_str() {
                Some("assigned") => {
                    let partitions = event["partitions"]
                        .as_array()
                        .map(|ps| ps.iter().filter_map(serde_json::Value::as_u64).collect())
                        .unwrap_or_default();
                    self.assigned.insert(member, partitions);
                }
                Some("record") => {
                    let key = event["key"].as_str().unwrap_or_default().to_owned();
                    self.keys.entry(key).or_default().insert(member);
                }
                Some("closed") => {
                    self.closed.insert(member);
                    self.assigned.remove(&member);
                }
                _ => panic!("member {member}: {event}"),
            }
        }
    }

    /// True if the members in `members` own every one of `partitions` partitions, each once.
    fn split_among(&self, members: &[usize], partitions: u64) -> bool {
        let mut all = BTreeSet::new();
        let mut count = 0;
        for m in members {
            let Some(owned) = self.assigned.get(m).filter(|o| !o.is_empty()) else {
                return false;
            };
            count += owned.len();
            all.extend(owned.iter().copied());
        }
        count == all.len() && all == (0..partitions).collect()
    }

    /// True if every key `prefix-0` .. `prefix-(count-1)` was read.
    fn read_all(&self, prefix: &str, count: usize) -> bool {
        (0..count).all(|i| self.keys.contains_key(&format!("{prefix}-{i}")))
    }

    /// The members that read a key starting with `prefix`.
    fn readers(&self, prefix: &str) -> BTreeSet<usize> {
        self.keys
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .flat_map(|(_, m)| m.iter().copied())
            .collect()
    }
}

async fn group_of_three(protocol: &str) {
    let kafka = free_addr();
    let b = Broker::start_with(&[
        "--set",
        &format!("kafka.listen={kafka}"),
        "--set",
        "groups.heartbeat_interval_ms=500",
    ])
    .await;
    create_topic(&b, "orders", 6).await;
    let mut g = Group::new(&kafka.to_string());
    g.produce("orders", 600, "a");
    // Ten records per partition produced over gRPC: read by the Kafka members too.
    for p in 0..6 {
        let mut builder = runnel_format::BatchBuilder::new();
        for i in 0..10 {
            let key = format!("g-{}", p * 10 + i);
            builder.push(
                Some(key.as_bytes()),
                Some(b"over gRPC"),
                &[],
                1_700_000_000_000,
            );
        }
        let r = produce(&b, "orders", p, vec![builder.build()]).await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }

    let mut members: Vec<Member> = (0..3)
        .map(|i| g.member(i, "billing", "orders", protocol))
        .collect();
    g.until(
        "three members share six partitions and read everything",
        |g| g.split_among(&[0, 1, 2], 6) && g.read_all("a", 600) && g.read_all("g", 60),
    );

    members[2].stop();
    g.until("member 2 left and the other two took its partitions", |g| {
        g.closed.contains(&2) && g.split_among(&[0, 1], 6)
    });
    g.produce("orders", 300, "b");
    g.until("the two members read what came after", |g| {
        g.read_all("b", 300)
    });
    assert!(!g.readers("b").contains(&2), "member 2 had left");

    members[0].stop();
    members[1].stop();
    g.until("all left", |g| g.closed.len() == 3);
    // What the Kafka members committed is the group's committed offset over gRPC: the log end
    // of every partition, as they read everything.
    let committed = committed_offsets(&b, "billing").await;
    let d = describe_topic(&b, "orders").await;
    for p in &d.partitions {
        assert_eq!(
            committed.get(&p.partition).map(|c| c.0),
            Some(p.log_end_offset),
            "partition {}: committed {committed:?}",
            p.partition
        );
    }

    // A new member resumes from the committed offsets: it reads only what came after.
    g.produce("orders", 100, "c");
    let mut last = g.member(3, "billing", "orders", protocol);
    g.until("a new member reads what came after the commits", |g| {
        g.read_all("c", 100)
    });
    for prefix in ["a", "b", "g"] {
        assert!(
            !g.readers(prefix).contains(&3),
            "member 3 read {prefix} records again"
        );
    }
    last.stop();
    g.until("it left", |g| g.closed.contains(&3));
}

#[tokio::test]
async fn confluent_kafka_classic_group_shares_rebalances_commits_and_resumes() {
    group_of_three("classic").await;
}

#[tokio::test]
async fn confluent_kafka_consumer_protocol_group_shares_rebalances_commits_and_resumes() {
    group_of_three("consumer").await;
}

#[tokio::test]
async fn confluent_kafka_authenticates_with_sasl_plain_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = crate::tls::Ca::new("server CA");
    let trust = ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = ca.issue(&["localhost"]);
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let kafka = free_addr();
    let address = format!("localhost:{}", kafka.port());
    let _b = crate::tls::TlsBroker::start_with(
        dir,
        &[("cert_file", &cert_file), ("key_file", &key_file)],
        &[
            "--set",
            "auth.enabled=true",
            "--set",
            "auth.bootstrap_password=admin-password",
            "--set",
            &format!("kafka.listen={kafka}"),
            "--set",
            &format!("kafka.advertised_address={address}"),
        ],
    );
    let secured = |password: &str| {
        serde_json::json!({
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": "admin",
            "sasl.password": password,
            "ssl.ca.location": trust.display().to_string(),
        })
    };
    let mut g = Group::new(&address);
    g.config = secured("admin-password");
    let made = g.run(&["create-topic", &address, "secured", "2"]);
    assert_eq!(made["error"], serde_json::Value::Null, "{made}");
    g.produce("secured", 50, "s");
    let mut m = g.member(0, "secured-readers", "secured", "classic");
    g.until("the member reads over SASL_SSL", |g| g.read_all("s", 50));
    m.stop();
    g.until("it left", |g| g.closed.contains(&0));

    // A wrong password, and no TLS, are refused.
    g.config = secured("wrong-password");
    let refused = g.run(&["list-topics", &address]);
    assert!(
        refused["errors"]
            .to_string()
            .contains("SASL authentication error"),
        "{refused}"
    );
    g.config = serde_json::json!({});
    let refused = g.run(&["list-topics", &address]);
    assert!(refused["error"].is_string(), "{refused}");
}

/// The tests of librdkafka's test suite listed in `kafka/librdkafka-tests.txt`, as a string
/// the test runner's `TESTS` takes (comma-separated numbers).
fn librdkafka_tests() -> String {
    let list =
        std::fs::read_to_string(workspace_root().join("tests/e2e/kafka/librdkafka-tests.txt"))
            .expect("read tests/e2e/kafka/librdkafka-tests.txt");
    list.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Ignored by default: it keeps both cores busy for minutes, which would starve the other
/// tests' liveness bounds; `.ci/run` runs it on its own after the suite (`-- --ignored`).
#[tokio::test]
#[ignore = "runs alone: cargo test -p runnel-e2e --test e2e librdkafka -- --ignored"]
async fn librdkafka_test_suite_passes_its_tests_of_the_apis_served() {
    let Some(dir) = std::env::var_os("RUNNEL_LIBRDKAFKA_TESTS").map(PathBuf::from) else {
        let required = std::env::var("RUNNEL_KAFKA_CLIENT_TESTS").is_ok_and(|v| v == "required");
        let why = "librdkafka's test suite runs where RUNNEL_LIBRDKAFKA_TESTS names its built \
                   tests directory (.ci/run builds it)";
        assert!(!required, "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let kafka = free_addr();
    let _b = Broker::start_with(&[
        "--set",
        &format!("kafka.listen={kafka}"),
        // The suite's default scenario: topics created on first use, with 4 partitions.
        "--set",
        "kafka.auto_create_topics=true",
        "--set",
        "kafka.auto_create_partitions=4",
    ])
    .await;
    let work = tempfile::tempdir().expect("temp dir");
    let conf = work.path().join("test.conf");
    std::fs::write(
        &conf,
        format!("bootstrap.servers={kafka}\ntest.topic.random=true\n"),
    )
    .expect("test.conf");
    let libs = format!(
        "{}:{}",
        dir.join("../src").display(),
        dir.join("../src-cpp").display()
    );
    let run = |tests: &str, name: &str| {
        run_librdkafka_tests(&dir, tests, &conf, &libs, &work.path().join(name))
    };
    let first = run(&librdkafka_tests(), "first.log");
    if first.passed {
        return;
    }
    // Some of the suite's tests are timed (poll intervals, idle connections, linger): one
    // that failed runs once more, alone, and must pass then.
    assert!(
        !first.failed.is_empty(),
        "librdkafka's test-runner failed outside any test:\n{}",
        first.report
    );
    eprintln!(
        "librdkafka tests failed once, run again: {:?}\n{}",
        first.failed, first.report
    );
    let again = run(&first.failed.join(","), "again.log");
    assert!(
        again.passed,
        "librdkafka tests {:?} failed twice:\n{}",
        first.failed, again.report
    );
}

/// How a run of librdkafka's test runner went.
struct SuiteRun {
    passed: bool,
    /// The numbers of the tests that failed.
    failed: Vec<String>,
    /// The lines about failures, and the last lines.
    report: String,
}

/// Runs librdkafka's tests `tests` (comma-separated numbers) from `dir`, output to `log`: one
/// at a time, quick mode, no socket-mangling, known-issue or local-only tests, a broker of
/// Kafka 3.5's feature level.
fn run_librdkafka_tests(
    dir: &std::path::Path,
    tests: &str,
    conf: &std::path::Path,
    libs: &str,
    log: &std::path::Path,
) -> SuiteRun {
    let work = log.parent().expect("a directory");
    let mut runner = Command::new(dir.join("test-runner"))
        .args(["-p1", "-Q", "-E", "-K", "-L", "-V", "3.5.0.0"])
        .env("TESTS", tests)
        .env("RDKAFKA_TEST_CONF", conf)
        .env("LD_LIBRARY_PATH", libs)
        .current_dir(work)
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run librdkafka's test-runner");
    // A bound against a hang, not a timing target: the list runs in about five minutes.
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    let status = loop {
        if let Some(status) = runner.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = runner.kill();
            let _ = runner.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    // Its lines are coloured; what failed, and how the run ended.
    let plain: Vec<String> = out.lines().map(without_colours).collect();
    let failures: Vec<&String> = plain
        .iter()
        .filter(|l| l.contains("FAILED") || l.contains("failed at"))
        .collect();
    // "### Test \"0059_bsearch\" failed at ..." or, in the summary, "| 0059_bsearch | FAILED |".
    let mut failed: Vec<String> = failures
        .iter()
        .filter_map(|l| {
            l.split("### Test \"")
                .nth(1)
                .or_else(|| l.strip_prefix("| "))
        })
        .filter_map(|rest| rest.get(..4))
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    failed.sort();
    failed.dedup();
    let last = plain.iter().skip(plain.len().saturating_sub(30));
    let report: Vec<&str> = failures
        .iter()
        .copied()
        .chain(last)
        .map(String::as_str)
        .collect();
    SuiteRun {
        passed: status.is_some_and(|s| s.success()),
        failed,
        report: format!("ended with {status:?}\n{}", report.join("\n")),
    }
}

/// `line` without its ANSI colour sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
