//! Kafka's record batch (magic 2) and Runnel's, one into the other, for the Kafka protocol
//! listener. The two batches differ only in their header: the records section (the records,
//! compressed as a whole or not) has the same bytes in both, so a batch crosses between the
//! protocols with a new header, one CRC over it, and the records section copied once
//! (`docs/storage-format.md`, "Batches of Kafka clients").
//!
//! Kafka's header, big-endian:
//!
//! | offset | size | field                  | type | becomes in Runnel's header |
//! |-------:|-----:|------------------------|------|----------------------------|
//! | 0      | 8    | `baseOffset`           | i64  | `base_offset` (the broker sets it) |
//! | 8      | 4    | `batchLength`          | i32  | `batch_length` + 4 |
//! | 12     | 4    | `partitionLeaderEpoch` | i32  | dropped (0 going out) |
//! | 16     | 1    | `magic`                | i8   | `version` 1 (2 going out) |
//! | 17     | 4    | `crc`                  | u32  | CRC-32C of `attributes` to the end |
//! | 21     | 2    | `attributes`           | i16  | codec renumbered, timestamp type kept |
//! | 23     | 4    | `lastOffsetDelta`      | i32  | `last_offset_delta` |
//! | 27     | 8    | `baseTimestamp`        | i64  | `first_timestamp` |
//! | 35     | 8    | `maxTimestamp`         | i64  | `max_timestamp` (the append time going out, for log-append time) |
//! | 43     | 8    | `producerId`           | i64  | `producer_id` |
//! | 51     | 2    | `producerEpoch`        | i16  | `producer_epoch` |
//! | 53     | 4    | `baseSequence`         | i32  | `base_sequence` |
//! | 57     | 4    | `recordsCount`         | i32  | `record_count` |
//! | 61     | ...  | records                |      | the same bytes |
//!
//! Kafka's codecs are 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; Runnel's 0 none, 1 lz4,
//! 2 zstd, 3 gzip, 4 snappy. Kafka's attribute bit 4 (transactional), bit 5 (control) and bit 6
//! (delete horizon) have no Runnel counterpart: such batches are refused.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    BatchHeader, CODEC_MASK, CRC_START, Compression, Error, HEADER_LEN, OFF_CRC,
    TIMESTAMP_TYPE_BIT, TimestampType,
};

/// Bytes of Kafka's batch header.
pub const KAFKA_HEADER_LEN: usize = 61;

/// Kafka's batch format version: magic 2.
pub const KAFKA_MAGIC: i8 = 2;

/// Where Kafka's CRC-32C starts: `attributes`.
const KAFKA_CRC_START: usize = 21;

/// Kafka's attribute bits without a Runnel counterpart: transactional, control, delete
/// horizon.
const KAFKA_UNSUPPORTED_BITS: u16 = 0b111_0000;

/// Kafka's codec number for a Runnel codec.
pub fn kafka_codec(codec: Compression) -> u16 {
    match codec {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    }
}

/// The Runnel codec for a Kafka codec number, if it is one.
pub fn from_kafka_codec(code: u16) -> Option<Compression> {
    match code {
        0 => Some(Compression::None),
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Snappy),
        3 => Some(Compression::Lz4),
        4 => Some(Compression::Zstd),
        _ => None,
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(v)
}

/// The whole Kafka batches at the start of a Kafka `records` field, as slices of it. A
/// partial batch at the end (which Kafka's fetch answers may hold) is left out; produce
/// requests hold whole batches only, which the caller checks with [`from_kafka`].
///
/// # Errors
/// [`Error::MalformedBatch`] for a batch length below the header's or a magic other than 2.
pub fn kafka_batches(records: &Bytes) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    let mut pos = 0;
    while records.len() - pos >= 17 {
        let length = be_i32(records, pos + 8);
        let total = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(12))
            .filter(|t| *t >= KAFKA_HEADER_LEN)
            .ok_or_else(|| {
                Error::malformed("batchLength", format!("{length} is below the header's 49"))
            })?;
        let magic = records[pos + 16] as i8;
        if magic != KAFKA_MAGIC {
            return Err(Error::malformed(
                "magic",
                format!("{magic}: only record batches of magic 2 are supported"),
            ));
        }
        if records.len() - pos < total {
            break;
        }
        out.push(records.slice(pos..pos + total));
        pos += total;
    }
    Ok(out)
}

