//! One partition as the broker serves it: the storage [`Log`], a watch of its end offset that
//! wakes long polls and subscriptions when batches are appended, the group commit of durable
//! produce requests, and its metrics.
//!
//! Durable requests wait for their fsync without holding a thread each: the first one that
//! needs an fsync starts a blocking task that fsyncs (`Log::sync_to`) for as long as some
//! request wants an offset that is not on disk yet, publishing the synced offset after every
//! fsync; requests await that offset. One hand-off to the blocking pool per busy period instead
//! of one per request, and each fsync covers everything written while the previous one ran.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use runnel_storage::{Log, LogConfig, LogEnv};
use tokio::sync::watch;

use crate::metrics::{PartitionMetrics, TopicMetrics};

/// A partition of a topic.
#[derive(Debug)]
pub struct Partition {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The partition number.
    pub index: u32,
    /// The log. Its methods are synchronous and may block on disk: call them from
    /// `spawn_blocking`.
    pub log: Arc<Log>,
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

    /// A receiver that sees every change of the end offset (and deletion); mark it seen before
    /// reading so that an append after the read is not missed.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Publishes the log's new end offset after an append, waking waiting readers.
    pub fn appended(&self) {
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

    /// Asks for everything below `offset` to be fsynced, starting the syncer if it is idle.
    /// Call it for every partition of a request before awaiting [`Partition::wait_durable`],
    /// so that their fsyncs run at the same time.
    pub fn want_durable(self: &Arc<Self>, offset: u64) {
        self.wanted.fetch_max(offset, Ordering::SeqCst);
        if self.log.synced_offset() < offset && !self.syncing.swap(true, Ordering::SeqCst) {
            let p = self.clone();
            tokio::task::spawn_blocking(move || p.sync_while_wanted());
        }
    }

    /// Waits until everything below `offset` is on disk.
    ///
    /// # Errors
    /// The fsync error that failed the log (the log then refuses appends until reopened).
    pub async fn wait_durable(
        self: &Arc<Self>,
        offset: u64,
    ) -> Result<(), Arc<runnel_storage::Error>> {
        let mut synced = self.synced.subscribe();
        loop {
            synced.borrow_and_update();
            if self.log.synced_offset() >= offset {
                return Ok(());
            }
            if self.log.has_failed() {
                return Err(self.failure());
            }
            self.want_durable(offset);
            // The sender lives as long as `self`.
            let _ = synced.changed().await;
        }
    }

    /// The syncer: fsyncs while a request wants more than is on disk. Blocking.
    fn sync_while_wanted(&self) {
        loop {
            while self.log.synced_offset() < self.wanted.load(Ordering::SeqCst) {
                let result = self.log.sync_to(self.log.end_offset());
                if let Err(e) = result {
                    self.sync_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(Arc::new(e));
                    self.syncing.store(false, Ordering::SeqCst);
                    self.synced.send_modify(|_| {});
                    return;
                }
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

    fn failure(&self) -> Arc<runnel_storage::Error> {
        self.sync_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| {
                Arc::new(runnel_storage::Error::LogFailed {
                    path: self.log.dir().to_path_buf(),
                })
            })
    }
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
                            p.wait_durable(written.next_offset),
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
        p.wait_durable(160).await.expect("on disk already");
        assert!(!p.syncing.load(Ordering::SeqCst));
    }
}
