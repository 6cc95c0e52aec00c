//! A segment: one `.log` file of back-to-back record batches and its two sparse indexes.
//!
//! ```text
//! <base offset, 20 digits>.log        batches (format in runnel-format), back to back, no padding
//! <base offset, 20 digits>.index      offset -> position (index.rs)
//! <base offset, 20 digits>.timeindex  time -> offset (index.rs)
//! ```
//!
//! Only the active segment is written, by the log's single writer. Readers read any segment
//! concurrently with `pread`, up to the segment's published size, which the writer advances
//! only after a batch is completely written; so no reader ever sees part of a batch.
//!
//! The active segment's blocks are reserved ahead of the writer with
//! `fallocate(FALLOC_FL_KEEP_SIZE)`, as far ahead as the segment already holds, between
//! [`PREALLOCATE_MIN`] and [`PREALLOCATE_STEP`] (so that a broker with thousands of nearly
//! empty partitions does not reserve 16 MiB for each): the file's size stays the end of the last
//! batch (the on-disk format does not change), but the filesystem has no blocks to allocate
//! when it writes the pages back. On ext4 that allocation holds the inode's block-map lock,
//! which a concurrent `write` then waits for: milliseconds of stall on the produce path
//! every time the flusher or the kernel writes back. Sealing gives the unused reservation
//! back (`ftruncate` to the size). A clean close keeps it, and the next open appends into it:
//! giving blocks back costs a discard per file on a filesystem mounted with `discard`, which
//! made closing 4096 partitions take seconds. Where the filesystem cannot reserve (no space,
//! or no `fallocate`), appends go on without it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tracing::warn;

use crate::batch::{self, BatchHeader, Compression, HEADER_LEN, LENGTH_PREFIX_LEN, Records};
use crate::error::{Error, Result};
use crate::index::{Index, OffsetEntry, TimeEntry};

/// The farthest ahead of the writer the active segment's blocks are reserved.
pub const PREALLOCATE_STEP: u64 = 16 << 20;

/// The least ahead of the writer the active segment's blocks are reserved.
pub const PREALLOCATE_MIN: u64 = 256 << 10;

/// Pages behind the cache window are dropped at least this many bytes at a time.
pub const DROP_STEP: u64 = 4 << 20;

/// The page size `drop_behind` rounds to (the smallest on Linux; the kernel drops only whole
/// pages anyway).
const PAGE_BYTES: u64 = 4096;

/// Whole batches read from a segment: the one walk over their headers splits them, counts
/// their records and finds where the next read starts, so nothing downstream walks them again.
pub(crate) struct SegmentRead {
    /// One `Bytes` per batch, exactly as stored.
    pub batches: Vec<Bytes>,
    /// Records in `batches`.
    pub records: u64,
    /// One past the last record in `batches` (`from` if there are none).
    pub next_offset: u64,
}

/// What [`Segment::read_bounded`] found.
pub(crate) enum Bounded {
    /// Whole batches within the bound.
    Read(SegmentRead),
    /// The first batch, larger than the bound, at `position`.
    Large {
        /// Its byte position in the segment.
        position: u64,
        /// Its header.
        header: BatchHeader,
    },
}

impl SegmentRead {
    /// Splits `buf`, read from a batch boundary, into its whole batches; a partial batch at
    /// the end (the read stopped at `max_bytes`) is left out.
    pub(crate) fn split(buf: Bytes, from: u64) -> Self {
        let mut read = SegmentRead {
            batches: Vec::new(),
            records: 0,
            next_offset: from,
        };
        let mut pos = 0;
        // The length check first: decoding a short tail would build an error message.
        while buf.len() - pos >= HEADER_LEN {
            let Ok(header) = BatchHeader::decode(&buf[pos..]) else {
                break;
            };
            let total = header.total_len();
            if total < HEADER_LEN || pos + total > buf.len() {
                break;
            }
            read.batches.push(buf.slice(pos..pos + total));
            read.records += u64::from(header.record_count);
            read.next_offset = header.next_offset();
            pos += total;
        }
        read
    }
}

