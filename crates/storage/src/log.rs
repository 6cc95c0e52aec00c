//! The partition log: an ordered sequence of segments with one writer and many readers.
//!
//! Concurrency: appends take the writer lock only for the `writev` and the index update;
//! fsync happens outside it (group commit, see [`Log::sync_to`]). Readers take no lock held
//! by the writer: they load the published end offset and a snapshot of the segment list and
//! read with `pread` up to each segment's published size.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{error, info};

use crate::batch::{self, BatchHeader, REWRITTEN_LEN, TimestampType};
use crate::config::{Durability, LogConfig};
use crate::env::{LogEnv, Repair};
use crate::error::{Error, Result};
use crate::producer::{self, ProducerStates, Undo, Verdict};
use crate::recovery::{self, CLEAN_SHUTDOWN_MARKER};
use crate::segment::Segment;

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

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, back to back, exactly as stored. Empty at the end of the log.
    pub data: Bytes,
    /// Offset to read from next: one past the last record in `data` (or the requested
    /// offset if `data` is empty).
    pub next_offset: u64,
    /// First offset in the log at the time of the read.
    pub log_start_offset: u64,
    /// Log end offset at the time of the read.
    pub log_end_offset: u64,
}

/// What [`Log::enforce_retention`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Number of segments deleted.
    pub segments_deleted: usize,
    /// Bytes of `.log` files deleted.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub log_start_offset: u64,
}

struct Writer {
    active: Arc<Segment>,
    next_offset: u64,
    /// Segments rolled since the last completed group fsync.
    unsynced: Vec<Arc<Segment>>,
    /// A segment file was created since the last directory fsync.
    dir_dirty: bool,
    closed: bool,
    producers: ProducerStates,
}

/// A roll done under the writer lock, to be finished outside it.
struct Rolled {
    old: Arc<Segment>,
    new_base: u64,
    snapshot: Vec<u8>,
}

/// How long `try_write_batches` tries for a writer lock that another thread holds. Another
/// small append holds it for a few microseconds; a roll or a large write holds it for
/// milliseconds, and the caller falls back to `write_batches` in a blocking context. With
/// 16 durable producers in the broker, 10-12% of the requests found the lock held by the
/// other runtime thread's append and took the blocking pool; with this wait, under 1%
/// (docs/benchmarks.md, fifth session).
const TRY_WRITE_WAIT: Duration = Duration::from_micros(20);

/// The longest a group-commit leader waits for its group before it starts the fsync.
const MAX_COLLECT: Duration = Duration::from_millis(1);

struct SyncState {
    /// Every offset below this is on disk (mirrored in `Log::synced` for lock-free checks).
    synced_offset: u64,
    /// A leader is collecting its group or running the group fsync.
    running: bool,
    last_sync: Instant,
    /// The offsets that callers parked in `sync_to` wait for, one entry per caller, until a
    /// leader covers them.
    waiting: Vec<u64>,
    /// Callers inside `sync_to` when the last group fsync ended: how many appenders are
    /// active, so how many the next leader waits for before it starts the fsync.
    expected: usize,
    /// How long the last group fsync took: the longest a leader waits for its group.
    last_fsync: Duration,
}

impl SyncState {
    /// Callers waiting for offsets not yet on disk.
    fn pending(&self) -> usize {
        self.waiting
            .iter()
            .filter(|o| **o > self.synced_offset)
            .count()
    }
}

