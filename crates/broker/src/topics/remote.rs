//! Topics with tiered storage: their partitions' copies attached, the topic record kept in
//! the bucket, the upload passes started, and topics rebuilt from the bucket for an empty
//! data directory.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use runnel_proto::pb;
use tracing::{info, warn};

use super::{META_VERSION, Overrides, Topic, TopicMeta, Topics, invalid_config};
use crate::config::{RestoreSetting, TopicDefaults};
use crate::error::{Error, RpcError};
use crate::partition::Partition;
use crate::tiered::{Retention, TopicRecord, one_line};

impl Topics {
    /// Refuses `remote_storage` on a broker without an object store, and turning it off once
    /// on (the copies would stop while local retention had deleted what only they hold).
    pub(super) fn check_remote(
        &self,
        effective: &TopicDefaults,
        was_on: bool,
        field: &str,
    ) -> Result<(), RpcError> {
        if effective.remote_storage && self.tiered.is_none() {
            return Err(invalid_config(format!(
                "{field}.remote_storage true needs tiered storage, and this broker has no \
                 [remote_storage] bucket configured (docs/tiered-storage.md)"
            )));
        }
        if was_on && !effective.remote_storage {
            return Err(invalid_config(format!(
                "{field}.remote_storage cannot be turned off once on: older offsets live only \
                 in the object store; delete the topic instead"
            )));
        }
        Ok(())
    }

    /// Gives each partition of `topic` its copy, if the topic has tiered storage; the topic's
    /// record is to be written again.
    pub(super) fn attach_remote(&self, topic: &Topic) {
        let Some(tiered) = &self.tiered else {
            return;
        };
        if !self.effective(topic).remote_storage {
            return;
        }
        for p in topic.partitions().iter() {
            if p.remote().is_none() {
                p.set_remote(tiered.remote_log(&topic.name, &topic.id, p.index));
            }
        }
        topic.record_current.store(false, Ordering::Release);
    }

    /// Reads every copied partition's manifest at start (in parallel), so that log start
    /// offsets include the copies from the first request; a store that does not answer is
    /// logged, and each manifest is then read at its partition's first use.
    pub(super) fn load_manifests(&self) {
        let Some(tiered) = &self.tiered else {
            return;
        };
        let remotes: Vec<_> = self
            .all_partitions()
            .iter()
            .filter_map(|p| p.remote())
            .collect();
        if remotes.is_empty() {
            return;
        }
        let n = remotes.len();
        let failed = tiered.run(async move {
            futures_util::stream::iter(remotes)
                .map(|r| async move { r.load().await.err().map(|e| (r, e)) })
                .buffer_unordered(16)
                .filter_map(|r| async move { r })
                .collect::<Vec<_>>()
                .await
        });
        match failed {
            Ok(failed) => {
                for (r, e) in &failed {
                    warn!(remote = ?r, error = %e, "manifest not read at start; it is read at first use");
                }
                info!(
                    partitions = n,
                    failed = failed.len(),
                    "read the manifests of copied partitions"
                );
            }
            Err(e) => warn!(error = %e, "manifests not read at start"),
        }
    }

    /// The copied partitions to upload now, each with its topic's total retention, having
    /// written the topic records that changed. Blocking (a topic record is one request).
    pub fn upload_jobs(&self) -> Vec<(Arc<Partition>, Retention)> {
        let Some(tiered) = &self.tiered else {
            return Vec::new();
        };
        let mut jobs = Vec::new();
        for topic in self.list() {
            let effective = self.effective(&topic);
            if !effective.remote_storage {
                continue;
            }
            if !topic.record_current.load(Ordering::Acquire) {
                let record = self.record(&topic);
                match tiered.put_topic_record(&record) {
                    Ok(()) => topic.record_current.store(true, Ordering::Release),
                    Err(e) => {
                        warn!(topic = %topic.name, error = %e, "topic record not written; retrying")
                    }
                }
            }
            let retention = Retention {
                age_ms: (effective.retention_ms > 0).then_some(effective.retention_ms),
                bytes: (effective.retention_bytes > 0).then_some(effective.retention_bytes),
            };
            for p in topic.partitions().iter() {
                if !p.is_deleted() {
                    jobs.push((p.clone(), retention));
                }
            }
        }
        jobs
    }

