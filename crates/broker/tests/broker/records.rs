//! Record-level calls: records produced as messages, read back decoded (from compressed
//! batches too), several partitions on one Subscribe stream, and their errors.

use bytes::Bytes;
use runnel_proto::pb::{self, ErrorCode, OffsetBoundary, start_position::Position};
use runnel_storage::batch::compression::{self, Compression};
use runnel_storage::batch::{BatchBuilder, RecordBatch};
use tokio_stream::StreamExt as _;

use runnel_test_support::prelude::*;

fn record(key: Option<&str>, value: &str) -> pb::Record {
    pb::Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![pb::RecordHeader {
            key: "source".into(),
            value: Some(Bytes::from_static(b"test")),
        }],
        ..Default::default()
    }
}

fn records_entry(partition: Option<u32>, records: Vec<pb::Record>) -> pb::ProducePartition {
    pb::ProducePartition {
        partition,
        records,
        ..Default::default()
    }
}

async fn produce_records(
    b: &Connection,
    topic: &str,
    entries: Vec<pb::ProducePartition>,
) -> Result<pb::ProduceResponse, tonic::Status> {
    b.produce()
        .produce(produce_request(topic, pb::Acks::Written, entries))
        .await
        .map(tonic::Response::into_inner)
}

async fn fetch_records(
    b: &Connection,
    topic: &str,
    partition: u32,
    offset: u64,
) -> pb::FetchPartitionResult {
    let resp = b
        .consume()
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition(topic, partition, offset)],
            format: pb::RecordFormat::Records as i32,
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    resp.results.into_iter().next().expect("one result")
}

fn value(r: &pb::Record) -> &str {
    std::str::from_utf8(r.value.as_deref().unwrap_or_default()).expect("utf-8 value")
}

#[tokio::test]
async fn records_produced_as_messages_read_back_as_records_and_as_a_batch() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 3).await;
    let mut tombstone = record(Some("gone"), "");
    tombstone.value = None;
    tombstone.timestamp_ms = 1_600_000_000_000;
    let resp = produce_records(
        &b,
        "t",
        vec![records_entry(
            Some(1),
            vec![record(Some("a"), "one"), record(None, "two"), tombstone],
        )],
    )
    .await
    .unwrap();
    let result = &resp.results[0];
    assert!(result.error.is_none(), "{result:?}");
    assert_eq!((result.partition, result.batches[0].base_offset), (1, 0));

    let read = fetch_records(&b, "t", 1, 1).await;
    assert!(read.batches.is_empty());
    let offsets: Vec<u64> = read.records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        [1, 2],
        "records before the requested offset are left out"
    );
    assert_eq!(read.next_offset, 3);
    assert_eq!(value(&read.records[0]), "two");
    assert_eq!(read.records[0].key, None);
    assert_eq!(read.records[0].headers[0].key, "source");
    assert_eq!(read.records[1].value, None, "a null value stays null");
    assert_eq!(read.records[1].timestamp_ms, 1_600_000_000_000);
    assert!(
        read.records[0].timestamp_ms > 1_700_000_000_000,
        "0 means the broker's clock"
    );

    // The same data through the batch path: one stored batch of three records.
    let batches = fetch_all(&b, "t", 1, 0).await;
    assert_eq!(batches.len(), 1);
    let stored = RecordBatch::new(batches[0].clone(), usize::MAX).unwrap();
    assert_eq!(stored.header().record_count, 3);
}

