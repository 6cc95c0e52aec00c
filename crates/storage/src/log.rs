//! The partition log: an ordered set of segments with one writer and many readers.
//!
//! Concurrency: appends take the writer lock only for the `writev` and the index update;
//! fsync happens outside it (group commit, `sync.rs`). Readers take no lock held by the
//! writer: they load the published end offset and a snapshot of the segment set
//! (`segments.rs`) and read with `pread` up to each segment's published size. Retention
//! (`retention.rs`) deletes from the front of the set.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use crate::batch::{self, BatchHeader, REWRITTEN_LEN, TimestampType};
use crate::config::{Durability, LogConfig};
use crate::env::{LogEnv, Repair};
use crate::error::{Error, Result};
use crate::producer::{self, ProducerStates, Undo, Verdict};
use crate::recovery::{self, DirSync};
use crate::segment::Segment;
use crate::segments::{BoundedRead, ReadResult, SegmentSet};
use crate::sync::SyncState;

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The base offset of each batch, in order: newly assigned, or for a duplicate (a
    /// retry of an idempotent producer's batch already in the log) the original one.
    pub base_offsets: Vec<u64>,
    /// For each batch, whether it was a duplicate and so not written again.
    pub duplicates: Vec<bool>,
    /// For each batch, the broker time stamped into its `append_time` (ms since the epoch);
    /// for a duplicate, the original's.
    pub append_times: Vec<i64>,
    /// The log end offset after the append: one past the last appended record.
    pub next_offset: u64,
}

/// The writer's state, under the writer lock.
pub(crate) struct Writer {
    pub active: Arc<Segment>,
    pub next_offset: u64,
    /// Segments rolled since the last completed group fsync.
    pub unsynced: Vec<Arc<Segment>>,
    /// A segment file was created since the last directory fsync.
    pub dir_dirty: bool,
    closed: bool,
    producers: ProducerStates,
}

/// A roll done under the writer lock, to be finished outside it.
struct Rolled {
    old: Arc<Segment>,
    new: Arc<Segment>,
    new_base: u64,
    snapshot: Vec<u8>,
}

/// The rest of a roll that [`Log::write_batches_deferring_roll`] did not wait for: the
/// producer snapshot at the new segment's base, the old segment's seal (an fsync of up to a
/// whole segment) and the directory fsync. Until [`Log::finish_roll`] runs, the old segment
/// is an unsealed segment that is not the last: appends go on, retention leaves it alone, a
/// durable wait fsyncs it, and recovery after a crash checks and seals it like any unsealed
/// segment.
#[must_use = "a roll left unfinished leaves its old segment unsealed until the log closes"]
pub struct PendingRoll(Rolled);

impl std::fmt::Debug for PendingRoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRoll")
            .field("sealing", &self.0.old.log_path)
            .field("new_base", &self.0.new_base)
            .finish()
    }
}

/// How long `try_write_batches` tries for a writer lock that another thread holds. Another
/// small append holds it for a few microseconds; a roll or a large write holds it for
/// milliseconds, and the caller falls back to `write_batches` in a blocking context.
const TRY_WRITE_WAIT: Duration = Duration::from_micros(20);

/// One partition's log. Share it behind an `Arc`; every method takes `&self`.
pub struct Log {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    pub(crate) env: LogEnv,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) segments: SegmentSet,
    end_offset: AtomicU64,
    pub(crate) sync: Mutex<SyncState>,
    /// Every offset below this is on disk (mirrors `SyncState::synced_offset`).
    pub(crate) synced: AtomicU64,
    pub(crate) failed: AtomicBool,
    repairs: Vec<Repair>,
    reread_bytes: u64,
    /// The open changed the directory (`recovery::Opened::changed`).
    pub(crate) changed_at_open: bool,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("start_offset", &self.start_offset())
            .field("end_offset", &self.end_offset())
            .finish_non_exhaustive()
    }
}

/// Batches that passed validation, with what the roll check needs.
struct Checked {
    headers: Vec<BatchHeader>,
    bytes: u64,
    records: u64,
}

