//! What the storage engine offers tiered storage (the broker's copy of sealed segments to an
//! object store), without knowing anything of the store:
//!
//! - [`Log::sealed_segments`]: the sealed segments and their files, to copy;
//! - [`Log::producer_snapshot_at`]: the idempotent-producer state at a segment's end, so that a
//!   log restored from the copies goes on deduplicating retries;
//! - [`Log::enforce_retention_below`]: local retention that deletes only what was copied;
//! - [`seed_log`]: a log directory that starts at an offset with a given producer state, the
//!   local half of a restored partition;
//! - [`index_position`], [`time_index_offset`] and [`split_batches`]: the lookups a reader of
//!   the copied bytes needs (the same formats as on disk, `index.rs` and `segment.rs`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::index::{Entry, OffsetEntry, TimeEntry};
use crate::log::Log;
use crate::producer::{self, ProducerStates};
use crate::recovery;
use crate::retention::RetentionOutcome;
use crate::segment::{Segment, SegmentRead};

/// A sealed segment: its offsets, size and files. Sealed segments never change until
/// retention deletes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    /// The first offset in the segment.
    pub base_offset: u64,
    /// One past the last offset in the segment (the next segment's base).
    pub next_offset: u64,
    /// Bytes of the `.log` file.
    pub size: u64,
    /// The largest (effective) record timestamp in the segment, ms.
    pub max_timestamp: i64,
    /// The `.log` file: batches back to back.
    pub log_path: PathBuf,
    /// The `.index` file (offset to position, 8-byte entries).
    pub index_path: PathBuf,
    /// The `.timeindex` file (time to offset, 12-byte entries).
    pub time_index_path: PathBuf,
}

impl Log {
    /// The sealed segments, oldest first: every segment but the active one whose seal has
    /// finished (a roll seals the old segment in the background).
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        let segments = self.segments.snapshot();
        let Some((_active, older)) = segments.split_last() else {
            return Vec::new();
        };
        older
            .iter()
            .take_while(|s| s.is_sealed())
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset(),
                size: s.size(),
                max_timestamp: s.max_timestamp(),
                log_path: s.log_path.clone(),
                index_path: s.index_path.clone(),
                time_index_path: s.time_index_path.clone(),
            })
            .collect()
    }

    /// The idempotent-producer state as of `offset` (a segment boundary at or below the log
    /// end), encoded as a producer snapshot file (`producer.rs`): the snapshot written at that
    /// offset if it is still there, or else rebuilt from an older snapshot (or the log start)
    /// and the batch headers up to `offset`.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] if `offset` is past the log end; [`Error::Io`] or
    /// [`Error::CorruptSegment`] from the files read.
    pub fn producer_snapshot_at(&self, offset: u64) -> Result<Vec<u8>> {
        let end = self.end_offset();
        if offset > end {
            return Err(Error::OffsetOutOfRange {
                requested: offset,
                log_start: self.start_offset(),
                log_end: end,
            });
        }
        let path = producer::snapshot_path(self.dir(), offset);
        if let Ok(bytes) = std::fs::read(&path)
            && ProducerStates::decode(&bytes).is_some_and(|(at, _)| at == offset)
        {
            return Ok(bytes);
        }
        let segments: Vec<_> = self
            .segments
            .snapshot()
            .iter()
            .filter(|s| s.base_offset < offset)
            .cloned()
            .collect();
        let states = ProducerStates::rebuild_to(self.dir(), &segments, offset)?;
        Ok(states.encode(offset))
    }

    /// [`Log::enforce_retention`], but deleting only segments whose records all lie below
    /// `limit`: with tiered storage, the end of what was copied, so that local retention never
    /// deletes what exists nowhere else.
    ///
    /// # Errors
    /// As [`Log::enforce_retention`].
    pub fn enforce_retention_below(&self, limit: u64) -> Result<RetentionOutcome> {
        self.enforce_retention_within(limit)
    }
}

