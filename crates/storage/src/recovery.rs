//! Opening a partition directory: find the segments, decide how far their files can be
//! trusted, read only what cannot be, cut a torn tail. See "Recovery" in
//! `docs/storage-format.md`.
//!
//! How far the files are trusted ([`Trust`]):
//! - after a clean close (the `.clean-shutdown` marker): everything was fsynced, indexes
//!   included; only the tail after the active segment's last index entry is read.
//! - after a crash of the process within the same boot of the machine (`.running` holds this
//!   boot's id): the page cache survived, so the files are what the process last wrote,
//!   indexes included, and only a write the process died in can be torn. The same tail is
//!   read, and cut where it stops checking. A segment whose sealing the crash interrupted is
//!   opened the same way, then sealed.
//! - otherwise (power loss or a reboot, a log that failed, data from an older release): the
//!   active segment, and one whose sealing was interrupted, are reread in full and their
//!   indexes rebuilt.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tracing::{debug, warn};

use crate::config::LogConfig;
use crate::env::{LogEnv, Repair, RepairKind};
use crate::error::{Error, Result};
use crate::index::{Index, OffsetEntry, TimeEntry};
use crate::segment::{self, ScanOutcome, Segment, SegmentIndexes};

/// Name of the marker file a clean close leaves in the partition directory.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".clean-shutdown";

/// Name of the file an open log keeps in its directory: the id of the boot it was opened in.
pub const RUNNING_MARKER: &str = ".running";

/// This boot of the machine (Linux's `boot_id`), read once; `None` where there is none.
fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    })
    .as_deref()
}

/// How far a partition's files can be trusted at open (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    Clean,
    SameBoot,
    None,
}

impl Trust {
    fn of(dir: &Path) -> Self {
        if dir.join(CLEAN_SHUTDOWN_MARKER).exists() {
            return Trust::Clean;
        }
        let running = fs::read_to_string(dir.join(RUNNING_MARKER)).ok();
        match (running, boot_id()) {
            (Some(was), Some(now)) if was.trim() == now => Trust::SameBoot,
            _ => Trust::None,
        }
    }

    fn trusted(self) -> bool {
        self != Trust::None
    }
}

/// Records that the log in `dir` is open in this boot, so that a crash of the process is
/// recovered from the page cache's state (module docs). Not fsynced: a copy lost to a power
/// cut means another boot anyway. Best effort: on a full disk the log still opens, and a
/// marker left empty or missing only makes the next recovery read more.
pub(crate) fn mark_running(dir: &Path) {
    let Some(boot) = boot_id() else {
        return;
    };
    let path = dir.join(RUNNING_MARKER);
    if let Err(e) = fs::write(&path, boot) {
        warn!(path = %path.display(), error = %e,
            "could not write the running marker; a crash will be recovered by rereading");
    }
}

/// Takes the clean-shutdown marker away before the log accepts appends, by renaming it back
/// to the running file (which [`mark_running`] then fills): a clean close and the next open
/// then neither allocate nor free an inode. That matters with thousands of logs: ext4 looks
/// past recently freed inodes when it allocates one, which made a close that created two
/// files per log take seconds.
fn unmark_clean(dir: &Path) -> Result<()> {
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    match fs::rename(&marker, dir.join(RUNNING_MARKER)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove clean-shutdown marker", &marker, e)),
    }
}

/// Marks the log in `dir` closed cleanly: the running file is renamed to the clean-shutdown
/// marker (its content is never read), or the marker is created empty where there is no
/// running file. With `fsync`, the marker is durable on return.
pub(crate) fn mark_clean(dir: &Path, fsync: bool) -> Result<()> {
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    match fs::rename(dir.join(RUNNING_MARKER), &marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            File::create(&marker)
                .map_err(|e| Error::io("create clean-shutdown marker", &marker, e))?;
        }
        Err(e) => return Err(Error::io("create clean-shutdown marker", &marker, e)),
    }
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Forgets that the log in `dir` is open, so that the next open rereads what a failed write
/// or fsync may have left. Best effort: the failure is already being reported.
pub(crate) fn unmark_running(dir: &Path) {
    let path = dir.join(RUNNING_MARKER);
    if let Err(e) = remove_file(&path) {
        warn!(path = %path.display(), error = %e, "could not remove the running marker");
    }
}

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
    /// Bytes of segment data read to open it.
    pub reread_bytes: u64,
    /// True if the open changed the directory in a way that must be durable before the log
    /// is written to (with [`DirSync::Deferred`], the caller's sync): it was created, the
    /// clean-shutdown marker was taken away, or a repair was made. Not after a crash of the
    /// process in this boot with nothing to repair: the files are then as the last process
    /// left them while it ran, and need no more than they needed then.
    pub changed: bool,
}

