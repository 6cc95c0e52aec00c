//! The broker-wide budgets: produce bytes in flight (`limits.produce_max_in_flight_bytes`)
//! and the read buffer of fetches and subscriptions (`limits.read_buffer_bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::RpcError;
use crate::metrics;

/// Bytes counted against `produce_max_in_flight_bytes` until the request is answered.
pub(crate) struct InFlight {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::plain_gauge(metrics::PRODUCE_IN_FLIGHT).decrement(self.bytes as f64);
    }
}

/// Permits count KiB, so that the limit fits a semaphore's `u32` acquisitions.
pub(crate) fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

/// The broker-wide budget of produce batch bytes being appended
/// (`limits.produce_max_in_flight_bytes`): a request takes its size from it for as long as it
/// is being appended and answered, waiting up to `limits.produce_in_flight_wait_ms` for room.
#[derive(Debug)]
pub(crate) struct ProduceBudget {
    kib: Arc<Semaphore>,
    limit_bytes: u64,
    wait: Duration,
}

impl ProduceBudget {
    /// A budget of `limit_bytes` (below 2^40, as `Config::validate` ensures).
    pub(crate) fn new(limit_bytes: u64, wait: Duration) -> Self {
        ProduceBudget {
            kib: Arc::new(Semaphore::new(kib(limit_bytes) as usize)),
            limit_bytes,
            wait,
        }
    }

    /// Takes `bytes` from the budget (all of it if the request alone is larger), waiting for
    /// room at most the configured time.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` naming the limit if no room was made in time.
    pub(crate) async fn acquire(&self, bytes: u64) -> Result<InFlight, RpcError> {
        // At most the whole budget, which fits a u32 count of KiB.
        let want = kib(bytes).min(kib(self.limit_bytes)) as u32;
        match tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(want)).await {
            Ok(Ok(permit)) => {
                metrics::plain_gauge(metrics::PRODUCE_IN_FLIGHT).increment(bytes as f64);
                Ok(InFlight {
                    _permit: permit,
                    bytes,
                })
            }
            Ok(Err(_)) => Err(RpcError::shutting_down()),
            Err(_) => {
                metrics::limit_rejected("produce_max_in_flight_bytes");
                Err(RpcError::limit(format!(
                    "produce_max_in_flight_bytes ({}) stayed full for produce_in_flight_wait_ms ({} ms); retry with backoff",
                    self.limit_bytes,
                    self.wait.as_millis()
                )))
            }
        }
    }
}

/// The smallest share of the read buffer a stream gets, however many are open, and the
/// smallest piece of a large batch it reads.
pub(crate) const MIN_SHARE_BYTES: u64 = 16 << 10;

/// The read buffer (`limits.read_buffer_bytes`): what all open subscription streams and
/// the `Fetch` calls being answered (each a stream here, for as long as it runs) together may
/// hold read from disk for their clients, from the read until HTTP/2 has written the bytes
/// (or the response was framed, for batches small enough to be copied into their frame).
///
/// A stream reads while it holds less than its share (the budget over the open streams,
/// never less than [`MIN_SHARE_BYTES`]) and the budget has room, at most the smaller rest.
/// A stream that holds nothing may always read one batch, so that every reader makes
/// progress however much stalled streams hold. All streams together hold at most the
/// budget plus one batch each; `Subscribe` streams, which read a batch larger than their
/// read allows in pieces of at least [`MIN_SHARE_BYTES`] as HTTP/2 takes them
/// (`Delivery::Pieces`), the budget plus one such piece each.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    limit: u64,
    streams: Arc<AtomicU64>,
    /// What all streams hold.
    total: Arc<AtomicU64>,
}

