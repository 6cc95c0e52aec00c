//! Metadata: this broker as the only broker, the leader and only replica of every
//! partition; the topics asked for (all of them for a null list), with their ids.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info};

use super::context::Context;
use super::errors::topic_denied;
use crate::auth::Access;
use crate::auth::acl::{Operation, Resource};
use crate::topics::Topic;

/// This broker's node id: the only one.
pub(super) const NODE_ID: i32 = 0;

/// A topic's id as Kafka has it (the topic's own 128-bit id).
pub(super) fn topic_id(topic: &Topic) -> uuid::Uuid {
    uuid::Uuid::try_parse(&topic.id).unwrap_or_default()
}

/// The name for a Kafka topic name.
pub(super) fn name(n: &TopicName) -> String {
    n.0.to_string()
}

/// Metadata: the topics asked for, or every topic the caller may describe.
pub(super) async fn metadata(
    cx: &Context,
    access: &Access,
    r: MetadataRequest,
) -> MetadataResponse {
    let topics = &cx.broker.topics;
    let mut response = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(NODE_ID);
    broker.host = StrBytes::from_string(cx.host.clone());
    broker.port = cx.port;
    response.brokers = vec![broker];
    response.cluster_id = Some(StrBytes::from_static_str("runnel"));
    response.controller_id = BrokerId(NODE_ID);
    let wanted: Vec<Result<Arc<Topic>, String>> = match r.topics {
        None => topics
            .list()
            .into_iter()
            .filter(|t| access.may(Resource::Topic(&t.name), Operation::Describe))
            .map(Ok)
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|t| {
                let by_id = (!t.topic_id.is_nil())
                    .then(|| {
                        topics
                            .list()
                            .into_iter()
                            .find(|x| topic_id(x) == t.topic_id)
                    })
                    .flatten();
                let n = t.name.as_ref().map(name).unwrap_or_default();
                by_id
                    .map(Ok)
                    .unwrap_or_else(|| topics.get(&n).map_err(|_| n))
            })
            .collect(),
    };
    let mut found = Vec::with_capacity(wanted.len());
    for t in wanted {
        found.push(match t {
            Err(n) if r.allow_auto_topic_creation => auto_create(cx, access, n).await,
            t => t,
        });
    }
    response.topics = found
        .into_iter()
        .map(|t| match t {
            Ok(t) => match topic_denied(access, &t.name, Operation::Describe) {
                None => describe(&t),
                Some(code) => {
                    let mut out = MetadataResponseTopic::default();
                    out.name = Some(TopicName(StrBytes::from_string(t.name.to_string())));
                    out.error_code = code;
                    out
                }
            },
            Err(n) => {
                let mut out = MetadataResponseTopic::default();
                // A caller that may not describe the name learns nothing of it; a name no
                // topic can have is refused for good (clients retry an unknown topic).
                let unknown = if crate::topics::validate_name(&n).is_err() {
                    ResponseError::InvalidTopicException
                } else {
                    ResponseError::UnknownTopicOrPartition
                };
                out.error_code =
                    topic_denied(access, &n, Operation::Describe).unwrap_or(unknown.code());
                out.name = Some(TopicName(StrBytes::from_string(n)));
                out
            }
        })
        .collect();
    response
}

/// Creates topic `n` if `kafka.auto_create_topics` is on and the caller may create it; the
/// topic, or the name back.
async fn auto_create(cx: &Context, access: &Access, n: String) -> Result<Arc<Topic>, String> {
    let settings = &cx.broker.config.kafka;
    if !settings.auto_create_topics || !access.may(Resource::Topic(&n), Operation::Create) {
        return Err(n);
    }
    match cx
        .broker
        .create_topic(n.clone(), settings.auto_create_partitions, None)
        .await
    {
        Ok(_) => info!(topic = %n, partitions = settings.auto_create_partitions,
            "created a topic a Kafka client asked for (kafka.auto_create_topics)"),
        // Another client created it first, or the name is invalid (answered as unknown).
        Err(e) => debug!(topic = %n, error = %e.message, "no automatic creation"),
    }
    cx.broker.topics.get(&n).map_err(|_| n)
}

fn describe(t: &Topic) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(StrBytes::from_string(t.name.to_string())));
    out.topic_id = topic_id(t);
    out.partitions = (0..t.partition_count())
        .map(|p| {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p as i32;
            part.leader_id = BrokerId(NODE_ID);
            part.leader_epoch = 0;
            part.replica_nodes = vec![BrokerId(NODE_ID)];
            part.isr_nodes = vec![BrokerId(NODE_ID)];
            part
        })
        .collect();
    out
}
