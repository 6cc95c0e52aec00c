//! The dead-letter copier: copies records that share groups rejected, or that ran out of
//! deliveries, to each group's dead-letter topic (`docs/protocol.md`, "Dead letters").
//!
//! A copy is each record's key, value, headers and timestamp, with headers appended that say
//! where it came from and why ([`HEADERS`]), written to partition `p mod n` of the
//! dead-letter topic for records of partition `p` (so one partition's dead letters keep their
//! order).
//!
//! **Exactly once, across crashes.** Per partition and round: (1) the records' state notes
//! where the copy starts (the dead-letter partition and its log end offset) and that note is
//! made durable; (2) the copy is appended and made durable; (3) the records are marked done,
//! durably. A crash after (1) leaves the note: the next round first looks in the dead-letter
//! partition from that offset on for copies of those records (by their headers) and marks the
//! ones it finds done, so no record is copied twice and none is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_storage::batch::BatchBuilder;
use tracing::warn;

use super::Broker;
use super::consume::storage_error;
use crate::clock::now_ms;
use crate::error::RpcError;
use crate::groups::assignor::Tp;
use crate::partition::Partition;
use crate::shares::ShareGroup;
use crate::shares::state::{Copy, DeadLetters};
use crate::tasks::blocking;
use crate::topics::Topic;

/// The headers a dead letter carries, in this order, values as UTF-8 text: the topic,
/// partition and offset it was read from, the share group, its delivery count, the error its
/// consumer gave (empty when it ran out of deliveries, see the reason below), and when it was
/// dead-lettered (ms since the Unix epoch).
pub const HEADERS: [&str; 7] = [
    "runnel.dlq.topic",
    "runnel.dlq.partition",
    "runnel.dlq.offset",
    "runnel.dlq.group",
    "runnel.dlq.delivery_count",
    "runnel.dlq.error",
    "runnel.dlq.time_ms",
];

