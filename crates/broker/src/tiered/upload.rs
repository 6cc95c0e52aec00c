//! Extending and trimming a partition's copy: the manifest read and claimed once, sealed
//! segments uploaded in order (objects first, then the manifest that names them, written
//! only if unchanged since this broker last saw it), and total retention applied to the
//! copies (the manifest first, then the objects).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use metrics::{counter, gauge};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use runnel_storage::{Log, SealedSegment};
use tracing::{info, warn};

use super::error::{RemoteError, one_line};
use super::manifest::{self, Manifest, RemoteSegment, SEGMENT_EXTENSIONS};
use super::remote::{Backoff, RemoteLog, lock, random_id, write_manifest};
use crate::metrics as names;

/// Objects larger than this are uploaded in parts of this size.
const PART_BYTES: usize = 16 << 20;

/// Total retention of a partition: what it keeps in all, copies and local disk together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest record is older than this (ms) are deleted; `None` keeps them.
    pub age_ms: Option<u64>,
    /// The oldest segments are deleted while the partition holds more bytes; `None` keeps
    /// them.
    pub bytes: Option<u64>,
}

/// What one upload pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Segments copied.
    pub uploaded: usize,
    /// Bytes of `.log` objects copied.
    pub uploaded_bytes: u64,
    /// Copies deleted by total retention.
    pub deleted: usize,
}

impl RemoteLog {
    /// Copies the sealed segments of `log` not yet copied, in order, then applies total
    /// `retention` to the copies. One pass at a time per partition (a second call while one
    /// runs does nothing). Never blocks appends: it reads sealed files only.
    ///
    /// # Errors
    /// The first failure; what was copied before it stays copied, and the next pass goes on
    /// from there.
    pub async fn upload(
        self: &Arc<Self>,
        log: Arc<Log>,
        retention: Retention,
    ) -> Result<UploadOutcome, RemoteError> {
        let waiting = lock(&self.retry)
            .until
            .is_some_and(|until| std::time::Instant::now() < until);
        if waiting || self.is_fenced() || self.uploading.swap(true, Ordering::AcqRel) {
            return Ok(UploadOutcome::default());
        }
        let result = self.upload_pass(log, retention).await;
        self.uploading.store(false, Ordering::Release);
        let settings = self.tiered.settings();
        let mut retry = lock(&self.retry);
        match &result {
            Ok(_) => *retry = Backoff::default(),
            Err(e) => {
                counter!(names::REMOTE_UPLOAD_ERRORS, "topic" => self.topic.to_string())
                    .increment(1);
                if let RemoteError::Fenced { .. } = e {
                    self.fenced.store(true, Ordering::Release);
                }
                let min = std::time::Duration::from_millis(settings.retry_min_ms);
                let max = std::time::Duration::from_millis(settings.retry_max_ms);
                retry.delay = (retry.delay * 2).clamp(min, max);
                retry.until = Some(std::time::Instant::now() + retry.delay);
                warn!(partition = %self.label(), error = %e, retry_in_ms = retry.delay.as_millis() as u64,
                    "upload to the object store failed");
            }
        }
        drop(retry);
        result
    }

    async fn upload_pass(
        self: &Arc<Self>,
        log: Arc<Log>,
        retention: Retention,
    ) -> Result<UploadOutcome, RemoteError> {
        self.load().await?;
        if !self.swept.swap(true, Ordering::AcqRel) {
            self.sweep().await;
        }
        let mut outcome = UploadOutcome::default();
        let pending = self.pending(&log)?;
        self.set_lag(&pending);
        for (i, segment) in pending.iter().enumerate() {
            let copied = self.copy_segment(&log, segment).await?;
            let mut next = (*self.manifest()).clone();
            if next.segments.is_empty() {
                next.log_start_offset = segment.base_offset;
            }
            next.segments.push(copied);
            write_manifest(self, &next).await?;
            self.publish_local(next);
            outcome.uploaded += 1;
            outcome.uploaded_bytes += segment.size;
            let topic = self.topic.to_string();
            counter!(names::REMOTE_UPLOADED_SEGMENTS, "topic" => topic.clone()).increment(1);
            counter!(names::REMOTE_UPLOADED_BYTES, "topic" => topic).increment(segment.size);
            self.set_lag(&pending[i + 1..]);
        }
        outcome.deleted = self.apply_retention(&log, retention).await?;
        self.update_gauges();
        Ok(outcome)
    }

