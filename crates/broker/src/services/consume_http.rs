//! `Subscribe` and `Fetch` answered without tonic's message encoder, so that stored batches go
//! from the read buffer to the socket without another copy.
//!
//! tonic encodes every response message into its own buffer: for the read RPCs that is a
//! second user-space copy of every batch after the `pread` (docs/benchmarks.md, "Broker").
//! Here [`runnel_proto::framing`] writes the response framing (the gRPC message prefix, every
//! other field, each batch's field key and length) into a small buffer and hands each batch
//! to HTTP/2 as the `Bytes` the log returned, which h2 writes with vectored I/O; small batches
//! are copied into the framing instead. The bytes on the wire are exactly what tonic would
//! send, fields in the same order; the request checks mirror tonic's decoder, and the RPCs
//! themselves and every error are the same code as the generated service's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use prost::Message;
use runnel_proto::framing::{Framed, FramedBody, Framer, PREFIX_LEN, field_len, fields};
use runnel_proto::pb::{self, ErrorCode, consume_service_server::ConsumeServiceServer};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::access::{Access, Protected, Recheck, Rechecked, access, authorized};
use super::by_hand::{Answer, ByHand, Method};
use super::caller::caller;
use super::consume::{Consume, subscribe_done};
use super::{finish, grpc_response, rpc_done};
use crate::broker::Broker;
use crate::broker::consume::{Delivery, LargeResponse, Pushed, SubscribeItem};
use crate::error::RpcError;

/// The HTTP/2 path of `runnel.v1.ConsumeService/Subscribe`.
pub(crate) const SUBSCRIBE_PATH: &str = "/runnel.v1.ConsumeService/Subscribe";

/// The HTTP/2 path of `runnel.v1.ConsumeService/Fetch`.
pub(crate) const FETCH_PATH: &str = "/runnel.v1.ConsumeService/Fetch";

/// `runnel.v1.ConsumeService`: the generated service, with `Subscribe` and `Fetch` answered
/// here.
pub type ConsumeRoutes = ByHand<ConsumeServiceServer<Consume>>;

/// The consume service for `broker`.
pub(crate) fn routes(broker: Arc<Broker>, max_request_bytes: usize) -> ConsumeRoutes {
    let generated = ConsumeServiceServer::new(Consume::new(broker.clone()))
        .max_decoding_message_size(max_request_bytes);
    ByHand::new(generated, by_hand, broker, max_request_bytes)
}

/// The methods answered here.
fn by_hand(path: &str) -> Option<Method> {
    match path {
        SUBSCRIBE_PATH => Some(|broker, req, max| Box::pin(subscribe(broker, req, max)) as Answer),
        FETCH_PATH => Some(|broker, req, max| Box::pin(fetch(broker, req, max)) as Answer),
        _ => None,
    }
}

/// Serves one `Subscribe` call.
async fn subscribe(
    broker: Arc<Broker>,
    req: http::Request<Body>,
    max_request_bytes: usize,
) -> http::Response<Body> {
    let started = Instant::now();
    let caller = caller(req.extensions(), &broker.quotas);
    let (access, request, seen) =
        match read_authorized::<pb::SubscribeRequest>(req, max_request_bytes).await {
            Ok(r) => r,
            Err(status) => return status.into_http(),
        };
    let checked = request.clone();
    match broker
        .subscribe(request, caller, Delivery::Pieces, subscribe_done(started))
        .await
    {
        Ok(stream) => grpc_response(ResponseBody::response(
            Framed::new(),
            Some(SubscribeMessages {
                broker,
                items: Rechecked::new(stream, Recheck::new(access, checked, seen)),
                large: None,
            }),
        )),
        Err(e) => {
            rpc_done("Subscribe", e.grpc_code(), started);
            e.status().into_http()
        }
    }
}

/// Serves one `Fetch` call.
async fn fetch(
    broker: Arc<Broker>,
    req: http::Request<Body>,
    max_request_bytes: usize,
) -> http::Response<Body> {
    let started = Instant::now();
    let caller = caller(req.extensions(), &broker.quotas);
    let (_, request, _) = match read_authorized(req, max_request_bytes).await {
        Ok(r) => r,
        Err(status) => return status.into_http(),
    };
    let result = broker.fetch(request, &caller).await;
    match finish("Fetch", started, result) {
        Ok(response) => {
            let response = response.into_inner();
            grpc_response(ResponseBody::response(frame_fetch_response(response), None))
        }
        Err(status) => status.into_http(),
    }
}

