//! Retention: deletes the oldest sealed segments once they are older or the log larger than
//! its topic keeps, or once their owner no longer needs them, and moves the log start offset
//! past them.

use std::sync::Arc;

use tracing::info;

use crate::error::Result;
use crate::log::{Log, lock};
use crate::recovery;
use crate::segment::Segment;

/// What [`Log::enforce_retention`] or [`Log::delete_before`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Number of segments deleted.
    pub segments_deleted: usize,
    /// Bytes of `.log` files deleted.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub log_start_offset: u64,
}

impl Log {
    /// Deletes the oldest sealed segments that retention says must go: those whose newest
    /// record is older than `retention_age`, and while the log is larger than
    /// `retention_bytes`. The active segment is never deleted. Advances the log start offset.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be deleted; the log start offset has already moved, and
    /// the next open deletes the leftovers.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        self.enforce_retention_within(u64::MAX)
    }

    /// Retention as [`Log::enforce_retention`], deleting only segments whose records all lie
    /// below `limit`.
    pub(crate) fn enforce_retention_within(&self, limit: u64) -> Result<RetentionOutcome> {
        let config = self.config();
        let now = self.env.clock.now_ms();
        self.delete_oldest(|segments| {
            let mut remaining: u64 = segments.iter().map(|s| s.size()).sum();
            let mut n = 0;
            for s in &segments[..segments.len().saturating_sub(1)] {
                let expired = config.retention_age.is_some_and(|age| {
                    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    s.max_timestamp() < now.saturating_sub(age)
                });
                let oversize = config
                    .retention_bytes
                    .is_some_and(|limit| remaining > limit);
                if !(expired || oversize) || s.next_offset() > limit {
                    break;
                }
                remaining -= s.size();
                n += 1;
            }
            n
        })
    }

    /// Deletes the sealed segments whose records all lie below `offset` (the active segment
    /// never) and moves the log start offset past them: for a log whose owner has rewritten
    /// what those records say further on, as an internal log's snapshot does.
    ///
    /// # Errors
    /// As [`Log::enforce_retention`].
    pub fn delete_before(&self, offset: u64) -> Result<RetentionOutcome> {
        self.delete_oldest(|segments| {
            // A segment's records all lie below the next segment's base offset.
            segments
                .windows(2)
                .take_while(|pair| pair[1].base_offset <= offset)
                .count()
        })
    }

    /// Deletes the `count(segments)` oldest segments (never the active one) and moves the
    /// log start offset past them.
    fn delete_oldest(
        &self,
        count: impl FnOnce(&[Arc<Segment>]) -> usize,
    ) -> Result<RetentionOutcome> {
        let (doomed, start) = {
            // Holding the writer lock keeps a roll from changing the segment list meanwhile.
            let _w = lock(&self.writer);
            let segments = self.segments.snapshot();
            // Never the active segment, nor a rolled one whose seal is still under way.
            let sealed = segments.iter().take_while(|s| s.is_sealed()).count();
            let n = count(&segments)
                .min(segments.len().saturating_sub(1))
                .min(sealed);
            if n == 0 {
                return Ok(RetentionOutcome {
                    log_start_offset: self.start_offset(),
                    ..Default::default()
                });
            }
            let kept = segments[n..].to_vec();
            let start = kept[0].base_offset;
            self.segments.publish(kept);
            (segments[..n].to_vec(), start)
        };
        self.remove_segments(&doomed, start)
    }

    /// Removes the files of segments already taken out of the segment set.
    fn remove_segments(&self, doomed: &[Arc<Segment>], start: u64) -> Result<RetentionOutcome> {
        let mut bytes_deleted = 0;
        for s in doomed {
            bytes_deleted += s.size();
            // The log file first: an index left without its log is cleaned up on open, while
            // a log without its index would come back to life.
            recovery::remove_file(&s.log_path)?;
            recovery::remove_file(&s.index_path)?;
            recovery::remove_file(&s.time_index_path)?;
            info!(path = %s.log_path.display(), base_offset = s.base_offset,
                bytes = s.size(), "deleted segment");
        }
        recovery::sync_dir(self.dir())?;
        Ok(RetentionOutcome {
            segments_deleted: doomed.len(),
            bytes_deleted,
            log_start_offset: start,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::error::Error;
    use crate::testing::{batch, small, with_clock};
    use crate::{Log, LogConfig};

    #[test]
    fn retention_by_bytes_keeps_the_active_segment_and_moves_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..40 {
            log.append(batch(2, i, 200)).unwrap();
        }
        let before = log.segment_count();
        log.set_config(LogConfig {
            retention_bytes: Some(5000),
            ..small()
        })
        .unwrap();
        let out = log.enforce_retention().unwrap();
        assert!(out.segments_deleted > 0 && out.segments_deleted < before);
        assert!(log.size_bytes() <= 5000, "{} bytes left", log.size_bytes());
        assert_eq!(log.start_offset(), out.log_start_offset);
        assert_eq!(log.segment_base_offsets()[0], out.log_start_offset);
        let err = log.read(0, 100).unwrap_err();
        assert!(
            matches!(err, Error::OffsetOutOfRange { requested: 0, log_start, log_end: 80 }
            if log_start == out.log_start_offset)
        );
        // A limit of zero deletes every sealed segment but never the active one.
        log.set_config(LogConfig {
            retention_bytes: Some(0),
            ..small()
        })
        .unwrap();
        log.enforce_retention().unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.end_offset(), 80);
        assert!(!dir.path().join(format!("{:020}.log", 0)).exists());

        // Reopening keeps the new start.
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.start_offset(), log.segment_base_offsets()[0]);
        assert_eq!(log.end_offset(), 80);
    }

    #[test]
    fn delete_before_removes_only_segments_wholly_below_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small()).unwrap();
        for i in 0..40 {
            log.append(batch(2, i, 200)).unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 4, "{bases:?}");
        // An offset inside the third segment keeps it: only the first two go.
        let out = log.delete_before(bases[2] + 1).unwrap();
        assert_eq!(out.segments_deleted, 2);
        assert_eq!(log.start_offset(), bases[2]);
        assert_eq!(log.delete_before(bases[2]).unwrap().segments_deleted, 0);
        // Past the end, everything sealed goes and the active segment stays.
        log.delete_before(u64::MAX).unwrap();
        assert_eq!(log.segment_base_offsets(), [*bases.last().unwrap()]);
        assert_eq!(log.end_offset(), 80);
        drop(log);
        let log = Log::open(dir.path(), small()).unwrap();
        assert_eq!(log.start_offset(), *bases.last().unwrap());
    }

    #[test]
    fn retention_by_age_uses_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_age: Some(Duration::from_secs(10)),
            ..small()
        };
        let (log, clock) = with_clock(dir.path(), config, 100_000);
        for i in 0..20 {
            log.append(batch(2, 50_000 + i * 1000, 300)).unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3);
        // Newest record at 69_001; now 100_000: everything sealed is older than 10 s.
        let out = log.enforce_retention().unwrap();
        assert_eq!(out.segments_deleted, bases.len() - 1);
        // Nothing more to delete, however far the clock moves.
        clock.0.fetch_add(1_000_000, Ordering::SeqCst);
        assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);
    }
}
