//! One share partition's state: which records of one topic partition a share group has
//! delivered, to whom, how often, and which are done. A pure state machine, with no I/O and
//! no clock of its own (every call takes `now_ms`), unit-tested here.
//!
//! The **share-partition start offset** (`start`) is the first record not yet done; every
//! record below it was accepted, rejected or dead-lettered. The **next offset** (`next`) is
//! the first record never acquired: records at and after it are handed out fresh, in order.
//! Between the two lies the window of records in flight, kept as *runs*: maximal ranges of
//! consecutive offsets in the same [`RecordState`], merged as they become equal, so that a
//! million accepted records after one delayed record are two runs, not a million entries.
//!
//! Only what must survive a restart is reported as a [`Change`] for the share store to write:
//! releases, lock expiries and acknowledgements, with the record's delivery count. An
//! acquisition is not written: after a restart, records that were acquired and not yet
//! acknowledged are available again with the delivery count last written, as in Kafka.
//!
//! Capacity: fresh records are acquired only while fewer than `max_in_flight` records are in
//! flight (acquired, waiting for a redelivery, or being dead-lettered). A delayed record holds
//! one unit of that capacity, never the records behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A record's state in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Ready to be acquired once `not_before_ms` has passed; delivered `deliveries` times so
    /// far.
    Available {
        /// Deliveries so far.
        deliveries: u16,
        /// Not handed out before this time (ms since the Unix epoch); 0 for at once.
        not_before_ms: i64,
    },
    /// Handed to `member` until `until_ms`.
    Acquired {
        /// The member holding it.
        member: Arc<str>,
        /// When its lock expires (ms since the Unix epoch).
        until_ms: i64,
        /// Deliveries so far, this one included.
        deliveries: u16,
    },
    /// Waiting to be copied to the dead-letter topic.
    DeadLettering {
        /// Deliveries it had.
        deliveries: u16,
        /// Why it is dead-lettered (the consumer's error text, or the delivery limit).
        reason: Arc<str>,
        /// Set once a copy was started: where it went, so that a copy cut short by a crash
        /// can be found and is not written twice.
        copy: Option<Copy>,
    },
    /// Accepted, rejected without a dead-letter topic, or dead-lettered: never delivered again.
    Done,
}

impl RecordState {
    /// What a restart should see: an acquisition is not written, so an acquired record is
    /// what it was before (available, one delivery less).
    pub fn durable(&self) -> RecordState {
        match self {
            RecordState::Acquired { deliveries, .. } => RecordState::Available {
                deliveries: deliveries.saturating_sub(1),
                not_before_ms: 0,
            },
            other => other.clone(),
        }
    }
}

/// Where a copy of dead letters was written: the dead-letter topic's partition, and its log
/// end offset before the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Copy {
    /// The partition of the dead-letter topic.
    pub partition: u32,
    /// Its log end offset before the copy: the copy, if it was written, is at or after it.
    pub from: u64,
}

/// Records waiting for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetters {
    /// First offset.
    pub first: u64,
    /// Last offset (inclusive).
    pub last: u64,
    /// Deliveries they had.
    pub deliveries: u16,
    /// Why.
    pub reason: Arc<str>,
    /// Where a copy was started, if one was.
    pub copy: Option<Copy>,
}

/// A range of records and the state it was set to, for the share store to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// First offset.
    pub first: u64,
    /// Last offset (inclusive).
    pub last: u64,
    /// The state written (never `Acquired`).
    pub state: RecordState,
}

/// Records handed to a member by one acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// First offset.
    pub first: u64,
    /// Last offset (inclusive).
    pub last: u64,
    /// Deliveries so far, this one included.
    pub deliveries: u16,
}

