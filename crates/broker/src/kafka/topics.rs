//! CreateTopics and DeleteTopics, through the same calls as gRPC's CreateTopic and
//! DeleteTopic. Kafka's topic configs map onto Runnel's `TopicConfig` (`docs/kafka.md`); one
//! Runnel does not have is `INVALID_CONFIG` for that topic, naming it.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_proto::pb;

use super::context::Context;
use super::errors::kafka_code;
use super::metadata::name;

/// Kafka's topic configs that have a Runnel counterpart.
pub(super) const CONFIGS: [&str; 6] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "cleanup.policy",
];

/// A topic's Kafka configs as a Runnel `TopicConfig`.
fn topic_config(t: &CreatableTopic) -> Result<pb::TopicConfig, String> {
    let mut c = pb::TopicConfig::default();
    for entry in &t.configs {
        let key = entry.name.as_str();
        let value = entry.value.as_ref().map(|v| v.as_str()).unwrap_or_default();
        let number = |v: &str| -> Result<i64, String> {
            v.parse::<i64>()
                .map_err(|_| format!("{key} {v:?} is not a number"))
        };
        // Kafka's -1 means no limit; Runnel's 0 does.
        let limit = |v: &str| -> Result<u64, String> { Ok(u64::try_from(number(v)?).unwrap_or(0)) };
        match key {
            "retention.ms" => c.retention_ms = Some(limit(value)?),
            "retention.bytes" => c.retention_bytes = Some(limit(value)?),
            "segment.bytes" => c.segment_bytes = Some(limit(value)?),
            "segment.ms" => c.segment_ms = Some(limit(value)?),
            "max.message.bytes" => {
                c.max_batch_bytes = Some(
                    u32::try_from(number(value)?)
                        .map_err(|_| format!("{key} {value:?} is out of range"))?,
                );
            }
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "cleanup.policy {value:?}: only \"delete\" is supported (no compaction)"
                ));
            }
            other => {
                return Err(format!(
                    "{other} is not a topic config this broker has (it has {})",
                    CONFIGS.join(", ")
                ));
            }
        }
    }
    Ok(c)
}

pub(super) async fn create_topics(cx: &Context, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for t in r.topics {
        let mut out = CreatableTopicResult::default();
        out.name = t.name.clone();
        out.num_partitions = -1;
        out.replication_factor = -1;
        let failed = |out: &mut CreatableTopicResult, error: ResponseError, message: String| {
            out.error_code = error.code();
            out.error_message = Some(StrBytes::from_string(message));
        };
        if t.replication_factor > 1 {
            failed(
                &mut out,
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is above 1: this broker keeps one copy",
                    t.replication_factor
                ),
            );
        } else if !t.assignments.is_empty() {
            failed(
                &mut out,
                ResponseError::InvalidReplicaAssignment,
                "replica assignments are not supported: one broker holds every partition".into(),
            );
        } else {
            match topic_config(&t) {
                Err(message) => failed(&mut out, ResponseError::InvalidConfig, message),
                Ok(config) if r.validate_only => {
                    let _ = config;
                    out.num_partitions = t.num_partitions.max(1);
                    out.replication_factor = 1;
                }
                Ok(config) => {
                    let count = u32::try_from(t.num_partitions).unwrap_or(1).max(1);
                    match cx
                        .broker
                        .create_topic(name(&t.name), count, Some(config))
                        .await
                    {
                        Ok(d) => {
                            out.num_partitions = d.partition_count as i32;
                            out.replication_factor = 1;
                            if let Ok(topic) = cx.broker.topics.get(&d.topic) {
                                out.topic_id = super::metadata::topic_id(&topic);
                            }
                        }
                        Err(e) => {
                            out.error_code = kafka_code(e.code);
                            out.error_message = Some(StrBytes::from_string(e.message));
                        }
                    }
                }
            }
        }
        response.topics.push(out);
    }
    response
}

pub(super) async fn delete_topics(
    cx: &Context,
    r: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    // Names in `topic_names` up to v5, in `topics` (name or id) from v6.
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = r
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    if version >= 6 {
        wanted.extend(r.topics.into_iter().map(|t| (t.name, t.topic_id)));
    }
    for (topic_name, id) in wanted {
        let mut out = DeletableTopicResult::default();
        out.topic_id = id;
        let resolved = match &topic_name {
            Some(n) => Some(name(n)),
            None => cx
                .broker
                .topics
                .list()
                .into_iter()
                .find(|t| super::metadata::topic_id(t) == id)
                .map(|t| t.name.to_string()),
        };
        out.name = topic_name.clone();
        match resolved {
            None => out.error_code = ResponseError::UnknownTopicId.code(),
            Some(n) => {
                out.name = Some(TopicName(StrBytes::from_string(n.clone())));
                if let Err(e) = cx.broker.delete_topic(n).await {
                    out.error_code = kafka_code(e.code);
                    out.error_message = Some(StrBytes::from_string(e.message));
                }
            }
        }
        response.responses.push(out);
    }
    response
}
