//! Running blocking work (storage, file I/O) from async code.

use runnel_storage::Spawner;
use tokio::runtime::Handle;

use crate::error::RpcError;

/// Lends the runtime's blocking pool to the storage engine: the group commit's syncers run
/// there, so a durable produce request waits without a thread of its own.
#[derive(Debug, Clone)]
pub(crate) struct BlockingPool(pub Handle);

impl Spawner for BlockingPool {
    fn spawn(&self, job: Box<dyn FnOnce() + Send>) {
        drop(self.0.spawn_blocking(job));
    }
}

/// Runs blocking work on the blocking pool.
///
/// # Errors
/// `f`'s error, or `INTERNAL` if the task panicked.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, RpcError>
where
    F: FnOnce() -> Result<T, RpcError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RpcError::internal(format!("blocking task failed: {e}"))))
}
