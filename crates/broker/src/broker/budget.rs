//! The broker-wide budget of produce bytes in flight (`limits.produce_max_in_flight_bytes`).

use std::sync::Arc;
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
}