/// How a member acknowledges records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Processed: never delivered again.
    Accept,
    /// Give back for redelivery, after `delay_ms` if set, else after the group's backoff.
    Release {
        /// The delay asked for, in milliseconds.
        delay_ms: Option<u64>,
    },
    /// Cannot be processed: dead-lettered (or archived without a dead-letter topic).
    Reject {
        /// The consumer's error text.
        reason: Arc<str>,
    },
    /// Keep holding: the lock is extended by the group's lock duration from now.
    Renew,
}

/// Why an acknowledgement was refused: it names the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotHeld {
    /// The first record of the range that the member does not hold.
    pub offset: u64,
    /// Why, in words.
    pub reason: String,
}

/// The group settings an operation needs.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How long an acquisition lock lasts, in milliseconds.
    pub lock_ms: u64,
    /// Deliveries after which a released or expired record is dead-lettered.
    pub max_deliveries: u16,
    /// The delays before redelivering a record released without a delay of its own, or whose
    /// lock expired: the n-th entry after the n-th delivery, the last one after later ones.
    /// Empty: at once.
    pub backoff_ms: Vec<u64>,
    /// Whether rejected and exhausted records go to a dead-letter topic (else archived).
    pub dead_letter: bool,
}

impl Rules {
    fn backoff(&self, deliveries: u16) -> u64 {
        let i = usize::from(deliveries.max(1)) - 1;
        self.backoff_ms
            .get(i)
            .or(self.backoff_ms.last())
            .copied()
            .unwrap_or(0)
    }

    /// The state of a record given back after `deliveries` deliveries.
    fn given_back(&self, deliveries: u16, delay_ms: Option<u64>, now_ms: i64) -> RecordState {
        if deliveries >= self.max_deliveries {
            return self.finished(
                deliveries,
                format!("delivered {deliveries} times, the group's max_deliveries").into(),
            );
        }
        let delay = delay_ms.unwrap_or_else(|| self.backoff(deliveries));
        RecordState::Available {
            deliveries,
            not_before_ms: if delay == 0 {
                0
            } else {
                now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX))
            },
        }
    }

    fn finished(&self, deliveries: u16, reason: Arc<str>) -> RecordState {
        if self.dead_letter {
            RecordState::DeadLettering {
                deliveries,
                reason,
                copy: None,
            }
        } else {
            RecordState::Done
        }
    }
}

/// Counts of the records in the window, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Acquired by a member.
    pub acquired: u64,
    /// Waiting to be (re)delivered, at once or after a delay.
    pub available: u64,
    /// Waiting to be copied to the dead-letter topic.
    pub dead_lettering: u64,
}

impl Counts {
    /// Records in flight: every record in the window not done.
    pub fn in_flight(&self) -> u64 {
        self.acquired + self.available + self.dead_lettering
    }