/// File name stem of the segment starting at `base_offset`.
pub(crate) fn file_stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// Parses a segment file name (`00000000000000000042.log`) into base offset and extension.
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// The indexes of a segment and the state that decides when to add an entry.
pub(crate) struct SegmentIndexes {
    pub offset: Index<OffsetEntry>,
    pub time: Index<TimeEntry>,
    /// Bytes of batches written since the last index entry.
    pub bytes_since_entry: u64,
    /// Largest (effective) timestamp of the batches indexed so far.
    pub max_timestamp: i64,
}

impl SegmentIndexes {
    /// Records that a batch of `len` bytes with relative offset `rel` starts at `position`,
    /// adding index entries when `interval` bytes passed since the last ones.
    pub fn on_batch(&mut self, position: u64, rel: u32, len: u64, max_ts: i64, interval: u64) {
        self.max_timestamp = self.max_timestamp.max(max_ts);
        if position > 0
            && self.bytes_since_entry >= interval
            && self.offset.has_room()
            && self.time.has_room()
        {
            // Segments are capped below 4 GiB, so the position fits in u32.
            let entry = OffsetEntry {
                relative_offset: rel,
                position: position as u32,
            };
            let mut written = self.offset.push(entry);
            if written.is_ok()
                && self
                    .time
                    .last()
                    .is_none_or(|e| e.timestamp < self.max_timestamp)
            {
                let entry = TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset: rel,
                };
                written = self.time.push(entry);
            }
            if let Err(e) = written {
                // The indexes are sparse: a missing entry only makes lookups scan further.
                // has_room() is now false, so the log rolls at the next append.
                warn!(error = %e, "index entry not written; the segment will roll");
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }

    /// True if both indexes can take another entry.
    pub fn has_room(&self) -> bool {
        self.offset.has_room() && self.time.has_room()
    }
}

/// One segment of a partition log.
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_index_path: PathBuf,
    file: File,
    /// Readable length of the `.log` file: everything before it is whole batches.
    size: AtomicU64,
    /// Offset after the last record in this segment.
    next_offset: AtomicU64,
    /// Largest effective timestamp in the segment, `i64::MIN` while empty.
    max_timestamp: AtomicI64,
    /// Append time of the first batch, `i64::MIN` while empty; drives age-based rolling.
    first_append_time: AtomicI64,
    sealed: AtomicBool,
    /// Held while sealing, so that a roll finished in the background and a close that seals
    /// the same segment do not interleave.
    seal_lock: Mutex<()>,
    indexes: Mutex<SegmentIndexes>,
    /// End of the range reserved with `fallocate` (or last tried); writer only.
    preallocated: AtomicU64,
    /// Pages below this position were dropped from the page cache (`drop_behind`).
    dropped: AtomicU64,
    /// The index files' preallocated size is known to be on disk ([`Segment::sync_index_files`]).
    index_files_synced: AtomicBool,
}

/// What a scan of a segment's batches found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last valid batch.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Largest effective timestamp among the valid batches.
    pub max_timestamp: i64,
    /// Append time of the first batch.
    pub first_append_time: i64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

