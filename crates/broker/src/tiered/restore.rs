//! Rebuilding topics from the bucket, for a broker whose data directory was lost: the topic
//! records say which topics exist (the newest incarnation of each name), and each
//! partition's manifest where its copies end; a partition's local log is seeded to start
//! there, with the producer state copied with its last segment, and everything before is
//! read from the copies.

use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use tracing::info;

use super::error::RemoteError;
use super::manifest::{self, Keys, Manifest, TopicRecord};
use super::remote::{Tiered, read_manifest};

/// A topic found in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredTopic {
    /// Its record.
    pub record: TopicRecord,
}

/// The topics recorded in the bucket: per name, the incarnation created last.
///
/// # Errors
/// [`RemoteError::Store`] if the bucket cannot be listed or a record read,
/// [`RemoteError::Corrupt`] for a record that does not decode.
pub async fn list_topics(tiered: &Tiered) -> Result<Vec<RestoredTopic>, RemoteError> {
    let store = tiered.store.as_ref();
    let prefix = &tiered.settings.prefix;
    let root = manifest::topics_dir(prefix);
    let names = store
        .list_with_delimiter(Some(&root))
        .await
        .map_err(|e| RemoteError::store(&root, &e))?;
    let mut topics = Vec::new();
    for name_dir in names.common_prefixes {
        let ids = store
            .list_with_delimiter(Some(&name_dir))
            .await
            .map_err(|e| RemoteError::store(&name_dir, &e))?;
        let mut newest: Option<TopicRecord> = None;
        for id_dir in ids.common_prefixes {
            let key = Key::from(format!("{id_dir}/topic.json"));
            let bytes = match store.get(&key).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .map_err(|e| RemoteError::store(&key, &e))?,
                // A deleted incarnation whose objects are still being removed.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(RemoteError::store(&key, &e)),
            };
            let record: TopicRecord =
                serde_json::from_slice(&bytes).map_err(|e| RemoteError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            if newest
                .as_ref()
                .is_none_or(|n| record.created_ms > n.created_ms)
            {
                newest = Some(record);
            }
        }
        topics.extend(newest.map(|record| RestoredTopic { record }));
    }
    Ok(topics)
}

/// Seeds partition `partition` of `topic` in `dir` from its manifest: an empty local log at
/// the end of the copies with the producer state copied with the last segment. Returns the
/// manifest (empty if nothing was copied: the log then starts empty at 0, or where total
/// retention left the copies).
///
/// # Errors
/// [`RemoteError::Store`] or [`RemoteError::Corrupt`] for the manifest or snapshot,
/// [`RemoteError::Local`] if the directory cannot be seeded.
pub async fn restore_partition(
    tiered: &Tiered,
    topic: &TopicRecord,
    partition: u32,
    dir: &std::path::Path,
) -> Result<Manifest, RemoteError> {
    let store = tiered.store.as_ref();
    let keys = Keys::new(
        &tiered.settings.prefix,
        &topic.topic,
        &topic.topic_id,
        partition,
    );
    let key = keys.manifest();
    let manifest = match read_manifest(store, &key).await? {
        Some((manifest, _)) => manifest,
        None => Manifest::empty(&topic.topic, &topic.topic_id, partition, tiered.broker_id()),
    };
    let end = manifest.end_offset();
    let snapshot = match manifest.segments.last() {
        Some(last) => {
            let key = keys.segment(last.base_offset, &last.upload_id, "snapshot");
            let got = store
                .get(&key)
                .await
                .map_err(|e| RemoteError::store(&key, &e))?;
            got.bytes()
                .await
                .map_err(|e| RemoteError::store(&key, &e))?
                .to_vec()
        }
        None => runnel_storage::empty_producer_snapshot(end),
    };
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || runnel_storage::seed_log(&dir, end, &snapshot))
        .await
        .map_err(|_| RemoteError::ShuttingDown)??;
    info!(topic = %topic.topic, partition, log_start_offset = manifest.start_offset(),
        log_end_offset = end, segments = manifest.segments.len(), "restored partition from the object store");
    Ok(manifest)
}
