//! CreateTopics, DeleteTopics, CreatePartitions and DescribeConfigs (of topics), through the
//! same calls as gRPC's CreateTopic, DeleteTopic, CreatePartitions and DescribeTopic. Kafka's topic configs map onto Runnel's `TopicConfig` (`docs/kafka.md`); one
//! Runnel does not have is `INVALID_CONFIG` for that topic, naming it.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_proto::pb;

use super::context::Context;
use super::errors::{kafka_code, topic_denied};
use super::metadata::name;
use crate::auth::Access;
use crate::auth::acl::Operation;

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

pub(super) async fn create_topics(
    cx: &Context,
    access: &Access,
    r: CreateTopicsRequest,
) -> CreateTopicsResponse {
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
        if let Some(code) = topic_denied(access, &name(&t.name), Operation::Create) {
            out.error_code = code;
        } else if t.replication_factor > 1 {
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
    access: &Access,
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
                if let Some(code) = topic_denied(access, &n, Operation::Delete) {
                    out.error_code = code;
                } else if let Err(e) = cx.broker.delete_topic(n).await {
                    out.error_code = kafka_code(e.code);
                    out.error_message = Some(StrBytes::from_string(e.message));
                }
            }
        }
        response.responses.push(out);
    }
    response
}

pub(super) async fn create_partitions(
    cx: &Context,
    access: &Access,
    r: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for t in r.topics {
        let mut out = CreatePartitionsTopicResult::default();
        out.name = t.name.clone();
        let refuse =
            |out: &mut CreatePartitionsTopicResult, error: ResponseError, message: String| {
                out.error_code = error.code();
                out.error_message = Some(StrBytes::from_string(message));
            };
        if let Some(code) = topic_denied(access, &name(&t.name), Operation::Alter) {
            out.error_code = code;
        } else if t.assignments.is_some() {
            refuse(
                &mut out,
                ResponseError::InvalidReplicaAssignment,
                "replica assignments are not supported: one broker holds every partition".into(),
            );
        } else if let Ok(count) = u32::try_from(t.count) {
            if r.validate_only {
                if let Err(e) = cx.broker.topics.get(&name(&t.name)) {
                    out.error_code = kafka_code(e.code);
                    out.error_message = Some(StrBytes::from_string(e.message));
                }
            } else if let Err(e) = cx.broker.create_partitions(name(&t.name), count).await {
                out.error_code = kafka_code(e.code);
                out.error_message = Some(StrBytes::from_string(e.message));
            }
        } else {
            refuse(
                &mut out,
                ResponseError::InvalidPartitions,
                format!("count {} is negative", t.count),
            );
        }
        response.results.push(out);
    }
    response
}

/// Kafka's resource type of a topic in DescribeConfigs.
const TOPIC_RESOURCE: i8 = 2;
/// Kafka's config sources: set on the topic, and the broker's default.
const TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

pub(super) async fn describe_configs(
    cx: &Context,
    access: &Access,
    r: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in r.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        let denied = (resource.resource_type == TOPIC_RESOURCE)
            .then(|| topic_denied(access, resource.resource_name.as_str(), Operation::Describe))
            .flatten();
        if let Some(code) = denied {
            out.error_code = code;
        } else if resource.resource_type == TOPIC_RESOURCE {
            match cx.broker.topics.get(resource.resource_name.as_str()) {
                Ok(topic) => {
                    let effective = cx.broker.topics.effective(&topic);
                    let set = topic.overrides().names();
                    let wanted = resource.configuration_keys.as_ref();
                    out.configs = kafka_configs(&effective)
                        .into_iter()
                        .filter(|(k, _, _)| {
                            wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == *k))
                        })
                        .map(|(k, value, field)| {
                            let mut c = DescribeConfigsResourceResult::default();
                            c.name = StrBytes::from_static_str(k);
                            c.value = Some(StrBytes::from_string(value));
                            c.config_source = if field.is_some_and(|f| set.iter().any(|s| s == f)) {
                                TOPIC_CONFIG
                            } else {
                                DEFAULT_CONFIG
                            };
                            c
                        })
                        .collect();
                }
                Err(e) => {
                    out.error_code = kafka_code(e.code);
                    out.error_message = Some(StrBytes::from_string(e.message));
                }
            }
        }
        // Other resources (the broker) have no configs Kafka clients can read here.
        response.results.push(out);
    }
    response
}

/// A topic's effective config by Kafka name: the value, and the Runnel field it comes from.
fn kafka_configs(
    c: &crate::config::TopicDefaults,
) -> Vec<(&'static str, String, Option<&'static str>)> {
    // Runnel's 0 means no limit where Kafka's -1 does.
    let limit = |v: u64| {
        if v == 0 {
            "-1".to_owned()
        } else {
            v.to_string()
        }
    };
    vec![
        ("cleanup.policy", "delete".to_owned(), None),
        ("retention.ms", limit(c.retention_ms), Some("retention_ms")),
        (
            "retention.bytes",
            limit(c.retention_bytes),
            Some("retention_bytes"),
        ),
        (
            "segment.bytes",
            c.segment_bytes.to_string(),
            Some("segment_bytes"),
        ),
        ("segment.ms", limit(c.segment_ms), Some("segment_ms")),
        (
            "max.message.bytes",
            c.max_batch_bytes.to_string(),
            Some("max_batch_bytes"),
        ),
    ]
}