    fn record(&self, topic: &Topic) -> TopicRecord {
        TopicRecord {
            version: crate::tiered::MANIFEST_VERSION,
            topic: topic.name.to_string(),
            topic_id: topic.id.clone(),
            partition_count: topic.partition_count(),
            config: toml::to_string(&topic.overrides()).unwrap_or_default(),
            created_ms: topic.created_ms,
        }
    }

    /// Rebuilds the topics recorded in the bucket when the data directory has none and
    /// `remote_storage.restore` is `auto`: each topic's metadata, and each partition's log
    /// seeded at the end of its copies.
    pub(super) fn restore_if_empty(&self, topics_dir: &Path) -> Result<(), Error> {
        let Some(tiered) = &self.tiered else {
            return Ok(());
        };
        if tiered.settings().restore != RestoreSetting::Auto {
            return Ok(());
        }
        let empty = fs::read_dir(topics_dir)
            .map_err(|e| Error::io("list directory", topics_dir, e))?
            .next()
            .is_none();
        if !empty {
            return Ok(());
        }
        let restore_failed = |reason: String| Error::Config {
            key: "remote_storage.restore".into(),
            reason: format!(
                "the data directory has no topics, and restoring them from the bucket failed: \
                 {reason}; set remote_storage.restore = \"off\" to start empty"
            ),
        };
        let t = tiered.clone();
        let found = tiered
            .run(async move { crate::tiered::list_topics(&t).await })
            .and_then(|r| r)
            .map_err(|e| restore_failed(e.to_string()))?;
        for restored in found {
            let record = restored.record;
            let config: Overrides = toml::from_str(&record.config).map_err(|e| {
                restore_failed(format!(
                    "topic {:?}: config: {}",
                    record.topic,
                    one_line(&e)
                ))
            })?;
            if let Err(e) = super::validate_name(&record.topic) {
                return Err(restore_failed(e.message));
            }
            let dir = self.topic_dir(&record.topic);
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            for partition in 0..record.partition_count {
                let pdir = runnel_storage::partition_dir(&self.data_dir, &record.topic, partition);
                let (t, r) = (tiered.clone(), record.clone());
                tiered
                    .run(async move { crate::tiered::restore_partition(&t, &r, partition, &pdir).await })
                    .and_then(|r| r)
                    .map_err(|e| restore_failed(format!("{}/{partition}: {e}", record.topic)))?;
            }
            let meta = TopicMeta {
                version: META_VERSION,
                partition_count: record.partition_count,
                id: record.topic_id.clone(),
                created_ms: record.created_ms,
                config,
            };
            // The metadata last: a topic directory without it is removed at the next start.
            self.write_meta(&record.topic, &meta)
                .map_err(|e| restore_failed(e.message))?;
            info!(topic = %record.topic, partitions = record.partition_count,
                "restored topic from the object store");
        }
        Ok(())
    }

    /// The remote figures of a partition, for `DescribeTopic`.
    pub(super) fn remote_figures(p: &Partition, d: &mut pb::PartitionDescription) {
        d.local_log_start_offset = p.local_start_offset();
        let Some(remote) = p.remote() else {
            return;
        };
        let m = remote.manifest();
        d.remote_log_start_offset = m.start_offset();
        d.remote_log_end_offset = m.end_offset();
        d.remote_size_bytes = m.size_bytes();
        d.remote_segment_count = m.segments.len() as u32;
        let (segments, bytes) = remote.lag();
        d.upload_lag_segments = segments;
        d.upload_lag_bytes = bytes;
    }
}
