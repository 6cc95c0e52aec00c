//! Runnel's record batch format: the unit that is produced, stored and consumed.
//!
//! The same bytes travel from the producer over gRPC to the broker's disk and back to the
//! consumer, so this crate is shared by the storage engine (which validates and stores
//! batches) and the client (which builds and decodes them). It has no dependency beyond
//! `bytes`, `crc32fast` and `thiserror`, except the codecs of [`compression`], behind the
//! `compression` feature: the storage engine stores and returns a compressed records section
//! as it is, while the client and the broker's record-level reads decompress it.
//!
//! A batch is a 65-byte header followed by its records (see `docs/storage-format.md`).
//! All integers little-endian:
//!
//! | offset | size | field               | type | note                                  |
//! |-------:|-----:|---------------------|------|---------------------------------------|
//! | 0      | 8    | `base_offset`       | u64  | rewritten by the broker               |
//! | 8      | 4    | `batch_length`      | u32  | bytes after this field                |
//! | 12     | 8    | `append_time`       | i64  | rewritten by the broker, ms           |
//! | 20     | 4    | `crc`               | u32  | CRC-32 of bytes `[24, end)`           |
//! | 24     | 1    | `version`           | u8   | 1                                     |
//! | 25     | 2    | `attributes`        | u16  | bits 0-2 codec, bit 3 timestamp type  |
//! | 27     | 4    | `last_offset_delta` | u32  | `record_count - 1`                    |
//! | 31     | 8    | `first_timestamp`   | i64  | ms                                    |
//! | 39     | 8    | `max_timestamp`     | i64  | ms                                    |
//! | 47     | 8    | `producer_id`       | i64  | -1 when unused                        |
//! | 55     | 2    | `producer_epoch`    | i16  | -1 when unused                        |
//! | 57     | 4    | `base_sequence`     | i32  | -1 when unused                        |
//! | 61     | 4    | `record_count`      | u32  | at least 1                            |
//! | 65     | ...  | records             |      | compressed as a whole if the codec says so |
//!
//! Each record: `length` varint, `attributes` u8, `timestamp_delta` varint, `offset_delta`
//! varint, `key_length` varint (-1 null), key, `value_length` varint (-1 null), value,
//! `header_count` varint, then per header `name_length` varint, name, `value_length` varint
//! (-1 null), value. Varints are ZigZag LEB128.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[cfg(feature = "compression")]
pub mod compression;
pub mod kafka;

/// What is wrong with a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A batch is larger than the limit it was checked against.
    #[error("batch of {size} bytes exceeds max_batch_bytes ({limit} bytes)")]
    BatchTooLarge {
        /// Size of the rejected batch in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// A batch's CRC does not match its contents.
    #[error("batch CRC mismatch: header says {stored:#010x}, contents give {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the batch header.
        stored: u32,
        /// CRC computed over the batch.
        computed: u32,
    },

    /// A batch violates the format in some other way.
    #[error("malformed batch: {field}: {reason}")]
    MalformedBatch {
        /// The header field or part of the batch at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A batch declares a format version this build does not know.
    #[error("unsupported batch format version {version} (this build reads version 1)")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
}

impl Error {
    /// A [`Error::MalformedBatch`] for `field`.
    pub fn malformed(field: &'static str, reason: impl Into<String>) -> Self {
        Error::MalformedBatch {
            field,
            reason: reason.into(),
        }
    }
}

/// Result of the functions of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Length of the batch header in bytes.
pub const HEADER_LEN: usize = 65;
/// Bytes before the part counted by `batch_length`: `base_offset` and `batch_length`.
pub const LENGTH_PREFIX_LEN: usize = 12;
/// Bytes at the start of a batch that the broker rewrites on append.
pub const REWRITTEN_LEN: usize = 20;
/// First byte covered by the CRC.
pub const CRC_START: usize = 24;
/// The batch format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The smallest possible encoded record, counting its length varint.
pub const MIN_RECORD_LEN: usize = 7;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_APPEND_TIME: usize = 12;
const OFF_CRC: usize = 20;
const OFF_VERSION: usize = 24;
const OFF_ATTRIBUTES: usize = 25;
const OFF_LAST_OFFSET_DELTA: usize = 27;
const OFF_FIRST_TIMESTAMP: usize = 31;
const OFF_MAX_TIMESTAMP: usize = 39;
const OFF_PRODUCER_ID: usize = 47;
const OFF_PRODUCER_EPOCH: usize = 55;
const OFF_BASE_SEQUENCE: usize = 57;
const OFF_RECORD_COUNT: usize = 61;

