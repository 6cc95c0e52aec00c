//! The gRPC services of `runnel.v1` and what they share.

pub mod admin;
pub mod consume;
pub mod consume_http;
pub mod groups;
pub mod produce;

use std::time::Instant;

use bytes::Bytes;
use runnel_storage::batch::{self, BatchHeader, HEADER_LEN};
use tonic::{Code, Response, Status};

use crate::error::RpcError;
use crate::metrics;

/// Runs blocking work (storage, file I/O) on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, RpcError>
where
    F: FnOnce() -> Result<T, RpcError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RpcError::internal(format!("blocking task failed: {e}"))))
}

/// Ends a unary RPC: counts it and turns an error into its status.
pub(crate) fn finish<T>(
    rpc: &'static str,
    started: Instant,
    result: Result<T, RpcError>,
) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(e) => e.grpc_code(),
    };
    metrics::rpc_done(rpc, code, started);
    result.map(Response::new).map_err(|e| e.status())
}

/// Splits whole stored batches, back to back, into one `Bytes` per batch without copying.
/// Returns the batches and their total record count.
pub(crate) fn split_batches(data: &Bytes) -> (Vec<Bytes>, u64) {
    let mut batches = Vec::new();
    let mut records = 0u64;
    let mut pos = 0;
    while let Some(total) = batch::batch_total_len(&data[pos..]) {
        if total < HEADER_LEN || pos + total > data.len() {
            break;
        }
        if let Ok(header) = BatchHeader::decode(&data[pos..]) {
            records += u64::from(header.record_count);
        }
        batches.push(data.slice(pos..pos + total));
        pos += total;
    }
    (batches, records)
}

/// A requested size capped by a broker limit; 0 means the limit.
pub(crate) fn capped(requested: u32, limit: u32) -> usize {
    if requested == 0 {
        limit as usize
    } else {
        requested.min(limit) as usize
    }
}
