//! Sparse, fixed-width, memory-mapped indexes of a segment.
//!
//! Offset index (`.index`), 8 bytes an entry, little-endian:
//!
//! | offset | size | field             | type |
//! |-------:|-----:|-------------------|------|
//! | 0      | 4    | `relative_offset` | u32  |
//! | 4      | 4    | `position`        | u32  |
//!
//! Time index (`.timeindex`), 12 bytes an entry, little-endian:
//!
//! | offset | size | field             | type |
//! |-------:|-----:|-------------------|------|
//! | 0      | 8    | `timestamp`       | i64  |
//! | 8      | 4    | `relative_offset` | u32  |
//!
//! Entries are appended with `pwrite` and looked up through a read-only shared map (the two
//! see the same page cache). Writing through a writable map would turn a full disk into a
//! SIGBUS when the kernel allocates a page of the sparse preallocated file; `pwrite` turns it
//! into an `ENOSPC` error instead.
//!
//! The active segment's index files are preallocated and zero-filled; written entries are
//! never all-zero (see `docs/storage-format.md`), so the number of entries is found by binary
//! search. The last slot is never used, so a preallocated file always ends in a zero slot and
//! can be told apart from a sealed (trimmed) one.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A fixed-width index entry.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    /// Encoded size in bytes.
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(buf: &[u8]) -> Self;
    /// True for the all-zero slot of a preallocated file.
    fn is_vacant(&self) -> bool;
}

/// Offset index entry: a batch's offset relative to the segment base, and its byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl Entry for OffsetEntry {
    const SIZE: usize = 8;

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            position: u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
        }
    }

    fn is_vacant(&self) -> bool {
        self.position == 0
    }
}

/// Time index entry: the segment's largest timestamp so far, and the batch that raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl Entry for TimeEntry {
    const SIZE: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.timestamp.to_le_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[0..8]);
        TimeEntry {
            timestamp: i64::from_le_bytes(ts),
            relative_offset: u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]),
        }
    }

    fn is_vacant(&self) -> bool {
        self.relative_offset == 0
    }
}

enum Map {
    /// Zero-length file: nothing to map.
    Empty,
    Mapped(Mmap),
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::Empty => &[],
            Map::Mapped(m) => m,
        }
    }
}

/// One index file.
pub(crate) struct Index<E: Entry> {
    path: PathBuf,
    file: File,
    map: Map,
    entries: usize,
    /// False once sealed, or after a failed write: no more entries are added.
    writable: bool,
    _entry: std::marker::PhantomData<E>,
}

/// Slots up to the first hole of a sparse file (`SEEK_HOLE`): every written entry lies before
/// it. `None` where the filesystem cannot say.
fn written_slots(file: &File, entry_size: usize) -> Option<usize> {
    let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(0)).ok()?;
    usize::try_from(hole).ok().map(|h| h.div_ceil(entry_size))
}

fn map_file(file: &File, path: &Path, len: u64) -> Result<Map> {
    if len == 0 {
        return Ok(Map::Empty);
    }
    // SAFETY: the data directory belongs to this process (docs/operations.md): nothing else
    // truncates the file while it is mapped, and we drop the map before we truncate it. We
    // only write entries past the ones readers look at, with pwrite, never through the map.
    let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io("mmap", path, e))?;
    // Lookups are binary searches: a fault should bring in its page, not the kernel's
    // readahead window around it (for a sparse preallocated file, dozens of zero-filled pages
    // per fault, gigabytes of page cache over thousands of partitions opened cold).
    if let Err(e) = map.advise(memmap2::Advice::Random) {
        tracing::debug!(path = %path.display(), error = %e, "madvise(MADV_RANDOM) failed");
    }
    Ok(Map::Mapped(map))
}

