//! A full disk: appends fail with `DiskFull`, nothing stored is damaged, reads keep working,
//! and appends work again once space is freed.
//!
//! Runs the log on a 1 MiB tmpfs, which needs root (as on the CI machines). Without root the
//! test says so on stderr and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use runnel_storage::batch::{BatchBuilder, Batches};
use runnel_storage::{Durability, Error, Log, LogConfig};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn batch(i: u32) -> bytes::Bytes {
    let mut b = BatchBuilder::new();
    let value = vec![(i % 251) as u8; 8 * 1024];
    b.push(Some(&i.to_le_bytes()), Some(&value), &[], i64::from(i));
    b.build()
}

fn values(log: &Log) -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    while next < log.end_offset() {
        let r = log.read(next, 1 << 20).unwrap();
        for b in r.batches.into_iter().flat_map(Batches::new) {
            for rec in b.unwrap().records().unwrap() {
                let key = rec.unwrap().key.unwrap();
                out.push(u32::from_le_bytes(key[..4].try_into().unwrap()));
            }
        }
        next = r.next_offset;
    }
    out
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(dir.path(), "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // Take a third of the space with a file we can delete later.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 300 * 1024]).unwrap();

    let config = LogConfig {
        segment_bytes: 256 * 1024,
        max_batch_bytes: 64 * 1024,
        max_index_bytes: 4096,
        index_interval_bytes: 1024,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path().join("t/0"), config.clone()).unwrap();
    let mut appended = 0u32;
    let err = loop {
        match log.append(batch(appended)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 1000, "a 1 MiB filesystem never filled up");
    };
    assert!(
        matches!(err, Error::DiskFull { .. }),
        "expected DiskFull, got {err}"
    );
    assert!(appended > 10, "only {appended} batches fit");
    assert!(
        !log.has_failed(),
        "a rolled-back write does not fail the log"
    );
    assert_eq!(log.end_offset(), u64::from(appended));
    assert_eq!(values(&log), (0..appended).collect::<Vec<_>>());
    // Still full: the next append fails the same way and changes nothing.
    assert!(matches!(
        log.append(batch(appended)),
        Err(Error::DiskFull { .. })
    ));
    assert_eq!(log.end_offset(), u64::from(appended));

    std::fs::remove_file(&filler).unwrap();
    for _ in 0..5 {
        log.append(batch(appended)).unwrap();
        appended += 1;
    }
    assert_eq!(values(&log), (0..appended).collect::<Vec<_>>());

    // And after a crash, recovery finds exactly what was acknowledged.
    drop(log);
    let log = Log::open(dir.path().join("t/0"), config).unwrap();
    assert_eq!(values(&log), (0..appended).collect::<Vec<_>>());
    log.verify_indexes().unwrap();
    drop(log);
}
