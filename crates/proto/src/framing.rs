//! gRPC messages written as a list of [`Bytes`] chunks, so that large `bytes` fields (record
//! batches) reach HTTP/2 as the buffers they already are instead of being copied into one
//! encode buffer, as tonic's encoder does with every message; and read back from the HTTP/2
//! data frames they arrived in ([`Unframed`]), where tonic's decoder copies every frame into
//! one buffer first.
//!
//! The framing (the gRPC message prefix, every other field, each large field's key and
//! length) goes into a small buffer; `bytes` values below [`INLINE_MAX`] are copied into it
//! (a chunk per tiny value would cost more than the copy). The caller writes the fields in
//! the order prost would, so the bytes on the wire are exactly those tonic would send; h2
//! writes the chunks with vectored I/O.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::{Code, Status};

/// The gRPC message prefix: a compression flag and a big-endian length.
pub const PREFIX_LEN: usize = 5;

/// `bytes` values shorter than this are copied into the framing rather than sent as a chunk
/// of their own.
pub const INLINE_MAX: usize = 4096;

/// Writes one gRPC message as chunks: the framing and small values in shared buffers, larger
/// values as they are.
#[derive(Debug)]
pub struct Framer {
    head: BytesMut,
    out: VecDeque<Bytes>,
}

impl Framer {
    /// Starts a message of `len` encoded bytes with its gRPC prefix (uncompressed).
    pub fn new(len: usize) -> Self {
        let mut head = BytesMut::with_capacity(128);
        head.put_u8(0);
        // Messages are bounded by the request and response byte limits, far below 4 GiB.
        head.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        Framer {
            head,
            out: VecDeque::new(),
        }
    }

    /// The fields of `m`, which holds no large `bytes` values, encoded as prost does.
    pub fn message(&mut self, m: &impl Message) {
        m.encode_raw(&mut self.head);
    }

    /// The key and length of a nested message field of `len` encoded bytes; its fields
    /// follow.
    pub fn nested(&mut self, field: u32, len: usize) {
        encode_key(field, WireType::LengthDelimited, &mut self.head);
        encode_varint(len as u64, &mut self.head);
    }

    /// A `repeated bytes` (or `bytes`) field.
    pub fn bytes(&mut self, field: u32, values: &[Bytes]) {
        for value in values {
            encode_key(field, WireType::LengthDelimited, &mut self.head);
            encode_varint(value.len() as u64, &mut self.head);
            if value.len() < INLINE_MAX {
                self.head.extend_from_slice(value);
            } else {
                self.out.push_back(self.head.split().freeze());
                self.out.push_back(value.clone());
            }
        }
    }

    /// The key and length of a `bytes` field of `len` bytes whose value the caller sends
    /// itself, after these chunks and before the [`fields`] of the rest of the message.
    pub fn bytes_header(&mut self, field: u32, len: usize) {
        encode_key(field, WireType::LengthDelimited, &mut self.head);
        encode_varint(len as u64, &mut self.head);
    }

    /// The chunks of the message, in order.
    pub fn finish(mut self) -> Framed {
        if !self.head.is_empty() {
            self.out.push_back(self.head.freeze());
        }
        self.out
    }
}

/// The chunks of one framed message.
pub type Framed = VecDeque<Bytes>;

/// The fields of `m` as prost encodes them, without a message prefix: the rest of a message
/// begun with [`Framer::bytes_header`] and that field's value.
pub fn fields(m: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(m.encoded_len());
    m.encode_raw(&mut buf);
    buf.freeze()
}

/// `m`, which holds no large `bytes` values, framed as one message.
pub fn framed(m: &impl Message) -> Framed {
    let mut framer = Framer::new(m.encoded_len());
    framer.message(m);
    framer.finish()
}

/// An HTTP/2 body of framed gRPC messages: the chunks of each message `messages` yields, in
/// order. A request body ends when `messages` does (half-closing the stream); a response body
/// then sends the call's status as trailers: `OK`, or the error `messages` ended with.
#[derive(Debug)]
pub struct FramedBody<S> {
    chunks: Framed,
    messages: Option<S>,
    /// A response: end with the status as trailers.
    trailers: bool,
    done: bool,
}

impl<S> FramedBody<S> {
    /// A request body: the messages of a client's stream.
    pub fn request(messages: S) -> Self {
        FramedBody {
            chunks: Framed::new(),
            messages: Some(messages),
            trailers: false,
            done: false,
        }
    }

