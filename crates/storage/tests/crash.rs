//! Crash tests: damage the files of a log the way a crash, a torn write or a bad disk would,
//! reopen, and check that recovery keeps exactly what it must (see "Recovery" in
//! `docs/storage-format.md`).
//!
//! Dropping a `Log` without `close()` stands for `kill -9`: what was written is in the page
//! cache, but there is no clean-shutdown marker, so the next open recovers.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use runnel_storage::batch::{BatchBuilder, BatchHeader, Record};
use runnel_storage::{
    CLEAN_SHUTDOWN_MARKER, Durability, Error, Log, LogConfig, RUNNING_MARKER, RepairKind,
};

use common::{Rng, batch, read_all, seg_file, small_config};

/// One stored batch of a fixture log and where it lives.
#[derive(Debug, Clone)]
struct Stored {
    bytes: Bytes,
    base: u64,
    next: u64,
    /// Base offset of its segment.
    segment: u64,
    /// Byte position in its segment's `.log`.
    pos: u64,
}

impl Stored {
    fn records(&self) -> Vec<Record> {
        common::records(&self.bytes)
    }
}

/// A log written and then crashed (dropped without close), kept pristine in `path`.
struct Fixture {
    _root: tempfile::TempDir,
    path: PathBuf,
    batches: Vec<Stored>,
    segments: Vec<u64>,
    config: LogConfig,
}

impl Fixture {
    /// At least `segments` segments, and at least `active_batches` batches in the active one.
    fn new(seed: u64, segments: usize, active_batches: usize, clean: bool) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("pristine");
        let config = small_config();
        let log = Log::open(&path, config.clone()).expect("open");
        let mut rng = Rng::new(seed);
        let mut ts = 1_700_000_000_000i64;
        let mut i = 0;
        loop {
            let active_base = *log.segment_base_offsets().last().expect("segment");
            let in_active = read_all(&log)
                .iter()
                .filter(|b| base_of(b) >= active_base)
                .count();
            if log.segment_count() >= segments && in_active >= active_batches {
                break;
            }
            let n = 1 + rng.below(4) as u32;
            let len = 10 + rng.below(150) as usize;
            // Mostly rising timestamps, sometimes going back a little.
            ts += rng.below(1000) as i64 - 200;
            log.append(batch(i, n, len, ts)).expect("append");
            i += 1;
        }
        if clean {
            log.close().expect("close");
        }
        drop(log);
        let fixture = Self::describe(root, path, config);
        assert!(fixture.segments.len() >= segments);
        fixture
    }

    fn describe(root: tempfile::TempDir, path: PathBuf, config: LogConfig) -> Self {
        // Read back through a copy so the pristine directory keeps its (crashed) state.
        let probe = root.path().join("probe");
        copy_dir(&path, &probe);
        let log = Log::open(&probe, config.clone()).expect("open probe");
        assert!(
            log.repairs().is_empty(),
            "the fixture itself needed repairs"
        );
        let segments = log.segment_base_offsets();
        let mut batches = Vec::new();
        let mut pos = 0;
        let mut current = None;
        for bytes in read_all(&log) {
            let h = BatchHeader::decode(&bytes).expect("header");
            let segment = *segments
                .iter()
                .rev()
                .find(|s| **s <= h.base_offset)
                .expect("segment");
            if current != Some(segment) {
                current = Some(segment);
                pos = 0;
            }
            let len = bytes.len() as u64;
            batches.push(Stored {
                bytes,
                base: h.base_offset,
                next: h.next_offset(),
                segment,
                pos,
            });
            pos += len;
        }
        drop(log);
        fs::remove_dir_all(&probe).expect("remove probe");
        Fixture {
            _root: root,
            path,
            batches,
            segments,
            config,
        }
    }

    fn active(&self) -> u64 {
        *self.segments.last().expect("segment")
    }

    fn in_segment(&self, segment: u64) -> Vec<&Stored> {
        self.batches
            .iter()
            .filter(|b| b.segment == segment)
            .collect()
    }

    /// A fresh copy of the pristine log to damage.
    /// A copy of the pristine log with its running marker: what a crash of the process left,
    /// within the same boot.
    fn same_boot_copy(&self, name: &str) -> PathBuf {
        let dir = self.trial(name);
        fs::copy(self.path.join(RUNNING_MARKER), dir.join(RUNNING_MARKER))
            .expect("copy the running marker");
        dir
    }

    /// A copy of the pristine log to damage. The copy models a power cut: nothing says the
    /// files are as a process of this boot left them, so recovery trusts none of it.
    fn trial(&self, name: &str) -> PathBuf {
        let dir = self.path.parent().expect("parent").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove old trial");
        }
        copy_dir(&self.path, &dir);
        dir
    }
}

