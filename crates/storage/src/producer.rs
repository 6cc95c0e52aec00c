//! Idempotent producer state of one partition log.
//!
//! For each producer id: its epoch and the sequence numbers and offsets of its last
//! [`REMEMBERED_BATCHES`] batches. A batch whose sequence range equals a remembered one is a
//! retry and is answered with the original offsets; any other sequence than the next is
//! refused, as is an older epoch. The state is checked and updated under the log's writer
//! lock, so the check and the append are one step.
//!
//! It survives restarts through snapshots, `<offset, 20 digits>.snapshot` in the partition
//! directory, written at every roll and at close (the state as of that offset), and on open is
//! rebuilt from the newest snapshot plus the batch headers after it. Little-endian:
//!
//! | offset | size | field          | type |
//! |-------:|-----:|----------------|------|
//! | 0      | 4    | magic `RNPS`   |      |
//! | 4      | 1    | version, 1     | u8   |
//! | 5      | 8    | `offset`       | u64  |
//! | 13     | 4    | `count`        | u32  |
//! | 17     | ...  | `count` producers, below |  |
//! | end-4  | 4    | CRC-32 of all bytes before it | u32 |
//!
//! A producer: `producer_id` i64, `epoch` i16, `last_append_time` i64, `batches` u8, then per
//! batch `first_sequence` i32, `last_sequence` i32, `base_offset` u64, `last_offset_delta` u32,
//! `append_time` i64 (oldest first).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::BatchHeader;
use crate::error::{Error, Result};
use crate::segment::Segment;

/// How many of each producer's last batches are remembered for duplicate detection. A
/// producer may have at most this many batches in flight per partition.
pub const REMEMBERED_BATCHES: usize = 5;

const MAGIC: &[u8; 4] = b"RNPS";
const VERSION: u8 = 1;
const PRODUCER_LEN: usize = 8 + 2 + 8 + 1;
const BATCH_LEN: usize = 4 + 4 + 8 + 4 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset_delta: u32,
    append_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Producer {
    epoch: i16,
    last_append_time: i64,
    batches: VecDeque<BatchMeta>,
}

/// The sequence after `seq`: sequences wrap from `i32::MAX` to 0.
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// The sequence of the last record of a batch.
fn last_seq(header: &BatchHeader) -> i32 {
    let last = i64::from(header.base_sequence) + i64::from(header.last_offset_delta);
    // Wraps like `next_seq`; the result is below 2^31.
    (last % (i64::from(i32::MAX) + 1)) as i32
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// New: append it.
    Append,
    /// A retry of a batch already in the log at this base offset.
    Duplicate { base_offset: u64, append_time: i64 },
}

/// Undo information for one [`ProducerStates::apply`] call.
pub(crate) type Undo = Vec<(i64, Option<Producer>)>;

/// All producers of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProducerStates {
    map: HashMap<i64, Producer>,
}

impl ProducerStates {
    /// Rebuilds the producer state: the newest valid snapshot at or below the log end, then the
    /// batch headers after it. Snapshots past the end (the tail was cut by recovery) are deleted.
    pub(crate) fn rebuild(dir: &Path, segments: &[Arc<Segment>], end: u64) -> Result<Self> {
        Self::rebuild_from_files(dir, segments, end, true)
    }

    /// The producer state as of `end`, a segment boundary: as [`ProducerStates::rebuild`]
    /// from `segments` (those below `end`), but leaving the snapshots past `end` alone.
    pub(crate) fn rebuild_to(dir: &Path, segments: &[Arc<Segment>], end: u64) -> Result<Self> {
        Self::rebuild_from_files(dir, segments, end, false)
    }