    /// A response body: `first` (a message already framed, or nothing), then the messages
    /// of `messages` if any, then the status.
    pub fn response(first: Framed, messages: Option<S>) -> Self {
        FramedBody {
            chunks: first,
            messages,
            trailers: true,
            done: false,
        }
    }
}

impl<S> http_body::Body for FramedBody<S>
where
    S: Stream<Item = Result<Framed, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let next = match &mut this.messages {
                Some(messages) => ready!(Pin::new(messages).poll_next(cx)),
                None => None,
            };
            let status = match next {
                Some(Ok(framed)) => {
                    this.chunks = framed;
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::new(Code::Ok, ""),
            };
            this.done = true;
            if !this.trailers {
                return Poll::Ready(None);
            }
            let mut trailers = tonic::codegen::http::HeaderMap::new();
            if let Err(e) = status.add_header(&mut trailers) {
                e.add_header(&mut trailers).ok();
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}

/// The gRPC messages of type `T` in an HTTP/2 body, decoded from the data frames as they
/// arrived: a `bytes` field that lies within one frame (the framing above sends each large
/// value as a chunk of its own) is a slice of that frame, not a copy. Errors are tonic's
/// `Streaming`'s, with its statuses and messages. A response stream ends after an `OK` status
/// in the trailers and yields the status of any other as its last item; a request stream
/// ends with the body.
#[derive(Debug)]
pub struct Unframed<B, T> {
    body: B,
    received: Received,
    max_message_bytes: usize,
    /// The body of a request (it ends without trailers), not of a response.
    request: bool,
    done: bool,
    message: PhantomData<fn() -> T>,
}

impl<B, T> Unframed<B, T> {
    /// Reads the body of a response, refusing messages over `max_message_bytes`.
    pub fn new(body: B, max_message_bytes: usize) -> Self {
        Unframed {
            body,
            received: Received::default(),
            max_message_bytes,
            request: false,
            done: false,
            message: PhantomData,
        }
    }

    /// Reads the body of a request (a client's stream), refusing messages over
    /// `max_message_bytes`.
    pub fn request(body: B, max_message_bytes: usize) -> Self {
        Unframed {
            request: true,
            ..Self::new(body, max_message_bytes)
        }
    }

    /// The last item of a request stream, whose body ended: an error if it ended inside a
    /// message.
    fn request_end(&self) -> Option<Result<T, Status>> {
        (self.received.remaining() > 0)
            .then(|| Err(Status::internal("Unexpected EOF decoding stream.")))
    }

    /// The next whole message in what was received, if there is one.
    fn next_message(&mut self) -> Result<Option<T>, Status>
    where
        T: Message + Default,
    {
        let mut prefix = [0u8; PREFIX_LEN];
        if !self.received.peek(&mut prefix) {
            return Ok(None);
        }
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ));
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1)"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message_bytes
            )));
        }
        if self.received.remaining() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.received.advance(PREFIX_LEN);
        let after = self.received.remaining() - len;
        let message =
            T::decode((&mut self.received).take(len)).map_err(|e| Status::internal(e.to_string()));
        // A message that failed to decode leaves nothing of itself behind.
        let unread = self.received.remaining() - after;
        self.received.advance(unread);
        message.map(Some)
    }
}

impl<B, T> Stream for Unframed<B, T>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    T: Message + Default,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    this.done = true;
                    let status = Status::from_error(e.into());
                    // A client that cancels its call ends its stream.
                    if this.request && status.code() == Code::Cancelled {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None if this.request => {
                    this.done = true;
                    return Poll::Ready(this.request_end());
                }
                None => {
                    // gRPC ends every call with a status in the trailers; tonic calls its
                    // absence UNKNOWN.
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::unknown(
                        "the response ended without a grpc-status",
                    ))));
                }
            };
            let trailers = match frame.into_data() {
                Ok(data) => {
                    this.received.push(data);
                    continue;
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => trailers,
                    Err(_) => continue,
                },
            };
            this.done = true;
            if this.request {
                return Poll::Ready(this.request_end());
            }
            let status = Status::from_header_map(&trailers)
                .unwrap_or_else(|| Status::unknown("the trailers carry no grpc-status"));
            if status.code() != Code::Ok {
                return Poll::Ready(Some(Err(status)));
            }
            if this.received.remaining() > 0 {
                return Poll::Ready(Some(Err(Status::internal(format!(
                    "protocol error: the response ended inside a message ({} bytes left)",
                    this.received.remaining()
                )))));
            }
            return Poll::Ready(None);
        }
    }
}