fn base_of(b: &Bytes) -> u64 {
    BatchHeader::decode(b).expect("header").base_offset
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_name() == RUNNING_MARKER {
            continue;
        }
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len)
        .expect("set_len");
}

fn flip(path: &Path, pos: u64, mask: u8) {
    let mut data = fs::read(path).expect("read");
    data[pos as usize] ^= mask;
    fs::write(path, data).expect("write");
}

/// Checks that `log` holds exactly `expected` (from its start), that every offset reads back
/// through the indexes, that seeking by time agrees, and that the indexes verify.
fn check_holds(log: &Log, expected: &[&Stored], context: &str) {
    let end = expected.last().map_or(log.start_offset(), |b| b.next);
    assert_eq!(log.end_offset(), end, "{context}: end offset");
    log.verify_indexes()
        .unwrap_or_else(|e| panic!("{context}: verify_indexes: {e}"));
    let all = read_all(log);
    assert_eq!(all.len(), expected.len(), "{context}: batch count");
    for (got, want) in all.iter().zip(expected) {
        assert!(
            got == &want.bytes,
            "{context}: batch at {} differs",
            want.base
        );
    }
    for b in expected {
        for offset in b.base..b.next {
            let r = log
                .read(offset, 0)
                .unwrap_or_else(|e| panic!("{context}: read {offset}: {e}"));
            assert!(
                common::joined(&r) == b.bytes,
                "{context}: read({offset}) is not the batch at {}",
                b.base
            );
            assert_eq!(r.next_offset, b.next);
        }
    }
    let records: Vec<Record> = expected.iter().flat_map(|b| b.records()).collect();
    let mut probes: Vec<i64> = records.iter().map(|r| r.timestamp).collect();
    probes.extend(records.iter().map(|r| r.timestamp + 1));
    probes.push(i64::MIN + 1);
    probes.sort_unstable();
    probes.dedup();
    for t in probes {
        let want = records.iter().find(|r| r.timestamp >= t).map(|r| r.offset);
        let got = log
            .offset_for_timestamp(t)
            .unwrap_or_else(|e| panic!("{context}: seek: {e}"));
        assert_eq!(got, want, "{context}: offset_for_timestamp({t})");
    }
}

/// Appends one batch after recovery, crashes again, reopens, and checks everything is there.
fn append_after_recovery(dir: &Path, config: &LogConfig, kept: &[&Stored], context: &str) {
    let log = Log::open(dir, config.clone()).expect("reopen");
    let end = log.end_offset();
    let appended = log
        .append(batch(9_999, 3, 40, 1_800_000_000_000))
        .expect("append after recovery");
    assert_eq!(
        appended.base_offsets,
        vec![end],
        "{context}: appends continue at the end"
    );
    drop(log);
    let log = Log::open(dir, config.clone()).expect("reopen after second crash");
    assert!(
        log.repairs().is_empty(),
        "{context}: second recovery repaired {:?}",
        log.repairs()
    );
    let all = read_all(&log);
    assert_eq!(
        all.len(),
        kept.len() + 1,
        "{context}: batches after the new append"
    );
    for (got, want) in all.iter().zip(kept) {
        assert!(
            got == &want.bytes,
            "{context}: batch at {} differs after append",
            want.base
        );
    }
    let last = BatchHeader::decode(all.last().expect("batch")).expect("header");
    assert_eq!((last.base_offset, last.record_count), (end, 3));
    log.verify_indexes().expect("verify after append");
}

