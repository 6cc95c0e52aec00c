//! The `ProduceStream` call with requests written by [`runnel_proto::framing`] instead of
//! tonic's encoder: each batch goes to HTTP/2 as the buffer the producer built it in, where
//! tonic would first copy every batch into one encode buffer per request. The bytes on the
//! wire are exactly what tonic would send.

use crate::connection::Transport;
use prost::Message as _;
pub(super) use runnel_proto::framing::Framed;
use runnel_proto::framing::{FramedBody, Framer, Unframed};
use runnel_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::body::Body;

use crate::connection::framed_call;

/// The HTTP/2 path of `runnel.v1.ProduceService/ProduceStream`.
const PATH: &str = "/runnel.v1.ProduceService/ProduceStream";

/// The answers of a produce stream.
pub(super) type Answers = Unframed<Body, pb::ProduceResponse>;

/// Opens a `ProduceStream` on `channel`, whose requests are sent through the returned sender
/// (at most `capacity` waiting) and whose answers, of at most `max_message_bytes`, come on
/// the returned stream.
pub(super) async fn open(
    channel: &mut Transport,
    capacity: usize,
    max_message_bytes: usize,
) -> Result<(mpsc::Sender<Framed>, Answers), Status> {
    let (tx, rx) = mpsc::channel(capacity);
    // The body ends when the sender is dropped, which half-closes the stream.
    let body = Body::new(FramedBody::request(
        ReceiverStream::new(rx).map(Ok::<_, Status>),
    ));
    let answers = framed_call(channel, PATH, body, max_message_bytes).await?;
    Ok((tx, answers))
}

/// Frames `request`: per partition, fields 1-2, the batches (3), then 4-5, in the order
/// prost writes them, each batch a chunk of its own.
pub(super) fn frame(request: &pb::ProduceRequest) -> Framed {
    let mut framer = Framer::new(request.encoded_len());
    framer.message(&pb::ProduceRequest {
        request_id: request.request_id,
        topic: request.topic.clone(),
        acks: request.acks,
        partitions: Vec::new(),
    });
    for p in &request.partitions {
        framer.nested(4, p.encoded_len());
        framer.message(&pb::ProducePartition {
            partition: p.partition,
            partition_key: p.partition_key.clone(),
            ..Default::default()
        });
        framer.bytes(3, &p.batches);
        framer.message(&pb::ProducePartition {
            records: p.records.clone(),
            producer: p.producer,
            ..Default::default()
        });
    }
    framer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_request_frames_as_tonic_encodes_it_without_copying_its_batches() {
        let large = Bytes::from(vec![3u8; 64 << 10]);
        let request = pb::ProduceRequest {
            request_id: 9,
            topic: "orders".into(),
            acks: pb::Acks::Durable as i32,
            partitions: vec![
                pb::ProducePartition {
                    partition: Some(2),
                    batches: vec![large.clone()],
                    producer: Some(pb::ProducerSequence {
                        producer_id: 5,
                        producer_epoch: 1,
                        base_sequence: 7,
                    }),
                    ..Default::default()
                },
                pb::ProducePartition {
                    partition_key: Some(Bytes::from_static(b"k")),
                    batches: vec![Bytes::from_static(b"small")],
                    ..Default::default()
                },
            ],
        };
        let chunks = frame(&request);
        let wire: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let body = request.encode_to_vec();
        assert_eq!(
            &wire[..5],
            &[&[0u8][..], &(body.len() as u32).to_be_bytes()].concat()
        );
        assert_eq!(&wire[5..], &body[..]);
        assert!(
            chunks.iter().any(|c| c.as_ptr() == large.as_ptr()),
            "the batch is not copied"
        );
    }
}