const CODEC_MASK: u16 = 0b111;
const TIMESTAMP_TYPE_BIT: u16 = 1 << 3;
const RESERVED_MASK: u16 = !(CODEC_MASK | TIMESTAMP_TYPE_BIT);

/// Compression codec of a batch's records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as they are.
    #[default]
    None,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard frame.
    Zstd,
    /// A gzip stream (RFC 1952), as Kafka clients write it.
    Gzip,
    /// Snappy in the framing of Kafka's Java client (xerial `snappy-java`: a magic header
    /// then length-prefixed blocks); a bare snappy block is read too.
    Snappy,
}

impl Compression {
    /// The codec number stored in bits 0-2 of `attributes`.
    pub fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
            Compression::Gzip => 3,
            Compression::Snappy => 4,
        }
    }

    /// The codec for a number stored in `attributes`, if it is a known one.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            3 => Some(Compression::Gzip),
            4 => Some(Compression::Snappy),
            _ => None,
        }
    }
}

/// Which clock a batch's timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimestampType {
    /// Set by the producer when it created the records.
    #[default]
    CreateTime,
    /// The broker's append time (`append_time`) stands for every record's timestamp.
    LogAppendTime,
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads the total length of the batch starting at `buf[0]` from its first 12 bytes.
///
/// Returns `None` if fewer than 12 bytes are given.
pub fn batch_total_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < LENGTH_PREFIX_LEN {
        return None;
    }
    Some(u32_at(buf, OFF_BATCH_LENGTH) as usize + LENGTH_PREFIX_LEN)
}

/// The decoded fixed-width header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes after the `batch_length` field.
    pub batch_length: u32,
    /// Broker append time, ms since the epoch.
    pub append_time: i64,
    /// CRC-32 of the bytes from `version` to the end.
    pub crc: u32,
    /// Format version.
    pub version: u8,
    /// Attribute bits.
    pub attributes: u16,
    /// `record_count - 1`.
    pub last_offset_delta: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: u32,
}

impl BatchHeader {
    /// Decodes the header at the start of `buf` without validating anything but its size.
    ///
    /// # Errors
    /// [`Error::MalformedBatch`] if `buf` is shorter than [`HEADER_LEN`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        if buf.len() < HEADER_LEN {
            return Err(Error::malformed(
                "header",
                format!("{} bytes, a batch header is {HEADER_LEN}", buf.len()),
            ));
        }
        let base_offset = u64_at(buf, OFF_BASE_OFFSET);
        let last_offset_delta = u32_at(buf, OFF_LAST_OFFSET_DELTA);
        // The offset after the batch must exist: damaged or hostile bytes could otherwise make
        // every offset computation downstream overflow.
        if base_offset
            .checked_add(u64::from(last_offset_delta) + 1)
            .is_none()
        {
            return Err(Error::malformed(
                "base_offset",
                format!(
                    "{base_offset} + last_offset_delta {last_offset_delta} runs past the largest offset"
                ),
            ));
        }
        Ok(BatchHeader {
            base_offset,
            batch_length: u32_at(buf, OFF_BATCH_LENGTH),
            append_time: u64_at(buf, OFF_APPEND_TIME) as i64,
            crc: u32_at(buf, OFF_CRC),
            version: buf[OFF_VERSION],
            attributes: u16_at(buf, OFF_ATTRIBUTES),
            last_offset_delta,
            first_timestamp: u64_at(buf, OFF_FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(buf, OFF_MAX_TIMESTAMP) as i64,
            producer_id: u64_at(buf, OFF_PRODUCER_ID) as i64,
            producer_epoch: u16_at(buf, OFF_PRODUCER_EPOCH) as i16,
            base_sequence: u32_at(buf, OFF_BASE_SEQUENCE) as i32,
            record_count: u32_at(buf, OFF_RECORD_COUNT),
        })
    }

    /// Total size of the batch in bytes, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LENGTH_PREFIX_LEN
    }

    /// Offset of the last record (saturating: [`BatchHeader::decode`] refuses headers whose
    /// offsets overflow).
    pub fn last_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.last_offset_delta))
    }

    /// Offset the batch after this one starts at.
    pub fn next_offset(&self) -> u64 {
        self.last_offset().saturating_add(1)
    }

    /// The compression codec, or `None` for an unknown one.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_code(self.attributes & CODEC_MASK)
    }

    /// The timestamp type.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// The timestamp that orders this batch in time: `append_time` under log-append time,
    /// otherwise `max_timestamp`.
    pub fn effective_max_timestamp(&self) -> i64 {
        match self.timestamp_type() {
            TimestampType::LogAppendTime => self.append_time,
            TimestampType::CreateTime => self.max_timestamp,
        }
    }
}

