//! OffsetCommit and OffsetFetch: the committed offsets of Runnel's groups, which gRPC
//! consumers read and write too.
//!
//! A member's commit names its generation (classic protocol) or member epoch (consumer
//! protocol); both are checked as the gRPC commit checks its member epoch: a member commits
//! only partitions it owns. A commit without a member (generation -1, no member id) is a
//! standalone consumer's, accepted while the group has no members.

use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_proto::pb::{self, ErrorCode};

use super::context::Context;
use super::errors::{group_denied, inline_code, kafka_code, topic_denied};
use super::groups::classic_code;
use crate::auth::Access;
use crate::auth::acl::{Operation, Resource};

pub(super) async fn offset_commit(
    cx: &Context,
    access: &Access,
    r: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = r.group_id.0.to_string();
    let member = r.member_id.to_string();
    let groups = &cx.broker.groups;
    let classic = groups.is_classic(&group, &member);
    // A refusal of the whole request: its code for every partition.
    let epoch: Result<u32, i16> = if let Some(code) = group_denied(access, &group, Operation::Read)
    {
        Err(code)
    } else if member.is_empty() {
        Ok(0)
    } else if classic {
        groups
            .classic_epoch(&group, &member, r.generation_id_or_member_epoch)
            .map_err(|e| classic_code(&e))
    } else {
        u32::try_from(r.generation_id_or_member_epoch).map_err(|_| K::StaleMemberEpoch.code())
    };
    let mut codes: Vec<Vec<i16>> = r
        .topics
        .iter()
        .map(|t| vec![0; t.partitions.len()])
        .collect();
    let mut offsets = Vec::new();
    for (t, topic) in r.topics.iter().enumerate() {
        let denied = topic_denied(access, &topic.name, Operation::Read);
        for (p, part) in topic.partitions.iter().enumerate() {
            if let Some(code) = denied {
                codes[t][p] = code;
                continue;
            }
            match (
                u32::try_from(part.partition_index),
                u64::try_from(part.committed_offset),
            ) {
                (Ok(partition), Ok(offset)) => offsets.push((
                    (t, p),
                    pb::OffsetCommit {
                        topic: topic.name.0.to_string(),
                        partition,
                        offset,
                        metadata: part
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    },
                )),
                (Err(_), _) => codes[t][p] = K::UnknownTopicOrPartition.code(),
                (_, Err(_)) => codes[t][p] = K::OffsetOutOfRange.code(),
            }
        }
    }
    let outcome = match epoch {
        Err(code) => Err(code),
        Ok(_) if offsets.is_empty() => Ok(Vec::new()),
        Ok(member_epoch) => {
            let req = pb::CommitOffsetsRequest {
                group,
                member_id: member,
                member_epoch,
                offsets: offsets.iter().map(|(_, o)| o.clone()).collect(),
            };
            match groups.commit(req).await {
                Ok(answer) => Ok(answer.results),
                Err(e) => Err(commit_code(&e, classic)),
            }
        }
    };
    match outcome {
        Ok(results) => {
            for (((t, p), _), result) in offsets.iter().zip(&results) {
                codes[*t][*p] = match &result.error {
                    Some(e) if e.code == ErrorCode::FencedMember as i32 => fenced_code(classic),
                    e => inline_code(e.as_ref()),
                };
            }
        }
        Err(code) => {
            for ((t, p), _) in &offsets {
                codes[*t][*p] = code;
            }
        }
    }
    let mut response = OffsetCommitResponse::default();
    response.topics = r
        .topics
        .into_iter()
        .zip(codes)
        .map(|(topic, codes)| {
            let mut out = OffsetCommitResponseTopic::default();
            out.partitions = topic
                .partitions
                .iter()
                .zip(codes)
                .map(|(p, code)| {
                    let mut part = OffsetCommitResponsePartition::default();
                    part.partition_index = p.partition_index;
                    part.error_code = code;
                    part
                })
                .collect();
            out.name = topic.name;
            out
        })
        .collect();
    response
}

