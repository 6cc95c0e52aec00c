//! Fuzzing recovery (proptest): a log of a few segments is written and crashed (or closed),
//! then any of its files (segments, offset and time indexes, producer snapshots, markers) is
//! damaged at random: bytes set, cut, inserted, removed, or the whole file replaced by
//! arbitrary bytes. Opening it must never panic. It opens or fails with an error; once open,
//! every read returns batches whose checks pass, or an error (where open trusts the data, as
//! after a clean close, damage inside a batch is left to the consumer's CRC check), and the
//! log takes and returns a new append.
//!
//! CI runs a few hundred cases; long runs:
//! `docs/reliability.md`, "Fuzz targets" (CI's cases come from a fixed seed).
//! A failing case is written to `tests/fuzz.proptest-regressions` and replayed first on every
//! later run (commit it with the fix).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use runnel_fuzz_support::{apply, config, edit};
use runnel_storage::batch::{BatchBuilder, Batches};
use runnel_storage::{Log, RUNNING_MARKER};

use common::{batch, small_config};

/// Writes a log of a few segments, every other batch from an idempotent producer (so that
/// producer snapshots are written too); `clean` closes it, otherwise it is dropped as
/// `kill -9` would leave it.
fn write_log(dir: &Path, batches: usize, clean: bool) {
    let log = Log::open(dir, small_config()).expect("open");
    let mut sequence = 0i32;
    for i in 0..batches {
        let n = 1 + (i % 3) as u32;
        let value = vec![b'v'; 40 + i * 7 % 90];
        let mut b = BatchBuilder::new();
        if i % 2 == 1 {
            b.producer(7, 0, sequence);
            sequence += n as i32;
        }
        for r in 0..n {
            b.push(
                Some(b"k"),
                Some(&value),
                &[],
                1_700_000_000_000 + i64::from(r),
            );
        }
        log.append(b.build()).expect("append");
    }
    if clean {
        log.close().expect("close");
    }
}

/// The files of the log directory, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Opens the damaged log and checks what it serves. Only untrusted data is reread at open
/// (`docs/storage-format.md`, "Recovery"): sealed segments are not, and after a clean close
/// or within the same boot only the active segment's tail is. Damage inside a batch that
/// open trusts reaches the consumer, whose CRC check reports it, so a batch that fails its
/// checks is an error only when `all_reread`.
fn open_and_check(dir: &Path, all_reread: bool) {
    let Ok(log) = Log::open(dir, small_config()) else {
        // A clear error is an acceptable answer to damage recovery cannot undo.
        return;
    };
    let mut at = log.start_offset();
    while at < log.end_offset() {
        let Ok(r) = log.read(at, 64 << 10) else {
            break;
        };
        if r.is_empty() {
            break;
        }
        for b in r.batches.iter().flat_map(|b| Batches::new(b.clone())) {
            if let Err(e) = b
                && all_reread
            {
                panic!("a read at {at} returned a batch that fails its checks: {e}");
            }
        }
        assert!(r.next_offset > at, "a read went backwards");
        at = r.next_offset;
    }
    let end = log.end_offset();
    let appended = log
        .append(batch(99, 2, 10, 1_800_000_000_000))
        .expect("the recovered log takes an append");
    assert_eq!(appended.base_offsets, vec![end]);
    let r = log.read(end, 64 << 10).expect("read the new append");
    assert!(!r.is_empty(), "the new append reads back");
}

proptest! {
    #![proptest_config(config(300, "tests/fuzz.proptest-regressions"))]

    #[test]
    fn recovery_from_damaged_files_never_panics_and_serves_only_checked_batches(
        batches in 20usize..70,
        clean in any::<bool>(),
        same_boot in any::<bool>(),
        targets in vec((any::<prop::sample::Index>(), vec(edit(), 1..4)), 1..3),
    ) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("log");
        write_log(&dir, batches, clean);
        if !same_boot {
            // A power cut: nothing says the files are as a process of this boot left them.
            let _ = fs::remove_file(dir.join(RUNNING_MARKER));
        }
        let all = files(&dir);
        let active = all.iter().rfind(|p| p.extension().is_some_and(|e| e == "log")).cloned();
        let mut sealed_data_damaged = false;
        for (index, edits) in &targets {
            let path = index.get(&all);
            sealed_data_damaged |=
                path.extension().is_some_and(|e| e == "log") && Some(path) != active.as_ref();
            let mut bytes = fs::read(path).expect("read");
            apply(&mut bytes, edits);
            fs::write(path, bytes).expect("write");
        }
        open_and_check(&dir, !clean && !same_boot && !sealed_data_damaged);
    }
}
