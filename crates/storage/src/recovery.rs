//! Opening a partition directory: find the segments, check what a clean shutdown promises,
//! and after a crash cut the torn tail and rebuild indexes. See "Recovery" in
//! `docs/storage-format.md`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::config::LogConfig;
use crate::env::{LogEnv, Repair, RepairKind};
use crate::error::{Error, Result};
use crate::index::{Index, OffsetEntry, TimeEntry};
use crate::segment::{self, ScanOutcome, Segment, SegmentIndexes};

/// Name of the marker file a clean close leaves in the partition directory.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".clean-shutdown";

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("delete", path, e)),
    }
}

/// The segments of an opened partition, oldest first; the last is the active one.
pub(crate) struct Opened {
    pub segments: Vec<Arc<Segment>>,
    pub repairs: Vec<Repair>,
}

#[derive(Default)]
struct Files {
    log: bool,
    index: bool,
    time_index: bool,
}

fn report(env: &LogEnv, repairs: &mut Vec<Repair>, repair: Repair) {
    warn!(
        path = %repair.path.display(),
        kind = ?repair.kind,
        offset = repair.offset,
        position = repair.position,
        bytes_dropped = repair.bytes_dropped,
        reason = %repair.reason,
        "storage recovery repair"
    );
    env.observer.on_repair(&repair);
    repairs.push(repair);
}

/// Opens or creates the partition log in `dir`.
pub(crate) fn open(dir: &Path, config: &LogConfig, env: &LogEnv) -> Result<Opened> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    let clean = marker.exists();
    let mut repairs = Vec::new();

    let mut found: BTreeMap<u64, Files> = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some((base, ext)) = name.to_str().and_then(segment::parse_file_name) else {
            if name != CLEAN_SHUTDOWN_MARKER {
                debug!(path = %entry.path().display(), "ignoring file that is not a segment");
            }
            continue;
        };
        let files = found.entry(base).or_default();
        match ext {
            "log" => files.log = true,
            "index" => files.index = true,
            "timeindex" => files.time_index = true,
            _ => debug!(path = %entry.path().display(), "ignoring unknown segment file"),
        }
    }

    // Index files whose log is gone: left by a deletion that a crash interrupted.
    let orphans: Vec<u64> = found
        .iter()
        .filter(|(_, f)| !f.log)
        .map(|(b, _)| *b)
        .collect();
    for base in orphans {
        found.remove(&base);
        let (_, index, time_index) = Segment::file_paths(dir, base);
        for path in [index, time_index] {
            if path.exists() {
                remove_file(&path)?;
                let reason = "index without its segment".to_string();
                report(
                    env,
                    &mut repairs,
                    Repair {
                        path,
                        kind: RepairKind::DeletedOrphan,
                        offset: base,
                        position: 0,
                        bytes_dropped: 0,
                        reason,
                    },
                );
            }
        }
    }

    let bases: Vec<u64> = found.keys().copied().collect();
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
    let mut truncated_at: Option<usize> = None;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let opened = if next_base.is_some() {
            open_sealed(dir, base, next_base, clean, config, env, &mut repairs)?
        } else {
            open_active(dir, base, clean, config, env, &mut repairs)?
        };
        let (segment, was_truncated) = opened;
        segments.push(Arc::new(segment));
        if was_truncated && next_base.is_some() {
            truncated_at = Some(i);
            break;
        }
    }

    if let Some(i) = truncated_at {
        // Everything after a torn segment is after the log's end: delete it, newest first
        // so that a crash in between leaves a prefix.
        for &base in bases[i + 1..].iter().rev() {
            let (log, index, time_index) = Segment::file_paths(dir, base);
            let bytes = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            remove_file(&log)?;
            remove_file(&index)?;
            remove_file(&time_index)?;
            report(
                env,
                &mut repairs,
                Repair {
                    path: log,
                    kind: RepairKind::DeletedSegment,
                    offset: base,
                    position: 0,
                    bytes_dropped: bytes,
                    reason: "segment after a torn segment".into(),
                },
            );
        }
        // The torn segment, opened with fresh preallocated indexes, is now the active one.
    }

    if segments.is_empty() {
        segments.push(Arc::new(Segment::create(dir, 0, config.max_index_bytes)?));
    }

    if clean {
        remove_file(&marker)?;
    }
    sync_dir(dir)?;
    info!(
        path = %dir.display(),
        segments = segments.len(),
        clean_shutdown = clean,
        repairs = repairs.len(),
        "opened log"
    );
    Ok(Opened { segments, repairs })
}

