//! One partition as the broker serves it: the storage [`Log`], a watch of its end offset that
//! wakes long polls and subscriptions when batches are appended, the group commit of durable
//! produce requests, and its metrics.
//!
//! [`Partition`] is the only door to its log: appends, reads, offsets, retention, config
//! changes and closing all go through its methods, so that every append publishes the new end
//! offset and every change updates the gauges.
//!
//! Durable requests wait for their fsync without holding a thread each: the first one that
//! needs an fsync starts a blocking task that fsyncs (`Log::sync_to`) for as long as some
//! request wants an offset that is not on disk yet, publishing the synced offset after every
//! fsync; requests await that offset. One hand-off to the blocking pool per busy period instead
//! of one per request. Before each fsync the syncer waits, briefly, for the requests the last
//! one released to come back (see `Partition::collect`), so that one fsync covers all the
//! producers instead of every other one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_storage::batch::BatchHeader;
use runnel_storage::{Appended, Flusher, Log, LogConfig, LogEnv, ReadResult, RetentionOutcome};
use tokio::sync::watch;

use crate::metrics::{PartitionMetrics, TopicMetrics};

/// A partition of a topic.
#[derive(Debug)]
pub struct Partition {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The partition number.
    pub index: u32,
    /// The log. Its methods are synchronous and may block on disk: the methods of `Partition`
    /// that call them say so.
    log: Arc<Log>,
    /// The counters of the partition's topic.
    pub topic_metrics: TopicMetrics,
    end: watch::Sender<u64>,
    deleted: AtomicBool,
    metrics: PartitionMetrics,
    /// The synced offset, published after every fsync of the durable-produce syncer.
    synced: watch::Sender<u64>,
    /// The largest offset a waiting durable request wants on disk.
    wanted: AtomicU64,
    /// The syncer task is running.
    syncing: AtomicBool,
    /// Durable requests registered so far (a running count the syncer compares).
    registered: AtomicU64,
    /// Durable requests waiting now.
    pending: AtomicU64,
    /// While the syncer collects a group before an fsync: the `registered` count it waits
    /// for; 0 otherwise.
    collect_until: AtomicU64,
    /// The running syncer's thread, unparked by the request that completes its group.
    syncer_thread: Mutex<Option<Thread>>,
    /// What the syncer remembers of its last fsync, between runs.
    last_group: Mutex<Group>,
    /// The fsync error that failed the log, for the requests that waited on it.
    sync_failure: Mutex<Option<Arc<runnel_storage::Error>>>,
}

impl Partition {
    /// Opens (or creates, recovering if needed) the partition's log under `data_dir`.
    /// Blocking.
    ///
    /// # Errors
    /// The storage error from [`Log::open_with`].
    pub fn open(
        data_dir: &Path,
        topic: Arc<str>,
        index: u32,
        config: LogConfig,
        env: LogEnv,
        topic_metrics: TopicMetrics,
    ) -> Result<Self, runnel_storage::Error> {
        let dir = runnel_storage::partition_dir(data_dir, &topic, index);
        let log = Arc::new(Log::open_with(dir, config, env)?);
        let (end, _) = watch::channel(log.end_offset());
        let (synced, _) = watch::channel(log.synced_offset());
        let partition = Partition {
            synced,
            wanted: AtomicU64::new(0),
            syncing: AtomicBool::new(false),
            registered: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            collect_until: AtomicU64::new(0),
            syncer_thread: Mutex::new(None),
            last_group: Mutex::new(Group::default()),
            sync_failure: Mutex::new(None),
            metrics: PartitionMetrics::new(&topic, index),
            topic,
            index,
            log,
            topic_metrics,
            end,
            deleted: AtomicBool::new(false),
        };
        partition.update_gauges();
        Ok(partition)
    }

    /// Appends whole batches in order and publishes the new end offset; never waits for an
    /// fsync (see [`Partition::want_durable`]). Blocking.
    ///
    /// # Errors
    /// The storage error of [`Log::write_batches`].
    pub fn append(&self, batches: &[Bytes]) -> Result<Appended, runnel_storage::Error> {
        let appended = self.log.write_batches(batches)?;
        self.appended();
        Ok(appended)
    }

    /// [`Partition::append`] if the log can take the batches without waiting beyond a brief
    /// wait for its writer lock (never for a roll or an fsync), so that it may run on the
    /// runtime's thread; `None`, with nothing written, otherwise.
    pub fn try_append(&self, batches: &[Bytes]) -> Option<Result<Appended, runnel_storage::Error>> {
        let attempt = self.log.try_write_batches(batches);
        if let Some(Ok(_)) = &attempt {
            self.appended();
        }
        attempt
    }