/// Whether [`open`] makes its directory changes durable itself, or leaves that to one
/// filesystem sync after many logs are open ([`open_logs`](crate::open_logs)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirSync {
    Now,
    Deferred,
}

#[derive(Default)]
struct Files {
    log: bool,
    index: bool,
    time_index: bool,
}

/// One partition being opened: where, how far its files are trusted, what was done.
struct Recovery<'a> {
    dir: &'a Path,
    config: &'a LogConfig,
    env: &'a LogEnv,
    trust: Trust,
    repairs: Vec<Repair>,
    reread_bytes: u64,
}

impl Recovery<'_> {
    fn report(&mut self, repair: Repair) {
        warn!(
            path = %repair.path.display(),
            kind = ?repair.kind,
            offset = repair.offset,
            position = repair.position,
            bytes_dropped = repair.bytes_dropped,
            reason = %repair.reason,
            "storage recovery repair"
        );
        self.env.observer.on_repair(&repair);
        self.repairs.push(repair);
    }
}

/// Opens or creates the partition log in `dir`.
pub(crate) fn open(
    dir: &Path,
    config: &LogConfig,
    env: &LogEnv,
    dir_sync: DirSync,
) -> Result<Opened> {
    let existed = dir.is_dir();
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut r = Recovery {
        dir,
        config,
        env,
        trust: Trust::of(dir),
        repairs: Vec::new(),
        reread_bytes: 0,
    };
    let mut found = list_segment_files(dir)?;
    delete_orphan_indexes(&mut r, &mut found)?;
    let segments = open_segments(&mut r, &found)?;
    let changed = !existed || found.is_empty() || r.trust == Trust::Clean || !r.repairs.is_empty();
    if r.trust == Trust::Clean {
        unmark_clean(dir)?;
    }
    mark_running(dir);
    if dir_sync == DirSync::Now {
        sync_dir(dir)?;
    }
    debug!(
        path = %dir.display(),
        segments = segments.len(),
        trust = ?r.trust,
        reread_bytes = r.reread_bytes,
        repairs = r.repairs.len(),
        "opened log"
    );
    Ok(Opened {
        segments,
        repairs: r.repairs,
        reread_bytes: r.reread_bytes,
        changed,
    })
}

