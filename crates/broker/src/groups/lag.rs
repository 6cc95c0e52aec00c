//! The lag gauges: every `groups.lag_refresh_interval_ms`, for every committed offset of a
//! partition that exists, the records left to consume and the age of the oldest of them.
//!
//! The age comes from the record at the consumption position (the larger of the committed
//! offset and the log start): for an uncompressed batch, that record's own timestamp; for a
//! compressed one, the batch's first timestamp, which is never later than the record's, so the
//! age is then an upper bound (by at most the time one batch spans). Under log-append time,
//! the batch's append time. The gauges are replaced as a whole at each refresh, so partitions
//! of deleted topics and deleted groups disappear.

use std::sync::Arc;
use std::time::Duration;

use runnel_storage::batch::{BatchHeader, Compression, RecordBatch, TimestampType};

use super::Groups;
use super::assignor::Tp;
use crate::clock::now_ms;
use crate::metrics::{GroupSamples, LagSample};
use crate::partition::Partition;
use crate::shutdown::Shutdown;
use crate::topics::Topics;

/// Recomputes the gauges every `interval` until shutdown.
pub async fn refresh_loop(groups: Arc<Groups>, interval: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let offsets = groups.offsets.snapshot();
        let members = groups.member_counts();
        let topics = groups.topics().clone();
        let computed =
            tokio::task::spawn_blocking(move || compute(&topics, offsets, now_ms())).await;
        if let Ok(lag) = computed {
            groups.gauges.replace(GroupSamples { lag, members });
        }
    }
}

/// The samples for `(group, partition, committed offset)` triples. Blocking (one small read
/// per lagging partition).
pub fn compute(topics: &Topics, offsets: Vec<(String, Tp, u64)>, now_ms: i64) -> Vec<LagSample> {
    let mut out = Vec::with_capacity(offsets.len());
    for (group, (topic, partition), committed) in offsets {
        let Ok(p) = topics.get(&topic).and_then(|t| t.partition(partition)) else {
            continue;
        };
        if p.is_deleted() {
            continue;
        }
        let (start, end) = (p.start_offset(), p.end_offset());
        let lag = super::lag(committed, start, end);
        let age_seconds = if lag == 0 {
            0.0
        } else {
            let position = committed.max(start);
            oldest_timestamp(&p, position)
                .map_or(0.0, |ts| (now_ms.saturating_sub(ts)).max(0) as f64 / 1000.0)
        };
        out.push(LagSample {
            group,
            topic,
            partition,
            committed,
            lag,
            age_seconds,
        });
    }
    out
}

/// The timestamp of the record at `position`, or an earlier bound (see the module
/// documentation). `None` if it cannot be read (retention or the end moved meanwhile).
pub fn oldest_timestamp(p: &Partition, position: u64) -> Option<i64> {
    let read = p.read_local(position, 1).ok()?;
    let first = read.batches.into_iter().next()?;
    let header = BatchHeader::decode(&first).ok()?;
    if header.timestamp_type() == TimestampType::LogAppendTime {
        return Some(header.append_time);
    }
    let total = header.total_len();
    if header.compression() == Some(Compression::None) && total <= first.len() {
        let records = RecordBatch::new(first, usize::MAX)
            .ok()
            .and_then(|b| b.records().ok());
        if let Some(records) = records {
            for r in records.flatten() {
                if r.offset >= position {
                    return Some(r.timestamp);
                }
            }
        }
    }
    Some(header.first_timestamp)
}