/// An open subscription stream: counted in the [`ReadAhead`] shares until dropped, and
/// what its responses hold.
pub(crate) struct OpenStream {
    streams: Arc<AtomicU64>,
    /// The bytes the stream's responses hold.
    pub(crate) held: Arc<Held>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes one stream's responses hold, and a signal when some are released.
#[derive(Debug)]
pub(crate) struct Held {
    bytes: AtomicU64,
    /// What all streams hold ([`ReadAhead`]'s).
    total: Arc<AtomicU64>,
    released: Notify,
}

impl Held {
    /// Counts `batches` as held until the last copy of each is dropped: each becomes a
    /// `Bytes` owning the original (one allocation per batch, none per record).
    pub(crate) fn track(self: &Arc<Self>, batches: Vec<Bytes>) -> Vec<Bytes> {
        let total: usize = batches.iter().map(Bytes::len).sum();
        self.bytes.fetch_add(total as u64, Ordering::AcqRel);
        self.total.fetch_add(total as u64, Ordering::AcqRel);
        metrics::plain_gauge(metrics::READ_BUFFER).increment(total as f64);
        batches
            .into_iter()
            .map(|bytes| {
                Bytes::from_owner(Tracked {
                    bytes,
                    held: self.clone(),
                })
            })
            .collect()
    }

    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// A batch counted in its stream's [`Held`] until dropped.
struct Tracked {
    bytes: Bytes,
    held: Arc<Held>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let n = self.bytes.len();
        self.held.bytes.fetch_sub(n as u64, Ordering::AcqRel);
        self.held.total.fetch_sub(n as u64, Ordering::AcqRel);
        metrics::plain_gauge(metrics::READ_BUFFER).decrement(n as f64);
        self.held.released.notify_waiters();
    }
}

impl ReadAhead {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> Self {
        ReadAhead {
            limit,
            streams: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a stream until the returned guard is dropped.
    pub(crate) fn open(&self) -> OpenStream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        OpenStream {
            streams: self.streams.clone(),
            held: Arc::new(Held {
                bytes: AtomicU64::new(0),
                total: self.total.clone(),
                released: Notify::new(),
            }),
        }
    }

    /// Each open stream's share of the budget now.
    fn share(&self) -> u64 {
        let streams = self.streams.load(Ordering::Relaxed).max(1);
        (self.limit / streams).max(MIN_SHARE_BYTES)
    }

    /// The bytes a stream holding `held` may read now, at most `wanted` (a read returns at
    /// least one whole batch), or `None` if it must wait for some of its own to be released.
    #[cfg(test)]
    pub(crate) fn room(&self, held: &Held, wanted: usize) -> Option<usize> {
        self.room_for(held.bytes(), wanted)
    }

    /// [`ReadAhead::room`] for a stream holding `mine` bytes.
    fn room_for(&self, mine: u64, wanted: usize) -> Option<usize> {
        if mine == 0 {
            // One batch at least: the smallest read that returns one.
            let left = self
                .limit
                .saturating_sub(self.total.load(Ordering::Acquire));
            return Some(wanted.min(usize::try_from(left.min(self.share())).unwrap_or(1).max(1)));
        }
        let share_left = self.share().checked_sub(mine).filter(|&l| l > 0)?;
        let budget_left = self
            .limit
            .checked_sub(self.total.load(Ordering::Acquire))
            .filter(|&l| l > 0)?;
        let left = share_left.min(budget_left);
        Some(wanted.min(usize::try_from(left).unwrap_or(usize::MAX)))
    }

    /// What a stream holding `held` may read now, reserved at once, or `None`.
    pub(crate) fn try_grant(&self, held: &Arc<Held>, wanted: usize) -> Option<Grant> {
        let mut granted = 0u64;
        held.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |mine| {
                granted = self.room_for(mine, wanted)? as u64;
                Some(mine + granted)
            })
            .ok()?;
        self.total.fetch_add(granted, Ordering::AcqRel);
        Some(Grant {
            held: held.clone(),
            bytes: granted,
        })
    }

    /// Waits until a stream holding `held` may read, and reserves how much, at most
    /// `wanted`. A stream waits for its own bytes to be released, since once it holds
    /// nothing it may read.
    pub(crate) async fn wait_room(&self, held: &Arc<Held>, wanted: usize) -> Grant {
        loop {
            let released = held.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the two is not missed.
            released.as_mut().enable();
            if let Some(grant) = self.try_grant(held, wanted) {
                return grant;
            }
            released.await;
        }
    }
}

/// A read a stream may make, reserved in its [`Held`] until dropped: the stream's other
/// readers count it, so that together they read no more than the stream may (one batch,
/// when it holds nothing, is one batch for the stream, not for each of its partitions).
#[derive(Debug)]
pub(crate) struct Grant {
    held: Arc<Held>,
    bytes: u64,
}

impl Grant {
    /// The bytes granted: the read's limit.
    pub(crate) fn bytes(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(usize::MAX)
    }

