//! The share consumer's acknowledgements: what the application said of each record
//! ([`AckKind`]), queued per partition until the next `ShareFetch` or `ShareAcknowledge`
//! carries them, and coalesced then into ranges of consecutive offsets of the same kind (one
//! `Acknowledgement` for a whole poll of accepted records); the records a poll returned that
//! the application has not acknowledged yet (for [`AckMode::Auto`](super::AckMode::Auto));
//! and [`AckFailure`], an acknowledgement the broker refused.
//!
//! Queuing costs no allocation per record beyond the growth of one vector per partition: the
//! entries are sorted and coalesced only when they are sent.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use runnel_proto::pb;

use crate::consumer::TopicPartition;
use crate::error::ClientError;
use crate::record::ConsumerRecord;

/// What to do with an acquired record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// Processed: never delivered again.
    Accept,
    /// Give it back for another delivery: after `delay` if set, else after the group's
    /// backoff.
    Release {
        /// The least time before it is delivered again (at most the broker's
        /// `shares.max_delay_ms`).
        delay: Option<Duration>,
    },
    /// It cannot be processed: the broker copies it to the group's dead-letter topic with
    /// `error` in its `runnel.dlq.error` header (or archives it without one); never delivered
    /// again.
    Reject {
        /// Why (the broker keeps at most 4,096 bytes of it).
        error: String,
    },
    /// Still being worked on: the lock is extended by the group's lock duration from now.
    Renew,
}

impl AckKind {
    /// The acknowledgement of `first..=last` of `tp` on the wire.
    fn to_pb(&self, tp: &TopicPartition, first: u64, last: u64) -> pb::Acknowledgement {
        let (ty, delay_ms, error) = match self {
            AckKind::Accept => (pb::AckType::Accept, None, String::new()),
            AckKind::Release { delay } => (
                pb::AckType::Release,
                delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                String::new(),
            ),
            AckKind::Reject { error } => (pb::AckType::Reject, None, error.clone()),
            AckKind::Renew => (pb::AckType::Renew, None, String::new()),
        };
        pb::Acknowledgement {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            first_offset: first,
            last_offset: last,
            r#type: ty.into(),
            delay_ms,
            error,
        }
    }
}

impl fmt::Display for AckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AckKind::Accept => "accept",
            AckKind::Release { .. } => "release",
            AckKind::Reject { .. } => "reject",
            AckKind::Renew => "renew",
        })
    }
}

/// An acknowledgement the broker refused; nothing of it was applied.
#[derive(Debug, Clone)]
pub struct AckFailure {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first offset of the records acknowledged.
    pub first_offset: u64,
    /// The last offset (inclusive); equal to `first_offset` for one record, which the client
    /// narrows a refused range down to when the broker says a record is not held
    /// (`INVALID_RECORD_STATE`).
    pub last_offset: u64,
    /// What the acknowledgement asked.
    pub kind: AckKind,
    /// Why it was refused: a [`ClientError::Broker`], with
    /// [`ErrorCode::InvalidRecordState`](crate::ErrorCode::InvalidRecordState) for a record
    /// the member does not hold (never acquired, already acknowledged, its lock expired, or
    /// another member's).
    pub error: ClientError,
}

impl AckFailure {
    /// Whether `record` is one of the records this acknowledgement named.
    pub fn covers(&self, record: &ConsumerRecord) -> bool {
        *record.topic == *self.topic
            && record.partition == self.partition
            && (self.first_offset..=self.last_offset).contains(&record.offset)
    }
}

impl fmt::Display for AckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {}/{} offset",
            self.kind, self.topic, self.partition
        )?;
        if self.first_offset == self.last_offset {
            write!(f, " {}", self.first_offset)?;
        } else {
            write!(f, "s {} to {}", self.first_offset, self.last_offset)?;
        }
        write!(f, ": {}", self.error)
    }
}

/// One acknowledgement as sent: consecutive records of one partition, one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckRange {
    pub(crate) tp: TopicPartition,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) kind: AckKind,
}

impl AckRange {
    /// The acknowledgement on the wire.
    pub(crate) fn to_pb(&self) -> pb::Acknowledgement {
        self.kind.to_pb(&self.tp, self.first, self.last)
    }

    /// The range one record at a time.
    pub(crate) fn singles(&self) -> impl Iterator<Item = AckRange> + '_ {
        (self.first..=self.last).map(|offset| AckRange {
            tp: self.tp.clone(),
            first: offset,
            last: offset,
            kind: self.kind.clone(),
        })
    }

    /// The failure of this acknowledgement, refused with `error`.
    pub(crate) fn failed(&self, error: ClientError) -> AckFailure {
        AckFailure {
            topic: self.tp.topic.to_string(),
            partition: self.tp.partition,
            first_offset: self.first,
            last_offset: self.last,
            kind: self.kind.clone(),
            error,
        }
    }
}

