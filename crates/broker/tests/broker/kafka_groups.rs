//! Consumer groups over the Kafka listener, spoken to with `kafka-protocol`: the classic
//! protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and the consumer protocol
//! (ConsumerGroupHeartbeat), in the same groups as gRPC members, with one set of committed
//! offsets; the answers Kafka gives to calls out of turn.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions as OwnedTps;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTp;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use runnel_proto::pb::{self, group_service_client::GroupServiceClient};
use runnel_test_support::kafka::KafkaConn;
use runnel_test_support::prelude::*;
use runnel_test_support::process::free_addr;
use tokio::sync::mpsc;

const UNKNOWN_MEMBER_ID: i16 = 25;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const FENCED_MEMBER_EPOCH: i16 = 110;
const STALE_MEMBER_EPOCH: i16 = 113;

async fn broker() -> (TestBroker, SocketAddr) {
    let addr = free_addr();
    let b = TestBroker::start_with(|c| c.kafka.listen = addr.to_string()).await;
    (b, addr)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// Five records in each of `partitions` partitions of `topic`, over gRPC.
async fn fill(b: &TestBroker, topic: &str, partitions: u32) {
    create_topic(b, topic, partitions).await;
    for p in 0..partitions {
        let r = produce(b, topic, p, vec![batch(5, 1_700_000_000_000)]).await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
}

/// A subscription's bytes at version 1: the topics and the partitions owned.
fn subscription(topics: &[&str], owned: &[(&str, i32)]) -> Bytes {
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = topics.iter().map(|t| s(t)).collect();
    sub.owned_partitions = owned
        .iter()
        .map(|(t, p)| {
            let mut tp = OwnedTp::default();
            tp.topic = TopicName(s(t));
            tp.partitions = vec![*p];
            tp
        })
        .collect();
    let mut out = BytesMut::new();
    out.put_i16(1);
    sub.encode(&mut out, 1).expect("encode a subscription");
    out.freeze()
}

/// An assignment's partitions, as `topic/partition`.
fn assigned(mut bytes: Bytes) -> BTreeSet<String> {
    if bytes.is_empty() {
        return BTreeSet::new();
    }
    let version = bytes.get_i16();
    let a = ConsumerProtocolAssignment::decode(&mut bytes, version).expect("an assignment");
    a.assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| format!("{}/{p}", t.topic.0))
        })
        .collect()
}

/// A classic member's calls.
struct Classic {
    conn: KafkaConn,
    group: String,
    member: String,
    generation: i32,
    protocol: &'static str,
}

impl Classic {
    async fn new(addr: SocketAddr, group: &str, protocol: &'static str) -> Self {
        Classic {
            conn: KafkaConn::connect(addr).await,
            group: group.to_owned(),
            member: String::new(),
            generation: -1,
            protocol,
        }
    }

