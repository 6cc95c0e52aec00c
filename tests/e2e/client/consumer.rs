//! The standalone consumer and the admin API against the real broker.

use std::time::Duration;

use futures_util::StreamExt as _;
use runnel_client::{
    ClientError, ConsumerConfig, ConsumerRecord, Durability, ErrorCode, OffsetSpec, ProducerConfig,
    ProducerRecord, StartAt, TopicConfig, TopicPartition, TraceParent,
};

use super::proxy::Proxy;
use super::{client, client_at};
use crate::harness::*;
use runnel_proto::pb;
use runnel_test_support::errors::expected_status;

async fn next(consumer: &mut runnel_client::Consumer) -> ConsumerRecord {
    within(consumer.next())
        .await
        .expect("the stream goes on")
        .expect("a record")
}

async fn produce_values(b: &Broker, topic: &str, partition: u32, values: &[String], ts: i64) {
    let c = client(b).await;
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for v in values {
        let d = producer
            .send(
                ProducerRecord::new(topic, v.clone())
                    .partition(partition)
                    .timestamp(ts),
            )
            .await
            .expect("queued");
        drop(d);
    }
    producer.close().await.expect("close");
}

#[tokio::test]
async fn assign_seek_pause_and_resume() {
    let b = Broker::start().await;
    create_topic(&b, "s", 2).await;
    let first: Vec<String> = (0..100).map(|i| format!("a{i:03}")).collect();
    produce_values(&b, "s", 0, &first, 1_000).await;
    let later: Vec<String> = (0..50).map(|i| format!("b{i:03}")).collect();
    produce_values(&b, "s", 0, &later, 5_000).await;

    let c = client(&b).await;
    let mut consumer = c.consumer(ConsumerConfig::default()).expect("consumer");
    let tp = TopicPartition::new("s", 0);
    // Earliest reads everything in order.
    consumer
        .assign(tp.clone(), StartAt::Earliest)
        .expect("assign");
    for i in 0..150u64 {
        let r = next(&mut consumer).await;
        assert_eq!(r.offset, i);
    }
    // An offset in the middle of a batch: nothing before it is returned.
    consumer.seek(&tp, StartAt::Offset(42)).expect("seek");
    let r = next(&mut consumer).await;
    assert_eq!((r.offset, r.value_str()), (42, Some("a042")));
    // A timestamp: the first batch at or after it.
    consumer.seek(&tp, StartAt::Timestamp(4_000)).expect("seek");
    let r = next(&mut consumer).await;
    assert_eq!(r.value_str(), Some("b000"));
    assert_eq!(r.timestamp, 5_000);
    assert_eq!(consumer.position(&tp), Some(101));

    // Pause: nothing of the partition arrives; resume goes on where the application was.
    consumer.pause(&tp);
    produce_values(&b, "s", 0, &["c0".to_owned()], 9_000).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(quiet.is_err(), "a paused partition returns nothing");
    consumer.resume(&tp);
    let r = next(&mut consumer).await;
    assert_eq!((r.offset, r.value_str()), (101, Some("b001")));

    // Latest: only what comes after.
    consumer.seek(&tp, StartAt::Latest).expect("seek");
    let quiet = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(quiet.is_err());
    produce_values(&b, "s", 0, &["d0".to_owned()], 9_000).await;
    let r = next(&mut consumer).await;
    assert_eq!(r.value_str(), Some("d0"));

    // Once "latest" has resolved, a pause keeps that position: what is published while the
    // partition is paused is read on resume, not skipped by a later "latest".
    consumer.seek(&tp, StartAt::Latest).expect("seek");
    assert_eq!(consumer.position(&tp), None);
    let quiet = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(quiet.is_err());
    assert_eq!(
        consumer.position(&tp),
        Some(152),
        "latest resolved to the log end"
    );
    consumer.pause(&tp);
    produce_values(&b, "s", 0, &["e0".to_owned()], 9_000).await;
    consumer.resume(&tp);
    let r = next(&mut consumer).await;
    assert_eq!((r.offset, r.value_str()), (152, Some("e0")));
    assert_eq!(consumer.assignment(), vec![tp]);
}

#[tokio::test]
async fn headers_and_trace_context_travel_with_records() {
    let b = Broker::start().await;
    create_topic(&b, "traced", 1).await;
    let c = client(&b).await;
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    let trace = TraceParent::generate();
    let m = producer
        .send_and_wait(
            ProducerRecord::new("traced", "payload")
                .key("order-7")
                .header("content-type", "text/plain")
                .traceparent(&trace)
                .timestamp(1_234),
        )
        .await
        .expect("delivered");
    let mut consumer = c.consumer(ConsumerConfig::default()).expect("consumer");
    consumer
        .assign(
            TopicPartition::new("traced", m.partition),
            StartAt::Offset(m.offset),
        )
        .expect("assign");
    let r = next(&mut consumer).await;
    assert_eq!(r.key_str(), Some("order-7"));
    assert_eq!(r.timestamp, 1_234);
    assert_eq!(
        r.header("content-type").flatten().map(|v| &v[..]),
        Some(&b"text/plain"[..])
    );
    assert_eq!(
        r.traceparent(),
        Some(trace),
        "the trace context survives the trip"
    );
}