/// Validates one complete batch as received from a producer and returns its header.
///
/// Runs every check of "Validation on append" in `docs/storage-format.md`: exact length,
/// size limit, version, CRC, attributes, record count and timestamps, and for uncompressed
/// batches a walk over the record lengths (nothing is decoded or allocated).
///
/// # Errors
/// [`Error::BatchTooLarge`], [`Error::UnsupportedVersion`], [`Error::CrcMismatch`] or
/// [`Error::MalformedBatch`] naming the field at fault.
pub fn validate(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader> {
    if buf.len() > max_batch_bytes {
        return Err(Error::BatchTooLarge {
            size: buf.len(),
            limit: max_batch_bytes,
        });
    }
    let header = BatchHeader::decode(buf)?;
    if header.total_len() != buf.len() {
        return Err(Error::malformed(
            "batch_length",
            format!(
                "says the batch is {} bytes but {} bytes were given",
                header.total_len(),
                buf.len()
            ),
        ));
    }
    validate_stored(buf, &header)?;
    if header.max_timestamp < header.first_timestamp {
        return Err(Error::malformed(
            "max_timestamp",
            format!(
                "{} is before first_timestamp {}",
                header.max_timestamp, header.first_timestamp
            ),
        ));
    }
    if header.compression() == Some(Compression::None) {
        walk_records(&buf[HEADER_LEN..], header.record_count)?;
    }
    Ok(header)
}

/// Checks the parts of a batch that recovery and readers check: version, CRC, attributes and
/// record count. `buf` must hold exactly the batch described by `header`.
///
/// # Errors
/// [`Error::UnsupportedVersion`], [`Error::CrcMismatch`] or [`Error::MalformedBatch`].
pub fn validate_stored(buf: &[u8], header: &BatchHeader) -> Result<()> {
    if header.version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            version: header.version,
        });
    }
    let computed = crc32fast::hash(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(Error::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.attributes & RESERVED_MASK != 0 {
        return Err(Error::malformed(
            "attributes",
            format!("reserved bits set: {:#06x}", header.attributes),
        ));
    }
    if header.compression().is_none() {
        return Err(Error::malformed(
            "attributes",
            format!(
                "unknown compression codec {}",
                header.attributes & CODEC_MASK
            ),
        ));
    }
    if header.record_count == 0 {
        return Err(Error::malformed(
            "record_count",
            "a batch holds at least one record",
        ));
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(Error::malformed(
            "last_offset_delta",
            format!(
                "is {} but record_count is {}",
                header.last_offset_delta, header.record_count
            ),
        ));
    }
    Ok(())
}

/// Checks that `records` holds exactly `count` records by their length prefixes.
fn walk_records(records: &[u8], count: u32) -> Result<()> {
    let mut pos = 0usize;
    for i in 0..count {
        let (len, used) = read_varint(&records[pos..])
            .ok_or_else(|| Error::malformed("records", format!("record {i}: bad length varint")))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l >= MIN_RECORD_LEN - 1)
            .ok_or_else(|| Error::malformed("records", format!("record {i}: length {len}")))?;
        pos += used;
        if records.len() - pos < len {
            return Err(Error::malformed(
                "records",
                format!("record {i} of {count} runs past the end of the batch"),
            ));
        }
        pos += len;
    }
    if pos != records.len() {
        return Err(Error::malformed(
            "record_count",
            format!(
                "{count} records end {} bytes before the batch does",
                records.len() - pos
            ),
        ));
    }
    Ok(())
}

