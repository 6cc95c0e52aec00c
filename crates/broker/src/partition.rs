//! One partition as the broker serves it: the storage [`Log`], a watch of its end offset that
//! wakes long polls and subscriptions when batches are appended, and its metrics.
//!
//! [`Partition`] is the only door to its log: appends, reads, offsets, retention, config
//! changes and closing all go through its methods, so that every append publishes the new end
//! offset and every change updates the gauges.
//!
//! Durable requests await the log's group commit ([`Log::durable`]): the storage engine runs
//! the fsyncs on the broker's blocking pool and wakes each request once its writes are on
//! disk, so no thread waits per request.
//!
//! With tiered storage the partition also holds its [`RemoteLog`]: reads and time lookups
//! below the local log start go there, the log start is the copies' start, and local
//! retention deletes only what was copied.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use runnel_storage::batch::BatchHeader;
use runnel_storage::{
    Appended, BoundedRead, ClosedLogs, Durable, Flusher, Log, LogConfig, LogEnv, ReadResult,
    RetentionOutcome,
};
use tokio::sync::watch;

use crate::error::{At, RpcError};
use crate::metrics::{PartitionMetrics, TopicMetrics};
use crate::tiered::{RemoteError, RemoteLog, Retention, UploadOutcome};

/// Why a read or a time lookup of a partition failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The local log failed (including `OffsetOutOfRange`, with the partition's whole range).
    #[error(transparent)]
    Local(#[from] runnel_storage::Error),
    /// The offsets are held in the object store, which failed.
    #[error("offset {offset} in the object store: {source}")]
    Remote {
        /// The offset sought.
        offset: u64,
        /// The store's failure.
        #[source]
        source: RemoteError,
    },
}

/// A failure of an operation on a partition, as the client hears it: the one mapping of
/// partition errors to [`RpcError`].
pub trait PartitionFailure {
    /// The error for the client, naming the partition.
    fn to_rpc(&self, p: &Partition) -> RpcError;
}

impl PartitionFailure for runnel_storage::Error {
    fn to_rpc(&self, p: &Partition) -> RpcError {
        RpcError::storage(self, p.at())
    }
}

