//! Kafka's classic group protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and the group listings (ListGroups, DescribeGroups), over Runnel's groups.
//!
//! The broker assigns, as it does for gRPC members (`groups::polled`): the leader's SyncGroup
//! assignments are ignored and every member gets its own partitions from the coordinator. A
//! member whose partitions change is told to rejoin (Heartbeat answers
//! `REBALANCE_IN_PROGRESS`); an eager client (every assignor but `cooperative-sticky`) gives
//! up its partitions being revoked by rejoining, a cooperative one by no longer listing them
//! as owned in its subscription.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTp;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use runnel_proto::pb::{self, ErrorCode};

use super::context::Context;
use super::errors::{group_denied, kafka_code, topic_denied};
use super::metadata::NODE_ID;
use crate::auth::Access;
use crate::auth::acl::{Operation, Resource};
use crate::error::RpcError;
use crate::groups::assignor::Tp;
use crate::groups::polled::{ClassicJoin, PolledJoin, Release};

/// The only protocol type served: Kafka consumers.
const CONSUMER: &str = "consumer";

/// The assignor name under which Kafka clients rebalance cooperatively.
const COOPERATIVE: &str = "cooperative-sticky";

/// Kafka's code for a classic-protocol call's error: a generation that is not the member's is
/// `ILLEGAL_GENERATION`, a full group `GROUP_MAX_SIZE_REACHED`.
pub(super) fn classic_code(e: &RpcError) -> i16 {
    match e.code {
        ErrorCode::FencedMember => K::IllegalGeneration.code(),
        ErrorCode::LimitExceeded => K::GroupMaxSizeReached.code(),
        code => kafka_code(code),
    }
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub(super) fn find_coordinator(
    cx: &Context,
    access: &Access,
    r: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key: StrBytes| {
        let mut c = Coordinator::default();
        let denied = (r.key_type == 0)
            .then(|| group_denied(access, &key, Operation::Describe))
            .flatten();
        c.key = key;
        if let Some(code) = denied {
            c.node_id = BrokerId(-1);
            c.error_code = code;
        } else if r.key_type == 0 {
            c.node_id = BrokerId(NODE_ID);
            c.host = s(cx.host.clone());
            c.port = cx.port;
        } else {
            c.node_id = BrokerId(-1);
            c.error_code = K::CoordinatorNotAvailable.code();
            c.error_message = Some(StrBytes::from_static_str(
                "transactions are not supported: only group coordinators (key type 0)",
            ));
        }
        c
    };
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = r.coordinator_keys.into_iter().map(answer).collect();
    } else {
        let c = answer(r.key);
        response.error_code = c.error_code;
        response.error_message = c.error_message;
        response.node_id = c.node_id;
        response.host = c.host;
        response.port = c.port;
    }
    response
}

/// A subscription's bytes: a version, then the subscription at that version (a newer version
/// than the codec's is read as the newest it knows: versions only add fields at the end).
pub(super) fn decode_subscription(mut b: Bytes) -> Result<ConsumerProtocolSubscription, String> {
    if b.len() < 2 {
        return Err("a subscription of fewer than 2 bytes".into());
    }
    let version = b.get_i16();
    let known = ConsumerProtocolSubscription::VERSIONS;
    if version < known.min {
        return Err(format!("subscription version {version}"));
    }
    ConsumerProtocolSubscription::decode(&mut b, version.min(known.max))
        .map_err(|e| format!("subscription: {e}"))
}

/// A subscription of `topics`, as DescribeGroups shows every member's (version 0).
fn encode_subscription(topics: &[String]) -> Bytes {
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = topics.iter().map(|t| s(t.clone())).collect();
    versioned(0, &sub)
}

/// Partitions grouped by topic, as Kafka's messages list them.
pub(super) fn by_topic(tps: &[Tp]) -> BTreeMap<&str, Vec<i32>> {
    let mut out: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, p) in tps {
        out.entry(topic).or_default().push(*p as i32);
    }
    out
}

/// An assignment's bytes (version 0): the partitions, grouped by topic.
pub(super) fn encode_assignment(tps: &[Tp]) -> Bytes {
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = by_topic(tps)
        .into_iter()
        .map(|(topic, partitions)| {
            let mut tp = AssignedTp::default();
            tp.topic = TopicName(s(topic));
            tp.partitions = partitions;
            tp
        })
        .collect();
    versioned(0, &a)
}

