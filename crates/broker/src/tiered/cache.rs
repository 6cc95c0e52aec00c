//! The cache of remote reads: chunks of segments and whole indexes, bounded in bytes (least
//! recently and least frequently used go first); a reader that finds a chunk being fetched
//! waits for that fetch.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics::{counter, gauge};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::error::RemoteError;
use crate::metrics as names;

/// A cached piece of an object: a chunk of a segment (`chunk` its number) or a whole index
/// (`chunk` is `u64::MAX`).
pub(super) type ChunkKey = (Arc<str>, u64);

#[derive(Debug, Clone)]
struct ByLength;

impl Weighter<ChunkKey, Bytes> for ByLength {
    fn weight(&self, key: &ChunkKey, val: &Bytes) -> u64 {
        (key.0.len() + val.len()) as u64
    }
}

/// The cache of remote reads: chunks of segments and whole indexes, at most `cache_bytes`.
pub struct SegmentCache {
    chunks: Cache<ChunkKey, Bytes, ByLength>,
    pub(super) chunk_bytes: u64,
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("bytes", &self.chunks.weight())
            .field("chunk_bytes", &self.chunk_bytes)
            .finish()
    }
}

const WHOLE: u64 = u64::MAX;

impl SegmentCache {
    /// A cache of at most `cache_bytes` that fetches `chunk_bytes` at a time.
    pub fn new(cache_bytes: u64, chunk_bytes: u64) -> Self {
        let items = (cache_bytes / chunk_bytes.max(1)).clamp(16, 1 << 20) as usize;
        SegmentCache {
            chunks: Cache::with_weighter(items * 2, cache_bytes, ByLength),
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    /// True if the piece `id` is held.
    pub(super) fn contains(&self, id: &ChunkKey) -> bool {
        self.chunks.get(id).is_some()
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> u64 {
        self.chunks.weight()
    }

    /// Drops every piece of the object `key` (its segment was deleted).
    pub fn forget(&self, key: &Key) {
        let key = key.as_ref();
        self.chunks.retain(|(k, _), _| k.as_ref() != key);
    }

    /// Bytes `start..end` of the object `key` of `size` bytes, through the cache.
    pub(super) async fn range(
        &self,
        store: &Arc<dyn ObjectStore>,
        topic: &str,
        key: &Key,
        start: u64,
        end: u64,
        size: u64,
    ) -> Result<Bytes, RemoteError> {
        let name: Arc<str> = Arc::from(key.as_ref());
        let (first, last) = (
            start / self.chunk_bytes,
            (end.max(start + 1) - 1) / self.chunk_bytes,
        );
        let mut pieces = Vec::with_capacity((last - first + 1) as usize);
        for chunk in first..=last {
            let from = chunk * self.chunk_bytes;
            let to = (from + self.chunk_bytes).min(size);
            let got = self
                .cached(store, topic, (name.clone(), chunk), key, from..to)
                .await?;
            let lo = start.saturating_sub(from) as usize;
            let hi = (end.min(to) - from) as usize;
            if lo > got.len() || hi > got.len() {
                return Err(RemoteError::Corrupt {
                    key: key.to_string(),
                    reason: format!("shorter than the {size} bytes its manifest says"),
                });
            }
            pieces.push(got.slice(lo..hi));
        }
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_default());
        }
        let mut joined = BytesMut::with_capacity((end - start) as usize);
        for p in pieces {
            joined.extend_from_slice(&p);
        }
        Ok(joined.freeze())
    }

    /// A whole (small) object through the cache: an index.
    pub(super) async fn whole(
        &self,
        store: &Arc<dyn ObjectStore>,
        topic: &str,
        key: &Key,
    ) -> Result<Bytes, RemoteError> {
        let name: Arc<str> = Arc::from(key.as_ref());
        let store = store.clone();
        let fetch_key = key.clone();
        let topic = topic.to_owned();
        self.chunks
            .get_or_insert_async(&(name, WHOLE), async move {
                counter!(names::REMOTE_CHUNK_READS, "source" => "store").increment(1);
                let got = store
                    .get(&fetch_key)
                    .await
                    .map_err(|e| RemoteError::store(&fetch_key, &e))?;
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| RemoteError::store(&fetch_key, &e))?;
                counter!(names::REMOTE_FETCHED_BYTES, "topic" => topic)
                    .increment(bytes.len() as u64);
                Ok(bytes)
            })
            .await
    }

    /// A chunk through the cache: a reader that finds it being fetched (by another reader or
    /// a read-ahead) waits for that fetch.
    pub(super) async fn cached(
        &self,
        store: &Arc<dyn ObjectStore>,
        topic: &str,
        id: ChunkKey,
        key: &Key,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, RemoteError> {
        if let Some(hit) = self.chunks.get(&id) {
            counter!(names::REMOTE_CHUNK_READS, "source" => "cache").increment(1);
            return Ok(hit);
        }
        let store = store.clone();
        let topic = topic.to_owned();
        let got = self
            .chunks
            .get_or_insert_async(&id, async move {
                counter!(names::REMOTE_CHUNK_READS, "source" => "store").increment(1);
                let bytes = store
                    .get_range(key, range)
                    .await
                    .map_err(|e| RemoteError::store(key, &e))?;
                counter!(names::REMOTE_FETCHED_BYTES, "topic" => topic)
                    .increment(bytes.len() as u64);
                Ok::<_, RemoteError>(bytes)
            })
            .await;
        gauge!(names::REMOTE_CACHE_SIZE).set(self.chunks.weight() as f64);
        got
    }
}
