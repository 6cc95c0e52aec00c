//! gRPC messages written as a list of [`Bytes`] chunks, so that large `bytes` fields (record
//! batches) reach HTTP/2 as the buffers they already are instead of being copied into one
//! encode buffer, as tonic's encoder does with every message.
//!
//! The framing (the gRPC message prefix, every other field, each large field's key and
//! length) goes into a small buffer; `bytes` values below [`INLINE_MAX`] are copied into it
//! (a chunk per tiny value would cost more than the copy). The caller writes the fields in
//! the order prost would, so the bytes on the wire are exactly those tonic would send; h2
//! writes the chunks with vectored I/O.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
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

/// The encoded length of a nested message field of `len` bytes, key and length included.
pub fn nested_len(field: u32, len: usize) -> usize {
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
        assert_eq!(nested_len(4, inner.encoded_len()), m.encoded_len() - 2);
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
