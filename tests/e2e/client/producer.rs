//! The producer against the real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_client::{
    ClientError, Compression, ErrorCode, ProducerConfig, ProducerRecord, TopicConfig,
};
use runnel_format::BatchHeader;

use super::proxy::Proxy;
use super::{client, client_at};
use crate::harness::*;
use runnel_proto::pb;
use runnel_test_support::errors::expected_status;

/// Values of every record stored in a partition, in offset order.
async fn stored_values(b: &Broker, topic: &str, partition: u32) -> Vec<String> {
    values(&fetch_all(b, topic, partition, 0).await, 0)
}

/// Stored values decoded through the client (handles compressed batches).
async fn consumed_values(b: &Broker, topic: &str, partition: u32, count: usize) -> Vec<String> {
    use futures_util::StreamExt as _;
    let c = client(b).await;
    let mut consumer = c
        .consumer(runnel_client::ConsumerConfig::default())
        .expect("consumer");
    consumer
        .assign(
            runnel_client::TopicPartition::new(topic, partition),
            runnel_client::StartAt::Earliest,
        )
        .expect("assign");
    let mut out = Vec::new();
    while out.len() < count {
        let r = within(consumer.next())
            .await
            .expect("a record")
            .expect("ok");
        out.push(r.value_str().expect("utf-8").to_owned());
    }
    out
}