/// One partition's log. Share it behind an `Arc`; every method takes `&self`.
pub struct Log {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    env: LogEnv,
    writer: Mutex<Writer>,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    start_offset: AtomicU64,
    end_offset: AtomicU64,
    sync: Mutex<SyncState>,
    synced: AtomicU64,
    /// Bumped (and futex-woken) each time a leader finishes: parked callers wait on it.
    released: AtomicU32,
    /// The CPUs this process may run on: callers in `sync_to` yield instead of parking when
    /// more of them wait than twice this.
    cpus: usize,
    failed: AtomicBool,
    repairs: Vec<Repair>,
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

/// Yields until `word` no longer holds `seen` or `spin` has passed. A group's members wait
/// for at most one collection and one fsync, each no longer than the last fsync: that is
/// the bound callers pass. Yielding instead of parking matters when more callers wait than
/// the machine has CPUs: the leader's one wake-all then queues the parked callers on one
/// busy CPU, where they run one after another while the next leader waits for them
/// (docs/architecture.md, "The path of a record"). RocksDB's write-group followers also
/// yield before they block. True if `word` changed.
fn spin_for_release(word: &AtomicU32, seen: u32, spin: Duration) -> bool {
    if spin.is_zero() {
        return false;
    }
    let deadline = Instant::now() + spin;
    loop {
        if word.load(Ordering::Acquire) != seen {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Blocks until `word` no longer holds `seen` (or spuriously).
fn wait_for_release(word: &AtomicU32, seen: u32) {
    // EAGAIN (already changed) and EINTR both mean: look again.
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::PRIVATE, seen, None);
}

/// Batches that passed validation, with what the roll check needs.
struct Checked {
    headers: Vec<BatchHeader>,
    bytes: u64,
    records: u64,
}

/// Locks a mutex, going on with the data if another thread panicked while holding it: every
/// structure guarded here is left consistent between statements that can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        config.validate()?;
        let dir = dir.into();
        let opened = recovery::open(&dir, &config, &env)?;
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
        let start = segments.first().map_or(0, |s| s.base_offset);
        let end = active.next_offset();
        let producers = rebuild_producers(&dir, &segments, end)?;
        Ok(Log {
            writer: Mutex::new(Writer {
                active,
                next_offset: end,
                unsynced: Vec::new(),
                dir_dirty: false,
                closed: false,
                producers,
            }),
            segments: RwLock::new(Arc::new(segments)),
            start_offset: AtomicU64::new(start),
            end_offset: AtomicU64::new(end),
            sync: Mutex::new(SyncState {
                synced_offset: end,
                running: false,
                last_sync: Instant::now(),
                waiting: Vec::new(),
                expected: 1,
                last_fsync: Duration::ZERO,
            }),
            synced: AtomicU64::new(end),
            released: AtomicU32::new(0),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            failed: AtomicBool::new(false),
            repairs: opened.repairs,
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
        self.start_offset.load(Ordering::Acquire)
    }

    /// Offset the next appended record will get.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Every offset below this is known to be on disk.
    pub fn synced_offset(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish_segments(&self, segments: Vec<Arc<Segment>>) {
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(segments);
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.size()).sum()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.snapshot().len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.snapshot().iter().map(|s| s.base_offset).collect()
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
        self.snapshot().iter().try_for_each(|s| s.verify_indexes())
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
        let appended = self.write_locked(w, batches, &checked.headers, now, &config);
        if let Some(rolled) = rolled {
            // Sealing fsyncs; do it outside the writer lock.
            self.finish_roll(rolled)?;
        }
        appended
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
                self.failed.store(true, Ordering::Release);
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

    /// Completes a roll outside the writer lock: writes the producer snapshot taken at the
    /// roll, seals the old segment and makes the new segment's directory entry durable.
    fn finish_roll(&self, rolled: Rolled) -> Result<()> {
        let result = producer::write_snapshot(&self.dir, rolled.new_base, &rolled.snapshot)
            .and_then(|()| rolled.old.seal())
            .and_then(|()| recovery::sync_dir(&self.dir));
        if let Err(e) = &result {
            self.failed.store(true, Ordering::Release);
            error!(path = %rolled.old.log_path.display(), error = %e,
                "sealing a segment failed; log refuses appends until reopened");
        }
        result
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
        let new = Arc::new(Segment::create(
            &self.dir,
            new_base,
            config.max_index_bytes,
        )?);
        let old = std::mem::replace(&mut w.active, new.clone());
        w.unsynced.push(old.clone());
        w.dir_dirty = true;
        let mut segments = (*self.snapshot()).clone();
        segments.push(new);
        self.publish_segments(segments);
        let snapshot = self.producer_snapshot(w, config);
        info!(path = %self.dir.display(), base_offset = new_base, "rolled to a new segment");
        Ok(Rolled {
            old,
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

    /// Waits until every offset below `offset` is on disk, fsyncing if nobody else is.
    ///
    /// Group commit: one caller at a time leads. Before it starts the fsync, the leader waits
    /// (at most as long as the last fsync took) until as many callers are waiting as were
    /// inside `sync_to` when the last fsync ended, so that appenders released together are
    /// covered together instead of settling into two alternating halves; a lone appender never
    /// waits. The fsync covers everything written when it starts; callers that arrive during
    /// it are covered by the next one. The others park until a leader finishes; when more
    /// callers wait than twice the CPUs, they yield for up to two fsync times first.
    ///
    /// # Errors
    /// The fsync's error for the caller that ran it, [`Error::LogFailed`] for the others; the
    /// log then refuses appends until reopened.
    pub fn sync_to(&self, offset: u64) -> Result<()> {
        // Nothing past the log end can be waited for.
        let offset = offset.min(self.end_offset());
        let mut st = lock(&self.sync);
        let mut queued = false;
        loop {
            if self.has_failed() {
                return Err(Error::LogFailed {
                    path: self.dir.clone(),
                });
            }
            if st.synced_offset >= offset {
                return Ok(());
            }
            if !queued {
                st.waiting.push(offset);
                queued = true;
            }
            if !st.running {
                // Lead, with this caller's entry in `waiting` like everyone else's.
                return self.lead(st, offset);
            }
            // Parked until a leader finishes: the one that covers this offset has taken the
            // entry out of `waiting`; otherwise lead the next group, or park again.
            let mut seen = self.released.load(Ordering::Acquire);
            // Yield first only if the group outnumbers the CPUs well: on 2 vCPUs, 4 yielding
            // appenders were 5% slower than 4 parked ones; 8 were 4-61% and 16 31-65% faster
            // (docs/benchmarks.md, fifth session).
            let spin = if st.expected.max(st.waiting.len()) > 2 * self.cpus {
                st.last_fsync.min(MAX_COLLECT) * 2
            } else {
                Duration::ZERO
            };
            drop(st);
            st = loop {
                if !spin_for_release(&self.released, seen, spin) {
                    wait_for_release(&self.released, seen);
                }
                if self.synced.load(Ordering::Acquire) >= offset {
                    return Ok(());
                }
                let st = lock(&self.sync);
                if !st.running || self.has_failed() {
                    break st;
                }
                seen = self.released.load(Ordering::Acquire);
            };
        }
    }

    /// Runs group fsyncs as the leader until the caller's own offset is covered: collects the
    /// group, fsyncs, takes the covered entries out of `waiting` and wakes every parked caller
    /// with one futex wake (the covered ones return without the lock; of the others, one
    /// leads the next group).
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, SyncState>, offset: u64) -> Result<()> {
        st.running = true;
        loop {
            if st.pending() < st.expected {
                // The leader yields instead of sleeping: its group arrives a few microseconds
                // per member apart, and a sleeping leader would pay a wake-up once the group
                // is complete (on a VM, an interrupt to an idle vCPU). RocksDB's write group
                // leader also yields before it blocks. 16 appenders on 2 vCPUs, 7 alternating
                // pairs: 4-17% more appends per second (docs/benchmarks.md, fourth session).
                let deadline = Instant::now() + st.last_fsync.min(MAX_COLLECT);
                while st.pending() < st.expected && Instant::now() < deadline {
                    drop(st);
                    std::thread::yield_now();
                    st = lock(&self.sync);
                }
            }
            drop(st);
            let started = Instant::now();
            let result = self.sync_now();
            let took = started.elapsed();
            st = lock(&self.sync);
            st.last_fsync = took;
            st.expected = st.waiting.len().max(1);
            match result {
                Ok(covered) => {
                    st.synced_offset = st.synced_offset.max(covered);
                    self.synced.store(st.synced_offset, Ordering::Release);
                    st.last_sync = Instant::now();
                    let synced = st.synced_offset;
                    st.waiting.retain(|o| *o > synced);
                    if synced < offset {
                        // Not reached (`sync_to` clamps the offset to the log end, and the
                        // fsync covered the end as of its start); never answer early.
                        continue;
                    }
                    st.running = false;
                    self.release();
                    return Ok(());
                }
                Err(e) => {
                    self.failed.store(true, Ordering::Release);
                    st.running = false;
                    st.waiting.clear();
                    self.release();
                    error!(path = %self.dir.display(), error = %e,
                        "fsync failed; log refuses appends until reopened");
                    return Err(e);
                }
            }
        }
    }

    /// Wakes every caller parked in `sync_to` with one futex wake.
    fn release(&self) {
        self.released.fetch_add(1, Ordering::Release);
        let _ = rustix::thread::futex::wake(
            &self.released,
            rustix::thread::futex::Flags::PRIVATE,
            i32::MAX as u32, // all: the kernel reads the count as an int
        );
    }

    /// fsyncs everything written so far; returns the end offset it covers.
    fn sync_now(&self) -> Result<u64> {
        let (active, unsynced, dir_dirty, covered) = {
            let mut w = lock(&self.writer);
            let dirty = std::mem::take(&mut w.dir_dirty);
            (w.active.clone(), w.unsynced.clone(), dirty, w.next_offset)
        };
        // Everything written so far is published up to this size; the fsync covers it.
        let synced_size = active.size();
        let started = Instant::now();
        let result = (|| -> Result<()> {
            for s in &unsynced {
                s.sync()?;
            }
            active.sync()?;
            if dir_dirty {
                recovery::sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        self.env.observer.on_fsync(started.elapsed());
        result?;
        if let Some(window) = self.config().cache_window {
            for s in &unsynced {
                s.drop_behind(s.size(), window);
            }
            active.drop_behind(synced_size, window);
        }
        if !unsynced.is_empty() {
            lock(&self.writer)
                .unsynced
                .retain(|s| !unsynced.iter().any(|u| Arc::ptr_eq(u, s)));
        }
        Ok(covered)
    }

    /// fsyncs everything written so far.
    ///
    /// # Errors
    /// As [`Log::sync_to`].
    pub fn flush(&self) -> Result<()> {
        self.sync_to(self.end_offset())
    }

    /// Under the `interval` policy, fsyncs if unsynced data is older than the interval.
    /// Called by the [`Flusher`](crate::Flusher). Returns true if it fsynced.
    ///
    /// # Errors
    /// As [`Log::sync_to`].
    pub fn flush_if_due(&self, now: Instant) -> Result<bool> {
        let Durability::Interval(interval) = self.config().durability else {
            return Ok(false);
        };
        let end = self.end_offset();
        let due = {
            let st = lock(&self.sync);
            st.synced_offset < end && now.saturating_duration_since(st.last_sync) >= interval
        };
        if due {
            self.sync_to(end)?;
        }
        Ok(due)
    }

    /// Reads whole batches starting with the one that contains `from`, up to about
    /// `max_bytes` (the first batch is returned whole even if larger, so a consumer never
    /// stalls on a big batch). Reading at the log end returns no data.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] with the valid range if `from` is below the log start or
    /// past the log end; [`Error::CorruptSegment`] or [`Error::Io`] from the segment.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<ReadResult> {
        let end = self.end_offset();
        let start = self.start_offset();
        let segments = self.snapshot();
        let out_of_range = || Error::OffsetOutOfRange {
            requested: from,
            log_start: self.start_offset(),
            log_end: self.end_offset(),
        };
        if from < start || from > end {
            return Err(out_of_range());
        }
        let empty = ReadResult {
            data: Bytes::new(),
            next_offset: from,
            log_start_offset: start,
            log_end_offset: end,
        };
        if from == end {
            return Ok(empty);
        }
        let first = segments.partition_point(|s| s.base_offset <= from);
        let Some(first) = first.checked_sub(1) else {
            // Retention removed the segment between our loads.
            return Err(out_of_range());
        };
        for segment in &segments[first..] {
            if let Some(data) = segment.read(from, max_bytes)? {
                let next_offset = last_batch_next_offset(&data).unwrap_or(from);
                return Ok(ReadResult {
                    data,
                    next_offset,
                    log_start_offset: start,
                    log_end_offset: end,
                });
            }
        }
        Ok(empty)
    }

    /// The first offset whose record timestamp is at or after `timestamp` (ms), or `None` if
    /// every record is older. Under log-append time, batches are found by their append time.
    ///
    /// # Errors
    /// [`Error::CorruptSegment`] or [`Error::Io`] from the segment.
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

    /// Deletes the oldest sealed segments that retention says must go: those whose newest
    /// record is older than `retention_age`, and while the log is larger than
    /// `retention_bytes`. The active segment is never deleted. Advances the log start offset.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be deleted; the log start offset has already moved, and
    /// the next open deletes the leftovers.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let config = self.config();
        let now = self.env.clock.now_ms();
        let (doomed, start) = {
            // Holding the writer lock keeps a roll from changing the segment list meanwhile.
            let _w = lock(&self.writer);
            let segments = self.snapshot();
            let mut remaining: u64 = segments.iter().map(|s| s.size()).sum();
            let mut n = 0;
            for s in &segments[..segments.len().saturating_sub(1)] {
                let expired = config.retention_age.is_some_and(|age| {
                    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    s.max_timestamp() < now.saturating_sub(age)
                });
                let oversize = config
                    .retention_bytes
                    .is_some_and(|limit| remaining > limit);
                if !(expired || oversize) {
                    break;
                }
                remaining -= s.size();
                n += 1;
            }
            if n == 0 {
                return Ok(RetentionOutcome {
                    log_start_offset: self.start_offset(),
                    ..Default::default()
                });
            }
            let kept = segments[n..].to_vec();
            let start = kept[0].base_offset;
            self.publish_segments(kept);
            self.start_offset.store(start, Ordering::Release);
            (segments[..n].to_vec(), start)
        };
        let mut bytes_deleted = 0;
        for s in &doomed {
            bytes_deleted += s.size();
            // The log file first: an index left without its log is cleaned up on open, while
            // a log without its index would come back to life.
            recovery::remove_file(&s.log_path)?;
            recovery::remove_file(&s.index_path)?;
            recovery::remove_file(&s.time_index_path)?;
            info!(path = %s.log_path.display(), base_offset = s.base_offset,
                bytes = s.size(), "retention deleted segment");
        }
        recovery::sync_dir(&self.dir)?;
        Ok(RetentionOutcome {
            segments_deleted: doomed.len(),
            bytes_deleted,
            log_start_offset: start,
        })
    }

    /// Closes the log cleanly: refuses further appends, fsyncs all data, seals rolled segments,
    /// flushes the active indexes and writes the clean-shutdown marker, so the next open reads
    /// nothing but the tail after the last index entry.
    ///
    /// # Errors
    /// [`Error::LogFailed`] if the log had failed (no marker is written, so the next open
    /// recovers), or the fsync's error.
    pub fn close(&self) -> Result<()> {
        let (end, snapshot) = {
            let mut w = lock(&self.writer);
            if w.closed {
                return Ok(());
            }
            w.closed = true;
            let config = self.config();
            (w.next_offset, self.producer_snapshot(&mut w, &config))
        };
        self.sync_to(end)?;
        producer::write_snapshot(&self.dir, end, &snapshot)?;
        let segments = self.snapshot();
        if let Some((active, sealed)) = segments.split_last() {
            for s in sealed {
                s.seal()?;
            }
            active.flush_indexes()?;
            active.trim_preallocation()?;
        }
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("create clean-shutdown marker", &marker, e))?;
        recovery::sync_dir(&self.dir)?;
        info!(path = %self.dir.display(), end_offset = self.end_offset(), "closed log");
        Ok(())
    }

    /// Closes the log and deletes its directory with everything in it.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be removed.
    pub fn delete(&self) -> Result<()> {
        lock(&self.writer).closed = true;
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io("delete log", &self.dir, e))
    }
}

/// Rebuilds the producer state: the newest valid snapshot at or below the log end, then the
/// batch headers after it. Snapshots past the end (the tail was cut by recovery) are deleted.
fn rebuild_producers(dir: &Path, segments: &[Arc<Segment>], end: u64) -> Result<ProducerStates> {
    let mut offsets = producer::list_snapshots(dir)?;
    offsets.sort_unstable();
    let mut state = None;
    for &offset in offsets.iter().rev() {
        let path = producer::snapshot_path(dir, offset);
        if offset > end {
            recovery::remove_file(&path)?;
            continue;
        }
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io("read producer snapshot", &path, e))?;
        match ProducerStates::decode(&bytes) {
            Some((at, states)) if at == offset => {
                state = Some((at, states));
                break;
            }
            _ => tracing::warn!(path = %path.display(), "ignoring invalid producer snapshot"),
        }
    }
    let (from, mut states) = state.unwrap_or_else(|| {
        (
            segments.first().map_or(0, |s| s.base_offset),
            ProducerStates::default(),
        )
    });
    for segment in segments.iter().filter(|s| s.next_offset() > from) {
        let pos = if from <= segment.base_offset {
            0
        } else {
            segment.position_of(from)?
        };
        Segment::scan(
            &segment.log_path,
            pos,
            from.max(segment.base_offset),
            false,
            |_, h| {
                if h.base_offset >= from {
                    states.record(h, h.base_offset, h.append_time);
                }
            },
        )?;
    }
    Ok(states)
}

/// The offset after the last batch in a buffer of whole batches.
fn last_batch_next_offset(data: &[u8]) -> Option<u64> {
    let mut pos = 0;
    let mut next = None;
    while let Some(total) = batch::batch_total_len(&data[pos..]) {
        if total < batch::HEADER_LEN || pos + total > data.len() {
            break;
        }
        next = BatchHeader::decode(&data[pos..])
            .ok()
            .map(|h| h.next_offset());
        pos += total;
    }
    next
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;
    use std::time::Duration;

    use super::*;
    use crate::Clock;
    use crate::batch::{BatchBuilder, Batches, Compression};

    #[derive(Debug)]
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn batch(n: u32, ts: i64, value_len: usize) -> Bytes {
        let mut b = BatchBuilder::new();
        let value = vec![b'v'; value_len];
        for i in 0..n {
            b.push(
                Some(format!("k{i}").as_bytes()),
                Some(&value),
                &[],
                ts + i64::from(i),
            );
        }
        b.build()
    }

    fn small() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            max_batch_bytes: 4096,
            index_interval_bytes: 256,
            durability: Durability::Never,
            retention_age: None,
            ..LogConfig::default()
        }
    }

    fn with_clock(dir: &Path, config: LogConfig, now: i64) -> (Log, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(AtomicI64::new(now)));
        let env = LogEnv {
            clock: clock.clone(),
            ..LogEnv::default()
        };
        (Log::open_with(dir, config, env).unwrap(), clock)
    }

    fn offsets_in(data: Bytes) -> Vec<u64> {
        Batches::new(data)
            .flat_map(|b| b.unwrap().records().unwrap().map(|r| r.unwrap().offset))
            .collect()
    }

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
        assert_eq!(offsets_in(r.data), vec![3, 4]);
        assert_eq!(r.next_offset, 5);
        // A max_bytes smaller than the first batch still returns that batch whole.
        let r = log.read(0, 1).unwrap();
        assert_eq!(offsets_in(r.data), vec![0, 1, 2]);
        assert_eq!(r.next_offset, 3);
        // At the end: nothing; past it: out of range with the valid range.
        assert!(log.read(5, 100).unwrap().data.is_empty());
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
        let stored = log.read(1, 1 << 20).unwrap().data;
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
            let offsets = offsets_in(r.data);
            assert_eq!(offsets[0], next);
            next = r.next_offset;
        }
        log.verify_indexes().unwrap();
        // Sealed segments' files are trimmed indexes; the active one is preallocated.
        let sealed = dir.path().join(format!("{:020}.index", bases[1]));
        assert!(std::fs::metadata(sealed).unwrap().len() < 1024);
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

