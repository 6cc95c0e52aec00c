//! Share groups through `runnel-client` and the `runnel` CLI against the real broker: four
//! share consumers dividing 2,000 records so that each is accepted exactly once; an
//! acknowledgement of a record the member lost surfacing as an error; and the dead-letter
//! path end to end (`share alter`, `share consume --reject-all`, `dlq list`, `dlq replay`).
//!
//! The broker copies rejected records to the dead-letter topic on its own, shortly after the
//! rejection is stored: the tests wait for the copies with a bounded retry, never on time.

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use runnel_client::{
    AckMode, AlterShareGroup, Client, ClientError, ConsumerConfig, ErrorCode, ProducerConfig,
    ProducerRecord, ShareConsumerConfig, ShareStart, StartAt, TopicConfig, TopicPartition,
    dead_letter, read_dead_letters, replay_dead_letters,
};
use serde_json::Value;

use crate::client::client;
use crate::harness::{Broker, PATIENCE, runnel_command, within};

const RECORDS: u64 = 2_000;

/// Creates `topic` and produces `RECORDS` records to it, alternating over two partitions.
async fn produce_jobs(c: &Client, topic: &str) {
    c.admin()
        .create_topic(topic, 2, TopicConfig::default())
        .await
        .expect("create topic");
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    let records: Vec<ProducerRecord> = (0..RECORDS)
        .map(|i| {
            ProducerRecord::new(topic, format!("job-{i}"))
                .key(format!("k{i}"))
                .partition(u32::try_from(i % 2).expect("0 or 1"))
        })
        .collect();
    let deliveries = producer.send_all(&records).await.expect("queued");
    deliveries.await.check().expect("delivered");
    producer.close().await.expect("close");
}

/// What one member accepted: (partition, offset) and the largest delivery count seen.
type Accepted = (Vec<(u32, u64)>, u32);

/// A member of `group` that polls until the group has seen `RECORDS` deliveries, accepting
/// each record: explicitly and committed at once (manual), or by polling again (auto).
async fn member(c: Client, group: &str, mode: AckMode, delivered: Arc<AtomicU64>) -> Accepted {
    let mut consumer = c
        .share_consumer(ShareConsumerConfig {
            ack_mode: mode,
            max_records: 97,
            max_wait: Duration::from_millis(200),
            ..ShareConsumerConfig::new(group, ["jobs"])
        })
        .expect("share consumer");
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut most_deliveries = 0;
    while delivered.load(Ordering::SeqCst) < RECORDS {
        assert!(
            started.elapsed() < PATIENCE,
            "the records were not shared out in time"
        );
        let records = consumer.poll().await.expect("poll");
        for r in &records {
            most_deliveries = most_deliveries.max(r.delivery_count);
            accepted.push((r.partition, r.offset));
            if mode == AckMode::Manual {
                consumer.accept(r);
            }
        }
        if mode == AckMode::Manual {
            consumer.commit().await.expect("every accept applied");
        }
        delivered.fetch_add(records.len() as u64, Ordering::SeqCst);
    }
    // Under auto acknowledgement, closing accepts the last poll's records.
    consumer.close().await.expect("close");
    (accepted, most_deliveries)
}

