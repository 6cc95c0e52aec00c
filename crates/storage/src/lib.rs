//! Runnel's storage engine: partitioned, append-only logs of record batches on disk.
//!
//! A synchronous library with no network and no async runtime: the broker drives it from
//! its own threads. The on-disk format is specified in `docs/storage-format.md`; each module
//! repeats the byte table of what it encodes.
//!
//! - [`batch`]: the record batch format (the `runnel-format` crate): validation, a builder,
//!   record decoding.
//! - [`Log`]: one partition: append, read, seek by time, roll (`log.rs`), its segment set
//!   (`segments.rs`), durability by group commit with blocking and async waits ([`Durable`],
//!   `sync.rs`), retention (`retention.rs`), recovery on open (`recovery.rs`).
//! - [`Flusher`]: the background fsync thread of the `interval` policy.
//! - [`open_logs`] and [`close_logs`]: many logs at once, in parallel, with one filesystem
//!   sync instead of one per log (`bulk.rs`).
//! - [`SealedSegment`], [`seed_log`] and the lookups over copied bytes: what tiered storage
//!   needs of a log (`tiering.rs`).
//!
//! ```
//! use runnel_storage::{Log, LogConfig, batch::BatchBuilder};
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path().join("orders/0"), LogConfig::default()).unwrap();
//! let mut b = BatchBuilder::new();
//! b.push(Some(b"order-42"), Some(b"created"), &[], 1_700_000_000_000);
//! let appended = log.append(b.build()).unwrap();
//! assert_eq!(appended.base_offsets, vec![0]);
//! let read = log.read(0, 1 << 20).unwrap();
//! assert_eq!((read.batches.len(), read.records, read.next_offset), (1, 1, 1));
//! log.close().unwrap();
//! ```

mod bulk;
mod config;
mod env;
mod error;
mod flusher;
mod index;
mod log;
mod producer;
mod recovery;
mod retention;
mod segment;
mod segments;
mod sync;
#[cfg(test)]
mod testing;
mod tiering;

use std::path::{Path, PathBuf};

/// The record batch format, from `runnel-format` (shared with the client).
pub use runnel_format as batch;

pub use bulk::{ClosedLogs, LogSpec, OpenedLogs, close_logs, open_logs};
pub use config::{Durability, LogConfig, MAX_SEGMENT_BYTES, MIN_CACHE_WINDOW};
pub use env::{
    Clock, LogEnv, NoopObserver, Observer, Repair, RepairKind, Spawner, SystemClock, ThreadSpawner,
};
pub use error::{Error, Result};
pub use flusher::Flusher;
pub use log::{Appended, Log, PendingRoll};
pub use producer::REMEMBERED_BATCHES;
pub use recovery::{CLEAN_SHUTDOWN_MARKER, RUNNING_MARKER};
pub use retention::RetentionOutcome;
pub use segments::{BoundedRead, LargeBatch, ReadResult};
pub use sync::Durable;
pub use tiering::{
    SealedSegment, SplitBatches, empty_producer_snapshot, index_position, seed_log, split_batches,
    time_index_offset,
};

/// The directory of a partition's log: `<data_dir>/topics/<topic>/<partition>`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}