    /// Whether a page of `file` at `pos` is in the page cache: a read that must not wait
    /// for the disk (`RWF_NOWAIT`) fails with `EAGAIN` when it is not.
    fn cached(file: &std::fs::File, pos: u64) -> bool {
        let mut buf = [0u8; 4096];
        let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
        rustix::io::preadv2(file, &mut bufs, pos, rustix::io::ReadWriteFlags::NOWAIT).is_ok()
    }

    /// Whether this filesystem drops clean pages on `POSIX_FADV_DONTNEED` and reports it to
    /// `RWF_NOWAIT` reads (ext4 and xfs do; tmpfs keeps its pages: they are the storage).
    fn drops_pages(dir: &Path) -> bool {
        let path = dir.join("probe");
        std::fs::write(&path, vec![1u8; 1 << 16]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        let dropped = !cached(&file, 0);
        std::fs::remove_file(&path).unwrap();
        dropped
    }

    #[test]
    fn fsynced_data_behind_the_cache_window_leaves_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if !drops_pages(dir.path()) {
            eprintln!(
                "skipped: the filesystem of {} keeps dropped pages",
                dir.path().display()
            );
            return;
        }
        let config = LogConfig {
            max_batch_bytes: 1 << 20,
            durability: Durability::Never,
            cache_window: Some(crate::MIN_CACHE_WINDOW),
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).unwrap();
        // 8 MiB in 100 KiB batches, then an fsync.
        for i in 0..80 {
            log.append(batch(100, i, 1024)).unwrap();
        }
        let file = std::fs::File::open(dir.path().join(format!("{:020}.log", 0))).unwrap();
        let size = file.metadata().unwrap().len();
        assert!(cached(&file, 0), "written data is cached before the fsync");
        log.flush().unwrap();
        assert!(!cached(&file, 0), "the start is behind the window: dropped");
        assert!(
            !cached(&file, size - (2 << 20)),
            "2 MiB behind the end: dropped"
        );
        assert!(cached(&file, size - 4096), "the newest data stays cached");
        // Reads of dropped data come from disk, whole and in order.
        let r = log.read(0, 1 << 20).unwrap();
        assert_eq!(offsets_in(r.data)[0], 0);
        log.verify_indexes().unwrap();

        // Without a window, an fsync drops nothing.
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        log.append(batch(10, 0, 100)).unwrap();
        log.flush().unwrap();
        let file = std::fs::File::open(dir.path().join(format!("{:020}.log", 0))).unwrap();
        assert!(cached(&file, 0));
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
    fn retention_by_bytes_keeps_the_active_segment_and_moves_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..40 {
            log.append(batch(2, i, 200)).unwrap();
        }
        let before = log.segment_count();
        log.set_config(LogConfig {
            retention_bytes: Some(5000),
            ..small()
        })
        .unwrap();
        let out = log.enforce_retention().unwrap();
        assert!(out.segments_deleted > 0 && out.segments_deleted < before);
        assert!(log.size_bytes() <= 5000, "{} bytes left", log.size_bytes());
        assert_eq!(log.start_offset(), out.log_start_offset);
        assert_eq!(log.segment_base_offsets()[0], out.log_start_offset);
        let err = log.read(0, 100).unwrap_err();
        assert!(
            matches!(err, Error::OffsetOutOfRange { requested: 0, log_start, log_end: 80 }
            if log_start == out.log_start_offset)
        );
        // A limit of zero deletes every sealed segment but never the active one.
        log.set_config(LogConfig {
            retention_bytes: Some(0),
            ..small()
        })
        .unwrap();
        log.enforce_retention().unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.end_offset(), 80);
        assert!(!dir.path().join(format!("{:020}.log", 0)).exists());

