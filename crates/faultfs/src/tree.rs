//! The filesystem's state, in memory: what programs see now, and what a power cut would
//! leave of it.
//!
//! Two states are kept side by side. What programs see (`FileNode::data`,
//! `DirNode::entries`) changes with every call. What the disk holds is, for a file, its
//! content at its last `fsync` (`durable`) and the changes made since (`pending`), in order;
//! for the directories, their entries as of the last directory change that was made durable
//! (`durable_dirs`) and the changes made since (`journal`), in order.
//!
//! The crash model (`docs/reliability.md`, "Power loss"):
//! - `fsync` or `fdatasync` of a file makes its content and size durable, and nothing else.
//! - `fsync` of a directory makes durable every directory change up to the last one that
//!   touched it. Directory changes reach the disk in the order they were made (a journaling
//!   filesystem's metadata): a cut keeps a random prefix of those not yet durable, so a
//!   rename is atomic, but a file created and never made durable through its directory may
//!   be gone.
//! - Of a file's unsynced changes, a cut keeps none, all, an in-order prefix with the last
//!   one torn, or a random subset with parts garbled and dropped appends left as zeros.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::Errno;

use crate::{Cut, Faults, Stats};

/// The root directory's inode number (FUSE's).
pub(crate) const ROOT: u64 = 1;

/// `fallocate` mode bit: reserve without changing the size.
const FALLOC_FL_KEEP_SIZE: i32 = 1;

/// Results of calls as the kernel gets them.
pub(crate) type Result<T> = std::result::Result<T, Errno>;

/// A file or a directory.
pub(crate) enum Node {
    File(FileNode),
    Dir(DirNode),
}

/// What every node has.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

impl Meta {
    pub(crate) fn new(perm: u16, uid: u32, gid: u32) -> Self {
        Meta {
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
        }
    }
}

/// A regular file.
pub(crate) struct FileNode {
    pub meta: Meta,
    /// The content programs see.
    pub data: Vec<u8>,
    /// The content as of the last fsync.
    durable: Vec<u8>,
    /// Changes since the last fsync, in order.
    pending: Vec<Change>,
}

/// One unsynced change of a file.
enum Change {
    Write { at: usize, bytes: Vec<u8> },
    Resize(usize),
}

/// A directory.
pub(crate) struct DirNode {
    pub meta: Meta,
    /// The entries programs see.
    pub entries: BTreeMap<OsString, u64>,
    /// The directory holding this one (itself for the root).
    pub parent: u64,
}

/// One directory change, not yet durable.
enum DirChange {
    Link {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: OsString,
    },
    Rename {
        from: u64,
        from_name: OsString,
        to: u64,
        to_name: OsString,
    },
}

impl DirChange {
    fn touches(&self, d: u64) -> bool {
        match self {
            DirChange::Link { dir, .. } | DirChange::Unlink { dir, .. } => *dir == d,
            DirChange::Rename { from, to, .. } => *from == d || *to == d,
        }
    }

    fn apply(
        &self,
        dirs: &mut HashMap<u64, BTreeMap<OsString, u64>>,
        is_dir: impl Fn(u64) -> bool,
    ) {
        match self {
            DirChange::Link { dir, name, ino } => {
                dirs.entry(*dir).or_default().insert(name.clone(), *ino);
                if is_dir(*ino) {
                    dirs.entry(*ino).or_default();
                }
            }
            DirChange::Unlink { dir, name } => {
                dirs.entry(*dir).or_default().remove(name);
            }
            DirChange::Rename {
                from,
                from_name,
                to,
                to_name,
            } => {
                if let Some(ino) = dirs.entry(*from).or_default().remove(from_name) {
                    dirs.entry(*to).or_default().insert(to_name.clone(), ino);
                }
            }
        }
    }
}

/// The whole filesystem.
pub(crate) struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// The directories' entries as the disk holds them.
    durable_dirs: HashMap<u64, BTreeMap<OsString, u64>>,
    /// Directory changes not yet durable, oldest first.
    journal: Vec<DirChange>,
    /// Bytes of file content programs see (what a capacity limits).
    used: u64,
    pub faults: Faults,
    pub stats: Stats,
    pub mounted: bool,
}

impl Tree {
    /// An empty filesystem: the root directory, durable.
    pub(crate) fn new() -> Self {
        let root = DirNode {
            meta: Meta::new(0o755, 0, 0),
            entries: BTreeMap::new(),
            parent: ROOT,
        };
        Tree {
            nodes: HashMap::from([(ROOT, Node::Dir(root))]),
            next_ino: ROOT + 1,
            durable_dirs: HashMap::from([(ROOT, BTreeMap::new())]),
            journal: Vec::new(),
            used: 0,
            faults: Faults::default(),
            stats: Stats::default(),
            mounted: false,
        }
    }

