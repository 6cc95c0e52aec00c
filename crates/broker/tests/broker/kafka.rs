//! The Kafka protocol listener in-process, spoken to with `kafka-protocol`'s own encoder and
//! decoder: one broker, two protocols, the same topics and records byte for byte; what Kafka
//! closes a connection for closes it here, and the listener serves on afterwards.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use runnel_test_support::kafka::KafkaConn;
use runnel_test_support::prelude::*;
use runnel_test_support::process::free_addr;

async fn broker() -> (TestBroker, SocketAddr) {
    let addr = free_addr();
    let b = TestBroker::start_with(|c| c.kafka.listen = addr.to_string()).await;
    (b, addr)
}

fn topic_name(n: &str) -> TopicName {
    TopicName(StrBytes::from_string(n.to_owned()))
}

fn records(producer: i64, epoch: i16, first_seq: i32, n: i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("trace"),
                Some(Bytes::from(format!("t{i}"))),
            );
            headers.insert(StrBytes::from_static_str("nothing"), None);
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: first_seq + i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("kafka-{i}"))),
                headers,
            }
        })
        .collect()
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode a batch");
    buf.freeze()
}

async fn produce_kafka(
    k: &mut KafkaConn,
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
) -> PartitionProduceResponse {
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(batch);
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![data];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 5000;
    r.topic_data = vec![t];
    match k.call(ApiKey::Produce, 9, RequestKind::Produce(r)).await {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].clone(),
        other => panic!("{other:?}"),
    }
}

use kafka_protocol::messages::produce_response::PartitionProduceResponse;