#[tokio::test]
async fn order_per_partition_holds_with_several_batches_in_flight() {
    let b = Broker::start().await;
    create_topic(&b, "ordered", 3).await;
    let c = client(&b).await;
    let producer = c
        .producer(ProducerConfig {
            batch_bytes: 512,
            linger: Duration::from_millis(1),
            max_in_flight_per_partition: 5,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut deliveries = Vec::new();
    for i in 0..3_000 {
        let key = keys[i % keys.len()];
        let record = ProducerRecord::new("ordered", format!("{key}-{i:05}")).key(key);
        deliveries.push((key, producer.send(record).await.expect("queued")));
    }
    let mut offsets: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
    for (key, d) in deliveries {
        let m = within(d).await.expect("delivered");
        offsets
            .entry(key)
            .or_default()
            .push((m.partition, m.offset));
    }
    producer.close().await.expect("close");

    // Each key's records went to one partition, at increasing offsets.
    for (key, list) in &offsets {
        let partition = list[0].0;
        assert!(list.iter().all(|(p, _)| *p == partition), "{key}");
        assert!(
            list.windows(2).all(|w| w[0].1 < w[1].1),
            "{key}: offsets not increasing"
        );
        let expected = runnel_proto::partition_for_key(
            key.as_bytes(),
            std::num::NonZeroU32::new(3).expect("3"),
        );
        assert_eq!(partition, expected, "{key}: the broker's documented hash");
    }
    // The log holds every record once, each key's in the order sent, in many batches.
    let mut total = 0;
    for p in 0..3 {
        let batches = fetch_all(&b, "ordered", p, 0).await;
        let stored = values(&batches, 0);
        total += stored.len();
        for key in keys {
            let mine: Vec<&String> = stored.iter().filter(|v| v.starts_with(key)).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
        }
        if !stored.is_empty() {
            assert!(
                batches.len() > 10,
                "partition {p}: {} batches",
                batches.len()
            );
        }
    }
    assert_eq!(total, 3_000);
}

#[tokio::test]
async fn a_broken_connection_neither_loses_nor_duplicates() {
    let b = Broker::start().await;
    create_topic(&b, "cut", 2).await;
    // Cut every connection through the proxy after each 150 KB sent, three times.
    let proxy = Proxy::start(b.grpc, Some(150_000), 3).await;
    let c = client_at(&proxy.addr.to_string()).await;
    let producer = c
        .producer(ProducerConfig {
            batch_bytes: 4 << 10,
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let n = 8_000u32;
    let mut deliveries = Vec::new();
    for i in 0..n {
        let record =
            ProducerRecord::new("cut", format!("{:06}-{}", i, "x".repeat(60))).partition(i % 2);
        deliveries.push(within(producer.send(record)).await.expect("queued"));
    }
    for d in deliveries {
        within(d)
            .await
            .expect("every record is delivered despite the cuts");
    }
    producer.close().await.expect("close");
    assert!(
        proxy.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the proxy cut the connection"
    );
    // Exactly once and in order: compare with what was sent.
    for p in 0..2u32 {
        let stored = stored_values(&b, "cut", p).await;
        let expected: Vec<String> = (0..n)
            .filter(|i| i % 2 == p)
            .map(|i| format!("{:06}-{}", i, "x".repeat(60)))
            .collect();
        assert_eq!(
            stored.len(),
            expected.len(),
            "partition {p}: no loss, no duplicate"
        );
        assert!(
            stored == expected,
            "partition {p}: same records, same order"
        );
    }
}

#[tokio::test]
async fn every_codec_round_trips_and_is_stored_compressed() {
    let b = Broker::start().await;
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let topic = format!("codec-{}", runnel_client::compression::name(codec));
        create_topic(&b, &topic, 1).await;
        let c = client(&b).await;
        let producer = c
            .producer(ProducerConfig {
                compression: codec,
                linger: Duration::from_millis(20),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        let sent: Vec<String> = (0..500)
            .map(|i| {
                format!(
                    "{{\"order\": {i}, \"status\": \"created\", \"pad\": \"{}\"}}",
                    "ab".repeat(40)
                )
            })
            .collect();
        for v in &sent {
            let d = producer
                .send(ProducerRecord::new(&topic, v.clone()).key("k"))
                .await;
            drop(d.expect("queued"));
        }
        producer.close().await.expect("close");
        let batches = fetch_all(&b, &topic, 0, 0).await;
        for batch in &batches {
            let h = BatchHeader::decode(batch).expect("header");
            assert_eq!(h.compression(), Some(codec), "{topic}: stored as sent");
        }
        let got = consumed_values(&b, &topic, 0, sent.len()).await;
        assert_eq!(got, sent, "{topic}");
    }
}

#[tokio::test]
async fn a_record_over_the_batch_limit_gets_a_clear_error() {
    let b = Broker::start().await;
    let c = client(&b).await;
    c.admin()
        .create_topic(
            "small",
            1,
            TopicConfig {
                max_batch_bytes: Some(1024),
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    let err = producer
        .send(ProducerRecord::new("small", vec![b'x'; 2000]))
        .await
        .expect_err("too large");
    match &err {
        ClientError::RecordTooLarge { size, limit, .. } => {
            assert!(*size > 2000);
            assert_eq!(*limit, 1024);
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("max_batch_bytes") && text.contains("1024"),
        "{text}"
    );
    assert!(!err.is_retriable());
    // Records that fit still go, and fill batches up to the limit, not past it.
    for i in 0..50 {
        let d = producer
            .send(ProducerRecord::new(
                "small",
                format!("{i:03}-{}", "y".repeat(100)),
            ))
            .await
            .expect("fits");
        drop(d);
    }
    producer.close().await.expect("close");
    let batches = fetch_all(&b, "small", 0, 0).await;
    assert!(batches.iter().all(|b| b.len() <= 1024));
    assert_eq!(values(&batches, 0).len(), 50);
}

#[tokio::test]
async fn errors_are_typed_and_the_buffer_is_bounded() {
    let b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let c = client(&b).await;
    // An unknown topic: the broker's code, status and message.
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    let err = producer
        .send(ProducerRecord::new("nope", "v"))
        .await
        .expect_err("unknown topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    assert_eq!(
        err.grpc_status(),
        Some(expected_status(pb::ErrorCode::UnknownTopic))
    );
    assert!(err.broker_message().is_some_and(|m| m.contains("nope")));
    assert!(!err.is_retriable());
    // A partition the topic lacks.
    let err = producer
        .send(ProducerRecord::new("t", "v").partition(5))
        .await
        .expect_err("no partition 5");
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");

    // A tiny buffer: sends wait for room instead of growing; all records still arrive.
    let small = c
        .producer(ProducerConfig {
            buffer_bytes: 4 << 10,
            batch_bytes: 1 << 10,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let record = ProducerRecord::new("t", vec![b'z'; 1500]);
    let mut deliveries = Vec::new();
    for _ in 0..40 {
        deliveries.push(within(small.send(record.clone())).await.expect("queued"));
    }
    for d in deliveries {
        within(d).await.expect("delivered");
    }
    small.close().await.expect("close");
    // A closed producer refuses records.
    let err = small.send(record).await.expect_err("closed");
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    assert_eq!(values(&fetch_all(&b, "t", 0, 0).await, 0).len(), 40);
}

#[tokio::test]
async fn flush_sends_at_once_and_close_reports_every_record() {
    let b = Broker::start().await;
    create_topic(&b, "f", 2).await;
    let c = client(&b).await;
    let producer = c
        .producer(ProducerConfig {
            // Without a flush nothing would go for a long time.
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let d = producer
        .send(ProducerRecord::new("f", "one"))
        .await
        .expect("queued");
    within(producer.flush()).await.expect("flushed");
    let m = within(d).await.expect("delivered by the flush");
    assert_eq!(m.offset, 0);

    // Delete the topic under the producer: close reports the records that could not go.
    let d = producer
        .send(ProducerRecord::new("f", "two").partition(1))
        .await
        .expect("queued");
    c.admin().delete_topic("f").await.expect("delete");
    let err = within(producer.close()).await.expect_err("undelivered");
    match err {
        ClientError::Undelivered { failed, first } => {
            assert_eq!(failed, 1);
            assert_eq!(first.code(), Some(ErrorCode::UnknownTopic), "{first}");
        }
        other => panic!("{other:?}"),
    }
    let e = within(d).await.expect_err("its own future has the error");
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
}

#[tokio::test]
async fn a_producer_survives_a_broker_restart() {
    let b = Broker::start().await;
    create_topic(&b, "r", 1).await;
    // The restarted broker listens on a new port; the proxy keeps the client's address.
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let c = client_at(&proxy.addr.to_string()).await;
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..100 {
        let d = producer
            .send(ProducerRecord::new("r", format!("before-{i}")))
            .await
            .expect("queued");
        drop(d);
    }
    producer.flush().await.expect("flushed");
    let b = b.restart().await;
    proxy.set_upstream(b.grpc);
    let mut deliveries = Vec::new();
    for i in 0..100 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("r", format!("after-{i}")))
                .await
                .expect("queued"),
        );
    }
    for d in deliveries {
        within(d).await.expect("delivered after the restart");
    }
    let stored = stored_values(&b, "r", 0).await;
    assert_eq!(stored.len(), 200);
    assert_eq!(stored[100], "after-0");
}

#[tokio::test]
async fn send_all_queues_many_records_as_sends_in_turn_would_and_checks_them_all_first() {
    let b = Broker::start().await;
    create_topic(&b, "many", 3).await;
    let c = client(&b).await;
    let producer = c
        .producer(ProducerConfig {
            batch_bytes: 4096,
            // Chunks of a quarter of the buffer: several per call below.
            buffer_bytes: 64 << 10,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let keys = ["alice", "bob", "carol", "dave"];
    let records: Vec<ProducerRecord> = (0..2_000)
        .map(|i| {
            let key = keys[i % keys.len()];
            ProducerRecord::new("many", format!("{key}-{i:05}")).key(key)
        })
        .collect();
    // The same records twice: borrowed, so they can be sent again. One wait for all.
    let mut deliveries = producer.send_all(&records).await.expect("queued");
    deliveries.extend(producer.send_all(&records).await.expect("queued again"));
    assert_eq!(deliveries.len(), 4_000);
    let delivered = within(deliveries).await;
    delivered.check().expect("every record stored");
    assert_eq!((delivered.len(), delivered.stored()), (4_000, 4_000));
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for (i, m) in delivered.iter().enumerate() {
        let m = m.expect("delivered");
        let key = keys[i % 2_000 % keys.len()];
        let expected = runnel_proto::partition_for_key(
            key.as_bytes(),
            std::num::NonZeroU32::new(3).expect("3"),
        );
        assert_eq!(m.partition, expected, "record {i}");
        if let Some(prev) = last.insert(m.partition, m.offset) {
            assert!(
                m.offset > prev,
                "record {i}: offsets follow the order of the records"
            );
        }
    }
    let stored: usize = {
        let mut n = 0;
        for p in 0..3 {
            n += stored_values(&b, "many", p).await.len();
        }
        n
    };
    assert_eq!(stored, 4_000);

    // Or a future per record, each saying where its record went.
    let futures = producer
        .send_all(&records[..100])
        .await
        .expect("queued")
        .into_futures();
    assert_eq!(futures.len(), 100);
    for (i, d) in futures.into_iter().enumerate() {
        let m = within(d).await.expect("delivered");
        let expected = runnel_proto::partition_for_key(
            keys[i % keys.len()].as_bytes(),
            std::num::NonZeroU32::new(3).expect("3"),
        );
        assert_eq!(m.partition, expected, "record {i}");
        let prev = last
            .insert(m.partition, m.offset)
            .expect("partition written before");
        assert_eq!(
            m.offset,
            prev + 1,
            "record {i}: the next offset of its partition"
        );
    }

    // One record too large or a partition that does not exist: nothing of the call is queued.
    let mut bad = records[..10].to_vec();
    bad[5] = ProducerRecord::new("many", "x").partition(7);
    let e = producer.send_all(&bad).await.expect_err("partition 7");
    assert!(e.to_string().contains("partition 7"), "{e}");
    let mut big = records[..10].to_vec();
    big[9] = ProducerRecord::new("many", vec![b'x'; 2 << 20]);
    let e = producer.send_all(&big).await.expect_err("too large");
    assert!(matches!(e, ClientError::RecordTooLarge { .. }), "{e:?}");
    producer.close().await.expect("close");
    let mut after = 0;
    for p in 0..3 {
        after += stored_values(&b, "many", p).await.len();
    }
    assert_eq!(after, 4_100, "the refused calls queued nothing");
}