    pub(crate) fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(crate) fn dir(&self, ino: u64) -> Result<&DirNode> {
        match self.node(ino)? {
            Node::Dir(d) => Ok(d),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub(crate) fn file(&self, ino: u64) -> Result<&FileNode> {
        match self.node(ino)? {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Creates a file or a directory named `name` in `parent`.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        meta: Meta,
    ) -> Result<u64> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = if dir {
            Node::Dir(DirNode {
                meta,
                entries: BTreeMap::new(),
                parent,
            })
        } else {
            Node::File(FileNode {
                meta,
                data: Vec::new(),
                durable: Vec::new(),
                pending: Vec::new(),
            })
        };
        self.nodes.insert(ino, node);
        self.link(parent, name, ino)?;
        Ok(ino)
    }

    fn link(&mut self, dir: u64, name: &OsStr, ino: u64) -> Result<()> {
        let d = self.dir_mut(dir)?;
        d.entries.insert(name.to_owned(), ino);
        d.meta.mtime = SystemTime::now();
        self.journal.push(DirChange::Link {
            dir,
            name: name.to_owned(),
            ino,
        });
        Ok(())
    }

    /// Removes `name` from `parent`: a file, or an empty directory with `dir`. The node stays
    /// until a power cut, since the disk may still hold the entry.
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        match (self.node(ino)?, dir) {
            (Node::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Node::Dir(_), false) => return Err(Errno::EISDIR),
            (Node::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let d = self.dir_mut(parent)?;
        d.entries.remove(name);
        d.meta.mtime = SystemTime::now();
        self.journal.push(DirChange::Unlink {
            dir: parent,
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Renames, replacing a file or an empty directory at the target (unless `no_replace`).
    pub(crate) fn rename(
        &mut self,
        from: u64,
        from_name: &OsStr,
        to: u64,
        to_name: &OsStr,
        no_replace: bool,
    ) -> Result<()> {
        let ino = self.lookup(from, from_name)?;
        self.dir(to)?;
        if let Ok(target) = self.lookup(to, to_name) {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            if target == ino {
                return Ok(());
            }
            match (self.node(ino)?, self.node(target)?) {
                (Node::Dir(_), Node::Dir(t)) if !t.entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Node::Dir(_), Node::File(_)) => return Err(Errno::ENOTDIR),
                (Node::File(_), Node::Dir(_)) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        if let Node::Dir(_) = self.node(ino)? {
            // A directory cannot move into itself or below itself.
            let mut at = to;
            loop {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
            self.dir_mut(ino)?.parent = to;
        }
        let now = SystemTime::now();
        let src = self.dir_mut(from)?;
        src.entries.remove(from_name);
        src.meta.mtime = now;
        let dst = self.dir_mut(to)?;
        dst.entries.insert(to_name.to_owned(), ino);
        dst.meta.mtime = now;
        self.journal.push(DirChange::Rename {
            from,
            from_name: from_name.to_owned(),
            to,
            to_name: to_name.to_owned(),
        });
        Ok(())
    }

    pub(crate) fn read(&self, ino: u64, at: u64, len: u32) -> Result<&[u8]> {
        let data = &self.file(ino)?.data;
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(&data[start..end])
    }

    /// Writes `bytes` at `at`; returns how many were written, fewer than asked where the
    /// capacity ends (as a real filesystem does when it fills in the middle of a write).
    pub(crate) fn write(&mut self, ino: u64, at: u64, bytes: &[u8]) -> Result<u32> {
        if self.faults.write_error {
            self.stats.write_errors += 1;
            return Err(Errno::EIO);
        }
        let at = usize::try_from(at).map_err(|_| Errno::EFBIG)?;
        let room = self.room();
        let file = self.file_mut(ino)?;
        let old_len = file.data.len();
        let end = at.checked_add(bytes.len()).ok_or(Errno::EFBIG)?;
        let growth = end.saturating_sub(old_len) as u64;
        let n = if growth > room {
            let short = (growth - room) as usize;
            if short >= bytes.len() {
                self.stats.space_errors += 1;
                return Err(Errno::ENOSPC);
            }
            bytes.len() - short
        } else {
            bytes.len()
        };
        let bytes = &bytes[..n];
        let end = at + n;
        if file.data.len() < end {
            file.data.resize(end, 0);
        }
        file.data[at..end].copy_from_slice(bytes);
        file.pending.push(Change::Write {
            at,
            bytes: bytes.to_vec(),
        });
        file.meta.mtime = SystemTime::now();
        let new_len = file.data.len();
        self.used = self.used + new_len as u64 - old_len as u64;
        self.stats.writes += 1;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Bytes that can still be added before the capacity is reached.
    fn room(&self) -> u64 {
        self.faults
            .capacity
            .map_or(u64::MAX, |c| c.saturating_sub(self.used))
    }

    /// Truncates or extends (with zeros, not counted against the capacity's room: sparse).
    pub(crate) fn resize(&mut self, ino: u64, len: u64) -> Result<()> {
        let len = usize::try_from(len).map_err(|_| Errno::EFBIG)?;
        let file = self.file_mut(ino)?;
        let old_len = file.data.len();
        file.data.resize(len, 0);
        file.pending.push(Change::Resize(len));
        file.meta.mtime = SystemTime::now();
        self.used = self.used + len as u64 - old_len as u64;
        Ok(())
    }

    pub(crate) fn set_meta(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let meta = match self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)? {
            Node::File(f) => &mut f.meta,
            Node::Dir(d) => &mut d.meta,
        };
        if let Some(p) = perm {
            meta.perm = p;
        }
        if let Some(u) = uid {
            meta.uid = u;
        }
        if let Some(g) = gid {
            meta.gid = g;
        }
        Ok(())
    }

    /// Reserves space (`FALLOC_FL_KEEP_SIZE` only, the mode Runnel uses): refused where the
    /// capacity would not hold it; nothing else changes.
    pub(crate) fn fallocate(
        &mut self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        if mode & !FALLOC_FL_KEEP_SIZE != 0 || mode == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let len = self.file(ino)?.data.len() as u64;
        let growth = offset.saturating_add(length).saturating_sub(len);
        if growth > self.room() {
            self.stats.space_errors += 1;
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// fsync or fdatasync of a file (content and size), or fsync of a directory.
    pub(crate) fn fsync(&mut self, ino: u64) -> Result<()> {
        if self.faults.fsync_error {
            self.stats.fsync_errors += 1;
            return Err(Errno::EIO);
        }
        self.stats.fsyncs += 1;
        match self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)? {
            Node::File(f) => {
                f.durable.clone_from(&f.data);
                f.pending.clear();
            }
            Node::Dir(_) => {
                if let Some(last) = self.journal.iter().rposition(|c| c.touches(ino)) {
                    self.commit_dir_changes(last + 1);
                }
            }
        }
        Ok(())
    }

    /// Makes everything durable (what `syncfs` would do; it does not reach a FUSE server).
    pub(crate) fn sync_all(&mut self) {
        self.commit_dir_changes(self.journal.len());
        for node in self.nodes.values_mut() {
            if let Node::File(f) = node
                && !f.pending.is_empty()
            {
                f.durable.clone_from(&f.data);
                f.pending.clear();
            }
        }
    }

    /// Applies the oldest `n` directory changes to the durable entries.
    fn commit_dir_changes(&mut self, n: usize) {
        let nodes = &self.nodes;
        let is_dir = |ino: u64| matches!(nodes.get(&ino), Some(Node::Dir(_)));
        for change in self.journal.drain(..n) {
            change.apply(&mut self.durable_dirs, is_dir);
        }
    }

    /// The power cut: the filesystem becomes what the disk would hold, with the unsynced
    /// part decided by `random`.
    pub(crate) fn power_cut(&mut self, random: &mut dyn FnMut() -> u64) -> Cut {
        let mut cut = Cut::default();
        let pending = self.journal.len();
        let kept = pick(random, pending + 1);
        cut.dir_changes_kept = kept;
        cut.dir_changes_lost = pending - kept;
        self.commit_dir_changes(kept);
        self.journal.clear();

        let reachable = self.reachable();
        self.nodes.retain(|ino, _| reachable.contains(ino));
        self.durable_dirs.retain(|ino, _| reachable.contains(ino));
        for (ino, node) in &mut self.nodes {
            match node {
                Node::Dir(d) => {
                    d.entries = self.durable_dirs.get(ino).cloned().unwrap_or_default();
                }
                Node::File(f) => f.crash(random, &mut cut),
            }
        }
        self.fix_parents();
        self.used = self
            .nodes
            .values()
            .map(|n| match n {
                Node::File(f) => f.data.len() as u64,
                Node::Dir(_) => 0,
            })
            .sum();
        cut
    }

    /// Nodes the durable entries reach from the root.
    fn reachable(&self) -> HashSet<u64> {
        let mut seen = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            for &ino in self
                .durable_dirs
                .get(&dir)
                .into_iter()
                .flat_map(|e| e.values())
            {
                // A directory reached twice would be a hard link to a directory; the
                // journal's order makes that impossible, the check makes it harmless.
                if self.nodes.contains_key(&ino) && seen.insert(ino) {
                    todo.push(ino);
                }
            }
        }
        seen
    }

    fn fix_parents(&mut self) {
        let links: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(ino, n)| match n {
                Node::Dir(d) => Some((*ino, d)),
                Node::File(_) => None,
            })
            .flat_map(|(ino, d)| d.entries.values().map(move |child| (*child, ino)))
            .collect();
        for (child, parent) in links {
            if let Some(Node::Dir(d)) = self.nodes.get_mut(&child) {
                d.parent = parent;
            }
        }
    }
}

impl FileNode {
    /// What the disk holds of this file after a cut (module docs).
    fn crash(&mut self, random: &mut dyn FnMut() -> u64, cut: &mut Cut) {
        if self.pending.is_empty() {
            return;
        }
        cut.unsynced_bytes += self.pending.iter().map(Change::len).sum::<usize>() as u64;
        let mut disk = std::mem::take(&mut self.durable);
        let pending = std::mem::take(&mut self.pending);
        match pick(random, 4) {
            0 => cut.files_rewound += 1,
            1 => {
                cut.files_kept += 1;
                disk = std::mem::take(&mut self.data);
            }
            2 => {
                cut.files_torn += 1;
                let n = pick(random, pending.len());
                for change in &pending[..n] {
                    change.apply(&mut disk);
                }
                pending[n].apply_torn(&mut disk, random);
            }
            _ => {
                cut.files_scattered += 1;
                for change in &pending {
                    match pick(random, 6) {
                        0 | 1 => change.apply(&mut disk),
                        2 => change.apply_garbled(&mut disk, random),
                        3 => change.extend_with_zeros(&mut disk),
                        _ => {}
                    }
                }
            }
        }
        self.data.clone_from(&disk);
        self.durable = disk;
    }
}

impl Change {
    fn len(&self) -> usize {
        match self {
            Change::Write { bytes, .. } => bytes.len(),
            Change::Resize(_) => 0,
        }
    }

    fn apply(&self, disk: &mut Vec<u8>) {
        match self {
            Change::Write { at, bytes } => write_at(disk, *at, bytes),
            Change::Resize(len) => disk.resize(*len, 0),
        }
    }

    /// Applies a write cut short at a random length.
    fn apply_torn(&self, disk: &mut Vec<u8>, random: &mut dyn FnMut() -> u64) {
        match self {
            Change::Write { at, bytes } => {
                let n = pick(random, bytes.len() + 1);
                write_at(disk, *at, &bytes[..n]);
            }
            Change::Resize(_) => self.apply(disk),
        }
    }

    /// Applies a write with a random part of it replaced by random bytes.
    fn apply_garbled(&self, disk: &mut Vec<u8>, random: &mut dyn FnMut() -> u64) {
        match self {
            Change::Write { at, bytes } => {
                let mut bytes = bytes.clone();
                let start = pick(random, bytes.len() + 1);
                let end = start + pick(random, bytes.len() - start + 1);
                for b in &mut bytes[start..end] {
                    *b = random() as u8;
                }
                write_at(disk, *at, &bytes);
            }
            Change::Resize(_) => self.apply(disk),
        }
    }

    /// The size of an appending write reached the disk, its data did not.
    fn extend_with_zeros(&self, disk: &mut Vec<u8>) {
        if let Change::Write { at, bytes } = self {
            let end = at + bytes.len();
            if disk.len() < end {
                disk.resize(end, 0);
            }
        }
    }
}

fn write_at(disk: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    if disk.len() < end {
        disk.resize(end, 0);
    }
    disk[at..end].copy_from_slice(bytes);
}

/// A number in `0..n` (`n` > 0).
fn pick(random: &mut dyn FnMut() -> u64, n: usize) -> usize {
    (random() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut x = 0x1234_5678_u64;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn meta() -> Meta {
        Meta::new(0o644, 0, 0)
    }

    fn content(t: &Tree, dir: u64, name: &str) -> Option<Vec<u8>> {
        let ino = t.lookup(dir, OsStr::new(name)).ok()?;
        Some(t.file(ino).ok()?.data.clone())
    }

    #[test]
    fn fsynced_content_and_durable_entries_survive_every_cut() {
        let mut random = counter();
        for _ in 0..200 {
            let mut t = Tree::new();
            let f = t.create(ROOT, OsStr::new("a"), false, meta()).unwrap();
            t.fsync(ROOT).unwrap();
            t.write(f, 0, b"durable").unwrap();
            t.fsync(f).unwrap();
            t.write(f, 7, b" and not").unwrap();
            t.create(ROOT, OsStr::new("b"), false, meta()).unwrap();
            t.power_cut(&mut random);
            let a = content(&t, ROOT, "a").expect("a durable entry survives");
            assert!(a.starts_with(b"durable"), "{a:?}");
            assert!(a.len() <= 15);
        }
    }

    #[test]
    fn cuts_lose_tear_and_garble_unsynced_data() {
        let mut random = counter();
        let (mut lost, mut kept, mut other) = (0, 0, 0);
        for _ in 0..400 {
            let mut t = Tree::new();
            let f = t.create(ROOT, OsStr::new("a"), false, meta()).unwrap();
            t.fsync(ROOT).unwrap();
            t.write(f, 0, &[1; 100]).unwrap();
            t.write(f, 100, &[2; 100]).unwrap();
            t.power_cut(&mut random);
            match content(&t, ROOT, "a").unwrap() {
                a if a.is_empty() => lost += 1,
                a if a == [[1; 100], [2; 100]].concat() => kept += 1,
                _ => other += 1,
            }
        }
        assert!(
            lost > 50 && kept > 50 && other > 50,
            "{lost} {kept} {other}"
        );
    }

    #[test]
    fn directory_changes_are_durable_in_order_and_renames_are_atomic() {
        let mut random = counter();
        for _ in 0..200 {
            let mut t = Tree::new();
            let old = t.create(ROOT, OsStr::new("f"), false, meta()).unwrap();
            t.write(old, 0, b"old").unwrap();
            t.fsync(old).unwrap();
            t.fsync(ROOT).unwrap();
            let new = t.create(ROOT, OsStr::new("f.tmp"), false, meta()).unwrap();
            t.write(new, 0, b"new").unwrap();
            t.fsync(new).unwrap();
            t.rename(ROOT, OsStr::new("f.tmp"), ROOT, OsStr::new("f"), false)
                .unwrap();
            t.create(ROOT, OsStr::new("later"), false, meta()).unwrap();
            t.power_cut(&mut random);
            let f = content(&t, ROOT, "f").expect("f is old or new, never missing");
            assert!(f == b"old" || f == b"new");
            if content(&t, ROOT, "later").is_some() {
                assert_eq!(f, b"new", "a later change survived, so the rename did");
            }
        }
    }

    #[test]
    fn a_directory_fsync_makes_its_entries_durable() {
        let mut random = counter();
        let mut t = Tree::new();
        let d = t.create(ROOT, OsStr::new("d"), true, meta()).unwrap();
        let f = t.create(d, OsStr::new("x"), false, meta()).unwrap();
        t.write(f, 0, b"x").unwrap();
        t.fsync(f).unwrap();
        t.fsync(d).unwrap();
        t.remove(ROOT, OsStr::new("nothing"), false).unwrap_err();
        t.power_cut(&mut random);
        let d = t.lookup(ROOT, OsStr::new("d")).unwrap();
        assert_eq!(content(&t, d, "x").unwrap(), b"x");
    }

    #[test]
    fn a_full_disk_writes_what_fits_then_refuses() {
        let mut t = Tree::new();
        let f = t.create(ROOT, OsStr::new("a"), false, meta()).unwrap();
        t.faults.capacity = Some(10);
        assert_eq!(t.write(f, 0, &[1; 8]).unwrap(), 8);
        assert_eq!(t.write(f, 8, &[1; 8]).unwrap(), 2);
        assert_eq!(t.write(f, 10, &[1; 8]).unwrap_err(), Errno::ENOSPC);
        // Overwriting takes no room.
        assert_eq!(t.write(f, 0, &[2; 10]).unwrap(), 10);
        assert_eq!(
            t.fallocate(f, 0, 20, FALLOC_FL_KEEP_SIZE).unwrap_err(),
            Errno::ENOSPC
        );
        t.faults.capacity = None;
        assert_eq!(t.write(f, 10, &[1; 8]).unwrap(), 8);
    }
}
