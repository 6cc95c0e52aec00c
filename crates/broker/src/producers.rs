//! The registry of idempotent producers: which producer ids the broker has issued and each
//! one's current epoch, persisted so that ids are never issued twice and fencing survives a
//! restart.
//!
//! Storage tracks sequences per producer and partition; it only knows the epochs it has seen
//! on that partition. This registry is global: the broker refuses a batch whose epoch is not
//! the producer's current one before calling storage, so an `InitProducer` bump fences the
//! old epoch on every partition at once.
//!
//! The registry is `<data_dir>/producers.log`, a text journal of `<producer id> <epoch>` lines
//! appended and fdatasynced before `InitProducer` answers; the last line of an id wins and
//! the next id is one past the largest. An epoch of 32768 marks an id retired after its epoch
//! ran out (every epoch of it is then fenced). At start the journal is read (a torn last line
//! is dropped: it was never answered) and rewritten compactly, atomically.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use runnel_proto::pb::ErrorCode;

use crate::error::{Error, RpcError};
use crate::files;

/// The journal's file name under the data directory.
pub const PRODUCERS_FILE: &str = "producers.log";
/// The largest epoch; a bump past it issues a new producer id.
pub const MAX_EPOCH: i32 = i16::MAX as i32;
const RETIRED: i32 = MAX_EPOCH + 1;

struct Journal {
    file: File,
    next_id: i64,
}

/// Issued producer ids and their current epochs.
pub struct Producers {
    path: PathBuf,
    epochs: RwLock<HashMap<i64, i32>>,
    journal: Mutex<Journal>,
}

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Producers {
    /// Reads and compacts the journal in `data_dir` (creating it if absent). Blocking.
    ///
    /// # Errors
    /// [`Error::Metadata`] for a malformed line other than a torn last one, [`Error::Io`].
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(PRODUCERS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut epochs = HashMap::new();
        let mut next_id = 0i64;
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if i + 1 == lines.len() && !complete {
                // A write cut short by a crash (no newline yet); it was never acknowledged.
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
            match parsed {
                Some((id, epoch)) => {
                    epochs.insert(id, epoch);
                    next_id = next_id.max(id.saturating_add(1));
                }
                None => {
                    return Err(Error::Metadata {
                        path,
                        reason: format!("line {} is not `<producer id> <epoch>`: {line:?}", i + 1),
                    });
                }
            }
        }
        let mut ids: Vec<_> = epochs.iter().collect();
        ids.sort();
        let mut compact =
            String::from("# Idempotent producer ids and epochs, written by runneld.\n");
        for (id, epoch) in ids {
            compact.push_str(&format!("{id} {epoch}\n"));
        }
        files::write_atomic(&path, compact.as_bytes()).map_err(|e| Error::io("write", &path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(Producers {
            path,
            epochs: RwLock::new(epochs),
            journal: Mutex::new(Journal { file, next_id }),
        })
    }

    /// Answers `InitProducer`: a new id with epoch 0, or the bumped epoch of an existing id.
    /// Blocking (one fdatasync).
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a half-filled request, `PRODUCER_FENCED` for an old epoch,
    /// `UNKNOWN_PRODUCER` for an id or epoch never issued, `INTERNAL` if the journal cannot be
    /// written.
    pub fn init(
        &self,
        producer_id: Option<i64>,
        producer_epoch: Option<i32>,
    ) -> Result<(i64, i16), RpcError> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let (id, epoch) = match (producer_id, producer_epoch) {
            (None, None) => (journal.next_id, 0),
            (Some(_), None) => {
                return Err(RpcError::invalid(
                    "producer_epoch: required when producer_id is set",
                ));
            }
            (None, Some(_)) => {
                return Err(RpcError::invalid(
                    "producer_id: required when producer_epoch is set",
                ));
            }
            (Some(id), Some(epoch)) => {
                if id < 0 {
                    return Err(RpcError::invalid(format!(
                        "producer_id {id} is negative; producer ids are 0 or more"
                    )));
                }
                let current = self.current(id);
                match current {
                    None => return Err(never_issued(id, epoch)),
                    Some(c) if epoch < c => {
                        return Err(RpcError::fenced(id, epoch, c.min(MAX_EPOCH)));
                    }
                    Some(c) if epoch > c => {
                        return Err(RpcError::new(
                            ErrorCode::UnknownProducer,
                            format!(
                                "producer {id} epoch {epoch} was never issued: the current epoch is {c}"
                            ),
                        ));
                    }
                    Some(c) if c >= MAX_EPOCH => {
                        // Out of epochs: retire the id (fencing it everywhere) and issue a new one.
                        self.append(&mut journal, id, RETIRED)?;
                        (journal.next_id, 0)
                    }
                    Some(c) => (id, c + 1),
                }
            }
        };
        self.append(&mut journal, id, epoch)?;
        if id >= journal.next_id {
            journal.next_id = id + 1;
        }
        // Epochs are 0..=MAX_EPOCH here.
        Ok((id, epoch as i16))
    }

    fn append(&self, journal: &mut Journal, id: i64, epoch: i32) -> Result<(), RpcError> {
        let line = format!("{id} {epoch}\n");
        journal
            .file
            .write_all(line.as_bytes())
            .and_then(|()| journal.file.sync_data())
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::StorageFull {
                    ErrorCode::DiskFull
                } else {
                    ErrorCode::Internal
                };
                RpcError::new(code, format!("writing {}: {e}", self.path.display()))
            })?;
        self.epochs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, epoch);
        Ok(())
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
        let p = Producers::open(dir.path()).unwrap();
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
        drop(p);

        // A torn last line (a crash mid-write) is dropped.
        let path = dir.path().join(PRODUCERS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"1 3").unwrap();
        drop(f);

        let p = Producers::open(dir.path()).unwrap();
        assert_eq!(p.check(0, 0).unwrap_err().code, ErrorCode::ProducerFenced);
        p.check(0, 1).unwrap();
        p.check(1, 0).unwrap();
        assert_eq!(p.init(None, None).unwrap(), (2, 0));
    }

    #[test]
    fn epoch_exhaustion_issues_a_new_id_and_fences_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let p = Producers::open(dir.path()).unwrap();
        p.init(None, None).unwrap();
        {
            let mut j = p.journal.lock().unwrap();
            p.append(&mut j, 0, MAX_EPOCH).unwrap();
        }
        assert_eq!(p.init(Some(0), Some(MAX_EPOCH)).unwrap(), (1, 0));
        assert_eq!(
            p.check(0, i16::MAX).unwrap_err().code,
            ErrorCode::ProducerFenced
        );
    }
}
