//! Group commit: the one mechanism that makes a log's writes durable.
//!
//! Whoever needs the log on disk up to an offset registers a waiter: a thread blocked in
//! [`Log::sync_to`] (the `always` policy, the `interval` flusher, a clean close) or a task
//! awaiting a [`Durable`] future (the broker's durable produce requests). One syncer at a time
//! runs group fsyncs while some waiter wants more than is on disk; every fsync covers
//! everything written when it starts, and afterwards the syncer wakes the waiters it covered.
//! A blocking caller that finds no syncer running becomes it; a [`Durable`] wait that finds
//! none starts one on the log's [`Spawner`](crate::Spawner), so no thread waits per request.
//!
//! Before each fsync the syncer waits, briefly, for the group the last fsync released: until
//! as many waiters have registered since the last fsync started as were waiting when it
//! ended, at most as long as the last fsync took and never more than [`COLLECT_MAX`]. The
//! appenders released together come back with their next write while the others wait;
//! without the wait the next fsync would start at once without them, and the appenders would
//! settle into two halves, each waiting for two fsyncs per write. A lone appender never
//! waits: its group is complete when it registers, and the registration that completes a
//! group wakes the syncer.
//!
//! A failed fsync fails the log: every waiter gets the error, appends are refused until the
//! log is reopened. No lock is held across an fsync.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tracing::error;

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::log::{Log, lock};
use crate::recovery;

/// The longest a syncer waits for its group before an fsync.
const COLLECT_MAX: Duration = Duration::from_millis(1);

/// A syncer collects a group only if the last fsync ended this recently; an older group says
/// nothing about who is coming.
const COLLECT_RECENT: Duration = Duration::from_millis(10);

/// The group-commit state of a log, under its `sync` mutex.
pub(crate) struct SyncState {
    /// Every offset below this is on disk (mirrored in `Log::synced` for lock-free checks).
    pub synced_offset: u64,
    /// The largest offset a waiter wants on disk.
    wanted: u64,
    /// A syncer is collecting its group or fsyncing.
    running: bool,
    /// When the last fsync ended (the `interval` policy's clock).
    pub last_sync: Instant,
    /// Waiters for offsets not yet on disk; the syncer removes and wakes those it covers.
    waiters: Vec<Waiter>,
    next_id: u64,
    /// Waiters registered so far, a running count the collector compares.
    registered: u64,
    /// The last fsync, which sizes the next group.
    last: LastGroup,
    /// While the syncer collects: the `registered` count it waits for, and its thread.
    collector: Option<(u64, Thread)>,
    /// The error that failed the log, reissued to every later waiter.
    failure: Option<Error>,
}

impl SyncState {
    /// The state of a log opened with everything below `end` on disk.
    pub fn new(end: u64) -> Self {
        SyncState {
            synced_offset: end,
            wanted: end,
            running: false,
            last_sync: Instant::now(),
            waiters: Vec::new(),
            next_id: 0,
            registered: 0,
            last: LastGroup::default(),
            collector: None,
            failure: None,
        }
    }

    /// Registers a waiter for `offset`; wakes a collecting syncer whose group it completes.
    fn register(&mut self, offset: u64, waker: Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiters.push(Waiter { id, offset, waker });
        self.registered += 1;
        self.wanted = self.wanted.max(offset);
        if let Some((until, syncer)) = &self.collector
            && self.registered >= *until
        {
            syncer.unpark();
        }
        id
    }

    fn unregister(&mut self, id: u64) {
        if let Some(i) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.swap_remove(i);
        }
    }
}

/// One waiter: woken once everything below `offset` is on disk or the log failed.
struct Waiter {
    id: u64,
    offset: u64,
    waker: Waker,
}

/// The syncer's last fsync.
#[derive(Debug, Default)]
struct LastGroup {
    /// `registered` when it started: the waiters it covered registered before.
    first: u64,
    /// Waiters when it ended, covered or not: the size of the next group.
    waiting: u64,
    /// How long it took.
    took: Duration,
    /// When it ended.
    ended: Option<Instant>,
}

