//! Tiered storage: sealed segments copied to an S3-compatible object store, offsets no longer
//! on local disk read back from there, total retention applied to the copies, and a lost data
//! directory rebuilt from them (`docs/tiered-storage.md`).
//!
//! - [`Tiered`]: the broker's one door to the store: the client (`store.rs`, probed at
//!   start), the cache of remote reads (`read.rs`), and a small runtime of its own on which
//!   every request to the store runs, so that a blocking reader of a partition can wait for
//!   one from any thread.
//! - [`RemoteLog`]: one partition's copy: its manifest (`manifest.rs`), the uploads that
//!   extend it and the retention that trims it (`upload.rs`), reads (`read.rs`).
//! - `restore.rs`: topics rebuilt from the bucket.
//!
//! The storage engine knows nothing of this: it lists sealed segments and their files, and
//! deletes local segments only below the end of what was copied.

mod cache;
mod error;
mod manifest;
mod read;
mod remote;
mod restore;
mod store;
mod upload;

pub use cache::SegmentCache;
pub use error::{RemoteError, one_line};
pub use manifest::{MANIFEST_VERSION, Manifest, RemoteSegment, TopicRecord};
pub use read::RemoteRead;
pub use remote::{BROKER_ID_FILE, RemoteLog, Tiered, random_id};
pub use restore::{RestoredTopic, list_topics, restore_partition};
pub use upload::{Retention, UploadOutcome};

#[cfg(test)]
mod tests;