    /// Counts the batches read as held ([`Held::track`]); drop the grant afterwards.
    pub(crate) fn track(&self, batches: Vec<Bytes>) -> Vec<Bytes> {
        self.held.track(batches)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.held.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.held.total.fetch_sub(self.bytes, Ordering::AcqRel);
        self.held.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use runnel_proto::pb::ErrorCode;

    use super::*;

    #[tokio::test]
    async fn the_produce_budget_waits_then_refuses_naming_the_limit() {
        let budget = ProduceBudget::new(4096, Duration::from_millis(50));
        let held = budget.acquire(4096).await.unwrap();
        let e = budget.acquire(1).await.err().unwrap();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(
            e.message
                .contains("produce_max_in_flight_bytes (4096) stayed full for produce_in_flight_wait_ms (50 ms)"),
            "{}",
            e.message
        );
        // A waiting request gets in once room is made.
        let budget = Arc::new(ProduceBudget::new(4096, Duration::from_secs(30)));
        let b = budget.clone();
        let waiter = tokio::spawn(async move { b.acquire(2048).await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(held);
        let held = budget.acquire(4096).await.unwrap();
        drop(held);
        waiter.await.unwrap().unwrap();
        // A request larger than the whole budget takes all of it rather than waiting forever.
        let big = budget.acquire(1 << 20).await.unwrap();
        assert!(budget.kib.available_permits() == 0);
        drop(big);
        assert_eq!(budget.kib.available_permits(), 4);
    }

    #[tokio::test]
    async fn a_stream_reads_while_under_its_share_and_the_budget_and_always_one_batch() {
        // 64 KiB over the open streams.
        let budget = std::sync::Arc::new(ReadAhead::new(64 << 10));
        let a = budget.open();
        assert_eq!(
            budget.room(&a.held, 1 << 20),
            Some(64 << 10),
            "one stream: all of it"
        );
        let b = budget.open();
        assert_eq!(
            budget.room(&a.held, 1 << 20),
            Some(32 << 10),
            "two: half each"
        );
        assert_eq!(
            budget.room(&a.held, 100),
            Some(100),
            "never more than asked"
        );

        // A batch larger than the share is held whole; the stream then waits.
        let held = a.held.track(vec![Bytes::from(vec![7u8; 40 << 10])]);
        assert_eq!(held[0].len(), 40 << 10);
        assert_eq!(budget.room(&a.held, 1 << 20), None);
        assert_eq!(
            budget.room(&b.held, 1 << 20),
            Some(24 << 10),
            "the budget's rest"
        );
        // The budget full: a stream holding something waits, one holding nothing reads a batch.
        let other = b.held.track(vec![Bytes::from(vec![7u8; 24 << 10])]);
        let c = budget.open();
        assert_eq!(budget.room(&b.held, 1 << 20), None);
        assert_eq!(budget.room(&c.held, 1 << 20), Some(1), "one batch");

        let (held_a, b2) = (a.held.clone(), budget.clone());
        let waiter = tokio::spawn(async move { b2.wait_room(&held_a, 1 << 20).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // A slice keeps the batch held; dropping the last copy releases it.
        let slice = held[0].slice(..10);
        drop(held);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a slice still holds the batch");
        drop(slice);
        assert_eq!(
            waiter.await.unwrap().bytes(),
            21_845,
            "its share: 64 KiB / 3 streams"
        );
        drop(other);

        // Many streams: the floor.
        let many: Vec<_> = (0..1000).map(|_| budget.open()).collect();
        assert_eq!(
            budget.room(&a.held, 1 << 20),
            Some(MIN_SHARE_BYTES as usize)
        );
        drop((a, b, c, many));
    }

    #[tokio::test]
    async fn the_readers_of_one_stream_share_its_one_batch_and_its_share() {
        let budget = ReadAhead::new(64 << 10);
        let stream = budget.open();
        let _others: Vec<_> = (0..3).map(|_| budget.open()).collect();
        // Two partitions' readers of the stream, holding nothing: one reads, one waits.
        let first = budget.try_grant(&stream.held, 1 << 20).expect("granted");
        assert_eq!(first.bytes(), 16 << 10, "the share of 4 streams");
        assert!(
            budget.try_grant(&stream.held, 1 << 20).is_none(),
            "the share is taken"
        );
        // The read came back larger than granted (a whole batch): held, the grant let go.
        let batch = first.track(vec![Bytes::from(vec![1u8; 40 << 10])]);
        drop(first);
        assert_eq!(stream.held.bytes(), 40 << 10);
        assert!(budget.try_grant(&stream.held, 1 << 20).is_none());
        drop(batch);
        assert_eq!(stream.held.bytes(), 0);
        let next = budget.try_grant(&stream.held, 100).expect("granted");
        assert_eq!(next.bytes(), 100);
        drop(next);
        assert_eq!(
            budget.total.load(Ordering::Acquire),
            0,
            "nothing left reserved"
        );
    }
}