#[tokio::test]
async fn records_choose_partitions_by_key_and_respect_the_batch_limits() {
    let b = TestBroker::start_with(|c| c.topic_defaults.max_batch_bytes = 4_096).await;
    create_topic(&b, "t", 4).await;
    let key = Bytes::from_static(b"order-42");
    let expected = runnel_proto::partition_for_key(&key, std::num::NonZeroU32::new(4).unwrap());
    let keyed = pb::ProducePartition {
        partition_key: Some(key),
        ..records_entry(None, vec![record(Some("order-42"), "created")])
    };
    let resp = produce_records(&b, "t", vec![keyed.clone(), keyed])
        .await
        .unwrap();
    assert_eq!(resp.results[0].partition, expected);
    assert_eq!(resp.results[1].partition, expected);
    assert_eq!(resp.results[1].batches[0].base_offset, 1);

    let big = records_entry(Some(0), vec![record(None, &"x".repeat(5_000))]);
    let resp = produce_records(&b, "t", vec![big]).await.unwrap();
    assert_inline(
        resp.results[0].error.as_ref(),
        ErrorCode::BatchTooLarge,
        "max_batch_bytes",
    );

    for (entry, needle) in [
        (
            pb::ProducePartition {
                batches: vec![batch(1, 1_000)],
                ..records_entry(Some(0), vec![record(None, "v")])
            },
            "partitions[0]: batches and records are both set",
        ),
        (
            pb::ProducePartition {
                producer: Some(pb::ProducerSequence::default()),
                ..entry(0, vec![batch(1, 1_000)])
            },
            "partitions[0].producer: only for records",
        ),
        (
            records_entry(Some(0), vec![]),
            "partitions[0]: at least one batch or record",
        ),
        (
            pb::ProducePartition {
                producer: Some(pb::ProducerSequence {
                    producer_epoch: 1 << 20,
                    ..Default::default()
                }),
                ..records_entry(Some(0), vec![record(None, "v")])
            },
            "partitions[0]: producer.producer_epoch 1048576 is outside [0, 32767]",
        ),
    ] {
        let e = produce_records(&b, "t", vec![entry]).await.unwrap_err();
        assert_status(&e, ErrorCode::InvalidRequest, needle);
    }
}

#[tokio::test]
async fn an_idempotent_record_retry_is_stored_once() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let init = b
        .produce()
        .init_producer(pb::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entry = |seq: i32, values: &[&str]| pb::ProducePartition {
        producer: Some(pb::ProducerSequence {
            producer_id: init.producer_id,
            producer_epoch: init.producer_epoch,
            base_sequence: seq,
        }),
        ..records_entry(Some(0), values.iter().map(|v| record(None, v)).collect())
    };
    let first = produce_records(&b, "t", vec![entry(0, &["a", "b"])])
        .await
        .unwrap();
    let retry = produce_records(&b, "t", vec![entry(0, &["a", "b"])])
        .await
        .unwrap();
    let (f, r) = (&first.results[0].batches[0], &retry.results[0].batches[0]);
    assert!(!f.duplicate);
    assert!(r.duplicate);
    assert_eq!(
        (r.base_offset, r.append_time_ms),
        (f.base_offset, f.append_time_ms)
    );
    let next = produce_records(&b, "t", vec![entry(2, &["c"])])
        .await
        .unwrap();
    assert_eq!(next.results[0].batches[0].base_offset, 2);
    let gap = produce_records(&b, "t", vec![entry(9, &["d"])])
        .await
        .unwrap();
    assert_inline(
        gap.results[0].error.as_ref(),
        ErrorCode::OutOfOrderSequence,
        "partitions[0].records: producer",
    );
    let values: Vec<String> = fetch_records(&b, "t", 0, 0)
        .await
        .records
        .iter()
        .map(|r| value(r).to_string())
        .collect();
    assert_eq!(values, ["a", "b", "c"]);
}

#[tokio::test]
async fn compressed_batches_are_read_back_as_records() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    for codec in [Compression::Lz4, Compression::Zstd] {
        let mut builder = BatchBuilder::new();
        for i in 0..20 {
            builder.push(
                None,
                Some(format!("{codec:?} {i}").as_bytes()),
                &[],
                1_000 + i,
            );
        }
        let section = compression::compress(codec, builder.records_section(), 3).unwrap();
        let packed = builder.build_with(codec, &section);
        RecordBatch::new(packed.clone(), 1 << 20).unwrap();
        let r = produce(&b, "t", 0, vec![packed]).await;
        assert!(r.error.is_none(), "{r:?}");
    }
    let read = fetch_records(&b, "t", 0, 15).await;
    let values: Vec<&str> = read.records.iter().map(value).collect();
    assert_eq!(values.len(), 25);
    assert_eq!(values[0], "Lz4 15");
    assert_eq!(values[5], "Zstd 0");
    assert_eq!(read.records[24].offset, 39);
}

