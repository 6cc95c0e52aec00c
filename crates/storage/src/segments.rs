//! The segment set of a log: its segments oldest first (the last one active) and the log start
//! offset, published together for readers, and the read-side queries over them (read whole
//! batches, seek by time).
//!
//! Readers take no lock held by the writer: they load an `Arc` snapshot of the list and read
//! each segment with `pread` up to its published size. Only the writer (a roll) and retention
//! replace the list; the log's writer lock keeps them from racing each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::segment::{Bounded, Segment};

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, in order, each exactly as stored: one `Bytes` per batch, split once
    /// where they were read. Empty at the end of the log.
    pub batches: Vec<Bytes>,
    /// Records in `batches`, from their headers.
    pub records: u64,
    /// Offset to read from next: one past the last record in `batches` (or the requested
    /// offset if `batches` is empty).
    pub next_offset: u64,
    /// First offset in the log at the time of the read.
    pub log_start_offset: u64,
    /// Log end offset at the time of the read.
    pub log_end_offset: u64,
}

/// What [`Log::read_bounded`](crate::Log::read_bounded) found.
#[derive(Debug)]
pub enum BoundedRead {
    /// Whole batches, as [`Log::read`](crate::Log::read) returns them.
    Batches(ReadResult),
    /// The batch at the offset asked for, larger than the bound: to be read in pieces.
    Large(LargeBatch),
}

/// One stored batch, to be read in pieces rather than at once. It keeps its segment's file
/// open, so a segment that retention deletes meanwhile still reads whole.
#[derive(Clone)]
pub struct LargeBatch {
    segment: Arc<Segment>,
    position: u64,
    len: usize,
    /// Records in the batch.
    pub records: u64,
    /// The offset after the batch.
    pub next_offset: u64,
    /// First offset in the log at the time of the read.
    pub log_start_offset: u64,
    /// Log end offset at the time of the read.
    pub log_end_offset: u64,
}

impl std::fmt::Debug for LargeBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeBatch")
            .field("segment", &self.segment.log_path)
            .field("position", &self.position)
            .field("len", &self.len)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl LargeBatch {
    /// The batch's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a stored batch has at least its header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `at..at + len` of the batch (fewer at its end; none from past it).
    ///
    /// # Errors
    /// [`Error::Io`] from the segment file.
    pub fn read(&self, at: usize, len: usize) -> Result<Bytes> {
        let at = at.min(self.len);
        let len = len.min(self.len - at);
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.segment.read_at(self.position + at as u64, len)
    }
}

impl ReadResult {
    /// Bytes in `batches`.
    pub fn len_bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }

    /// True if no batch was read.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The segments of a log and its start offset.
pub(crate) struct SegmentSet {
    list: RwLock<Arc<Vec<Arc<Segment>>>>,
    start_offset: AtomicU64,
}

impl SegmentSet {
    /// A set of at least one segment (recovery always returns one).
    pub fn new(segments: Vec<Arc<Segment>>) -> Self {
        let start = segments.first().map_or(0, |s| s.base_offset);
        SegmentSet {
            list: RwLock::new(Arc::new(segments)),
            start_offset: AtomicU64::new(start),
        }
    }

    /// The segments now, oldest first.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes a new list (after a roll or a retention run) and the start offset it implies.
    pub fn publish(&self, segments: Vec<Arc<Segment>>) {
        let start = segments.first().map(|s| s.base_offset);
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(segments);
        if let Some(start) = start {
            self.start_offset.fetch_max(start, Ordering::AcqRel);
        }
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.start_offset.load(Ordering::Acquire)
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.size()).sum()
    }

    /// Reads whole batches starting with the one that contains `from`, up to about
    /// `max_bytes` (the first batch whole even if larger), given the log end `end`.
    pub fn read(&self, from: u64, max_bytes: usize, end: u64) -> Result<ReadResult> {
        match self.read_bounded(from, max_bytes, usize::MAX, end)? {
            BoundedRead::Batches(read) => Ok(read),
            BoundedRead::Large(_) => unreachable!("no batch is larger than usize::MAX"),
        }
    }

    /// [`SegmentSet::read`], except that a first batch larger than `first_max` is not read
    /// but handed back as a [`LargeBatch`], to be read in pieces.
    pub fn read_bounded(
        &self,
        from: u64,
        max_bytes: usize,
        first_max: usize,
        end: u64,
    ) -> Result<BoundedRead> {
        let start = self.start_offset();
        let segments = self.snapshot();
        let out_of_range = || Error::OffsetOutOfRange {
            requested: from,
            log_start: self.start_offset(),
            log_end: end,
        };
        if from < start || from > end {
            return Err(out_of_range());
        }
        let mut result = ReadResult {
            batches: Vec::new(),
            records: 0,
            next_offset: from,
            log_start_offset: start,
            log_end_offset: end,
        };
        if from == end {
            return Ok(BoundedRead::Batches(result));
        }
        let first = segments.partition_point(|s| s.base_offset <= from);
        let Some(first) = first.checked_sub(1) else {
            // Retention removed the segment between our loads.
            return Err(out_of_range());
        };
        for segment in &segments[first..] {
            match segment.read_bounded(from, max_bytes, first_max)? {
                None => continue,
                Some(Bounded::Read(read)) => {
                    result.batches = read.batches;
                    result.records = read.records;
                    result.next_offset = read.next_offset;
                    break;
                }
                Some(Bounded::Large { position, header }) => {
                    return Ok(BoundedRead::Large(LargeBatch {
                        segment: segment.clone(),
                        position,
                        len: header.total_len(),
                        records: u64::from(header.record_count),
                        next_offset: header.next_offset(),
                        log_start_offset: start,
                        log_end_offset: end,
                    }));
                }
            }
        }
        Ok(BoundedRead::Batches(result))
    }

    /// The first offset whose record timestamp is at or after `timestamp` (ms), or `None` if
    /// every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        for segment in self.snapshot().iter() {
            if segment.max_timestamp() >= timestamp
                && let Some(offset) = segment.offset_for_timestamp(timestamp)?
            {
                return Ok(Some(offset.max(self.start_offset())));
            }
        }
        Ok(None)
    }
}