/// Writes the broker-owned fields (`base_offset`, `batch_length`, `append_time`) for a batch
/// whose header is `header` into a 20-byte prefix, which replaces the batch's first 20 bytes
/// on append (outside the CRC).
pub fn rewritten_prefix(
    header: &BatchHeader,
    base_offset: u64,
    append_time: i64,
) -> [u8; REWRITTEN_LEN] {
    let mut out = [0u8; REWRITTEN_LEN];
    out[0..8].copy_from_slice(&base_offset.to_le_bytes());
    out[8..12].copy_from_slice(&header.batch_length.to_le_bytes());
    out[12..20].copy_from_slice(&append_time.to_le_bytes());
    out
}

/// A copy of an encoded batch with another idempotent producer id, epoch and base sequence,
/// and its CRC recomputed. For a producer that must re-sequence a batch it already encoded
/// (after the broker lost its state or fenced an epoch) without encoding its records again.
///
/// # Errors
/// [`Error::MalformedBatch`] if `batch` is shorter than a header.
pub fn restamp_producer(
    batch: &[u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<Bytes> {
    if batch.len() < HEADER_LEN {
        return Err(Error::malformed("header", format!("{} bytes", batch.len())));
    }
    let mut b = BytesMut::from(batch);
    b[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_le_bytes());
    b[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_le_bytes());
    b[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_le_bytes());
    let crc = crc32fast::hash(&b[CRC_START..]);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(b.freeze())
}

/// Writes `value` as a ZigZag LEB128 varint.
pub fn put_varint(buf: &mut impl BufMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Reads a ZigZag LEB128 varint; returns the value and the bytes it used, or `None` if it is
/// truncated or longer than 10 bytes.
pub fn read_varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            let decoded = ((v >> 1) as i64) ^ -((v & 1) as i64);
            return Some((decoded, i + 1));
        }
    }
    None
}

/// Number of bytes `value` takes as a varint.
pub fn varint_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

/// A stored or received record batch: validated bytes with typed access.
///
/// Cloning is cheap: the bytes are reference counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl RecordBatch {
    /// Validates `bytes` as one batch (see [`validate`]).
    ///
    /// # Errors
    /// As [`validate`].
    pub fn new(bytes: Bytes, max_batch_bytes: usize) -> Result<Self> {
        let header = validate(&bytes, max_batch_bytes)?;
        Ok(RecordBatch { header, bytes })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The records section, still compressed if the batch is.
    pub fn records_section(&self) -> Bytes {
        self.bytes.slice(HEADER_LEN..)
    }

    /// Iterates the records of an uncompressed batch. A compressed batch's records section
    /// must be decompressed by the caller and decoded with [`Records::new`].
    ///
    /// # Errors
    /// [`Error::MalformedBatch`] if the batch is compressed.
    pub fn records(&self) -> Result<Records> {
        if self.header.compression() != Some(Compression::None) {
            return Err(Error::malformed(
                "attributes",
                "the batch is compressed: decompress records_section() and use Records::new",
            ));
        }
        Ok(Records::new(self.records_section(), &self.header))
    }
}

/// Splits a buffer of back-to-back batches (as returned by a read) into batches.
///
/// Each item is validated like a stored batch (version, CRC, attributes, count); a truncated
/// tail is an error, not silently dropped.
pub struct Batches {
    buf: Bytes,
}

impl Batches {
    /// Iterates the batches in `buf`.
    pub fn new(buf: Bytes) -> Self {
        Batches { buf }
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let result = (|| {
            let header = BatchHeader::decode(&self.buf)?;
            let total = header.total_len();
            if total > self.buf.len() || total < HEADER_LEN {
                return Err(Error::malformed(
                    "batch_length",
                    format!("batch of {total} bytes, {} bytes left", self.buf.len()),
                ));
            }
            let bytes = self.buf.split_to(total);
            validate_stored(&bytes, &header)?;
            Ok(RecordBatch { header, bytes })
        })();
        if result.is_err() {
            self.buf.clear();
        }
        Some(result)
    }
}

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (UTF-8 by convention; not checked).
    pub name: Bytes,
    /// Header value, `None` for null.
    pub value: Option<Bytes>,
}