fn versioned(version: i16, m: &impl Encodable) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(version);
    // Encoding a message at a version it has cannot fail.
    let _ = m.encode(&mut out, version);
    out.freeze()
}

pub(super) async fn join_group(
    cx: &Context,
    access: &Access,
    peer: &str,
    client_id: &str,
    r: JoinGroupRequest,
) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.member_id = r.member_id.clone();
    response.protocol_type = Some(StrBytes::from_static_str(CONSUMER));
    let fail = |mut response: JoinGroupResponse, code: i16| {
        response.error_code = code;
        response.generation_id = -1;
        response
    };
    if r.protocol_type.as_str() != CONSUMER {
        return fail(response, K::InconsistentGroupProtocol.code());
    }
    let Some(protocol) = r.protocols.first() else {
        return fail(response, K::InconsistentGroupProtocol.code());
    };
    let Ok(subscription) = decode_subscription(protocol.metadata.clone()) else {
        return fail(response, K::InconsistentGroupProtocol.code());
    };
    if let Some(code) = group_denied(access, &r.group_id, Operation::Read).or_else(|| {
        (subscription.topics.iter()).find_map(|t| topic_denied(access, t, Operation::Describe))
    }) {
        return fail(response, code);
    }
    let session_ms = u64::try_from(r.session_timeout_ms).unwrap_or(0);
    if !cx.broker.groups.session_range().contains(&session_ms) {
        return fail(response, K::InvalidSessionTimeout.code());
    }
    let release = if protocol.name.as_str() == COOPERATIVE {
        Release::Except(
            subscription
                .owned_partitions
                .iter()
                .flat_map(|t| {
                    let topic = t.topic.0.to_string();
                    t.partitions.iter().map(move |p| (topic.clone(), *p as u32))
                })
                .collect(),
        )
    } else {
        Release::AllRevoking
    };
    let join = ClassicJoin {
        join: PolledJoin {
            group: r.group_id.0.to_string(),
            member_id: (!r.member_id.is_empty()).then(|| r.member_id.to_string()),
            instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
            client_id: client_id.to_owned(),
            host: peer.to_owned(),
            topics: subscription.topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: session_ms,
            assignor: String::new(),
        },
        protocol: protocol.name.to_string(),
        metadata: protocol.metadata.clone(),
        release,
    };
    match cx.broker.groups.classic_join(join) {
        Ok(joined) => {
            // Version 0 has no rebalance timeout: Kafka uses the session timeout.
            let rebalance_ms = if r.rebalance_timeout_ms > 0 {
                r.rebalance_timeout_ms
            } else {
                r.session_timeout_ms
            };
            let wait = Duration::from_millis(u64::try_from(rebalance_ms).unwrap_or(0));
            let groups = &cx.broker.groups;
            groups
                .classic_settle(&r.group_id, &joined.member_id, wait)
                .await;
            response.generation_id = joined.generation;
            response.protocol_name = Some(protocol.name.clone());
            response.leader = s(joined.leader);
            response.member_id = s(joined.member_id);
            response.members = joined
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = s(id);
                    m.group_instance_id = instance.map(s);
                    m.metadata = metadata;
                    m
                })
                .collect();
            response
        }
        Err(e) => fail(response, classic_code(&e)),
    }
}

pub(super) fn sync_group(cx: &Context, access: &Access, r: SyncGroupRequest) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    response.protocol_type = Some(StrBytes::from_static_str(CONSUMER));
    if let Some(code) = group_denied(access, &r.group_id, Operation::Read) {
        response.error_code = code;
        return response;
    }
    if r.protocol_type
        .as_ref()
        .is_some_and(|t| t.as_str() != CONSUMER)
    {
        response.error_code = K::InconsistentGroupProtocol.code();
        return response;
    }
    match cx
        .broker
        .groups
        .classic_sync(&r.group_id.0, &r.member_id, r.generation_id)
    {
        Ok((assigned, protocol)) => {
            response.protocol_name = Some(s(protocol));
            response.assignment = encode_assignment(&assigned);
        }
        Err(e) => response.error_code = classic_code(&e),
    }
    response
}