    fn rebuild_from_files(
        dir: &Path,
        segments: &[Arc<Segment>],
        end: u64,
        remove_later: bool,
    ) -> Result<Self> {
        let mut offsets = list_snapshots(dir)?;
        offsets.sort_unstable();
        let mut state = None;
        for &offset in offsets.iter().rev() {
            let path = snapshot_path(dir, offset);
            if offset > end {
                if remove_later {
                    crate::recovery::remove_file(&path)?;
                }
                continue;
            }
            let bytes =
                std::fs::read(&path).map_err(|e| Error::io("read producer snapshot", &path, e))?;
            match Self::decode(&bytes) {
                Some((at, states)) if at == offset => {
                    state = Some((at, states));
                    break;
                }
                _ => tracing::warn!(path = %path.display(), "ignoring invalid producer snapshot"),
            }
        }
        let (from, mut states) = state.unwrap_or_else(|| {
            (
                segments.first().map_or(0, |s| s.base_offset),
                Self::default(),
            )
        });
        for segment in segments.iter().filter(|s| s.next_offset() > from) {
            let pos = if from <= segment.base_offset {
                0
            } else {
                segment.position_of(from)?
            };
            Segment::scan_headers(&segment.log_path, pos, segment.size(), |h| {
                if h.base_offset >= from {
                    states.record(h, h.base_offset, h.append_time);
                }
            })?;
        }
        Ok(states)
    }

    /// Checks a batch against the state and, if it is new, records it as appended at
    /// `base_offset`, saving what it changed in `undo`.
    pub fn apply(
        &mut self,
        header: &BatchHeader,
        base_offset: u64,
        append_time: i64,
        undo: &mut Undo,
    ) -> Result<Verdict> {
        let pid = header.producer_id;
        if pid < 0 {
            return Ok(Verdict::Append);
        }
        if header.base_sequence < 0 || header.producer_epoch < 0 {
            return Err(Error::malformed(
                "base_sequence",
                format!(
                    "producer {pid} sent epoch {} and sequence {}; both must be >= 0",
                    header.producer_epoch, header.base_sequence
                ),
            ));
        }
        let seq = header.base_sequence;
        let existing = self.map.get(&pid);
        match existing {
            None if seq != 0 => {
                return Err(Error::UnknownProducer {
                    producer_id: pid,
                    sequence: seq,
                });
            }
            Some(p) if header.producer_epoch < p.epoch => {
                return Err(Error::ProducerFenced {
                    producer_id: pid,
                    epoch: header.producer_epoch,
                    current_epoch: p.epoch,
                });
            }
            Some(p) if header.producer_epoch > p.epoch && seq != 0 => {
                return Err(Error::OutOfOrderSequence {
                    producer_id: pid,
                    expected: 0,
                    received: seq,
                });
            }
            Some(p) if header.producer_epoch == p.epoch => {
                let last = last_seq(header);
                if let Some(b) = p
                    .batches
                    .iter()
                    .find(|b| b.first_seq == seq && b.last_seq == last)
                {
                    return Ok(Verdict::Duplicate {
                        base_offset: b.base_offset,
                        append_time: b.append_time,
                    });
                }
                // A producer entry always holds at least one batch.
                let expected = p.batches.back().map_or(0, |b| next_seq(b.last_seq));
                if p.batches
                    .front()
                    .is_some_and(|b| seq < b.first_seq && last < b.first_seq)
                {
                    return Err(Error::DuplicateSequence {
                        producer_id: pid,
                        sequence: seq,
                    });
                }
                if seq != expected {
                    return Err(Error::OutOfOrderSequence {
                        producer_id: pid,
                        expected,
                        received: seq,
                    });
                }
            }
            _ => {}
        }
        undo.push((pid, existing.cloned()));
        self.record(header, base_offset, append_time);
        Ok(Verdict::Append)
    }

    /// Reverts the changes saved in `undo` (after a failed write).
    pub fn revert(&mut self, undo: Undo) {
        for (pid, before) in undo.into_iter().rev() {
            match before {
                Some(p) => self.map.insert(pid, p),
                None => self.map.remove(&pid),
            };
        }
    }

