//! Choosing a record's partition.
//!
//! A record with an explicit partition goes there. Otherwise the producer's [`Partitioner`]
//! decides; keyed records are hashed with the broker's documented function,
//! [`runnel_proto::partition_for_key`] (Kafka's murmur2), so a key lands on the same
//! partition whether the client or the broker partitions it, and as it did in Kafka for the
//! same partition count.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;

/// A user-supplied partition function: key (if any) and partition count in, partition out
/// (taken modulo the count).
pub type PartitionFn = Arc<dyn Fn(Option<&Bytes>, NonZeroU32) -> u32 + Send + Sync>;

/// How the producer picks the partition of a record without an explicit one.
#[derive(Clone, Default)]
pub enum Partitioner {
    /// Keyed records by key hash; keyless records stick to one partition until its batch is
    /// closed, then to another chosen at random (Kafka's sticky partitioner: full batches and
    /// an even spread over time).
    #[default]
    Default,
    /// Every record to the next partition in turn, keys ignored.
    RoundRobin,
    /// Keyed records by key hash; keyless records to the next partition in turn.
    KeyHashRoundRobin,
    /// A function of the key and the partition count.
    Custom(PartitionFn),
}

impl fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("Default"),
            Self::RoundRobin => f.write_str("RoundRobin"),
            Self::KeyHashRoundRobin => f.write_str("KeyHashRoundRobin"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The per-topic state partitioning needs.
#[derive(Debug, Default)]
pub(crate) struct PartitionerState {
    sticky: Option<u32>,
    /// The sticky partition whose batch was closed last: the next choice avoids it.
    previous: Option<u32>,
    next: u32,
}

impl PartitionerState {
    /// Called when the batch of `partition` is closed: a sticky choice moves on.
    pub(crate) fn batch_closed(&mut self, partition: u32) {
        if self.sticky == Some(partition) {
            self.sticky = None;
            self.previous = Some(partition);
        }
    }

    fn next_round_robin(&mut self, count: NonZeroU32) -> u32 {
        let p = self.next % count;
        self.next = self.next.wrapping_add(1);
        p
    }

    fn sticky(&mut self, count: NonZeroU32) -> u32 {
        match self.sticky {
            Some(p) if p < count.get() => p,
            _ => {
                let previous = self.previous;
                let n = count.get();
                let mut p = fastrand::u32(..n);
                // Move on to a different partition when there is one.
                if n > 1 && Some(p) == previous {
                    p = (p + 1 + fastrand::u32(..n - 1)) % n;
                }
                self.sticky = Some(p);
                p
            }
        }
    }
}

impl Partitioner {
    /// The partition for a record with `key` in a topic of `count` partitions.
    pub(crate) fn choose(
        &self,
        key: Option<&Bytes>,
        count: NonZeroU32,
        state: &mut PartitionerState,
    ) -> u32 {
        match (self, key) {
            (Self::Default | Self::KeyHashRoundRobin, Some(key)) => {
                runnel_proto::partition_for_key(key, count)
            }
            (Self::Default, None) => state.sticky(count),
            (Self::KeyHashRoundRobin | Self::RoundRobin, _) => state.next_round_robin(count),
            (Self::Custom(f), key) => f(key, count) % count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(count: u32) -> NonZeroU32 {
        NonZeroU32::new(count).expect("non-zero")
    }

    #[test]
    fn keys_hash_exactly_as_the_broker_documents() {
        // docs/protocol.md, "Choosing a partition".
        let table: &[(&[u8], [u32; 3])] = &[
            (b"", [0, 3, 9]),
            (b"order-42", [0, 0, 0]),
            (b"user-1", [2, 2, 8]),
            (b"alice", [0, 3, 9]),
            (b"foobar", [0, 0, 6]),
        ];
        let mut state = PartitionerState::default();
        for (key, expected) in table {
            for (count, want) in [3, 6, 12].into_iter().zip(expected) {
                let key = Bytes::copy_from_slice(key);
                for p in [Partitioner::Default, Partitioner::KeyHashRoundRobin] {
                    assert_eq!(p.choose(Some(&key), n(count), &mut state), *want);
                }
            }
        }
        // And for many keys, the same as runnel_proto's function.
        for i in 0..1000 {
            let key = Bytes::from(format!("key-{i}"));
            assert_eq!(
                Partitioner::Default.choose(Some(&key), n(7), &mut state),
                runnel_proto::partition_for_key(&key, n(7))
            );
        }
    }

    #[test]
    fn keyless_records_stick_until_the_batch_closes() {
        let mut state = PartitionerState::default();
        let first = Partitioner::Default.choose(None, n(4), &mut state);
        for _ in 0..10 {
            assert_eq!(Partitioner::Default.choose(None, n(4), &mut state), first);
        }
        state.batch_closed((first + 1) % 4);
        assert_eq!(Partitioner::Default.choose(None, n(4), &mut state), first);
        state.batch_closed(first);
        let second = Partitioner::Default.choose(None, n(4), &mut state);
        assert_ne!(second, first, "moves to another partition");
        // A single partition has nowhere else to go.
        let mut one = PartitionerState::default();
        assert_eq!(Partitioner::Default.choose(None, n(1), &mut one), 0);
        one.batch_closed(0);
        assert_eq!(Partitioner::Default.choose(None, n(1), &mut one), 0);
    }

    #[test]
    fn round_robin_cycles() {
        let mut state = PartitionerState::default();
        let key = Bytes::from_static(b"same key");
        let got: Vec<u32> = (0..6)
            .map(|_| Partitioner::RoundRobin.choose(Some(&key), n(3), &mut state))
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        let mut state = PartitionerState::default();
        let got: Vec<u32> = (0..4)
            .map(|_| Partitioner::KeyHashRoundRobin.choose(None, n(2), &mut state))
            .collect();
        assert_eq!(got, [0, 1, 0, 1]);
    }

    #[test]
    fn custom_functions_stay_in_range() {
        let p = Partitioner::Custom(Arc::new(|_, _| 41));
        let mut state = PartitionerState::default();
        assert_eq!(p.choose(None, n(4), &mut state), 1);
    }
}
