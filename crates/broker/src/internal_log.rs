//! Internal logs: the broker's own state kept in storage logs, as Kafka keeps committed
//! offsets in `__consumer_offsets`.
//!
//! An internal log is `<data_dir>/internal/<name>/`, an ordinary log in the storage format
//! (`docs/storage-format.md`): opened, recovered (a torn tail truncated, with the same log
//! lines), synced by the one group commit and closed by the same storage code as every
//! partition. Its owner (committed offsets in `groups/offsets.rs`, producer ids in
//! `producers.rs`) writes each change as one batch, so that a change is all or nothing, and
//! rebuilds its state in memory from every record when the broker starts.
//!
//! **Compaction by snapshot.** Once the log is larger than its `compact_bytes` and more has
//! been appended since the last snapshot than that snapshot holds, the owner appends its whole
//! state again (a snapshot), and the segments wholly before the snapshot are deleted. An owner's
//! records therefore restate rather than modify: replaying the log from any record before a
//! complete snapshot gives the same state as replaying it from the start. Committed offsets
//! (a commit sets offsets, a delete forgets a group) and producer epochs (the last record of an
//! id wins) are both of that kind, and a snapshot cut short by a crash is harmless: every
//! record of it restates what was already true.
//!
//! **Migration.** The previous release kept this state in files of its own formats
//! (`producers.log`, `groups/offsets.log`). When the internal log does not exist yet and such
//! a file does, the file's state is written into a new log under `<name>.migrating`, made
//! durable, and renamed into place; only then is the old file deleted. A crash at any point
//! leaves either the old file (migrated again at the next start) or the new log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use runnel_storage::batch::{BatchBuilder, RecordBatch};
use runnel_storage::{Durability, Durable, Log, LogConfig, LogEnv, MAX_SEGMENT_BYTES};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::error::{At, Error, RpcError};
use crate::files;

/// The directory of the internal logs under the data directory.
pub const INTERNAL_DIR: &str = "internal";
/// Smallest segment of an internal log (the storage engine's minimum).
const MIN_SEGMENT_BYTES: u64 = 4096;

/// What the previous release kept in a file of its own, to migrate on first start.
pub struct Legacy<'a> {
    /// The previous release's file.
    pub path: PathBuf,
    /// Reads its bytes into the batches of a snapshot of its state, each of at most the
    /// given number of bytes; `Err` names what is wrong with the file.
    pub read: &'a dyn Fn(&[u8], usize) -> Result<Vec<Bytes>, String>,
}

/// A compaction whose snapshot is written, to finish with [`InternalLog::finish_compaction`].
#[derive(Debug)]
#[must_use]
pub struct Compaction {
    start: u64,
    end: u64,
    bytes: u64,
}

/// One internal log: the only door to it.
pub struct InternalLog {
    name: &'static str,
    log: Arc<Log>,
    compact_bytes: u64,
    /// Bytes of the last snapshot, and the log's size right after it.
    snapshot_bytes: AtomicU64,
    size_after_snapshot: AtomicU64,
}

impl std::fmt::Debug for InternalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalLog")
            .field("dir", &self.log.dir())
            .finish_non_exhaustive()
    }
}

