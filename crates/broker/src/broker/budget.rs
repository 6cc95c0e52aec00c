//! The broker-wide budgets: produce bytes in flight (`limits.produce_max_in_flight_bytes`)
//! and the subscriptions' read-ahead (`limits.subscribe_buffer_bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The smallest read a subscription's share of the read-ahead budget shrinks to.
pub(crate) const MIN_READ_BYTES: u64 = 16 << 10;

/// The subscriptions' read-ahead (`limits.subscribe_buffer_bytes`): what all open
/// subscription streams together may hold read from disk ahead of their clients. A stream
/// holds at most its queue's `subscribe_queue_depth` responses, the one being encoded and
/// the one in HTTP/2's send buffer, so each of its reads takes at most its share of the
/// budget over `subscribe_queue_depth + 2`. Shares are equal, never below
/// [`MIN_READ_BYTES`] a read: subscribers that stop reading hold at most their shares, and
/// the others keep theirs.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    limit: u64,
    /// Responses a stream holds at most: its queue's depth plus two.
    held: u64,
    streams: Arc<AtomicU64>,
}

/// An open subscription stream, counted in the [`ReadAhead`] shares until dropped.
pub(crate) struct OpenStream(Arc<AtomicU64>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadAhead {
    /// A budget of `limit` bytes for streams whose queues hold `queue_depth` responses.
    pub(crate) fn new(limit: u64, queue_depth: u32) -> Self {
        ReadAhead {
            limit,
            held: u64::from(queue_depth.max(1)) + 2,
            streams: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a stream until the returned guard is dropped.
    pub(crate) fn open(&self) -> OpenStream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.streams.clone())
    }

    /// The most bytes one read of a stream may take now: `wanted`, or less when the open
    /// streams' shares of the budget are smaller (a read still returns at least one batch).
    pub(crate) fn read_max(&self, wanted: usize) -> usize {
        let streams = self.streams.load(Ordering::Relaxed).max(1);
        let per_read = (self.limit / streams / self.held).max(MIN_READ_BYTES);
        wanted.min(usize::try_from(per_read).unwrap_or(usize::MAX))
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

    #[test]
    fn read_ahead_shares_shrink_with_the_open_streams_down_to_the_floor() {
        // 6 MiB over streams holding 2 + 2 responses each.
        let budget = ReadAhead::new(6 << 20, 2);
        assert_eq!(
            budget.read_max(1 << 20),
            1 << 20,
            "no stream open: the whole share"
        );
        let first = budget.open();
        assert_eq!(budget.read_max(1 << 20), 1 << 20);
        let more: Vec<_> = (0..5).map(|_| budget.open()).collect();
        assert_eq!(
            budget.read_max(1 << 20),
            256 << 10,
            "6 MiB / 6 streams / 4 responses"
        );
        let many: Vec<_> = (0..1000).map(|_| budget.open()).collect();
        assert_eq!(budget.read_max(1 << 20) as u64, MIN_READ_BYTES);
        assert_eq!(budget.read_max(100), 100, "never more than asked");
        drop((first, more, many));
        assert_eq!(budget.read_max(1 << 20), 1 << 20);
    }
}
