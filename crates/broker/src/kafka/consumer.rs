//! Kafka's consumer group protocol (KIP-848): ConsumerGroupHeartbeat, over Runnel's groups.
//!
//! The two share one model: the broker assigns, a member epoch rises with every change of a
//! member's partitions, a member gets only partitions no other member owns, and it releases
//! a revoked partition by no longer listing it as owned. Epoch 0 joins, -1 leaves, -2 leaves
//! for now (a static member keeps its partitions until its session timeout).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;
use runnel_proto::pb::ErrorCode;
use uuid::Uuid;

use super::context::Context;
use super::errors::{group_denied, kafka_code, topic_denied};
use super::metadata::topic_id;
use crate::auth::Access;
use crate::auth::acl::Operation;
use crate::error::RpcError;
use crate::groups::assignor::Tp;
use crate::groups::polled::{Polled, PolledJoin, Release};

/// Why a heartbeat is refused: Kafka's code and a message.
type Refusal = (i16, String);

pub(super) fn heartbeat(
    cx: &Context,
    access: &Access,
    peer: &str,
    client_id: &str,
    r: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let mut response = ConsumerGroupHeartbeatResponse::default();
    response.member_id = Some(r.member_id.clone());
    response.member_epoch = r.member_epoch;
    let topics = r.subscribed_topic_names.iter().flatten();
    if let Some(code) = group_denied(access, &r.group_id, Operation::Read).or_else(|| {
        topics
            .clone()
            .find_map(|t| topic_denied(access, t, Operation::Describe))
    }) {
        response.error_code = code;
        return response;
    }
    match answer(cx, peer, client_id, &r) {
        Ok(Some(polled)) => {
            if u32::try_from(r.member_epoch) != Ok(polled.epoch) {
                response.assignment = Some(assignment(cx, &polled.assigned));
            }
            response.member_id = Some(StrBytes::from_string(polled.member_id));
            response.member_epoch = i32::try_from(polled.epoch).unwrap_or(i32::MAX);
            response.heartbeat_interval_ms =
                i32::try_from(polled.heartbeat_interval_ms).unwrap_or(i32::MAX);
        }
        Ok(None) => {}
        Err((code, message)) => {
            response.error_code = code;
            response.error_message = Some(StrBytes::from_string(message));
        }
    }
    response
}

/// The member's state after the heartbeat; `None` once it left.
fn answer(
    cx: &Context,
    peer: &str,
    client_id: &str,
    r: &ConsumerGroupHeartbeatRequest,
) -> Result<Option<Polled>, Refusal> {
    let groups = &cx.broker.groups;
    let group = r.group_id.0.as_str();
    if r.subscribed_topic_regex
        .as_ref()
        .is_some_and(|re| !re.is_empty())
    {
        return Err((
            K::InvalidRequest.code(),
            "subscribed_topic_regex is not supported: subscribe to topic names".into(),
        ));
    }
    let topics: Option<Vec<String>> = r
        .subscribed_topic_names
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.0.to_string()).collect());
    let refused = |e: RpcError| (heartbeat_code(&e), e.message);
    match r.member_epoch {
        0 => {
            let Some(topics) = topics else {
                return Err((
                    K::InvalidRequest.code(),
                    "subscribed_topic_names is required to join".into(),
                ));
            };
            let assignor = match r.server_assignor.as_deref() {
                None => "",
                Some("uniform") => "sticky",
                Some("range") => "range",
                Some(other) => {
                    return Err((
                        K::UnsupportedAssignor.code(),
                        format!("server_assignor {other:?} is not one of \"uniform\", \"range\""),
                    ));
                }
            };
            let join = PolledJoin {
                group: group.to_owned(),
                member_id: (!r.member_id.is_empty()).then(|| r.member_id.to_string()),
                instance_id: r.instance_id.as_ref().map(|i| i.to_string()),
                client_id: client_id.to_owned(),
                host: peer.to_owned(),
                topics,
                session_timeout_ms: 0,
                assignor: assignor.to_owned(),
            };
            groups.join_polled(join).map(Some).map_err(refused)
        }
        -1 => {
            groups.leave(group, &r.member_id);
            Ok(None)
        }
        -2 => {
            groups.disconnected(group, &r.member_id);
            Ok(None)
        }
        epoch => {
            let release = match &r.topic_partitions {
                None => Release::Nothing,
                Some(owned) => Release::Except(owned_partitions(cx, owned)),
            };
            let polled = groups
                .poll(group, &r.member_id, topics, release)
                .map_err(refused)?;
            if u32::try_from(epoch).map_or(true, |e| e > polled.epoch) {
                return Err((
                    K::FencedMemberEpoch.code(),
                    format!(
                        "member epoch {epoch} is not one member {:?} had (its epoch is {})",
                        polled.member_id, polled.epoch
                    ),
                ));
            }
            Ok(Some(polled))
        }
    }
}

/// Kafka's code for a heartbeat's error.
fn heartbeat_code(e: &RpcError) -> i16 {
    match e.code {
        ErrorCode::LimitExceeded => K::GroupMaxSizeReached.code(),
        code => kafka_code(code),
    }
}

/// The partitions a member lists as owned, by topic name (topics that no longer exist are
/// dropped: their partitions are gone).
fn owned_partitions(
    cx: &Context,
    owned: &[kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions],
) -> Vec<Tp> {
    let names: BTreeMap<Uuid, String> = cx
        .broker
        .topics
        .list()
        .iter()
        .map(|t| (topic_id(t), t.name.to_string()))
        .collect();
    owned
        .iter()
        .filter_map(|t| names.get(&t.topic_id).map(|n| (n, &t.partitions)))
        .flat_map(|(n, ps)| ps.iter().map(move |p| (n.clone(), *p as u32)))
        .collect()
}

/// A member's partitions, by topic id.
fn assignment(cx: &Context, assigned: &[Tp]) -> Assignment {
    let mut out = Assignment::default();
    out.topic_partitions = super::groups::by_topic(assigned)
        .into_iter()
        .filter_map(|(topic, partitions)| {
            let t = cx.broker.topics.get(topic).ok()?;
            let mut tp = TopicPartitions::default();
            tp.topic_id = topic_id(&t);
            tp.partitions = partitions;
            Some(tp)
        })
        .collect();
    out
}
