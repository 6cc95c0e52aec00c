//! The registry of idempotent producers: which producer ids the broker has issued and each
//! one's current epoch, persisted so that ids are never issued twice and fencing survives a
//! restart.
//!
//! Storage tracks sequences per producer and partition; it only knows the epochs it has seen
//! on that partition. This registry is global: the broker refuses a batch whose epoch is not
//! the producer's current one before calling storage, so an `InitProducer` bump fences the
//! old epoch on every partition at once.
//!
//! The registry is the internal log `<data_dir>/internal/producer_ids` (`internal_log.rs`):
//! each `InitProducer` writes one batch of records `producer_id` i64, `epoch` i32
//! (little-endian) and answers once the storage group commit has made it durable; the last
//! record of an id wins and the next id is one past the largest. An epoch of 32768 marks an id
//! retired after its epoch ran out (every epoch of it is then fenced). The previous release's
//! `producers.log` (text lines `<producer id> <epoch>`) is migrated into it on first start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use runnel_proto::pb::ErrorCode;
use runnel_storage::LogEnv;

use crate::error::{Error, RpcError};
use crate::internal_log::{self, InternalLog, Legacy};

/// The internal log of producer ids, under `internal/`.
pub const PRODUCERS_LOG: &str = "producer_ids";
/// The previous release's journal under the data directory.
const LEGACY_FILE: &str = "producers.log";
/// The largest epoch; a bump past it issues a new producer id.
pub const MAX_EPOCH: i32 = i16::MAX as i32;
const RETIRED: i32 = MAX_EPOCH + 1;
/// The log is compacted once it is larger than this (a record is 12 bytes in a batch of
/// about 100).
const COMPACT_BYTES: u64 = 16 << 20;
const RECORD_LEN: usize = 12;

/// What has been written to the log, durable or not: decisions are made on it, under its
/// lock, so that two `InitProducer` calls never issue the same id or epoch.
struct Written {
    next_id: i64,
    epochs: HashMap<i64, i32>,
}