/// Locks a mutex, going on with the data if another thread panicked while holding it: every
/// structure guarded here is left consistent between statements that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Opens (or creates) the log in `dir` with the system clock and no observer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config, [`Error::CorruptSegment`] for damage in a
    /// sealed segment, [`Error::Io`] for filesystem errors.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self> {
        Self::open_with(dir, config, LogEnv::default())
    }

    /// Opens (or creates) the log in `dir`, recovering it if it was not closed cleanly.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with(dir: impl Into<PathBuf>, config: LogConfig, env: LogEnv) -> Result<Self> {
        Self::open_in(dir.into(), config, env, DirSync::Now)
    }

    /// Opens the log; with [`DirSync::Deferred`] the caller makes the directory changes
    /// durable with one filesystem sync before it appends ([`open_logs`](crate::open_logs)).
    pub(crate) fn open_in(
        dir: PathBuf,
        config: LogConfig,
        env: LogEnv,
        dir_sync: DirSync,
    ) -> Result<Self> {
        config.validate()?;
        let opened = recovery::open(&dir, &config, &env, dir_sync)?;
        let segments = opened.segments;
        // `recovery::open` always returns at least one segment.
        let active = segments
            .last()
            .cloned()
            .ok_or_else(|| Error::CorruptSegment {
                path: dir.clone(),
                position: 0,
                reason: "no segment after open".into(),
            })?;
        let end = active.next_offset();
        let producers = ProducerStates::rebuild(&dir, &segments, end)?;
        Ok(Log {
            writer: Mutex::new(Writer {
                active,
                next_offset: end,
                unsynced: Vec::new(),
                dir_dirty: false,
                closed: false,
                producers,
            }),
            segments: SegmentSet::new(segments),
            end_offset: AtomicU64::new(end),
            sync: Mutex::new(SyncState::new(end)),
            synced: AtomicU64::new(end),
            failed: AtomicBool::new(false),
            repairs: opened.repairs,
            reread_bytes: opened.reread_bytes,
            changed_at_open: opened.changed,
            dir,
            config: RwLock::new(config),
            env,
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Repairs made when the log was opened (empty after a clean shutdown).
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the configuration; takes effect from the next append, roll or retention run.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `config` does not validate; the old one stays.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.segments.start_offset()
    }

    /// Offset the next appended record will get.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.size_bytes()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments.snapshot().len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.segments
            .snapshot()
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    /// True after a failed write or fsync: appends are refused until the log is reopened.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Checks every segment's indexes against its batches (reads all the data: a tool for
    /// tests and operators, not for the hot path).
    ///
    /// # Errors
    /// [`Error::CorruptSegment`] naming the first disagreement.
    pub fn verify_indexes(&self) -> Result<()> {
        self.segments
            .snapshot()
            .iter()
            .try_for_each(|s| s.verify_indexes())
    }

    /// Appends one batch, waiting for fsync if the durability policy is `always`.
    ///
    /// # Errors
    /// As [`Log::append_batches`].
    pub fn append(&self, batch: Bytes) -> Result<Appended> {
        self.append_batches(std::slice::from_ref(&batch))
    }

    /// Appends batches in order, waiting for fsync if the durability policy is `always`
    /// (concurrent appenders share one fsync).
    ///
    /// # Errors
    /// A batch error ([`Error::Batch`]: too large, CRC mismatch, malformed, unknown version)
    /// rejects all batches and writes nothing. [`Error::DiskFull`] or [`Error::Io`] from the write leaves the log as it was;
    /// an fsync error makes the log refuse further appends ([`Error::LogFailed`]).
    pub fn append_batches(&self, batches: &[Bytes]) -> Result<Appended> {
        let appended = self.write_batches(batches)?;
        if self.config().durability == Durability::Always {
            self.sync_to(appended.next_offset)?;
        }
        Ok(appended)
    }

    /// Validates and writes batches without waiting for fsync, whatever the policy. Pair it
    /// with [`Log::sync_to`] to wait for durability without holding anything meanwhile.
    ///
    /// # Errors
    /// As [`Log::append_batches`].
    pub fn write_batches(&self, batches: &[Bytes]) -> Result<Appended> {
        let (appended, roll) = self.write_batches_deferring_roll(batches)?;
        if let Some(roll) = roll {
            self.finish_roll(roll)?;
        }
        Ok(appended)
    }

    /// [`Log::write_batches`] that returns, rather than waits for, the rest of a roll it
    /// made: sealing the old segment fsyncs it, which on a busy disk takes as long as writing
    /// a whole segment, and the append does not need it. The caller finishes the roll with
    /// [`Log::finish_roll`], on any thread, now or later ([`Log::finish_roll_in_background`]).
    ///
    /// # Errors
    /// As [`Log::write_batches`]; a roll made before the write failed is finished first.
    pub fn write_batches_deferring_roll(
        &self,
        batches: &[Bytes],
    ) -> Result<(Appended, Option<PendingRoll>)> {
        let checked = self.check_batches(batches)?;
        let mut w = lock(&self.writer);
        self.check_writable(&w)?;
        let config = self.config();
        let now = self.env.clock.now_ms();
        let rolled = if self.should_roll(&w, checked.bytes, checked.records, now, &config) {
            Some(self.roll(&mut w, &config)?)
        } else {
            None
        };
        match self.write_locked(w, batches, &checked.headers, now, &config) {
            Ok(appended) => Ok((appended, rolled.map(PendingRoll))),
            Err(e) => {
                if let Some(rolled) = rolled {
                    self.finish_roll(PendingRoll(rolled))?;
                }
                Err(e)
            }
        }
    }

    /// Finishes a roll outside the writer lock: writes the producer snapshot taken at the
    /// roll, seals the old segment and makes the new segment's directory entry durable.
    /// Blocking (fsyncs).
    ///
    /// A snapshot that cannot be written (a write error, a full disk) is logged and left out:
    /// it only spares recovery a replay, and without it the producer state is rebuilt from
    /// the snapshot before and the batches after it, so the log goes on taking appends.
    ///
    /// # Errors
    /// The I/O error of the seal; the log then refuses appends until reopened
    /// ([`Error::LogFailed`]).
    pub fn finish_roll(&self, roll: PendingRoll) -> Result<()> {
        let rolled = roll.0;
        if let Err(e) = producer::write_snapshot(&self.dir, rolled.new_base, &rolled.snapshot, true)
        {
            warn!(path = %self.dir.display(), offset = rolled.new_base, error = %e,
                "producer snapshot not written; recovery replays from the one before");
        }
        let result = rolled
            .new
            .sync_index_files()
            .and_then(|()| rolled.old.seal())
            .and_then(|()| recovery::sync_dir(&self.dir));
        if let Err(e) = &result {
            self.fail();
            error!(path = %rolled.old.log_path.display(), error = %e,
                "sealing a segment failed; log refuses appends until reopened");
        }
        result
    }

    /// Hands [`Log::finish_roll`] to the log's [`Spawner`](crate::Spawner); a failure is
    /// logged and fails the log, as there.
    pub fn finish_roll_in_background(self: &Arc<Self>, roll: PendingRoll) {
        let log = self.clone();
        self.env.spawner.spawn(Box::new(move || {
            // finish_roll logs the error and fails the log.
            let _ = log.finish_roll(roll);
        }));
    }

    /// [`Log::write_batches`] for a caller that must not wait: `None`, with nothing done,
    /// when another thread holds the writer lock for longer than `TRY_WRITE_WAIT` (20 µs;
    /// the caller yields meanwhile) or when the append would roll to a new segment (sealing
    /// the old one fsyncs it). Otherwise the batches are validated and written to the page
    /// cache like [`Log::write_batches`] does, with the same result.
    /// Meant for small appends on an async runtime's thread, falling back to
    /// `write_batches` in a blocking context on `None`.
    pub fn try_write_batches(&self, batches: &[Bytes]) -> Option<Result<Appended>> {
        let checked = match self.check_batches(batches) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let mut deadline = None;
        let w = loop {
            match self.writer.try_lock() {
                Ok(w) => break w,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    let now = Instant::now();
                    if now >= *deadline.get_or_insert(now + TRY_WRITE_WAIT) {
                        return None;
                    }
                    std::thread::yield_now();
                }
            }
        };
        if let Err(e) = self.check_writable(&w) {
            return Some(Err(e));
        }
        let config = self.config();
        let now = self.env.clock.now_ms();
        if self.should_roll(&w, checked.bytes, checked.records, now, &config) {
            return None;
        }
        Some(self.write_locked(w, batches, &checked.headers, now, &config))
    }

    /// Validates every batch before anything is locked or written.
    fn check_batches(&self, batches: &[Bytes]) -> Result<Checked> {
        if batches.is_empty() {
            return Err(Error::malformed(
                "batches",
                "at least one batch is required",
            ));
        }
        let max = self.config().max_batch_bytes as usize;
        let headers = batches
            .iter()
            .map(|b| batch::validate(b, max))
            .collect::<Result<Vec<BatchHeader>, _>>()?;
        Ok(Checked {
            bytes: batches.iter().map(|b| b.len() as u64).sum(),
            records: headers.iter().map(|h| u64::from(h.record_count)).sum(),
            headers,
        })
    }

    /// Refuses appends to a closed or failed log.
    fn check_writable(&self, w: &Writer) -> Result<()> {
        if w.closed {
            return Err(Error::Closed {
                path: self.dir.clone(),
            });
        }
        if self.has_failed() {
            return Err(Error::LogFailed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Assigns offsets (or recognises retries), writes the batches to the active segment and
    /// publishes them, under the writer lock it is given; the caller has rolled if needed.
    fn write_locked(
        &self,
        mut w: MutexGuard<'_, Writer>,
        batches: &[Bytes],
        headers: &[BatchHeader],
        now: i64,
        config: &LogConfig,
    ) -> Result<Appended> {
        // Idempotence: decide per batch, before anything is written.
        let mut undo = Undo::new();
        let mut base_offsets = Vec::with_capacity(batches.len());
        let mut duplicates = Vec::with_capacity(batches.len());
        let mut append_times = Vec::with_capacity(batches.len());
        let mut offset = w.next_offset;
        for h in headers {
            match w.producers.apply(h, offset, now, &mut undo) {
                Ok(Verdict::Append) => {
                    base_offsets.push(offset);
                    duplicates.push(false);
                    append_times.push(now);
                    offset += u64::from(h.record_count);
                }
                Ok(Verdict::Duplicate {
                    base_offset,
                    append_time,
                }) => {
                    base_offsets.push(base_offset);
                    duplicates.push(true);
                    append_times.push(append_time);
                }
                Err(e) => {
                    w.producers.revert(undo);
                    return Err(e);
                }
            }
        }
        if offset == w.next_offset {
            // Every batch was a retry of one already in the log.
            return Ok(Appended {
                base_offsets,
                duplicates,
                append_times,
                next_offset: offset,
            });
        }

        let segment = w.active.clone();

        let mut prefixes = Vec::with_capacity(batches.len());
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for ((h, base), dup) in headers.iter().zip(&base_offsets).zip(&duplicates) {
            if !dup {
                prefixes.push(batch::rewritten_prefix(h, *base, now));
            }
        }
        let fresh = batches
            .iter()
            .zip(&duplicates)
            .filter(|(_, d)| !**d)
            .map(|(b, _)| b);
        for (prefix, b) in prefixes.iter().zip(fresh) {
            slices.push(IoSlice::new(prefix));
            slices.push(IoSlice::new(&b[REWRITTEN_LEN..]));
        }
        let (written, rolled_back) = segment.write(&mut slices);
        if let Err(e) = written {
            w.producers.revert(undo);
            if !rolled_back {
                self.fail();
                error!(path = %segment.log_path.display(), error = %e,
                    "append failed and could not be rolled back; log refuses appends until reopened");
            }
            return Err(Error::io("write segment", &segment.log_path, e));
        }

        let start_pos = segment.size();
        let mut pos = start_pos;
        let mut max_ts = i64::MIN;
        {
            let interval = u64::from(config.index_interval_bytes);
            let mut idx = segment.indexes();
            for ((h, base), dup) in headers.iter().zip(&base_offsets).zip(&duplicates) {
                if *dup {
                    continue;
                }
                let ts = match h.timestamp_type() {
                    TimestampType::LogAppendTime => now,
                    TimestampType::CreateTime => h.max_timestamp,
                };
                max_ts = max_ts.max(ts);
                // The roll check keeps offsets within a segment below u32::MAX.
                let rel = (base - segment.base_offset) as u32;
                idx.on_batch(pos, rel, h.total_len() as u64, ts, interval);
                pos += h.total_len() as u64;
            }
        }
        segment.publish(pos, offset, max_ts, now);
        w.next_offset = offset;
        self.end_offset.store(offset, Ordering::Release);
        drop(w);
        Ok(Appended {
            base_offsets,
            duplicates,
            append_times,
            next_offset: offset,
        })
    }

    fn should_roll(
        &self,
        w: &Writer,
        bytes: u64,
        records: u64,
        now: i64,
        config: &LogConfig,
    ) -> bool {
        let active = &w.active;
        let size = active.size();
        if size == 0 {
            return false;
        }
        let too_big = size + bytes > config.segment_bytes;
        let too_old = match (config.segment_age, active.first_append_time()) {
            (Some(age), Some(first)) => {
                now.saturating_sub(first) >= i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
            }
            _ => false,
        };
        let offsets_full = w.next_offset + records - active.base_offset > u64::from(u32::MAX);
        too_big || too_old || offsets_full || !active.indexes().has_room()
    }

    fn roll(&self, w: &mut Writer, config: &LogConfig) -> Result<Rolled> {
        let new_base = w.next_offset;
        // Before the old segment can have a successor on disk (normally done already by the
        // finish of the roll that created it).
        w.active.sync_index_files()?;
        let new = Arc::new(Segment::create(
            &self.dir,
            new_base,
            config.max_index_bytes,
        )?);
        let old = std::mem::replace(&mut w.active, new.clone());
        w.unsynced.push(old.clone());
        w.dir_dirty = true;
        let mut segments = (*self.segments.snapshot()).clone();
        segments.push(new.clone());
        self.segments.publish(segments);
        let snapshot = self.producer_snapshot(w, config);
        info!(path = %self.dir.display(), base_offset = new_base, "rolled to a new segment");
        Ok(Rolled {
            old,
            new,
            new_base,
            snapshot,
        })
    }

    /// Forgets expired producers and encodes the producer state as of the log end.
    fn producer_snapshot(&self, w: &mut Writer, config: &LogConfig) -> Vec<u8> {
        let expiry = i64::try_from(config.producer_expiry.as_millis()).unwrap_or(i64::MAX);
        w.producers
            .expire(self.env.clock.now_ms().saturating_sub(expiry));
        w.producers.encode(w.next_offset)
    }

    /// Closes the log cleanly: refuses further appends, fsyncs all data, seals rolled segments,
    /// flushes the active indexes and writes the clean-shutdown marker, so the next open reads
    /// nothing but the tail after the last index entry.
    ///
    /// # Errors
    /// [`Error::LogFailed`] if the log had failed (no marker is written, so the next open
    /// recovers), or the fsync's error.
    pub fn close(&self) -> Result<()> {
        if self.prepare_close(DirSync::Now)? {
            self.write_clean_marker(DirSync::Now)?;
        }
        Ok(())
    }

    /// Refuses further appends and puts the log in the shape the clean-shutdown marker
    /// promises: a producer snapshot at the end, sealed segments sealed, and with
    /// [`DirSync::Now`] everything fsynced. With
    /// [`DirSync::Deferred`] nothing is fsynced: the caller syncs the filesystem before it
    /// writes the marker ([`close_logs`](crate::close_logs)). False if it was closed already.
    pub(crate) fn prepare_close(&self, dir_sync: DirSync) -> Result<bool> {
        let (end, snapshot) = {
            let mut w = lock(&self.writer);
            if w.closed {
                return Ok(false);
            }
            w.closed = true;
            let config = self.config();
            (w.next_offset, self.producer_snapshot(&mut w, &config))
        };
        if dir_sync == DirSync::Now {
            self.sync_to(end)?;
        } else if self.has_failed() {
            return Err(Error::LogFailed {
                path: self.dir.clone(),
            });
        }
        producer::write_snapshot(&self.dir, end, &snapshot, dir_sync == DirSync::Now)?;
        let segments = self.segments.snapshot();
        if let Some((active, sealed)) = segments.split_last() {
            for s in sealed {
                s.seal()?;
            }
            if dir_sync == DirSync::Now {
                active.flush_indexes()?;
            }
            // The active segment keeps its block reservation for the next open (module docs
            // of `segment.rs`).
        }
        Ok(true)
    }

    /// Writes the clean-shutdown marker, durably with [`DirSync::Now`]; with
    /// [`DirSync::Deferred`] the caller syncs the filesystem afterwards.
    pub(crate) fn write_clean_marker(&self, dir_sync: DirSync) -> Result<()> {
        recovery::mark_clean(&self.dir, dir_sync == DirSync::Now)?;
        debug!(path = %self.dir.display(), end_offset = self.end_offset(), "closed log");
        Ok(())
    }

    /// Fails the log after a write or fsync error: appends are refused, and the next open
    /// rereads what the failure may have left instead of trusting the page cache.
    pub(crate) fn fail(&self) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            self.env.observer.on_failed(&self.dir);
        }
        recovery::unmark_running(&self.dir);
    }

    /// Bytes of segment data read when the log was opened: the tails recovery checked, or
    /// the segments it rebuilt.
    pub fn reread_bytes(&self) -> u64 {
        self.reread_bytes
    }

    /// Closes the log and deletes its directory with everything in it.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be removed.
    pub fn delete(&self) -> Result<()> {
        lock(&self.writer).closed = true;
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io("delete log", &self.dir, e))
    }

    /// Reads whole batches starting with the one that contains `from`, up to about
    /// `max_bytes` (the first batch is returned whole even if larger, so a consumer never
    /// stalls on a big batch). Reading at the log end returns no batches.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] with the valid range if `from` is below the log start or
    /// past the log end; [`Error::CorruptSegment`] or [`Error::Io`] from the segment.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<ReadResult> {
        self.segments.read(from, max_bytes, self.end_offset())
    }

    /// [`Log::read`] for a reader that bounds what it holds: a first batch larger than
    /// `first_max` is not read but handed back as a [`LargeBatch`], which reads it in pieces.
    ///
    /// # Errors
    /// As [`Log::read`].
    pub fn read_bounded(
        &self,
        from: u64,
        max_bytes: usize,
        first_max: usize,
    ) -> Result<BoundedRead> {
        self.segments
            .read_bounded(from, max_bytes, first_max, self.end_offset())
    }

    /// The first offset whose record timestamp is at or after `timestamp` (ms), or `None` if
    /// every record is older. Under log-append time, batches are found by their append time.
    ///
    /// # Errors
    /// [`Error::CorruptSegment`] or [`Error::Io`] from the segment.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        self.segments.offset_for_timestamp(timestamp)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::batch::{BatchBuilder, Compression};
    use crate::testing::{batch, offsets_in, small, with_clock};
    use crate::{CLEAN_SHUTDOWN_MARKER, RUNNING_MARKER};

    #[test]
    fn appends_get_dense_offsets_and_read_back_whole_batches() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        let a = log
            .append_batches(&[batch(3, 10, 8), batch(2, 20, 8)])
            .unwrap();
        assert_eq!(a.base_offsets, vec![0, 3]);
        assert_eq!(a.next_offset, 5);
        assert_eq!(log.end_offset(), 5);

        // Offset 4 lies inside the second batch: the whole batch comes back.
        let r = log.read(4, 1 << 20).unwrap();
        assert_eq!(offsets_in(&r), vec![3, 4]);
        assert_eq!(r.next_offset, 5);
        // A max_bytes smaller than the first batch still returns that batch whole.
        let r = log.read(0, 1).unwrap();
        assert_eq!(offsets_in(&r), vec![0, 1, 2]);
        assert_eq!(r.next_offset, 3);
        // At the end: nothing; past it: out of range with the valid range.
        assert!(log.read(5, 100).unwrap().is_empty());
        assert!(matches!(
            log.read(6, 100),
            Err(Error::OffsetOutOfRange {
                requested: 6,
                log_start: 0,
                log_end: 5
            })
        ));
    }

    #[test]
    fn stored_batches_are_the_bytes_sent_with_offset_and_time_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = with_clock(dir.path(), small(), 1_234);
        log.append(batch(1, 1, 4)).unwrap();
        let mut b = BatchBuilder::new();
        b.push(None, Some(b"x"), &[], 7);
        let compressed = b.build_with(Compression::Lz4, b"not really lz4, stored as is");
        log.append(compressed.clone()).unwrap();
        let stored = log.read(1, 1 << 20).unwrap().batches[0].clone();
        assert_eq!(stored.len(), compressed.len());
        assert_eq!(&stored[REWRITTEN_LEN..], &compressed[REWRITTEN_LEN..]);
        let h = BatchHeader::decode(&stored).unwrap();
        assert_eq!((h.base_offset, h.append_time), (1, 1_234));
    }

    #[test]
    fn a_rejected_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        log.append(batch(2, 1, 4)).unwrap();
        let mut bad = batch(1, 1, 4).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = log
            .append_batches(&[batch(1, 1, 4), Bytes::from(bad)])
            .unwrap_err();
        assert!(
            matches!(err, Error::Batch(crate::batch::Error::CrcMismatch { .. })),
            "{err}"
        );
        let err = log.append(batch(100, 1, 100)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Batch(crate::batch::Error::BatchTooLarge { limit: 4096, .. })
            ),
            "{err}"
        );
        assert_eq!(log.end_offset(), 2);
        assert_eq!(log.size_bytes(), batch(2, 1, 4).len() as u64);
    }

    #[test]
    fn rolls_by_size_and_reads_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..40 {
            log.append(batch(2, i, 200)).unwrap();
        }
        assert!(log.segment_count() > 3, "{} segments", log.segment_count());
        let bases = log.segment_base_offsets();
        assert_eq!(bases[0], 0);
        let mut next = 0;
        while next < log.end_offset() {
            let r = log.read(next, 1000).unwrap();
            let offsets = offsets_in(&r);
            assert_eq!(offsets[0], next);
            next = r.next_offset;
        }
        log.verify_indexes().unwrap();
        // Sealed segments' files are trimmed indexes; the active one is preallocated.
        let sealed = dir.path().join(format!("{:020}.index", bases[1]));
        assert!(std::fs::metadata(sealed).unwrap().len() < 1024);
    }

    #[test]
    fn a_bounded_read_hands_a_large_batch_over_to_read_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        log.append(batch(2, 1, 100)).unwrap();
        log.append(batch(3, 2, 1000)).unwrap();
        for i in 0..20 {
            log.append(batch(2, i, 200)).unwrap();
        }
        let small_len = batch(2, 1, 100).len();

        // Batches within the bound are read as by read().
        let BoundedRead::Batches(read) = log.read_bounded(0, small_len, small_len).unwrap() else {
            panic!("the first batch fits");
        };
        assert_eq!(read, log.read(0, small_len).unwrap());
        // A first batch over max_bytes is read whole, as by read(); over first_max, it is
        // located, not read.
        let whole = log.read(2, 1).unwrap();
        assert_eq!(whole.batches.len(), 1);
        let BoundedRead::Batches(read) = log.read_bounded(2, 1, usize::MAX).unwrap() else {
            panic!("the second batch is within the bound");
        };
        assert_eq!(read, whole, "a first batch over max_bytes is read whole");
        let BoundedRead::Large(large) = log.read_bounded(2, 1, 1000).unwrap() else {
            panic!("the second batch is larger than 1000 bytes");
        };
        assert_eq!(large.len(), whole.batches[0].len());
        assert_eq!(
            (large.records, large.next_offset, large.log_end_offset),
            (3, 5, log.end_offset())
        );

        // Its pieces are the batch; reads past its end are empty; and it reads whole after
        // retention removed its segment.
        log.delete_before(log.end_offset() - 1).unwrap();
        assert!(log.start_offset() > 5, "retention removed the segment");
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < large.len() + 10 {
            let piece = large.read(at, 300).unwrap();
            assert!(piece.len() <= 300);
            pieces.extend_from_slice(&piece);
            at += 300;
        }
        assert_eq!(pieces, whole.batches[0]);
        assert!(large.read(large.len(), 10).unwrap().is_empty());
    }

    /// Appends 200-byte batches of 2 records until one rolls; returns its unfinished roll.
    fn append_until_a_deferred_roll(log: &Log) -> PendingRoll {
        for i in 0..100 {
            let (_, roll) = log
                .write_batches_deferring_roll(&[batch(2, i, 200)])
                .unwrap();
            if let Some(roll) = roll {
                return roll;
            }
        }
        panic!("no roll after 100 batches");
    }

    #[test]
    fn a_deferred_roll_leaves_the_old_segment_unsealed_and_out_of_retention_s_reach() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(1),
            ..small()
        };
        let log = Log::open(dir.path(), config).unwrap();
        let roll = append_until_a_deferred_roll(&log);
        // Appends go on meanwhile, and every record reads back.
        log.append(batch(2, 99, 200)).unwrap();
        assert_eq!(offsets_in(&log.read(0, 1 << 20).unwrap())[0], 0);
        let segments = log.segments.snapshot();
        assert_eq!(segments.len(), 2);
        assert!(!segments[0].is_sealed(), "sealing waits for finish_roll");
        let kept = log.enforce_retention().unwrap();
        assert_eq!(
            kept.segments_deleted, 0,
            "an unsealed segment is not deleted"
        );
        assert_eq!(log.start_offset(), 0);

        log.finish_roll(roll).unwrap();
        assert!(segments[0].is_sealed());
        let sealed = dir
            .path()
            .join(format!("{:020}.index", segments[0].base_offset));
        assert!(
            std::fs::metadata(sealed).unwrap().len() < 1024,
            "index trimmed"
        );
        let gone = log.enforce_retention().unwrap();
        assert_eq!(gone.segments_deleted, 1);
        assert_eq!(gone.log_start_offset, segments[1].base_offset);
    }

    #[test]
    fn a_roll_finished_after_the_log_closed_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), small()).unwrap());
        let roll = append_until_a_deferred_roll(&log);
        let end = log.end_offset();
        log.close().unwrap();
        // The close sealed the old segment; the late roll seals nothing twice.
        log.finish_roll(roll).unwrap();
        drop(log);
        let reopened = Log::open(dir.path(), small()).unwrap();
        assert!(reopened.repairs().is_empty(), "{:?}", reopened.repairs());
        assert_eq!(reopened.end_offset(), end);
        reopened.verify_indexes().unwrap();
    }

    #[test]
    fn a_roll_finished_in_the_background_seals_the_old_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), small()).unwrap());
        let roll = append_until_a_deferred_roll(&log);
        let old = log.segments.snapshot()[0].clone();
        log.finish_roll_in_background(roll);
        let started = std::time::Instant::now();
        while !old.is_sealed() {
            assert!(started.elapsed() < Duration::from_secs(30), "never sealed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!log.has_failed());
    }

    #[test]
    fn try_write_gives_up_on_a_held_writer_lock_and_never_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        let first = log.try_write_batches(&[batch(2, 0, 100)]).unwrap().unwrap();
        assert_eq!(first.base_offsets, vec![0]);
        assert_eq!(log.end_offset(), 2);

        // The writer lock held for longer than the short wait: refused, nothing written.
        let held = log.writer.lock().unwrap();
        assert!(log.try_write_batches(&[batch(1, 1, 100)]).is_none());
        drop(held);
        assert_eq!(log.end_offset(), 2);

        // A batch that is bad is reported, not refused.
        let mut bad = batch(1, 2, 100).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = log.try_write_batches(&[Bytes::from(bad)]).unwrap();
        assert!(matches!(e, Err(Error::Batch(_))), "{e:?}");

        // Fill the 4 KiB segment: the append that would roll is refused untouched, and
        // `write_batches` then rolls.
        while log.segment_count() == 1 {
            match log.try_write_batches(&[batch(1, 3, 300)]) {
                Some(r) => {
                    r.unwrap();
                }
                None => break,
            }
        }
        assert_eq!(log.segment_count(), 1, "try_write_batches never rolls");
        let end = log.end_offset();
        assert!(log.try_write_batches(&[batch(1, 3, 300)]).is_none());
        assert_eq!(log.end_offset(), end);
        let rolled = log.write_batches(&[batch(1, 3, 300)]).unwrap();
        assert_eq!(rolled.base_offsets, vec![end]);
        assert_eq!(log.segment_count(), 2);
        assert_eq!(log.segment_base_offsets()[1], end);
        log.verify_indexes().unwrap();
    }

    #[test]
    fn rolls_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_age: Some(Duration::from_secs(60)),
            ..small()
        };
        let (log, clock) = with_clock(dir.path(), config, 1_000_000);
        log.append(batch(1, 1, 4)).unwrap();
        clock.0.fetch_add(59_999, Ordering::SeqCst);
        log.append(batch(1, 1, 4)).unwrap();
        assert_eq!(log.segment_count(), 1);
        clock.0.fetch_add(1, Ordering::SeqCst);
        log.append(batch(1, 1, 4)).unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 2]);
    }

    #[test]
    fn offset_for_timestamp_finds_the_first_record_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..30 {
            // Batches of 3 records with timestamps 100*i, 100*i+1, 100*i+2.
            log.append(batch(3, 100 * i, 100)).unwrap();
        }
        assert_eq!(log.offset_for_timestamp(i64::MIN).unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1).unwrap(), Some(1));
        assert_eq!(log.offset_for_timestamp(1_502).unwrap(), Some(47));
        assert_eq!(log.offset_for_timestamp(1_503).unwrap(), Some(48));
        assert_eq!(log.offset_for_timestamp(2_902).unwrap(), Some(89));
        assert_eq!(log.offset_for_timestamp(2_903).unwrap(), None);
    }

    #[test]
    fn clean_close_makes_no_repairs_and_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..30 {
            log.append(batch(2, i, 100)).unwrap();
        }
        log.close().unwrap();
        assert!(matches!(
            log.append(batch(1, 1, 1)),
            Err(Error::Closed { .. })
        ));
        assert!(dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert!(log.repairs().is_empty(), "{:?}", log.repairs());
        assert!(
            !dir.path().join(CLEAN_SHUTDOWN_MARKER).exists(),
            "marker removed on open"
        );
        assert_eq!(log.end_offset(), 60);
        assert_eq!(log.append(batch(1, 1, 1)).unwrap().base_offsets, vec![60]);
        log.verify_indexes().unwrap();
    }

    #[test]
    fn an_open_reports_whether_it_changed_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let log = Log::open(&path, small()).unwrap();
        assert!(log.changed_at_open, "created");
        log.append(batch(2, 1, 100)).unwrap();
        log.close().unwrap();
        drop(log);
        let log = Log::open(&path, small()).unwrap();
        assert!(
            log.changed_at_open,
            "the clean-shutdown marker was taken away"
        );
        log.append(batch(2, 2, 100)).unwrap();
        // A crash of the process: dropped without a close.
        drop(log);
        let log = Log::open(&path, small()).unwrap();
        let same_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").is_ok();
        // Without a boot id the active segment is reread and its indexes rebuilt: a repair.
        assert_eq!(log.changed_at_open, !same_boot, "{:?}", log.repairs());
        assert_eq!(log.end_offset(), 4);
        drop(log);
        // A torn tail is cut: a repair.
        let active = path.join(format!("{:020}.log", 0));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap();
        std::io::Write::write_all(&mut f, b"torn").unwrap();
        let log = Log::open(&path, small()).unwrap();
        assert!(log.changed_at_open);
        assert_eq!(log.end_offset(), 4);
    }

    #[test]
    fn a_restart_without_appends_creates_and_deletes_no_file() {
        use std::os::unix::fs::MetadataExt as _;

        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        log.append(batch(2, 1, 100)).unwrap();
        log.close().unwrap();
        drop(log);
        let inodes = || {
            let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    // The marker and the running file are one inode under two names.
                    let name = if name == RUNNING_MARKER {
                        CLEAN_SHUTDOWN_MARKER.to_owned()
                    } else {
                        name
                    };
                    (name, e.metadata().unwrap().ino())
                })
                .collect();
            v.sort();
            v
        };
        let closed = inodes();
        assert!(closed.iter().any(|(n, _)| n == CLEAN_SHUTDOWN_MARKER));
        for _ in 0..2 {
            let log = Log::open(dir.path(), small()).unwrap();
            assert!(!dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
            assert_eq!(inodes(), closed, "while open");
            log.close().unwrap();
            drop(log);
            assert_eq!(inodes(), closed, "after the close");
        }
    }

    fn idem(pid: i64, epoch: i16, seq: i32, n: u32) -> Bytes {
        let mut b = BatchBuilder::new();
        b.producer(pid, epoch, seq);
        for _ in 0..n {
            b.push(None, Some(&[b'x'; 300]), &[], 5);
        }
        b.build()
    }

    #[test]
    fn idempotent_retries_get_original_offsets_across_rolls_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        let mut seq = 0;
        let mut firsts = Vec::new();
        for _ in 0..12 {
            let a = log.append(idem(9, 0, seq, 2)).unwrap();
            firsts.push((seq, a.base_offsets[0]));
            seq += 2;
        }
        assert!(
            log.segment_count() > 1,
            "the producer's batches span a roll"
        );
        let end = log.end_offset();
        // A retry of the last batch, alone and together with a new one.
        let (last_seq, last_off) = firsts[11];
        let a = log.append(idem(9, 0, last_seq, 2)).unwrap();
        assert_eq!(
            (a.base_offsets.clone(), a.duplicates.clone()),
            (vec![last_off], vec![true])
        );
        assert_eq!(log.end_offset(), end, "a duplicate is not written");
        let a = log
            .append_batches(&[idem(9, 0, last_seq, 2), idem(9, 0, seq, 1)])
            .unwrap();
        assert_eq!(a.base_offsets, vec![last_off, end]);
        assert_eq!(a.duplicates, vec![true, false]);
        seq += 1;
        // Out of order and fenced batches are refused and change nothing.
        assert!(matches!(
            log.append(idem(9, 0, seq + 1, 1)),
            Err(Error::OutOfOrderSequence { .. })
        ));
        let end = log.end_offset();

        // After a crash the state is rebuilt from the roll's snapshot plus the log.
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.end_offset(), end);
        let a = log.append(idem(9, 0, seq - 1, 1)).unwrap();
        assert_eq!(a.duplicates, vec![true]);
        log.append(idem(9, 0, seq, 1)).unwrap();
        seq += 1;
        // After a clean close, from the close's snapshot alone.
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert!(
            matches!(log.append(idem(9, 0, seq + 3, 1)), Err(Error::OutOfOrderSequence { expected, .. }) if expected == seq)
        );
        log.append(idem(9, 1, 0, 1)).unwrap();
        assert!(matches!(
            log.append(idem(9, 0, seq, 1)),
            Err(Error::ProducerFenced { .. })
        ));
        let snapshots = producer::list_snapshots(dir.path()).unwrap();
        assert!(
            !snapshots.is_empty() && snapshots.len() <= 2,
            "{snapshots:?}"
        );
    }

    #[test]
    fn a_roll_whose_producer_snapshot_cannot_be_written_takes_appends_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        // A directory where a roll at `end` would write its snapshot makes that write fail.
        let blocker =
            |end: u64| producer::snapshot_path(dir.path(), end).with_extension("snapshot.tmp");
        let mut seq = 0;
        let mut blocked = Vec::new();
        let mut last = (0, 0);
        while blocked.len() < 2 {
            assert!(seq < 400, "no roll within 200 appends");
            let end = log.end_offset();
            std::fs::create_dir(blocker(end)).unwrap();
            let segments = log.segment_count();
            let a = log.append(idem(9, 0, seq, 2)).unwrap();
            last = (seq, a.base_offsets[0]);
            seq += 2;
            if log.segment_count() > segments {
                blocked.push(end);
            }
            std::fs::remove_dir(blocker(end)).unwrap();
        }
        assert!(
            !log.has_failed(),
            "a missing snapshot does not fail the log"
        );
        let snapshots = producer::list_snapshots(dir.path()).unwrap();
        assert!(
            blocked.iter().all(|b| !snapshots.contains(b)),
            "{snapshots:?} {blocked:?}"
        );
        let segments = log.segments.snapshot();
        assert!(
            segments[..segments.len() - 1].iter().all(|s| s.is_sealed()),
            "the rolled segments are sealed"
        );

        // After a crash the producer state is rebuilt from what snapshots there are.
        let end = log.end_offset();
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.end_offset(), end);
        let a = log.append(idem(9, 0, last.0, 2)).unwrap();
        assert_eq!((a.base_offsets, a.duplicates), (vec![last.1], vec![true]));
        assert!(matches!(
            log.append(idem(9, 0, seq + 1, 1)),
            Err(Error::OutOfOrderSequence { expected, .. }) if expected == seq
        ));
        log.append(idem(9, 0, seq, 1)).unwrap();
    }
}