/// A Kafka batch as a Runnel batch: the header translated (base offset and append time 0, for
/// the broker to set), the records section copied as it is, the CRC-32 computed. Checks the
/// Kafka CRC-32C first; the result is then validated like any batch from a producer.
///
/// # Errors
/// [`Error::MalformedBatch`] for a short buffer, a length that disagrees with it, another
/// magic, a negative count, an unknown codec, or a transactional or control batch;
/// [`Error::CrcMismatch`] if the CRC-32C does not match.
pub fn from_kafka(batch: &[u8]) -> Result<Bytes, Error> {
    if batch.len() < KAFKA_HEADER_LEN {
        return Err(Error::malformed(
            "batchLength",
            format!("{} bytes are shorter than the 61-byte header", batch.len()),
        ));
    }
    let length = be_i32(batch, 8);
    if usize::try_from(length).ok().and_then(|l| l.checked_add(12)) != Some(batch.len()) {
        return Err(Error::malformed(
            "batchLength",
            format!(
                "{length} does not match the {} bytes after it",
                batch.len() - 12
            ),
        ));
    }
    let magic = batch[16] as i8;
    if magic != KAFKA_MAGIC {
        return Err(Error::malformed(
            "magic",
            format!("{magic}: only record batches of magic 2 are supported"),
        ));
    }
    let stored = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    let computed = crc32c::crc32c(&batch[KAFKA_CRC_START..]);
    if stored != computed {
        return Err(Error::CrcMismatch { stored, computed });
    }
    let attributes = u16::from_be_bytes([batch[21], batch[22]]);
    if attributes & KAFKA_UNSUPPORTED_BITS != 0 {
        return Err(Error::malformed(
            "attributes",
            format!("{attributes:#06x}: transactional and control batches are not supported"),
        ));
    }
    let codec = from_kafka_codec(attributes & CODEC_MASK).ok_or_else(|| {
        Error::malformed(
            "attributes",
            format!("unknown compression codec {}", attributes & CODEC_MASK),
        )
    })?;
    let last_offset_delta = be_i32(batch, 23);
    let count = be_i32(batch, 57);
    let (Ok(last_offset_delta), Ok(record_count)) =
        (u32::try_from(last_offset_delta), u32::try_from(count))
    else {
        return Err(Error::malformed(
            "recordsCount",
            format!("{count} records, last offset delta {last_offset_delta}"),
        ));
    };
    let records = &batch[KAFKA_HEADER_LEN..];
    let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
    out.put_u64_le(0);
    // The Runnel header is 4 bytes longer; the length fits in u32 (it came from an i32).
    out.put_u32_le((HEADER_LEN - 12 + records.len()) as u32);
    out.put_i64_le(0);
    out.put_u32_le(0);
    out.put_u8(crate::FORMAT_VERSION);
    out.put_u16_le(codec.code() | (attributes & TIMESTAMP_TYPE_BIT));
    out.put_u32_le(last_offset_delta);
    out.put_i64_le(be_i64(batch, 27));
    out.put_i64_le(be_i64(batch, 35));
    out.put_i64_le(be_i64(batch, 43));
    out.put_i16_le(i16::from_be_bytes([batch[51], batch[52]]));
    out.put_i32_le(be_i32(batch, 53));
    out.put_u32_le(record_count);
    out.put_slice(records);
    let crc = crc32fast::hash(&out[CRC_START..]);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out.freeze())
}