impl InternalLog {
    /// Opens (recovering) the internal log `name` under `data_dir`, creating it, from
    /// `legacy` if that file exists, when it does not exist yet. Blocking.
    ///
    /// # Errors
    /// [`Error::InternalLog`] if the log cannot be opened or written, [`Error::Metadata`] for a
    /// legacy file that cannot be read, [`Error::Io`].
    pub fn open(
        data_dir: &Path,
        name: &'static str,
        compact_bytes: u64,
        env: &LogEnv,
        legacy: Option<Legacy<'_>>,
    ) -> Result<Self, Error> {
        let parent = data_dir.join(INTERNAL_DIR);
        let dir = parent.join(name);
        let config = log_config(compact_bytes);
        let storage = |source| Error::InternalLog {
            dir: dir.clone(),
            source,
        };
        let created = !dir.exists();
        if created {
            std::fs::create_dir_all(&parent)
                .map_err(|e| Error::io("create directory", &parent, e))?;
            let migrating = parent.join(format!("{name}.migrating"));
            if migrating.exists() {
                std::fs::remove_dir_all(&migrating)
                    .map_err(|e| Error::io("remove", &migrating, e))?;
            }
            if let Some(legacy) = legacy.as_ref().filter(|l| l.path.exists()) {
                migrate(legacy, &migrating, &dir, &config, env).map_err(|e| match e {
                    Migrate::Storage(e) => storage(e),
                    Migrate::Other(e) => e,
                })?;
            }
        }
        let log = Arc::new(Log::open_with(&dir, config, env.clone()).map_err(storage)?);
        if created {
            files::sync_dir(&parent).map_err(|e| Error::io("fsync", &parent, e))?;
            files::sync_dir(data_dir).map_err(|e| Error::io("fsync", data_dir, e))?;
        }
        if let Some(legacy) = legacy.filter(|l| l.path.exists()) {
            // Migrated, now or by a start that stopped before deleting the old file.
            remove_legacy(data_dir, &legacy.path)?;
        }
        let size = log.size_bytes();
        Ok(InternalLog {
            name,
            log,
            compact_bytes,
            snapshot_bytes: AtomicU64::new(0),
            size_after_snapshot: AtomicU64::new(size),
        })
    }

    /// Calls `apply` with the value and timestamp of every record, oldest first. Blocking.
    ///
    /// # Errors
    /// [`Error::InternalLog`] if the log cannot be read, [`Error::Metadata`] naming the record
    /// `apply` refused.
    pub fn replay(
        &self,
        mut apply: impl FnMut(&[u8], i64) -> Result<(), String>,
    ) -> Result<u64, Error> {
        let mut from = self.log.start_offset();
        let mut records = 0;
        let max_bytes = self.log.config().max_batch_bytes as usize;
        while from < self.log.end_offset() {
            let read = self
                .log
                .read(from, max_bytes)
                .map_err(|e| self.storage(e))?;
            if read.batches.is_empty() {
                break;
            }
            for bytes in read.batches {
                let batch =
                    RecordBatch::new(bytes, usize::MAX).map_err(|e| self.corrupt(from, e))?;
                let list = batch.records().map_err(|e| self.corrupt(from, e))?;
                for record in list {
                    let record = record.map_err(|e| self.corrupt(from, e))?;
                    let value = record.value.unwrap_or_default();
                    apply(&value, record.timestamp).map_err(|reason| Error::Metadata {
                        path: self.log.dir().to_path_buf(),
                        reason: format!("record at offset {}: {reason}", record.offset),
                    })?;
                    records += 1;
                }
            }
            from = read.next_offset;
        }
        Ok(records)
    }

    /// The largest batch the log takes, in bytes.
    pub fn max_batch_bytes(&self) -> usize {
        self.log.config().max_batch_bytes as usize
    }

    /// Writes batches to the log (not yet durable) and returns the offset past them. Blocking
    /// (a write to the page cache, and an fsync when it seals a full segment).
    ///
    /// # Errors
    /// `DISK_FULL` (nothing written), `LOG_FAILED` after an earlier fsync failure,
    /// `BATCH_TOO_LARGE` for a change larger than the log's largest batch.
    pub fn write(&self, batches: &[Bytes]) -> Result<u64, RpcError> {
        self.log
            .write_batches(batches)
            .map(|a| a.next_offset)
            .map_err(|e| self.rpc(&e))
    }

    /// Resolves once every offset below `offset` is on disk (the storage group commit).
    pub fn durable(&self, offset: u64) -> Durable {
        self.log.durable(offset)
    }

    /// Waits until every offset below `offset` is on disk. Blocking.
    ///
    /// # Errors
    /// The fsync's error (`LOG_FAILED` from then on).
    pub fn sync_to(&self, offset: u64) -> Result<(), RpcError> {
        self.log.sync_to(offset).map_err(|e| self.rpc(&e))
    }

