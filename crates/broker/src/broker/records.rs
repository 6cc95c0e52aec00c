//! Records as protobuf messages, for clients without the batch codec: a record-level produce
//! entry becomes one uncompressed batch ([`encode`]), and stored batches become records for a
//! record-level read ([`decode`]). Everything after `encode` and before `decode` is the batch
//! path itself, so limits, idempotence and errors are the same.
//!
//! Keys, values and header values of decoded records are slices of the read buffer (and of the
//! decompressed section for a compressed batch), not copies.

use bytes::Bytes;
use runnel_proto::pb::{self, ErrorCode};
use runnel_storage::batch::compression::{self, CodecError};
use runnel_storage::batch::{BatchBuilder, Batches};

use crate::error::RpcError;

/// Encodes a record-level entry's records, in order, as one uncompressed batch with the
/// entry's producer fields. A record's `timestamp_ms` of 0 becomes `now_ms`.
///
/// # Errors
/// `INVALID_REQUEST` if the producer fields are out of range (the field named relative to the
/// entry).
pub(crate) fn encode(
    records: &[pb::Record],
    producer: Option<&pb::ProducerSequence>,
    now_ms: i64,
) -> Result<Bytes, RpcError> {
    let mut builder = BatchBuilder::new();
    if let Some(p) = producer {
        let epoch = i16::try_from(p.producer_epoch)
            .ok()
            .filter(|e| *e >= 0)
            .ok_or_else(|| {
                RpcError::invalid(format!(
                    "producer.producer_epoch {} is outside [0, 32767]",
                    p.producer_epoch
                ))
            })?;
        if p.producer_id < 0 {
            return Err(RpcError::invalid(format!(
                "producer.producer_id {} is negative; use the id InitProducer returned",
                p.producer_id
            )));
        }
        if p.base_sequence < 0 {
            return Err(RpcError::invalid(format!(
                "producer.base_sequence {} is negative; sequences run from 0 to 2^31-1",
                p.base_sequence
            )));
        }
        builder.producer(p.producer_id, epoch, p.base_sequence);
    }
    // One vector of header references, reused for every record.
    let mut headers: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    for r in records {
        headers.clear();
        headers.extend(
            r.headers
                .iter()
                .map(|h| (h.key.as_bytes(), h.value.as_deref())),
        );
        let timestamp = if r.timestamp_ms == 0 {
            now_ms
        } else {
            r.timestamp_ms
        };
        builder.push(r.key.as_deref(), r.value.as_deref(), &headers, timestamp);
    }
    Ok(builder.build())
}

/// Decodes stored batches (as a read returns them) into records at or after `from`,
/// decompressing compressed batches, none to more than `limit` bytes.
///
/// # Errors
/// `CORRUPT_LOG` if a batch or record does not decode, `LIMIT_EXCEEDED` if a batch
/// decompresses to more than `limit` bytes.
pub(crate) fn decode(
    batches: &[Bytes],
    from: u64,
    limit: usize,
    at: (&str, u32),
) -> Result<Vec<pb::Record>, RpcError> {
    let mut out = Vec::new();
    each_record(batches, from, limit, at, |r| {
        out.push(pb::Record {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|h| pb::RecordHeader {
                    key: String::from_utf8_lossy(&h.name).into_owned(),
                    value: h.value,
                })
                .collect(),
        });
    })?;
    Ok(out)
}

