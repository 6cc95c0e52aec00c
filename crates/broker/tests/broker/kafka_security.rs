//! Authentication and authorization on the Kafka listener: every API the listener serves
//! closes the connection of a client that has not authenticated, answers an authenticated
//! one without ACLs with Kafka's authorization error, and serves one with the ACLs
//! `docs/kafka.md` lists for it (the same as the matching gRPC call's). An API missing from
//! the table fails the test. Then SASL/PLAIN itself: wrong passwords, tokens, mechanisms.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use prost::Message as _;
use runnel_proto::pb;
use runnel_test_support::kafka::KafkaConn;
use runnel_test_support::prelude::*;
use runnel_test_support::process::free_addr;
use runnel_test_support::rpc::CallKind::Unary;
use std::net::SocketAddr;

use crate::security::{ADMIN_PASSWORD, acl, add_user, allow, as_admin};

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

async fn secured() -> (TestBroker, SocketAddr) {
    let addr = free_addr();
    let b = TestBroker::start_with(|c| {
        c.kafka.listen = addr.to_string();
        c.auth.enabled = true;
        c.auth.bootstrap_password = ADMIN_PASSWORD.into();
        c.auth.failure_delay_ms = 1;
        c.auth.max_failure_delay_ms = 1;
    })
    .await;
    (b, addr)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// A connection authenticated as the administrator.
async fn admin(addr: SocketAddr) -> KafkaConn {
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(k.sasl_plain("admin", ADMIN_PASSWORD).await, Some(0));
    k
}

/// The administrator's gRPC calls: users, tokens, ACLs and topics are managed there.
struct Admin<'a>(&'a TestBroker);

impl Admin<'_> {
    async fn create_topic(&self, topic: &str, partitions: u32) {
        let create = pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: partitions,
            config: None,
        };
        as_admin(
            self.0,
            "/runnel.v1.AdminService/CreateTopic",
            Unary,
            &create,
        )
        .await;
    }

    async fn create_user(&self, name: &str, password: &str) {
        add_user(self.0, name, password).await;
    }

    async fn delete_user(&self, name: &str) {
        let delete = pb::DeleteUserRequest { name: name.into() };
        as_admin(
            self.0,
            "/runnel.v1.SecurityService/DeleteUser",
            Unary,
            &delete,
        )
        .await;
    }

    async fn allow(&self, principal: &str, t: pb::ResourceType, name: &str, op: pb::Operation) {
        allow(self.0, vec![acl(principal, t, name, op)]).await;
    }

    /// A new token of `user`: the secret a client sends.
    async fn create_token(&self, user: &str) -> String {
        let create = pb::CreateTokenRequest {
            user: user.into(),
            ..Default::default()
        };
        let made = as_admin(
            self.0,
            "/runnel.v1.SecurityService/CreateToken",
            Unary,
            &create,
        )
        .await;
        pb::CreateTokenResponse::decode(made)
            .expect("a token")
            .secret
    }
}

fn admin_client(b: &TestBroker) -> Admin<'_> {
    Admin(b)
}

fn batch() -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a batch");
    buf.freeze()
}

fn subscription() -> Bytes {
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = vec![s("t")];
    let mut out = BytesMut::new();
    out.put_i16(0);
    sub.encode(&mut out, 0).expect("a subscription");
    out.freeze()
}