/// Wakes a thread blocked in [`Log::sync_to`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Log {
    /// Every offset below this is known to be on disk.
    pub fn synced_offset(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Waits, blocking the thread, until every offset below `offset` is on disk; runs the
    /// group fsyncs itself if no syncer is running (and then goes on while others wait).
    ///
    /// # Errors
    /// The fsync's error (the log then refuses appends until reopened), or
    /// [`Error::LogFailed`] if it had failed before.
    pub fn sync_to(&self, offset: u64) -> Result<()> {
        // Nothing past the log end can be waited for.
        let offset = offset.min(self.end_offset());
        let mut st = lock(&self.sync);
        self.check_not_failed()?;
        if st.synced_offset >= offset {
            return Ok(());
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let id = st.register(offset, waker);
        loop {
            if st.synced_offset >= offset || self.has_failed() {
                return self.outcome(&mut st, id);
            }
            if !st.running {
                st.running = true;
                let result = self.run_syncer(st, Some(offset));
                st = lock(&self.sync);
                let outcome = self.outcome(&mut st, id);
                // The syncer's own failure is the fsync's error, as for every waiter.
                return result.and(outcome);
            }
            drop(st);
            std::thread::park();
            st = lock(&self.sync);
        }
    }

    /// A future that resolves once every offset below `offset` is on disk, starting a syncer
    /// on the log's spawner if none is running. It registers now, so create the waits of
    /// every partition a request wrote before awaiting any: their fsyncs then run at once.
    pub fn durable(self: &Arc<Self>, offset: u64) -> Durable {
        let offset = offset.min(self.end_offset());
        let st = lock(&self.sync);
        if st.synced_offset >= offset || self.has_failed() {
            return Durable {
                log: self.clone(),
                offset,
                id: None,
            };
        }
        let mut st = st;
        let id = st.register(offset, Waker::noop().clone());
        self.ensure_syncer(st);
        Durable {
            log: self.clone(),
            offset,
            id: Some(id),
        }
    }

    /// Starts a syncer on the spawner unless one is running.
    fn ensure_syncer(self: &Arc<Self>, mut st: MutexGuard<'_, SyncState>) {
        if st.running {
            return;
        }
        st.running = true;
        drop(st);
        let job = SyncerJob {
            log: Some(self.clone()),
        };
        self.env.spawner.spawn(Box::new(move || job.run()));
    }

    /// Runs group fsyncs until nothing more is wanted, then marks the syncer stopped. The
    /// caller has set `running`. A blocking caller passes its own offset (`until`): once that
    /// is on disk it stops and wakes the other waiters, one of which starts the next syncer,
    /// so that a thread such as the flusher never serves another log's waiters for long.
    fn run_syncer<'a>(
        &'a self,
        mut st: MutexGuard<'a, SyncState>,
        until: Option<u64>,
    ) -> Result<()> {
        loop {
            if st.synced_offset >= st.wanted || self.has_failed() {
                st.running = false;
                return Ok(());
            }
            if until.is_some_and(|own| st.synced_offset >= own) {
                st.running = false;
                let wakers: Vec<Waker> = st.waiters.iter().map(|w| w.waker.clone()).collect();
                drop(st);
                wakers.into_iter().for_each(Waker::wake);
                return Ok(());
            }
            st = self.collect(st, COLLECT_MAX);
            let first = st.registered;
            drop(st);
            let started = Instant::now();
            let result = self.sync_now();
            let took = started.elapsed();
            st = lock(&self.sync);
            let woken = match result {
                Ok(covered) => {
                    let synced = st.synced_offset.max(covered);
                    st.synced_offset = synced;
                    self.synced.store(synced, Ordering::Release);
                    st.last_sync = Instant::now();
                    st.last = LastGroup {
                        first,
                        waiting: st.waiters.len() as u64,
                        took,
                        ended: Some(st.last_sync),
                    };
                    take_covered(&mut st.waiters, synced)
                }
                Err(e) => {
                    self.fail();
                    error!(path = %self.dir().display(), error = %e,
                        "fsync failed; log refuses appends until reopened");
                    st.failure = Some(e.reissue(self.dir()));
                    st.running = false;
                    // The waiters stay listed: each takes the error when it wakes.
                    let wakers: Vec<Waker> = st.waiters.iter().map(|w| w.waker.clone()).collect();
                    drop(st);
                    wakers.into_iter().for_each(Waker::wake);
                    return Err(e);
                }
            };
            drop(st);
            woken.into_iter().for_each(|w| w.waker.wake());
            st = lock(&self.sync);
        }
    }

    /// Before an fsync, waits for the group the last fsync released (module docs), never
    /// longer than `max`.
    fn collect<'a>(
        &'a self,
        mut st: MutexGuard<'a, SyncState>,
        max: Duration,
    ) -> MutexGuard<'a, SyncState> {
        let Some(ended) = st.last.ended else {
            return st;
        };
        if ended.elapsed() > COLLECT_RECENT {
            return st;
        }
        let until = st.last.first + st.last.waiting;
        if st.registered >= until {
            return st;
        }
        let deadline = Instant::now() + st.last.took.min(max);
        st.collector = Some((until, std::thread::current()));
        while st.registered < until {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            drop(st);
            std::thread::park_timeout(deadline - now);
            st = lock(&self.sync);
        }
        st.collector = None;
        st
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
                recovery::sync_dir(self.dir())?;
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

    /// [`Error::LogFailed`] once the log has failed.
    fn check_not_failed(&self) -> Result<()> {
        if self.has_failed() {
            return Err(Error::LogFailed {
                path: self.dir().to_path_buf(),
            });
        }
        Ok(())
    }

    /// What a woken waiter answers, taking it out of the list: `Ok` once its offset is on
    /// disk; if the log failed, the fsync's error for a waiter the failed fsync was to cover.
    fn outcome(&self, st: &mut SyncState, id: u64) -> Result<()> {
        let registered = st.waiters.iter().any(|w| w.id == id);
        st.unregister(id);
        if !self.has_failed() {
            return Ok(());
        }
        match &st.failure {
            Some(e) if registered => Err(e.reissue(self.dir())),
            _ => self.check_not_failed(),
        }
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
}

