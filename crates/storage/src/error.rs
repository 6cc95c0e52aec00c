//! The storage engine's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Convenience alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
///
/// Variants carry the context an operator or a client needs (path, offset, field, limit). The
/// broker maps each variant to one gRPC status in a single place; see `docs/protocol.md`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A batch breaks the record batch format or its size limit: too large, a CRC mismatch,
    /// malformed, or of an unknown version (see [`runnel_format::Error`]).
    #[error(transparent)]
    Batch(#[from] runnel_format::Error),

    /// An idempotent producer's batch does not carry the next sequence number.
    #[error("producer {producer_id}: out-of-order sequence {received}, expected {expected}")]
    OutOfOrderSequence {
        /// The producer id.
        producer_id: i64,
        /// The sequence the log expected.
        expected: i32,
        /// The batch's base sequence.
        received: i32,
    },

    /// An idempotent producer's epoch is older than the newest seen: another instance with
    /// the same id took over.
    #[error(
        "producer {producer_id} is fenced: epoch {epoch} is older than the current {current_epoch}"
    )]
    ProducerFenced {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch seen for this producer.
        current_epoch: i16,
    },

    /// A retried batch older than the remembered window: it is in the log, but its offsets
    /// can no longer be returned.
    #[error("producer {producer_id}: sequence {sequence} was already written")]
    DuplicateSequence {
        /// The producer id.
        producer_id: i64,
        /// The batch's base sequence.
        sequence: i32,
    },

    /// A batch from a producer the log has no state for (never seen, or expired) does not
    /// start at sequence 0.
    #[error(
        "producer {producer_id} is unknown to this partition and sent sequence {sequence} instead of 0"
    )]
    UnknownProducer {
        /// The producer id.
        producer_id: i64,
        /// The batch's base sequence.
        sequence: i32,
    },

    /// A read or seek asked for an offset the log does not hold.
    #[error("offset {requested} is out of range: the log holds offsets [{log_start}, {log_end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// First offset still in the log.
        log_start: u64,
        /// Offset the next record will get.
        log_end: u64,
    },

    /// The filesystem is full (`ENOSPC`). The failed append was rolled back.
    #[error("disk full while writing {}", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Any other I/O error.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Stored data that should be intact is not (found in a sealed segment or a sealed index).
    #[error("corrupt segment {} at byte {position}: {reason}", path.display())]
    CorruptSegment {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What is wrong.
        reason: String,
    },

    /// A write or fsync failed earlier; the log refuses appends until it is reopened, because
    /// the kernel may have dropped data it had accepted.
    #[error("log {} refuses appends after an earlier write or fsync failure; reopen it", path.display())]
    LogFailed {
        /// The partition directory.
        path: PathBuf,
    },

    /// The log was closed.
    #[error("log {} is closed", path.display())]
    Closed {
        /// The partition directory.
        path: PathBuf,
    },

    /// A configuration value is out of its allowed range.
    #[error("invalid config {key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: &'static str,
        /// The constraint it violates.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and path, turning `ENOSPC` into [`Error::DiskFull`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::StorageFull {
            Error::DiskFull {
                path: path.to_path_buf(),
                source,
            }
        } else {
            Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// The same error again, for each waiter of an fsync that failed with it: I/O errors keep
    /// their kind and message; any other error becomes [`Error::LogFailed`] for `dir`.
    pub(crate) fn reissue(&self, dir: &Path) -> Self {
        let again = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: again(source),
            },
            Error::DiskFull { path, source } => Error::DiskFull {
                path: path.clone(),
                source: again(source),
            },
            _ => Error::LogFailed {
                path: dir.to_path_buf(),
            },
        }
    }

    pub(crate) fn malformed(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Batch(runnel_format::Error::malformed(field, reason))
    }

    /// True for errors caused by the batch a caller sent (as opposed to the log or the disk).
    pub fn is_bad_batch(&self) -> bool {
        matches!(self, Error::Batch(_))
    }
}
