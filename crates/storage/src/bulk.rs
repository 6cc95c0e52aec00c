//! Opening and closing many logs at once, as a broker does at start and at shutdown.
//!
//! Logs open and close on a bounded number of threads, and the directory changes they make
//! are made durable once per filesystem (`syncfs`) instead of once per log: a clean open
//! renames each log's clean-shutdown marker back to its running file, a close writes
//! producer snapshots and renames the running files to markers, and none of that needs its own fsync as long as
//! one filesystem sync follows before anything relies on it. At open that sync comes
//! before [`open_logs`] returns, so before any append; at close the data is synced before
//! the markers are written, and the markers once more after.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::error;

use crate::config::LogConfig;
use crate::env::LogEnv;
use crate::error::{Error, Result};
use crate::log::{Log, lock};
use crate::recovery::DirSync;

/// A log for [`open_logs`] to open: its directory and configuration.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// The partition directory.
    pub dir: PathBuf,
    /// The log's configuration.
    pub config: LogConfig,
}

/// What [`open_logs`] did.
#[derive(Debug)]
pub struct OpenedLogs {
    /// Each log, or why it could not be opened, in the order of the specs.
    pub logs: Vec<Result<Log>>,
    /// Bytes of segment data read to open them: the tails recovery checked and the segments
    /// it rebuilt.
    pub reread_bytes: u64,
    /// Repairs made (torn tails cut, indexes rebuilt, ...); each was logged as it was made.
    pub repairs: usize,
    /// How long it took.
    pub took: Duration,
}

/// What [`close_logs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedLogs {
    /// Logs closed cleanly: the next open trusts them.
    pub closed: usize,
    /// Logs that could not be closed cleanly (each was logged): the next open recovers them.
    pub failed: usize,
    /// How long it took.
    pub took: Duration,
}

/// Opens the logs of `specs` on up to `threads` threads, then syncs their filesystems once,
/// if any open changed its directory (`recovery::Opened::changed`): after a crash of the
/// process with nothing to repair there is nothing to sync, and a sync would write back every
/// dirty page the killed process left, gigabytes after a heavy load.
///
/// # Errors
/// A failed filesystem sync: then no log is returned open, since what their opening changed
/// may not be on disk. A log that fails to open is reported in its slot of
/// [`OpenedLogs::logs`].
pub fn open_logs(specs: Vec<LogSpec>, env: &LogEnv, threads: usize) -> Result<OpenedLogs> {
    let started = Instant::now();
    let logs = parallel(specs, threads, |spec| {
        Log::open_in(spec.dir, spec.config, env.clone(), DirSync::Deferred)
    });
    let changed: Vec<PathBuf> = logs
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .filter(|l| l.changed_at_open)
        .map(|l| l.dir().to_path_buf())
        .collect();
    sync_filesystems(&changed)?;
    let opened = logs.iter().filter_map(|l| l.as_ref().ok());
    let (reread_bytes, repairs) = opened.fold((0, 0), |(bytes, repairs), log| {
        (bytes + log.reread_bytes(), repairs + log.repairs().len())
    });
    Ok(OpenedLogs {
        logs,
        reread_bytes,
        repairs,
        took: started.elapsed(),
    })
}

/// Closes `logs` cleanly on up to `threads` threads: refuses appends, syncs their
/// filesystems once, writes every clean-shutdown marker, and syncs once more.
pub fn close_logs(logs: &[Arc<Log>], threads: usize) -> ClosedLogs {
    let started = Instant::now();
    let prepared = parallel(logs.to_vec(), threads, |log| {
        let result = log.prepare_close(DirSync::Deferred);
        (log, result)
    });
    let dirs: Vec<PathBuf> = logs.iter().map(|l| l.dir().to_path_buf()).collect();
    let synced = sync_filesystems(&dirs);
    let mut failed = 0;
    let mut to_mark = Vec::new();
    for (log, result) in prepared {
        match (&synced, result) {
            (Ok(()), Ok(true)) => to_mark.push(log),
            (_, Ok(false)) => {}
            (Err(e), Ok(true)) => {
                failed += 1;
                error!(path = %log.dir().display(), error = %e, "log not closed cleanly: the filesystem sync failed");
            }
            (_, Err(e)) => {
                failed += 1;
                error!(path = %log.dir().display(), error = %e, "log not closed cleanly");
            }
        }
    }
    let marked = parallel(to_mark, threads, |log| {
        let result = log.write_clean_marker(DirSync::Deferred);
        if let Err(e) = &result {
            error!(path = %log.dir().display(), error = %e, "clean-shutdown marker not written");
        }
        result.is_ok()
    });
    let mut closed = marked.iter().filter(|ok| **ok).count();
    failed += marked.len() - closed;
    if let Err(e) = sync_filesystems(&dirs) {
        error!(error = %e, "the clean-shutdown markers may not be on disk; the next start recovers");
        failed += closed;
        closed = 0;
    }
    ClosedLogs {
        closed,
        failed,
        took: started.elapsed(),
    }
}

/// Maps `items` through `f` on up to `threads` scoped threads, keeping their order.
fn parallel<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<std::sync::Mutex<Option<T>>> = items
        .into_iter()
        .map(|i| std::sync::Mutex::new(Some(i)))
        .collect();
    let results: Vec<std::sync::Mutex<Option<R>>> =
        slots.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = slots.get(i) else {
                        return;
                    };
                    let item = lock(slot).take();
                    if let Some(item) = item {
                        let r = f(item);
                        *lock(&results[i]) = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .filter_map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// Syncs each filesystem that holds one of `dirs`, once (`syncfs`).
fn sync_filesystems(dirs: &[PathBuf]) -> Result<()> {
    let mut filesystems: BTreeMap<u64, &Path> = BTreeMap::new();
    for dir in dirs {
        if let Ok(meta) = std::fs::metadata(dir) {
            filesystems.entry(meta.dev()).or_insert(dir);
        }
    }
    for dir in filesystems.values() {
        File::open(dir)
            .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
            .map_err(|e| Error::io("sync filesystem", dir, e))?;
    }
    Ok(())
}