#[test]
fn truncating_the_active_segment_anywhere_in_its_last_batches_keeps_the_valid_prefix() {
    let fx = Fixture::new(1, 3, 4, false);
    let active = fx.in_segment(fx.active());
    let log_path = seg_file(&fx.path, fx.active(), "log");
    let file_len = fs::metadata(&log_path).expect("stat").len();
    let from = active[active.len() - 3].pos;
    for cut in from..file_len {
        let dir = fx.trial("cut");
        let target = seg_file(&dir, fx.active(), "log");
        truncate(&target, cut);
        let log = Log::open(&dir, fx.config.clone()).expect("open after truncation");
        let kept: Vec<&Stored> = fx
            .batches
            .iter()
            .filter(|b| b.segment != fx.active() || b.pos + b.bytes.len() as u64 <= cut)
            .collect();
        let context = format!("cut at {cut}");
        let valid_len = kept
            .last()
            .filter(|b| b.segment == fx.active())
            .map_or(0, |b| b.pos + b.bytes.len() as u64);
        let end = kept.last().expect("kept").next;
        if cut == valid_len {
            assert!(
                log.repairs().is_empty(),
                "{context}: a cut at a batch boundary needs no repair"
            );
        } else {
            assert_eq!(log.repairs().len(), 1, "{context}: {:?}", log.repairs());
            let r = &log.repairs()[0];
            assert_eq!(r.kind, RepairKind::TruncatedTail, "{context}");
            assert_eq!(r.path, target, "{context}");
            assert_eq!(
                (r.offset, r.position, r.bytes_dropped),
                (end, valid_len, cut - valid_len),
                "{context}"
            );
        }
        assert_eq!(
            fs::metadata(&target).expect("stat").len(),
            valid_len,
            "{context}: file length"
        );
        check_holds(&log, &kept, &context);
        drop(log);
        append_after_recovery(&dir, &fx.config, &kept, &context);
    }
}

#[test]
fn flipped_bytes_in_the_active_segment_cut_the_log_before_the_damaged_batch() {
    let fx = Fixture::new(2, 3, 4, false);
    let active = fx.in_segment(fx.active());
    let damaged: Vec<&Stored> = active[active.len() - 3..].to_vec();
    let from = damaged[0].pos;
    let file_len = fs::metadata(seg_file(&fx.path, fx.active(), "log"))
        .expect("stat")
        .len();
    let mut rng = Rng::new(0xC0FFEE);
    for trial in 0..300 {
        let pos = from + rng.below(file_len - from);
        let mask = 1 + rng.below(255) as u8;
        let dir = fx.trial("flip");
        let target = seg_file(&dir, fx.active(), "log");
        flip(&target, pos, mask);
        let context = format!("trial {trial}: byte {pos} ^= {mask:#04x}");
        let hit = damaged
            .iter()
            .find(|b| b.pos <= pos && pos < b.pos + b.bytes.len() as u64)
            .expect("hit");
        let within = pos - hit.pos;
        let log =
            Log::open(&dir, fx.config.clone()).unwrap_or_else(|e| panic!("{context}: open: {e}"));
        if (12..20).contains(&within) {
            // `append_time` is stamped by the broker outside the CRC (so stamping needs no
            // CRC update); the format cannot detect a flip there, and the batch stays.
            assert!(log.repairs().is_empty(), "{context}: {:?}", log.repairs());
            assert_eq!(
                log.end_offset(),
                fx.batches.last().expect("batch").next,
                "{context}"
            );
            continue;
        }
        let kept: Vec<&Stored> = fx.batches.iter().filter(|b| b.base < hit.base).collect();
        assert_eq!(log.repairs().len(), 1, "{context}: {:?}", log.repairs());
        let r = &log.repairs()[0];
        assert_eq!(r.kind, RepairKind::TruncatedTail, "{context}");
        assert_eq!(r.path, target, "{context}");
        assert_eq!(
            (r.offset, r.position, r.bytes_dropped),
            (hit.base, hit.pos, file_len - hit.pos),
            "{context}"
        );
        check_holds(&log, &kept, &context);
        drop(log);
        append_after_recovery(&dir, &fx.config, &kept, &context);
    }
}