impl PartitionFailure for ReadError {
    fn to_rpc(&self, p: &Partition) -> RpcError {
        match self {
            ReadError::Local(e) => e.to_rpc(p),
            ReadError::Remote { offset, source } => match source {
                RemoteError::Local(e) => e.to_rpc(p),
                RemoteError::ShuttingDown => RpcError::shutting_down(),
                RemoteError::Corrupt { .. } => RpcError::new(
                    runnel_proto::pb::ErrorCode::CorruptLog,
                    format!("offset {offset} of {}/{}: {source}", p.topic, p.index),
                ),
                other => RpcError::remote_unavailable(*offset, p.at(), &other.to_string()),
            },
        }
    }
}

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
    /// The copy in the object store, with tiered storage on.
    remote: RwLock<Option<Arc<RemoteLog>>>,
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
        let log = Log::open_with(dir, config, env)?;
        Ok(Partition::new(topic, index, log, topic_metrics))
    }

    /// A partition over a log already opened ([`runnel_storage::open_logs`]).
    pub fn new(topic: Arc<str>, index: u32, log: Log, topic_metrics: TopicMetrics) -> Self {
        let log = Arc::new(log);
        let (end, _) = watch::channel(log.end_offset());
        let partition = Partition {
            metrics: PartitionMetrics::new(&topic, index),
            topic,
            index,
            log,
            topic_metrics,
            end,
            deleted: AtomicBool::new(false),
            remote: RwLock::new(None),
        };
        partition.update_gauges();
        partition
    }

    /// Appends whole batches in order and publishes the new end offset; never waits for an
    /// fsync (see [`Partition::want_durable`]), not even the seal of a segment the append
    /// rolled away from, which finishes on the blocking pool. Blocking.
    ///
    /// # Errors
    /// The storage error of [`Log::write_batches_deferring_roll`].
    pub fn append(&self, batches: &[Bytes]) -> Result<Appended, runnel_storage::Error> {
        let (appended, roll) = self.log.write_batches_deferring_roll(batches)?;
        if let Some(roll) = roll {
            self.log.finish_roll_in_background(roll);
        }
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

    /// Reads whole batches from `offset`, at most `max_bytes` of them (at least one batch),
    /// from the local log or, below its start, from the copies in the object store.
    /// Blocking.
    ///
    /// # Errors
    /// `OffsetOutOfRange` (naming the partition's whole range) and the storage errors of
    /// [`Log::read`]; [`ReadError::Remote`] if the object store fails.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, ReadError> {
        match self.log.read(offset, max_bytes) {
            Err(runnel_storage::Error::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            }) if requested < log_start => {
                if let Some(remote) = self.remote() {
                    let tiered = remote.tiered().clone();
                    let read = tiered
                        .run(async move { remote.read(offset, max_bytes).await })
                        .and_then(|r| r)
                        .map_err(|source| ReadError::Remote { offset, source })?;
                    if let Some(read) = read {
                        return Ok(ReadResult {
                            batches: read.batches,
                            records: read.records,
                            next_offset: read.next_offset,
                            log_start_offset: self.start_offset(),
                            log_end_offset: self.end_offset(),
                        });
                    }
                }
                Err(ReadError::Local(runnel_storage::Error::OffsetOutOfRange {
                    requested,
                    log_start: self.start_offset().min(log_start),
                    log_end,
                }))
            }
            other => other.map_err(ReadError::Local),
        }
    }

    /// [`Partition::read`] for a reader that bounds what it holds: a first batch of the local
    /// log larger than `first_max` is handed back to read in pieces
    /// ([`Log::read_bounded`]); below the local log, the object store's copies are read
    /// whole. Blocking.
    ///
    /// # Errors
    /// As [`Partition::read`].
    pub fn read_bounded(
        &self,
        offset: u64,
        max_bytes: usize,
        first_max: usize,
    ) -> Result<BoundedRead, ReadError> {
        match self.log.read_bounded(offset, max_bytes, first_max) {
            Err(runnel_storage::Error::OffsetOutOfRange {
                requested,
                log_start,
                ..
            }) if requested < log_start => self.read(offset, max_bytes).map(BoundedRead::Batches),
            other => other.map_err(ReadError::Local),
        }
    }

    /// Reads whole batches from the local log only (never the object store). Blocking.
    ///
    /// # Errors
    /// As [`Log::read`].
    pub fn read_local(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, runnel_storage::Error> {
        self.log.read(offset, max_bytes)
    }

    /// The batch containing the first record at or after `timestamp`: its base offset (at
    /// least the log start) and its largest timestamp. `None` if every record is older.
    /// The copies in the object store are asked first when they hold older offsets than the
    /// local log. Blocking.
    ///
    /// # Errors
    /// The storage errors of [`Log::offset_for_timestamp`] and [`Log::read`];
    /// [`ReadError::Remote`] if the object store fails.
    pub fn offset_for_time(&self, timestamp: i64) -> Result<Option<(u64, i64)>, ReadError> {
        let local_start = self.log.start_offset();
        if let Some(remote) = self.remote()
            && remote.manifest().start_offset() < local_start
        {
            let tiered = remote.tiered().clone();
            let found = tiered
                .run(async move { remote.offset_for_time(timestamp).await })
                .and_then(|r| r)
                .map_err(|source| ReadError::Remote {
                    offset: local_start,
                    source,
                })?;
            if let Some((offset, max_ts)) = found
                && offset < local_start
            {
                return Ok(Some((offset, max_ts)));
            }
        }
        Ok(self.local_offset_for_time(timestamp)?)
    }

    fn local_offset_for_time(
        &self,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, runnel_storage::Error> {
        let Some(offset) = self.log.offset_for_timestamp(timestamp)? else {
            return Ok(None);
        };
        let read = self.log.read(offset, 1)?;
        match read.batches.first().map(|b| BatchHeader::decode(b)) {
            Some(Ok(h)) => Ok(Some((
                h.base_offset.max(read.log_start_offset),
                h.effective_max_timestamp(),
            ))),
            // Retention or the end moved meanwhile; the offset found is still right.
            _ => Ok(Some((offset, timestamp))),
        }
    }

    /// The first offset still stored: in the object store with tiered storage, else on
    /// local disk.
    pub fn start_offset(&self) -> u64 {
        let local = self.log.start_offset();
        match self.remote() {
            Some(r) if r.is_loaded() && !r.manifest().is_empty() => {
                r.manifest().start_offset().min(local)
            }
            _ => local,
        }
    }

    /// The first offset on local disk.
    pub fn local_start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The copy in the object store, if the topic has tiered storage.
    pub fn remote(&self) -> Option<Arc<RemoteLog>> {
        self.remote
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Attaches the partition's copy in the object store (tiered storage turned on).
    pub fn set_remote(&self, remote: Arc<RemoteLog>) {
        *self
            .remote
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(remote);
    }

    /// Starts an upload pass of the sealed segments not yet copied, and total retention over
    /// the copies, on the object store's runtime. `None` without tiered storage.
    pub fn upload(
        &self,
        retention: Retention,
    ) -> Option<tokio::task::JoinHandle<Result<UploadOutcome, RemoteError>>> {
        let remote = self.remote()?;
        let log = self.log.clone();
        let tiered = remote.tiered().clone();
        tiered.spawn(async move { remote.upload(log, retention).await })
    }

    /// Where errors name the partition.
    fn at(&self) -> At<'_> {
        At {
            topic: &self.topic,
            partition: self.index,
            epoch: None,
        }
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
        let outcome = match self.remote() {
            // Only what is copied may go from the local disk.
            Some(remote) => self.log.enforce_retention_below(remote.copied_end()),
            None => self.log.enforce_retention(),
        };
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

    /// Closes the logs of `partitions` cleanly, `threads` at a time, with one filesystem
    /// sync for all ([`runnel_storage::close_logs`]). Blocking.
    pub fn close_all(partitions: &[Arc<Partition>], threads: usize) -> ClosedLogs {
        let logs: Vec<Arc<Log>> = partitions.iter().map(|p| p.log.clone()).collect();
        runnel_storage::close_logs(&logs, threads)
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
        self.metrics.start_offset.set(self.start_offset() as f64);
        self.metrics.size.set(self.log.size_bytes() as f64);
    }

    /// A wait for everything below `offset` to be on disk: the log's group commit, started
    /// now if it is idle. Call it for every partition of a request before awaiting any, so
    /// that their fsyncs run at the same time.
    pub fn want_durable(&self, offset: u64) -> Durable {
        self.log.durable(offset)
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
}