    /// Records a batch found in the log (rebuild) or just appended.
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64, append_time: i64) {
        if header.producer_id < 0 {
            return;
        }
        let p = self
            .map
            .entry(header.producer_id)
            .or_insert_with(|| Producer {
                epoch: header.producer_epoch,
                last_append_time: append_time,
                batches: VecDeque::with_capacity(REMEMBERED_BATCHES),
            });
        if header.producer_epoch != p.epoch {
            p.epoch = header.producer_epoch;
            p.batches.clear();
        }
        if p.batches.len() == REMEMBERED_BATCHES {
            p.batches.pop_front();
        }
        p.batches.push_back(BatchMeta {
            first_seq: header.base_sequence,
            last_seq: last_seq(header),
            base_offset,
            last_offset_delta: header.last_offset_delta,
            append_time,
        });
        p.last_append_time = append_time;
    }

    /// Forgets producers whose last append is older than `cutoff` (ms).
    pub fn expire(&mut self, cutoff: i64) {
        self.map.retain(|_, p| p.last_append_time >= cutoff);
    }

    /// Encodes a snapshot of the state as of `offset`.
    pub fn encode(&self, offset: u64) -> Vec<u8> {
        let batches: usize = self.map.values().map(|p| p.batches.len()).sum();
        let mut out = Vec::with_capacity(21 + self.map.len() * PRODUCER_LEN + batches * BATCH_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        let mut ids: Vec<&i64> = self.map.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let p = &self.map[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.extend_from_slice(&p.last_append_time.to_le_bytes());
            out.push(p.batches.len() as u8);
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset_delta.to_le_bytes());
                out.extend_from_slice(&b.append_time.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a snapshot; returns its offset and the state, or `None` if it does not check.
    pub fn decode(buf: &[u8]) -> Option<(u64, Self)> {
        let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
        if crc32fast::hash(body).to_le_bytes() != crc || body.len() < 17 {
            return None;
        }
        if &body[..4] != MAGIC || body[4] != VERSION {
            return None;
        }
        let mut r = Reader(&body[5..]);
        let offset = u64::from_le_bytes(r.take()?);
        let count = u32::from_le_bytes(r.take()?);
        let mut map = HashMap::with_capacity((count as usize).min(1 << 16));
        for _ in 0..count {
            let id = i64::from_le_bytes(r.take()?);
            let epoch = i16::from_le_bytes(r.take()?);
            let last_append_time = i64::from_le_bytes(r.take()?);
            let n = r.take::<1>()?[0] as usize;
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: i32::from_le_bytes(r.take()?),
                    last_seq: i32::from_le_bytes(r.take()?),
                    base_offset: u64::from_le_bytes(r.take()?),
                    last_offset_delta: u32::from_le_bytes(r.take()?),
                    append_time: i64::from_le_bytes(r.take()?),
                });
            }
            if batches.is_empty() {
                return None;
            }
            map.insert(
                id,
                Producer {
                    epoch,
                    last_append_time,
                    batches,
                },
            );
        }
        r.0.is_empty().then_some((offset, ProducerStates { map }))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
}

/// Path of the snapshot for `offset` in `dir`.
pub(crate) fn snapshot_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.snapshot"))
}