#[test]
fn a_clean_shutdown_marker_does_not_hide_a_damaged_tail() {
    let fx = Fixture::new(3, 2, 3, true);
    assert!(fx.path.join(CLEAN_SHUTDOWN_MARKER).exists());
    let active = fx.in_segment(fx.active());
    let last = active.last().expect("batch");
    let dir = fx.trial("marker");
    let target = seg_file(&dir, fx.active(), "log");
    flip(&target, last.pos + last.bytes.len() as u64 - 1, 0x01);
    let log = Log::open(&dir, fx.config.clone()).expect("open");
    let kept: Vec<&Stored> = fx.batches.iter().filter(|b| b.base < last.base).collect();
    assert!(
        log.repairs()
            .iter()
            .any(|r| r.kind == RepairKind::TruncatedTail && r.position == last.pos),
        "{:?}",
        log.repairs()
    );
    check_holds(&log, &kept, "marker with damaged tail");
    drop(log);
    append_after_recovery(&dir, &fx.config, &kept, "marker with damaged tail");
}

/// Damage done to one index file.
#[derive(Debug, Clone, Copy)]
enum IndexDamage {
    Deleted,
    /// Cut to a length that is not a whole number of entries.
    OddLength,
    /// Overwritten with random bytes, same length.
    Garbage,
    /// Emptied.
    Empty,
}

fn damage_index(path: &Path, damage: IndexDamage, rng: &mut Rng) {
    match damage {
        IndexDamage::Deleted => fs::remove_file(path).expect("remove"),
        IndexDamage::OddLength => {
            let len = fs::metadata(path).expect("stat").len();
            truncate(path, len.saturating_sub(3).max(5));
        }
        IndexDamage::Garbage => {
            let len = fs::metadata(path).expect("stat").len();
            let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            fs::write(path, garbage).expect("write");
        }
        IndexDamage::Empty => truncate(path, 0),
    }
}

#[test]
fn damaged_index_files_are_rebuilt_and_the_data_is_intact() {
    let mut rng = Rng::new(4);
    for clean in [false, true] {
        let fx = Fixture::new(4, 3, 3, clean);
        let everything: Vec<&Stored> = fx.batches.iter().collect();
        for damage in [
            IndexDamage::Deleted,
            IndexDamage::OddLength,
            IndexDamage::Garbage,
            IndexDamage::Empty,
        ] {
            for segment in [fx.segments[0], fx.segments[1], fx.active()] {
                for ext in ["index", "timeindex"] {
                    let context = format!("clean {clean}, {damage:?} {ext} of segment {segment}");
                    let dir = fx.trial("index");
                    damage_index(&seg_file(&dir, segment, ext), damage, &mut rng);
                    let log = Log::open(&dir, fx.config.clone())
                        .unwrap_or_else(|e| panic!("{context}: {e}"));
                    assert!(
                        log.repairs()
                            .iter()
                            .all(|r| r.kind == RepairKind::RebuiltIndex),
                        "{context}: only index rebuilds expected: {:?}",
                        log.repairs()
                    );
                    check_holds(&log, &everything, &context);
                    drop(log);
                    append_after_recovery(&dir, &fx.config, &everything, &context);
                }
            }
        }
    }
}

#[test]
fn a_corrupt_batch_in_a_sealed_segment_whose_index_is_rebuilt_is_reported_not_truncated() {
    for clean in [false, true] {
        for damage in [IndexDamage::Deleted, IndexDamage::OddLength] {
            let fx = Fixture::new(5, 3, 2, clean);
            let first = fx.in_segment(fx.segments[0]);
            assert!(first.len() >= 3, "the first segment holds a few batches");
            let middle = first[first.len() / 2];
            let dir = fx.trial("corrupt");
            let log_path = seg_file(&dir, fx.segments[0], "log");
            flip(&log_path, middle.pos + middle.bytes.len() as u64 - 2, 0x20);
            let mut rng = Rng::new(5);
            damage_index(&seg_file(&dir, fx.segments[0], "index"), damage, &mut rng);
            damage_index(
                &seg_file(&dir, fx.segments[0], "timeindex"),
                damage,
                &mut rng,
            );
            let context = format!("clean {clean}, index {damage:?}");
            match Log::open(&dir, fx.config.clone()) {
                Err(Error::CorruptSegment { path, position, .. }) => {
                    assert_eq!(path, log_path, "{context}");
                    assert_eq!(position, middle.pos, "{context}");
                }
                other => panic!("{context}: expected CorruptSegment, got {other:?}"),
            }
            // Nothing was cut or deleted: the acknowledged data after the damage is still there.
            assert_eq!(
                fs::metadata(&log_path).expect("stat").len(),
                first
                    .last()
                    .map(|b| b.pos + b.bytes.len() as u64)
                    .expect("batch"),
                "{context}"
            );
            for s in &fx.segments {
                assert!(
                    seg_file(&dir, *s, "log").exists(),
                    "{context}: segment {s} is still there"
                );
            }
        }
    }
}

