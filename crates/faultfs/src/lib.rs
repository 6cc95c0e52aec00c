//! A filesystem for tests that fails the way disks and power do: an in-memory FUSE
//! filesystem ([`Disk`]) that keeps, beside what programs see, what the disk would hold
//! after a power cut, and that fails writes and fsyncs, or fills up, on command.
//!
//! A test mounts a [`Disk`], runs the real `runneld` on it, kills the process, unmounts, and
//! calls [`Disk::power_cut`]: what was fsynced stays, and any part of what was not is kept,
//! dropped, torn or garbled (the crash model is in the `tree` module and in
//! `docs/reliability.md`). [`Disk::set_faults`] makes writes or fsyncs fail with `EIO` and
//! limits the capacity, so that a write in the middle of a batch gets `ENOSPC`.
//!
//! Mounting needs `/dev/fuse` and the right to mount (root; `.ci/run` installs `fuse3`). A
//! FUSE server never sees `syncfs` (the kernel sends it only to virtiofs), so a test stands
//! in for the `syncfs` of a broker's start with [`Disk::sync_all`].

mod fuse;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{BackgroundSession, Config, MountOption};

use crate::tree::Tree;

/// Whether this process can mount a [`Disk`]: it runs as root and `/dev/fuse` exists. Tests
/// that need a disk say they were skipped where it cannot (a developer's machine without
/// root); CI runs as root and makes sure of `/dev/fuse`.
pub fn can_mount() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    root && Path::new("/dev/fuse").exists()
}

/// Faults the filesystem injects until they are changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every write fails with `EIO`.
    pub write_error: bool,
    /// Every fsync (of a file or a directory) fails with `EIO`, and makes nothing durable.
    pub fsync_error: bool,
    /// The bytes of file content the disk holds at most: a write that would pass it writes
    /// what fits and then fails with `ENOSPC`, as does a reservation with `fallocate`.
    pub capacity: Option<u64>,
}

/// Counts of what the filesystem was asked to do and what it refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes done.
    pub writes: u64,
    /// fsyncs of files and directories done.
    pub fsyncs: u64,
    /// Writes refused with `EIO`.
    pub write_errors: u64,
    /// fsyncs refused with `EIO`.
    pub fsync_errors: u64,
    /// Writes and reservations refused (or cut short) with `ENOSPC`.
    pub space_errors: u64,
}

/// What a power cut did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Directory changes (creations, removals, renames) not yet durable that reached the disk.
    pub dir_changes_kept: usize,
    /// Directory changes not yet durable that were lost.
    pub dir_changes_lost: usize,
    /// Files whose unsynced changes were all lost.
    pub files_rewound: usize,
    /// Files whose unsynced changes all reached the disk.
    pub files_kept: usize,
    /// Files that kept an in-order part of their unsynced changes, the last one torn.
    pub files_torn: usize,
    /// Files that kept a random subset of their unsynced changes, some garbled, some dropped
    /// appends left as zeros.
    pub files_scattered: usize,
    /// Bytes written but not fsynced at the cut.
    pub unsynced_bytes: u64,
}

/// The filesystem: its state outlives its mounts, so that it can be cut while unmounted and
/// mounted again.
#[derive(Clone)]
pub struct Disk {
    tree: Arc<Mutex<Tree>>,
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

impl Disk {
    /// An empty filesystem.
    pub fn new() -> Self {
        Disk {
            tree: Arc::new(Mutex::new(Tree::new())),
        }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        // Every change to the tree is made in one step after its checks: a panic elsewhere
        // while the lock was held leaves it consistent.
        self.tree
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mounts the filesystem at `at` (an existing empty directory) until the [`Mount`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// If it is mounted already, or the kernel refuses the mount (no `/dev/fuse`, no right
    /// to mount).
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        {
            let mut tree = self.tree();
            if tree.mounted {
                return Err(io::Error::other("the disk is mounted already"));
            }
            tree.mounted = true;
        }
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("runnel-faultfs".into()),
            MountOption::NoAtime,
        ];
        let fs = fuse::FaultFs {
            tree: self.tree.clone(),
        };
        match fuser::spawn_mount(fs, at, &config) {
            Ok(session) => Ok(Mount {
                session: Some(session),
                path: at.to_path_buf(),
                disk: self.clone(),
            }),
            Err(e) => {
                self.tree().mounted = false;
                Err(e)
            }
        }
    }

    /// Cuts the power: the filesystem becomes what the disk would hold, every part of it
    /// not made durable decided by `random` (the crash model in the crate docs).
    ///
    /// # Panics
    ///
    /// If the disk is mounted: a cut happens to a machine, not under a running process.
    pub fn power_cut(&self, random: &mut dyn FnMut() -> u64) -> Cut {
        let mut tree = self.tree();
        assert!(!tree.mounted, "unmount the disk before cutting its power");
        tree.power_cut(random)
    }

    /// Makes everything durable: what `syncfs` does on a real filesystem.
    pub fn sync_all(&self) {
        self.tree().sync_all();
    }

    /// Sets the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.tree().faults = faults;
    }

    /// The bytes of file content programs see now.
    pub fn used_bytes(&self) -> u64 {
        self.tree().used()
    }

    /// What the filesystem did and refused so far.
    pub fn stats(&self) -> Stats {
        self.tree().stats
    }
}

/// A mounted [`Disk`]; dropping it unmounts.
pub struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
    disk: Disk,
}

impl Mount {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the filesystem's thread to end.
    ///
    /// # Errors
    ///
    /// If the kernel refuses the unmount or the thread failed.
    pub fn unmount(mut self) -> io::Result<()> {
        self.end()
    }

    fn end(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let result = session.umount_and_join();
        self.disk.tree().mounted = false;
        match result {
            // The kernel ends the connection so when requests were in flight at the unmount
            // (a killed process's): the session is over all the same.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
            other => other,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            eprintln!("unmounting {}: {e}", self.path.display());
        }
    }
}