        // Reopening keeps the new start.
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.start_offset(), log.segment_base_offsets()[0]);
        assert_eq!(log.end_offset(), 80);
    }

    #[test]
    fn retention_by_age_uses_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_age: Some(Duration::from_secs(10)),
            ..small()
        };
        let (log, clock) = with_clock(dir.path(), config, 100_000);
        for i in 0..20 {
            log.append(batch(2, 50_000 + i * 1000, 300)).unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3);
        // Newest record at 69_001; now 100_000: everything sealed is older than 10 s.
        let out = log.enforce_retention().unwrap();
        assert_eq!(out.segments_deleted, bases.len() - 1);
        // Nothing more to delete, however far the clock moves.
        clock.0.fetch_add(1_000_000, Ordering::SeqCst);
        assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);
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
    fn always_syncs_before_returning_and_shares_fsyncs() {
        #[derive(Debug, Default)]
        struct Count(AtomicU64);
        impl crate::Observer for Count {
            fn on_fsync(&self, _: Duration) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let fsyncs = Arc::new(Count::default());
        let env = LogEnv {
            observer: fsyncs.clone(),
            ..LogEnv::default()
        };
        let config = LogConfig {
            durability: Durability::Always,
            ..LogConfig::default()
        };
        let log = Arc::new(Log::open_with(dir.path(), config, env).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let a = log.append(batch(1, 1, 10)).unwrap();
                        assert!(log.synced_offset() >= a.next_offset);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(log.end_offset(), 400);
        assert_eq!(log.synced_offset(), 400);
        // Group commit can only merge fsyncs, never add any.
        assert!(fsyncs.0.load(Ordering::SeqCst) <= 400);
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
    fn a_failed_group_fsync_wakes_every_parked_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Always,
            ..small()
        };
        let log = Arc::new(Log::open(dir.path(), config).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (log, barrier) = (log.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Whoever leads, its fsync fails.
                    crate::segment::fault::FAIL_NEXT_FSYNC.with(|f| f.set(true));
                    let written = log.write_batches(&[batch(1, t, 10)]).unwrap();
                    barrier.wait();
                    log.sync_to(written.next_offset)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let (io, failed): (Vec<_>, Vec<_>) = results
            .iter()
            .map(|r| r.as_ref().unwrap_err())
            .partition(|e| matches!(e, Error::Io { .. }));
        assert_eq!(io.len(), 1, "one leader ran the failing fsync: {results:?}");
        assert!(
            failed.iter().all(|e| matches!(e, Error::LogFailed { .. })),
            "{results:?}"
        );
        assert!(lock(&log.sync).waiting.is_empty(), "no waiter left behind");
    }

    #[test]
    fn callers_released_by_a_group_fsync_are_all_covered_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Always,
            ..small()
        };
        let log = Arc::new(Log::open(dir.path(), config).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let appended = log.append(batch(1, t * 100 + i, 10)).unwrap();
                        assert!(log.synced_offset() >= appended.next_offset);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = lock(&log.sync);
        assert!(st.waiting.is_empty(), "no waiter left behind");
        assert!(!st.running, "no leader left behind");
        assert!(
            (1..=6).contains(&st.expected),
            "the group size stays within the appenders: {}",
            st.expected
        );
        assert_eq!(st.synced_offset, 120);
    }

    #[test]
    fn a_failed_fsync_is_returned_and_fails_the_log_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Always,
            ..small()
        };
        let log = Log::open(dir.path(), config.clone()).unwrap();
        log.append(batch(1, 1, 10)).unwrap();
        crate::segment::fault::FAIL_NEXT_FSYNC.with(|f| f.set(true));
        let err = log.append(batch(1, 2, 10)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    op: "fsync segment",
                    ..
                }
            ),
            "{err}"
        );
        assert!(log.has_failed());
        assert!(matches!(
            log.append(batch(1, 3, 10)),
            Err(Error::LogFailed { .. })
        ));
        assert!(matches!(log.sync_to(2), Err(Error::LogFailed { .. })));
        // Reads keep working.
        assert_eq!(offsets_in(log.read(0, 1 << 20).unwrap().data), vec![0, 1]);
        // Closing a failed log leaves no clean-shutdown marker, so the next open recovers.
        assert!(log.close().is_err());
        assert!(!dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
        drop(log);
        let log = Log::open(dir.path(), config).unwrap();
        assert!(!log.has_failed());
        assert_eq!(log.append(batch(1, 3, 10)).unwrap().base_offsets, vec![2]);
    }
}