/// Makes a sealed segment's index files look as if sealing never ran: preallocated to the
/// configured size, with (`keep_entries`) or without the entries the segment had.
fn unseal(dir: &Path, segment: u64, max_index_bytes: u32, keep_entries: bool) {
    for ext in ["index", "timeindex"] {
        let path = seg_file(dir, segment, ext);
        let mut data = if keep_entries {
            fs::read(&path).expect("read")
        } else {
            Vec::new()
        };
        let entry_size = if ext == "index" { 8 } else { 12 };
        data.resize(max_index_bytes as usize / entry_size * entry_size, 0);
        fs::write(&path, data).expect("write");
    }
}

/// Both index files of `segment` are trimmed again: the segment was sealed.
fn assert_sealed_again(dir: &Path, segment: u64, config: &LogConfig, context: &str) {
    for ext in ["index", "timeindex"] {
        let len = fs::metadata(seg_file(dir, segment, ext))
            .expect("stat")
            .len();
        assert!(
            len < u64::from(config.max_index_bytes) / 2,
            "{context}: {ext} is sealed again"
        );
    }
}

#[test]
fn a_crash_between_roll_and_seal_is_recovered() {
    let fx = Fixture::new(6, 3, 2, false);
    let everything: Vec<&Stored> = fx.batches.iter().collect();
    for keep_entries in [false, true] {
        for segment in [fx.segments[0], fx.segments[1]] {
            let context = format!("unsealed segment {segment}, entries kept {keep_entries}");
            let dir = fx.trial("unsealed");
            unseal(&dir, segment, fx.config.max_index_bytes, keep_entries);
            let log =
                Log::open(&dir, fx.config.clone()).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(log.repairs().len(), 1, "{context}: {:?}", log.repairs());
            assert_eq!(log.repairs()[0].kind, RepairKind::RebuiltIndex, "{context}");
            check_holds(&log, &everything, &context);
            assert_sealed_again(&dir, segment, &fx.config, &context);
            drop(log);
            append_after_recovery(&dir, &fx.config, &everything, &context);
        }
    }
}

#[test]
fn a_power_cut_that_lost_an_unsealed_segments_tail_ends_the_log_there() {
    let fx = Fixture::new(8, 4, 2, false);
    let victim = fx.segments[1];
    let last = *fx.in_segment(victim).last().expect("batch");
    let kept: Vec<&Stored> = fx.batches.iter().filter(|b| b.base < last.base).collect();
    for empty_indexes in [false, true] {
        // The OS wrote the later segments back, not the victim's last batch.
        let context =
            format!("segment {victim} without its last batch, empty indexes {empty_indexes}");
        let dir = fx.trial("lost-tail");
        if empty_indexes {
            truncate(&seg_file(&dir, victim, "index"), 0);
            truncate(&seg_file(&dir, victim, "timeindex"), 0);
        } else {
            unseal(&dir, victim, fx.config.max_index_bytes, true);
        }
        truncate(&seg_file(&dir, victim, "log"), last.pos);
        let log = Log::open(&dir, fx.config.clone()).unwrap_or_else(|e| panic!("{context}: {e}"));
        let ends: Vec<_> = log
            .repairs()
            .iter()
            .filter(|r| r.kind == RepairKind::TruncatedTail)
            .map(|r| (r.offset, r.position))
            .collect();
        assert_eq!(
            ends,
            [(last.base, last.pos)],
            "{context}: {:?}",
            log.repairs()
        );
        assert_eq!(
            log.segment_base_offsets(),
            fx.segments[..2].to_vec(),
            "{context}"
        );
        check_holds(&log, &kept, &context);
        drop(log);
        append_after_recovery(&dir, &fx.config, &kept, &context);

        // In the same boot the page cache has every write: a short segment is damage.
        let dir = fx.same_boot_copy("lost-tail-same-boot");
        unseal(&dir, victim, fx.config.max_index_bytes, true);
        truncate(&seg_file(&dir, victim, "log"), last.pos);
        let e = Log::open(&dir, fx.config.clone()).expect_err("a gap in the same boot");
        assert!(matches!(e, Error::CorruptSegment { .. }), "{context}: {e}");
    }
}