/// Writes a snapshot atomically: temporary file, fsync (unless `fsync` is false: then the
/// caller syncs the filesystem before it relies on the snapshot), rename. The caller fsyncs
/// the directory. Keeps only the two newest snapshots.
///
/// It allocates and frees no inode in the common cases, because with thousands of logs ext4's
/// search past recently freed inodes made closes slow: a snapshot identical to the one
/// already at `offset` (a restart without appends) is kept, and the temporary file is the
/// oldest snapshot renamed, when the new one makes it redundant.
pub(crate) fn write_snapshot(dir: &Path, offset: u64, bytes: &[u8], fsync: bool) -> Result<()> {
    let path = snapshot_path(dir, offset);
    let tmp = path.with_extension("snapshot.tmp");
    let mut offsets = list_snapshots(dir)?;
    offsets.sort_unstable();
    let unchanged = offsets.contains(&offset) && fs::read(&path).is_ok_and(|old| old == bytes);
    // With two or more older snapshots, the new one and the newest of them are kept.
    let redundant = match offsets.as_slice() {
        [oldest, .., newest] if *newest < offset => Some(*oldest),
        _ => None,
    };
    (|| {
        if unchanged {
            return if fsync {
                fs::File::open(&path)?.sync_all()
            } else {
                Ok(())
            };
        }
        // A roll writes its snapshot outside the writer lock, so two may run at once and pick
        // the same file to reuse: the one that finds it gone creates a file instead.
        let reused = match redundant {
            Some(old) => match fs::rename(snapshot_path(dir, old), &tmp) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            },
            None => false,
        };
        let mut f = if reused {
            // Overwritten, then cut: a file truncated to zero and rewritten is flushed by ext4
            // when it is closed.
            let f = fs::OpenOptions::new().write(true).open(&tmp)?;
            f.set_len(bytes.len() as u64)?;
            f
        } else {
            fs::File::create(&tmp)?
        };
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)
    })()
    .map_err(|e| {
        // Nothing names a half-written file: it goes, or is ignored by recovery.
        let _ = fs::remove_file(&tmp);
        Error::io("write producer snapshot", &path, e)
    })?;
    // What is left: the older snapshots but the recycled one, and the new one.
    offsets.retain(|o| Some(*o) != redundant && *o != offset);
    offsets.push(offset);
    offsets.sort_unstable();
    let keep_from = offsets.len().saturating_sub(2);
    for old in &offsets[..keep_from] {
        crate::recovery::remove_file(&snapshot_path(dir, *old))?;
    }
    Ok(())
}

