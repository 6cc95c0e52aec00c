//! Reads of a partition's copy: the batch holding an offset found through the copied offset
//! index, then whole batches fetched by ranged reads of fixed-size chunks, which a cache
//! bounded in bytes keeps (least recently and least frequently used go first). A read stays
//! within one segment, as a local read does.

use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;
use object_store::path::Path as Key;
use runnel_storage::batch::{BatchHeader, HEADER_LEN};

use super::cache::ChunkKey;
use super::error::RemoteError;
use super::manifest::RemoteSegment;
use super::remote::RemoteLog;
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
        let (pos, header) = self.locate(s, from, &log_key).await?;
        let want = (max_bytes.max(header.total_len()) as u64).min(s.size - pos);
        let bytes = cache
            .range(
                &self.tiered.store,
                &self.topic,
                &log_key,
                pos,
                pos + want,
                s.size,
            )
            .await?;
        self.read_ahead(&log_key, (pos + want).div_ceil(cache.chunk_bytes), s.size);
        let split = runnel_storage::split_batches(bytes, from);
        if split.batches.is_empty() {
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
        if tiered.cache.contains(&id) {
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
        let index = cache
            .whole(&self.tiered.store, &self.topic, &index_key)
            .await?;
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
                .range(
                    &self.tiered.store,
                    &self.topic,
                    log_key,
                    *pos,
                    *pos + HEADER_LEN as u64,
                    s.size,
                )
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
        let time_index = self
            .tiered
            .cache
            .whole(&self.tiered.store, &self.topic, &time_key)
            .await?;
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