#[tokio::test]
async fn a_consumer_resumes_after_its_connection_breaks() {
    let b = Broker::start().await;
    create_topic(&b, "resume", 1).await;
    let values: Vec<String> = (0..300).map(|i| format!("v{i:03}")).collect();
    produce_values(&b, "resume", 0, &values[..150], 1).await;
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let c = client_at(&proxy.addr.to_string()).await;
    let mut consumer = c.consumer(ConsumerConfig::default()).expect("consumer");
    consumer
        .assign(TopicPartition::new("resume", 0), StartAt::Earliest)
        .expect("assign");
    let mut got = Vec::new();
    for _ in 0..150 {
        got.push(
            next(&mut consumer)
                .await
                .value_str()
                .expect("utf-8")
                .to_owned(),
        );
    }
    proxy.cut();
    produce_values(&b, "resume", 0, &values[150..], 1).await;
    for _ in 150..300 {
        got.push(
            next(&mut consumer)
                .await
                .value_str()
                .expect("utf-8")
                .to_owned(),
        );
    }
    assert_eq!(got, values, "nothing lost or repeated across the reconnect");
}

#[tokio::test]
async fn admin_covers_topics_configs_offsets_and_the_broker() {
    let b = Broker::start().await;
    let c = client(&b).await;
    let admin = c.admin();
    let created = admin
        .create_topic(
            "adm",
            2,
            TopicConfig {
                retention_ms: Some(60_000),
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    assert_eq!(created.partition_count, 2);
    assert_eq!(created.config.retention_ms, Some(60_000));
    assert_eq!(created.overrides, ["retention_ms"]);
    let err = admin
        .create_topic("adm", 2, TopicConfig::default())
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Some(ErrorCode::TopicExists));
    assert_eq!(
        err.grpc_status(),
        Some(expected_status(pb::ErrorCode::TopicExists))
    );
    assert!(
        !admin
            .ensure_topic("adm", 2, TopicConfig::default())
            .await
            .expect("ensure")
    );

    let altered = admin
        .alter_topic_config(
            "adm",
            TopicConfig {
                durability: Some(Durability::Always),
                ..TopicConfig::default()
            },
            &["retention_ms"],
        )
        .await
        .expect("alter");
    assert_eq!(altered.config.durability, Some(Durability::Always));
    assert_eq!(altered.overrides, ["durability"]);
    let err = admin
        .alter_topic_config(
            "adm",
            TopicConfig {
                segment_bytes: Some(1),
                ..TopicConfig::default()
            },
            &[],
        )
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));

    assert_eq!(admin.create_partitions("adm", 4).await.expect("grow"), 4);
    let listed = admin.list_topics().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].partition_count),
        ("adm", 4)
    );

    produce_values(&b, "adm", 1, &["x".to_owned(), "y".to_owned()], 10).await;
    let d = admin.describe_topic("adm").await.expect("describe");
    assert_eq!(d.partitions[1].log_end_offset, 2);
    let offsets = admin
        .list_offsets(&[
            ("adm", 1, OffsetSpec::Earliest),
            ("adm", 1, OffsetSpec::Latest),
            ("adm", 1, OffsetSpec::Timestamp(5)),
            ("adm", 9, OffsetSpec::Latest),
        ])
        .await
        .expect("list offsets");
    assert_eq!(offsets[0].as_ref().expect("ok").offset, 0);
    assert_eq!(offsets[1].as_ref().expect("ok").offset, 2);
    assert_eq!(offsets[2].as_ref().expect("ok").timestamp_ms, Some(10));
    assert_eq!(
        offsets[3].as_ref().expect_err("no partition 9").code(),
        Some(ErrorCode::UnknownPartition)
    );

    let info = admin.broker_info().await.expect("info");
    assert!(!info.version.is_empty());
    assert!(info.disk_total_bytes > 0);

    admin.delete_topic("adm").await.expect("delete");
    let err = admin.describe_topic("adm").await.expect_err("gone");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_clearly() {
    let addr = free_addr();
    let err = runnel_client::Client::connect_with(runnel_client::ClientConfig {
        connect_attempts: 2,
        backoff: runnel_client::Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(10),
            multiplier: 2.0,
        },
        ..runnel_client::ClientConfig::new(addr.to_string())
    })
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("broker unreachable at {addr}")),
        "{err}"
    );
}