#[test]
fn a_torn_tail_in_an_unsealed_segment_cuts_the_log_there() {
    let fx = Fixture::new(7, 4, 2, false);
    let victim = fx.segments[1];
    let in_victim = fx.in_segment(victim);
    let last = in_victim.last().expect("batch");
    let end_of_victim = last.pos + last.bytes.len() as u64;
    for cut in [last.pos + 1, last.pos + 64, end_of_victim - 1] {
        let context = format!("unsealed segment {victim} cut at {cut}");
        let dir = fx.trial("torn-unsealed");
        unseal(&dir, victim, fx.config.max_index_bytes, true);
        truncate(&seg_file(&dir, victim, "log"), cut);
        let log = Log::open(&dir, fx.config.clone()).unwrap_or_else(|e| panic!("{context}: {e}"));
        let kept: Vec<&Stored> = fx.batches.iter().filter(|b| b.base < last.base).collect();
        let cuts: Vec<_> = log
            .repairs()
            .iter()
            .filter(|r| r.kind == RepairKind::TruncatedTail)
            .collect();
        assert_eq!(cuts.len(), 1, "{context}: {:?}", log.repairs());
        assert_eq!(
            (cuts[0].offset, cuts[0].position, cuts[0].bytes_dropped),
            (last.base, last.pos, cut - last.pos)
        );
        let deleted: Vec<u64> = log
            .repairs()
            .iter()
            .filter(|r| r.kind == RepairKind::DeletedSegment)
            .map(|r| r.offset)
            .collect();
        let mut later: Vec<u64> = fx
            .segments
            .iter()
            .copied()
            .filter(|s| *s > victim)
            .collect();
        later.reverse();
        assert_eq!(
            deleted, later,
            "{context}: later segments deleted, newest first"
        );
        assert_eq!(
            log.segment_base_offsets(),
            fx.segments[..2].to_vec(),
            "{context}"
        );
        check_holds(&log, &kept, &context);
        drop(log);
        append_after_recovery(&dir, &fx.config, &kept, &context);
    }
}

#[test]
fn a_log_file_without_indexes_and_orphaned_indexes_are_handled() {
    let fx = Fixture::new(8, 3, 2, true);
    let everything: Vec<&Stored> = fx.batches.iter().collect();
    let dir = fx.trial("orphans");
    // Indexes of a segment whose log is gone (an interrupted retention deletion).
    fs::write(seg_file(&dir, 999_999, "index"), [0u8; 64]).expect("write");
    fs::write(seg_file(&dir, 999_999, "timeindex"), [0u8; 48]).expect("write");
    // A file that is not a segment is left alone.
    fs::write(dir.join("notes.txt"), b"hello").expect("write");
    let log = Log::open(&dir, fx.config.clone()).expect("open");
    let orphans = log
        .repairs()
        .iter()
        .filter(|r| r.kind == RepairKind::DeletedOrphan)
        .count();
    assert_eq!(orphans, 2, "{:?}", log.repairs());
    assert!(!seg_file(&dir, 999_999, "index").exists());
    assert!(dir.join("notes.txt").exists());
    check_holds(&log, &everything, "orphans");
}