    /// Reads whole batches from `offset`, at most `max_bytes` of them (at least one batch).
    /// Blocking.
    ///
    /// # Errors
    /// `OffsetOutOfRange` and the storage errors of [`Log::read`].
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, runnel_storage::Error> {
        self.log.read(offset, max_bytes)
    }

    /// The batch containing the first record at or after `timestamp`: its base offset (at
    /// least the log start) and its largest timestamp. `None` if every record is older.
    /// Blocking.
    ///
    /// # Errors
    /// The storage errors of [`Log::offset_for_timestamp`] and [`Log::read`].
    pub fn offset_for_time(
        &self,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, runnel_storage::Error> {
        let Some(offset) = self.log.offset_for_timestamp(timestamp)? else {
            return Ok(None);
        };
        let read = self.log.read(offset, 1)?;
        match BatchHeader::decode(&read.data) {
            Ok(h) => Ok(Some((
                h.base_offset.max(read.log_start_offset),
                h.effective_max_timestamp(),
            ))),
            // Retention or the end moved meanwhile; the offset found is still right.
            Err(_) => Ok(Some((offset, timestamp))),
        }
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The offset the next appended record gets.
    pub fn end_offset(&self) -> u64 {
        self.log.end_offset()
    }

    /// Bytes stored, over every segment.
    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// The number of segments.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// True once a write or fsync failed the log: it refuses appends until reopened.
    pub fn has_failed(&self) -> bool {
        self.log.has_failed()
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// The largest batch the partition accepts, in bytes (the topic's `max_batch_bytes`).
    pub fn max_batch_bytes(&self) -> usize {
        self.log.config().max_batch_bytes as usize
    }

    /// Applies a new storage config (a topic config change). Blocking.
    ///
    /// # Errors
    /// The storage error of [`Log::set_config`].
    pub fn set_config(&self, config: LogConfig) -> Result<(), runnel_storage::Error> {
        self.log.set_config(config)
    }

    /// Deletes the segments past the retention limits and refreshes the gauges. Blocking.
    ///
    /// # Errors
    /// The storage error of [`Log::enforce_retention`].
    pub fn enforce_retention(&self) -> Result<RetentionOutcome, runnel_storage::Error> {
        let outcome = self.log.enforce_retention();
        self.update_gauges();
        outcome
    }

    /// Has `flusher` flush the log on its `Interval` durability policy.
    pub fn flush_with(&self, flusher: &Flusher) {
        flusher.watch(&self.log);
    }

    /// Closes the log cleanly (fsync, producer snapshot, clean-shutdown marker). Blocking.
    ///
    /// # Errors
    /// The storage error of [`Log::close`].
    pub fn close(&self) -> Result<(), runnel_storage::Error> {
        self.log.close()
    }

    /// A receiver that sees every change of the end offset (and deletion); mark it seen before
    /// reading so that an append after the read is not missed.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Publishes the log's new end offset after an append, waking waiting readers.
    fn appended(&self) {
        let end = self.log.end_offset();
        self.end.send_if_modified(|old| {
            let changed = *old != end;
            *old = end;
            changed
        });
        self.update_gauges();
    }

    /// Marks the partition deleted (its topic was deleted) and wakes every waiting reader.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.end.send_modify(|_| {});
    }

    /// True once the partition's topic was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Refreshes the offset and size gauges.
    pub fn update_gauges(&self) {
        self.metrics.end_offset.set(self.log.end_offset() as f64);
        self.metrics
            .start_offset
            .set(self.log.start_offset() as f64);
        self.metrics.size.set(self.log.size_bytes() as f64);
    }

    /// Registers a request that needs everything below `offset` on disk, starting the syncer
    /// if it is idle; await the returned [`DurableWait`]. Call it for every partition of a
    /// request before awaiting any, so that their fsyncs run at the same time.
    pub fn want_durable(self: &Arc<Self>, offset: u64) -> DurableWait {
        let counted = self.log.synced_offset() < offset;
        if counted {
            self.pending.fetch_add(1, Ordering::SeqCst);
            let registered = self.registered.fetch_add(1, Ordering::SeqCst) + 1;
            let until = self.collect_until.load(Ordering::SeqCst);
            if until != 0 && registered >= until {
                // The group is complete: the syncer may start its fsync.
                if let Some(t) = lock(&self.syncer_thread).as_ref() {
                    t.unpark();
                }
            }
            self.start_syncer(offset);
        }
        DurableWait {
            partition: self.clone(),
            offset,
            counted,
        }
    }

    /// Wants `offset` on disk, starting the syncer if it is idle.
    fn start_syncer(self: &Arc<Self>, offset: u64) {
        self.wanted.fetch_max(offset, Ordering::SeqCst);
        if self.log.synced_offset() < offset && !self.syncing.swap(true, Ordering::SeqCst) {
            let p = self.clone();
            tokio::task::spawn_blocking(move || p.sync_while_wanted());
        }
    }

    /// The syncer: fsyncs while a request wants more than is on disk. Blocking.
    fn sync_while_wanted(&self) {
        *lock(&self.syncer_thread) = Some(std::thread::current());
        let mut group = lock(&self.last_group);
        loop {
            while self.log.synced_offset() < self.wanted.load(Ordering::SeqCst) {
                self.collect(&group, COLLECT_MAX);
                let started = Instant::now();
                let first = self.registered.load(Ordering::SeqCst);
                let result = self.log.sync_to(self.log.end_offset());
                if let Err(e) = result {
                    lock(&self.sync_failure).get_or_insert(Arc::new(e));
                    self.syncing.store(false, Ordering::SeqCst);
                    self.synced.send_modify(|_| {});
                    return;
                }
                *group = Group {
                    first,
                    waiting: self.pending.load(Ordering::SeqCst),
                    took: started.elapsed(),
                    ended: Some(Instant::now()),
                };
                self.synced.send_replace(self.log.synced_offset());
            }
            self.syncing.store(false, Ordering::SeqCst);
            // A request that wanted more after the check above saw the syncer running: go on.
            if self.log.synced_offset() >= self.wanted.load(Ordering::SeqCst)
                || self.syncing.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }

    /// Before an fsync, waits (at most as long as the last fsync took, never more than `max`)
    /// until as many requests have registered since the last fsync started
    /// as were waiting when it ended. The requests the last fsync released come back with
    /// their next write while the others wait; without the wait, the next fsync would start
    /// at once without them and the producers would settle into two halves, each waiting for
    /// two fsyncs per request. A lone producer never waits: its group is complete when its
    /// request registers.
    fn collect(&self, group: &Group, max: Duration) {
        let Some(ended) = group.ended else {
            return;
        };
        if ended.elapsed() > COLLECT_RECENT {
            return;
        }
        let until = group.first + group.waiting;
        if self.registered.load(Ordering::SeqCst) >= until {
            return;
        }
        let deadline = Instant::now() + group.took.min(max);
        self.collect_until.store(until, Ordering::SeqCst);
        while self.registered.load(Ordering::SeqCst) < until {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        self.collect_until.store(0, Ordering::SeqCst);
    }

    fn failure(&self) -> Arc<runnel_storage::Error> {
        lock(&self.sync_failure).clone().unwrap_or_else(|| {
            Arc::new(runnel_storage::Error::LogFailed {
                path: self.log.dir().to_path_buf(),
            })
        })
    }
}

/// The longest a syncer waits for its group before an fsync.
const COLLECT_MAX: Duration = Duration::from_millis(1);

/// A syncer collects a group only if the last fsync ended this recently; an older group says
/// nothing about who is coming.
const COLLECT_RECENT: Duration = Duration::from_millis(10);

/// The syncer's last fsync.
#[derive(Debug, Default)]
struct Group {
    /// `registered` when it started: the requests it covered registered before.
    first: u64,
    /// Requests waiting when it ended, covered or not: the size of the next group.
    waiting: u64,
    /// How long it took.
    took: Duration,
    /// When it ended.
    ended: Option<Instant>,
}

/// A produce request's wait for its writes to one partition to be on disk, from
/// [`Partition::want_durable`].
#[derive(Debug)]
pub struct DurableWait {
    partition: Arc<Partition>,
    offset: u64,
    /// Counted in the partition's waiting requests.
    counted: bool,
}

impl DurableWait {
    /// Waits until everything below the offset is on disk.
    ///
    /// # Errors
    /// The fsync error that failed the log (the log then refuses appends until reopened).
    pub async fn wait(self) -> Result<(), Arc<runnel_storage::Error>> {
        let p = &self.partition;
        let mut synced = p.synced.subscribe();
        loop {
            synced.borrow_and_update();
            if p.log.synced_offset() >= self.offset {
                return Ok(());
            }
            if p.log.has_failed() {
                return Err(p.failure());
            }
            p.start_syncer(self.offset);
            // The sender lives as long as the partition.
            let _ = synced.changed().await;
        }
    }
}

impl Drop for DurableWait {
    fn drop(&mut self) {
        if self.counted {
            self.partition.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Locks a mutex, going on with the data if another thread panicked while holding it: every
/// structure guarded here is consistent between statements that can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use runnel_storage::batch::BatchBuilder;
    use runnel_storage::{Durability, LogConfig, LogEnv};

    use super::*;

    fn open(dir: &Path) -> Arc<Partition> {
        let config = LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let p = Partition::open(
            dir,
            "t".into(),
            0,
            config,
            LogEnv::default(),
            TopicMetrics::new("t"),
        )
        .expect("open");
        Arc::new(p)
    }

    fn batch(i: u32) -> bytes::Bytes {
        let mut b = BatchBuilder::new();
        b.push(Some(format!("k{i}").as_bytes()), Some(&[1u8; 100]), &[], 0);
        b.build()
    }

    #[test]
    fn appends_publish_the_new_end_to_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path());
        let mut end = p.watch_end();
        end.borrow_and_update();
        let appended = p.append(&[batch(0), batch(1)]).expect("append");
        assert_eq!(appended.next_offset, 2);
        assert!(end.has_changed().expect("sender alive"));
        assert_eq!(*end.borrow_and_update(), 2);
        let appended = p
            .try_append(&[batch(2)])
            .expect("nothing to wait for")
            .expect("append");
        assert_eq!(appended.next_offset, 3);
        assert_eq!(*end.borrow_and_update(), 3);
        assert_eq!((p.start_offset(), p.end_offset()), (0, 3));
        let read = p.read(1, 1 << 20).expect("read");
        assert_eq!(read.next_offset, 3);
        p.close().expect("close");
    }

    #[test]
    fn the_syncer_collects_its_group_and_the_last_arrival_wakes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path());
        p.log.write_batches(&[batch(0)]).expect("write");
        // The test plays the syncer: requests must not start one.
        p.syncing.store(true, Ordering::SeqCst);
        let group = Group {
            first: 0,
            waiting: 3,
            took: Duration::from_secs(600),
            ended: Some(Instant::now()),
        };
        let syncer = {
            let p = p.clone();
            std::thread::spawn(move || {
                *lock(&p.syncer_thread) = Some(std::thread::current());
                p.collect(&group, Duration::from_secs(600));
                p.registered.load(Ordering::SeqCst)
            })
        };
        let mut waits = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                !syncer.is_finished(),
                "returned before its group was complete"
            );
            waits.push(p.want_durable(1));
        }
        // A lost wake-up would leave it parked for ten minutes: fail instead.
        for _ in 0..2000 {
            if syncer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(syncer.is_finished(), "the third request woke the syncer");
        assert_eq!(syncer.join().expect("syncer"), 3);
        assert_eq!(p.collect_until.load(Ordering::SeqCst), 0);
        assert_eq!(p.pending.load(Ordering::SeqCst), 3);
        drop(waits);
        assert_eq!(
            p.pending.load(Ordering::SeqCst),
            0,
            "a dropped wait is no longer counted"
        );
        // What is on disk already is not counted: nothing to wait for.
        p.log.sync_to(1).expect("sync");
        drop(p.want_durable(1));
        assert_eq!(p.registered.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_waits_share_fsyncs_and_the_syncer_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path());
        for round in 0..20u32 {
            let tasks: Vec<_> = (0..8u32)
                .map(|t| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let log = p.log.clone();
                        let written = tokio::task::spawn_blocking(move || {
                            log.write_batches(&[batch(round * 100 + t)])
                        })
                        .await
                        .expect("join")
                        .expect("write");
                        // A lost wake-up would hang: fail instead.
                        tokio::time::timeout(
                            std::time::Duration::from_secs(20),
                            p.want_durable(written.next_offset).wait(),
                        )
                        .await
                        .expect("woken")
                        .expect("durable");
                        assert!(p.log.synced_offset() >= written.next_offset);
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        }
        assert_eq!(p.log.synced_offset(), 160);
        // The syncer ends once nothing is wanted; a wait for what is on disk starts nothing.
        for _ in 0..100 {
            if !p.syncing.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!p.syncing.load(Ordering::SeqCst), "the syncer stopped");
        p.want_durable(160).wait().await.expect("on disk already");
        assert!(!p.syncing.load(Ordering::SeqCst));
    }
}