pub(super) fn heartbeat(cx: &Context, access: &Access, r: HeartbeatRequest) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    if let Some(code) = group_denied(access, &r.group_id, Operation::Read) {
        response.error_code = code;
        return response;
    }
    response.error_code =
        match cx
            .broker
            .groups
            .classic_heartbeat(&r.group_id.0, &r.member_id, r.generation_id)
        {
            Ok(true) => K::RebalanceInProgress.code(),
            Ok(false) => 0,
            Err(e) => classic_code(&e),
        };
    response
}

pub(super) fn leave_group(
    cx: &Context,
    access: &Access,
    r: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = r.group_id.0.to_string();
    let mut response = LeaveGroupResponse::default();
    if let Some(code) = group_denied(access, &group, Operation::Read) {
        response.error_code = code;
        return response;
    }
    if version < 3 {
        cx.broker.groups.leave(&group, &r.member_id);
        return response;
    }
    response.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut out = MemberResponse::default();
            if m.member_id.is_empty() {
                // Removing a static member by instance id alone (an admin's call) is not
                // served: members leave by their id.
                out.error_code = K::UnknownMemberId.code();
            } else {
                cx.broker.groups.leave(&group, &m.member_id);
            }
            out.member_id = m.member_id;
            out.group_instance_id = m.group_instance_id;
            out
        })
        .collect();
    response
}

/// A group state as Kafka names it (the consumer protocol's names).
fn state_name(state: i32) -> &'static str {
    match pb::GroupState::try_from(state) {
        Ok(pb::GroupState::Empty) => "Empty",
        Ok(pb::GroupState::Stable) => "Stable",
        Ok(pb::GroupState::Reconciling) => "Reconciling",
        _ => "Dead",
    }
}

/// ListGroups: the groups the caller may describe.
pub(super) fn list_groups(
    cx: &Context,
    access: &Access,
    r: ListGroupsRequest,
) -> ListGroupsResponse {
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    let mut response = ListGroupsResponse::default();
    response.groups = cx
        .broker
        .groups
        .list()
        .groups
        .into_iter()
        .filter(|g| access.may(Resource::Group(&g.group), Operation::Describe))
        .filter(|g| wanted(&r.states_filter, state_name(g.state)))
        .filter(|_| wanted(&r.types_filter, CONSUMER))
        .map(|g| {
            let mut out = ListedGroup::default();
            out.group_state = StrBytes::from_static_str(state_name(g.state));
            out.group_id = GroupId(s(g.group));
            out.protocol_type = StrBytes::from_static_str(CONSUMER);
            out.group_type = StrBytes::from_static_str(CONSUMER);
            out
        })
        .collect();
    response
}

pub(super) fn describe_groups(
    cx: &Context,
    access: &Access,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    response.groups = r
        .groups
        .into_iter()
        .map(|id| {
            let mut out = DescribedGroup::default();
            out.group_id = id.clone();
            out.protocol_type = StrBytes::from_static_str(CONSUMER);
            out.authorized_operations = i32::MIN;
            if let Some(code) = group_denied(access, &id, Operation::Describe) {
                out.error_code = code;
                return out;
            }
            match cx.broker.groups.describe(&id.0) {
                Ok(d) => {
                    out.group_state = StrBytes::from_static_str(state_name(d.state));
                    out.protocol_data = s(d.assignor);
                    out.members = d.members.into_iter().map(described_member).collect();
                }
                // Kafka answers an unknown group as a dead one, without an error.
                Err(e) if e.code == ErrorCode::UnknownGroup => {
                    out.group_state = StrBytes::from_static_str("Dead");
                }
                Err(e) => out.error_code = kafka_code(e.code),
            }
            out
        })
        .collect();
    response
}

fn described_member(m: pb::GroupMember) -> DescribedGroupMember {
    let assigned: Vec<Tp> = m
        .assigned
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect();
    let mut out = DescribedGroupMember::default();
    out.member_metadata = encode_subscription(&m.topics);
    out.member_assignment = encode_assignment(&assigned);
    out.member_id = s(m.member_id);
    out.group_instance_id = m.instance_id.map(s);
    out.client_id = s(m.client_id);
    out.client_host = s(m.host);
    out
}
