//! Fetch and ListOffsets: the same reads as gRPC's Fetch (long poll with min and max bytes
//! and max wait, tiered storage included) and ListOffsets, with each stored batch translated
//! into Kafka's format on the way out. Fetch sessions are declined (session id 0): every
//! fetch names its partitions, as Kafka allows.

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use runnel_proto::pb;

use super::context::Context;
use super::errors::{inline_code, kafka_code, topic_denied};
use super::metadata::name;
use crate::auth::Access;
use crate::auth::acl::Operation;
use crate::broker::consume::TimeLookup;
use crate::quotas::Caller;

/// Kafka's timestamp that asks for the log start in ListOffsets (-1 asks for the end).
const EARLIEST: i64 = -2;

pub(super) async fn fetch(
    cx: &Context,
    access: &Access,
    r: FetchRequest,
    caller: &Caller,
) -> FetchResponse {
    let mut response = FetchResponse::default();
    let mut request = pb::FetchRequest {
        max_wait_ms: u32::try_from(r.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(r.min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(r.max_bytes).unwrap_or(0),
        ..Default::default()
    };
    // Partitions that cannot be asked (a negative number or offset) are answered here.
    let mut early: Vec<(String, i32, i16)> = Vec::new();
    for topic in &r.topics {
        let denied = topic_denied(access, &name(&topic.topic), Operation::Read);
        for p in &topic.partitions {
            if let Some(code) = denied {
                early.push((name(&topic.topic), p.partition, code));
                continue;
            }
            match (u32::try_from(p.partition), u64::try_from(p.fetch_offset)) {
                (Ok(partition), Ok(offset)) => request.partitions.push(pb::FetchPartition {
                    topic: name(&topic.topic),
                    partition,
                    offset,
                    max_bytes: u32::try_from(p.partition_max_bytes).unwrap_or(0),
                }),
                (Err(_), _) => early.push((
                    name(&topic.topic),
                    p.partition,
                    ResponseError::UnknownTopicOrPartition.code(),
                )),
                (_, Err(_)) => early.push((
                    name(&topic.topic),
                    p.partition,
                    ResponseError::OffsetOutOfRange.code(),
                )),
            }
        }
    }
    let results = if request.partitions.is_empty() {
        Ok(pb::FetchResponse::default())
    } else {
        cx.broker.fetch(request, caller).await
    };
    let results = match results {
        Ok(r) => r.results,
        Err(e) => {
            response.error_code = kafka_code(e.code);
            return response;
        }
    };
    for result in results {
        let mut data = PartitionData::default();
        data.partition_index = result.partition as i32;
        data.error_code = inline_code(result.error.as_ref());
        data.high_watermark = result.log_end_offset as i64;
        data.last_stable_offset = result.log_end_offset as i64;
        data.log_start_offset = result.log_start_offset as i64;
        data.preferred_read_replica = BrokerId(-1);
        if !result.batches.is_empty() {
            let mut records =
                BytesMut::with_capacity(result.batches.iter().map(|b| b.len()).sum::<usize>());
            for batch in &result.batches {
                if let Err(e) = runnel_storage::batch::kafka::to_kafka(batch, &mut records) {
                    data.error_code = ResponseError::CorruptMessage.code();
                    tracing::warn!(topic = %result.topic, partition = result.partition, error = %e,
                        "a stored batch could not be sent to a Kafka client");
                    break;
                }
            }
            data.records = Some(records.freeze());
        }
        push(&mut response, &result.topic, data);
    }
    for (topic, partition, code) in early {
        let mut data = PartitionData::default();
        data.partition_index = partition;
        data.error_code = code;
        data.high_watermark = -1;
        data.last_stable_offset = -1;
        data.log_start_offset = -1;
        data.preferred_read_replica = BrokerId(-1);
        push(&mut response, &topic, data);
    }
    response
}

/// Adds a partition's answer under its topic (the topic's entry made on first use).
fn push(response: &mut FetchResponse, topic: &str, data: PartitionData) {
    let found = response
        .responses
        .iter_mut()
        .find(|t| t.topic.0.as_str() == topic);
    match found {
        Some(t) => t.partitions.push(data),
        None => {
            let mut t = FetchableTopicResponse::default();
            t.topic = kafka_protocol::messages::TopicName(
                kafka_protocol::protocol::StrBytes::from_string(topic.to_owned()),
            );
            t.partitions.push(data);
            response.responses.push(t);
        }
    }
}

pub(super) async fn list_offsets(
    cx: &Context,
    access: &Access,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    use pb::offset_query::Query;
    let mut response = ListOffsetsResponse::default();
    let mut queries = Vec::new();
    let denied: Vec<Option<i16>> = r
        .topics
        .iter()
        .map(|t| topic_denied(access, &name(&t.name), Operation::Describe))
        .collect();
    for (topic, _) in r.topics.iter().zip(&denied).filter(|(_, d)| d.is_none()) {
        for p in &topic.partitions {
            let query = match p.timestamp {
                EARLIEST => Query::Boundary(pb::OffsetBoundary::Earliest as i32),
                // The end, and (Kafka's -3, max timestamp, and others) the end too.
                t if t < 0 => Query::Boundary(pb::OffsetBoundary::Latest as i32),
                t => Query::TimestampMs(t),
            };
            queries.push(pb::OffsetQuery {
                topic: name(&topic.name),
                partition: u32::try_from(p.partition_index).unwrap_or(u32::MAX),
                query: Some(query),
            });
        }
    }
    let answered = if queries.is_empty() {
        Ok(pb::ListOffsetsResponse::default())
    } else {
        cx.broker
            .list_offsets_to(pb::ListOffsetsRequest { queries }, TimeLookup::Record)
            .await
    };
    let mut results = match answered {
        Ok(a) => a.results.into_iter(),
        Err(e) => {
            let code = kafka_code(e.code);
            for topic in r.topics {
                let mut t = ListOffsetsTopicResponse::default();
                t.name = topic.name;
                for p in topic.partitions {
                    let mut out = ListOffsetsPartitionResponse::default();
                    out.partition_index = p.partition_index;
                    out.error_code = code;
                    out.offset = -1;
                    out.timestamp = -1;
                    t.partitions.push(out);
                }
                response.topics.push(t);
            }
            return response;
        }
    };
    for (topic, denied) in r.topics.into_iter().zip(denied) {
        let mut t = ListOffsetsTopicResponse::default();
        t.name = topic.name;
        for p in topic.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = p.partition_index;
            out.timestamp = -1;
            out.offset = -1;
            if let Some(code) = denied {
                out.error_code = code;
            } else if let Some(found) = results.next() {
                out.error_code = inline_code(found.error.as_ref());
                // A time with no record at or after it is offset -1, as Kafka answers it
                // (Runnel's own answer is the log end).
                let by_time = p.timestamp >= 0;
                if found.error.is_none() && !(by_time && found.timestamp_ms.is_none()) {
                    out.offset = found.offset as i64;
                    out.timestamp = found.timestamp_ms.unwrap_or(-1);
                }
            }
            t.partitions.push(out);
        }
        response.topics.push(t);
    }
    response
}