/// Offsets of the snapshots in `dir`.
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
        if let Some((offset, "snapshot")) = entry
            .file_name()
            .to_str()
            .and_then(crate::segment::parse_file_name)
        {
            out.push(offset);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    #[test]
    fn snapshots_keep_the_two_newest_and_reuse_the_oldest_file() {
        use std::os::unix::fs::MetadataExt as _;

        let dir = tempfile::tempdir().unwrap();
        let ino = |o: u64| fs::metadata(snapshot_path(dir.path(), o)).unwrap().ino();
        write_snapshot(dir.path(), 10, b"ten", false).unwrap();
        write_snapshot(dir.path(), 20, b"twenty", true).unwrap();
        let ten = ino(10);
        // A third snapshot reuses the first one's file.
        write_snapshot(dir.path(), 30, b"thirty, longer", false).unwrap();
        let mut left = list_snapshots(dir.path()).unwrap();
        left.sort_unstable();
        assert_eq!(left, [20, 30]);
        assert_eq!(ino(30), ten);
        assert_eq!(
            fs::read(snapshot_path(dir.path(), 30)).unwrap(),
            b"thirty, longer"
        );
        write_snapshot(dir.path(), 40, b"40", true).unwrap();
        assert_eq!(fs::read(snapshot_path(dir.path(), 40)).unwrap(), b"40");
        // The same snapshot again keeps its file; a different one at the same offset
        // replaces it.
        let forty = ino(40);
        write_snapshot(dir.path(), 40, b"40", false).unwrap();
        assert_eq!(ino(40), forty);
        write_snapshot(dir.path(), 40, b"forty", false).unwrap();
        assert_eq!(fs::read(snapshot_path(dir.path(), 40)).unwrap(), b"forty");
        // An older offset than both (a log cut back by recovery) is written beside them and
        // then pruned as the oldest.
        write_snapshot(dir.path(), 5, b"five", false).unwrap();
        let mut left = list_snapshots(dir.path()).unwrap();
        left.sort_unstable();
        assert_eq!(left, [30, 40]);
        assert!(!dir.path().join(format!("{:020}.snapshot.tmp", 5)).exists());
    }

    fn header(pid: i64, epoch: i16, seq: i32, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::new();
        b.producer(pid, epoch, seq);
        for _ in 0..records {
            b.push(None, Some(b"v"), &[], 1);
        }
        BatchHeader::decode(&b.build()).unwrap()
    }

    #[test]
    fn sequences_duplicates_and_fencing() {
        let mut s = ProducerStates::default();
        let mut undo = Undo::new();
        assert_eq!(
            s.apply(&header(7, 0, 0, 3), 10, 1, &mut undo).unwrap(),
            Verdict::Append
        );
        assert_eq!(
            s.apply(&header(7, 0, 3, 2), 13, 1, &mut undo).unwrap(),
            Verdict::Append
        );
        // A retry of either batch gets its original offset.
        assert_eq!(
            s.apply(&header(7, 0, 0, 3), 99, 1, &mut undo).unwrap(),
            Verdict::Duplicate {
                base_offset: 10,
                append_time: 1
            }
        );
        assert_eq!(
            s.apply(&header(7, 0, 3, 2), 99, 1, &mut undo).unwrap(),
            Verdict::Duplicate {
                base_offset: 13,
                append_time: 1
            }
        );
        // A gap.
        assert!(matches!(
            s.apply(&header(7, 0, 6, 1), 15, 1, &mut undo),
            Err(Error::OutOfOrderSequence {
                producer_id: 7,
                expected: 5,
                received: 6
            })
        ));
        // A new epoch starts at 0 and fences the old one.
        assert_eq!(
            s.apply(&header(7, 1, 0, 1), 15, 1, &mut undo).unwrap(),
            Verdict::Append
        );
        assert!(matches!(
            s.apply(&header(7, 0, 5, 1), 16, 1, &mut undo),
            Err(Error::ProducerFenced {
                producer_id: 7,
                epoch: 0,
                current_epoch: 1
            })
        ));
        // A retry older than the remembered window cannot get its offsets back.
        for i in 0..=REMEMBERED_BATCHES as i32 {
            s.apply(&header(5, 0, i, 1), 100 + i as u64, 1, &mut undo)
                .unwrap();
        }
        assert_eq!(
            s.apply(&header(5, 0, 1, 1), 200, 1, &mut undo).unwrap(),
            Verdict::Duplicate {
                base_offset: 101,
                append_time: 1
            }
        );
        assert!(matches!(
            s.apply(&header(5, 0, 0, 1), 200, 1, &mut undo),
            Err(Error::DuplicateSequence {
                producer_id: 5,
                sequence: 0
            })
        ));
        // An unknown producer must start at 0.
        assert!(matches!(
            s.apply(&header(8, 0, 4, 1), 16, 1, &mut undo),
            Err(Error::UnknownProducer {
                producer_id: 8,
                sequence: 4
            })
        ));
        // Producer-less batches are not tracked.
        assert_eq!(
            s.apply(&header(-1, -1, -1, 1), 16, 1, &mut undo).unwrap(),
            Verdict::Append
        );
    }

    #[test]
    fn revert_undoes_apply() {
        let mut s = ProducerStates::default();
        let mut undo = Undo::new();
        s.apply(&header(1, 0, 0, 1), 0, 1, &mut undo).unwrap();
        let before = s.clone();
        let mut undo = Undo::new();
        s.apply(&header(1, 0, 1, 1), 1, 1, &mut undo).unwrap();
        s.apply(&header(2, 0, 0, 1), 2, 1, &mut undo).unwrap();
        s.revert(undo);
        assert_eq!(s, before);
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            s.record(&header(3, 2, i * 2, 2), u64::from(i as u32) * 2, 100);
        }
        s.record(&header(4, 0, 0, 1), 50, 200);
        let bytes = s.encode(51);
        let (offset, back) = ProducerStates::decode(&bytes).unwrap();
        assert_eq!((offset, &back), (51, &s));
        assert_eq!(back.map[&3].batches.len(), REMEMBERED_BATCHES);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(ProducerStates::decode(&bad).is_none(), "flip at {i}");
        }
        assert!(ProducerStates::decode(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(next_seq(i32::MAX), 0);
        assert_eq!(last_seq(&header(1, 0, i32::MAX, 2)), 0);
    }
}