/// Acknowledgements queued since the last request, per partition, in the order given.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    by_partition: BTreeMap<TopicPartition, Vec<(u64, AckKind)>>,
}

impl PendingAcks {
    /// Queues `kind` for the record at `offset` of `tp`; a later one for the same record
    /// replaces it.
    pub(crate) fn push(&mut self, tp: &TopicPartition, offset: u64, kind: AckKind) {
        match self.by_partition.get_mut(tp) {
            Some(entries) => entries.push((offset, kind)),
            None => {
                self.by_partition.insert(tp.clone(), vec![(offset, kind)]);
            }
        }
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_partition.is_empty()
    }

    /// Everything queued, coalesced into ranges (by partition, then offset); the queue is
    /// left empty.
    pub(crate) fn take(&mut self) -> Vec<AckRange> {
        let mut out = Vec::new();
        for (tp, entries) in std::mem::take(&mut self.by_partition) {
            for (first, last, kind) in coalesce(entries) {
                out.push(AckRange {
                    tp: tp.clone(),
                    first,
                    last,
                    kind,
                });
            }
        }
        out
    }
}

/// Acknowledgements of one partition as ranges: sorted by offset, the last one given for an
/// offset kept, and consecutive offsets of equal kinds merged into `(first, last, kind)`.
pub(crate) fn coalesce(mut entries: Vec<(u64, AckKind)>) -> Vec<(u64, u64, AckKind)> {
    // A stable sort keeps the order of the acknowledgements of one offset; of those, the
    // last replaces the earlier ones (`dedup_by` drops `next`, so it is swapped in first).
    entries.sort_by_key(|(offset, _)| *offset);
    entries.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            std::mem::swap(next, kept);
        }
        same
    });
    let mut out: Vec<(u64, u64, AckKind)> = Vec::new();
    for (offset, kind) in entries {
        match out.last_mut() {
            Some((_, last, k)) if *last + 1 == offset && *k == kind => *last = offset,
            _ => out.push((offset, offset, kind)),
        }
    }
    out
}

/// The records of the last poll, per partition in offset order, each marked once the
/// application acknowledged it: under [`AckMode::Auto`](super::AckMode::Auto) the others
/// are accepted by the next poll, commit or close.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    by_partition: BTreeMap<TopicPartition, Vec<(u64, bool)>>,
}

impl Delivered {
    /// Starts tracking `offset` of `tp` as not acknowledged.
    pub(crate) fn add(&mut self, tp: &TopicPartition, offset: u64) {
        match self.by_partition.get_mut(tp) {
            Some(entries) => entries.push((offset, false)),
            None => {
                self.by_partition.insert(tp.clone(), vec![(offset, false)]);
            }
        }
    }

    /// Sorts what was added, so that [`Delivered::settle`] can search it.
    pub(crate) fn sort(&mut self) {
        for entries in self.by_partition.values_mut() {
            entries.sort_unstable_by_key(|(offset, _)| *offset);
            entries.dedup_by_key(|(offset, _)| *offset);
        }
    }

    /// Marks the record acknowledged by the application, if it is one of the last poll.
    pub(crate) fn settle(&mut self, tp: &TopicPartition, offset: u64) {
        if let Some(entries) = self.by_partition.get_mut(tp)
            && let Ok(i) = entries.binary_search_by_key(&offset, |(o, _)| *o)
        {
            entries[i].1 = true;
        }
    }

    /// Queues an accept for every record not acknowledged, and forgets them all.
    pub(crate) fn accept_unsettled(&mut self, pending: &mut PendingAcks) {
        for (tp, entries) in std::mem::take(&mut self.by_partition) {
            for (offset, settled) in entries {
                if !settled {
                    pending.push(&tp, offset, AckKind::Accept);
                }
            }
        }
    }