#[tokio::test]
async fn four_share_consumers_accept_each_of_2000_records_exactly_once() {
    let b = Broker::start().await;
    let c = client(&b).await;
    produce_jobs(&c, "jobs").await;
    c.admin()
        .alter_share_group(
            "workers",
            &AlterShareGroup {
                start: Some(ShareStart::Earliest),
                ..AlterShareGroup::default()
            },
        )
        .await
        .expect("alter");

    let delivered = Arc::new(AtomicU64::new(0));
    let modes = [
        AckMode::Manual,
        AckMode::Auto,
        AckMode::Manual,
        AckMode::Auto,
    ];
    let members: Vec<_> = modes
        .into_iter()
        .map(|mode| tokio::spawn(member(c.clone(), "workers", mode, delivered.clone())))
        .collect();
    let mut all = Vec::new();
    let mut busy = 0;
    for m in members {
        let (accepted, most_deliveries) = within(m).await.expect("member");
        assert_eq!(most_deliveries.max(1), 1, "no record was delivered twice");
        busy += usize::from(!accepted.is_empty());
        all.extend(accepted);
    }
    let unique: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a record was accepted twice");
    let want: BTreeSet<_> = (0..RECORDS)
        .map(|i| (u32::from(i % 2 == 1), i / 2))
        .collect();
    assert_eq!(unique, want, "every record accepted");
    assert!(
        busy >= 2,
        "the members shared the work ({busy} got records)"
    );

    // The group agrees: every record is done, nothing held or waiting.
    let d = c
        .admin()
        .describe_share_group("workers")
        .await
        .expect("describe");
    assert_eq!(d.partitions.len(), 2);
    for p in &d.partitions {
        assert_eq!(
            (p.start_offset, p.next_offset),
            (RECORDS / 2, RECORDS / 2),
            "{p:?}"
        );
        assert_eq!((p.acquired, p.available, p.lag), (0, 0, 0), "{p:?}");
    }
    assert!(d.members.is_empty(), "closed members left: {:?}", d.members);
    assert_eq!(d.effective.start, Some(ShareStart::Earliest));
}

#[tokio::test]
async fn an_acknowledgement_of_a_record_the_member_lost_is_an_error() {
    let b = Broker::start().await;
    let c = client(&b).await;
    c.admin()
        .create_topic("jobs", 1, TopicConfig::default())
        .await
        .expect("create");
    c.admin()
        .alter_share_group(
            "workers",
            &AlterShareGroup {
                start: Some(ShareStart::Earliest),
                lock: Some(Duration::from_secs(1)),
                ..AlterShareGroup::default()
            },
        )
        .await
        .expect("alter");
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..3 {
        producer
            .send_and_wait(ProducerRecord::new("jobs", format!("job-{i}")))
            .await
            .expect("produced");
    }
    let config = || ShareConsumerConfig {
        ack_mode: AckMode::Manual,
        max_wait: Duration::from_secs(10),
        ..ShareConsumerConfig::new("workers", ["jobs"])
    };
    let mut slow = c.share_consumer(config()).expect("slow");
    let mut held = Vec::new();
    within(async {
        while held.len() < 3 {
            held.extend(slow.poll().await.expect("poll"));
        }
    })
    .await;
    assert!(held.iter().all(|r| r.delivery_count == 1));

    // Once the locks expire, another member gets the records, as a second delivery, and
    // accepts them at once.
    let mut fast = c.share_consumer(config()).expect("fast");
    let mut again = Vec::new();
    within(async {
        while again.len() < 3 {
            again.extend(fast.poll().await.expect("poll"));
        }
    })
    .await;
    assert!(again.iter().all(|r| r.delivery_count == 2), "{again:?}");
    for r in &again {
        fast.accept(r);
    }
    fast.commit().await.expect("the fast member holds them");

    // The slow member's accepts are refused, each record named.
    for r in &held {
        slow.accept(r);
    }
    let e = slow
        .commit()
        .await
        .expect_err("the records are another member's");
    assert_eq!(e.code(), Some(ErrorCode::InvalidRecordState), "{e}");
    let ClientError::Acknowledgement { failures } = &e else {
        panic!("not an acknowledgement error: {e:?}");
    };
    assert_eq!(failures.len(), 3, "{failures:?}");
    for (f, r) in failures.iter().zip(&held) {
        assert!(f.covers(r), "{f}");
        assert_eq!(f.error.code(), Some(ErrorCode::InvalidRecordState));
    }
    fast.close().await.expect("close");
    slow.close().await.expect("close");
    let d = c
        .admin()
        .describe_share_group("workers")
        .await
        .expect("describe");
    assert_eq!(d.partitions[0].start_offset, 3, "{d:?}");
}