    fn add(&mut self, state: &RecordState, n: u64, sign: bool) {
        let slot = match state {
            RecordState::Acquired { .. } => &mut self.acquired,
            RecordState::Available { .. } => &mut self.available,
            RecordState::DeadLettering { .. } => &mut self.dead_lettering,
            RecordState::Done => return,
        };
        if sign {
            *slot += n;
        } else {
            *slot = slot.saturating_sub(n);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    last: u64,
    state: RecordState,
}

/// One share partition's state.
#[derive(Debug, Clone, Default)]
pub struct SharePartition {
    start: u64,
    next: u64,
    runs: BTreeMap<u64, Run>,
    counts: Counts,
    /// Changes made since the last [`SharePartition::take_changes`].
    changes: Vec<Change>,
    start_changed: bool,
}

impl SharePartition {
    /// A partition whose window starts (empty) at `start`; the start is among the first
    /// changes taken, so that the partition's first record says where it starts.
    pub fn new(start: u64) -> Self {
        SharePartition {
            start,
            next: start,
            start_changed: true,
            ..SharePartition::default()
        }
    }

    /// The share-partition start offset: every record below it is done.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The first offset never acquired.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The records in the window, by state.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Applies a written change while loading: sets `[first, last]` to `state`, growing the
    /// window over it. Offsets below the start are ignored.
    pub fn load(&mut self, change: &Change) {
        let first = change.first.max(self.start);
        if first > change.last {
            return;
        }
        if self.next <= change.last {
            // Records between the old end and this change were acquired and never written:
            // available again, as they were before.
            if self.next < first {
                self.set(
                    self.next,
                    first - 1,
                    RecordState::Available {
                        deliveries: 0,
                        not_before_ms: 0,
                    },
                );
            }
            self.next = change.last + 1;
        }
        self.set(first, change.last, change.state.clone());
        self.advance();
        self.changes.clear();
        self.start_changed = false;
    }

    /// Moves the start to `start` while loading (a written start), dropping the runs below.
    pub fn load_start(&mut self, start: u64) {
        self.move_start(start);
        self.changes.clear();
        self.start_changed = false;
    }

    /// Skips records the log no longer holds (retention deleted them before they were done).
    pub fn skip_to(&mut self, log_start: u64) {
        if log_start > self.start {
            self.move_start(log_start);
        }
    }

    /// Every run of the window, done ones included (a gap would read as never delivered),
    /// in the state a restart should see, for a snapshot.
    pub fn durable_runs(&self) -> Vec<Change> {
        self.runs
            .iter()
            .map(|(first, r)| Change {
                first: *first,
                last: r.last,
                state: r.state.durable(),
            })
            .collect()
    }

    /// The changes to write since the last call, and the new start if it moved.
    pub fn take_changes(&mut self) -> (Vec<Change>, Option<u64>) {
        let start = std::mem::take(&mut self.start_changed).then_some(self.start);
        (std::mem::take(&mut self.changes), start)
    }

    /// Turns locks that expired by `now_ms` into redeliveries (after the backoff) or dead
    /// letters. Returns how many records' locks expired.
    pub fn expire(&mut self, now_ms: i64, rules: &Rules) -> u64 {
        let expired: Vec<(u64, u64, u16)> = self
            .runs
            .iter()
            .filter_map(|(first, r)| match &r.state {
                RecordState::Acquired {
                    until_ms,
                    deliveries,
                    ..
                } if *until_ms <= now_ms => Some((*first, r.last, *deliveries)),
                _ => None,
            })
            .collect();
        let mut count = 0;
        for (first, last, deliveries) in expired {
            count += last - first + 1;
            let state = rules.given_back(deliveries, None, now_ms);
            self.set_written(first, last, state);
        }
        self.advance();
        count
    }

    /// The earliest time something changes by itself: a lock expiring or a delayed record
    /// becoming available. `None` when nothing waits on time.
    pub fn next_deadline(&self) -> Option<i64> {
        self.runs
            .values()
            .filter_map(|r| match &r.state {
                RecordState::Acquired { until_ms, .. } => Some(*until_ms),
                RecordState::Available { not_before_ms, .. } if *not_before_ms > 0 => {
                    Some(*not_before_ms)
                }
                _ => None,
            })
            .min()
    }

    /// True if records are available now, or fresh records below `log_end` may be taken.
    pub fn has_ready(&self, now_ms: i64, log_end: u64, max_in_flight: u64) -> bool {
        self.ready_ranges(now_ms).next().is_some()
            || (self.next < log_end && self.counts.in_flight() < max_in_flight)
    }

    /// The ranges of records available now, in offset order.
    pub fn ready_ranges(&self, now_ms: i64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs
            .iter()
            .filter_map(move |(first, r)| match &r.state {
                RecordState::Available { not_before_ms, .. } if *not_before_ms <= now_ms => {
                    Some((*first, r.last))
                }
                _ => None,
            })
    }

    /// How many fresh records may be acquired now.
    pub fn fresh_room(&self, max_in_flight: u64) -> u64 {
        max_in_flight.saturating_sub(self.counts.in_flight())
    }

    /// Acquires for `member`, until `until_ms`, at most `max` records of `[first, last]` that
    /// are available now or fresh (at or after the next offset; `last` below the log end).
    /// Fresh records are taken only while the window has room. Returns the ranges acquired.
    pub fn acquire(
        &mut self,
        member: &Arc<str>,
        first: u64,
        last: u64,
        max: u64,
        now_ms: i64,
        until_ms: i64,
        max_in_flight: u64,
    ) -> Vec<Acquired> {
        let mut out = Vec::new();
        let mut left = max;
        let first = first.max(self.start);
        // Available records in the window.
        let ready: Vec<(u64, u64, u16)> = self
            .runs
            .range(..=last)
            .filter(|(f, r)| r.last >= first && **f <= last)
            .filter_map(|(f, r)| match &r.state {
                RecordState::Available {
                    deliveries,
                    not_before_ms,
                } if *not_before_ms <= now_ms => {
                    Some(((*f).max(first), r.last.min(last), *deliveries))
                }
                _ => None,
            })
            .collect();
        for (a, b, deliveries) in ready {
            if left == 0 {
                break;
            }
            let b = b.min(a.saturating_add(left - 1));
            let deliveries = deliveries.saturating_add(1);
            self.set(
                a,
                b,
                RecordState::Acquired {
                    member: member.clone(),
                    until_ms,
                    deliveries,
                },
            );
            out.push(Acquired {
                first: a,
                last: b,
                deliveries,
            });
            left -= b - a + 1;
        }
        // Fresh records.
        let room = self.fresh_room(max_in_flight).min(left);
        if room > 0 && self.next <= last && self.next >= first {
            let a = self.next;
            let b = last.min(a + room - 1);
            self.next = b + 1;
            self.set(
                a,
                b,
                RecordState::Acquired {
                    member: member.clone(),
                    until_ms,
                    deliveries: 1,
                },
            );
            out.push(Acquired {
                first: a,
                last: b,
                deliveries: 1,
            });
        }
        out
    }

    /// Acknowledges `[first, last]` for `member`: every record of it must be acquired by
    /// `member` with its lock not expired at `now_ms`, else nothing changes.
    ///
    /// # Errors
    /// [`NotHeld`] naming the first record the member does not hold, and why.
    pub fn acknowledge(
        &mut self,
        member: &str,
        first: u64,
        last: u64,
        ack: &Ack,
        now_ms: i64,
        rules: &Rules,
    ) -> Result<(), NotHeld> {
        let pieces = self.held(member, first, last, now_ms)?;
        for (a, b, deliveries) in pieces {
            match ack {
                Ack::Accept => self.set_written(a, b, RecordState::Done),
                Ack::Release { delay_ms } => {
                    let state = rules.given_back(deliveries, *delay_ms, now_ms);
                    self.set_written(a, b, state);
                }
                Ack::Reject { reason } => {
                    let state = rules.finished(deliveries, reason.clone());
                    self.set_written(a, b, state);
                }
                Ack::Renew => {
                    let until_ms =
                        now_ms.saturating_add(i64::try_from(rules.lock_ms).unwrap_or(i64::MAX));
                    self.set(
                        a,
                        b,
                        RecordState::Acquired {
                            member: member.into(),
                            until_ms,
                            deliveries,
                        },
                    );
                }
            }
        }
        self.advance();
        Ok(())
    }

    /// Gives back every record `member` holds, as a lock expiry would (after the backoff, or
    /// dead-lettered past the delivery limit): the member left. Returns how many.
    pub fn release_member(&mut self, member: &str, now_ms: i64, rules: &Rules) -> u64 {
        let held: Vec<(u64, u64, u16)> = self
            .runs
            .iter()
            .filter_map(|(first, r)| match &r.state {
                RecordState::Acquired {
                    member: m,
                    deliveries,
                    ..
                } if &**m == member => Some((*first, r.last, *deliveries)),
                _ => None,
            })
            .collect();
        let mut count = 0;
        for (first, last, deliveries) in held {
            count += last - first + 1;
            let state = rules.given_back(deliveries, None, now_ms);
            self.set_written(first, last, state);
        }
        self.advance();
        count
    }

    /// The ranges waiting to be dead-lettered, in offset order, at most about `max` records
    /// (whole runs).
    pub fn dead_lettering(&self, max: u64) -> Vec<DeadLetters> {
        let mut out = Vec::new();
        let mut count = 0;
        for (first, r) in &self.runs {
            if count >= max {
                break;
            }
            if let RecordState::DeadLettering {
                deliveries,
                reason,
                copy,
            } = &r.state
            {
                count += r.last - first + 1;
                out.push(DeadLetters {
                    first: *first,
                    last: r.last,
                    deliveries: *deliveries,
                    reason: reason.clone(),
                    copy: *copy,
                });
            }
        }
        out
    }

    /// Notes that a copy of `[first, last]` to the dead-letter topic starts at `copy`: only
    /// the records of it still waiting for that.
    pub fn copying(&mut self, first: u64, last: u64, copy: Copy) {
        for (a, b, state) in self.overlapping(first, last) {
            if let RecordState::DeadLettering {
                deliveries, reason, ..
            } = state
            {
                self.set_written(
                    a,
                    b,
                    RecordState::DeadLettering {
                        deliveries,
                        reason,
                        copy: Some(copy),
                    },
                );
            }
        }
    }

    /// Marks `[first, last]` done: copied to the dead-letter topic, or archived. Only the
    /// records of it still waiting for that. Returns how many.
    pub fn dead_lettered(&mut self, first: u64, last: u64) -> u64 {
        let pieces: Vec<(u64, u64)> = self
            .overlapping(first, last)
            .into_iter()
            .filter(|(_, _, s)| matches!(s, RecordState::DeadLettering { .. }))
            .map(|(a, b, _)| (a, b))
            .collect();
        let mut count = 0;
        for (a, b) in pieces {
            count += b - a + 1;
            self.set_written(a, b, RecordState::Done);
        }
        self.advance();
        count
    }

    /// The pieces of `[first, last]` the member holds, with their deliveries, or why not.
    fn held(
        &self,
        member: &str,
        first: u64,
        last: u64,
        now_ms: i64,
    ) -> Result<Vec<(u64, u64, u16)>, NotHeld> {
        if first > last {
            return Err(NotHeld {
                offset: first,
                reason: format!("the range ends at {last}, before it starts"),
            });
        }
        if first < self.start {
            return Err(NotHeld {
                offset: first,
                reason: "it is already acknowledged (below the share-partition start offset)"
                    .into(),
            });
        }
        if last >= self.next {
            return Err(NotHeld {
                offset: first.max(self.next),
                reason: "it was never acquired".into(),
            });
        }
        let mut out = Vec::new();
        for (a, b, state) in self.overlapping(first, last) {
            let why = match &state {
                RecordState::Acquired {
                    member: m,
                    until_ms,
                    deliveries,
                } if &**m == member => {
                    if *until_ms <= now_ms {
                        Some(format!("its acquisition lock expired at {until_ms} ms"))
                    } else {
                        out.push((a, b, *deliveries));
                        None
                    }
                }
                RecordState::Acquired { .. } => Some("another member holds it".into()),
                RecordState::Available { .. } => {
                    Some("it is not acquired (released, or its lock expired)".into())
                }
                RecordState::DeadLettering { .. } => {
                    Some("it was rejected and is being dead-lettered".into())
                }
                RecordState::Done => Some("it is already acknowledged".into()),
            };
            if let Some(reason) = why {
                return Err(NotHeld { offset: a, reason });
            }
        }
        Ok(out)
    }

    /// The pieces of the runs overlapping `[first, last]`, clipped to it, in order.
    fn overlapping(&self, first: u64, last: u64) -> Vec<(u64, u64, RecordState)> {
        let mut out: Vec<_> = self
            .runs
            .range(..=last)
            .rev()
            .take_while(|(_, r)| r.last >= first)
            .map(|(f, r)| ((*f).max(first), r.last.min(last), r.state.clone()))
            .collect();
        out.reverse();
        out
    }

    /// Sets a range to a state that must be written.
    fn set_written(&mut self, first: u64, last: u64, state: RecordState) {
        self.changes.push(Change {
            first,
            last,
            state: state.durable(),
        });
        self.set(first, last, state);
    }

    /// Sets `[first, last]` (inside `[start, next)`) to `state`, splitting and merging runs.
    fn set(&mut self, first: u64, last: u64, state: RecordState) {
        let overlapped: Vec<u64> = self
            .runs
            .range(..=last)
            .rev()
            .take_while(|(_, r)| r.last >= first)
            .map(|(f, _)| *f)
            .collect();
        for f in overlapped {
            let Some(run) = self.runs.remove(&f) else {
                continue;
            };
            let (a, b) = (f.max(first), run.last.min(last));
            self.counts.add(&run.state, b - a + 1, false);
            if f < first {
                self.runs.insert(
                    f,
                    Run {
                        last: first - 1,
                        state: run.state.clone(),
                    },
                );
            }
            if run.last > last {
                self.runs.insert(
                    last + 1,
                    Run {
                        last: run.last,
                        state: run.state,
                    },
                );
            }
        }
        self.counts.add(&state, last - first + 1, true);
        let mut first = first;
        let mut last = last;
        // Merge with the run before and the run after when they are in the same state.
        if let Some((f, prev)) = first
            .checked_sub(1)
            .and_then(|p| self.runs.range(..=p).next_back())
            .map(|(f, r)| (*f, r.clone()))
            && prev.last + 1 == first
            && prev.state == state
        {
            self.runs.remove(&f);
            first = f;
        }
        if let Some(after) = self.runs.get(&(last + 1)).cloned()
            && after.state == state
        {
            self.runs.remove(&(last + 1));
            last = after.last;
        }
        self.runs.insert(first, Run { last, state });
    }

    /// Moves the start past the done runs at the front of the window.
    fn advance(&mut self) {
        while let Some(entry) = self.runs.first_entry() {
            if entry.get().state != RecordState::Done {
                break;
            }
            let run = entry.remove();
            self.start = run.last + 1;
            self.start_changed = true;
        }
        if self.runs.is_empty() && self.start < self.next {
            self.start = self.next;
            self.start_changed = true;
        }
    }

    fn move_start(&mut self, start: u64) {
        let below: Vec<u64> = self.runs.range(..start).map(|(f, _)| *f).collect();
        for f in below {
            if let Some(run) = self.runs.remove(&f) {
                let b = run.last.min(start.saturating_sub(1));
                self.counts.add(&run.state, b - f + 1, false);
                if run.last >= start {
                    self.runs.insert(start, run);
                }
            }
        }
        // The counts of a run kept from `start` were subtracted only for its part below.
        self.start = start;
        self.next = self.next.max(start);
        self.start_changed = true;
        self.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            lock_ms: 1000,
            max_deliveries: 3,
            backoff_ms: vec![],
            dead_letter: false,
        }
    }

    fn m(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn fresh_records_are_acquired_in_order_and_accepted_ones_move_the_start() {
        let mut p = SharePartition::new(0);
        let a = p.acquire(&m("a"), 0, 9, 5, 0, 1000, 100);
        assert_eq!(
            a,
            vec![Acquired {
                first: 0,
                last: 4,
                deliveries: 1
            }]
        );
        let b = p.acquire(&m("b"), 0, 9, 100, 0, 1000, 100);
        assert_eq!(
            b,
            vec![Acquired {
                first: 5,
                last: 9,
                deliveries: 1
            }]
        );
        assert_eq!(p.counts().acquired, 10);
        p.acknowledge("b", 5, 9, &Ack::Accept, 1, &rules()).unwrap();
        assert_eq!(p.start(), 0, "records 0-4 are still in flight");
        p.acknowledge("a", 0, 4, &Ack::Accept, 1, &rules()).unwrap();
        assert_eq!(p.start(), 10);
        assert_eq!(p.counts().in_flight(), 0);
        let (changes, start) = p.take_changes();
        assert_eq!(start, Some(10));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn acknowledging_what_the_member_does_not_hold_names_the_record_and_changes_nothing() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 9, 10, 0, 1000, 100);
        let before = p.clone();
        let err = p
            .acknowledge("b", 3, 4, &Ack::Accept, 1, &rules())
            .unwrap_err();
        assert_eq!(err.offset, 3);
        assert!(err.reason.contains("another member"), "{err:?}");
        let err = p
            .acknowledge("a", 8, 12, &Ack::Accept, 1, &rules())
            .unwrap_err();
        assert_eq!(err.offset, 10);
        assert!(err.reason.contains("never acquired"), "{err:?}");
        let err = p
            .acknowledge("a", 0, 1, &Ack::Accept, 1000, &rules())
            .unwrap_err();
        assert!(err.reason.contains("expired"), "{err:?}");
        assert_eq!(p.counts(), before.counts());
        p.acknowledge("a", 0, 0, &Ack::Accept, 1, &rules()).unwrap();
        let err = p
            .acknowledge("a", 0, 0, &Ack::Accept, 1, &rules())
            .unwrap_err();
        assert!(err.reason.contains("already acknowledged"), "{err:?}");
    }

    #[test]
    fn a_delayed_record_holds_one_unit_of_room_and_not_the_records_behind_it() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 99, 100, 0, 1000, 10);
        assert_eq!(p.next(), 10, "capacity 10");
        p.acknowledge(
            "a",
            0,
            0,
            &Ack::Release {
                delay_ms: Some(60_000),
            },
            1,
            &rules(),
        )
        .unwrap();
        p.acknowledge("a", 1, 9, &Ack::Accept, 1, &rules()).unwrap();
        assert_eq!(p.start(), 0);
        assert_eq!(p.counts().in_flight(), 1);
        let got = p.acquire(&m("b"), 0, 99, 100, 2, 1000, 10);
        assert_eq!(
            got,
            vec![Acquired {
                first: 10,
                last: 18,
                deliveries: 1
            }]
        );
        // Before its time the delayed record is not handed out; after it, it is.
        assert!(p.acquire(&m("b"), 0, 0, 1, 59_000, 1000, 10).is_empty());
        let got = p.acquire(&m("b"), 0, 0, 1, 60_001, 61_000, 10);
        assert_eq!(
            got,
            vec![Acquired {
                first: 0,
                last: 0,
                deliveries: 2
            }]
        );
    }

    #[test]
    fn expired_locks_follow_the_backoff_and_the_delivery_limit_finishes_a_record() {
        let r = Rules {
            backoff_ms: vec![100, 1000],
            dead_letter: true,
            ..rules()
        };
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 0, 1, 0, 10, 10);
        assert_eq!(p.expire(10, &r), 1);
        assert_eq!(p.next_deadline(), Some(110));
        assert!(p.acquire(&m("a"), 0, 0, 1, 109, 200, 10).is_empty());
        assert_eq!(p.acquire(&m("a"), 0, 0, 1, 110, 200, 10)[0].deliveries, 2);
        p.expire(200, &r);
        assert_eq!(
            p.next_deadline(),
            Some(1200),
            "the second entry of the schedule"
        );
        assert_eq!(p.acquire(&m("a"), 0, 0, 1, 1200, 1300, 10)[0].deliveries, 3);
        p.expire(1300, &r);
        let dl = p.dead_lettering(100);
        assert_eq!(dl.len(), 1);
        assert!(dl[0].reason.contains("3 times"), "{dl:?}");
        let copy = Copy {
            partition: 0,
            from: 7,
        };
        p.copying(0, 0, copy);
        assert_eq!(p.dead_lettering(100)[0].copy, Some(copy));
        assert_eq!(p.dead_lettered(0, 0), 1);
        assert_eq!(p.start(), 1);
    }

    #[test]
    fn loading_written_changes_rebuilds_the_window() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 19, 20, 0, 1000, 100);
        p.acknowledge("a", 5, 9, &Ack::Accept, 1, &rules()).unwrap();
        p.acknowledge("a", 12, 12, &Ack::Release { delay_ms: None }, 1, &rules())
            .unwrap();
        let (changes, start) = p.take_changes();
        assert_eq!(
            start,
            Some(0),
            "a new partition's first changes say where it starts"
        );
        let mut q = SharePartition::new(0);
        for c in &changes {
            q.load(c);
        }
        // 0-4 were acquired and never written: available again, 13 and after are fresh.
        assert_eq!(q.start(), 0);
        assert_eq!(q.next(), 13);
        let ready: Vec<_> = q.ready_ranges(0).collect();
        assert_eq!(
            ready,
            vec![(0, 4), (10, 11), (12, 12)],
            "12 was delivered once"
        );
        let got = q.acquire(&m("b"), 12, 12, 1, 0, 1000, 100);
        assert_eq!(got[0].deliveries, 2, "the written delivery count");
    }

    #[test]
    fn a_snapshot_of_the_window_loads_as_the_same_window() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 9, 10, 0, 1000, 100);
        p.acknowledge("a", 0, 0, &Ack::Release { delay_ms: Some(50) }, 1, &rules())
            .unwrap();
        p.acknowledge("a", 1, 4, &Ack::Accept, 1, &rules()).unwrap();
        let mut q = SharePartition::new(p.start());
        for c in p.durable_runs() {
            q.load(&c);
        }
        assert_eq!((q.start(), q.next()), (p.start(), p.next()));
        // 5-9 were held: available again, one delivery less; 1-4 stay done.
        let ready: Vec<_> = q.ready_ranges(100).collect();
        assert_eq!(ready, vec![(0, 0), (5, 9)]);
        assert_eq!(q.counts().in_flight(), 6);
    }

    #[test]
    fn runs_merge_so_the_window_stays_small() {
        let mut p = SharePartition::new(0);
        for i in 0..1000 {
            p.acquire(&m("a"), i, i, 1, 0, 1000, 10_000);
        }
        p.acknowledge(
            "a",
            0,
            0,
            &Ack::Release {
                delay_ms: Some(1000),
            },
            1,
            &rules(),
        )
        .unwrap();
        for i in 1..1000 {
            p.acknowledge("a", i, i, &Ack::Accept, 1, &rules()).unwrap();
        }
        assert_eq!(p.runs.len(), 2);
        assert_eq!(p.counts().in_flight(), 1);
    }

    #[test]
    fn release_member_gives_back_what_it_held() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 4, 5, 0, 1000, 100);
        p.acquire(&m("b"), 0, 9, 5, 0, 1000, 100);
        assert_eq!(p.release_member("a", 1, &rules()), 5);
        let got = p.acquire(&m("c"), 0, 9, 10, 1, 1000, 100);
        assert_eq!(
            got,
            vec![Acquired {
                first: 0,
                last: 4,
                deliveries: 2
            }]
        );
    }

    #[test]
    fn records_deleted_by_retention_are_skipped() {
        let mut p = SharePartition::new(0);
        p.acquire(&m("a"), 0, 9, 10, 0, 1000, 100);
        p.skip_to(5);
        assert_eq!(p.start(), 5);
        assert_eq!(p.counts().acquired, 5);
        p.skip_to(20);
        assert_eq!((p.start(), p.next()), (20, 20));
        assert_eq!(p.counts().in_flight(), 0);
    }
}