/// One decoded record. Key, value and headers share the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset.
    pub offset: u64,
    /// Timestamp in ms since the epoch.
    pub timestamp: i64,
    /// Key, `None` for null.
    pub key: Option<Bytes>,
    /// Value, `None` for null.
    pub value: Option<Bytes>,
    /// Headers in their stored order.
    pub headers: Vec<Header>,
}

/// Decodes the records of an (uncompressed or decompressed) records section.
pub struct Records {
    buf: Bytes,
    base_offset: u64,
    first_timestamp: i64,
    log_append_time: Option<i64>,
    remaining: u32,
}

impl Records {
    /// Decodes `records`, the uncompressed records section of the batch with `header`.
    pub fn new(records: Bytes, header: &BatchHeader) -> Self {
        Records {
            buf: records,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
            log_append_time: (header.timestamp_type() == TimestampType::LogAppendTime)
                .then_some(header.append_time),
            remaining: header.record_count,
        }
    }

    fn decode_one(&mut self) -> Result<Record> {
        let mut section = Fields::new(&self.buf, 0, self.buf.len());
        let len = section.varint("record length")?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= section.left() && *l >= MIN_RECORD_LEN - 1)
            .ok_or_else(|| Error::malformed("record length", format!("{len} is invalid here")))?;
        // Past the attributes byte.
        let mut rec = Fields::new(&self.buf, section.pos + 1, section.pos + len);
        let ts_delta = rec.varint("timestamp_delta")?;
        let offset_delta = rec.varint("offset_delta")?;
        let offset_delta = u64::try_from(offset_delta)
            .map_err(|_| Error::malformed("offset_delta", format!("{offset_delta} < 0")))?;
        let key = rec.nullable("key_length")?;
        let value = rec.nullable("value_length")?;
        let count = rec.varint("header_count")?;
        let count = usize::try_from(count)
            .ok()
            .filter(|c| *c <= rec.left())
            .ok_or_else(|| Error::malformed("header_count", format!("{count} is invalid")))?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = rec
                .nullable("header name_length")?
                .ok_or_else(|| Error::malformed("header name_length", "a name is never null"))?;
            let value = rec.nullable("header value_length")?;
            headers.push(Header { name, value });
        }
        if rec.left() != 0 {
            return Err(Error::malformed(
                "record length",
                "record has trailing bytes",
            ));
        }
        let offset = self.base_offset.checked_add(offset_delta).ok_or_else(|| {
            Error::malformed(
                "offset_delta",
                format!("{offset_delta} runs past the largest offset"),
            )
        })?;
        let used = rec.end;
        self.buf.advance(used);
        Ok(Record {
            offset,
            timestamp: self
                .log_append_time
                .unwrap_or(self.first_timestamp.wrapping_add(ts_delta)),
            key,
            value,
            headers,
        })
    }
}

/// Reads a record's fields from `buf[pos..end]` by position: only the key, value and header
/// slices it hands out take a reference on the buffer (splitting the buffer for every field
/// cost two atomic operations each, a tenth of a consumer's CPU).
struct Fields<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a Bytes, pos: usize, end: usize) -> Self {
        Fields { buf, pos, end }
    }

    /// Bytes not read yet.
    fn left(&self) -> usize {
        self.end - self.pos
    }

    fn varint(&mut self, field: &'static str) -> Result<i64> {
        let (v, used) = read_varint(&self.buf[self.pos..self.end])
            .ok_or_else(|| Error::malformed(field, "bad or truncated varint"))?;
        self.pos += used;
        Ok(v)
    }

    fn nullable(&mut self, field: &'static str) -> Result<Option<Bytes>> {
        let len = self.varint(field)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.left())
            .ok_or_else(|| Error::malformed(field, format!("length {len} is invalid here")))?;
        let start = self.pos;
        self.pos += len;
        Ok(Some(self.buf.slice(start..self.pos)))
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rec = self.decode_one();
        if rec.is_err() {
            self.remaining = 0;
        }
        Some(rec)
    }
}