#[tokio::test]
async fn a_consumer_group_application_dead_letters_and_replays_like_a_share_group() {
    let b = Broker::start().await;
    let c = client(&b).await;
    for topic in ["orders", "orders.dlq"] {
        c.admin()
            .create_topic(topic, 1, TopicConfig::default())
            .await
            .expect("create");
    }
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    producer
        .send_and_wait(
            ProducerRecord::new("orders", "not json")
                .key("o-1")
                .header("trace", "t1")
                .timestamp(1_000),
        )
        .await
        .expect("produced");

    // The application reads the record and gives up on it.
    let mut consumer = c.consumer(ConsumerConfig::default()).expect("consumer");
    consumer
        .assign(TopicPartition::new("orders", 0), StartAt::Earliest)
        .expect("assign");
    let record = within(consumer.next())
        .await
        .expect("a record")
        .expect("ok");
    dead_letter(&producer, &record, "orders.dlq", "billing", "cannot parse")
        .await
        .expect("queued")
        .await
        .expect("dead-lettered");

    let letters = read_dead_letters(&c, "orders.dlq", None, None)
        .await
        .expect("read");
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!((l.topic.as_str(), l.partition, l.offset), ("orders", 0, 0));
    assert_eq!((l.group.as_str(), l.delivery_count), ("billing", 1));
    assert_eq!(l.error, "cannot parse");

    let stored = replay_dead_letters(&producer, &letters, None)
        .await
        .expect("replayed");
    assert_eq!(
        (&*stored[0].topic, stored[0].partition, stored[0].offset),
        ("orders", 0, 1)
    );
    let replayed = within(consumer.next())
        .await
        .expect("a record")
        .expect("ok");
    assert_eq!(replayed.offset, 1);
    assert_eq!(
        (
            replayed.key.clone(),
            replayed.value.clone(),
            replayed.timestamp
        ),
        (record.key.clone(), record.value.clone(), record.timestamp)
    );
    assert_eq!(
        replayed.headers, record.headers,
        "the dead-letter headers are gone"
    );
    producer.close().await.expect("close");
}