    /// Maps a storage error of this log to the client error.
    pub fn rpc(&self, e: &runnel_storage::Error) -> RpcError {
        RpcError::storage(
            e,
            At {
                topic: &format!("{INTERNAL_DIR}/{}", self.name),
                partition: 0,
                epoch: None,
            },
        )
    }

    /// True when the log should be compacted: larger than `compact_bytes`, and more appended
    /// since the last snapshot than that snapshot holds.
    pub fn compact_due(&self) -> bool {
        let size = self.log.size_bytes();
        let appended = size.saturating_sub(self.size_after_snapshot.load(Ordering::Relaxed));
        size > self.compact_bytes && appended > self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Starts a compaction: writes `snapshot` (the owner's whole state, as batches) to the
    /// log, not yet durable. The caller keeps other writes out meanwhile, so that the
    /// snapshot holds everything written before it, and then calls
    /// [`InternalLog::finish_compaction`] without holding anything. Blocking.
    ///
    /// # Errors
    /// As [`InternalLog::write`].
    pub fn start_compaction(&self, snapshot: &[Bytes]) -> Result<Compaction, RpcError> {
        let start = self.log.end_offset();
        let end = if snapshot.is_empty() {
            start
        } else {
            self.write(snapshot)?
        };
        Ok(Compaction {
            start,
            end,
            bytes: snapshot.iter().map(|b| b.len() as u64).sum(),
        })
    }

    /// Waits until the snapshot is on disk and deletes the segments wholly before it.
    /// Blocking.
    ///
    /// # Errors
    /// As [`InternalLog::sync_to`]; a failed deletion is logged and retried at the next
    /// compaction.
    pub fn finish_compaction(&self, c: Compaction) -> Result<(), RpcError> {
        self.sync_to(c.end)?;
        let deleted = match self.log.delete_before(c.start) {
            Ok(out) => out.segments_deleted,
            Err(e) => {
                warn!(log = %self.log.dir().display(), error = %e, "deleting compacted segments failed");
                0
            }
        };
        let size = self.log.size_bytes();
        self.snapshot_bytes.store(c.bytes, Ordering::Relaxed);
        self.size_after_snapshot.store(size, Ordering::Relaxed);
        info!(log = %self.log.dir().display(), snapshot_bytes = c.bytes,
            segments_deleted = deleted, size_bytes = size, "compacted internal log");
        Ok(())
    }

    /// Writes batches on the blocking pool and waits until they are durable (the storage group
    /// commit): the one way an owner's writer task writes.
    ///
    /// # Errors
    /// As [`InternalLog::write`] and the fsync's error.
    pub async fn write_durably(self: &Arc<Self>, batches: Vec<Bytes>) -> Result<(), RpcError> {
        let log = self.clone();
        match tokio::task::spawn_blocking(move || log.write(&batches)).await {
            Ok(Ok(end)) => self.durable(end).await.map_err(|e| self.rpc(&e)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(RpcError::internal(format!(
                "writing the internal log {} failed: {e}",
                self.name
            ))),
        }
    }

    /// Compacts the log with `snapshot` (the owner's whole state, as batches) on the blocking
    /// pool, while the caller keeps other writes out; a failure is logged, and the next
    /// compaction tries again.
    pub async fn compact(self: &Arc<Self>, snapshot: Vec<Bytes>) {
        let log = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let c = log.start_compaction(&snapshot)?;
            log.finish_compaction(c)
        })
        .await;
        let failed = match done {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.message,
            Err(e) => e.to_string(),
        };
        warn!(log = self.name, error = %failed, "compacting an internal log failed");
    }

    /// Closes the log cleanly (everything fsynced, the clean-shutdown marker written). Blocking.
    ///
    /// # Errors
    /// The storage error; the next start then recovers the log.
    pub fn close(&self) -> Result<(), runnel_storage::Error> {
        self.log.close()
    }

    fn storage(&self, source: runnel_storage::Error) -> Error {
        Error::InternalLog {
            dir: self.log.dir().to_path_buf(),
            source,
        }
    }

    fn corrupt(&self, offset: u64, e: runnel_storage::batch::Error) -> Error {
        Error::Metadata {
            path: self.log.dir().to_path_buf(),
            reason: format!("batch at or after offset {offset}: {e}"),
        }
    }
}

/// One batch of `values`, one record each, stamped with the current time: one change,
/// written all or nothing.
pub fn batch<I, V>(values: I) -> Bytes
where
    I: IntoIterator<Item = V>,
    V: AsRef<[u8]>,
{
    let time_ms = now_ms();
    let mut b = BatchBuilder::new();
    for value in values {
        b.push(None, Some(value.as_ref()), &[], time_ms);
    }
    b.build()
}

/// Packs values into batches of at most `max_bytes` each (a value larger than that gets a
/// batch of its own, which the log then refuses), stamped with the current time.
pub fn batches<I, V>(values: I, max_bytes: usize) -> Vec<Bytes>
where
    I: IntoIterator<Item = V>,
    V: AsRef<[u8]>,
{
    let time_ms = now_ms();
    let mut out = Vec::new();
    let mut b = BatchBuilder::new();
    for value in values {
        let value = value.as_ref();
        // A record's framing (length, attributes, deltas, key and header counts) is at most
        // 30 bytes beyond its value.
        if !b.is_empty() && b.encoded_len() + value.len() + 30 > max_bytes {
            out.push(std::mem::take(&mut b).build());
        }
        b.push(None, Some(value), &[], time_ms);
    }
    if !b.is_empty() {
        out.push(b.build());
    }
    out
}

/// The configuration of an internal log: segments of a quarter of `compact_bytes`, so that
/// compaction can delete what a snapshot replaces; durable writes; no retention.
fn log_config(compact_bytes: u64) -> LogConfig {
    let segment_bytes = (compact_bytes / 4).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES / 2);
    LogConfig {
        segment_bytes,
        segment_age: None,
        retention_age: None,
        retention_bytes: None,
        // At most 1 GiB: fits a u32.
        max_batch_bytes: u32::try_from(segment_bytes).unwrap_or(u32::MAX),
        index_interval_bytes: 4096,
        max_index_bytes: 1 << 20,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

enum Migrate {
    Storage(runnel_storage::Error),
    Other(Error),
}

/// Writes the legacy file's state into a new log at `migrating`, closes it (durable, with
/// its clean-shutdown marker), and renames it to `dir`.
fn migrate(
    legacy: &Legacy<'_>,
    migrating: &Path,
    dir: &Path,
    config: &LogConfig,
    env: &LogEnv,
) -> Result<(), Migrate> {
    let path = &legacy.path;
    let bytes = std::fs::read(path).map_err(|e| Migrate::Other(Error::io("read", path, e)))?;
    let snapshot = (legacy.read)(&bytes, config.max_batch_bytes as usize).map_err(|reason| {
        Migrate::Other(Error::Metadata {
            path: path.clone(),
            reason,
        })
    })?;
    let log = Log::open_with(migrating, config.clone(), env.clone()).map_err(Migrate::Storage)?;
    let records = if snapshot.is_empty() {
        0
    } else {
        log.append_batches(&snapshot).map_err(Migrate::Storage)?;
        log.end_offset()
    };
    log.close().map_err(Migrate::Storage)?;
    drop(log);
    std::fs::rename(migrating, dir)
        .map_err(|e| Migrate::Other(Error::io("rename", migrating, e)))?;
    info!(from = %path.display(), to = %dir.display(), records,
        "migrated the previous release's file into an internal log");
    Ok(())
}

/// Deletes a migrated legacy file (and the temporary copy its compaction may have left)
/// durably, and its directory if that is left empty.
fn remove_legacy(data_dir: &Path, path: &Path) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    for file in [path, Path::new(&tmp)] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", file, e)),
        }
    }
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent != data_dir && std::fs::remove_dir(parent).is_ok() {
        files::sync_dir(data_dir).map_err(|e| Error::io("fsync", data_dir, e))
    } else {
        files::sync_dir(parent).map_err(|e| Error::io("fsync", parent, e))
    }
}
