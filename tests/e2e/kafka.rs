//! The Kafka protocol listener against a real Kafka client: kcat (librdkafka), Debian's
//! package. Metadata, idempotent produce with every codec librdkafka writes, consume from the
//! start and by time, and records crossing between the protocols byte for byte (keys, values,
//! headers, timestamps).
//!
//! It needs `kcat` on PATH (Debian: `apt-get install kcat`); without it the test says so and
//! passes, unless `RUNNEL_KAFKA_CLIENT_TESTS=required` (set by `.ci/run`) makes it fail.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

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