/// Scans a whole segment, verifying every batch, into freshly created indexes.
fn rebuild(
    dir: &Path,
    base: u64,
    config: &LogConfig,
) -> Result<(SegmentIndexes, ScanOutcome, PathBuf)> {
    let (log, index, time_index) = Segment::file_paths(dir, base);
    let mut indexes = SegmentIndexes {
        offset: Index::create(&index, config.max_index_bytes)?,
        time: Index::create(&time_index, config.max_index_bytes)?,
        bytes_since_entry: 0,
        max_timestamp: i64::MIN,
    };
    let interval = u64::from(config.index_interval_bytes);
    let outcome = Segment::scan(&log, 0, base, true, |pos, h| {
        // Offsets inside a segment fit in u32 (the writer rolls before they would not).
        let rel = (h.base_offset - base) as u32;
        indexes.on_batch(
            pos,
            rel,
            h.total_len() as u64,
            h.effective_max_timestamp(),
            interval,
        );
    })?;
    Ok((indexes, outcome, log))
}

/// Cuts the segment at the end of its valid batches, if the scan stopped early. Returns true
/// if anything was cut.
fn cut_torn_tail(
    log: &Path,
    outcome: &ScanOutcome,
    env: &LogEnv,
    repairs: &mut Vec<Repair>,
) -> Result<bool> {
    let Some(reason) = &outcome.stopped else {
        return Ok(false);
    };
    let len = fs::metadata(log)
        .map_err(|e| Error::io("stat segment", log, e))?
        .len();
    Segment::truncate_file(log, outcome.valid_len)?;
    report(
        env,
        repairs,
        Repair {
            path: log.to_path_buf(),
            kind: RepairKind::TruncatedTail,
            offset: outcome.next_offset,
            position: outcome.valid_len,
            bytes_dropped: len - outcome.valid_len,
            reason: reason.clone(),
        },
    );
    Ok(true)
}

fn rebuilt_index_repair(log: &Path, base: u64, reason: &str) -> Repair {
    Repair {
        path: log.with_extension("index"),
        kind: RepairKind::RebuiltIndex,
        offset: base,
        position: 0,
        bytes_dropped: 0,
        reason: reason.to_string(),
    }
}

/// Opens the active (last) segment. Returns the segment and whether its tail was cut.
fn open_active(
    dir: &Path,
    base: u64,
    clean: bool,
    config: &LogConfig,
    env: &LogEnv,
    repairs: &mut Vec<Repair>,
) -> Result<(Segment, bool)> {
    let (log, index_path, time_path) = Segment::file_paths(dir, base);
    if clean
        && let (Some(offset), Some(time)) = (
            Index::<OffsetEntry>::open_active(&index_path)?,
            Index::<TimeEntry>::open_active(&time_path)?,
        )
    {
        // Only the tail after the last index entry is read.
        let (from_pos, from_offset) = offset.last().map_or((0, base), |e| {
            (u64::from(e.position), base + u64::from(e.relative_offset))
        });
        let mut tail_ts = i64::MIN;
        let mut bytes = 0u64;
        let outcome = Segment::scan(&log, from_pos, from_offset, true, |_, h| {
            bytes += h.total_len() as u64;
            tail_ts = tail_ts.max(h.effective_max_timestamp());
        })?;
        let bytes_since_entry = bytes;
        if outcome.stopped.is_none() {
            let max_timestamp = time.last().map_or(tail_ts, |e| e.timestamp.max(tail_ts));
            let first_append_time =
                Segment::read_first_append_time(&log)?.unwrap_or(outcome.first_append_time);
            let outcome = ScanOutcome {
                max_timestamp,
                first_append_time,
                ..outcome
            };
            let indexes = SegmentIndexes {
                offset,
                time,
                bytes_since_entry,
                max_timestamp,
            };
            return Ok((
                Segment::from_parts(dir, base, indexes, &outcome, false)?,
                false,
            ));
        }
        warn!(path = %log.display(), "clean-shutdown marker present but the tail does not check; recovering");
    }

    let (indexes, outcome, log) = rebuild(dir, base, config)?;
    let cut = cut_torn_tail(&log, &outcome, env, repairs)?;
    if clean {
        report(
            env,
            repairs,
            rebuilt_index_repair(&log, base, "active index missing or invalid"),
        );
    }
    Ok((
        Segment::from_parts(dir, base, indexes, &outcome, false)?,
        cut,
    ))
}