/// Regression: sealing a segment that holds a single record writes a time entry with relative
/// offset 0, which reads as a vacant slot; the sealed index used to be taken for an unsealed
/// (preallocated) one and rebuilt, with a repair, on every open.
#[test]
fn a_sealed_segment_holding_one_record_reopens_without_repairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let log = Log::open(dir.path(), config.clone()).expect("open");
    log.append(batch(1, 1, 3000, 5_000)).expect("append");
    log.append(batch(2, 1, 3000, 7_000)).expect("append rolls");
    assert_eq!(log.segment_base_offsets(), vec![0, 1]);
    log.close().expect("close");
    drop(log);
    for clean in [true, false] {
        let log = Log::open(dir.path(), config.clone()).expect("reopen");
        assert!(
            log.repairs().is_empty(),
            "clean {clean}: {:?}",
            log.repairs()
        );
        assert_eq!(log.offset_for_timestamp(4_000).expect("seek"), Some(0));
        assert_eq!(log.offset_for_timestamp(6_000).expect("seek"), Some(1));
        log.verify_indexes().expect("verify");
        if clean {
            log.close().expect("close");
        }
    }
}

/// A sealed offset index is checked at open for its shape only (its last entry), so damage to
/// an entry in the middle is found when a read uses it. Such a read must fail with
/// `CorruptSegment` or fall back to a correct answer; it must never return other batches than
/// the ones asked for.
#[test]
fn a_damaged_entry_inside_a_sealed_index_never_returns_wrong_batches() {
    let fx = Fixture::new(10, 3, 2, true);
    let segment = fx.segments[0];
    let index = seg_file(&fx.path, segment, "index");
    let entries = fs::read(&index).expect("read").len() / 8;
    assert!(
        entries >= 3,
        "the first segment has a few index entries ({entries})"
    );
    let mut caught = 0;
    for (victim, how) in [
        (0usize, "next"),
        (entries / 2, "next"),
        (entries / 2, "prev"),
        (1, "zero-rel"),
    ] {
        let dir = fx.trial("mid-index");
        let path = seg_file(&dir, segment, "index");
        let mut data = fs::read(&path).expect("read");
        let entry = |i: usize| data[i * 8..i * 8 + 8].to_vec();
        let replacement = match how {
            // Point at another batch start, keeping the relative offset.
            "next" => [&entry(victim)[..4], &entry(victim + 1)[4..]].concat(),
            "prev" => [&entry(victim)[..4], &entry(victim - 1)[4..]].concat(),
            _ => [&[0u8; 4][..], &entry(victim)[4..]].concat(),
        };
        data[victim * 8..victim * 8 + 8].copy_from_slice(&replacement);
        fs::write(&path, &data).expect("write");
        let context = format!("entry {victim} of {entries} made to point at the {how} one");
        let log = Log::open(&dir, fx.config.clone()).unwrap_or_else(|e| panic!("{context}: {e}"));
        for b in fx.in_segment(segment) {
            for offset in b.base..b.next {
                match log.read(offset, 0) {
                    Ok(r) => assert!(
                        common::joined(&r) == b.bytes,
                        "{context}: read({offset}) returned the wrong batch"
                    ),
                    Err(Error::CorruptSegment { path: p, .. }) => {
                        assert_eq!(p, path, "{context}: the error names the index");
                        caught += 1;
                    }
                    Err(e) => panic!("{context}: read({offset}): {e}"),
                }
            }
        }
    }
    assert!(caught > 0, "no read ever used a damaged entry");
}

/// Opening after a clean close, or after a crash of the process within the same boot, reads no
/// sealed data and only the active segment's tail after its last index entry: damage planted
/// before that tail goes unnoticed by the open (it is caught later by the consumer's CRC
/// check), while an open after a power cut, which verifies the whole active segment, finds it.
#[test]
fn a_clean_open_reads_only_the_tail_after_the_last_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        max_batch_bytes: 16 * 1024,
        durability: Durability::Never,
        retention_age: None,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let mut b = BatchBuilder::new();
    b.push(Some(b"k"), Some(&[7u8; 900]), &[], 1);
    let one = b.build();
    // 1 KiB batches: 64 per sealed segment, and an active segment with several index entries.
    while log.segment_count() < 3 || log.size_bytes() % (64 * 1024) < 20 * 1024 {
        log.append(one.clone()).unwrap();
    }
    let bases = log.segment_base_offsets();
    log.close().unwrap();
    drop(log);

    // Damage the value of the first batch of a sealed segment and of the active segment.
    let sealed = dir.path().join(format!("{:020}.log", bases[0]));
    let active = dir
        .path()
        .join(format!("{:020}.log", bases[bases.len() - 1]));
    flip(&sealed, 500, 0xff);
    flip(&active, 500, 0xff);

    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert!(log.repairs().is_empty(), "{:?}", log.repairs());
    assert!(
        log.reread_bytes() < 1024,
        "read {} bytes",
        log.reread_bytes()
    );
    let end = log.end_offset();
    drop(log); // a crash of the process: no marker this time, but the same boot

    // The page cache holds what the process wrote: again only the tail is read.
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert!(log.repairs().is_empty(), "{:?}", log.repairs());
    assert!(
        log.reread_bytes() < 1024,
        "read {} bytes",
        log.reread_bytes()
    );
    assert_eq!(log.end_offset(), end);
    drop(log);

    // A power cut: nothing of the last boot is trusted, the active segment is read whole.
    fs::remove_file(dir.path().join(RUNNING_MARKER)).unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    let cut: Vec<_> = log.repairs().iter().filter(|r| r.path == active).collect();
    assert_eq!(cut.len(), 1, "{:?}", log.repairs());
    assert_eq!(
        cut[0].position, 0,
        "the damaged first batch and all after it are cut"
    );
    assert!(log.end_offset() < end);
    assert_eq!(log.end_offset(), bases[bases.len() - 1]);
}

