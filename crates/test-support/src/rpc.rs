//! Requests that tests send again and again, against either harness (both dereference to a [`Connection`]).

use bytes::Bytes;
use runnel_proto::pb::{self, start_position::Position};

use crate::Connection;

/// Creates a topic with `partitions` partitions and the broker's default config.
///
/// # Panics
///
/// If the broker refuses it.
pub async fn create_topic(b: &Connection, topic: &str, partitions: u32) {
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: partitions,
            config: None,
        })
        .await
        .expect("create topic");
}

/// Describes a topic.
///
/// # Panics
///
/// If the broker refuses (the topic does not exist, for one).
pub async fn describe_topic(b: &Connection, topic: &str) -> pb::TopicDescription {
    let request = pb::DescribeTopicRequest {
        topic: topic.into(),
    };
    let response = b
        .admin()
        .describe_topic(request)
        .await
        .expect("describe topic");
    response.into_inner().topic.expect("a description")
}

/// A produce entry of `batches` for one partition.
pub fn entry(partition: u32, batches: Vec<Bytes>) -> pb::ProducePartition {
    pb::ProducePartition {
        partition: Some(partition),
        partition_key: None,
        batches,
        ..Default::default()
    }
}

/// A produce request with request id 1.
pub fn produce_request(
    topic: &str,
    acks: pb::Acks,
    partitions: Vec<pb::ProducePartition>,
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        request_id: 1,
        topic: topic.into(),
        acks: acks as i32,
        partitions,
    }
}

/// Produces `batches` to one partition in one request with `acks` = written; returns that
/// entry's result (which may hold an inline error).
///
/// # Panics
///
/// If the whole request fails.
pub async fn produce(
    b: &Connection,
    topic: &str,
    partition: u32,
    batches: Vec<Bytes>,
) -> pb::ProducePartitionResult {
    produce_acked(b, topic, partition, pb::Acks::Written, batches).await
}

/// Produces `batches` to one partition in one request with the given `acks`; returns that
/// entry's result (which may hold an inline error).
///
/// # Panics
///
/// If the whole request fails.
pub async fn produce_acked(
    b: &Connection,
    topic: &str,
    partition: u32,
    acks: pb::Acks,
    batches: Vec<Bytes>,
) -> pb::ProducePartitionResult {
    let request = produce_request(topic, acks, vec![entry(partition, batches)]);
    let response = b.produce().produce(request).await.expect("produce");
    let result = response.into_inner().results.into_iter().next();
    result.expect("one result per entry")
}

/// A `Fetch` entry for one partition from `offset`, without a byte limit of its own.
pub fn fetch_partition(topic: &str, partition: u32, offset: u64) -> pb::FetchPartition {
    pb::FetchPartition {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 0,
    }
}

/// Reads a partition from `offset` to its end with `Fetch`; returns the stored batches.
///
/// # Panics
///
/// If a fetch fails, as a whole or for the partition.
pub async fn fetch_all(b: &Connection, topic: &str, partition: u32, offset: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut consume = b.consume();
    let mut offset = offset;
    loop {
        let request = pb::FetchRequest {
            partitions: vec![fetch_partition(topic, partition, offset)],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            ..Default::default()
        };
        let response = consume.fetch(request).await.expect("fetch").into_inner();
        let r = response.results.into_iter().next().expect("one result");
        assert!(r.error.is_none(), "fetch error {:?}", r.error);
        if r.batches.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.batches);
    }
}

/// Every committed offset of `group`, by partition: `(offset, metadata)`. Offsets of one
/// topic are what the tests that use it commit.
///
/// # Panics
///
/// If the fetch fails, or a partition has no offset.
pub async fn committed_offsets(
    b: &Connection,
    group: &str,
) -> std::collections::BTreeMap<u32, (u64, String)> {
    b.groups()
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: group.into(),
            partitions: vec![],
        })
        .await
        .expect("fetch offsets")
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| (c.partition, (c.offset.expect("committed"), c.metadata)))
        .collect()
}

/// Opens a `Subscribe` stream on one partition from `start` (the broker's default when
/// `None`).
///
/// # Panics
///
/// If the broker refuses the subscription.
pub async fn subscribe(
    b: &Connection,
    topic: &str,
    partition: u32,
    start: Option<Position>,
) -> tonic::Streaming<pb::SubscribeResponse> {
    b.consume()
        .subscribe(pb::SubscribeRequest {
            topic: topic.into(),
            partition,
            start: start.map(|p| pb::StartPosition { position: Some(p) }),
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// A codec that sends and receives message bodies as they are, so that a test can send bytes
/// that are not the method's message (not protobuf at all, or a string that is not UTF-8).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

/// Calls the unary method at `path` (`/package.Service/Method`) with `body` as the request
/// message's bytes; returns the response message's bytes.
///
/// # Errors
///
/// The call's status.
pub async fn raw_unary(
    b: &Connection,
    path: &'static str,
    body: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(b.channel());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Calls the streaming method at `path` with one request message of `body`'s bytes (then
/// ends the requests for a server-streaming method, or keeps them open for a bidirectional
/// one, with `keep_open`), and returns the first response message's bytes, or the status the
/// stream ended with.
///
/// # Errors
///
/// The call's or the stream's status.
pub async fn raw_stream_first(
    b: &Connection,
    path: &'static str,
    body: Bytes,
    keep_open: bool,
) -> Result<Option<Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(b.channel());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let one = tokio_stream::iter([body]);
    let requests: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Bytes> + Send>> = if keep_open {
        Box::pin(tokio_stream::StreamExt::chain(one, tokio_stream::pending()))
    } else {
        Box::pin(one)
    };
    let mut responses = grpc
        .streaming(tonic::Request::new(requests), path, RawCodec)
        .await?
        .into_inner();
    responses.message().await
}

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// Streams both ways (the request stream is kept open after the one message).
    Bidirectional,
}

/// Calls the method at `path` of kind `kind` with one request message of `body`'s bytes and
/// the metadata `headers`, and returns the first response message's bytes (`None` if a
/// stream ended without one), or the status the call or stream ended with.
///
/// # Errors
///
/// The call's or the stream's status.
pub async fn raw_call(
    b: &Connection,
    path: &'static str,
    kind: CallKind,
    body: Bytes,
    headers: &[(&'static str, &str)],
) -> Result<Option<Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(b.channel());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    fn with_headers<T>(
        mut request: tonic::Request<T>,
        headers: &[(&'static str, &str)],
    ) -> tonic::Request<T> {
        for (key, value) in headers {
            let value = value.parse().expect("a valid metadata value");
            request.metadata_mut().insert(*key, value);
        }
        request
    }
    if kind == CallKind::Unary {
        let request = with_headers(tonic::Request::new(body), headers);
        return grpc
            .unary(request, path, RawCodec)
            .await
            .map(|r| Some(r.into_inner()));
    }
    let one = tokio_stream::iter([body]);
    let requests: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Bytes> + Send>> =
        if kind == CallKind::Bidirectional {
            Box::pin(tokio_stream::StreamExt::chain(one, tokio_stream::pending()))
        } else {
            Box::pin(one)
        };
    let request = with_headers(tonic::Request::new(requests), headers);
    let mut responses = grpc.streaming(request, path, RawCodec).await?.into_inner();
    responses.message().await
}