/// Opens a sealed segment (one with a successor at `next_base`). Returns the segment and
/// whether its tail was cut (only possible for a segment whose sealing a crash interrupted).
fn open_sealed(
    dir: &Path,
    base: u64,
    next_base: Option<u64>,
    clean: bool,
    config: &LogConfig,
    env: &LogEnv,
    repairs: &mut Vec<Repair>,
) -> Result<(Segment, bool)> {
    let (log, index_path, time_path) = Segment::file_paths(dir, base);
    let len = fs::metadata(&log)
        .map_err(|e| Error::io("stat segment", &log, e))?
        .len();
    let next = next_base.unwrap_or(base);
    let offset = Index::<OffsetEntry>::open_sealed(&index_path)?;
    let time = Index::<TimeEntry>::open_sealed(&time_path)?;
    let sealed_on_disk = offset.is_some();
    if let (Some(offset), Some(time)) = (offset, time) {
        let span = next.saturating_sub(base);
        let offset_ok = offset
            .last()
            .is_none_or(|e| u64::from(e.position) < len && u64::from(e.relative_offset) < span);
        // Sealing always leaves a time entry for a non-empty segment; without one the
        // segment's largest timestamp (seek by time, retention) would be lost.
        let time_ok = time
            .last()
            .map_or(len == 0, |e| u64::from(e.relative_offset) < span);
        if offset_ok && time_ok {
            let max_timestamp = time.last().map_or(i64::MIN, |e| e.timestamp);
            let outcome = ScanOutcome {
                valid_len: len,
                next_offset: next,
                max_timestamp,
                first_append_time: i64::MIN,
                stopped: None,
            };
            let indexes = SegmentIndexes {
                offset,
                time,
                bytes_since_entry: 0,
                max_timestamp,
            };
            return Ok((
                Segment::from_parts(dir, base, indexes, &outcome, true)?,
                false,
            ));
        }
    }

    // Only index files still in their preallocated shape mean that a crash interrupted the
    // sealing. Missing ones, or ones of any other bad shape, are damage to a segment whose
    // data was complete and acknowledged: it must not be cut.
    let interrupted = !sealed_on_disk
        && !clean
        && (Index::<OffsetEntry>::looks_preallocated(&index_path)?
            || Index::<TimeEntry>::looks_preallocated(&time_path)?);
    if !interrupted {
        // The data was complete when sealed; only an index is bad. Rebuild it, and treat a
        // batch that does not check as corruption of acknowledged data.
        let (indexes, outcome, log) = rebuild(dir, base, config)?;
        if let Some(reason) = outcome.stopped {
            return Err(Error::CorruptSegment {
                path: log,
                position: outcome.valid_len,
                reason,
            });
        }
        report(
            env,
            repairs,
            rebuilt_index_repair(&log, base, "sealed index missing or invalid"),
        );
        let segment = Segment::from_parts(dir, base, indexes, &outcome, false)?;
        segment.seal()?;
        return Ok((segment, false));
    }

    // A crash interrupted the sealing: the data may be torn like an active segment's.
    let (indexes, outcome, log) = rebuild(dir, base, config)?;
    let cut = cut_torn_tail(&log, &outcome, env, repairs)?;
    if !cut && outcome.next_offset != next {
        let reason = format!(
            "segment ends at offset {} but the next starts at {next}",
            outcome.next_offset
        );
        return Err(Error::CorruptSegment {
            path: log,
            position: outcome.valid_len,
            reason,
        });
    }
    report(
        env,
        repairs,
        rebuilt_index_repair(&log, base, "sealing was interrupted"),
    );
    let segment = Segment::from_parts(dir, base, indexes, &outcome, false)?;
    if !cut {
        segment.seal()?;
    }
    Ok((segment, cut))
}