/// Builds an uncompressed batch, or the records section for a caller that compresses it.
///
/// ```
/// use runnel_format::{BatchBuilder, RecordBatch};
/// let mut b = BatchBuilder::new();
/// b.push(Some(b"order-42"), Some(b"created"), &[], 1_700_000_000_000);
/// let batch = RecordBatch::new(b.build(), 1 << 20).unwrap();
/// assert_eq!(batch.header().record_count, 1);
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// Room for the header (`HEADER_LEN` bytes, written by `build`) followed by the
    /// records section; empty until the first record, so that an unused builder allocates
    /// nothing. Building in place saves copying the whole batch.
    records: BytesMut,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_type: TimestampType,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder for a batch without producer id.
    pub fn new() -> Self {
        BatchBuilder {
            records: BytesMut::new(),
            count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            timestamp_type: TimestampType::CreateTime,
        }
    }

    /// An empty builder that writes into `buffer` (cleared first), keeping its capacity: a
    /// producer that hands back the buffers of acknowledged batches builds the next ones
    /// without allocating or faulting in fresh memory.
    pub fn with_buffer(mut buffer: BytesMut) -> Self {
        buffer.clear();
        BatchBuilder {
            records: buffer,
            ..Self::new()
        }
    }

    /// The builder's buffer, for reuse by [`BatchBuilder::with_buffer`] (a caller that
    /// compressed the records section no longer needs it once the batch is built).
    pub fn into_buffer(self) -> BytesMut {
        self.records
    }

    /// Sets the idempotent producer id, epoch and the sequence of the first record.
    pub fn producer(&mut self, id: i64, epoch: i16, base_sequence: i32) -> &mut Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets the timestamp type.
    pub fn timestamp_type(&mut self, ty: TimestampType) -> &mut Self {
        self.timestamp_type = ty;
        self
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True if no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size the batch will have, uncompressed, in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.records_section().len()
    }

    /// Appends a record.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        timestamp: i64,
    ) -> &mut Self {
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp.wrapping_sub(self.first_timestamp);
        let offset_delta = i64::from(self.count);
        let nullable_len = |b: Option<&[u8]>| b.map_or(-1, |b| b.len() as i64);
        let nullable_size = |b: Option<&[u8]>| {
            let l = nullable_len(b);
            varint_len(l) + b.map_or(0, <[u8]>::len)
        };
        let mut body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + nullable_size(key)
            + nullable_size(value)
            + varint_len(headers.len() as i64);
        for (name, value) in headers {
            body += nullable_size(Some(name)) + nullable_size(*value);
        }
        let buf = &mut self.records;
        if buf.is_empty() {
            buf.reserve(HEADER_LEN + body + 10);
            buf.put_bytes(0, HEADER_LEN);
        } else {
            buf.reserve(body + 10);
        }
        put_varint(buf, body as i64);
        buf.put_u8(0);
        put_varint(buf, ts_delta);
        put_varint(buf, offset_delta);
        let put_nullable = |buf: &mut BytesMut, b: Option<&[u8]>| {
            put_varint(buf, nullable_len(b));
            if let Some(b) = b {
                buf.put_slice(b);
            }
        };
        put_nullable(buf, key);
        put_nullable(buf, value);
        put_varint(buf, headers.len() as i64);
        for (name, value) in headers {
            put_nullable(buf, Some(name));
            put_nullable(buf, *value);
        }
        self.count += 1;
        self
    }

    /// Encodes the batch with its records uncompressed, in place: the header goes into the
    /// room kept before the records, so the records are not copied again.
    pub fn build(mut self) -> Bytes {
        if self.records.is_empty() {
            self.records.put_bytes(0, HEADER_LEN);
        }
        let total = self.records.len();
        let header = self.header(Compression::None, total);
        self.records[..HEADER_LEN].copy_from_slice(&header);
        let crc = crc32fast::hash(&self.records[CRC_START..]);
        self.records[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        self.records.freeze()
    }

    /// The uncompressed records section, for a caller that compresses it and then calls
    /// [`BatchBuilder::build_with`].
    pub fn records_section(&self) -> &[u8] {
        self.records.get(HEADER_LEN..).unwrap_or_default()
    }

    /// Encodes the batch around `records`, the records section compressed with `compression`
    /// by the caller (or the plain section for [`Compression::None`], though
    /// [`BatchBuilder::build`] does that without a copy).
    pub fn build_with(&self, compression: Compression, records: &[u8]) -> Bytes {
        let total = HEADER_LEN + records.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.put_slice(&self.header(compression, total));
        buf.put_slice(records);
        let crc = crc32fast::hash(&buf[CRC_START..]);
        buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        buf.freeze()
    }

    /// The header of a batch of `total` bytes, with a CRC of 0 (filled in by the caller).
    fn header(&self, compression: Compression, total: usize) -> [u8; HEADER_LEN] {
        let mut attributes = compression.code();
        if self.timestamp_type == TimestampType::LogAppendTime {
            attributes |= TIMESTAMP_TYPE_BIT;
        }
        let mut header = [0u8; HEADER_LEN];
        let mut buf = &mut header[..];
        buf.put_u64_le(0);
        buf.put_u32_le((total - LENGTH_PREFIX_LEN) as u32);
        buf.put_i64_le(0);
        buf.put_u32_le(0); // CRC, filled in by the caller
        buf.put_u8(FORMAT_VERSION);
        buf.put_u16_le(attributes);
        buf.put_u32_le(self.count.saturating_sub(1));
        buf.put_i64_le(self.first_timestamp);
        buf.put_i64_le(self.max_timestamp);
        buf.put_i64_le(self.producer_id);
        buf.put_i16_le(self.producer_epoch);
        buf.put_i32_le(self.base_sequence);
        buf.put_u32_le(self.count);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> Bytes {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            let key = format!("k{i}");
            b.push(
                Some(key.as_bytes()),
                Some(b"value"),
                &[(b"trace", Some(b"abc")), (b"n", None)],
                1_000 + i64::from(i),
            );
        }
        b.build()
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let batch = sample(3);
        assert_eq!(batch_total_len(&batch), Some(batch.len()));
        let h = BatchHeader::decode(&batch).unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.first_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.producer_epoch, -1);
        assert_eq!(h.base_sequence, -1);
        assert_eq!(batch[24], 1, "version byte at 24");
        assert_eq!(
            &batch[61..65],
            &3u32.to_le_bytes(),
            "record_count at 61, little-endian"
        );
        assert_eq!(h.crc, crc32fast::hash(&batch[24..]));
    }

    #[test]
    fn records_round_trip() {
        let batch = RecordBatch::new(sample(5), 1 << 20).unwrap();
        let recs: Vec<Record> = batch.records().unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[4].offset, 4);
        assert_eq!(recs[4].timestamp, 1_004);
        assert_eq!(recs[4].key.as_deref(), Some(&b"k4"[..]));
        assert_eq!(recs[0].headers[0].value.as_deref(), Some(&b"abc"[..]));
        assert_eq!(recs[0].headers[1].value, None);
    }

    #[test]
    fn offsets_past_the_largest_are_refused_not_wrapped() {
        let mut bytes = sample(3).to_vec();
        // base_offset 2^64 - 3 with 3 records: the offset after the batch does not exist.
        bytes[..8].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        let e = validate(&bytes, 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("base_offset") && e.contains("largest offset"),
            "{e}"
        );
        // One less fits, and the last record's offset is the largest there is.
        bytes[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let batch = RecordBatch::new(Bytes::from(bytes), 1 << 20).unwrap();
        assert_eq!(batch.header().next_offset(), u64::MAX);
        let last = batch.records().unwrap().last().unwrap().unwrap();
        assert_eq!(last.offset, u64::MAX - 1);
    }

    #[test]
    fn damaged_records_sections_give_errors_not_panics() {
        let batch = RecordBatch::new(sample(3), 1 << 20).unwrap();
        let header = *batch.header();
        let section = batch.records_section();
        let decode = |bytes: Bytes| Records::new(bytes, &header).collect::<Result<Vec<_>>>();
        // Cut anywhere: the cut record is an error, never a panic or a short record.
        for cut in 0..section.len() {
            assert!(decode(section.slice(..cut)).is_err(), "cut at {cut}");
        }
        // Any byte set to values that break lengths and varints: decoded or refused.
        for at in 0..section.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut damaged = section.to_vec();
                damaged[at] = v;
                let _ = decode(Bytes::from(damaged));
            }
        }
        // Records decoded from the section keep only their own bytes.
        let recs = decode(section.clone()).unwrap();
        assert_eq!(recs[2].value.as_deref(), Some(&b"value"[..]));
        assert_eq!(recs[2].headers[1].name.as_ref(), b"n");
    }

    #[test]
    fn a_reused_buffer_builds_the_same_batch_in_its_own_memory() {
        let used = BytesMut::from(&sample(7)[..]);
        let (ptr, capacity) = (used.as_ptr(), used.capacity());
        let mut b = BatchBuilder::with_buffer(used);
        b.push(None, Some(b"v"), &[], 9);
        let reused = b.build();
        let mut fresh = BatchBuilder::new();
        fresh.push(None, Some(b"v"), &[], 9);
        assert_eq!(reused, fresh.build());
        let back = reused.try_into_mut().unwrap();
        assert_eq!((back.as_ptr(), back.capacity()), (ptr, capacity));
    }

    #[test]
    fn null_key_and_value() {
        let mut b = BatchBuilder::new();
        b.push(None, None, &[], -5);
        let batch = RecordBatch::new(b.build(), 1 << 20).unwrap();
        let rec = batch.records().unwrap().next().unwrap().unwrap();
        assert_eq!((rec.key, rec.value, rec.timestamp), (None, None, -5));
    }

    #[test]
    fn rewriting_the_prefix_keeps_the_crc_valid() {
        let batch = sample(2);
        let h = BatchHeader::decode(&batch).unwrap();
        let mut stored = batch.to_vec();
        stored[..REWRITTEN_LEN].copy_from_slice(&rewritten_prefix(&h, 77, 123));
        let v = validate(&stored, 1 << 20).unwrap();
        assert_eq!((v.base_offset, v.append_time), (77, 123));
    }

    #[test]
    fn every_flipped_byte_after_the_prefix_is_caught() {
        let batch = sample(2);
        for i in REWRITTEN_LEN..batch.len() {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x40;
            assert!(
                validate(&bad, 1 << 20).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let batch = sample(2);
        assert!(matches!(
            validate(&batch, 10),
            Err(Error::BatchTooLarge { limit: 10, .. })
        ));
        assert!(matches!(
            validate(&batch[..batch.len() - 1], 1 << 20),
            Err(Error::MalformedBatch {
                field: "batch_length",
                ..
            })
        ));
        assert!(matches!(
            validate(&batch[..10], 1 << 20),
            Err(Error::MalformedBatch {
                field: "header",
                ..
            })
        ));
        let mut v2 = batch.to_vec();
        v2[24] = 2;
        assert!(matches!(
            validate(&v2, 1 << 20),
            Err(Error::UnsupportedVersion { version: 2 })
        ));
        // A wrong record count with a correct CRC.
        let mut wrong = batch.to_vec();
        wrong[61..65].copy_from_slice(&3u32.to_le_bytes());
        wrong[27..31].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&wrong[24..]);
        wrong[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            validate(&wrong, 1 << 20),
            Err(Error::MalformedBatch { .. })
        ));
    }

    #[test]
    fn compressed_batches_are_not_walked() {
        let mut b = BatchBuilder::new();
        b.push(None, Some(b"x"), &[], 1);
        let batch = b.build_with(Compression::Zstd, b"opaque compressed bytes");
        let v = RecordBatch::new(batch, 1 << 20).unwrap();
        assert_eq!(v.header().compression(), Some(Compression::Zstd));
        assert!(v.records().is_err());
    }

    #[test]
    fn restamping_changes_only_the_producer_fields_and_keeps_the_crc_valid() {
        let batch = sample(3);
        let out = restamp_producer(&batch, 42, 7, 1000).unwrap();
        let h = validate(&out, 1 << 20).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 7, 1000)
        );
        assert_eq!(out[HEADER_LEN..], batch[HEADER_LEN..]);
        assert!(restamp_producer(&batch[..10], 1, 1, 1).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i64::MAX,
            i64::MIN,
            1 << 40,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "len of {v}");
            assert_eq!(read_varint(&buf), Some((v, buf.len())));
        }
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[0xff; 11]), None);
    }

    #[test]
    fn batches_splits_and_checks() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&sample(1));
        all.extend_from_slice(&sample(2));
        let all = all.freeze();
        let got: Vec<_> = Batches::new(all.clone()).collect::<Result<_>>().unwrap();
        assert_eq!(got.len(), 2);
        let truncated = all.slice(..all.len() - 3);
        let res: Vec<_> = Batches::new(truncated).collect();
        assert!(res[1].is_err());
    }
}
