//! What fails in a request to the object store, and the one-line form of its errors.

use std::path::Path;

/// Why a request to the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The store could not be read or written; retried (uploads) or reported as
    /// `REMOTE_STORAGE_UNAVAILABLE` (reads).
    #[error("object store request for {key} failed: {reason}")]
    Store {
        /// The object's key.
        key: String,
        /// The store's error, on one line.
        reason: String,
    },
    /// Another broker wrote the partition's manifest: this one stops copying it.
    #[error(
        "the manifest {key} was written by broker {writer}; this broker stops copying the partition"
    )]
    Fenced {
        /// The manifest's key.
        key: String,
        /// The broker id found in it.
        writer: String,
    },
    /// An object is not what its manifest says.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The local log and the manifest disagree: the first sealed local segment not copied
    /// does not start where the copies end.
    #[error(
        "partition {partition}: the copies end at offset {remote_end} but the next local segment starts at {local_base}"
    )]
    Gap {
        /// `topic/partition`.
        partition: String,
        /// The end of the copies.
        remote_end: u64,
        /// The base of the next local segment.
        local_base: u64,
    },
    /// Local storage failed while copying.
    #[error(transparent)]
    Local(#[from] runnel_storage::Error),
    /// A local file could not be read for an upload.
    #[error("read {} for upload: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl RemoteError {
    pub(super) fn file(path: &Path, source: std::io::Error) -> Self {
        RemoteError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn store(key: &object_store::path::Path, e: &object_store::Error) -> Self {
        RemoteError::Store {
            key: key.to_string(),
            reason: one_line(e),
        }
    }
}

/// An error and its sources on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}