#[tokio::test]
async fn one_subscribe_stream_carries_many_partitions_as_records() {
    let b = TestBroker::start().await;
    create_topic(&b, "a", 2).await;
    create_topic(&b, "b", 1).await;
    for (topic, partition) in [("a", 0), ("a", 1), ("b", 0)] {
        let v = format!("{topic}{partition}");
        let entry = records_entry(Some(partition), vec![record(None, &v), record(None, &v)]);
        produce_records(&b, topic, vec![entry]).await.unwrap();
    }
    let from = |o: u64| {
        Some(pb::StartPosition {
            position: Some(Position::Offset(o)),
        })
    };
    let mut stream = b
        .consume()
        .subscribe(pb::SubscribeRequest {
            format: pb::RecordFormat::Records as i32,
            partitions: vec![
                pb::SubscribePartition {
                    topic: "a".into(),
                    partition: 0,
                    start: from(0),
                },
                pb::SubscribePartition {
                    topic: "a".into(),
                    partition: 1,
                    start: from(1),
                },
                pb::SubscribePartition {
                    topic: "b".into(),
                    partition: 0,
                    start: Some(pb::StartPosition {
                        position: Some(Position::Boundary(OffsetBoundary::Latest as i32)),
                    }),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<(String, u32, u64, String)> = Vec::new();
    let mut starts = 0;
    while seen.len() < 4 {
        let r = within(stream.next()).await.unwrap().unwrap();
        if r.records.is_empty() {
            starts += 1;
        }
        if r.topic == "b" && r.records.is_empty() {
            assert_eq!(r.next_offset, 2, "latest resolves to the log end");
            let entry = records_entry(Some(0), vec![record(None, "b0 live")]);
            produce_records(&b, "b", vec![entry]).await.unwrap();
        }
        for rec in &r.records {
            seen.push((
                r.topic.clone(),
                r.partition,
                rec.offset,
                value(rec).to_string(),
            ));
        }
    }
    assert_eq!(starts, 3, "one confirming response per partition");
    seen.sort();
    let expected = [
        ("a", 0, 0, "a0"),
        ("a", 0, 1, "a0"),
        ("a", 1, 1, "a1"),
        ("b", 0, 2, "b0 live"),
    ];
    let expected: Vec<(String, u32, u64, String)> = expected
        .iter()
        .map(|(t, p, o, v)| (t.to_string(), *p, *o, v.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn multi_partition_subscriptions_are_checked_and_counted() {
    let b = TestBroker::start_with(|c| c.limits.max_subscriptions = 3).await;
    create_topic(&b, "t", 4).await;
    let part = |p: u32| pb::SubscribePartition {
        topic: "t".into(),
        partition: p,
        start: None,
    };
    let request = |partitions: Vec<pb::SubscribePartition>| pb::SubscribeRequest {
        partitions,
        ..Default::default()
    };
    let cases = [
        (
            pb::SubscribeRequest {
                topic: "t".into(),
                ..request(vec![part(0)])
            },
            ErrorCode::InvalidRequest,
            "with partitions, set them in each entry",
        ),
        (
            request(vec![part(1), part(1)]),
            ErrorCode::InvalidRequest,
            "partitions[1]: topic \"t\" partition 1 is listed twice",
        ),
        (
            request(vec![part(0), part(9)]),
            ErrorCode::UnknownPartition,
            "partitions[1]:",
        ),
        (
            pb::SubscribeRequest {
                format: 7,
                ..request(vec![part(0)])
            },
            ErrorCode::InvalidRequest,
            "format 7 is not a known value",
        ),
        (
            request(vec![part(0), part(1), part(2), part(3)]),
            ErrorCode::LimitExceeded,
            "max_subscriptions (3)",
        ),
    ];
    for (req, code, needle) in cases {
        let e = b.consume().subscribe(req).await.unwrap_err();
        assert_status(&e, code, needle);
    }
    // Three partitions on one stream take the three slots.
    let _held = b
        .consume()
        .subscribe(request(vec![part(0), part(1), part(2)]))
        .await
        .unwrap();
    let e = b
        .consume()
        .subscribe(request(vec![part(3)]))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "3 open, 1 more asked for");
}