/// Calls `each` with every record at or after `from` of stored batches, decompressing
/// compressed batches, none to more than `limit` bytes.
///
/// # Errors
/// As [`decode`].
pub(crate) fn each_record(
    batches: &[Bytes],
    from: u64,
    limit: usize,
    at: (&str, u32),
    mut each: impl FnMut(runnel_storage::batch::Record),
) -> Result<(), RpcError> {
    let (topic, partition) = at;
    let corrupt = |offset: u64, reason: &dyn std::fmt::Display| {
        RpcError::new(
            ErrorCode::CorruptLog,
            format!("{topic}/{partition}: the batch at offset {offset} does not decode: {reason}"),
        )
    };
    for bytes in batches {
        for batch in Batches::new(bytes.clone()) {
            let batch = batch.map_err(|e| corrupt(from, &e))?;
            let header = batch.header();
            if header.next_offset() <= from {
                continue;
            }
            let records = compression::records(&batch, limit).map_err(|e| match e {
                CodecError::TooLarge { .. } => RpcError::limit(format!(
                    "{topic}/{partition}: the batch at offset {} decompresses to more than max_request_bytes ({limit}); read it with RECORD_FORMAT_BATCHES",
                    header.base_offset
                )),
                e => corrupt(header.base_offset, &e),
            })?;
            for record in records {
                let r = record.map_err(|e| corrupt(header.base_offset, &e))?;
                if r.offset >= from {
                    each(r);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_storage::batch::{BatchHeader, Compression, RecordBatch};

    fn record(key: Option<&str>, value: Option<&str>, ts: i64) -> pb::Record {
        pb::Record {
            offset: 0,
            timestamp_ms: ts,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![pb::RecordHeader {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"t-1")),
            }],
        }
    }

    /// Stamps a built batch with a base offset, as an append does.
    fn stored(batch: Bytes, base_offset: u64) -> Bytes {
        let mut b = batch.to_vec();
        b[..8].copy_from_slice(&base_offset.to_le_bytes());
        Bytes::from(b)
    }

    #[test]
    fn records_round_trip_through_a_batch_with_nulls_headers_and_timestamps() {
        let records = vec![
            record(Some("k1"), Some("v1"), 1_000),
            record(None, Some(""), 0),
            record(Some(""), None, 999),
        ];
        let batch = encode(&records, None, 5_000).unwrap();
        let header = BatchHeader::decode(&batch).unwrap();
        assert_eq!(header.record_count, 3);
        assert_eq!(header.producer_id, -1);
        let back = decode(&[stored(batch, 40)], 41, 1 << 20, ("t", 0)).unwrap();
        assert_eq!(back.len(), 2, "records before `from` are left out");
        assert_eq!((back[0].offset, back[0].timestamp_ms), (41, 5_000));
        assert_eq!(back[0].key, None);
        assert_eq!(back[0].value.as_deref(), Some(&b""[..]));
        assert_eq!((back[1].offset, back[1].timestamp_ms), (42, 999));
        assert_eq!(back[1].key.as_deref(), Some(&b""[..]));
        assert_eq!(back[1].value, None);
        assert_eq!(back[1].headers, records[2].headers);
    }

    #[test]
    fn producer_fields_go_into_the_header_and_are_checked() {
        let seq = pb::ProducerSequence {
            producer_id: 7,
            producer_epoch: 3,
            base_sequence: 11,
        };
        let batch = encode(&[record(None, Some("v"), 1)], Some(&seq), 0).unwrap();
        let h = BatchHeader::decode(&batch).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 3, 11)
        );
        for (bad, field) in [
            (
                pb::ProducerSequence {
                    producer_epoch: 40_000,
                    ..seq
                },
                "producer.producer_epoch",
            ),
            (
                pb::ProducerSequence {
                    producer_id: -1,
                    ..seq
                },
                "producer.producer_id",
            ),
            (
                pb::ProducerSequence {
                    base_sequence: -2,
                    ..seq
                },
                "producer.base_sequence",
            ),
        ] {
            let e = encode(&[record(None, None, 1)], Some(&bad), 0).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.starts_with(field), "{}", e.message);
        }
    }

    #[test]
    fn compressed_batches_decode_and_a_bomb_is_a_limit() {
        let mut b = BatchBuilder::new();
        for i in 0..100 {
            b.push(None, Some(&[b'x'; 1000][..]), &[], 1_000 + i);
        }
        let section = compression::compress(Compression::Zstd, b.records_section(), 3).unwrap();
        let batch = b.build_with(Compression::Zstd, &section);
        RecordBatch::new(batch.clone(), 1 << 20).unwrap();
        let records = decode(std::slice::from_ref(&batch), 0, 1 << 20, ("t", 0)).unwrap();
        assert_eq!(records.len(), 100);
        assert_eq!(records[99].offset, 99);
        let e = decode(&[batch], 0, 10_000, ("t", 0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
    }

    #[test]
    fn a_damaged_batch_is_corrupt_log() {
        let batch = encode(&[record(Some("k"), Some("v"), 1)], None, 0).unwrap();
        let mut bad = batch.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = decode(&[Bytes::from(bad)], 0, 1 << 20, ("t", 3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::CorruptLog);
        assert!(e.message.starts_with("t/3:"), "{}", e.message);
    }
}
