//! What a log needs from its surroundings: a clock, someone to tell about fsyncs and repairs
//! (the broker turns these into metrics), and somewhere to run blocking work (the broker
//! lends its blocking thread pool).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// One repair made while opening a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The file repaired.
    pub path: PathBuf,
    /// What was done.
    pub kind: RepairKind,
    /// First offset affected (the log's end after a truncation).
    pub offset: u64,
    /// Byte position in the file.
    pub position: u64,
    /// Bytes removed from the file (0 for an index rebuild).
    pub bytes_dropped: u64,
    /// Why.
    pub reason: String,
}

/// Kinds of [`Repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairKind {
    /// A torn or corrupt tail was cut off a segment.
    TruncatedTail,
    /// A segment after a truncation point was deleted.
    DeletedSegment,
    /// An index was rebuilt from its segment.
    RebuiltIndex,
    /// An index file without its segment was deleted.
    DeletedOrphan,
}

/// Receives events a log does not handle itself. All methods default to doing nothing.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// An fsync of a segment finished (successfully or not) after `took`.
    fn on_fsync(&self, took: Duration) {
        let _ = took;
    }

    /// A repair was made while opening.
    fn on_repair(&self, repair: &Repair) {
        let _ = repair;
    }

    /// The log in `dir` failed after a write or fsync error: it refuses appends until it is
    /// opened again. Called once per log.
    fn on_failed(&self, dir: &std::path::Path) {
        let _ = dir;
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// Runs a log's blocking jobs: the group commit's syncer, started when a
/// [`Durable`](crate::Durable) wait finds none running. A job may fsync, so it must run where
/// blocking is allowed (a thread of its own, or an async runtime's blocking pool), never on
/// an async runtime's worker.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Runs `job` on a thread that may block. A job dropped without being run (no thread
    /// could be had) gives its work back: the waiters it would have served retry.
    fn spawn(&self, job: Box<dyn FnOnce() + Send>);
}

/// A spawner that starts a thread per job: for programs without a thread pool of their own.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadSpawner;

impl Spawner for ThreadSpawner {
    fn spawn(&self, job: Box<dyn FnOnce() + Send>) {
        let spawned = std::thread::Builder::new()
            .name("runnel-sync".into())
            .spawn(job);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a syncer thread");
        }
    }
}

/// Clock, observer and spawner handed to [`Log::open_with`](crate::Log::open_with).
#[derive(Debug, Clone)]
pub struct LogEnv {
    /// Time source for append times, segment age and retention.
    pub clock: Arc<dyn Clock>,
    /// Told about fsyncs and repairs.
    pub observer: Arc<dyn Observer>,
    /// Runs the group commit's syncer for [`Durable`](crate::Durable) waits.
    pub spawner: Arc<dyn Spawner>,
}

impl Default for LogEnv {
    fn default() -> Self {
        LogEnv {
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoopObserver),
            spawner: Arc::new(ThreadSpawner),
        }
    }
}