/// A `runnel` command with a clean environment, talking to `b`.
fn run(b: &Broker, args: &[&str]) -> Output {
    runnel_command()
        .arg("--broker")
        .arg(b.grpc.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runnel")
}

/// Runs `runnel args`, asserts success, and returns stdout.
fn run_ok(b: &Broker, args: &[&str]) -> String {
    let out = run(b, args);
    assert!(
        out.status.success(),
        "runnel {args:?} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

/// Runs `runnel --output json args` and parses stdout.
fn json(b: &Broker, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let stdout = run_ok(b, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

fn produce_lines(b: &Broker, topic: &str, lines: &[String]) {
    let mut child = runnel_command()
        .arg("--broker")
        .arg(b.grpc.to_string())
        .args(["produce", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel");
    let mut input = lines.join("\n").into_bytes();
    input.push(b'\n');
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for runnel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dlq list` until it shows `n` dead letters (the broker copies them in the background).
fn dead_letters(b: &Broker, topic: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let listed = json(b, &["dlq", "list", topic]);
        let letters = listed.as_array().expect("a list").clone();
        if letters.len() >= n {
            return letters;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{} of {n} dead letters in {topic} after {PATIENCE:?}",
            letters.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn cli_rejects_to_the_dead_letter_topic_lists_and_replays() {
    let b = Broker::start().await;
    run_ok(&b, &["topic", "create", "jobs"]);
    run_ok(&b, &["topic", "create", "jobs.dlq"]);
    let values: Vec<String> = (0..5).map(|i| format!("job-{i}")).collect();
    produce_lines(&b, "jobs", &values);

    let altered = json(
        &b,
        &[
            "share",
            "alter",
            "workers",
            "--start",
            "earliest",
            "--dead-letter-topic",
            "jobs.dlq",
            "--max-deliveries",
            "3",
            "--backoff",
            "1s,10s",
        ],
    );
    assert_eq!(altered["settings"]["dead_letter_topic"], "jobs.dlq");
    assert_eq!(
        altered["settings"]["backoff_ms"],
        serde_json::json!([1000, 10000])
    );
    let listed = json(&b, &["share", "list"]);
    assert_eq!(listed, serde_json::json!([{ "group": "workers" }]));

    // Acquire, print and reject every record.
    let out = run(
        &b,
        &[
            "share",
            "consume",
            "workers",
            "--topic",
            "jobs",
            "--reject-all",
            "bad",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed, values);
    assert!(stderr.contains("rejected 5 record(s)"), "{stderr:?}");

    // The dead letters name where each record came from and why.
    let letters = dead_letters(&b, "jobs.dlq", 5);
    assert_eq!(letters.len(), 5, "{letters:?}");
    for (i, l) in letters.iter().enumerate() {
        assert_eq!(l["topic"], "jobs");
        assert_eq!(l["partition"], 0);
        assert_eq!(l["offset"], i as u64);
        assert_eq!(l["dlq_offset"], i as u64);
        assert_eq!(l["group"], "workers");
        assert_eq!(l["error"], "bad");
        assert_eq!(l["delivery_count"], 1);
        assert_eq!(l["value"], values[i].as_str());
    }
    let table = run_ok(&b, &["dlq", "list", "jobs.dlq", "--from", "3"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "a header and two rows: {table}");
    assert!(rows[0].starts_with("PARTITION"), "{table}");
    assert!(
        rows[1].contains("jobs/0@3") && rows[1].contains("bad"),
        "{table}"
    );
    assert!(
        rows[2].contains("jobs/0@4") && rows[2].ends_with("job-4"),
        "{table}"
    );

    // Nothing is left to deliver; the group says so.
    let d = json(&b, &["share", "describe", "workers"]);
    assert_eq!(d["effective"]["dead_letter_topic"], "jobs.dlq");
    assert_eq!(d["effective"]["max_deliveries"], 3);
    let p = &d["partitions"][0];
    assert_eq!(p["start_offset"], 5, "{d}");
    assert_eq!(p["next_offset"], 5, "{d}");
    assert_eq!(p["dead_lettering"], 0, "{d}");

    // Back to the start: the plan first, then applied.
    let plan = json(
        &b,
        &[
            "share",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
    );
    assert_eq!(plan["executed"], false, "{plan}");
    assert_eq!(plan["offsets"][0]["previous_offset"], 5, "{plan}");
    assert_eq!(plan["offsets"][0]["new_offset"], 0, "{plan}");
    let applied = json(
        &b,
        &[
            "share",
            "reset-offsets",
            "workers",
            "--all-topics",
            "--to-offset",
            "5",
            "--execute",
        ],
    );
    assert_eq!(applied["executed"], true, "{applied}");
    let d = json(&b, &["share", "describe", "workers"]);
    assert_eq!(d["partitions"][0]["start_offset"], 5, "{d}");

    // Replay: the records are back on their topic, as they were, and delivered again.
    let replayed = json(&b, &["dlq", "replay", "jobs.dlq", "--count", "4"]);
    assert_eq!(replayed["replayed"], 4);
    assert_eq!(
        replayed["to"],
        serde_json::json!([{ "topic": "jobs", "partition": 0, "records": 4 }])
    );
    let again = run_ok(&b, &["consume", "jobs", "--from", "5", "--format", "json"]);
    let again: Vec<Value> = again
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(again.len(), 4);
    for (i, r) in again.iter().enumerate() {
        assert_eq!(r["value"], values[i].as_str());
        assert_eq!(
            r["headers"],
            serde_json::json!([]),
            "no runnel.dlq.* headers"
        );
    }
    let accepted = run(&b, &["share", "consume", "workers", "--topic", "jobs"]);
    assert!(accepted.status.success());
    assert_eq!(String::from_utf8_lossy(&accepted.stdout).lines().count(), 4);

    // Delete it; then it is gone (exit 3).
    run_ok(&b, &["share", "delete", "workers"]);
    let out = run(&b, &["share", "describe", "workers"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("runnel: cannot describe share group \"workers\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
    let out = run(&b, &["dlq", "list", "nowhere"]);
    assert_eq!(out.status.code(), Some(3));
}