/// The request's message, read and authorized ([`authorized`]).
/// With the caller's access, and the revision of the security state it was checked under
/// ([`Rechecked`]).
async fn read_authorized<M: Message + Default + Protected>(
    req: http::Request<Body>,
    max: usize,
) -> Result<(Access, M, u64), Status> {
    let (parts, body) = req.into_parts();
    let message: M = read_request(body, max).await?;
    let seen = access(&parts.extensions)
        .map_err(|e| e.status())?
        .revision();
    let request = Request::from_parts(MetadataMap::new(), parts.extensions, message);
    let (access, message) = authorized(request).map_err(|e| e.status())?;
    Ok((access, message, seen))
}

/// Reads the one request message of the call, as tonic's decoder would, except that a
/// message that is missing or does not decode is a malformed request (`INVALID_REQUEST`),
/// as for every other method (`status::inbound`).
async fn read_request<M: Message + Default>(mut body: Body, max: usize) -> Result<M, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max + PREFIX_LEN {
                return Err(RpcError::limit(format!(
                    "the request is larger than server.max_request_bytes ({max})"
                ))
                .status());
            }
            buf.extend_from_slice(&data);
        }
    }
    if buf.len() < PREFIX_LEN {
        return Err(RpcError::invalid("malformed request: no request message was sent").status());
    }
    if buf[0] != 0 {
        return Err(RpcError::new(
            ErrorCode::Unimplemented,
            "compressed request messages are not accepted",
        )
        .status());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(RpcError::limit(format!(
            "the request message is {len} bytes, more than server.max_request_bytes ({max})"
        ))
        .status());
    }
    if buf.len() != PREFIX_LEN + len {
        return Err(RpcError::invalid(
            "malformed request: expected exactly one request message of the length its prefix gives",
        )
        .status());
    }
    M::decode(&buf[PREFIX_LEN..]).map_err(|e| {
        RpcError::invalid(format!(
            "malformed request: failed to decode Protobuf message: {e}"
        ))
        .status()
    })
}

/// A response body: the framed messages, then the gRPC status as trailers.
type ResponseBody = FramedBody<SubscribeMessages>;

/// A `Subscribe` stream's items as framed messages (or the error that ends the call). A
/// [`Pushed::Large`] goes out as its framing, then the pieces of its batch, each read only
/// when HTTP/2 asks for more (hyper polls a body only when the stream's window has room), and
/// then the rest of its fields: a stream its client stopped reading holds a piece of such a
/// batch, not the batch.
struct SubscribeMessages {
    broker: Arc<Broker>,
    items: Rechecked<ReceiverStream<SubscribeItem>, pb::SubscribeRequest>,
    large: Option<LargeInFlight>,
}

/// A response of a large batch being sent.
struct LargeInFlight {
    response: LargeResponse,
    /// Bytes of the batch sent so far.
    sent: usize,
    /// The read of the next piece.
    reading: Option<Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>>>,
    /// The fields after the batch.
    tail: Bytes,
}

impl Stream for SubscribeMessages {
    type Item = Result<Framed, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(large) = &mut this.large {
            let reading = large.reading.get_or_insert_with(|| {
                Box::pin(this.broker.read_piece(&large.response, large.sent))
            });
            let piece = ready!(reading.as_mut().poll(cx));
            large.reading = None;
            let piece = match piece.and_then(|p| {
                if p.is_empty() {
                    Err(RpcError::internal("a stored batch ended before its length"))
                } else {
                    Ok(p)
                }
            }) {
                Ok(piece) => piece,
                Err(e) => {
                    // The message is cut short: the call ends with the error.
                    this.large = None;
                    return Poll::Ready(Some(Err(e.status())));
                }
            };
            large.sent += piece.len();
            let mut chunks = Framed::from([piece]);
            if large.sent >= large.response.len() {
                chunks.push_back(std::mem::take(&mut large.tail));
                this.large = None;
            }
            return Poll::Ready(Some(Ok(chunks)));
        }
        Poll::Ready(match ready!(Pin::new(&mut this.items).poll_next(cx)) {
            None => None,
            Some(Err(e)) => Some(Err(e.status())),
            Some(Ok(Pushed::Response(r))) => Some(Ok(frame_subscribe_response(r))),
            Some(Ok(Pushed::Large(response))) => {
                let (head, tail) = frame_large_response(&response.response, response.len());
                this.large = Some(LargeInFlight {
                    response,
                    sent: 0,
                    reading: None,
                    tail,
                });
                Some(Ok(head))
            }
        })
    }
}