impl Segment {
    fn paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf, PathBuf) {
        let stem = file_stem(base_offset);
        (
            dir.join(format!("{stem}.log")),
            dir.join(format!("{stem}.index")),
            dir.join(format!("{stem}.timeindex")),
        )
    }

    fn open_log_file(path: &Path, create: bool) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                Error::io(
                    if create {
                        "create segment"
                    } else {
                        "open segment"
                    },
                    path,
                    e,
                )
            })
    }

    /// Creates a new, empty active segment (any leftover files with its name are emptied).
    pub fn create(dir: &Path, base_offset: u64, max_index_bytes: u32) -> Result<Self> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        // The indexes first: a directory that kept the segment's entry kept theirs (whose
        // preallocated size is made durable by `sync_index_files`).
        let indexes = SegmentIndexes {
            offset: Index::create(&index_path, max_index_bytes)?,
            time: Index::create(&time_index_path, max_index_bytes)?,
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
        };
        let file = Self::open_log_file(&log_path, true)?;
        file.set_len(0)
            .map_err(|e| Error::io("truncate segment", &log_path, e))?;
        Ok(Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            file,
            size: AtomicU64::new(0),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp: AtomicI64::new(i64::MIN),
            first_append_time: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(false),
            seal_lock: Mutex::new(()),
            indexes: Mutex::new(indexes),
            preallocated: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            index_files_synced: AtomicBool::new(false),
        })
    }

    /// Opens an existing segment with the given indexes and known state.
    pub fn from_parts(
        dir: &Path,
        base_offset: u64,
        indexes: SegmentIndexes,
        outcome: &ScanOutcome,
        sealed: bool,
    ) -> Result<Self> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        let file = Self::open_log_file(&log_path, false)?;
        Ok(Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            file,
            size: AtomicU64::new(outcome.valid_len),
            next_offset: AtomicU64::new(outcome.next_offset),
            max_timestamp: AtomicI64::new(outcome.max_timestamp),
            first_append_time: AtomicI64::new(outcome.first_append_time),
            sealed: AtomicBool::new(sealed),
            seal_lock: Mutex::new(()),
            indexes: Mutex::new(indexes),
            preallocated: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            index_files_synced: AtomicBool::new(sealed),
        })
    }

    /// Paths of the three files, for the directory scan.
    pub fn file_paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf, PathBuf) {
        Self::paths(dir, base_offset)
    }

    /// Published readable size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Offset after the segment's last record.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Largest effective timestamp, `i64::MIN` if empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    /// Append time of the first batch, `None` if empty.
    pub fn first_append_time(&self) -> Option<i64> {
        let t = self.first_append_time.load(Ordering::Acquire);
        (t != i64::MIN).then_some(t)
    }

    /// True once sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Locks the indexes. A poisoned lock only means a panic elsewhere while it was held;
    /// the indexes are plain data, so we go on with them.
    pub fn indexes(&self) -> MutexGuard<'_, SegmentIndexes> {
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes all `bufs` at the end of the file. Called by the log's single writer only.
    ///
    /// On error the file is truncated back to its published size; if that fails too, the
    /// returned flag is false and the caller must stop writing to this log.
    pub fn write(&self, bufs: &mut [IoSlice<'_>]) -> (io::Result<()>, bool) {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.preallocate(self.size() + len as u64);
        let res = write_all_vectored(&self.file, bufs);
        if res.is_err() {
            // The truncation also gives back the reservation: try again next time.
            self.preallocated.store(0, Ordering::Relaxed);
            let rolled_back = self.file.set_len(self.size()).is_ok();
            return (res, rolled_back);
        }
        (res, true)
    }

    /// Reserves blocks past `end` once a write would pass the reserved range: as many as `end`
    /// bytes, at least `PREALLOCATE_MIN` and at most `PREALLOCATE_STEP`. Best effort: a
    /// failure only means the write allocates as usual, and the next attempt waits for the
    /// next step.
    fn preallocate(&self, end: u64) {
        let reserved = self.preallocated.load(Ordering::Relaxed);
        if end <= reserved {
            return;
        }
        let from = self.size();
        let to = end + end.clamp(PREALLOCATE_MIN, PREALLOCATE_STEP);
        self.preallocated.store(to, Ordering::Relaxed);
        if let Err(e) = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            from,
            to - from,
        ) {
            tracing::debug!(path = %self.log_path.display(), error = %e,
                "could not reserve blocks ahead of the writer");
        }
    }

    /// Gives back the blocks reserved past the end of the data (also those an earlier
    /// process reserved: the reservation is not recorded anywhere).
    pub fn trim_preallocation(&self) -> Result<()> {
        self.preallocated.store(0, Ordering::Relaxed);
        self.file
            .set_len(self.size())
            .map_err(|e| Error::io("trim segment", &self.log_path, e))
    }

    /// Publishes a completed write: readers may now read up to `size`.
    pub fn publish(&self, size: u64, next_offset: u64, max_ts: i64, append_time: i64) {
        if self.first_append_time.load(Ordering::Relaxed) == i64::MIN {
            self.first_append_time.store(append_time, Ordering::Release);
        }
        self.max_timestamp.fetch_max(max_ts, Ordering::AcqRel);
        self.next_offset.store(next_offset, Ordering::Release);
        self.size.store(size, Ordering::Release);
    }

    /// fdatasync of the `.log` file.
    pub fn sync(&self) -> Result<()> {
        #[cfg(test)]
        if fault::FAIL_NEXT_FSYNC.with(|f| f.replace(false)) {
            let e = io::Error::from_raw_os_error(5); // EIO
            return Err(Error::io("fsync segment", &self.log_path, e));
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync segment", &self.log_path, e))
    }

    /// Drops from the page cache the pages more than `window` bytes behind `synced`, a size
    /// known to be on disk (so the pages are clean and dropping them loses nothing), at
    /// least [`DROP_STEP`] at a time. Advice only: a failure is logged, never returned, and
    /// a later read simply comes from disk.
    pub fn drop_behind(&self, synced: u64, window: u64) {
        let upto = synced.saturating_sub(window) & !(PAGE_BYTES - 1);
        let from = self.dropped.load(Ordering::Relaxed);
        if upto < from + DROP_STEP {
            return;
        }
        self.dropped.store(upto, Ordering::Relaxed);
        if let Err(e) = rustix::fs::fadvise(
            &self.file,
            from,
            std::num::NonZeroU64::new(upto - from),
            rustix::fs::Advice::DontNeed,
        ) {
            tracing::debug!(path = %self.log_path.display(), error = %e,
                "could not drop pages behind the cache window");
        }
    }

    /// Makes the index files' preallocated size durable, once. After a power cut, the index
    /// files of a segment that has a successor are then either trimmed by its seal or still
    /// preallocated, never missing or short: how recovery tells a seal the cut interrupted
    /// (the data may be torn) from damage (the data was complete). [`Log::finish_roll`] does
    /// it for the segment a roll created; the roll that gives the segment a successor does it
    /// first if that has not happened yet.
    ///
    /// [`Log::finish_roll`]: crate::Log::finish_roll
    pub fn sync_index_files(&self) -> Result<()> {
        if self.index_files_synced.load(Ordering::Acquire) {
            return Ok(());
        }
        for path in [&self.index_path, &self.time_index_path] {
            File::open(path)
                .and_then(|f| f.sync_data())
                .map_err(|e| Error::io("fsync index", path, e))?;
        }
        self.index_files_synced.store(true, Ordering::Release);
        Ok(())
    }

    /// fdatasync of the active indexes (before a clean close).
    pub fn flush_indexes(&self) -> Result<()> {
        let idx = self.indexes();
        idx.offset.flush()?;
        idx.time.flush()
    }

    /// Seals the segment: fsync the log, record its largest timestamp in the time index, trim
    /// and fsync the time index, then the offset index (whose trimmed shape marks the segment
    /// sealed on disk). Idempotent; concurrent calls seal once.
    pub fn seal(&self) -> Result<()> {
        let _sealing = crate::log::lock(&self.seal_lock);
        if self.is_sealed() {
            return Ok(());
        }
        self.sync()?;
        self.trim_preallocation()?;
        let mut idx = self.indexes();
        let max_ts = self.max_timestamp();
        let next = self.next_offset();
        if next > self.base_offset && idx.time.last().is_none_or(|e| e.timestamp < max_ts) {
            // Offsets in a segment fit in u32 (the log rolls before they would not).
            let rel = (next - 1 - self.base_offset) as u32;
            let rel = idx.time.last().map_or(rel, |e| rel.max(e.relative_offset));
            let entry = TimeEntry {
                timestamp: max_ts,
                relative_offset: rel,
            };
            if let Err(e) = idx.time.push(entry) {
                // Retention then goes by the last entry written: a little earlier than the truth.
                warn!(error = %e, "final time index entry not written");
            }
        }
        idx.time.seal()?;
        idx.offset.seal()?;
        self.sealed.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads exactly `len` bytes at `pos`.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        // Read into the vector's spare capacity: no zeroing of a buffer that is overwritten
        // at once (the memset was 4% of the broker's catch-up read profile).
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let at = pos + buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(Error::io("read segment", &self.log_path, e));
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("read segment", &self.log_path, e.into())),
            }
        }
        // The capacity may exceed `len`; bytes past it are not part of this read.
        buf.truncate(len);
        Ok(Bytes::from(buf))
    }

    /// Reads and checks the shape of the batch header at `pos`, which must lie below `size`.
    fn header_at(&self, pos: u64, size: u64) -> Result<BatchHeader> {
        let corrupt = |reason: String| Error::CorruptSegment {
            path: self.log_path.clone(),
            position: pos,
            reason,
        };
        if pos + HEADER_LEN as u64 > size {
            return Err(corrupt(format!(
                "batch header runs past the readable end {size}"
            )));
        }
        let mut buf = [0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| Error::io("read segment", &self.log_path, e))?;
        let header = BatchHeader::decode(&buf)?;
        if header.total_len() < HEADER_LEN || pos + header.total_len() as u64 > size {
            return Err(corrupt(format!(
                "batch_length {} does not fit the segment's {size} bytes",
                header.batch_length
            )));
        }
        Ok(header)
    }

    /// Finds the batch containing `offset`: its position and header. `None` if the segment
    /// (up to `size`) ends before it.
    fn locate(&self, offset: u64, size: u64) -> Result<Option<(u64, BatchHeader)>> {
        let rel = u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        let entry = self
            .indexes()
            .offset
            .last_where(|e| e.relative_offset <= rel);
        let mut pos = entry.map_or(0, |e| u64::from(e.position));
        // A sealed index is checked only for its shape at open: make sure the entry points at
        // the batch it names, or a damaged entry would silently skip or repeat batches.
        let mut expected = entry.map(|e| self.base_offset + u64::from(e.relative_offset));
        while pos < size {
            let header = self.header_at(pos, size)?;
            if let Some(expected) = expected.take()
                && header.base_offset != expected
            {
                return Err(Error::CorruptSegment {
                    path: self.index_path.clone(),
                    position: 0,
                    reason: format!(
                        "entry for offset {expected} points at byte {pos} of the segment, where \
                         the batch at offset {} starts",
                        header.base_offset
                    ),
                });
            }
            if header.next_offset() > offset {
                return Ok(Some((pos, header)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Byte position of the batch containing `offset`, or the readable end if none does.
    pub fn position_of(&self, offset: u64) -> Result<u64> {
        let size = self.size();
        Ok(self.locate(offset, size)?.map_or(size, |(pos, _)| pos))
    }

    /// Reads whole batches starting with the one that contains `offset`, about `max_bytes`
    /// of them, the first batch whole even if it is larger, unless it is larger than
    /// `first_max`: then it is located, not read. `None` if the segment has nothing at or
    /// after `offset`.
    pub fn read_bounded(
        &self,
        offset: u64,
        max_bytes: usize,
        first_max: usize,
    ) -> Result<Option<Bounded>> {
        let size = self.size();
        let Some((position, header)) = self.locate(offset, size)? else {
            return Ok(None);
        };
        if header.total_len() > first_max {
            return Ok(Some(Bounded::Large { position, header }));
        }
        let available = (size - position) as usize;
        let want = max_bytes.min(available).max(header.total_len());
        Ok(Some(Bounded::Read(SegmentRead::split(
            self.read_at(position, want)?,
            offset,
        ))))
    }

    /// The first offset whose record timestamp is at or after `timestamp`, or `None` if every
    /// record in the segment is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        if self.max_timestamp() < timestamp {
            return Ok(None);
        }
        let size = self.size();
        let start_rel = self
            .indexes()
            .time
            .last_where(|e| e.timestamp < timestamp)
            .map_or(0, |e| e.relative_offset);
        let Some((mut pos, _)) = self.locate(self.base_offset + u64::from(start_rel), size)? else {
            return Ok(None);
        };
        while pos < size {
            let header = self.header_at(pos, size)?;
            if header.effective_max_timestamp() >= timestamp {
                return self
                    .first_record_at_or_after(pos, &header, timestamp)
                    .map(Some);
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Within an uncompressed batch, the offset of the first record at or after `timestamp`;
    /// for a compressed one (whose records the storage engine never decodes), its base offset.
    fn first_record_at_or_after(&self, pos: u64, header: &BatchHeader, ts: i64) -> Result<u64> {
        if header.compression() != Some(Compression::None)
            || header.timestamp_type() == batch::TimestampType::LogAppendTime
        {
            return Ok(header.base_offset);
        }
        let bytes = self.read_at(pos, header.total_len())?;
        for record in Records::new(bytes.slice(HEADER_LEN..), header) {
            match record {
                Ok(r) if r.timestamp >= ts => return Ok(r.offset),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(header.base_offset)
    }

    /// Checks that the indexes agree with the batches: every offset index entry points at
    /// the start of the batch with its relative offset, both indexes strictly increase, and
    /// no time entry claims a timestamp above the segment's largest.
    pub fn verify_indexes(&self) -> Result<()> {
        let size = self.size();
        let corrupt = |reason: String| Error::CorruptSegment {
            path: self.index_path.clone(),
            position: 0,
            reason,
        };
        let mut starts = std::collections::HashMap::new();
        let mut pos = 0;
        while pos < size {
            let h = self.header_at(pos, size)?;
            starts.insert(pos, h.base_offset - self.base_offset);
            pos += h.total_len() as u64;
        }
        let idx = self.indexes();
        let mut prev: Option<OffsetEntry> = None;
        for e in idx.offset.entries() {
            if starts.get(&u64::from(e.position)) != Some(&u64::from(e.relative_offset)) {
                return Err(corrupt(format!("offset entry {e:?} is not a batch start")));
            }
            if prev.is_some_and(|p| p.relative_offset >= e.relative_offset) {
                return Err(corrupt(format!("offset entry {e:?} does not increase")));
            }
            prev = Some(e);
        }
        let mut prev: Option<TimeEntry> = None;
        for e in idx.time.entries() {
            let increases = prev.is_none_or(|p| {
                p.timestamp < e.timestamp && p.relative_offset <= e.relative_offset
            });
            if !increases || e.timestamp > self.max_timestamp() {
                return Err(corrupt(format!("time entry {e:?} out of order")));
            }
            prev = Some(e);
        }
        Ok(())
    }

    /// Reads the batches from `from_pos` to the end of the file in order, checking each one
    /// (offsets, CRC, layout), and calls `on_batch` with the position and header of every
    /// valid one. Stops at the first batch that is torn or fails a check.
    pub fn scan(
        path: &Path,
        from_pos: u64,
        expected_next: u64,
        mut on_batch: impl FnMut(u64, &BatchHeader),
    ) -> Result<ScanOutcome> {
        let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat segment", path, e))?
            .len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        if from_pos > 0 {
            io::Seek::seek(&mut reader, io::SeekFrom::Start(from_pos))
                .map_err(|e| Error::io("seek segment", path, e))?;
        }
        let mut out = ScanOutcome {
            valid_len: from_pos,
            next_offset: expected_next,
            max_timestamp: i64::MIN,
            first_append_time: i64::MIN,
            stopped: None,
        };
        let mut buf = vec![0u8; HEADER_LEN];
        let mut pos = from_pos;
        while pos < file_len {
            let stop = |why: String| Some(format!("at byte {pos}: {why}"));
            if file_len - pos < HEADER_LEN as u64 {
                out.stopped = stop(format!(
                    "{} bytes, less than a batch header",
                    file_len - pos
                ));
                break;
            }
            buf.resize(HEADER_LEN, 0);
            reader
                .read_exact(&mut buf)
                .map_err(|e| Error::io("read segment", path, e))?;
            let header = BatchHeader::decode(&buf)?;
            let total = header.total_len() as u64;
            if total < HEADER_LEN as u64 || pos + total > file_len {
                out.stopped = stop(format!("batch of {total} bytes runs past the end"));
                break;
            }
            if header.base_offset != out.next_offset {
                out.stopped = stop(format!(
                    "base offset {} where {} was expected",
                    header.base_offset, out.next_offset
                ));
                break;
            }
            buf.resize(total as usize, 0);
            reader
                .read_exact(&mut buf[HEADER_LEN..])
                .map_err(|e| Error::io("read segment", path, e))?;
            if let Err(e) = batch::validate_stored(&buf, &header) {
                out.stopped = stop(e.to_string());
                break;
            }
            on_batch(pos, &header);
            if out.first_append_time == i64::MIN && pos == 0 {
                out.first_append_time = header.append_time;
            }
            out.max_timestamp = out.max_timestamp.max(header.effective_max_timestamp());
            out.next_offset = header.next_offset();
            pos += total;
            out.valid_len = pos;
        }
        Ok(out)
    }

    /// Reads only the header of each batch from `from_pos` to `end` (a position the segment
    /// was opened or recovered with, so every batch before it is whole), one `pread` per
    /// batch: what the producer state needs, without reading the records.
    pub fn scan_headers(
        path: &Path,
        from_pos: u64,
        end: u64,
        mut on_batch: impl FnMut(&BatchHeader),
    ) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
        let mut buf = [0u8; HEADER_LEN];
        let mut pos = from_pos;
        while pos + HEADER_LEN as u64 <= end {
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| Error::io("read segment", path, e))?;
            let header = BatchHeader::decode(&buf)?;
            if header.total_len() < HEADER_LEN {
                return Err(Error::CorruptSegment {
                    path: path.to_path_buf(),
                    position: pos,
                    reason: format!("batch of {} bytes", header.total_len()),
                });
            }
            on_batch(&header);
            pos += header.total_len() as u64;
        }
        Ok(())
    }

    /// Truncates the `.log` file to `len` bytes and fsyncs it (recovery only, before the
    /// segment is shared).
    pub fn truncate_file(path: &Path, len: u64) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        file.set_len(len)
            .map_err(|e| Error::io("truncate segment", path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync segment", path, e))
    }

    /// Reads the `append_time` of the batch at position 0, if there is one.
    pub fn read_first_append_time(path: &Path) -> Result<Option<i64>> {
        let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
        let mut buf = [0u8; LENGTH_PREFIX_LEN + 8];
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[12..20]);
                Ok(Some(i64::from_le_bytes(t)))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(Error::io("read segment", path, e)),
        }
    }
}

/// Fault injection for unit tests: the kernel's fsync errors cannot be provoked portably.
#[cfg(test)]
pub(crate) mod fault {
    thread_local! {
        /// Makes this thread's next segment fsync fail with EIO.
        pub static FAIL_NEXT_FSYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}

/// `write_all` for a list of buffers: one `writev` per call where the kernel takes it all.
fn write_all_vectored(mut file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_twenty_digits() {
        assert_eq!(file_stem(42), "00000000000000000042");
        assert_eq!(
            parse_file_name("00000000000000000042.log"),
            Some((42, "log"))
        );
        assert_eq!(
            parse_file_name("00000000000000000042.timeindex"),
            Some((42, "timeindex"))
        );
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name(".clean-shutdown"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log"), None);
    }
}
