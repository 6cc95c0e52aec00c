//! The filesystem mounted for real: programs' calls reach it through the kernel, a power
//! cut keeps what was fsynced, and injected faults reach the caller as errors.
//! Needs `/dev/fuse` and root, as in CI.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::FileExt as _;

use runnel_faultfs::{Disk, Faults, can_mount};

/// False, after saying so, where the disk cannot be mounted (not root).
fn mountable() -> bool {
    if !can_mount() {
        eprintln!("SKIPPED: mounting runnel-faultfs needs root and /dev/fuse");
    }
    can_mount()
}

fn random() -> impl FnMut() -> u64 {
    let mut x = 0x9e37_79b9_u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn what_was_fsynced_survives_a_power_cut_and_the_rest_may_not() {
    if !mountable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let mut random = random();
    let mut lost = 0;
    for round in 0..20 {
        let mount = disk.mount(dir.path()).unwrap();
        let d = dir.path().join(format!("d{round}"));
        fs::create_dir(&d).unwrap();
        let mut f = File::create(d.join("kept")).unwrap();
        f.write_all(b"kept").unwrap();
        f.sync_data().unwrap();
        File::open(&d).unwrap().sync_all().unwrap();
        File::open(dir.path()).unwrap().sync_all().unwrap();
        f.write_all(b" and more").unwrap();
        fs::write(d.join("unsynced"), b"x").unwrap();
        drop(f);
        mount.unmount().unwrap();
        disk.power_cut(&mut random);

        let mount = disk.mount(dir.path()).unwrap();
        let kept = fs::read(d.join("kept")).unwrap();
        assert!(kept.starts_with(b"kept") && kept.len() <= 13, "{kept:?}");
        if !d.join("unsynced").exists() {
            lost += 1;
        }
        mount.unmount().unwrap();
    }
    assert!(lost > 0, "no cut lost the unsynced file");
}

#[test]
fn faults_reach_the_caller() {
    if !mountable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let _mount = disk.mount(dir.path()).unwrap();
    let path = dir.path().join("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();

    disk.set_faults(Faults {
        fsync_error: true,
        ..Faults::default()
    });
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
    disk.set_faults(Faults {
        write_error: true,
        ..Faults::default()
    });
    assert_eq!(
        f.write_all_at(&[2; 10], 0).unwrap_err().raw_os_error(),
        Some(5)
    );

    // A write that passes the capacity writes what fits, then fails.
    let capacity = disk.used_bytes() + 1000;
    disk.set_faults(Faults {
        capacity: Some(capacity),
        ..Faults::default()
    });
    assert_eq!(f.write_at(&[3; 4000], 4096).unwrap(), 1000);
    let e = f.write_at(&[3; 10], 5096).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull);
    // Reads go on.
    let mut back = vec![0; 5096];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..4096], &[1; 4096][..]);
    assert_eq!(&back[4096..], &[3; 1000][..]);

    disk.set_faults(Faults::default());
    f.write_all_at(&[4; 10], 5096).unwrap();
    f.sync_all().unwrap();
    let stats = disk.stats();
    assert!(
        stats.fsync_errors == 1 && stats.write_errors == 1 && stats.space_errors >= 1,
        "{stats:?}"
    );
}