/// The resource of one needed ACL.
#[derive(Clone, Copy)]
enum On {
    Topic(&'static str),
    Group(&'static str),
}

/// One API: a request, the ACLs it needs, and the error codes of its answer.
struct Row {
    api: ApiKey,
    version: i16,
    request: fn() -> RequestKind,
    needs: &'static [(On, pb::Operation)],
    /// Every error code in the answer (top level, per topic, per partition).
    codes: fn(&ResponseKind) -> Vec<i16>,
}

const AUTH_CODES: [i16; 3] = [
    TOPIC_AUTHORIZATION_FAILED,
    GROUP_AUTHORIZATION_FAILED,
    CLUSTER_AUTHORIZATION_FAILED,
];

fn table() -> Vec<Row> {
    use pb::Operation::{Alter, Create, Delete, Describe, Read, Write};
    vec![
        Row {
            api: ApiKey::Metadata,
            version: 12,
            request: || {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(TopicName(s("t")));
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![t])))
            },
            needs: &[(On::Topic("t"), Describe)],
            codes: |r| match r {
                ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::Produce,
            version: 9,
            request: || {
                let mut p = PartitionProduceData::default();
                p.records = Some(batch());
                let mut t = TopicProduceData::default();
                t.name = TopicName(s("t"));
                t.partition_data = vec![p];
                let mut r = ProduceRequest::default();
                r.acks = -1;
                r.timeout_ms = 5_000;
                r.topic_data = vec![t];
                RequestKind::Produce(r)
            },
            needs: &[(On::Topic("t"), Write)],
            codes: |r| match r {
                ResponseKind::Produce(r) => r
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
                    .collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::Fetch,
            version: 12,
            request: || {
                let mut p = FetchPartition::default();
                p.partition_max_bytes = 1 << 20;
                let mut t = FetchTopic::default();
                t.topic = TopicName(s("t"));
                t.partitions = vec![p];
                let mut r = FetchRequest::default();
                r.max_bytes = 1 << 20;
                r.topics = vec![t];
                RequestKind::Fetch(r)
            },
            needs: &[(On::Topic("t"), Read)],
            codes: |r| match r {
                ResponseKind::Fetch(r) => {
                    let mut c: Vec<i16> = r
                        .responses
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                        .collect();
                    c.push(r.error_code);
                    c
                }
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::ListOffsets,
            version: 7,
            request: || {
                let mut p = ListOffsetsPartition::default();
                p.timestamp = -1;
                let mut t = ListOffsetsTopic::default();
                t.name = TopicName(s("t"));
                t.partitions = vec![p];
                RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![t]))
            },
            needs: &[(On::Topic("t"), Describe)],
            codes: |r| match r {
                ResponseKind::ListOffsets(r) => r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                    .collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::InitProducerId,
            version: 4,
            request: || {
                let mut r = InitProducerIdRequest::default();
                r.transaction_timeout_ms = 60_000;
                r.producer_id = ProducerId(-1);
                r.producer_epoch = -1;
                RequestKind::InitProducerId(r)
            },
            needs: &[(On::Topic("t"), Write)],
            codes: |r| match r {
                ResponseKind::InitProducerId(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::CreateTopics,
            version: 7,
            request: || {
                let mut t = CreatableTopic::default();
                t.name = TopicName(s("made"));
                t.num_partitions = 1;
                t.replication_factor = -1;
                let mut r = CreateTopicsRequest::default();
                r.topics = vec![t];
                r.timeout_ms = 5_000;
                RequestKind::CreateTopics(r)
            },
            needs: &[(On::Topic("made"), Create)],
            codes: |r| match r {
                ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::DeleteTopics,
            version: 5,
            request: || {
                let mut r = DeleteTopicsRequest::default();
                r.topic_names = vec![TopicName(s("doomed"))];
                r.timeout_ms = 5_000;
                RequestKind::DeleteTopics(r)
            },
            needs: &[(On::Topic("doomed"), Delete)],
            codes: |r| match r {
                ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::CreatePartitions,
            version: 3,
            request: || {
                let mut t = CreatePartitionsTopic::default();
                t.name = TopicName(s("grow"));
                t.count = 2;
                let mut r = CreatePartitionsRequest::default();
                r.topics = vec![t];
                r.timeout_ms = 5_000;
                RequestKind::CreatePartitions(r)
            },
            needs: &[(On::Topic("grow"), Alter)],
            codes: |r| match r {
                ResponseKind::CreatePartitions(r) => {
                    r.results.iter().map(|t| t.error_code).collect()
                }
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::DescribeConfigs,
            version: 4,
            request: || {
                let mut res = DescribeConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = s("t");
                RequestKind::DescribeConfigs(
                    DescribeConfigsRequest::default().with_resources(vec![res]),
                )
            },
            needs: &[(On::Topic("t"), Describe)],
            codes: |r| match r {
                ResponseKind::DescribeConfigs(r) => {
                    r.results.iter().map(|t| t.error_code).collect()
                }
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::FindCoordinator,
            version: 4,
            request: || {
                let mut r = FindCoordinatorRequest::default();
                r.coordinator_keys = vec![s("g")];
                RequestKind::FindCoordinator(r)
            },
            needs: &[(On::Group("g"), Describe)],
            codes: |r| match r {
                ResponseKind::FindCoordinator(r) => {
                    r.coordinators.iter().map(|c| c.error_code).collect()
                }
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::JoinGroup,
            version: 7,
            request: || {
                let mut p = JoinGroupRequestProtocol::default();
                p.name = s("range");
                p.metadata = subscription();
                let mut r = JoinGroupRequest::default();
                r.group_id = GroupId(s("jg"));
                r.session_timeout_ms = 10_000;
                r.rebalance_timeout_ms = 10_000;
                r.protocol_type = s("consumer");
                r.protocols = vec![p];
                RequestKind::JoinGroup(r)
            },
            needs: &[(On::Group("jg"), Read), (On::Topic("t"), Describe)],
            codes: |r| match r {
                ResponseKind::JoinGroup(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        // SyncGroup, Heartbeat and LeaveGroup name a member that never joined: past the
        // authorization, the answer is UNKNOWN_MEMBER_ID, not an authorization error.
        Row {
            api: ApiKey::SyncGroup,
            version: 5,
            request: || {
                let mut r = SyncGroupRequest::default();
                r.group_id = GroupId(s("g"));
                r.member_id = s("m-nobody");
                RequestKind::SyncGroup(r)
            },
            needs: &[(On::Group("g"), Read)],
            codes: |r| match r {
                ResponseKind::SyncGroup(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::Heartbeat,
            version: 4,
            request: || {
                let mut r = HeartbeatRequest::default();
                r.group_id = GroupId(s("g"));
                r.member_id = s("m-nobody");
                RequestKind::Heartbeat(r)
            },
            needs: &[(On::Group("g"), Read)],
            codes: |r| match r {
                ResponseKind::Heartbeat(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::LeaveGroup,
            version: 5,
            request: || {
                let mut m = MemberIdentity::default();
                m.member_id = s("m-nobody");
                let mut r = LeaveGroupRequest::default();
                r.group_id = GroupId(s("g"));
                r.members = vec![m];
                RequestKind::LeaveGroup(r)
            },
            needs: &[(On::Group("g"), Read)],
            codes: |r| match r {
                ResponseKind::LeaveGroup(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::ListGroups,
            version: 4,
            request: || RequestKind::ListGroups(ListGroupsRequest::default()),
            needs: &[(On::Group("g"), Describe)],
            // Only the groups the caller may describe are listed.
            codes: |r| match r {
                ResponseKind::ListGroups(r)
                    if r.groups.iter().any(|g| g.group_id.0.as_str() == "g") =>
                {
                    vec![r.error_code]
                }
                ResponseKind::ListGroups(_) => vec![GROUP_AUTHORIZATION_FAILED],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::DescribeGroups,
            version: 5,
            request: || {
                RequestKind::DescribeGroups(
                    DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
                )
            },
            needs: &[(On::Group("g"), Describe)],
            codes: |r| match r {
                ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::ConsumerGroupHeartbeat,
            version: 1,
            request: || {
                let mut r = ConsumerGroupHeartbeatRequest::default();
                r.group_id = GroupId(s("cg"));
                r.member_id = s("kafka-member");
                r.rebalance_timeout_ms = 10_000;
                r.subscribed_topic_names = Some(vec![TopicName(s("t"))]);
                RequestKind::ConsumerGroupHeartbeat(r)
            },
            needs: &[(On::Group("cg"), Read), (On::Topic("t"), Describe)],
            codes: |r| match r {
                ResponseKind::ConsumerGroupHeartbeat(r) => vec![r.error_code],
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::OffsetCommit,
            version: 9,
            request: || {
                let mut p = OffsetCommitRequestPartition::default();
                p.committed_offset = 1;
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(s("t"));
                t.partitions = vec![p];
                let mut r = OffsetCommitRequest::default();
                r.group_id = GroupId(s("g"));
                r.generation_id_or_member_epoch = -1;
                r.topics = vec![t];
                RequestKind::OffsetCommit(r)
            },
            needs: &[(On::Group("g"), Read), (On::Topic("t"), Read)],
            codes: |r| match r {
                ResponseKind::OffsetCommit(r) => r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                    .collect(),
                _ => vec![-1],
            },
        },
        Row {
            api: ApiKey::OffsetFetch,
            version: 8,
            request: || {
                let mut g = OffsetFetchRequestGroup::default();
                g.group_id = GroupId(s("g"));
                RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![g]))
            },
            needs: &[(On::Group("g"), Describe), (On::Topic("t"), Describe)],
            // A topic the caller may not describe is left out of the answer.
            codes: |r| match r {
                ResponseKind::OffsetFetch(r) => match r.groups.first() {
                    Some(g) if g.error_code != 0 => vec![g.error_code],
                    Some(g) if g.topics.iter().any(|t| t.name.0.as_str() == "t") => vec![0],
                    _ => vec![TOPIC_AUTHORIZATION_FAILED],
                },
                _ => vec![-1],
            },
        },
    ]
}

/// The topics, records, group and users the table's requests touch.
async fn set_up(b: &TestBroker, addr: SocketAddr) {
    let a = admin_client(b);
    for topic in ["t", "doomed", "grow"] {
        a.create_topic(topic, 1).await;
    }
    let mut k = admin(addr).await;
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(s("g"));
    r.generation_id_or_member_epoch = -1;
    let mut p = OffsetCommitRequestPartition::default();
    p.committed_offset = 0;
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(s("t"));
    t.partitions = vec![p];
    r.topics = vec![t];
    match k
        .call(ApiKey::OffsetCommit, 9, RequestKind::OffsetCommit(r))
        .await
    {
        ResponseKind::OffsetCommit(r) => assert_eq!(r.topics[0].partitions[0].error_code, 0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_kafka_api_closes_before_sasl_denies_without_acls_and_serves_with_them() {
    let (b, addr) = secured().await;
    set_up(&b, addr).await;
    let rows = table();

    // Every API advertised, but ApiVersions and SASL's own, has a row.
    let mut k = KafkaConn::connect(addr).await;
    let advertised = match k
        .call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await
    {
        ResponseKind::ApiVersions(r) => r.api_keys,
        other => panic!("{other:?}"),
    };
    let mut listed: Vec<i16> = rows.iter().map(|r| r.api as i16).collect();
    listed.sort_unstable();
    let mut served: Vec<i16> = advertised
        .iter()
        .map(|v| v.api_key)
        .filter(|k| {
            ![
                ApiKey::ApiVersions as i16,
                ApiKey::SaslHandshake as i16,
                ApiKey::SaslAuthenticate as i16,
            ]
            .contains(k)
        })
        .collect();
    served.sort_unstable();
    assert_eq!(
        listed, served,
        "every API the Kafka listener serves must have a row in this table, and only those"
    );

    let a = admin_client(&b);
    for (i, row) in rows.iter().enumerate() {
        let api = row.api;
        // (a) Before authenticating: the connection closes.
        let mut k = KafkaConn::connect(addr).await;
        assert!(
            k.try_call(api, row.version, (row.request)())
                .await
                .is_none(),
            "{api:?} before SASL"
        );

        // (b) Authenticated, no ACL: Kafka's authorization error.
        let (user, password) = (format!("k{i}"), format!("password-{i}"));
        a.create_user(&user, &password).await;
        let mut k = KafkaConn::connect(addr).await;
        assert_eq!(k.sasl_plain(&user, &password).await, Some(0));
        let answer = k.call(api, row.version, (row.request)()).await;
        let codes = (row.codes)(&answer);
        assert!(
            codes.iter().any(|c| AUTH_CODES.contains(c)),
            "{api:?} without ACLs: {answer:?}"
        );

        // (c) With exactly the ACLs it needs: no authorization error.
        let principal = format!("User:{user}");
        for (on, op) in row.needs {
            let (t, name) = match on {
                On::Topic(n) => (pb::ResourceType::Topic, *n),
                On::Group(n) => (pb::ResourceType::Group, *n),
            };
            a.allow(&principal, t, name, *op).await;
        }
        let answer = k.call(api, row.version, (row.request)()).await;
        let codes = (row.codes)(&answer);
        assert!(
            !codes.iter().any(|c| AUTH_CODES.contains(c)) && !codes.contains(&-1),
            "{api:?} with its ACLs: {answer:?}"
        );
    }
}

#[tokio::test]
async fn sasl_plain_refuses_wrong_passwords_and_other_mechanisms_and_accepts_tokens() {
    let (b, addr) = secured().await;
    let a = admin_client(&b);
    a.create_user("alice", "alice-password").await;

    // A wrong password: SASL_AUTHENTICATION_FAILED, then the connection closes.
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(
        k.sasl_plain("alice", "wrong-password").await,
        Some(SASL_AUTHENTICATION_FAILED)
    );
    assert!(
        k.try_call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(ApiVersionsRequest::default())
        )
        .await
        .is_none()
    );

    // Another mechanism is refused with the ones served.
    let mut k = KafkaConn::connect(addr).await;
    let mut h = SaslHandshakeRequest::default();
    h.mechanism = s("SCRAM-SHA-256");
    match k
        .call(ApiKey::SaslHandshake, 1, RequestKind::SaslHandshake(h))
        .await
    {
        ResponseKind::SaslHandshake(r) => {
            assert_eq!(r.error_code, UNSUPPORTED_SASL_MECHANISM);
            assert_eq!(r.mechanisms, vec![s("PLAIN")]);
        }
        other => panic!("{other:?}"),
    }

    // A token, sent as the password with its user's name.
    let token = a.create_token("alice").await;
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(k.sasl_plain("alice", &token).await, Some(0));
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(
        k.sasl_plain("admin", &token).await,
        Some(SASL_AUTHENTICATION_FAILED),
        "a token is its own user's only"
    );

    // Deleting the user ends its authenticated connections at their next request.
    let mut k = KafkaConn::connect(addr).await;
    assert_eq!(k.sasl_plain("alice", "alice-password").await, Some(0));
    let metadata = || RequestKind::Metadata(MetadataRequest::default());
    assert!(k.try_call(ApiKey::Metadata, 12, metadata()).await.is_some());
    a.delete_user("alice").await;
    assert!(k.try_call(ApiKey::Metadata, 12, metadata()).await.is_none());
}