/// Frames a `SubscribeResponse` of `response`'s fields and one batch of `len` bytes: the
/// message prefix and the batch's key and length (the chunks to send first), and fields 2-7
/// (to send after the batch).
fn frame_large_response(response: &pb::SubscribeResponse, len: usize) -> (Framed, Bytes) {
    let mut framer = Framer::new(response.encoded_len() + field_len(1, len));
    framer.bytes_header(1, len);
    (framer.finish(), fields(response))
}

/// Frames a `SubscribeResponse`: its batches (field 1), then fields 2-7, in the order prost
/// writes them.
fn frame_subscribe_response(r: pb::SubscribeResponse) -> Framed {
    let mut framer = Framer::new(r.encoded_len());
    framer.bytes(1, &r.batches);
    framer.message(&pb::SubscribeResponse {
        batches: Vec::new(),
        ..r
    });
    framer.finish()
}

/// Frames a `FetchResponse`: per result, fields 1-3, the batches (4), then 5-8, in the order
/// prost writes them.
fn frame_fetch_response(r: pb::FetchResponse) -> Framed {
    let mut framer = Framer::new(r.encoded_len());
    for result in r.results {
        framer.nested(1, result.encoded_len());
        framer.message(&pb::FetchPartitionResult {
            topic: result.topic,
            partition: result.partition,
            error: result.error,
            ..Default::default()
        });
        framer.bytes(4, &result.batches);
        framer.message(&pb::FetchPartitionResult {
            next_offset: result.next_offset,
            log_start_offset: result.log_start_offset,
            log_end_offset: result.log_end_offset,
            records: result.records,
            ..Default::default()
        });
    }
    framer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use runnel_proto::framing::INLINE_MAX;
    use std::collections::VecDeque;
    use tonic::Code;

    fn record(offset: u64) -> pb::Record {
        pb::Record {
            offset,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![pb::RecordHeader {
                key: "h".into(),
                value: None,
            }],
        }
    }

    fn chunks(response: &pb::SubscribeResponse) -> VecDeque<Bytes> {
        frame_subscribe_response(response.clone())
    }

    fn wire(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn tonic_wire(response: &impl Message) -> Vec<u8> {
        let body = response.encode_to_vec();
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn the_bytes_are_what_tonic_would_send_and_large_batches_are_not_copied() {
        let small = Bytes::from(vec![7u8; 100]);
        let large = Bytes::from(vec![9u8; INLINE_MAX + 300]);
        let cases = [
            pb::SubscribeResponse::default(),
            pb::SubscribeResponse {
                next_offset: 42,
                log_start_offset: 3,
                log_end_offset: 1 << 40,
                topic: "orders".into(),
                partition: 7,
                ..Default::default()
            },
            pb::SubscribeResponse {
                batches: vec![small.clone(), large.clone(), small.clone(), large.clone()],
                next_offset: 300,
                log_start_offset: 0,
                log_end_offset: 301,
                topic: "orders".into(),
                ..Default::default()
            },
            pb::SubscribeResponse {
                records: vec![record(5), record(6)],
                next_offset: 7,
                log_end_offset: 9,
                topic: "orders".into(),
                partition: 1,
                ..Default::default()
            },
        ];
        for response in &cases {
            assert_eq!(
                wire(&chunks(response)),
                tonic_wire(response),
                "{response:?}"
            );
        }
        // A response of one batch sent in pieces: the framing, the batch, the other fields.
        for response in &cases[..2] {
            let batch = Bytes::from(vec![5u8; 300_000]);
            let (head, tail) = frame_large_response(response, batch.len());
            let mut pieces = head;
            pieces.extend([batch.slice(..100_000), batch.slice(100_000..), tail]);
            let whole = pb::SubscribeResponse {
                batches: vec![batch],
                ..response.clone()
            };
            assert_eq!(wire(&pieces), tonic_wire(&whole), "{response:?}");
        }
        let out = chunks(&cases[2]);
        let shared: Vec<_> = out
            .iter()
            .filter(|c| c.as_ptr() == large.as_ptr())
            .collect();
        assert_eq!(
            shared.len(),
            2,
            "each large batch is sent from the read buffer"
        );
        assert!(out.iter().all(|c| c.as_ptr() != small.as_ptr()));
    }

    #[test]
    fn the_intercepted_paths_are_the_generated_service_s() {
        let name = <ConsumeServiceServer<Consume> as tonic::server::NamedService>::NAME;
        assert_eq!(SUBSCRIBE_PATH, format!("/{name}/Subscribe"));
        assert_eq!(FETCH_PATH, format!("/{name}/Fetch"));
    }

    #[test]
    fn fetch_responses_are_what_tonic_would_send() {
        let large = Bytes::from(vec![5u8; INLINE_MAX]);
        let response = pb::FetchResponse {
            results: vec![
                pb::FetchPartitionResult {
                    topic: "orders".into(),
                    partition: 2,
                    error: None,
                    batches: vec![Bytes::from_static(b"tiny"), large.clone()],
                    next_offset: 10,
                    log_start_offset: 1,
                    log_end_offset: 12,
                    records: Vec::new(),
                },
                pb::FetchPartitionResult {
                    topic: "orders".into(),
                    partition: 3,
                    records: vec![record(1), record(2)],
                    next_offset: 3,
                    log_end_offset: 3,
                    ..Default::default()
                },
                pb::FetchPartitionResult {
                    topic: "gone".into(),
                    partition: 0,
                    error: Some(pb::Error {
                        code: 3,
                        message: "no such topic".into(),
                    }),
                    ..Default::default()
                },
                pb::FetchPartitionResult::default(),
            ],
        };
        let out = frame_fetch_response(response.clone());
        assert_eq!(wire(&out), tonic_wire(&response));
        assert!(out.iter().any(|c| c.as_ptr() == large.as_ptr()));
    }

    fn framed(flag: u8, message: &[u8], declared: Option<u32>) -> Body {
        let mut v = vec![flag];
        let len = declared.unwrap_or(message.len() as u32);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(message);
        // A `String` body is the simplest whole body at hand; the bytes need not be UTF-8 for
        // the reader, but `String` demands it, so these tests use ASCII messages only.
        Body::new(String::from_utf8(v).expect("ascii"))
    }

    #[tokio::test]
    async fn the_request_is_read_and_checked() {
        let request = pb::SubscribeRequest {
            topic: "t".into(),
            partition: 3,
            start: None,
            max_bytes: 100,
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert!(bytes.is_ascii());
        let read = read_request::<pb::SubscribeRequest>(framed(0, &bytes, None), 1024)
            .await
            .expect("read");
        assert_eq!(read, request);

        let e = read_request::<pb::SubscribeRequest>(framed(1, &bytes, None), 1024)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
        assert_eq!(
            e.metadata()
                .get(runnel_proto::ERROR_CODE_METADATA_KEY)
                .map(|v| v.as_bytes()),
            Some(&b"6"[..])
        );
        let e = read_request::<pb::SubscribeRequest>(framed(0, &bytes, None), 4)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("server.max_request_bytes (4)"),
            "{e:?}"
        );
        // A wrong length, no message, a message that does not decode: malformed requests.
        let truncated = framed(0, b"\x0a\x05ab", None);
        for body in [
            framed(0, &bytes, Some(3)),
            Body::new(String::from("ab")),
            truncated,
        ] {
            let e = read_request::<pb::SubscribeRequest>(body, 1024)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.metadata()
                    .get(runnel_proto::ERROR_CODE_METADATA_KEY)
                    .is_some()
            );
        }
    }
}