/// Records copied per partition in one round.
const ROUND_RECORDS: u64 = 4096;
/// How often the copier retries when nothing woke it (a failed copy, a missing topic).
const RETRY: Duration = Duration::from_secs(1);
/// How often a lasting failure of one group is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Broker {
    /// Copies dead letters until shutdown: whenever a group has some, and every [`RETRY`].
    pub(crate) async fn dead_letter_loop(self: Arc<Self>) {
        // When each group's failure was last logged: a failure that lasts (a dead-letter topic
        // deleted) is logged once a minute, not at every retry.
        let mut logged: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => return,
                () = self.shares.dead_letters.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
            for group in self.shares.all() {
                match self.copy_dead_letters(&group).await {
                    Ok(()) => {
                        logged.remove(&group.id);
                    }
                    Err(e) => {
                        let due = logged
                            .get(&group.id)
                            .is_none_or(|at| at.elapsed() >= LOG_EVERY);
                        if due {
                            warn!(group = %group.id, error = %e.message,
                                "copying dead letters failed; retrying every second");
                            logged.insert(group.id.clone(), Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// One round for one group.
    async fn copy_dead_letters(&self, group: &ShareGroup) -> Result<(), RpcError> {
        let (topic, work, archived) = group.dead_letter_work(ROUND_RECORDS);
        archived.wait().await?;
        let Some(topic) = topic else {
            return Ok(());
        };
        if work.is_empty() {
            return Ok(());
        }
        let dlq = self.topics.get(&topic)?;
        for (tp, pending) in work {
            let source = match self.topics.get(&tp.0).and_then(|t| t.partition(tp.1)) {
                Ok(p) => p,
                Err(_) => {
                    // The topic read is gone, and its records with it.
                    let all: Vec<_> = pending.iter().map(|d| (d.first, d.last)).collect();
                    group.dead_lettered(&tp, &all).1.wait().await?;
                    continue;
                }
            };
            let pending = self
                .settle_started_copies(group, &tp, &dlq, pending)
                .await?;
            if pending.is_empty() {
                continue;
            }
            let target = dlq.partition(tp.1 % dlq.partition_count())?;
            let copied = self
                .copy_partition(group, &tp, &source, &target, &pending)
                .await?;
            dlq.metrics.records_in.increment(copied);
            crate::metrics::share_dead_lettered(&group.id, &tp.0, copied);
        }
        Ok(())
    }

    /// Looks for the copies a crash may have cut short: marks the records whose copy is in
    /// the dead-letter partition done, and returns the rest.
    async fn settle_started_copies(
        &self,
        group: &ShareGroup,
        tp: &Tp,
        dlq: &Topic,
        pending: Vec<DeadLetters>,
    ) -> Result<Vec<DeadLetters>, RpcError> {
        let started: BTreeSet<Copy> = pending.iter().filter_map(|d| d.copy).collect();
        let mut found = BTreeSet::new();
        for copy in started {
            let Ok(target) = dlq.partition(copy.partition) else {
                continue;
            };
            found.extend(self.copies_in(&target, copy.from, &group.id, tp).await?);
        }
        if found.is_empty() {
            return Ok(pending);
        }
        let done: Vec<(u64, u64)> = found.iter().map(|o| (*o, *o)).collect();
        group.dead_lettered(tp, &done).1.wait().await?;
        Ok(pending
            .into_iter()
            .flat_map(|d| split_out(d, &found))
            .collect())
    }

    /// The source offsets of the dead letters of `group` from `tp` in `target` from `from`.
    async fn copies_in(
        &self,
        target: &Arc<Partition>,
        from: u64,
        group: &str,
        tp: &Tp,
    ) -> Result<BTreeSet<u64>, RpcError> {
        let target = target.clone();
        let limit = self.config.limits.fetch_max_bytes as usize;
        let (group, tp) = (group.to_owned(), tp.clone());
        blocking(move || {
            let mut found = BTreeSet::new();
            let mut at = from.max(target.start_offset());
            while at < target.end_offset() {
                let read = target
                    .read(at, limit)
                    .map_err(|e| storage_error(&e, &target))?;
                if read.batches.is_empty() {
                    break;
                }
                super::records::each_record(
                    &read.batches,
                    at,
                    limit,
                    (&target.topic, target.index),
                    |r| {
                        if let Some(offset) = source_of(&r.headers, &group, &tp) {
                            found.insert(offset);
                        }
                    },
                )?;
                at = read.next_offset;
            }
            Ok(found)
        })
        .await
    }

    /// Copies one partition's pending dead letters: note, append, mark done. Returns how many
    /// records were copied.
    async fn copy_partition(
        &self,
        group: &ShareGroup,
        tp: &Tp,
        source: &Arc<Partition>,
        target: &Arc<Partition>,
        pending: &[DeadLetters],
    ) -> Result<u64, RpcError> {
        let ranges: Vec<(u64, u64)> = pending.iter().map(|d| (d.first, d.last)).collect();
        let copy = Copy {
            partition: target.index,
            from: target.end_offset(),
        };
        group.copying(tp, &ranges, copy).wait().await?;
        let batch = self.dead_letter_batch(group, tp, source, pending).await?;
        let copied = match batch {
            None => 0,
            Some((batch, records)) => {
                let t = target.clone();
                let appended = blocking(move || {
                    t.append(std::slice::from_ref(&batch))
                        .map_err(|e| storage_error(&e, &t))
                })
                .await?;
                target
                    .want_durable(appended.next_offset)
                    .await
                    .map_err(|e| storage_error(&e, target))?;
                records
            }
        };
        // Records no longer in the log (retention) are done too: there is nothing to copy.
        group.dead_lettered(tp, &ranges).1.wait().await?;
        Ok(copied)
    }

    /// The copies of the pending records still in the source log, as one batch, and how many.
    async fn dead_letter_batch(
        &self,
        group: &ShareGroup,
        tp: &Tp,
        source: &Arc<Partition>,
        pending: &[DeadLetters],
    ) -> Result<Option<(Bytes, u64)>, RpcError> {
        let source = source.clone();
        let pending = pending.to_vec();
        let limit = self.config.limits.fetch_max_bytes as usize;
        let (group, tp) = (group.id.clone(), tp.clone());
        blocking(move || {
            let now = now_ms().to_string();
            let mut builder = BatchBuilder::new();
            let mut count = 0;
            let mut cursor = Cursor::new(&source, limit);
            for d in &pending {
                cursor.take(d.first, d.last, |r| {
                    let extra = [
                        tp.0.clone(),
                        tp.1.to_string(),
                        r.offset.to_string(),
                        group.clone(),
                        d.deliveries.to_string(),
                        d.reason.to_string(),
                        now.clone(),
                    ];
                    let mut headers: Vec<(&[u8], Option<&[u8]>)> = r
                        .headers
                        .iter()
                        .map(|h| (&h.name[..], h.value.as_deref()))
                        .collect();
                    headers.extend(
                        HEADERS
                            .iter()
                            .zip(&extra)
                            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
                    );
                    builder.push(r.key.as_deref(), r.value.as_deref(), &headers, r.timestamp);
                    count += 1;
                })?;
            }
            Ok((count > 0).then(|| (builder.build(), count)))
        })
        .await
    }
}

/// Bytes read at a time from the source partition: a few batches, as pending records are
/// usually near each other.
const READ_BYTES: usize = 256 << 10;

/// Reads a partition forward for ranges in offset order, decoding each batch once.
struct Cursor<'a> {
    source: &'a Partition,
    limit: usize,
    decoded: std::collections::VecDeque<runnel_storage::batch::Record>,
    /// The offset after the last record decoded.
    next: u64,
}

impl<'a> Cursor<'a> {
    fn new(source: &'a Partition, limit: usize) -> Self {
        Cursor {
            source,
            limit,
            decoded: std::collections::VecDeque::new(),
            next: 0,
        }
    }

    /// Calls `each` with the records of `[first, last]` still in the log, in order.
    fn take(
        &mut self,
        first: u64,
        last: u64,
        mut each: impl FnMut(runnel_storage::batch::Record),
    ) -> Result<(), RpcError> {
        loop {
            while self.decoded.front().is_some_and(|r| r.offset < first) {
                self.decoded.pop_front();
            }
            while self.decoded.front().is_some_and(|r| r.offset <= last) {
                if let Some(r) = self.decoded.pop_front() {
                    each(r);
                }
            }
            if !self.decoded.is_empty() || self.next > last {
                return Ok(());
            }
            let at = self.next.max(first).max(self.source.start_offset());
            if at > last || at >= self.source.end_offset() {
                return Ok(());
            }
            let read = self
                .source
                .read(at, READ_BYTES)
                .map_err(|e| storage_error(&e, self.source))?;
            if read.batches.is_empty() {
                return Ok(());
            }
            let at_topic = (&*self.source.topic, self.source.index);
            super::records::each_record(&read.batches, at, self.limit, at_topic, |r| {
                self.decoded.push_back(r);
            })?;
            self.next = read.next_offset;
        }
    }
}

/// The source offset a dead letter of `group` from `tp` names in its headers, if it is one.
fn source_of(headers: &[runnel_storage::batch::Header], group: &str, tp: &Tp) -> Option<u64> {
    let get = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|h| &h.name[..] == name.as_bytes())
            .and_then(|h| h.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let partition = tp.1.to_string();
    (get(HEADERS[0]) == Some(tp.0.as_str())
        && get(HEADERS[1]) == Some(partition.as_str())
        && get(HEADERS[3]) == Some(group))
    .then(|| get(HEADERS[2])?.parse().ok())
    .flatten()
}

/// `d` without the offsets in `found`, as the ranges left.
fn split_out(d: DeadLetters, found: &BTreeSet<u64>) -> Vec<DeadLetters> {
    let mut out = Vec::new();
    let mut start = d.first;
    for &o in found.range(d.first..=d.last) {
        if o > start {
            out.push(DeadLetters {
                first: start,
                last: o - 1,
                copy: None,
                ..d.clone()
            });
        }
        start = o + 1;
    }
    if start <= d.last {
        out.push(DeadLetters {
            first: start,
            copy: None,
            ..d
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_found_copied_are_split_out_of_the_pending_ranges() {
        let d = DeadLetters {
            first: 10,
            last: 20,
            deliveries: 2,
            reason: "why".into(),
            copy: Some(Copy {
                partition: 0,
                from: 5,
            }),
        };
        let found: BTreeSet<u64> = [9, 10, 13, 14, 20, 21].into_iter().collect();
        let left: Vec<(u64, u64)> = split_out(d.clone(), &found)
            .iter()
            .map(|d| (d.first, d.last))
            .collect();
        assert_eq!(left, vec![(11, 12), (15, 19)]);
        assert_eq!(split_out(d, &BTreeSet::new()).len(), 1);
    }
}
