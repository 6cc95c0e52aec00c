//! One partition as the broker serves it: the storage [`Log`], a watch of its end offset that
//! wakes long polls and subscriptions when batches are appended, and its metrics.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        let partition = Partition {
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
}
