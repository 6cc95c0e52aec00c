//! Bad input against the real broker: every documented error with its gRPC status, Runnel
//! code and message; random bytes; a full disk. No input crashes the broker or changes stored
//! data.

use std::process::Command;

use bytes::{Bytes, BytesMut};
use runnel_proto::pb::{self, ErrorCode, offset_query::Query, start_position::Position};
use tokio_stream::StreamExt as _;

use crate::harness::*;
use runnel_test_support::random::Rng;

/// The end offsets of a topic's partitions.
async fn end_offsets(b: &Broker, topic: &str) -> Vec<u64> {
    let d = describe_topic(b, topic).await;
    d.partitions.iter().map(|p| p.log_end_offset).collect()
}

#[tokio::test]
async fn every_bad_input_returns_its_documented_status() {
    let b = Broker::start_with(&[
        "--set",
        "limits.max_topics=2",
        "--set",
        "limits.max_request_bytes=2097152",
        "--set",
        "limits.fetch_max_partitions=4",
        "--set",
        "limits.max_subscriptions=2",
        "--set",
        "topic_defaults.max_batch_bytes=65536",
    ])
    .await;
    create_topic(&b, "t", 2).await;
    for p in 0..2 {
        produce(&b, "t", p, vec![batch_of("ok", 0, 10)]).await;
    }
    let mut admin = b.admin();
    let mut prod = b.produce();
    let mut cons = b.consume();
    let create = |topic: &str, partition_count, config| pb::CreateTopicRequest {
        topic: topic.into(),
        partition_count,
        config,
    };

    // Admin.
    let e = admin.create_topic(create("t", 1, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::TopicExists, "topic \"t\" already exists");
    let e = admin
        .create_topic(create("a/b", 1, None))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidTopicName,
        "topic \"a/b\" is invalid: character '/' at 1",
    );
    let e = admin.create_topic(create("u", 0, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::InvalidPartitionCount, "partition_count 0");
    let bad = pb::TopicConfig {
        segment_bytes: Some(1000),
        ..Default::default()
    };
    let e = admin
        .create_topic(create("u", 1, Some(bad)))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidConfig,
        "config.segment_bytes 1000 is outside [4096, 2147483648]",
    );
    create_topic(&b, "u", 1).await;
    let e = admin.create_topic(create("v", 1, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "max_topics (2)");
    let e = admin
        .delete_topic(pb::DeleteTopicRequest { topic: "zz".into() })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "topic \"zz\" does not exist");
    let e = admin
        .create_partitions(pb::CreatePartitionsRequest {
            topic: "t".into(),
            partition_count: 1,
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidPartitionCount,
        "below the current count 2",
    );
    let e = admin
        .alter_topic_config(pb::AlterTopicConfigRequest {
            topic: "t".into(),
            set: None,
            reset: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidConfig,
        "reset[0]: \"x\" is not a TopicConfig field",
    );

    // Produce, whole request.
    let e = prod
        .produce(produce_request(
            "zz",
            pb::Acks::Written,
            vec![entry(0, vec![batch_of("x", 0, 1)])],
        ))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "\"zz\"");
    let e = prod
        .produce(produce_request("t", pb::Acks::Written, vec![]))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "partitions: at least one entry",
    );
    let e = prod
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![entry(0, vec![Bytes::from(vec![0u8; 3 << 20])])],
        ))
        .await
        .unwrap_err();
    assert_too_large(&e);

    // Produce, inline.
    let mut crc = BytesMut::from(&batch_of("x", 0, 2)[..]);
    let n = crc.len();
    crc[n - 1] ^= 1;
    let mut version = BytesMut::from(&batch_of("x", 0, 1)[..]);
    version[24] = 9;
    let both = pb::ProducePartition {
        partition: Some(0),
        partition_key: Some(Bytes::from_static(b"k")),
        batches: vec![batch_of("x", 0, 1)],
        ..Default::default()
    };
    let big = {
        let mut bb = runnel_format::BatchBuilder::new();
        bb.push(None, Some(&vec![0u8; 70_000]), &[], 0);
        bb.build()
    };
    let r = prod
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![
                entry(5, vec![batch_of("x", 0, 1)]),
                both,
                entry(0, vec![big]),
                entry(0, vec![crc.freeze()]),
                entry(1, vec![version.freeze()]),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_inline(
        r[0].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partitions[0]: partition 5 of topic \"t\" does not exist: the topic has partitions 0 to 1",
    );
    assert_inline(
        r[1].error.as_ref(),
        ErrorCode::InvalidRequest,
        "partitions[1]: partition and partition_key are both set",
    );
    assert_inline(
        r[2].error.as_ref(),
        ErrorCode::BatchTooLarge,
        "exceeds max_batch_bytes (65536 bytes) of topic \"t\"",
    );
    assert_inline(
        r[3].error.as_ref(),
        ErrorCode::CorruptBatch,
        "partitions[3].batches[0]: batch CRC mismatch",
    );
    assert_inline(
        r[4].error.as_ref(),
        ErrorCode::UnsupportedBatchVersion,
        "unsupported batch format version 9",
    );

    // Idempotence.
    let init = prod
        .init_producer(pb::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (id, epoch) = (init.producer_id, init.producer_epoch as i16);
    for seq in 0..6 {
        let r = produce(&b, "t", 0, vec![idempotent_batch(1, id, epoch, seq)]).await;
        assert!(r.error.is_none());
    }
    // (partition, sequence, expected error, message), in order; the epoch is bumped before
    // the last one.
    let cases = [
        (
            0,
            0,
            ErrorCode::DuplicateSequence,
            "sequence 0 was already written; only the last 5 batches' offsets are kept",
        ),
        (
            0,
            8,
            ErrorCode::OutOfOrderSequence,
            "expected sequence 6, got 8",
        ),
        (
            1,
            3,
            ErrorCode::UnknownProducer,
            "has no state on t/1 and its sequence 3 is not 0",
        ),
        (
            0,
            6,
            ErrorCode::ProducerFenced,
            "epoch 0 is fenced: the current epoch is 1",
        ),
    ];
    for (partition, seq, code, message) in cases {
        if code == ErrorCode::ProducerFenced {
            prod.init_producer(pb::InitProducerRequest {
                producer_id: Some(id),
                producer_epoch: Some(0),
            })
            .await
            .unwrap();
        }
        let r = produce(
            &b,
            "t",
            partition,
            vec![idempotent_batch(1, id, epoch, seq)],
        )
        .await;
        assert_inline(r.error.as_ref(), code, message);
    }
    let e = prod
        .init_producer(pb::InitProducerRequest {
            producer_id: Some(id),
            producer_epoch: Some(0),
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::ProducerFenced, "is fenced");
    let before = end_offsets(&b, "t").await;

    // Consume.
    let fp = |partition, offset| pb::FetchPartition {
        topic: "t".into(),
        partition,
        offset,
        max_bytes: 0,
    };
    let fetch = |partitions, max_wait_ms| pb::FetchRequest {
        partitions,
        max_wait_ms,
        min_bytes: 0,
        max_bytes: 0,
        ..Default::default()
    };
    let r = cons
        .fetch(fetch(vec![fp(0, 999)], 0))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_inline(
        r[0].error.as_ref(),
        ErrorCode::OffsetOutOfRange,
        "offset 999 is out of range for t/0: readable offsets are 0 to 16",
    );
    let e = cons.fetch(fetch(vec![], 0)).await.unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "partitions");
    let e = cons.fetch(fetch(vec![fp(0, 0)], 30_001)).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "max_wait_ms 30001 exceeds fetch_max_wait_ms (30000)",
    );
    let many = (0..5)
        .map(|i| pb::FetchPartition {
            topic: format!("x{i}"),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        })
        .collect();
    let e = cons.fetch(fetch(many, 0)).await.unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "fetch_max_partitions (4)");
    let sub = |topic: &str, position: Option<Position>| pb::SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        start: position.map(|p| pb::StartPosition { position: Some(p) }),
        max_bytes: 0,
        ..Default::default()
    };
    let e = cons.subscribe(sub("zz", None)).await.unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "\"zz\"");
    let e = cons
        .subscribe(sub("t", Some(Position::Offset(1000))))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::OffsetOutOfRange,
        "offset 1000 is out of range for t/0",
    );
    let mut s1 = cons.subscribe(sub("t", None)).await.unwrap().into_inner();
    let mut s2 = cons.subscribe(sub("t", None)).await.unwrap().into_inner();
    within(s1.next()).await.unwrap().unwrap();
    within(s2.next()).await.unwrap().unwrap();
    let e = cons.subscribe(sub("t", None)).await.unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "max_subscriptions (2)");
    let e = cons
        .list_offsets(pb::ListOffsetsRequest {
            queries: vec![pb::OffsetQuery {
                topic: "t".into(),
                partition: 0,
                query: None,
            }],
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "queries[0].query");
    let r = cons
        .list_offsets(pb::ListOffsetsRequest {
            queries: vec![pb::OffsetQuery {
                topic: "t".into(),
                partition: 7,
                query: Some(Query::TimestampMs(0)),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_inline(
        r[0].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partition 7",
    );

    // None of it changed stored data, and the broker still serves.
    assert_eq!(end_offsets(&b, "t").await, before);
    assert_eq!(before, [16, 10]);
    let got = values(&fetch_all(&b, "t", 1, 0).await, 0);
    assert_eq!(got.len(), 10);
}

#[tokio::test]
async fn random_bytes_never_crash_the_broker_or_store_bad_batches() {
    let b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let mut rng = Rng::new(0x5eed_1234_abcd_0042);
    let valid = batch_of("v", 0, 3);
    let mut stored = 0u64;
    for i in 0..400 {
        let input = if i % 2 == 0 {
            let len = (rng.next_u64() % 300) as usize;
            Bytes::from((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
        } else {
            // A valid batch with one byte changed.
            let mut m = BytesMut::from(&valid[..]);
            let at = (rng.next_u64() as usize) % m.len();
            m[at] ^= 1 << (rng.next_u64() % 8);
            m.freeze()
        };
        let r = produce(&b, "t", 0, vec![input]).await;
        match &r.error {
            None => stored += 1,
            Some(e) => {
                let allowed = [
                    ErrorCode::CorruptBatch,
                    ErrorCode::UnsupportedBatchVersion,
                    ErrorCode::BatchTooLarge,
                    ErrorCode::InvalidRequest,
                    ErrorCode::UnknownProducer,
                ];
                assert!(
                    allowed.iter().any(|c| *c as i32 == e.code),
                    "input {i}: {e:?}"
                );
            }
        }
    }
    // Only bytes outside the CRC (base offset, append time) can change and still pass.
    assert!(stored > 0 && stored < 200, "{stored} inputs stored");
    let batches = fetch_all(&b, "t", 0, 0).await;
    assert_eq!(batches.len() as u64, stored);
    assert_eq!(values(&batches, 0).len() as u64, stored * 3);
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop; `None` where mounting is not
/// permitted (not root, no CAP_SYS_ADMIN).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_disk_full_and_reads_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data_dir, "6m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full test did not run"
        );
        return;
    };
    // Default segment size: no segment rolls while the disk fills, so each failed append is
    // a plain write that storage rolls back.
    let b = Broker::start_in(dir, data_dir, &[]).await;
    create_topic(&b, "filler", 1).await;
    create_topic(&b, "t", 1).await;
    let chunk = |tag: &str| {
        let mut bb = runnel_format::BatchBuilder::new();
        bb.push(
            None,
            Some(format!("{tag}{}", "x".repeat(100_000)).as_bytes()),
            &[],
            0,
        );
        bb.build()
    };
    for _ in 0..20 {
        let r = produce(&b, "filler", 0, vec![chunk("f")]).await;
        assert!(r.error.is_none(), "{r:?}");
    }
    let mut acked = 0;
    let full = loop {
        let r = produce(&b, "t", 0, vec![chunk("t")]).await;
        match r.error {
            None => acked += 1,
            Some(e) => break e,
        }
        assert!(acked < 100, "the 6 MiB disk never filled");
    };
    assert_inline(Some(&full), ErrorCode::DiskFull, "disk full while writing");
    assert!(
        full.message.contains("the append was rolled back"),
        "{full:?}"
    );
    let e = b
        .produce()
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![entry(0, vec![chunk("t")])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_inline(
        e.results[0].error.as_ref(),
        ErrorCode::DiskFull,
        "disk full",
    );

    // Reads keep working and return exactly what was acknowledged.
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), acked);
    assert!(acked > 0);

    // Freeing space makes writes succeed again.
    b.admin()
        .delete_topic(pb::DeleteTopicRequest {
            topic: "filler".into(),
        })
        .await
        .unwrap();
    within(async {
        loop {
            let r = produce(&b, "t", 0, vec![chunk("t")]).await;
            if r.error.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), acked + 1);
    drop(b);
}