/// Creates the log directory `dir` for a log that starts at `base_offset` with the producer
/// state `producer_snapshot` (as [`Log::producer_snapshot_at`] encoded it for that offset):
/// an empty segment at `base_offset` and the snapshot. [`Log::open`] then opens it as a log
/// whose start and end are `base_offset`. Refuses a directory that holds segments already.
///
/// # Errors
/// [`Error::InvalidConfig`] (key `producer_snapshot`) for a snapshot that does not decode or
/// is not at `base_offset`; [`Error::Io`] for a directory that holds segments or cannot be
/// written.
pub fn seed_log(dir: &Path, base_offset: u64, producer_snapshot: &[u8]) -> Result<()> {
    match ProducerStates::decode(producer_snapshot) {
        Some((at, _)) if at == base_offset => {}
        Some((at, _)) => {
            return Err(Error::InvalidConfig {
                key: "producer_snapshot",
                reason: format!("is at offset {at}, not at the seeded base {base_offset}"),
            });
        }
        None => {
            return Err(Error::InvalidConfig {
                key: "producer_snapshot",
                reason: "does not decode (bad magic, version or CRC)".into(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let occupied = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .flatten()
        .any(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".log")));
    if occupied {
        return Err(Error::io(
            "seed log",
            dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it holds segments"),
        ));
    }
    // The smallest index files: the segment is the active one and the next open rebuilds
    // its indexes from the (empty) log anyway.
    let segment = Segment::create(dir, base_offset, 4096)?;
    segment.sync()?;
    drop(segment);
    producer::write_snapshot(dir, base_offset, producer_snapshot, true)?;
    recovery::sync_dir(dir)
}

/// A producer snapshot at `offset` that knows no producer: for [`seed_log`] when the
/// producer state of a copied log is lost (retention deleted every copy).
pub fn empty_producer_snapshot(offset: u64) -> Vec<u8> {
    ProducerStates::default().encode(offset)
}

/// The byte position, in a segment starting at `base_offset`, from which to scan for
/// `offset`: that of the last entry of the offset index `index` (a sealed `.index` file's
/// bytes) at or before it, or 0. Trailing bytes that are not a whole entry are ignored.
pub fn index_position(index: &[u8], base_offset: u64, offset: u64) -> u64 {
    let rel = u32::try_from(offset.saturating_sub(base_offset)).unwrap_or(u32::MAX);
    last_entry_where(index, |e: &OffsetEntry| e.relative_offset <= rel)
        .map_or(0, |e| u64::from(e.position))
}

/// The offset, in a segment starting at `base_offset`, from which to scan for the first
/// record at or after `timestamp`: that of the last entry of the time index `time_index` (a
/// sealed `.timeindex` file's bytes) below `timestamp`, or `base_offset`.
pub fn time_index_offset(time_index: &[u8], base_offset: u64, timestamp: i64) -> u64 {
    last_entry_where(time_index, |e: &TimeEntry| e.timestamp < timestamp)
        .map_or(base_offset, |e| base_offset + u64::from(e.relative_offset))
}

/// Binary search over index bytes for the last entry for which `at_or_before` holds, given
/// that it holds for a prefix of the (non-vacant) entries.
fn last_entry_where<E: Entry>(bytes: &[u8], at_or_before: impl Fn(&E) -> bool) -> Option<E> {
    let slot = |i: usize| E::decode(&bytes[i * E::SIZE..(i + 1) * E::SIZE]);
    let (mut lo, mut hi) = (0usize, bytes.len() / E::SIZE);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = slot(mid);
        if !e.is_vacant() && at_or_before(&e) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1).map(slot)
}

/// Whole batches at the start of `buf` (read from a batch boundary of a segment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitBatches {
    /// One `Bytes` per batch, exactly as stored.
    pub batches: Vec<Bytes>,
    /// Records in `batches`.
    pub records: u64,
    /// One past the last record in `batches` (`from` if there are none).
    pub next_offset: u64,
}

/// Splits `buf`, read from a batch boundary, into its whole batches (a partial batch at the
/// end is left out), as a read of a local segment does; `from` is what `next_offset` is when
/// there is no whole batch.
pub fn split_batches(buf: Bytes, from: u64) -> SplitBatches {
    let SegmentRead {
        batches,
        records,
        next_offset,
    } = SegmentRead::split(buf, from);
    SplitBatches {
        batches,
        records,
        next_offset,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::batch::BatchBuilder;
    use crate::testing::{batch, offsets_in, small};
    use crate::{Error, LogConfig};

    fn idem(seq: i32) -> Bytes {
        let mut b = BatchBuilder::new();
        b.producer(7, 0, seq);
        b.push(None, Some(&[b'x'; 300]), &[], 5);
        b.build()
    }

    /// A log of `n` one-record idempotent batches of producer 7 over several segments.
    fn log_of(dir: &Path, n: i32) -> Log {
        let log = Log::open(dir, small()).unwrap();
        for seq in 0..n {
            log.append(idem(seq)).unwrap();
        }
        log
    }

    #[test]
    fn sealed_segments_are_every_segment_but_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(dir.path(), 40);
        let sealed = log.sealed_segments();
        let bases = log.segment_base_offsets();
        assert_eq!(sealed.len(), bases.len() - 1);
        for (s, next) in sealed.iter().zip(&bases[1..]) {
            assert_eq!(s.next_offset, *next);
            assert_eq!(s.size, std::fs::metadata(&s.log_path).unwrap().len());
            assert!(s.index_path.exists() && s.time_index_path.exists());
            assert_eq!(s.max_timestamp, 5);
        }
    }

    #[test]
    fn a_log_seeded_with_a_snapshot_goes_on_where_the_copied_one_ended() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(&dir.path().join("old"), 40);
        let sealed = log.sealed_segments();
        // At the newest boundary the roll's own snapshot; at the oldest, a rebuilt one (the
        // log keeps only its two newest snapshot files).
        let first_end = sealed[0].next_offset;
        let last_end = sealed.last().unwrap().next_offset;
        for end in [first_end, last_end] {
            let snapshot = log.producer_snapshot_at(end).unwrap();
            let seeded = dir.path().join(format!("seeded-{end}"));
            seed_log(&seeded, end, &snapshot).unwrap();
            let restored = Log::open(&seeded, small()).unwrap();
            assert_eq!((restored.start_offset(), restored.end_offset()), (end, end));
            // The batch before `end` is a retry: answered with its offset, not written.
            let retry = restored.append(idem(end as i32 - 1)).unwrap();
            assert_eq!(retry.duplicates, [true]);
            assert_eq!(retry.base_offsets, [end - 1]);
            assert_eq!(restored.end_offset(), end);
            // The next sequence is appended at `end`; a gap is refused.
            assert!(matches!(
                restored.append(idem(end as i32 + 1)),
                Err(Error::OutOfOrderSequence { .. })
            ));
            assert_eq!(
                restored.append(idem(end as i32)).unwrap().base_offsets,
                [end]
            );
            let read = restored.read(end, 1 << 20).unwrap();
            assert_eq!(offsets_in(&read), [end]);
            assert!(matches!(
                restored.read(end - 1, 100),
                Err(Error::OffsetOutOfRange { log_start, .. }) if log_start == end
            ));
        }
        assert!(matches!(
            log.producer_snapshot_at(log.end_offset() + 1),
            Err(Error::OffsetOutOfRange { .. })
        ));
    }

    #[test]
    fn seeding_refuses_a_snapshot_for_another_offset_or_a_used_directory() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(&dir.path().join("old"), 40);
        let end = log.sealed_segments()[0].next_offset;
        let snapshot = log.producer_snapshot_at(end).unwrap();
        let err = seed_log(&dir.path().join("a"), end + 1, &snapshot).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidConfig {
                key: "producer_snapshot",
                ..
            }
        ));
        assert!(seed_log(&dir.path().join("b"), end, b"junk").is_err());
        assert!(seed_log(&dir.path().join("old"), end, &snapshot).is_err());
    }

    #[test]
    fn local_retention_below_a_limit_keeps_what_lies_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..40 {
            log.append(batch(2, i, 200)).unwrap();
        }
        log.set_config(LogConfig {
            retention_bytes: Some(0),
            ..small()
        })
        .unwrap();
        let sealed = log.sealed_segments();
        // Copied up to the end of the second segment: only the first two may go.
        let out = log.enforce_retention_below(sealed[1].next_offset).unwrap();
        assert_eq!(out.segments_deleted, 2);
        assert_eq!(log.start_offset(), sealed[2].base_offset);
        // A limit inside a segment keeps that segment.
        let out = log
            .enforce_retention_below(sealed[2].next_offset - 1)
            .unwrap();
        assert_eq!(out.segments_deleted, 0);
    }

    #[test]
    fn lookups_over_copied_bytes_agree_with_the_local_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 16 << 10,
                ..small()
            },
        )
        .unwrap();
        for i in 0..150 {
            log.append(batch(3, 1000 + i * 10, 100)).unwrap();
        }
        let s = &log.sealed_segments()[0];
        let data = Bytes::from(std::fs::read(&s.log_path).unwrap());
        let index = std::fs::read(&s.index_path).unwrap();
        let time_index = std::fs::read(&s.time_index_path).unwrap();
        assert!(index.len() >= 16, "the index has entries");
        for offset in s.base_offset..s.next_offset {
            let pos = index_position(&index, s.base_offset, offset) as usize;
            let split = split_batches(data.slice(pos..), offset);
            // The scan starts at a batch at or before `offset`, and finds the local read's
            // batch among the next ones.
            let local = log.read(offset, 1).unwrap().batches[0].clone();
            assert!(
                split.batches.iter().take(40).any(|b| *b == local),
                "offset {offset}"
            );
            assert_eq!(split.next_offset, s.next_offset);
        }
        // Time: the scan starts at or before the first batch with a record at or after it.
        let t = 1000 + 70 * 10;
        let from = time_index_offset(&time_index, s.base_offset, t);
        let found = log.offset_for_timestamp(t).unwrap().unwrap();
        assert!(from <= found && from >= s.base_offset, "{from} {found}");
        assert_eq!(
            time_index_offset(&time_index, s.base_offset, 0),
            s.base_offset
        );
        // Junk gives a position, never a panic.
        assert_eq!(index_position(&[1, 2, 3], 0, 5), 0);
        let junk = split_batches(Bytes::from_static(b"not a batch at all"), 9);
        assert_eq!((junk.batches.len(), junk.next_offset), (0, 9));
    }
}