/// Issued producer ids and their current epochs.
pub struct Producers {
    log: InternalLog,
    /// The durable epochs, which batches are checked against.
    epochs: RwLock<HashMap<i64, i32>>,
    written: Mutex<Written>,
}

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Producers {
    /// Opens (recovering) and replays the internal log of producer ids under `data_dir`,
    /// creating it, from the previous release's `producers.log` if there is one. Blocking.
    ///
    /// # Errors
    /// As [`InternalLog::open`]; [`Error::Metadata`] for a record or a legacy line that is
    /// not a producer id and epoch.
    pub fn open(data_dir: &Path, env: &LogEnv) -> Result<Self, Error> {
        let read_legacy = |bytes: &[u8], max_batch: usize| {
            let epochs = read_legacy(bytes)?;
            let mut ids: Vec<_> = epochs.into_iter().collect();
            ids.sort_unstable();
            Ok(snapshot(ids, max_batch))
        };
        let log = InternalLog::open(
            data_dir,
            PRODUCERS_LOG,
            COMPACT_BYTES,
            env,
            Some(Legacy {
                path: data_dir.join(LEGACY_FILE),
                read: &read_legacy,
            }),
        )?;
        let mut written = Written {
            next_id: 0,
            epochs: HashMap::new(),
        };
        log.replay(|value, _| {
            let (id, epoch) = decode(value)?;
            written.record(id, epoch);
            Ok(())
        })?;
        Ok(Producers {
            log,
            epochs: RwLock::new(written.epochs.clone()),
            written: Mutex::new(written),
        })
    }

    /// Answers `InitProducer`: a new id with epoch 0, or the bumped epoch of an existing id.
    /// Blocking (waits for the storage group commit).
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a half-filled request, `PRODUCER_FENCED` for an old epoch,
    /// `UNKNOWN_PRODUCER` for an id or epoch never issued, `DISK_FULL` or `LOG_FAILED` if the
    /// log cannot be written.
    pub fn init(
        &self,
        producer_id: Option<i64>,
        producer_epoch: Option<i32>,
    ) -> Result<(i64, i16), RpcError> {
        let (changes, end) = {
            let mut w = lock(&self.written);
            let changes = w.decide(producer_id, producer_epoch)?;
            let batch = internal_log::batch(changes.iter().map(|(id, epoch)| encode(*id, *epoch)));
            let end = self.log.write(&[batch])?;
            for (id, epoch) in &changes {
                w.record(*id, *epoch);
            }
            (changes, end)
        };
        self.log.sync_to(end)?;
        {
            let mut epochs = self.epochs.write().unwrap_or_else(|p| p.into_inner());
            for (id, epoch) in &changes {
                // Epochs only grow: a later bump may have become durable first.
                let e = epochs.entry(*id).or_insert(*epoch);
                *e = (*e).max(*epoch);
            }
        }
        self.compact_if_due()?;
        // The issued id is the last change; its epoch is 0..=MAX_EPOCH.
        let (id, epoch) = changes[changes.len() - 1];
        Ok((id, epoch as i16))
    }

    /// Writes a snapshot of every id once the log has grown enough, and deletes what it
    /// replaces. The snapshot is written under the lock (so it holds every earlier write),
    /// and made durable after.
    fn compact_if_due(&self) -> Result<(), RpcError> {
        if !self.log.compact_due() {
            return Ok(());
        }
        let compaction = {
            let w = lock(&self.written);
            if !self.log.compact_due() {
                return Ok(());
            }
            let mut ids: Vec<_> = w.epochs.iter().map(|(i, e)| (*i, *e)).collect();
            ids.sort_unstable();
            self.log
                .start_compaction(&snapshot(ids, self.log.max_batch_bytes()))?
        };
        self.log.finish_compaction(compaction)
    }

    fn current(&self, id: i64) -> Option<i32> {
        self.epochs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// Checks that a batch's producer id and epoch are the current ones.
    ///
    /// # Errors
    /// `PRODUCER_FENCED` for an older epoch, `UNKNOWN_PRODUCER` for one never issued.
    pub fn check(&self, id: i64, epoch: i16) -> Result<(), RpcError> {
        let epoch = i32::from(epoch);
        match self.current(id) {
            None => Err(never_issued(id, epoch)),
            Some(c) if epoch < c => Err(RpcError::fenced(id, epoch, c.min(MAX_EPOCH))),
            Some(c) if epoch > c => Err(RpcError::new(
                ErrorCode::UnknownProducer,
                format!("producer {id} epoch {epoch} was never issued: the current epoch is {c}"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Closes the log cleanly. Blocking.
    ///
    /// # Errors
    /// The storage error; the next start then recovers the log.
    pub fn close(&self) -> Result<(), runnel_storage::Error> {
        self.log.close()
    }
}

impl Written {
    fn record(&mut self, id: i64, epoch: i32) {
        self.epochs.insert(id, epoch);
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// The changes an `InitProducer` makes, the issued id and epoch last.
    fn decide(
        &self,
        producer_id: Option<i64>,
        producer_epoch: Option<i32>,
    ) -> Result<Vec<(i64, i32)>, RpcError> {
        match (producer_id, producer_epoch) {
            (None, None) => Ok(vec![(self.next_id, 0)]),
            (Some(_), None) => Err(RpcError::invalid(
                "producer_epoch: required when producer_id is set",
            )),
            (None, Some(_)) => Err(RpcError::invalid(
                "producer_id: required when producer_epoch is set",
            )),
            (Some(id), Some(epoch)) => {
                if id < 0 {
                    return Err(RpcError::invalid(format!(
                        "producer_id {id} is negative; producer ids are 0 or more"
                    )));
                }
                match self.epochs.get(&id).copied() {
                    None => Err(never_issued(id, epoch)),
                    Some(c) if epoch < c => Err(RpcError::fenced(id, epoch, c.min(MAX_EPOCH))),
                    Some(c) if epoch > c => Err(RpcError::new(
                        ErrorCode::UnknownProducer,
                        format!(
                            "producer {id} epoch {epoch} was never issued: the current epoch is {c}"
                        ),
                    )),
                    // Out of epochs: retire the id (fencing it everywhere) and issue a new one,
                    // in one batch.
                    Some(c) if c >= MAX_EPOCH => Ok(vec![(id, RETIRED), (self.next_id, 0)]),
                    Some(c) => Ok(vec![(id, c + 1)]),
                }
            }
        }
    }
}

fn encode(id: i64, epoch: i32) -> [u8; RECORD_LEN] {
    let mut value = [0; RECORD_LEN];
    value[..8].copy_from_slice(&id.to_le_bytes());
    value[8..].copy_from_slice(&epoch.to_le_bytes());
    value
}

fn decode(value: &[u8]) -> Result<(i64, i32), String> {
    let bytes: [u8; RECORD_LEN] = value
        .try_into()
        .map_err(|_| format!("{} bytes, not {RECORD_LEN}", value.len()))?;
    let (id, epoch) = bytes.split_at(8);
    let id = i64::from_le_bytes(id.try_into().unwrap_or_default());
    let epoch = i32::from_le_bytes(epoch.try_into().unwrap_or_default());
    if id < 0 || !(0..=RETIRED).contains(&epoch) {
        return Err(format!("producer {id} epoch {epoch} is out of range"));
    }
    Ok((id, epoch))
}

/// Every id with its epoch, as the batches of a snapshot.
fn snapshot(ids: Vec<(i64, i32)>, max_batch: usize) -> Vec<Bytes> {
    internal_log::batches(
        ids.into_iter().map(|(id, epoch)| encode(id, epoch)),
        max_batch,
    )
}

/// Reads the previous release's `producers.log`: lines `<producer id> <epoch>`, the last line
/// of an id winning; `#` comments and blank lines ignored; a torn last line (no newline yet)
/// dropped, as it was never answered.
fn read_legacy(bytes: &[u8]) -> Result<HashMap<i64, i32>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut epochs = HashMap::new();
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i + 1 == lines.len() && !complete) {
            continue;
        }
        let parsed = line.split_once(' ').and_then(|(id, epoch)| {
            let id = id.parse::<i64>().ok().filter(|id| *id >= 0)?;
            let epoch = epoch
                .parse::<i32>()
                .ok()
                .filter(|e| (0..=RETIRED).contains(e))?;
            Some((id, epoch))
        });
        let (id, epoch) = parsed
            .ok_or_else(|| format!("line {} is not `<producer id> <epoch>`: {line:?}", i + 1))?;
        epochs.insert(id, epoch);
    }
    Ok(epochs)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn never_issued(id: i64, epoch: i32) -> RpcError {
    RpcError::new(
        ErrorCode::UnknownProducer,
        format!("producer {id} epoch {epoch} was never issued by this broker; call InitProducer"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_fencing_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let env = LogEnv::default();
        let p = Producers::open(dir.path(), &env).unwrap();
        assert_eq!(p.init(None, None).unwrap(), (0, 0));
        assert_eq!(p.init(None, None).unwrap(), (1, 0));
        assert_eq!(p.init(Some(0), Some(0)).unwrap(), (0, 1));
        p.check(0, 1).unwrap();
        assert_eq!(p.check(0, 0).unwrap_err().code, ErrorCode::ProducerFenced);
        assert_eq!(p.check(0, 2).unwrap_err().code, ErrorCode::UnknownProducer);
        assert_eq!(p.check(7, 0).unwrap_err().code, ErrorCode::UnknownProducer);
        assert_eq!(
            p.init(Some(0), Some(0)).unwrap_err().code,
            ErrorCode::ProducerFenced
        );
        assert_eq!(
            p.init(Some(0), None).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        // Without a clean close: the log is recovered like a partition's.
        drop(p);

        let p = Producers::open(dir.path(), &env).unwrap();
        assert_eq!(p.check(0, 0).unwrap_err().code, ErrorCode::ProducerFenced);
        p.check(0, 1).unwrap();
        p.check(1, 0).unwrap();
        assert_eq!(p.init(None, None).unwrap(), (2, 0));
        p.close().unwrap();
    }

    #[test]
    fn epoch_exhaustion_issues_a_new_id_and_fences_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let p = Producers::open(dir.path(), &LogEnv::default()).unwrap();
        p.init(None, None).unwrap();
        // Bump producer 0 to its last epoch, as 32767 InitProducer calls would.
        let end = p
            .log
            .write(&snapshot(vec![(0, MAX_EPOCH)], usize::MAX))
            .unwrap();
        p.log.sync_to(end).unwrap();
        lock(&p.written).record(0, MAX_EPOCH);
        p.epochs.write().unwrap().insert(0, MAX_EPOCH);
        assert_eq!(p.init(Some(0), Some(MAX_EPOCH)).unwrap(), (1, 0));
        assert_eq!(
            p.check(0, i16::MAX).unwrap_err().code,
            ErrorCode::ProducerFenced
        );
        drop(p);
        let p = Producers::open(dir.path(), &LogEnv::default()).unwrap();
        assert_eq!(
            p.check(0, i16::MAX).unwrap_err().code,
            ErrorCode::ProducerFenced
        );
        assert_eq!(p.init(None, None).unwrap(), (2, 0));
    }

    #[test]
    fn the_previous_releases_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("producers.log");
        // A torn last line (a crash mid-write) is dropped.
        std::fs::write(&old, "# ids\n0 0\n3 2\n0 1\n1 3").unwrap();
        let p = Producers::open(dir.path(), &LogEnv::default()).unwrap();
        assert!(!old.exists());
        p.check(0, 1).unwrap();
        p.check(3, 2).unwrap();
        assert_eq!(p.check(1, 3).unwrap_err().code, ErrorCode::UnknownProducer);
        assert_eq!(p.init(None, None).unwrap(), (4, 0));

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("producers.log"), "0 0\nseven 1\n").unwrap();
        let err = Producers::open(other.path(), &LogEnv::default()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn compaction_keeps_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = Producers::open(dir.path(), &LogEnv::default()).unwrap();
        // A snapshot written by hand, then a compaction: every id survives a reopen.
        for _ in 0..50 {
            p.init(None, None).unwrap();
        }
        p.init(Some(7), Some(0)).unwrap();
        let ids: Vec<_> = lock(&p.written)
            .epochs
            .iter()
            .map(|(i, e)| (*i, *e))
            .collect();
        let c = p.log.start_compaction(&snapshot(ids, 256)).unwrap();
        p.log.finish_compaction(c).unwrap();
        drop(p);
        let p = Producers::open(dir.path(), &LogEnv::default()).unwrap();
        p.check(7, 1).unwrap();
        p.check(49, 0).unwrap();
        assert_eq!(p.init(None, None).unwrap(), (50, 0));
    }
}