    /// Forgets every record.
    pub(crate) fn clear(&mut self) {
        self.by_partition.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(why: &str) -> AckKind {
        AckKind::Reject { error: why.into() }
    }

    #[test]
    fn consecutive_offsets_of_one_kind_make_one_range() {
        let entries = (0..500).map(|o| (o, AckKind::Accept)).collect();
        assert_eq!(coalesce(entries), vec![(0, 499, AckKind::Accept)]);
    }

    #[test]
    fn kinds_gaps_and_order_split_ranges() {
        let release = AckKind::Release { delay: None };
        let later = AckKind::Release {
            delay: Some(Duration::from_secs(1)),
        };
        let entries = vec![
            (7, AckKind::Accept),
            (3, AckKind::Accept),
            (4, AckKind::Accept),
            (5, release.clone()),
            (6, later.clone()),
            (8, AckKind::Accept),
            (10, AckKind::Accept),
            (11, reject("bad")),
            (12, reject("bad")),
            (13, reject("worse")),
        ];
        assert_eq!(
            coalesce(entries),
            vec![
                (3, 4, AckKind::Accept),
                (5, 5, release),
                (6, 6, later),
                (7, 8, AckKind::Accept),
                (10, 10, AckKind::Accept),
                (11, 12, reject("bad")),
                (13, 13, reject("worse")),
            ]
        );
    }

    #[test]
    fn the_last_acknowledgement_of_a_record_wins_and_may_join_ranges() {
        let entries = vec![
            (1, AckKind::Accept),
            (2, reject("x")),
            (3, AckKind::Accept),
            (2, AckKind::Accept),
        ];
        assert_eq!(coalesce(entries), vec![(1, 3, AckKind::Accept)]);
        // A change of mind about the end of a range splits it.
        let entries = vec![
            (1, AckKind::Accept),
            (2, AckKind::Accept),
            (3, AckKind::Accept),
            (3, reject("x")),
        ];
        assert_eq!(
            coalesce(entries),
            vec![(1, 2, AckKind::Accept), (3, 3, reject("x"))]
        );
        assert!(coalesce(Vec::new()).is_empty());
    }

    #[test]
    fn pending_acks_are_taken_per_partition_and_emptied() {
        let mut pending = PendingAcks::default();
        let a0 = TopicPartition::new("a", 0);
        let a1 = TopicPartition::new("a", 1);
        for o in [2, 0, 1] {
            pending.push(&a1, o, AckKind::Accept);
        }
        pending.push(&a0, 9, AckKind::Renew);
        let taken = pending.take();
        assert!(pending.is_empty());
        assert_eq!(taken.len(), 2);
        assert_eq!(
            (taken[0].tp.partition, taken[0].first, taken[0].last),
            (0, 9, 9)
        );
        assert_eq!(
            (taken[1].tp.partition, taken[1].first, taken[1].last),
            (1, 0, 2)
        );
        let wire = taken[1].to_pb();
        assert_eq!(wire.r#type, pb::AckType::Accept as i32);
        assert_eq!((wire.first_offset, wire.last_offset), (0, 2));
        let singles: Vec<_> = taken[1].singles().map(|r| (r.first, r.last)).collect();
        assert_eq!(singles, vec![(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn releases_and_rejects_carry_their_delay_and_reason() {
        let tp = TopicPartition::new("t", 3);
        let wire = AckKind::Release {
            delay: Some(Duration::from_millis(1500)),
        }
        .to_pb(&tp, 4, 6);
        assert_eq!(wire.delay_ms, Some(1500));
        assert_eq!(wire.r#type, pb::AckType::Release as i32);
        let wire = reject("no such customer").to_pb(&tp, 1, 1);
        assert_eq!(wire.error, "no such customer");
        assert_eq!(wire.delay_ms, None);
    }

    #[test]
    fn unsettled_deliveries_are_accepted() {
        let tp = TopicPartition::new("t", 0);
        let mut delivered = Delivered::default();
        for o in [5, 3, 4, 6] {
            delivered.add(&tp, o);
        }
        delivered.sort();
        delivered.settle(&tp, 4);
        delivered.settle(&tp, 99);
        let mut pending = PendingAcks::default();
        delivered.accept_unsettled(&mut pending);
        let ranges: Vec<_> = pending
            .take()
            .into_iter()
            .map(|r| (r.first, r.last))
            .collect();
        assert_eq!(ranges, vec![(3, 3), (5, 6)]);
        delivered.accept_unsettled(&mut pending);
        assert!(pending.is_empty(), "each record is accepted once");
    }

    #[test]
    fn failures_name_their_records() {
        let range = AckRange {
            tp: TopicPartition::new("jobs", 1),
            first: 10,
            last: 12,
            kind: AckKind::Accept,
        };
        let f = range.failed(ClientError::Protocol("x".into()));
        let record = |partition, offset| ConsumerRecord {
            topic: "jobs".into(),
            partition,
            offset,
            timestamp: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        assert!(f.covers(&record(1, 11)));
        assert!(!f.covers(&record(1, 13)));
        assert!(!f.covers(&record(0, 11)));
        assert_eq!(
            f.to_string(),
            "accept of jobs/1 offsets 10 to 12: protocol violation: x"
        );
    }
}