/// Takes the waiters whose offset is on disk out of `waiters`.
fn take_covered(waiters: &mut Vec<Waiter>, synced: u64) -> Vec<Waiter> {
    let mut covered = Vec::new();
    let mut i = 0;
    while i < waiters.len() {
        if waiters[i].offset <= synced {
            covered.push(waiters.swap_remove(i));
        } else {
            i += 1;
        }
    }
    covered
}

/// A syncer handed to the spawner. Dropped without running (no thread could be had), it
/// marks the syncer stopped and wakes every waiter, so that their next poll starts another.
struct SyncerJob {
    log: Option<Arc<Log>>,
}

impl SyncerJob {
    fn run(mut self) {
        if let Some(log) = self.log.take() {
            // A failure is the waiters' to report; the syncer has logged it.
            let _ = log.run_syncer(lock(&log.sync), None);
        }
    }
}

impl Drop for SyncerJob {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let mut st = lock(&log.sync);
            st.running = false;
            let wakers: Vec<Waker> = st.waiters.iter().map(|w| w.waker.clone()).collect();
            drop(st);
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// A wait for a log to be on disk up to an offset, from [`Log::durable`]. Resolves to `Ok`
/// once it is, or to the error that failed the log.
#[derive(Debug)]
#[must_use = "a durable wait does nothing unless awaited"]
pub struct Durable {
    log: Arc<Log>,
    offset: u64,
    /// The registered waiter; `None` once resolved or if nothing was to wait for.
    id: Option<u64>,
}

impl Future for Durable {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let log = self.log.clone();
        let mut st = lock(&log.sync);
        let Some(id) = self.id else {
            // Nothing was registered: on disk already, or the log had failed.
            return Poll::Ready(if st.synced_offset >= self.offset {
                Ok(())
            } else {
                log.check_not_failed()
            });
        };
        if st.synced_offset >= self.offset || log.has_failed() {
            self.id = None;
            return Poll::Ready(log.outcome(&mut st, id));
        }
        match st.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => w.waker.clone_from(cx.waker()),
            // Only the syncer takes a waiter out, once it is covered; covered means synced.
            None => {
                let offset = self.offset;
                self.id = Some(st.register(offset, cx.waker().clone()));
            }
        }
        log.ensure_syncer(st);
        Poll::Pending
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.log.sync).unregister(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::*;
    use crate::testing::{batch, offsets_in, small};
    use crate::{CLEAN_SHUTDOWN_MARKER, LogConfig, LogEnv};

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
        // The advice is taken page by page, and the kernel may keep the odd page it holds in
        // a per-CPU list at that moment: most pages behind the window must be gone.
        let behind: Vec<u64> = (0..size - (2 << 20)).step_by(256 << 10).collect();
        let kept = behind.iter().filter(|pos| cached(&file, **pos)).count();
        assert!(
            kept * 4 <= behind.len(),
            "behind the window: {kept} of {} sampled pages still cached",
            behind.len()
        );
        assert!(cached(&file, size - 4096), "the newest data stays cached");
        // Reads of dropped data come from disk, whole and in order.
        let r = log.read(0, 1 << 20).unwrap();
        assert_eq!(offsets_in(&r)[0], 0);
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
    fn always_syncs_before_returning_and_shares_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (fsyncs, env) = counting_fsyncs();
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
        // The waiters the failing fsync was to cover get its error; later ones find the log
        // failed.
        assert!(!io.is_empty(), "the failing fsync's error: {results:?}");
        assert!(
            failed.iter().all(|e| matches!(e, Error::LogFailed { .. })),
            "{results:?}"
        );
        let st = lock(&log.sync);
        assert!(st.waiters.is_empty(), "no waiter left behind");
        assert!(!st.running, "no syncer left behind");
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
        assert!(st.waiters.is_empty(), "no waiter left behind");
        assert!(!st.running, "no syncer left behind");
        assert!(
            (1..=6).contains(&st.last.waiting),
            "the group size stays within the appenders: {}",
            st.last.waiting
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
        assert!(
            !dir.path().join(crate::RUNNING_MARKER).exists(),
            "a failed log is reread in full at the next open"
        );
        assert!(matches!(
            log.append(batch(1, 3, 10)),
            Err(Error::LogFailed { .. })
        ));
        assert!(matches!(log.sync_to(2), Err(Error::LogFailed { .. })));
        // Reads keep working.
        assert_eq!(offsets_in(&log.read(0, 1 << 20).unwrap()), vec![0, 1]);
        // Closing a failed log leaves no clean-shutdown marker, so the next open recovers.
        assert!(log.close().is_err());
        assert!(!dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
        drop(log);
        let log = Log::open(dir.path(), config).unwrap();
        assert!(!log.has_failed());
        assert_eq!(log.append(batch(1, 3, 10)).unwrap().base_offsets, vec![2]);
    }

    /// Counts the fsyncs of the logs opened with the returned environment.
    #[derive(Debug, Default)]
    struct FsyncCount(AtomicU64);

    impl crate::Observer for FsyncCount {
        fn on_fsync(&self, _: Duration) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_fsyncs() -> (Arc<FsyncCount>, LogEnv) {
        let fsyncs = Arc::new(FsyncCount::default());
        let env = LogEnv {
            observer: fsyncs.clone(),
            ..LogEnv::default()
        };
        (fsyncs, env)
    }

    /// Polls `f` on this thread until it is ready, parking in between.
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    fn never() -> LogConfig {
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        }
    }

    #[test]
    fn durable_waits_share_fsyncs_and_the_syncer_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (fsyncs, env) = counting_fsyncs();
        let log = Arc::new(Log::open_with(dir.path(), never(), env).unwrap());
        for round in 0..20u32 {
            let waits: Vec<_> = (0..8u32)
                .map(|t| {
                    let written = log
                        .write_batches(&[batch(1, i64::from(round * 100 + t), 100)])
                        .unwrap();
                    (written.next_offset, log.durable(written.next_offset))
                })
                .collect();
            let threads: Vec<_> = waits
                .into_iter()
                .map(|(offset, wait)| {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        block_on(wait).unwrap();
                        assert!(log.synced_offset() >= offset);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(log.synced_offset(), 160);
        assert!(
            fsyncs.0.load(Ordering::SeqCst) <= 160,
            "never more fsyncs than waits"
        );
        // The syncer stops once nothing is wanted; a wait for what is on disk starts none.
        for _ in 0..500 {
            if !lock(&log.sync).running {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!lock(&log.sync).running, "the syncer stopped");
        let before = fsyncs.0.load(Ordering::SeqCst);
        block_on(log.durable(160)).unwrap();
        assert!(!lock(&log.sync).running);
        assert_eq!(fsyncs.0.load(Ordering::SeqCst), before);
        assert!(lock(&log.sync).waiters.is_empty());
    }

    #[test]
    fn a_dropped_durable_wait_leaves_no_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), never()).unwrap());
        // Hold the syncer back: the test plays a running one.
        lock(&log.sync).running = true;
        let written = log.write_batches(&[batch(1, 1, 10)]).unwrap();
        let wait = log.durable(written.next_offset);
        assert_eq!(lock(&log.sync).waiters.len(), 1);
        drop(wait);
        assert!(lock(&log.sync).waiters.is_empty());
    }

    #[test]
    fn a_failed_fsync_reaches_every_durable_wait_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), never()).unwrap());
        lock(&log.sync).running = true;
        let written = log.write_batches(&[batch(1, 1, 10)]).unwrap();
        let waits: Vec<_> = (0..3).map(|_| log.durable(written.next_offset)).collect();
        // Play the syncer whose fsync fails.
        crate::segment::fault::FAIL_NEXT_FSYNC.with(|f| f.set(true));
        let failed = log.run_syncer(lock(&log.sync), None);
        assert!(matches!(failed, Err(Error::Io { .. })), "{failed:?}");
        for wait in waits {
            let e = block_on(wait).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Io {
                        op: "fsync segment",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        // A wait that starts after the failure finds the log failed.
        let e = block_on(log.durable(written.next_offset)).unwrap_err();
        assert!(matches!(e, Error::LogFailed { .. }), "{e:?}");
        assert!(lock(&log.sync).waiters.is_empty());
    }

    #[test]
    fn the_syncer_collects_its_group_and_the_last_arrival_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), never()).unwrap());
        // The test plays the syncer: waits must not start one.
        lock(&log.sync).running = true;
        let written = log.write_batches(&[batch(1, 1, 10)]).unwrap();
        lock(&log.sync).last = LastGroup {
            first: 0,
            waiting: 3,
            took: Duration::from_secs(600),
            ended: Some(Instant::now()),
        };
        let syncer = {
            let log = log.clone();
            std::thread::spawn(move || {
                let st = log.collect(lock(&log.sync), Duration::from_secs(600));
                st.registered
            })
        };
        let mut waits = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                !syncer.is_finished(),
                "returned before its group was complete"
            );
            waits.push(log.durable(written.next_offset));
        }
        // A lost wake-up would leave it parked for ten minutes: fail instead.
        for _ in 0..2000 {
            if syncer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(syncer.is_finished(), "the third wait woke the syncer");
        assert_eq!(syncer.join().unwrap(), 3);
        assert!(lock(&log.sync).collector.is_none());
        drop(waits);
        assert!(lock(&log.sync).waiters.is_empty(), "dropped waits are gone");
    }

    /// A blocking caller that ran the group fsync returns once its own offset is on disk; a
    /// waiter that came during its fsync gets a syncer of its own, not the caller's thread.
    #[test]
    fn a_blocking_caller_hands_later_waiters_to_a_syncer_of_their_own() {
        #[derive(Debug, Default)]
        struct Arrive {
            log: OnceLock<Arc<Log>>,
            later: Mutex<Option<(u64, Durable)>>,
        }
        impl crate::Observer for Arrive {
            fn on_fsync(&self, _: Duration) {
                let mut later = self.later.lock().unwrap();
                if let (None, Some(log)) = (later.as_ref(), self.log.get()) {
                    // A write and a wait that arrive while the caller's fsync runs.
                    let written = log.write_batches(&[batch(1, 2, 10)]).unwrap();
                    *later = Some((written.next_offset, log.durable(written.next_offset)));
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let arrive = Arc::new(Arrive::default());
        let env = LogEnv {
            observer: arrive.clone(),
            ..LogEnv::default()
        };
        let log = Arc::new(Log::open_with(dir.path(), never(), env).unwrap());
        let first = log.write_batches(&[batch(1, 1, 10)]).unwrap().next_offset;
        arrive.log.set(log.clone()).unwrap();
        log.sync_to(first).unwrap();
        let (later_offset, later) = arrive.later.lock().unwrap().take().unwrap();
        assert!(log.synced_offset() >= first);
        assert!(
            log.synced_offset() < later_offset,
            "the caller did not fsync for the later waiter"
        );
        assert!(!lock(&log.sync).running, "the caller's syncer stopped");
        block_on(later).unwrap();
        assert!(log.synced_offset() >= later_offset);
    }
}
