//! Power cuts on a real (simulated) disk: the log runs on `runnel-faultfs`, whose power cut
//! keeps what was fsynced and keeps, rewinds, tears or garbles everything else. Recovery
//! must open whatever a cut leaves, and serve only batches that were written, in order.
//!
//! Needs root and `/dev/fuse` (CI has both); elsewhere the tests say they were skipped.

mod common;

use std::fs;
use std::path::Path;

use bytes::Bytes;
use runnel_faultfs::{Disk, can_mount};
use runnel_storage::{Log, LogConfig, RUNNING_MARKER};

use common::{Rng, batch, read_all, small_config};

/// Appends `n` batches of a few records each, leaving every roll to `seal` (finished now)
/// or not (the roll's seal never runs, as when the power goes before the background seal).
fn append(log: &Log, written: &mut Vec<Bytes>, n: usize, seal: bool, rng: &mut Rng) {
    for _ in 0..n {
        let i = written.len() as u64;
        let b = batch(
            i,
            1 + rng.below(4) as u32,
            20 + rng.below(200) as usize,
            1_700_000_000_000 + i as i64,
        );
        let (_, roll) = log
            .write_batches_deferring_roll(std::slice::from_ref(&b))
            .expect("append");
        if let Some(roll) = roll
            && seal
        {
            log.finish_roll(roll).expect("seal");
        }
        written.push(b);
    }
}

/// The keys and values of a batch's records (the log assigns the offsets).
fn contents(batch: &Bytes) -> Vec<(Option<Bytes>, Option<Bytes>)> {
    common::records(batch)
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect()
}

/// Opens the log after a cut (under a new boot: nothing says the files are as a process
/// left them), and checks it holds a prefix of what was written, then takes an append.
fn recover(dir: &Path, config: &LogConfig, written: &[Bytes], context: &str) {
    let _ = fs::remove_file(dir.join(RUNNING_MARKER));
    let log = match Log::open(dir, config.clone()) {
        Ok(log) => log,
        Err(e) => panic!("{context}: recovery refused the log: {e}"),
    };
    let stored = read_all(&log);
    assert!(
        stored.len() <= written.len(),
        "{context}: more batches than written"
    );
    for (i, (s, w)) in stored.iter().zip(written).enumerate() {
        assert_eq!(
            contents(s),
            contents(w),
            "{context}: batch {i} is not the one written"
        );
    }
    log.append(batch(9_999, 1, 10, 1_800_000_000_000))
        .unwrap_or_else(|e| panic!("{context}: the recovered log refuses an append: {e}"));
}

/// A cut while rolled segments wait for their seal: whatever reached the disk of their data
/// and of their (preallocated, never trimmed) indexes, the log opens and loses only what was
/// never fsynced. What was fsynced (sealed segments, a sync in the middle) is all there.
#[test]
fn a_power_cut_before_rolled_segments_are_sealed_leaves_a_log_that_opens() {
    if !can_mount() {
        eprintln!("skipped: mounting the simulated disk needs root and /dev/fuse");
        return;
    }
    let config = small_config();
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let root = tempfile::tempdir().expect("tempdir");
        let at = root.path().join("mnt");
        fs::create_dir(&at).expect("mount point");
        let disk = Disk::new();
        let mut written = Vec::new();
        let durable;
        {
            let mount = disk.mount(&at).expect("mount");
            let dir = mount.path().join("log");
            let log = Log::open(&dir, config.clone()).expect("open");
            append(&log, &mut written, 30, true, &mut rng);
            log.sync_to(log.end_offset()).expect("sync");
            durable = written.len();
            append(
                &log,
                &mut written,
                20 + rng.below(60) as usize,
                false,
                &mut rng,
            );
            drop(log);
            mount.unmount().expect("unmount");
        }
        let cut = disk.power_cut(&mut || rng.next_u64());
        let mount = disk.mount(&at).expect("mount again");
        let dir = mount.path().join("log");
        let context = format!("seed {seed}, {cut:?}");
        recover(&dir, &config, &written, &context);
        let log = Log::open(&dir, config.clone()).expect("reopen");
        assert!(
            read_all(&log).len() > durable,
            "{context}: what was fsynced is there, and the append after recovery"
        );
        drop(log);
        mount.unmount().expect("unmount");
    }
}