    async fn join_with(
        &mut self,
        protocol_type: &str,
        session_ms: i32,
        metadata: Bytes,
    ) -> JoinGroupResponse {
        let mut p = JoinGroupRequestProtocol::default();
        p.name = s(self.protocol);
        p.metadata = metadata;
        let mut r = JoinGroupRequest::default();
        r.group_id = GroupId(s(&self.group));
        r.session_timeout_ms = session_ms;
        r.rebalance_timeout_ms = 60_000;
        r.member_id = s(&self.member);
        r.protocol_type = s(protocol_type);
        r.protocols = vec![p];
        match self
            .conn
            .call(ApiKey::JoinGroup, 7, RequestKind::JoinGroup(r))
            .await
        {
            ResponseKind::JoinGroup(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Joins (or rejoins) and syncs; returns the partitions assigned.
    async fn join_and_sync(&mut self, owned: &[(&str, i32)]) -> BTreeSet<String> {
        let joined = self
            .join_with("consumer", 10_000, subscription(&["orders"], owned))
            .await;
        assert_eq!(joined.error_code, 0, "{joined:?}");
        self.member = joined.member_id.to_string();
        self.generation = joined.generation_id;
        let (code, assignment) = self.sync(self.generation).await;
        assert_eq!(code, 0);
        assigned(assignment)
    }

    async fn sync(&mut self, generation: i32) -> (i16, Bytes) {
        let mut r = SyncGroupRequest::default();
        r.group_id = GroupId(s(&self.group));
        r.generation_id = generation;
        r.member_id = s(&self.member);
        r.protocol_type = Some(s("consumer"));
        r.protocol_name = Some(s(self.protocol));
        match self
            .conn
            .call(ApiKey::SyncGroup, 5, RequestKind::SyncGroup(r))
            .await
        {
            ResponseKind::SyncGroup(r) => (r.error_code, r.assignment),
            other => panic!("{other:?}"),
        }
    }

    async fn heartbeat(&mut self, member: &str, generation: i32) -> i16 {
        let mut r = HeartbeatRequest::default();
        r.group_id = GroupId(s(&self.group));
        r.generation_id = generation;
        r.member_id = s(member);
        match self
            .conn
            .call(ApiKey::Heartbeat, 4, RequestKind::Heartbeat(r))
            .await
        {
            ResponseKind::Heartbeat(r) => r.error_code,
            other => panic!("{other:?}"),
        }
    }

    async fn commit(&mut self, generation: i32, partition: i32, offset: i64) -> i16 {
        commit(
            &mut self.conn,
            &self.group,
            &self.member.clone(),
            generation,
            partition,
            offset,
        )
        .await
    }
}

async fn commit(
    k: &mut KafkaConn,
    group: &str,
    member: &str,
    generation: i32,
    partition: i32,
    offset: i64,
) -> i16 {
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = partition;
    p.committed_offset = offset;
    p.committed_metadata = Some(s("from kafka"));
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(s("orders"));
    t.partitions = vec![p];
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(s(group));
    r.generation_id_or_member_epoch = generation;
    r.member_id = s(member);
    r.topics = vec![t];
    match k
        .call(ApiKey::OffsetCommit, 9, RequestKind::OffsetCommit(r))
        .await
    {
        ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// How many members DescribeGroups shows in `group`.
async fn members(k: &mut KafkaConn, group: &str) -> usize {
    let r = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
    match k
        .call(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(r))
        .await
    {
        ResponseKind::DescribeGroups(r) => r.groups[0].members.len(),
        other => panic!("{other:?}"),
    }
}

/// The committed offsets of `group` over Kafka (OffsetFetch v8, every partition).
async fn offset_fetch(k: &mut KafkaConn, group: &str) -> Vec<(i32, i64)> {
    let mut g = OffsetFetchRequestGroup::default();
    g.group_id = GroupId(s(group));
    g.topics = None;
    let mut r = OffsetFetchRequest::default();
    r.groups = vec![g];
    match k
        .call(ApiKey::OffsetFetch, 8, RequestKind::OffsetFetch(r))
        .await
    {
        ResponseKind::OffsetFetch(r) => r.groups[0]
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.partition_index, p.committed_offset))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn classic_members_share_partitions_rejoin_when_told_and_commit_what_they_own() {
    let (b, addr) = broker().await;
    fill(&b, "orders", 2).await;

    let mut k = KafkaConn::connect(addr).await;
    let mut r = FindCoordinatorRequest::default();
    r.key = s("billing");
    match k
        .call(ApiKey::FindCoordinator, 3, RequestKind::FindCoordinator(r))
        .await
    {
        ResponseKind::FindCoordinator(r) => {
            assert_eq!((r.error_code, r.node_id.0), (0, 0));
            assert_eq!(r.port, i32::from(addr.port()));
        }
        other => panic!("{other:?}"),
    }

    let mut a = Classic::new(addr, "billing", "range").await;
    assert_eq!(
        a.join_and_sync(&[]).await,
        ["orders/0", "orders/1"].map(String::from).into()
    );
    assert_eq!(a.heartbeat(&a.member.clone(), a.generation).await, 0);

    // A second member's join waits until the first gives up a partition: the first is told
    // to rejoin, and an eager client gives up what is revoked by rejoining.
    let mut c = Classic::new(addr, "billing", "range").await;
    let (member, generation) = (a.member.clone(), a.generation);
    let (theirs, mine) = tokio::join!(c.join_and_sync(&[]), async {
        while a.heartbeat(&member, generation).await != REBALANCE_IN_PROGRESS {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            a.heartbeat(&member, generation + 7).await,
            ILLEGAL_GENERATION
        );
        assert_eq!(a.heartbeat("nobody", generation).await, UNKNOWN_MEMBER_ID);
        a.join_and_sync(&[]).await
    });
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(theirs.len(), 1);
    assert!(mine.is_disjoint(&theirs));
    assert_eq!(c.heartbeat(&c.member.clone(), c.generation).await, 0);
    assert_eq!(a.heartbeat(&a.member.clone(), a.generation).await, 0);

    // Commits: of an owned partition at the member's generation; not of another's, nor at
    // an old generation.
    let own: i32 = mine.first().unwrap()[7..].parse().unwrap();
    let other = 1 - own;
    assert_eq!(a.commit(a.generation, own, 3).await, 0);
    assert_eq!(a.commit(a.generation, other, 3).await, ILLEGAL_GENERATION);
    assert_eq!(a.commit(a.generation - 1, own, 3).await, ILLEGAL_GENERATION);
    // Over gRPC, the same committed offset.
    let committed = committed_offsets(&b, "billing").await;
    assert_eq!(
        committed.get(&(own as u32)),
        Some(&(3, "from kafka".to_owned()))
    );

    // The listings.
    let mut r = ListGroupsRequest::default();
    r.states_filter = vec![s("Stable")];
    match k
        .call(ApiKey::ListGroups, 4, RequestKind::ListGroups(r))
        .await
    {
        ResponseKind::ListGroups(r) => {
            assert_eq!(r.groups.len(), 1);
            assert_eq!(r.groups[0].group_id.0.as_str(), "billing");
        }
        other => panic!("{other:?}"),
    }
    let mut r = DescribeGroupsRequest::default();
    r.groups = vec![GroupId(s("billing")), GroupId(s("nobody"))];
    match k
        .call(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(r))
        .await
    {
        ResponseKind::DescribeGroups(r) => {
            let g = &r.groups[0];
            assert_eq!(g.group_state.as_str(), "Stable");
            assert_eq!(g.members.len(), 2);
            let all: BTreeSet<String> = g
                .members
                .iter()
                .flat_map(|m| assigned(m.member_assignment.clone()))
                .collect();
            assert_eq!(all, ["orders/0", "orders/1"].map(String::from).into());
            assert_eq!(r.groups[1].group_state.as_str(), "Dead");
        }
        other => panic!("{other:?}"),
    }

    // Leaving hands the partitions over at once.
    let mut r = LeaveGroupRequest::default();
    r.group_id = GroupId(s("billing"));
    let mut m = MemberIdentity::default();
    m.member_id = s(&a.member);
    r.members = vec![m];
    match k
        .call(ApiKey::LeaveGroup, 5, RequestKind::LeaveGroup(r))
        .await
    {
        ResponseKind::LeaveGroup(r) => assert_eq!(r.members[0].error_code, 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.heartbeat(&c.member.clone(), c.generation).await,
        REBALANCE_IN_PROGRESS
    );
    assert_eq!(c.join_and_sync(&[]).await.len(), 2);
    assert_eq!(
        a.heartbeat(&a.member.clone(), a.generation).await,
        UNKNOWN_MEMBER_ID
    );
}

#[tokio::test]
async fn a_partition_revoked_between_a_join_and_its_sync_is_released_at_the_sync() {
    let (b, addr) = broker().await;
    fill(&b, "orders", 2).await;
    // Both join before either syncs: the first owns both partitions at its join, one is
    // revoked for the second; the first, which holds nothing yet, gives it up by syncing.
    for protocol in ["range", "cooperative-sticky"] {
        let group = format!("between-{protocol}");
        let mut a = Classic::new(addr, &group, protocol).await;
        let mut c = Classic::new(addr, &group, protocol).await;
        let sub = subscription(&["orders"], &[]);
        let joined = a.join_with("consumer", 10_000, sub.clone()).await;
        (a.member, a.generation) = (joined.member_id.to_string(), joined.generation_id);
        // The second join waits for the release, which the first member's sync makes.
        let mut watcher = KafkaConn::connect(addr).await;
        let (joined, (code, mine)) = tokio::join!(c.join_with("consumer", 10_000, sub), async {
            // Once the second member is in the group, the first syncs.
            while members(&mut watcher, &group).await < 2 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            a.sync(a.generation).await
        });
        (c.member, c.generation) = (joined.member_id.to_string(), joined.generation_id);
        assert_eq!(code, 0);
        assert_eq!(assigned(mine).len(), 1, "{protocol}");
        let (code, theirs) = c.sync(c.generation).await;
        assert_eq!(code, 0);
        assert_eq!(
            assigned(theirs).len(),
            1,
            "{protocol}: released at the first's sync"
        );
        assert_eq!(a.heartbeat(&a.member.clone(), a.generation).await, 0);
        assert_eq!(c.heartbeat(&c.member.clone(), c.generation).await, 0);
    }
}

#[tokio::test]
async fn a_member_waiting_in_its_join_is_not_expired() {
    let addr = free_addr();
    let b = TestBroker::start_with(|c| {
        c.kafka.listen = addr.to_string();
        c.groups.min_session_timeout_ms = 1_000;
    })
    .await;
    fill(&b, "orders", 2).await;
    let mut a = Classic::new(addr, "patient", "range").await;
    assert_eq!(a.join_and_sync(&[]).await.len(), 2);
    // The second member's session (1.5 s) is shorter than its wait for the first member,
    // which gives up a partition only 3 s later: waiting in its join keeps it alive.
    let mut c = Classic::new(addr, "patient", "range").await;
    let sub = subscription(&["orders"], &[]);
    let (joined, ()) = tokio::join!(c.join_with("consumer", 1_500, sub), async {
        let (member, generation) = (a.member.clone(), a.generation);
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            a.heartbeat(&member, generation).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        a.join_and_sync(&[]).await;
    });
    assert_eq!(joined.error_code, 0);
    (c.member, c.generation) = (joined.member_id.to_string(), joined.generation_id);
    let (code, theirs) = c.sync(c.generation).await;
    assert_eq!(
        code, 0,
        "still a member after waiting longer than its session"
    );
    assert_eq!(assigned(theirs).len(), 1);
}

#[tokio::test]
async fn a_cooperative_classic_member_keeps_what_it_lists_as_owned() {
    let (b, addr) = broker().await;
    fill(&b, "orders", 2).await;
    let mut a = Classic::new(addr, "coop", "cooperative-sticky").await;
    assert_eq!(a.join_and_sync(&[]).await.len(), 2);
    let mut c = Classic::new(addr, "coop", "cooperative-sticky").await;
    let (theirs, kept) = tokio::join!(c.join_and_sync(&[]), async {
        let (member, generation) = (a.member.clone(), a.generation);
        while a.heartbeat(&member, generation).await != REBALANCE_IN_PROGRESS {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Told to rejoin, it rejoins still owning both: nothing moves yet, and its new
        // assignment leaves out the one revoked.
        let kept = a.join_and_sync(&[("orders", 0), ("orders", 1)]).await;
        assert_eq!(kept.len(), 1);
        // It rejoins again without the revoked one: now it moves.
        let p: i32 = kept.first().unwrap()[7..].parse().unwrap();
        assert_eq!(a.join_and_sync(&[("orders", p)]).await, kept);
        kept
    });
    assert_eq!(
        theirs.len(),
        1,
        "the second member's join waited for the release"
    );
    assert!(kept.is_disjoint(&theirs));
}

#[tokio::test]
async fn classic_joins_out_of_bounds_are_refused_with_kafkas_codes() {
    let (_b, addr) = broker().await;
    let mut a = Classic::new(addr, "billing", "range").await;
    let sub = subscription(&["orders"], &[]);
    let r = a.join_with("connect", 10_000, sub.clone()).await;
    assert_eq!(r.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let r = a.join_with("consumer", 1_000, sub.clone()).await;
    assert_eq!(r.error_code, INVALID_SESSION_TIMEOUT);
    let r = a
        .join_with("consumer", 10_000, Bytes::from_static(b"\x00"))
        .await;
    assert_eq!(r.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let mut bad = Classic::new(addr, "bad group", "range").await;
    let r = bad.join_with("consumer", 10_000, sub.clone()).await;
    assert_eq!(r.error_code, INVALID_GROUP_ID);
    a.member = "m-nobody".into();
    let r = a.join_with("consumer", 10_000, sub).await;
    assert_eq!(r.error_code, UNKNOWN_MEMBER_ID);
    let (code, _) = a.sync(3).await;
    assert_eq!(code, UNKNOWN_MEMBER_ID);
}

/// A gRPC Membership stream: its assignments arrive on the returned channel.
async fn grpc_member(
    b: &TestBroker,
    group: &str,
) -> (
    mpsc::Sender<pb::MembershipRequest>,
    tonic::Streaming<pb::MembershipResponse>,
) {
    use pb::membership_request::Request;
    let (tx, rx) = mpsc::channel(8);
    let join = pb::JoinGroup {
        group: group.into(),
        topics: vec!["orders".into()],
        ..Default::default()
    };
    tx.send(pb::MembershipRequest {
        request: Some(Request::Join(join)),
    })
    .await
    .unwrap();
    let stream = GroupServiceClient::new(b.channel())
        .membership(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("membership")
        .into_inner();
    (tx, stream)
}

/// The next assignment on a gRPC member's stream.
async fn next_assignment(stream: &mut tonic::Streaming<pb::MembershipResponse>) -> pb::Assignment {
    use pb::membership_response::Response;
    loop {
        let m = stream.message().await.expect("a message").expect("open");
        if let Some(Response::Assignment(a)) = m.response {
            return a;
        }
    }
}

async fn consumer_heartbeat(
    k: &mut KafkaConn,
    epoch: i32,
    topics: Option<&[&str]>,
    owned: Option<Vec<(uuid::Uuid, Vec<i32>)>>,
) -> ConsumerGroupHeartbeatResponse {
    let mut r = ConsumerGroupHeartbeatRequest::default();
    r.group_id = GroupId(s("mixed"));
    r.member_id = s("kafka-member-1");
    r.member_epoch = epoch;
    r.rebalance_timeout_ms = 60_000;
    r.subscribed_topic_names = topics.map(|ts| ts.iter().map(|t| TopicName(s(t))).collect());
    r.topic_partitions = owned.map(|o| {
        o.into_iter()
            .map(|(id, partitions)| {
                let mut t = OwnedTps::default();
                t.topic_id = id;
                t.partitions = partitions;
                t
            })
            .collect()
    });
    match k
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            RequestKind::ConsumerGroupHeartbeat(r),
        )
        .await
    {
        ResponseKind::ConsumerGroupHeartbeat(r) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_kafka_and_a_grpc_member_share_one_group_and_its_committed_offsets() {
    let (b, addr) = broker().await;
    fill(&b, "orders", 4).await;
    let mut k = KafkaConn::connect(addr).await;

    // The Kafka member joins first and gets all four partitions.
    let r = consumer_heartbeat(&mut k, 0, Some(&["orders"]), None).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    assert_eq!(r.member_id.as_deref(), Some("kafka-member-1"));
    let a = r.assignment.expect("an assignment");
    let topic_id = a.topic_partitions[0].topic_id;
    assert_eq!(a.topic_partitions[0].partitions, vec![0, 1, 2, 3]);
    let epoch = r.member_epoch;

    // A gRPC member joins: it waits for the Kafka member to release two.
    let (grpc_tx, mut grpc) = grpc_member(&b, "mixed").await;
    assert!(next_assignment(&mut grpc).await.assigned.is_empty());
    let r = consumer_heartbeat(
        &mut k,
        epoch,
        None,
        Some(vec![(topic_id, vec![0, 1, 2, 3])]),
    )
    .await;
    let kept = r.assignment.expect("a smaller assignment").topic_partitions[0]
        .partitions
        .clone();
    assert_eq!(kept.len(), 2);
    let r = consumer_heartbeat(
        &mut k,
        r.member_epoch,
        None,
        Some(vec![(topic_id, kept.clone())]),
    )
    .await;
    assert_eq!(r.error_code, 0);
    let epoch = r.member_epoch;
    let grpc_assignment = next_assignment(&mut grpc).await;
    let theirs: Vec<i32> = grpc_assignment.assigned[0]
        .partitions
        .iter()
        .map(|p| *p as i32)
        .collect();
    assert_eq!(theirs.len(), 2);
    assert!(theirs.iter().all(|p| !kept.contains(p)));

    // Each commits what it owns; each sees the other's commit.
    assert_eq!(
        commit(&mut k, "mixed", "kafka-member-1", epoch, kept[0], 4).await,
        0
    );
    assert_eq!(
        commit(&mut k, "mixed", "kafka-member-1", epoch, theirs[0], 4).await,
        STALE_MEMBER_EPOCH,
        "not its partition"
    );
    let grpc_member_id = b
        .groups()
        .describe_group(pb::DescribeGroupRequest {
            group: "mixed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .find(|m| m.member_id != "kafka-member-1")
        .expect("the gRPC member")
        .member_id;
    let results = b
        .groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: "mixed".into(),
            member_id: grpc_member_id,
            member_epoch: grpc_assignment.member_epoch,
            offsets: vec![pb::OffsetCommit {
                topic: "orders".into(),
                partition: theirs[0] as u32,
                offset: 2,
                metadata: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results[0].error.is_none(), "{results:?}");
    let committed = offset_fetch(&mut k, "mixed").await;
    assert!(committed.contains(&(kept[0], 4)), "{committed:?}");
    assert!(committed.contains(&(theirs[0], 2)), "{committed:?}");
    let over_grpc = committed_offsets(&b, "mixed").await;
    assert_eq!(over_grpc.get(&(kept[0] as u32)).map(|c| c.0), Some(4));

    // An epoch the member never had is fenced; an unknown member is unknown.
    let r = consumer_heartbeat(&mut k, epoch + 5, None, None).await;
    assert_eq!(r.error_code, FENCED_MEMBER_EPOCH);
    let mut other = KafkaConn::connect(addr).await;
    let mut req = ConsumerGroupHeartbeatRequest::default();
    req.group_id = GroupId(s("mixed"));
    req.member_id = s("never-joined");
    req.member_epoch = 3;
    match other
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            RequestKind::ConsumerGroupHeartbeat(req),
        )
        .await
    {
        ResponseKind::ConsumerGroupHeartbeat(r) => assert_eq!(r.error_code, UNKNOWN_MEMBER_ID),
        other => panic!("{other:?}"),
    }

    // The Kafka member leaves: the gRPC member gets all four.
    let r = consumer_heartbeat(&mut k, -1, None, None).await;
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
    let all = next_assignment(&mut grpc).await;
    assert_eq!(all.assigned[0].partitions.len(), 4);
    drop(grpc_tx);
}