/// The segment files in `dir`, by base offset.
fn list_segment_files(dir: &Path) -> Result<BTreeMap<u64, Files>> {
    let mut found: BTreeMap<u64, Files> = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some((base, ext)) = name.to_str().and_then(segment::parse_file_name) else {
            if name != CLEAN_SHUTDOWN_MARKER && name != RUNNING_MARKER {
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
    Ok(found)
}

/// Deletes index files whose log is gone: left by a deletion that a crash interrupted.
fn delete_orphan_indexes(r: &mut Recovery<'_>, found: &mut BTreeMap<u64, Files>) -> Result<()> {
    let orphans: Vec<u64> = found
        .iter()
        .filter(|(_, f)| !f.log)
        .map(|(b, _)| *b)
        .collect();
    for base in orphans {
        found.remove(&base);
        let (_, index, time_index) = Segment::file_paths(r.dir, base);
        for path in [index, time_index] {
            if path.exists() {
                remove_file(&path)?;
                r.report(Repair {
                    path,
                    kind: RepairKind::DeletedOrphan,
                    offset: base,
                    position: 0,
                    bytes_dropped: 0,
                    reason: "index without its segment".to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Opens every segment, oldest first. A segment whose tail was cut becomes the active one:
/// the segments after it are past the log's end and are deleted.
fn open_segments(r: &mut Recovery<'_>, found: &BTreeMap<u64, Files>) -> Result<Vec<Arc<Segment>>> {
    let bases: Vec<u64> = found.keys().copied().collect();
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let (segment, was_truncated) = match next_base {
            Some(next) => open_sealed(r, base, next)?,
            None => open_active(r, base)?,
        };
        segments.push(Arc::new(segment));
        if was_truncated && next_base.is_some() {
            delete_segments_after_cut(r, &bases[i + 1..])?;
            break;
        }
    }
    if segments.is_empty() {
        segments.push(Arc::new(Segment::create(
            r.dir,
            0,
            r.config.max_index_bytes,
        )?));
    }
    Ok(segments)
}

/// Deletes the segments after a torn one, newest first so that a crash in between leaves a
/// prefix.
fn delete_segments_after_cut(r: &mut Recovery<'_>, bases: &[u64]) -> Result<()> {
    for &base in bases.iter().rev() {
        let (log, index, time_index) = Segment::file_paths(r.dir, base);
        let bytes = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        remove_file(&log)?;
        remove_file(&index)?;
        remove_file(&time_index)?;
        r.report(Repair {
            path: log,
            kind: RepairKind::DeletedSegment,
            offset: base,
            position: 0,
            bytes_dropped: bytes,
            reason: "segment after a torn segment".into(),
        });
    }
    Ok(())
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
    let outcome = Segment::scan(&log, 0, base, |pos, h| {
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
fn cut_torn_tail(r: &mut Recovery<'_>, log: &Path, outcome: &ScanOutcome) -> Result<bool> {
    let Some(reason) = &outcome.stopped else {
        return Ok(false);
    };
    let len = fs::metadata(log)
        .map_err(|e| Error::io("stat segment", log, e))?
        .len();
    Segment::truncate_file(log, outcome.valid_len)?;
    r.report(Repair {
        path: log.to_path_buf(),
        kind: RepairKind::TruncatedTail,
        offset: outcome.next_offset,
        position: outcome.valid_len,
        bytes_dropped: len - outcome.valid_len,
        reason: reason.clone(),
    });
    Ok(true)
}

/// Reports the end of the log at an unsealed segment whose data stops, intact, before the
/// next segment's base: after a power cut, the OS had written a later segment's data but not this one's
/// tail. That tail was never fsynced, so nothing after it was acknowledged as durable (every
/// fsync of the log covers the rolled segments before the active one): the log ends here,
/// as after a torn tail, and the later segments are deleted.
fn report_lost_tail(r: &mut Recovery<'_>, log: &Path, segment: &Segment, next: u64) {
    r.report(Repair {
        path: log.to_path_buf(),
        kind: RepairKind::TruncatedTail,
        offset: segment.next_offset(),
        position: segment.size(),
        bytes_dropped: 0,
        reason: format!(
            "the segment ends at offset {} but the next starts at {next}: its tail was lost \
             before it reached the disk",
            segment.next_offset()
        ),
    });
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
fn open_active(r: &mut Recovery<'_>, base: u64) -> Result<(Segment, bool)> {
    if r.trust.trusted()
        && let Some(opened) = open_from_indexes(r, base)?
    {
        return Ok(opened);
    }
    let (indexes, outcome, log) = rebuild(r.dir, base, r.config)?;
    r.reread_bytes += outcome.valid_len;
    let cut = cut_torn_tail(r, &log, &outcome)?;
    if r.trust.trusted() {
        r.report(rebuilt_index_repair(
            &log,
            base,
            "active index missing or invalid",
        ));
    }
    Ok((
        Segment::from_parts(r.dir, base, indexes, &outcome, false)?,
        cut,
    ))
}

/// Opens a segment from its preallocated (active-shaped) indexes as they are, reading only
/// the tail after the last index entry. After a clean close the tail must check; after a
/// crash in the same boot a tail that stops checking is torn, and is cut. `None` when the
/// indexes cannot be used: the caller rebuilds them.
fn open_from_indexes(r: &mut Recovery<'_>, base: u64) -> Result<Option<(Segment, bool)>> {
    let (log, index_path, time_path) = Segment::file_paths(r.dir, base);
    let (Some(offset), Some(time)) = (
        Index::<OffsetEntry>::open_active(&index_path)?,
        Index::<TimeEntry>::open_active(&time_path)?,
    ) else {
        return Ok(None);
    };
    let (from_pos, from_offset) = offset.last().map_or((0, base), |e| {
        (u64::from(e.position), base + u64::from(e.relative_offset))
    });
    let len = fs::metadata(&log)
        .map_err(|e| Error::io("stat segment", &log, e))?
        .len();
    if from_pos > len {
        warn!(path = %log.display(), "index points past the end of its segment; rebuilding");
        return Ok(None);
    }
    let mut tail_ts = i64::MIN;
    let mut bytes_since_entry = 0u64;
    let outcome = Segment::scan(&log, from_pos, from_offset, |_, h| {
        bytes_since_entry += h.total_len() as u64;
        tail_ts = tail_ts.max(h.effective_max_timestamp());
    })?;
    r.reread_bytes += len - from_pos;
    if outcome.stopped.is_some() && r.trust == Trust::Clean {
        warn!(path = %log.display(), "clean-shutdown marker present but the tail does not check; recovering");
        return Ok(None);
    }
    if outcome.stopped.is_some() && outcome.valid_len == from_pos && from_pos > 0 {
        // Not even the batch the last index entry points at checks: not a torn write but
        // damage, or an index the crash left ahead of its data. Let the full rebuild decide.
        return Ok(None);
    }
    let cut = cut_torn_tail(r, &log, &outcome)?;
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
    Ok(Some((
        Segment::from_parts(r.dir, base, indexes, &outcome, false)?,
        cut,
    )))
}

/// Opens a sealed segment (one with a successor at `next`). Returns the segment and whether
/// its tail was cut (only possible for a segment whose sealing a crash interrupted).
fn open_sealed(r: &mut Recovery<'_>, base: u64, next: u64) -> Result<(Segment, bool)> {
    let (log, index_path, time_path) = Segment::file_paths(r.dir, base);
    let len = fs::metadata(&log)
        .map_err(|e| Error::io("stat segment", &log, e))?
        .len();
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
                Segment::from_parts(r.dir, base, indexes, &outcome, true)?,
                false,
            ));
        }
    }

    // Only index files still in their preallocated shape mean that a crash interrupted the
    // sealing. Missing ones, or ones of any other bad shape, are damage to a segment whose
    // data was complete and acknowledged: it must not be cut.
    let interrupted = !sealed_on_disk
        && r.trust != Trust::Clean
        && (Index::<OffsetEntry>::looks_preallocated(&index_path)?
            || Index::<TimeEntry>::looks_preallocated(&time_path)?);
    if !interrupted {
        // The data was complete when sealed; only an index is bad. Rebuild it, and treat a
        // batch that does not check as corruption of acknowledged data.
        let (indexes, outcome, log) = rebuild(r.dir, base, r.config)?;
        r.reread_bytes += outcome.valid_len;
        if let Some(reason) = outcome.stopped {
            return Err(Error::CorruptSegment {
                path: log,
                position: outcome.valid_len,
                reason,
            });
        }
        r.report(rebuilt_index_repair(
            &log,
            base,
            "sealed index missing or invalid",
        ));
        let segment = Segment::from_parts(r.dir, base, indexes, &outcome, false)?;
        return end_sealed(r, &log, segment, next);
    }

    // A crash interrupted the sealing: the data may be torn like an active segment's. Within
    // the same boot its indexes are as the writer left them.
    let from_indexes = if r.trust == Trust::SameBoot {
        open_from_indexes(r, base)?
    } else {
        None
    };
    let (segment, cut) = match from_indexes {
        Some(opened) => opened,
        None => {
            let (indexes, outcome, log) = rebuild(r.dir, base, r.config)?;
            r.reread_bytes += outcome.valid_len;
            let cut = cut_torn_tail(r, &log, &outcome)?;
            r.report(rebuilt_index_repair(&log, base, "sealing was interrupted"));
            (
                Segment::from_parts(r.dir, base, indexes, &outcome, false)?,
                cut,
            )
        }
    };
    if cut {
        return Ok((segment, true));
    }
    end_sealed(r, &log, segment, next)
}

/// Seals a rebuilt segment whose data checked to its end, if it ends where the next one
/// starts. Returns it, and whether the log ends with it instead.
///
/// # Errors
/// [`Error::CorruptSegment`] for data that ends elsewhere, unless a power cut explains it
/// ([`report_lost_tail`]).
fn end_sealed(
    r: &mut Recovery<'_>,
    log: &Path,
    segment: Segment,
    next: u64,
) -> Result<(Segment, bool)> {
    if segment.next_offset() < next && r.trust == Trust::None {
        report_lost_tail(r, log, &segment, next);
        return Ok((segment, true));
    }
    if segment.next_offset() != next {
        let reason = format!(
            "segment ends at offset {} but the next starts at {next}",
            segment.next_offset()
        );
        return Err(Error::CorruptSegment {
            path: log.to_path_buf(),
            position: segment.size(),
            reason,
        });
    }
    segment.seal()?;
    Ok((segment, false))
}