/// Bytes received and not decoded yet, as the data frames they came in.
#[derive(Debug, Default)]
struct Received {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Received {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Copies the first `out.len()` bytes into `out` without consuming them; false if fewer
    /// have arrived.
    fn peek(&self, out: &mut [u8]) -> bool {
        if self.len < out.len() {
            return false;
        }
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                break;
            }
        }
        true
    }
}

impl Buf for Received {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c.as_ref())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.len -= n;
                return;
            }
            n -= front.len();
            self.len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// A slice of the first frame when it holds all `len` bytes; a copy only of a value that
    /// HTTP/2 split across frames.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= len
        {
            let out = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= len;
            return out;
        }
        let mut out = BytesMut::with_capacity(len);
        out.put(self.take(len));
        out.freeze()
    }
}

/// The encoded length of a length-delimited field (a nested message, `bytes`) of `len`
/// bytes, key and length included.
pub fn field_len(field: u32, len: usize) -> usize {
    key_len(field) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn wire(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn tonic_wire(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A response body of the given frames, each ready at once.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    fn trailers(status: Status) -> Frame<Bytes> {
        let mut map = tonic::codegen::http::HeaderMap::new();
        status.add_header(&mut map).unwrap();
        Frame::trailers(map)
    }

    /// Everything the stream yields over `frames`.
    fn unframe(
        frames: impl IntoIterator<Item = Frame<Bytes>>,
        max: usize,
    ) -> Vec<Result<pb::SubscribeResponse, Status>> {
        drain(Unframed::new(Frames(frames.into_iter().collect()), max))
    }

    fn drain<T: Message + Default>(mut s: Unframed<Frames, T>) -> Vec<Result<T, Status>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(item)) = Pin::new(&mut s).poll_next(&mut cx) {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_request_stream_ends_with_its_body_and_fails_as_tonic_does() {
        let request = pb::ProduceRequest {
            request_id: 7,
            ..Default::default()
        };
        let unframe = |frames: Vec<Frame<Bytes>>, max| {
            drain(Unframed::<_, pb::ProduceRequest>::request(
                Frames(frames.into_iter().collect()),
                max,
            ))
        };
        let message = || framed(&request).into_iter().map(Frame::data);
        // Two messages, then the end of the body: two requests and the end of the stream.
        let got = unframe(message().chain(message()).collect(), 64);
        assert_eq!(got.len(), 2);
        assert!(
            got.iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.request_id == 7))
        );
        // The body ends inside a message: tonic's INTERNAL.
        let got = unframe(
            vec![Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))],
            64,
        );
        let e = got[0].as_ref().unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Internal, "Unexpected EOF decoding stream.")
        );
        // Not protobuf: prost's message, which the broker maps to a malformed request.
        let got = unframe(
            vec![Frame::data(Bytes::from_static(&[
                0, 0, 0, 0, 2, 0xff, 0xff,
            ]))],
            64,
        );
        let e = got[0].as_ref().unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(
            e.message().starts_with("failed to decode Protobuf message"),
            "{e}"
        );
        // A compressed message: tonic's INTERNAL.
        let got = unframe(vec![Frame::data(Bytes::from_static(&[1, 0, 0, 0, 0]))], 64);
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .message()
                .contains("compressed-flag")
        );
    }

    fn response(batches: Vec<Bytes>, next: u64) -> (pb::SubscribeResponse, Framed) {
        let m = pb::SubscribeResponse {
            batches,
            next_offset: next,
            ..Default::default()
        };
        let mut f = Framer::new(m.encoded_len());
        f.bytes(1, &m.batches);
        f.message(&pb::SubscribeResponse {
            next_offset: next,
            ..Default::default()
        });
        (m, f.finish())
    }

    #[test]
    fn values_that_arrive_in_one_frame_are_decoded_without_a_copy() {
        let large = Bytes::from(vec![7u8; 3 * INLINE_MAX]);
        let (first, chunks1) = response(vec![large.clone(), Bytes::from_static(b"s")], 10);
        let (second, chunks2) = response(vec![], 11);
        let frames = chunks1
            .into_iter()
            .chain(chunks2)
            .map(Frame::data)
            .chain([trailers(Status::new(Code::Ok, ""))]);
        let got = unframe(frames, 1 << 20);
        assert_eq!(got.len(), 2);
        let got1 = got[0].as_ref().unwrap();
        assert_eq!(got1, &first);
        assert_eq!(got1.batches[0].as_ptr(), large.as_ptr(), "not copied");
        assert_eq!(got[1].as_ref().unwrap(), &second);
    }

    #[test]
    fn messages_split_anywhere_across_frames_decode_the_same() {
        let (m1, c1) = response(vec![Bytes::from(vec![1u8; INLINE_MAX + 5])], 3);
        let (m2, c2) = response(vec![Bytes::from_static(b"abc")], 4);
        let wire: Vec<u8> = c1
            .iter()
            .chain(c2.iter())
            .flat_map(|c| c.to_vec())
            .collect();
        for cut in [0, 1, 4, 5, 6, 100, wire.len() / 2, wire.len() - 1] {
            for step in [1, 7, 4096] {
                let mut frames: Vec<Frame<Bytes>> = Vec::new();
                frames.push(Frame::data(Bytes::copy_from_slice(&wire[..cut])));
                for piece in wire[cut..].chunks(step) {
                    frames.push(Frame::data(Bytes::copy_from_slice(piece)));
                }
                frames.push(trailers(Status::new(Code::Ok, "")));
                let got: Vec<_> = unframe(frames, 1 << 20)
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(got, vec![m1.clone(), m2.clone()], "cut {cut}, step {step}");
            }
        }
    }

    #[test]
    fn the_call_status_limits_and_broken_bodies_end_the_stream_with_an_error() {
        // An error status ends the stream, its metadata kept.
        let (_, chunks) = response(vec![], 1);
        let mut error = Status::not_found("no such topic");
        error
            .metadata_mut()
            .insert("runnel-error-code", "TOPIC_NOT_FOUND".parse().unwrap());
        let got = unframe(
            chunks.into_iter().map(Frame::data).chain([trailers(error)]),
            64,
        );
        assert!(got[0].is_ok());
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "no such topic");
        assert_eq!(
            e.metadata().get("runnel-error-code").unwrap(),
            "TOPIC_NOT_FOUND"
        );
        // Over the limit: OUT_OF_RANGE naming both sizes.
        let (_, chunks) = response(vec![Bytes::from(vec![0u8; 100])], 1);
        let got = unframe(chunks.into_iter().map(Frame::data), 50);
        let e = got[0].as_ref().unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        assert_eq!(
            e.message(),
            "Error, decoded message length too large: found 104 bytes, the limit is: 50 bytes",
            "tonic's message"
        );
        // A compression flag: INTERNAL.
        let got = unframe([Frame::data(Bytes::from_static(&[1, 0, 0, 0, 0]))], 50);
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Internal);
        // Cut inside a message, then OK; or no status at all.
        let got = unframe(
            [
                Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9, 1])),
                trailers(Status::new(Code::Ok, "")),
            ],
            50,
        );
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Internal);
        let got = unframe([Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))], 50);
        assert!(got[0].is_ok(), "an empty message");
        assert_eq!(got[1].as_ref().unwrap_err().code(), Code::Unknown);
        // Bytes that are no message: INTERNAL, and the stream ends.
        let got = unframe(
            [Frame::data(Bytes::from_static(&[
                0, 0, 0, 0, 2, 0xff, 0xff,
            ]))],
            50,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn large_values_are_chunks_of_their_own_and_small_ones_are_copied() {
        let large = Bytes::from(vec![9u8; INLINE_MAX]);
        let small = Bytes::from_static(b"tiny");
        let m = pb::ProducePartition {
            partition: Some(3),
            batches: vec![small.clone(), large.clone()],
            ..Default::default()
        };
        let mut f = Framer::new(m.encoded_len());
        f.message(&pb::ProducePartition {
            partition: Some(3),
            ..Default::default()
        });
        f.bytes(3, &m.batches);
        let chunks = f.finish();
        assert_eq!(wire(&chunks), tonic_wire(&m));
        assert_eq!(chunks.len(), 2, "the framing, then the large value");
        assert_eq!(chunks[1].as_ptr(), large.as_ptr(), "not copied");
    }

    #[test]
    fn nested_fields_frame_as_prost_encodes_them() {
        let inner = pb::ProducePartition {
            partition: Some(1),
            ..Default::default()
        };
        let m = pb::ProduceRequest {
            request_id: 7,
            partitions: vec![inner.clone()],
            ..Default::default()
        };
        assert_eq!(field_len(4, inner.encoded_len()), m.encoded_len() - 2);
        let mut f = Framer::new(m.encoded_len());
        f.message(&pb::ProduceRequest {
            request_id: 7,
            ..Default::default()
        });
        f.nested(4, inner.encoded_len());
        f.message(&inner);
        assert_eq!(wire(&f.finish()), tonic_wire(&m));
    }
}