    /// Deletes the partition's objects that its manifest does not name: left by uploads cut
    /// short, of this broker before a crash or of one that lost the partition to it. Once,
    /// after the manifest is loaded (before this broker uploads anything itself); a failure
    /// leaves them for the next start.
    async fn sweep(&self) {
        let manifest = self.manifest();
        let named: std::collections::HashSet<&str> = manifest
            .segments
            .iter()
            .map(|s| s.upload_id.as_str())
            .collect();
        let store = self.tiered.store.as_ref();
        let mut listed = store.list(Some(&self.keys.dir()));
        let mut deleted = 0usize;
        while let Some(meta) = listed.next().await {
            let Ok(meta) = meta else {
                return;
            };
            let orphan = meta
                .location
                .filename()
                .and_then(manifest::upload_id_of)
                .is_some_and(|id| !named.contains(id));
            if orphan && store.delete(&meta.location).await.is_ok() {
                deleted += 1;
            }
        }
        if deleted > 0 {
            info!(partition = %self.label(), objects = deleted,
                "deleted objects of uploads cut short");
        }
    }

    /// The sealed local segments after the end of the copies, which must start there.
    fn pending(&self, log: &Log) -> Result<Vec<SealedSegment>, RemoteError> {
        let manifest = self.manifest();
        let end = manifest.end_offset();
        let sealed = log.sealed_segments();
        if manifest.is_empty() && manifest.log_start_offset == 0 {
            return Ok(sealed);
        }
        let pending: Vec<_> = sealed.into_iter().filter(|s| s.next_offset > end).collect();
        match pending.first() {
            Some(first) if first.base_offset != end => Err(RemoteError::Gap {
                partition: self.label(),
                remote_end: end,
                local_base: first.base_offset,
            }),
            _ => Ok(pending),
        }
    }

    fn set_lag(&self, pending: &[SealedSegment]) {
        let bytes = pending.iter().map(|s| s.size).sum();
        *lock(&self.lag) = (pending.len() as u32, bytes);
    }

    /// Publishes the partition's gauges: upload lag and remote size.
    pub fn update_gauges(&self) {
        if !crate::metrics::partition_labels() {
            return;
        }
        let labels = [
            ("topic", self.topic.to_string()),
            ("partition", self.partition.to_string()),
        ];
        let (segments, bytes) = self.lag();
        gauge!(names::REMOTE_UPLOAD_LAG_SEGMENTS, &labels).set(f64::from(segments));
        gauge!(names::REMOTE_UPLOAD_LAG_BYTES, &labels).set(bytes as f64);
        gauge!(names::REMOTE_SIZE, &labels).set(self.manifest().size_bytes() as f64);
    }

    /// Uploads one segment's objects under a fresh upload id.
    pub(super) async fn copy_segment(
        &self,
        log: &Arc<Log>,
        s: &SealedSegment,
    ) -> Result<RemoteSegment, RemoteError> {
        let upload_id = random_id();
        let store = self.tiered.store.as_ref();
        for ext in SEGMENT_EXTENSIONS {
            let key = self.keys.segment(s.base_offset, &upload_id, ext);
            match ext {
                "log" => put_file(store, &key, &s.log_path, s.size).await?,
                "index" => put_small(store, &key, read_file(&s.index_path).await?).await?,
                "timeindex" => put_small(store, &key, read_file(&s.time_index_path).await?).await?,
                _ => {
                    let (log, at) = (log.clone(), s.next_offset);
                    let snapshot =
                        tokio::task::spawn_blocking(move || log.producer_snapshot_at(at))
                            .await
                            .map_err(|_| RemoteError::ShuttingDown)??;
                    put_small(store, &key, Bytes::from(snapshot)).await?;
                }
            }
        }
        Ok(RemoteSegment {
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size: s.size,
            max_timestamp: s.max_timestamp,
            upload_id,
        })
    }

