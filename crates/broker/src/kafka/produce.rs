//! Produce and InitProducerId: Kafka batches translated into Runnel's and appended through
//! the same calls as gRPC's Produce (acks 0 and 1 as `ACKS_WRITTEN`, acks -1 as
//! `ACKS_DURABLE`); idempotent producers keep their ids, epochs and sequences, which the
//! partition logs check as for any producer.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use runnel_proto::pb;

use super::context::Context;
use super::errors::{inline_code, kafka_code, topic_denied};
use super::metadata::name;
use crate::auth::Access;
use crate::auth::acl::{Operation, ResourceType};
use crate::quotas::{Caller, Quota};

/// Answers a produce; `None` for acks 0, which takes no answer.
pub(super) async fn produce(
    cx: &Context,
    access: &Access,
    r: ProduceRequest,
    caller: &Caller,
) -> Option<ProduceResponse> {
    let acks = match r.acks {
        0 | 1 => Some(pb::Acks::Written),
        -1 => Some(pb::Acks::Durable),
        _ => None,
    };
    let mut response = ProduceResponse::default();
    let mut bytes = 0u64;
    for topic in r.topic_data {
        let mut out = TopicProduceResponse::default();
        out.name = topic.name.clone();
        let failed = |index: i32, error: ResponseError, message: String| {
            let mut p = PartitionProduceResponse::default();
            p.index = index;
            p.error_code = error.code();
            p.error_message = Some(StrBytes::from_string(message));
            p.base_offset = -1;
            p
        };
        let mut entries = Vec::new();
        let mut slots = Vec::new();
        let denied = topic_denied(access, &name(&topic.name), Operation::Write).is_some();
        for data in topic.partition_data {
            let index = data.index;
            if denied {
                out.partition_responses.push(failed(
                    index,
                    ResponseError::TopicAuthorizationFailed,
                    format!("not authorized to write to topic {:?}", name(&topic.name)),
                ));
                continue;
            }
            if r.transactional_id.is_some() {
                out.partition_responses.push(failed(
                    index,
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "transactions are not supported".into(),
                ));
                continue;
            }
            let Some(acks) = acks else {
                out.partition_responses.push(failed(
                    index,
                    ResponseError::InvalidRequiredAcks,
                    format!("acks {} is not 0, 1 or -1", r.acks),
                ));
                continue;
            };
            let Ok(partition) = u32::try_from(index) else {
                out.partition_responses.push(failed(
                    index,
                    ResponseError::UnknownTopicOrPartition,
                    format!("partition {index} does not exist"),
                ));
                continue;
            };
            match translate(data.records.unwrap_or_default()) {
                Ok(batches) => {
                    bytes += batches.iter().map(|b| b.len() as u64).sum::<u64>();
                    slots.push(out.partition_responses.len());
                    out.partition_responses
                        .push(PartitionProduceResponse::default());
                    entries.push((
                        index,
                        acks,
                        pb::ProducePartition {
                            partition: Some(partition),
                            batches,
                            ..Default::default()
                        },
                    ));
                }
                Err(message) => out.partition_responses.push(failed(
                    index,
                    ResponseError::CorruptMessage,
                    message,
                )),
            }
        }
        if !entries.is_empty() {
            let acks = entries[0].1;
            let indexes: Vec<i32> = entries.iter().map(|(i, _, _)| *i).collect();
            let request = pb::ProduceRequest {
                request_id: 0,
                topic: name(&topic.name),
                acks: acks as i32,
                partitions: entries.into_iter().map(|(_, _, e)| e).collect(),
            };
            let b = &cx.broker;
            let result = match b.produce_write(request).await {
                Ok(written) => Ok(b.produce_finish(written).await),
                Err(e) => Err(e),
            };
            for (k, slot) in slots.into_iter().enumerate() {
                let p = &mut out.partition_responses[slot];
                p.index = indexes[k];
                p.base_offset = -1;
                p.log_append_time_ms = -1;
                match &result {
                    Ok(resp) => {
                        let Some(entry) = resp.results.get(k) else {
                            p.error_code = ResponseError::UnknownServerError.code();
                            continue;
                        };
                        p.error_code = inline_code(entry.error.as_ref());
                        p.error_message = entry
                            .error
                            .as_ref()
                            .map(|e| StrBytes::from_string(e.message.clone()));
                        if let Some(first) = entry.batches.first() {
                            p.base_offset = first.base_offset as i64;
                        }
                        p.log_start_offset = cx
                            .broker
                            .topics
                            .get(&name(&topic.name))
                            .and_then(|t| t.partition(indexes[k] as u32))
                            .map_or(-1, |part| part.start_offset() as i64);
                    }
                    Err(e) => {
                        p.error_code = kafka_code(e.code);
                        p.error_message = Some(StrBytes::from_string(e.message.clone()));
                    }
                }
            }
        }
        response.responses.push(out);
    }
    cx.broker
        .quotas
        .pace(caller, Quota::ProduceBytes, bytes)
        .await;
    (r.acks != 0).then_some(response)
}

/// A Kafka `records` field as Runnel batches.
fn translate(records: Bytes) -> Result<Vec<Bytes>, String> {
    let batches =
        runnel_storage::batch::kafka::kafka_batches(&records).map_err(|e| e.to_string())?;
    let whole: usize = batches.iter().map(Bytes::len).sum();
    if whole != records.len() {
        return Err(format!(
            "records: {} bytes after the last whole batch",
            records.len() - whole
        ));
    }
    if batches.is_empty() {
        return Err("records: no batch".into());
    }
    batches
        .iter()
        .map(|b| runnel_storage::batch::kafka::from_kafka(b).map_err(|e| e.to_string()))
        .collect()
}

/// InitProducerId: a new idempotent producer id (or the next epoch of the one given), from
/// the same registry as gRPC's InitProducer. Transactional ids are refused.
pub(super) async fn init_producer_id(
    cx: &Context,
    access: &Access,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    // Of use only to a caller that may write somewhere (Kafka's rule since KIP-679).
    if access
        .check_some(ResourceType::Topic, Operation::Write)
        .is_err()
    {
        response.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return response;
    }
    if r.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return response;
    }
    let (id, epoch) = if r.producer_id.0 >= 0 {
        (Some(r.producer_id.0), Some(i32::from(r.producer_epoch)))
    } else {
        (None, None)
    };
    match cx.broker.init_producer(id, epoch).await {
        Ok((id, epoch)) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = epoch;
        }
        Err(e) => response.error_code = kafka_code(e.code),
    }
    response
}