async fn fetch_kafka(
    k: &mut KafkaConn,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i16, i64, Bytes) {
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.max_wait_ms = 100;
    r.max_bytes = 1 << 20;
    r.topics = vec![t];
    match k.call(ApiKey::Fetch, 11, RequestKind::Fetch(r)).await {
        ResponseKind::Fetch(r) => {
            let d = &r.responses[0].partitions[0];
            (
                d.error_code,
                d.high_watermark,
                d.records.clone().unwrap_or_default(),
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kafka_and_grpc_clients_share_topics_and_records_byte_for_byte() {
    let (b, addr) = broker().await;
    create_topic(&b, "orders", 2).await;
    let mut k = KafkaConn::connect(addr).await;

    // Metadata: the topic, its partitions, this broker as leader, the topic's id.
    let mut topic = MetadataRequestTopic::default();
    topic.name = Some(topic_name("orders"));
    let mut m = MetadataRequest::default();
    m.topics = Some(vec![topic]);
    let ResponseKind::Metadata(meta) = k.call(ApiKey::Metadata, 12, RequestKind::Metadata(m)).await
    else {
        panic!("metadata");
    };
    assert_eq!(meta.brokers.len(), 1);
    assert_eq!(meta.brokers[0].port, i32::from(addr.port()));
    assert_eq!(meta.topics[0].partitions.len(), 2);
    assert!(!meta.topics[0].topic_id.is_nil());

    // An idempotent Kafka producer, gzip: the records read back over gRPC as sent.
    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    init.producer_id = ProducerId(-1);
    init.producer_epoch = -1;
    let ResponseKind::InitProducerId(init) = k
        .call(ApiKey::InitProducerId, 4, RequestKind::InitProducerId(init))
        .await
    else {
        panic!("init");
    };
    assert_eq!(init.error_code, 0);
    let sent = records(init.producer_id.0, init.producer_epoch, 0, 20);
    let batch = encode(&sent, Compression::Gzip);
    let p = produce_kafka(&mut k, "orders", 0, batch.clone(), -1).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    // The same batch again is a retry: the same offset, nothing written twice.
    let again = produce_kafka(&mut k, "orders", 0, batch, -1).await;
    assert_eq!((again.error_code, again.base_offset), (0, 0));
    let stored = fetch_all(&b, "orders", 0, 0).await;
    let mut got = Vec::new();
    for s in &stored {
        let rb = runnel_storage::batch::RecordBatch::new(s.clone(), usize::MAX).expect("a batch");
        for r in runnel_storage::batch::compression::records(&rb, 1 << 20).expect("records") {
            got.push(r.expect("a record"));
        }
    }
    assert_eq!(got.len(), 20, "written once");
    for (r, s) in got.iter().zip(&sent) {
        assert_eq!((r.offset as i64, r.timestamp), (s.offset, s.timestamp));
        assert_eq!((&r.key, &r.value), (&s.key, &s.value));
        assert_eq!(r.headers[0].value.as_deref(), s.headers[0].as_deref());
        assert_eq!(r.headers[1].value, None);
    }

    // Records produced over gRPC read over Kafka, at their offsets.
    produce(&b, "orders", 1, vec![batch_of("grpc", 0, 5)]).await;
    let (error, high_watermark, bytes) = fetch_kafka(&mut k, "orders", 1, 2).await;
    assert_eq!((error, high_watermark), (0, 5));
    let mut bytes = bytes;
    let set = RecordBatchDecoder::decode(&mut bytes).expect("Kafka decodes it");
    let values: Vec<_> = set
        .records
        .iter()
        .map(|r| (r.offset, r.value.clone().expect("a value")))
        .collect();
    assert_eq!(values[2], (2, Bytes::from("grpc-2")));
    assert_eq!(values.len(), 5, "whole batches, as Kafka sends them");

    // ListOffsets: the start, the end, a time.
    let mut lo = ListOffsetsTopic::default();
    lo.name = topic_name("orders");
    lo.partitions = [-2, -1, 1_700_000_000_000 + 7, 4_000_000_000_000]
        .into_iter()
        .map(|ts| {
            let mut p = ListOffsetsPartition::default();
            p.partition_index = 0;
            p.timestamp = ts;
            p
        })
        .collect();
    let mut r = ListOffsetsRequest::default();
    r.topics = vec![lo];
    let ResponseKind::ListOffsets(lo) = k
        .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(r))
        .await
    else {
        panic!("list offsets");
    };
    let offsets: Vec<i64> = lo.topics[0].partitions.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets,
        [0, 20, 7, -1],
        "the record at the time is inside the first batch, at offset 7 (Kafka answers the \
         record, not its batch); none is at or after the last"
    );

    // An out-of-range fetch says so, as Kafka does.
    let (error, _, _) = fetch_kafka(&mut k, "orders", 0, 99).await;
    assert_eq!(
        error,
        kafka_protocol::ResponseError::OffsetOutOfRange.code()
    );
    b.stop().await;
}

#[tokio::test]
async fn acks_0_is_stored_without_an_answer() {
    let (b, addr) = broker().await;
    create_topic(&b, "fire", 1).await;
    let mut k = KafkaConn::connect(addr).await;
    let mut data = PartitionProduceData::default();
    data.index = 0;
    data.records = Some(encode(&records(-1, -1, -1, 3), Compression::None));
    let mut t = TopicProduceData::default();
    t.name = topic_name("fire");
    t.partition_data = vec![data];
    let mut r = ProduceRequest::default();
    r.acks = 0;
    r.topic_data = vec![t];
    k.send_only(ApiKey::Produce, 9, RequestKind::Produce(r))
        .await;
    // The next request's answer is the next thing on the connection.
    let (error, high_watermark, _) = fetch_kafka(&mut k, "fire", 0, 0).await;
    assert_eq!((error, high_watermark), (0, 3));
    b.stop().await;
}

#[tokio::test]
async fn what_kafka_closes_a_connection_for_closes_it_and_the_listener_serves_on() {
    let (b, addr) = broker().await;
    // ApiVersions at a version not served: answered at version 0 with UNSUPPORTED_VERSION
    // and the versions served.
    let mut k = KafkaConn::connect(addr).await;
    let mut frame = BytesMut::new();
    let body: &[u8] = &[0, 18, 0, 99, 0, 0, 0, 7, 0, 0];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    let answer = k.raw(&frame).await.expect("an answer");
    let ResponseKind::ApiVersions(v) =
        runnel_test_support::kafka::decode_response(ApiKey::ApiVersions, 0, answer)
    else {
        panic!("api versions");
    };
    assert_eq!(
        v.error_code,
        kafka_protocol::ResponseError::UnsupportedVersion.code()
    );
    assert!(
        v.api_keys
            .iter()
            .any(|a| a.api_key == ApiKey::Produce as i16)
    );
    assert!(
        !v.api_keys
            .iter()
            .any(|a| a.api_key == ApiKey::EndTxn as i16),
        "only what is served"
    );

    let close_cases: [(&str, Vec<u8>); 6] = [
        // Metadata v1 claiming two billion topics in a few bytes: a decoder that sizes its
        // vector from the count asks for ~150 GB (runnel_broker::alloc keeps that from
        // aborting the process).
        (
            "an array count far past the bytes sent",
            framed(&[
                0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0, 0,
            ]),
        ),
        (
            "an unknown API key",
            framed(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "a version not served",
            framed(&[0, 0, 0, 99, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "a body that does not decode",
            framed(&[0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0xff, 0xff]),
        ),
        ("a size over the limit", (1u32 << 30).to_be_bytes().to_vec()),
        ("a negative size", (-5i32).to_be_bytes().to_vec()),
    ];
    for (what, bytes) in close_cases {
        let mut k = KafkaConn::connect(addr).await;
        assert!(
            k.raw(&bytes).await.is_none(),
            "{what}: the connection is closed"
        );
    }
    // A size that lies (more promised than sent) holds nothing but the connection; the
    // listener answers others meanwhile.
    let mut liar = KafkaConn::connect(addr).await;
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        liar.raw(&framed_lie()),
    )
    .await;
    let mut k = KafkaConn::connect(addr).await;
    let ResponseKind::ApiVersions(v) = k
        .call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await
    else {
        panic!("api versions");
    };
    assert_eq!(v.error_code, 0);
    b.stop().await;
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn framed_lie() -> Vec<u8> {
    let mut out = 60_000_000u32.to_be_bytes().to_vec();
    out.extend_from_slice(&[0, 18, 0, 3, 0, 0, 0, 1]);
    out
}

#[tokio::test]
async fn topics_are_created_and_deleted_over_kafka_with_configs_mapped() {
    let (b, addr) = broker().await;
    let mut k = KafkaConn::connect(addr).await;
    let config = |name: &str, value: &str| {
        let mut c = CreatableTopicConfig::default();
        c.name = StrBytes::from_string(name.to_owned());
        c.value = Some(StrBytes::from_string(value.to_owned()));
        c
    };
    let topic =
        |name: &str, partitions: i32, replication: i16, configs: Vec<CreatableTopicConfig>| {
            let mut t = CreatableTopic::default();
            t.name = topic_name(name);
            t.num_partitions = partitions;
            t.replication_factor = replication;
            t.configs = configs;
            t
        };
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![
        topic(
            "made",
            3,
            -1,
            vec![
                config("retention.ms", "3600000"),
                config("cleanup.policy", "delete"),
            ],
        ),
        topic("replicated", 1, 3, vec![]),
        topic("compacted", 1, 1, vec![config("cleanup.policy", "compact")]),
        topic(
            "odd",
            1,
            1,
            vec![config("message.timestamp.type", "LogAppendTime")],
        ),
    ];
    let ResponseKind::CreateTopics(created) = k
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(r))
        .await
    else {
        panic!("create");
    };
    let codes: Vec<i16> = created.topics.iter().map(|t| t.error_code).collect();
    use kafka_protocol::ResponseError as E;
    assert_eq!(
        codes,
        [
            0,
            E::InvalidReplicationFactor.code(),
            E::InvalidConfig.code(),
            E::InvalidConfig.code()
        ]
    );
    assert!(
        created.topics[3]
            .error_message
            .as_ref()
            .is_some_and(|m| m.contains("message.timestamp.type")),
        "{:?}",
        created.topics[3].error_message
    );
    let d = describe_topic(&b, "made").await;
    assert_eq!(d.partition_count, 3);
    assert_eq!(d.config.and_then(|c| c.retention_ms), Some(3_600_000));

    // CreatePartitions: 3 to 5; fewer is refused.
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    async fn grow(k: &mut KafkaConn, count: i32) -> i16 {
        let mut t = CreatePartitionsTopic::default();
        t.name = topic_name("made");
        t.count = count;
        t.assignments = None;
        let mut r = CreatePartitionsRequest::default();
        r.topics = vec![t];
        match k
            .call(
                ApiKey::CreatePartitions,
                3,
                RequestKind::CreatePartitions(r),
            )
            .await
        {
            ResponseKind::CreatePartitions(r) => r.results[0].error_code,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(grow(&mut k, 5).await, 0);
    assert_eq!(describe_topic(&b, "made").await.partition_count, 5);
    let shrunk = grow(&mut k, 2).await;
    assert_eq!(shrunk, E::InvalidPartitions.code());

    // DescribeConfigs: the effective config by Kafka's names, and where each value comes from.
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_static_str("made");
    resource.configuration_keys = None;
    let mut r = DescribeConfigsRequest::default();
    r.resources = vec![resource];
    let ResponseKind::DescribeConfigs(configs) = k
        .call(ApiKey::DescribeConfigs, 4, RequestKind::DescribeConfigs(r))
        .await
    else {
        panic!("describe configs");
    };
    let found: Vec<(String, String, i8)> = configs.results[0]
        .configs
        .iter()
        .map(|c| {
            let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            (c.name.to_string(), value, c.config_source)
        })
        .collect();
    assert!(
        found.contains(&("retention.ms".into(), "3600000".into(), 1)),
        "{found:?}"
    );
    assert!(
        found.contains(&("segment.bytes".into(), "1073741824".into(), 5)),
        "{found:?}"
    );
    assert!(
        found.contains(&("cleanup.policy".into(), "delete".into(), 5)),
        "{found:?}"
    );

    let mut r = DeleteTopicsRequest::default();
    r.topic_names = vec![topic_name("made"), topic_name("never")];
    let ResponseKind::DeleteTopics(deleted) = k
        .call(ApiKey::DeleteTopics, 5, RequestKind::DeleteTopics(r))
        .await
    else {
        panic!("delete");
    };
    let codes: Vec<i16> = deleted.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, E::UnknownTopicOrPartition.code()]);
    b.stop().await;
}

async fn metadata_of(k: &mut KafkaConn, topic: &str, auto_create: bool) -> (i16, usize) {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(topic_name(topic));
    let mut r = MetadataRequest::default();
    r.topics = Some(vec![t]);
    r.allow_auto_topic_creation = auto_create;
    match k.call(ApiKey::Metadata, 12, RequestKind::Metadata(r)).await {
        ResponseKind::Metadata(r) => (r.topics[0].error_code, r.topics[0].partitions.len()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn topics_are_created_on_metadata_only_when_auto_creation_is_on_and_allowed() {
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    let (_b, addr) = broker().await;
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(
        metadata_of(&mut k, "asked-for", true).await,
        (UNKNOWN_TOPIC_OR_PARTITION, 0),
        "off by default"
    );

    let addr = free_addr();
    let b = TestBroker::start_with(|c| {
        c.kafka.listen = addr.to_string();
        c.kafka.auto_create_topics = true;
        c.kafka.auto_create_partitions = 3;
    })
    .await;
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(
        metadata_of(&mut k, "not-asked", false).await,
        (UNKNOWN_TOPIC_OR_PARTITION, 0),
        "the request did not allow it"
    );
    assert_eq!(metadata_of(&mut k, "asked-for", true).await, (0, 3));
    assert_eq!(describe_topic(&b, "asked-for").await.partitions.len(), 3);
    const INVALID_TOPIC_EXCEPTION: i16 = 17;
    assert_eq!(
        metadata_of(&mut k, "not a name", true).await,
        (INVALID_TOPIC_EXCEPTION, 0),
        "an invalid name is not created, and refused for good"
    );
}