/// Appends a stored Runnel batch to `out` as a Kafka batch: the header translated (a
/// log-append-time batch carries its append time as `maxTimestamp`, as Kafka's do), the
/// records section copied, the CRC-32C computed.
///
/// # Errors
/// [`Error::MalformedBatch`] if `batch` is shorter than its header says, or holds a codec
/// this build does not know.
pub fn to_kafka(batch: &[u8], out: &mut BytesMut) -> Result<(), Error> {
    let header = BatchHeader::decode(batch)?;
    let total = header.total_len();
    if batch.len() < total || total < HEADER_LEN {
        return Err(Error::malformed(
            "batch_length",
            format!("{} bytes hold less than the {total} it says", batch.len()),
        ));
    }
    let codec = header.compression().ok_or_else(|| {
        Error::malformed(
            "attributes",
            format!(
                "unknown compression codec {}",
                header.attributes & CODEC_MASK
            ),
        )
    })?;
    let attributes = kafka_codec(codec) | (header.attributes & TIMESTAMP_TYPE_BIT);
    let max_timestamp = match header.timestamp_type() {
        TimestampType::LogAppendTime => header.append_time,
        TimestampType::CreateTime => header.max_timestamp,
    };
    let records = &batch[HEADER_LEN..total];
    let start = out.len();
    out.reserve(KAFKA_HEADER_LEN + records.len());
    out.put_i64(header.base_offset as i64);
    out.put_i32((KAFKA_HEADER_LEN - 12 + records.len()) as i32);
    out.put_i32(0);
    out.put_i8(KAFKA_MAGIC);
    out.put_u32(0);
    out.put_u16(attributes);
    out.put_i32(header.last_offset_delta as i32);
    out.put_i64(header.first_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(header.record_count as i32);
    out.put_slice(records);
    let crc = crc32c::crc32c(&out[start + KAFKA_CRC_START..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

// The tests decode compressed sections: they need the codecs (the workspace's tests have them).
#[cfg(all(test, feature = "compression"))]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as KafkaCodec, Record, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType as KafkaTimestamp,
    };

    use super::*;
    use crate::{BatchBuilder, RecordBatch, validate};

    fn kafka_records(n: i64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let mut headers = IndexMap::new();
                headers.insert(
                    StrBytes::from_static_str("trace"),
                    Some(Bytes::from(format!("t{i}"))),
                );
                headers.insert(StrBytes::from_static_str("empty"), None);
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: 42,
                    producer_epoch: 3,
                    timestamp_type: KafkaTimestamp::Creation,
                    offset: i,
                    sequence: 7 + i as i32,
                    timestamp: 1_700_000_000_000 + i * 5,
                    key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                    value: (i % 5 != 4).then(|| Bytes::from(format!("value-{i}").repeat(20))),
                    headers,
                }
            })
            .collect()
    }

    fn kafka_batch(records: &[Record], codec: KafkaCodec) -> Bytes {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: codec,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn a_kafka_batch_becomes_a_runnel_batch_with_the_same_records() {
        let records = kafka_records(40);
        for (codec, ours) in [
            (KafkaCodec::None, Compression::None),
            (KafkaCodec::Gzip, Compression::Gzip),
            (KafkaCodec::Snappy, Compression::Snappy),
            (KafkaCodec::Zstd, Compression::Zstd),
        ] {
            let kafka = kafka_batch(&records, codec);
            let batches = kafka_batches(&kafka).unwrap();
            assert_eq!(batches.len(), 1);
            let runnel = from_kafka(&batches[0]).unwrap();
            let header = validate(&runnel, 1 << 20).unwrap();
            assert_eq!(header.compression(), Some(ours), "{codec:?}");
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (42, 3, 7)
            );
            assert_eq!(header.record_count, 40);
            let batch = RecordBatch::new(runnel, 1 << 20).unwrap();
            let decoded: Vec<_> = crate::compression::records(&batch, 1 << 20)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for (r, k) in decoded.iter().zip(&records) {
                assert_eq!(r.offset as i64, k.offset);
                assert_eq!(r.timestamp, k.timestamp);
                assert_eq!(r.key, k.key);
                assert_eq!(r.value, k.value);
                assert_eq!(r.headers.len(), 2);
                assert_eq!(r.headers[0].value.as_deref(), k.headers[0].as_deref());
                assert_eq!(r.headers[1].value, None);
            }
        }
    }

    #[test]
    fn a_runnel_batch_reads_in_kafka_s_decoder_at_its_offsets() {
        for codec in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Snappy,
        ] {
            let mut b = BatchBuilder::new();
            b.producer(9, 1, 100);
            for i in 0..30 {
                b.push(
                    Some(format!("k{i}").as_bytes()),
                    Some(format!("v{i}").repeat(10).as_bytes()),
                    &[(b"h".as_slice(), Some(b"x".as_slice()))],
                    2_000 + i,
                );
            }
            let section = crate::compression::compress(codec, b.records_section(), 3).unwrap();
            let mut stored = BytesMut::from(&b.build_with(codec, &section)[..]);
            // As the broker stores it: offset 500.
            stored[0..8].copy_from_slice(&500u64.to_le_bytes());
            let mut out = BytesMut::new();
            to_kafka(&stored, &mut out).unwrap();
            to_kafka(&stored, &mut out).unwrap();
            if codec == Compression::Lz4 {
                // kafka-protocol's lz4 links the C library; the frame is checked by the round
                // trip back instead.
                let back = from_kafka(&kafka_batches(&out.freeze()).unwrap()[0]).unwrap();
                assert_eq!(back[crate::CRC_START..], stored[crate::CRC_START..]);
                continue;
            }
            let mut buf = out.freeze();
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            assert_eq!(set.records.len(), 30);
            for (i, r) in set.records.iter().enumerate() {
                assert_eq!(r.offset, 500 + i as i64, "{codec:?}");
                assert_eq!(r.timestamp, 2_000 + i as i64);
                assert_eq!(r.producer_id, 9);
                assert_eq!(r.sequence, 100 + i as i32);
                assert_eq!(
                    r.value.as_deref(),
                    Some(format!("v{i}").repeat(10).as_bytes())
                );
            }
        }
    }

    #[test]
    fn a_round_trip_keeps_every_byte_of_the_records() {
        let kafka = kafka_batch(&kafka_records(10), KafkaCodec::None);
        let runnel = from_kafka(&kafka).unwrap();
        let mut back = BytesMut::new();
        to_kafka(&runnel, &mut back).unwrap();
        assert_eq!(back[KAFKA_CRC_START..], kafka[KAFKA_CRC_START..]);
        assert_eq!(back[17..21], kafka[17..21], "the same CRC-32C");
    }

    #[test]
    fn bad_kafka_batches_are_refused_by_name() {
        let kafka = kafka_batch(&kafka_records(3), KafkaCodec::None);
        let mut damaged = kafka.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            from_kafka(&damaged),
            Err(Error::CrcMismatch { .. })
        ));
        let mut magic = kafka.to_vec();
        magic[16] = 1;
        assert!(
            from_kafka(&magic)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(kafka_batches(&Bytes::from(magic)).is_err());
        let mut txn = kafka_records(2);
        txn[0].transactional = true;
        txn[1].transactional = true;
        let err = from_kafka(&kafka_batch(&txn, KafkaCodec::None)).unwrap_err();
        assert!(err.to_string().contains("transactional"), "{err}");
        assert!(from_kafka(&kafka[..40]).is_err());
        assert!(from_kafka(&kafka[..kafka.len() - 1]).is_err());
        // A partial batch at the end of a fetch answer is left out.
        let mut two = kafka.to_vec();
        two.extend_from_slice(&kafka[..30]);
        assert_eq!(kafka_batches(&Bytes::from(two)).unwrap().len(), 1);
    }
}