impl<E: Entry> Index<E> {
    /// Creates (or empties) the index file of an active segment, preallocated to
    /// `prealloc_bytes` rounded down to whole entries.
    pub fn create(path: &Path, prealloc_bytes: u32) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create index", path, e))?;
        let len = (prealloc_bytes as usize / E::SIZE).max(2) * E::SIZE;
        file.set_len(len as u64)
            .map_err(|e| Error::io("preallocate index", path, e))?;
        let map = map_file(&file, path, len as u64)?;
        Ok(Index {
            path: path.to_path_buf(),
            file,
            map,
            entries: 0,
            writable: true,
            _entry: std::marker::PhantomData,
        })
    }

    /// Opens the index of the active segment after a clean shutdown. Returns `None` if the
    /// file's shape is not that of a preallocated index (missing, wrong length, trimmed),
    /// in which case the caller rebuilds it.
    pub fn open_active(path: &Path) -> Result<Option<Self>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open index", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat index", path, e))?
            .len();
        if len == 0 || len % E::SIZE as u64 != 0 {
            return Ok(None);
        }
        let map = map_file(&file, path, len)?;
        let mut index = Index::<E> {
            path: path.to_path_buf(),
            file,
            map,
            entries: 0,
            writable: true,
            _entry: std::marker::PhantomData,
        };
        let slots = index.slots();
        // Written entries form a prefix; the rest is zero, and past the first hole of the
        // sparse file there is nothing to look at.
        let mut lo = 0usize;
        let mut hi = slots.min(written_slots(&index.file, E::SIZE).unwrap_or(slots));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if index.slot(mid).is_vacant() {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo == slots {
            // No vacant slot: this is a trimmed (sealed) file, not a preallocated one.
            return Ok(None);
        }
        index.entries = lo;
        Ok(Some(index))
    }

    /// Opens a sealed index read-only. Returns `None` if it is missing or its length is not a
    /// whole number of entries, or if it still looks preallocated (ends in a vacant slot):
    /// the segment's sealing did not finish.
    pub fn open_sealed(path: &Path) -> Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open index", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat index", path, e))?
            .len();
        if len % E::SIZE as u64 != 0 {
            return Ok(None);
        }
        let map = map_file(&file, path, len)?;
        let entries = len as usize / E::SIZE;
        let index = Index::<E> {
            path: path.to_path_buf(),
            file,
            map,
            entries,
            writable: false,
            _entry: std::marker::PhantomData,
        };
        // A preallocated file has at least two slots, so a one-entry file is a trimmed one
        // even if its entry reads as vacant: the final time entry that sealing writes for a
        // segment holding a single record has relative offset 0.
        if entries > 1 && index.slot(entries - 1).is_vacant() {
            return Ok(None);
        }
        Ok(Some(index))
    }

    /// True if the file has the shape of an active segment's preallocated index: at least two
    /// whole slots, the last one vacant. That is what a crash between roll and seal leaves;
    /// a missing file or any other shape is damage, not an interrupted seal.
    pub fn looks_preallocated(path: &Path) -> Result<bool> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open index", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat index", path, e))?
            .len();
        if len % E::SIZE as u64 != 0 || len < 2 * E::SIZE as u64 {
            return Ok(false);
        }
        let mut last = vec![0u8; E::SIZE];
        file.read_exact_at(&mut last, len - E::SIZE as u64)
            .map_err(|e| Error::io("read index", path, e))?;
        Ok(E::decode(&last).is_vacant())
    }

    fn slots(&self) -> usize {
        self.map.bytes().len() / E::SIZE
    }

    fn slot(&self, i: usize) -> E {
        E::decode(&self.map.bytes()[i * E::SIZE..(i + 1) * E::SIZE])
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// All entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = E> + '_ {
        (0..self.entries).map(|i| self.slot(i))
    }

    /// The last entry.
    pub fn last(&self) -> Option<E> {
        self.entries.checked_sub(1).map(|i| self.slot(i))
    }

    /// True if another entry fits (the last slot of a preallocated file stays vacant).
    pub fn has_room(&self) -> bool {
        self.writable && self.entries + 1 < self.slots()
    }

    /// Appends an entry. The caller checks [`Index::has_room`] first. After a failed write
    /// (typically a full disk) the index takes no more entries; it stays correct, only
    /// sparser.
    pub fn push(&mut self, entry: E) -> Result<()> {
        if self.entries >= self.slots() {
            return Ok(());
        }
        let mut buf = [0u8; 16];
        entry.encode(&mut buf[..E::SIZE]);
        let at = (self.entries * E::SIZE) as u64;
        if let Err(e) = self.file.write_all_at(&buf[..E::SIZE], at) {
            self.writable = false;
            return Err(Error::io("write index", &self.path, e));
        }
        self.entries += 1;
        Ok(())
    }

    /// Index of the last entry for which `is_at_or_before` holds, given that it holds for a
    /// prefix of the entries.
    pub fn last_where(&self, is_at_or_before: impl Fn(&E) -> bool) -> Option<E> {
        let mut lo = 0usize;
        let mut hi = self.entries;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if is_at_or_before(&self.slot(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.slot(i))
    }

    /// fdatasync of the index file.
    pub fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync index", &self.path, e))
    }

    /// Seals the index: trim the file to its entries, fsync, and map the trimmed file.
    pub fn seal(&mut self) -> Result<()> {
        if matches!(self.map, Map::Mapped(_)) && self.slots() == self.entries {
            return Ok(());
        }
        self.writable = false;
        // Unmap before the file shrinks under the mapping.
        self.map = Map::Empty;
        let len = (self.entries * E::SIZE) as u64;
        self.file
            .set_len(len)
            .map_err(|e| Error::io("trim index", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync index", &self.path, e))?;
        self.map = map_file(&self.file, &self.path, len)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = Index::<OffsetEntry>::create(&path, 1024).unwrap();
        for i in 1..=10u32 {
            assert!(idx.has_room());
            idx.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 4096,
            })
            .unwrap();
        }
        idx.flush().unwrap();
        drop(idx);

        let idx = Index::<OffsetEntry>::open_active(&path).unwrap().unwrap();
        assert_eq!(idx.len(), 10);
        let e = idx.last_where(|e| e.relative_offset <= 55).unwrap();
        assert_eq!(
            e,
            OffsetEntry {
                relative_offset: 50,
                position: 5 * 4096
            }
        );
        assert!(idx.last_where(|e| e.relative_offset <= 5).is_none());
        assert!(
            Index::<OffsetEntry>::open_sealed(&path).unwrap().is_none(),
            "still preallocated"
        );

        let mut idx = idx;
        idx.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 80);
        drop(idx);
        let idx = Index::<OffsetEntry>::open_sealed(&path).unwrap().unwrap();
        assert_eq!(idx.len(), 10);
        assert!(
            Index::<OffsetEntry>::open_active(&path).unwrap().is_none(),
            "trimmed"
        );
    }

    #[test]
    fn the_last_slot_stays_vacant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut idx = Index::<TimeEntry>::create(&path, 48).unwrap();
        let mut n = 0;
        while idx.has_room() {
            n += 1;
            idx.push(TimeEntry {
                timestamp: n,
                relative_offset: n as u32,
            })
            .unwrap();
        }
        assert_eq!(n, 3);
        idx.flush().unwrap();
        drop(idx);
        assert_eq!(
            Index::<TimeEntry>::open_active(&path)
                .unwrap()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn a_torn_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        std::fs::write(&path, [1u8; 13]).unwrap();
        assert!(Index::<OffsetEntry>::open_sealed(&path).unwrap().is_none());
        assert!(Index::<OffsetEntry>::open_active(&path).unwrap().is_none());
        assert!(
            Index::<OffsetEntry>::open_sealed(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