/// A commit by a member that does not own the partition: a classic member's generation is
/// stale, a consumer-protocol member's epoch is.
fn fenced_code(classic: bool) -> i16 {
    if classic {
        K::IllegalGeneration.code()
    } else {
        K::StaleMemberEpoch.code()
    }
}

fn commit_code(e: &crate::error::RpcError, classic: bool) -> i16 {
    match e.code {
        ErrorCode::FencedMember => fenced_code(classic),
        // A standalone commit while the group has members: Kafka's answer to a commit that
        // names no member of a live group.
        ErrorCode::GroupNotEmpty => K::UnknownMemberId.code(),
        code => kafka_code(code),
    }
}

/// One group's committed offsets for the requested topics (`None`: every committed offset),
/// of the topics the caller may describe.
fn fetch_group(
    cx: &Context,
    access: &Access,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<pb::CommittedOffset>)>, i16> {
    if let Some(code) = group_denied(access, group, Operation::Describe) {
        return Err(code);
    }
    let partitions = topics
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(topic, ps)| pb::TopicPartitions {
            topic,
            partitions: ps
                .into_iter()
                .filter_map(|p| u32::try_from(p).ok())
                .collect(),
        })
        .collect();
    let req = pb::FetchOffsetsRequest {
        group: group.to_owned(),
        partitions,
    };
    let answer = cx
        .broker
        .groups
        .fetch_offsets(&req)
        .map_err(|e| kafka_code(e.code))?;
    let mut by_topic: Vec<(String, Vec<pb::CommittedOffset>)> = Vec::new();
    let described = |topic: &str| access.may(Resource::Topic(topic), Operation::Describe);
    for o in answer.offsets.into_iter().filter(|o| described(&o.topic)) {
        match by_topic.last_mut() {
            Some((t, list)) if *t == o.topic => list.push(o),
            _ => by_topic.push((o.topic.clone(), vec![o])),
        }
    }
    Ok(by_topic)
}

fn committed(o: &pb::CommittedOffset) -> (i64, Option<StrBytes>) {
    (
        o.offset.map_or(-1, |o| o as i64),
        Some(StrBytes::from_string(o.metadata.clone())),
    )
}

/// The answer's topics for `found`, in the message types of the request's version (v1-7
/// and v8+ have types of their own with the same fields).
macro_rules! fetched_topics {
    ($found:expr, $topic:ty, $partition:ty) => {
        $found
            .into_iter()
            .map(|(topic, list)| {
                let mut t = <$topic>::default();
                t.name = TopicName(StrBytes::from_string(topic));
                t.partitions = list
                    .iter()
                    .map(|o| {
                        let mut p = <$partition>::default();
                        p.partition_index = o.partition as i32;
                        (p.committed_offset, p.metadata) = committed(o);
                        p.committed_leader_epoch = -1;
                        p
                    })
                    .collect();
                t
            })
            .collect()
    };
}

pub(super) fn offset_fetch(
    cx: &Context,
    access: &Access,
    r: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let requested = |ts: Option<Vec<(TopicName, Vec<i32>)>>| {
        ts.map(|ts| {
            ts.into_iter()
                .map(|(name, partitions)| (name.0.to_string(), partitions))
                .collect()
        })
    };
    let mut response = OffsetFetchResponse::default();
    if version < 8 {
        let topics = r.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        match fetch_group(cx, access, &r.group_id.0, requested(topics)) {
            Ok(found) => {
                response.topics = fetched_topics!(
                    found,
                    OffsetFetchResponseTopic,
                    OffsetFetchResponsePartition
                )
            }
            Err(code) => response.error_code = code,
        }
        return response;
    }
    response.groups = r
        .groups
        .into_iter()
        .map(|g| {
            let mut out = OffsetFetchResponseGroup::default();
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            match fetch_group(cx, access, &g.group_id.0, requested(topics)) {
                Ok(found) => {
                    out.topics = fetched_topics!(
                        found,
                        OffsetFetchResponseTopics,
                        OffsetFetchResponsePartitions
                    )
                }
                Err(code) => out.error_code = code,
            }
            out.group_id = g.group_id;
            out
        })
        .collect();
    response
}
