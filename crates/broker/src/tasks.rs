//! Running blocking work (storage, file I/O) from async code.

use crate::error::RpcError;

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