/// A process killed in the middle of a write leaves a torn tail; within the same boot the open
/// reads only the tail after the last index entry, cuts what does not check, and keeps the
/// indexes the process wrote.
#[test]
fn a_crash_in_the_same_boot_cuts_a_torn_tail_and_keeps_the_indexes() {
    let fx = Fixture::new(3, 2, 6, false);
    // The pristine copy keeps its running marker: a crash of the process, no power cut.
    let dir = fx.same_boot_copy("same-boot");
    let target = seg_file(&dir, fx.active(), "log");
    let valid_len = fs::metadata(&target).expect("stat").len();
    // Half a batch: the write the process died in.
    let last = fx.batches.last().expect("batch");
    let mut torn = fs::OpenOptions::new()
        .append(true)
        .open(&target)
        .expect("open");
    std::io::Write::write_all(&mut torn, &last.bytes[..last.bytes.len() / 2]).expect("write");
    drop(torn);

    let log = Log::open(&dir, fx.config.clone()).expect("open");
    assert_eq!(log.repairs().len(), 1, "{:?}", log.repairs());
    let r = &log.repairs()[0];
    assert_eq!(r.kind, RepairKind::TruncatedTail);
    assert_eq!((r.position, r.offset), (valid_len, last.next));
    assert!(
        log.reread_bytes() < valid_len / 2,
        "read {} of {valid_len} bytes",
        log.reread_bytes()
    );
    assert_eq!(fs::metadata(&target).expect("stat").len(), valid_len);
    let everything: Vec<&Stored> = fx.batches.iter().collect();
    check_holds(&log, &everything, "same boot");
    log.verify_indexes()
        .expect("the kept indexes agree with the data");
    drop(log);
    append_after_recovery(&dir, &fx.config, &everything, "same boot");
}

/// A crash between a roll and the sealing of the old segment, within the same boot: the old
/// segment's preallocated indexes are as the writer left them, so it is opened from them and
/// sealed, without reading it again.
#[test]
fn a_crash_between_roll_and_seal_in_the_same_boot_reads_only_the_tail() {
    let fx = Fixture::new(7, 3, 2, false);
    let everything: Vec<&Stored> = fx.batches.iter().collect();
    let segment = fx.segments[1];
    let dir = fx.same_boot_copy("unsealed-same-boot");
    unseal(&dir, segment, fx.config.max_index_bytes, true);
    let sealed_len = fs::metadata(seg_file(&dir, segment, "log"))
        .expect("stat")
        .len();
    let log = Log::open(&dir, fx.config.clone()).expect("open");
    assert!(log.repairs().is_empty(), "{:?}", log.repairs());
    assert!(
        log.reread_bytes() < sealed_len,
        "read {} bytes, the segment holds {sealed_len}",
        log.reread_bytes()
    );
    check_holds(&log, &everything, "unsealed in the same boot");
    assert_sealed_again(&dir, segment, &fx.config, "unsealed in the same boot");
    log.verify_indexes().expect("indexes agree");
}