    /// Deletes the oldest copies that total retention no longer keeps: the manifest first,
    /// then their objects (a failure there leaves objects nothing names).
    async fn apply_retention(&self, log: &Log, retention: Retention) -> Result<usize, RemoteError> {
        let manifest = self.manifest();
        let local_beyond: u64 = {
            let end = manifest.end_offset();
            let covered: u64 = log
                .sealed_segments()
                .iter()
                .filter(|s| s.next_offset <= end)
                .map(|s| s.size)
                .sum();
            log.size_bytes().saturating_sub(covered)
        };
        let now = crate::clock::now_ms();
        let n = expired(&manifest, retention, now, local_beyond);
        if n == 0 {
            return Ok(0);
        }
        let mut next = (*manifest).clone();
        let doomed: Vec<RemoteSegment> = next.segments.drain(..n).collect();
        next.log_start_offset = next
            .segments
            .first()
            .map_or(manifest.end_offset(), |s| s.base_offset);
        write_manifest(self, &next).await?;
        self.publish_local(next);
        let store = self.tiered.store.as_ref();
        for s in &doomed {
            for ext in SEGMENT_EXTENSIONS {
                let key = self.keys.segment(s.base_offset, &s.upload_id, ext);
                if let Err(e) = store.delete(&key).await {
                    warn!(key = %key, error = %one_line(&e),
                        "could not delete an object total retention dropped; nothing names it");
                }
            }
            self.tiered
                .cache
                .forget(&self.keys.segment(s.base_offset, &s.upload_id, "log"));
        }
        counter!(names::REMOTE_DELETED_SEGMENTS, "topic" => self.topic.to_string())
            .increment(doomed.len() as u64);
        info!(partition = %self.label(), segments = doomed.len(),
            log_start_offset = self.manifest().start_offset(), "retention deleted copied segments");
        Ok(doomed.len())
    }
}

/// How many of the oldest copies total retention deletes: those whose newest record is older
/// than the age limit, and while the copies plus `local_beyond` (local bytes not copied)
/// exceed the size limit.
fn expired(m: &Manifest, r: Retention, now_ms: i64, local_beyond: u64) -> usize {
    let mut total = m.size_bytes() + local_beyond;
    let mut n = 0;
    for s in &m.segments {
        let old = r.age_ms.is_some_and(|age| {
            s.max_timestamp < now_ms.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX))
        });
        let big = r.bytes.is_some_and(|limit| total > limit);
        if !(old || big) {
            break;
        }
        total -= s.size;
        n += 1;
    }
    n
}

async fn read_file(path: &std::path::Path) -> Result<Bytes, RemoteError> {
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| RemoteError::file(path, e))
}

async fn put_small(store: &dyn ObjectStore, key: &Key, bytes: Bytes) -> Result<(), RemoteError> {
    store
        .put(key, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| RemoteError::store(key, &e))
}

/// Uploads a segment file: whole when small, else in parts read one at a time (a segment
/// is never held in memory whole).
async fn put_file(
    store: &dyn ObjectStore,
    key: &Key,
    path: &std::path::Path,
    size: u64,
) -> Result<(), RemoteError> {
    if size <= PART_BYTES as u64 {
        let bytes = read_file(path).await?;
        let bytes = bytes.slice(..(size as usize).min(bytes.len()));
        return put_small(store, key, bytes).await;
    }
    use tokio::io::AsyncReadExt;
    let local = |e: std::io::Error| RemoteError::file(path, e);
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let upload = store
        .put_multipart(key)
        .await
        .map_err(|e| RemoteError::store(key, &e))?;
    let mut write = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = match file.read(&mut buf[..want]).await {
            Ok(0) => {
                write.abort().await.ok();
                return Err(local(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => n,
            Err(e) => {
                write.abort().await.ok();
                return Err(local(e));
            }
        };
        if let Err(e) = write.wait_for_capacity(2).await {
            return Err(RemoteError::store(key, &e));
        }
        write.write(&buf[..n]);
        left -= n as u64;
    }
    write
        .finish()
        .await
        .map(|_| ())
        .map_err(|e| RemoteError::store(key, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, next: u64, ts: i64) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            next_offset: next,
            size: 100,
            max_timestamp: ts,
            upload_id: "u".into(),
        }
    }

    #[test]
    fn total_retention_counts_the_copies_and_the_local_rest() {
        let mut m = Manifest::empty("t", "i", 0, "b");
        m.segments = vec![seg(0, 10, 1_000), seg(10, 20, 2_000), seg(20, 30, 3_000)];
        let none = Retention::default();
        assert_eq!(expired(&m, none, 10_000, 0), 0);
        let age = Retention {
            age_ms: Some(8_500),
            bytes: None,
        };
        // Newer than 1_500 stays.
        assert_eq!(expired(&m, age, 10_000, 0), 1);
        let bytes = Retention {
            age_ms: None,
            bytes: Some(250),
        };
        // 300 copied + 100 local: two copies go to get to 200.
        assert_eq!(expired(&m, bytes, 10_000, 100), 2);
        assert_eq!(expired(&m, bytes, 10_000, 1_000), 3);
    }
}
