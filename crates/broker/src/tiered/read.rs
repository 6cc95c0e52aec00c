//! Reads of a partition's copy: the batch holding an offset found through the copied offset
//! index, then whole batches fetched by ranged reads of fixed-size chunks, which a cache
//! bounded in bytes keeps (least recently and least frequently used go first). A read stays
//! within one segment, as a local read does.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics::{counter, gauge};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use runnel_storage::batch::{BatchHeader, HEADER_LEN};

use super::manifest::RemoteSegment;
use super::{RemoteError, RemoteLog};
use crate::metrics as names;

/// Whole batches read from a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRead {
    /// One `Bytes` per batch, exactly as stored.
    pub batches: Vec<Bytes>,
    /// Records in `batches`.
    pub records: u64,
    /// One past the last record in `batches`.
    pub next_offset: u64,
}

/// A cached piece of an object: a chunk of a segment (`chunk` its number) or a whole index
/// (`chunk` is `u64::MAX`).
type ChunkKey = (Arc<str>, u64);

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
    chunk_bytes: u64,
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
    async fn range(
        &self,
        log: &RemoteLog,
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
                .cached(
                    &log.tiered.store,
                    &log.topic,
                    (name.clone(), chunk),
                    key,
                    from..to,
                )
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
    async fn whole(&self, log: &RemoteLog, key: &Key) -> Result<Bytes, RemoteError> {
        let name: Arc<str> = Arc::from(key.as_ref());
        let store = log.tiered.store.clone();
        let fetch_key = key.clone();
        let topic = log.topic.to_string();
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
    async fn cached(
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

impl RemoteLog {
    /// Whole batches from the copy, starting with the one that holds `from`, about
    /// `max_bytes` of them (the first whole even if larger). `None` if no copy holds `from`.
    ///
    /// # Errors
    /// [`RemoteError::Store`] if the store cannot be read, [`RemoteError::Corrupt`] if an
    /// object is not what the manifest says.
    pub async fn read(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Option<RemoteRead>, RemoteError> {
        self.load().await?;
        let manifest = self.manifest();
        let Some(segment) = manifest.find(from) else {
            return Ok(None);
        };
        let result = self.read_segment(segment, from, max_bytes).await;
        if let Err(RemoteError::Store { .. }) = &result {
            counter!(names::REMOTE_READ_ERRORS, "topic" => self.topic.to_string()).increment(1);
        }
        result.map(Some)
    }

    async fn read_segment(
        &self,
        s: &RemoteSegment,
        from: u64,
        max_bytes: usize,
    ) -> Result<RemoteRead, RemoteError> {
        let cache = &self.tiered.cache;
        let log_key = self.keys.segment(s.base_offset, &s.upload_id, "log");
        let (mut pos, header) = self.locate(s, from, &log_key).await?;
        let want = (max_bytes.max(header.total_len()) as u64).min(s.size - pos);
        let bytes = cache.range(self, &log_key, pos, pos + want, s.size).await?;
        self.read_ahead(&log_key, (pos + want).div_ceil(cache.chunk_bytes), s.size);
        let split = runnel_storage::split_batches(bytes, from);
        if split.batches.is_empty() {
            pos += 0;
            return Err(RemoteError::Corrupt {
                key: log_key.to_string(),
                reason: format!("no whole batch at byte {pos}"),
            });
        }
        Ok(RemoteRead {
            batches: split.batches,
            records: split.records,
            next_offset: split.next_offset,
        })
    }

    /// Fetches chunk `chunk` of the segment `key` into the cache in the background, so that a
    /// reader going on through the segment finds it there (or in flight) instead of waiting
    /// for a whole request after each chunk.
    fn read_ahead(&self, key: &Key, chunk: u64, size: u64) {
        let tiered = self.tiered.clone();
        let cache_chunk = tiered.cache.chunk_bytes;
        let from = chunk * cache_chunk;
        if from >= size {
            return;
        }
        let (key, topic) = (key.clone(), self.topic.clone());
        let id: ChunkKey = (Arc::from(key.as_ref()), chunk);
        if tiered.cache.chunks.get(&id).is_some() {
            return;
        }
        let t = tiered.clone();
        tiered.spawn(async move {
            let to = (from + cache_chunk).min(size);
            let _ = t.cache.cached(&t.store, &topic, id, &key, from..to).await;
        });
    }

    /// The position and header of the batch holding `offset` in segment `s`.
    async fn locate(
        &self,
        s: &RemoteSegment,
        offset: u64,
        log_key: &Key,
    ) -> Result<(u64, BatchHeader), RemoteError> {
        let cache = &self.tiered.cache;
        let index_key = self.keys.segment(s.base_offset, &s.upload_id, "index");
        let index = cache.whole(self, &index_key).await?;
        let mut pos = runnel_storage::index_position(&index, s.base_offset, offset);
        self.walk(s, log_key, &mut pos, |h| h.next_offset() > offset)
            .await
    }

    /// Walks batch headers from `*pos` to the first for which `stop` holds.
    async fn walk(
        &self,
        s: &RemoteSegment,
        log_key: &Key,
        pos: &mut u64,
        stop: impl Fn(&BatchHeader) -> bool,
    ) -> Result<(u64, BatchHeader), RemoteError> {
        let cache = &self.tiered.cache;
        let corrupt = |pos: u64, reason: String| RemoteError::Corrupt {
            key: log_key.to_string(),
            reason: format!("at byte {pos}: {reason}"),
        };
        while *pos + HEADER_LEN as u64 <= s.size {
            let bytes = cache
                .range(self, log_key, *pos, *pos + HEADER_LEN as u64, s.size)
                .await?;
            let header = BatchHeader::decode(&bytes).map_err(|e| corrupt(*pos, e.to_string()))?;
            if header.total_len() < HEADER_LEN {
                return Err(corrupt(*pos, "a batch shorter than its header".into()));
            }
            if stop(&header) {
                return Ok((*pos, header));
            }
            *pos += header.total_len() as u64;
        }
        Err(corrupt(
            *pos,
            "the segment ends before the batch sought".into(),
        ))
    }

    /// The batch holding the first record at or after `timestamp` in the copies: its base
    /// offset and largest timestamp. `None` if every copied record is older.
    ///
    /// # Errors
    /// As [`RemoteLog::read`].
    pub async fn offset_for_time(&self, timestamp: i64) -> Result<Option<(u64, i64)>, RemoteError> {
        self.load().await?;
        let manifest = self.manifest();
        let start = manifest.start_offset();
        let Some(s) = manifest
            .segments
            .iter()
            .find(|s| s.next_offset > start && s.max_timestamp >= timestamp)
        else {
            return Ok(None);
        };
        let log_key = self.keys.segment(s.base_offset, &s.upload_id, "log");
        let time_key = self.keys.segment(s.base_offset, &s.upload_id, "timeindex");
        let time_index = self.tiered.cache.whole(self, &time_key).await?;
        let from =
            runnel_storage::time_index_offset(&time_index, s.base_offset, timestamp).max(start);
        let (mut pos, _) = self.locate(s, from, &log_key).await?;
        let (_, header) = self
            .walk(s, &log_key, &mut pos, |h| {
                h.effective_max_timestamp() >= timestamp
            })
            .await?;
        Ok(Some((
            header.base_offset.max(start),
            header.effective_max_timestamp(),
        )))
    }
}
