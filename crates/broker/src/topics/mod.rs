//! The registry of topics and their partitions: creation, deletion, config changes, partition
//! growth, the persisted topic metadata, and topic name and config validation.
//!
//! Each topic's metadata is `<data_dir>/topics/<topic>/topic.toml` (partition count and config
//! overrides), replaced atomically (temporary file, fsync, rename, directory fsync). A topic
//! exists on disk exactly when that file exists, which makes it the commit point:
//!
//! - create: partition directories first, then `topic.toml`; a directory without it is an
//!   unfinished create and is removed at the next start;
//! - add partitions: the new partition directories first, then the new count; directories
//!   past the count are removed at the next start;
//! - delete: the topic directory is renamed into `<data_dir>/deleted/` (one rename, the
//!   commit point) and removed from there in the background, and at every start.
//!
//! Every change runs on a blocking thread under one admin lock, so changes are serialized;
//! lookups take a read lock for a moment and never wait for a change's I/O.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use runnel_proto::pb::{self, DurabilityPolicy, ErrorCode};
use runnel_storage::{Durability, Flusher, LogConfig, LogEnv, LogSpec};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::{DurabilitySetting, Limits, StorageSettings, TopicDefaults};
use crate::error::{Error, RpcError};
use crate::files;
use crate::metrics::{self, TopicMetrics};
use crate::partition::Partition;
use crate::tiered::Tiered;

mod remote;

/// The metadata file of a topic, inside its directory.
pub const TOPIC_FILE: &str = "topic.toml";
/// The directory (under the data directory) holding topics.
pub const TOPICS_DIR: &str = "topics";
/// The directory (under the data directory) where deleted topics wait to be removed.
pub const DELETED_DIR: &str = "deleted";
/// The longest topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// The `TopicConfig` field names, in protocol order.
pub const CONFIG_FIELDS: [&str; 10] = [
    "retention_ms",
    "retention_bytes",
    "segment_bytes",
    "segment_ms",
    "max_batch_bytes",
    "durability",
    "flush_interval_ms",
    "remote_storage",
    "local_retention_ms",
    "local_retention_bytes",
];

const META_VERSION: u32 = 1;

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// `INVALID_TOPIC_NAME` saying which rule fails.
pub fn validate_name(name: &str) -> Result<(), RpcError> {
    let bad = |why: String| {
        Err(RpcError::new(
            ErrorCode::InvalidTopicName,
            format!("topic {name:?} is invalid: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("the name is empty".into());
    }
    if let Some((i, c)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(format!(
            "character {c:?} at {i} is not one of A-Z a-z 0-9 . _ -"
        ));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad(format!(
            "{} characters is more than {MAX_TOPIC_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not allowed".into());
    }
    Ok(())
}

/// The config fields set on a topic itself (the rest follow the broker's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// `retention_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// `retention_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// `segment_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// `segment_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_ms: Option<u64>,
    /// `max_batch_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<u32>,
    /// `durability`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilitySetting>,
    /// `flush_interval_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_interval_ms: Option<u64>,
    /// `remote_storage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_storage: Option<bool>,
    /// `local_retention_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_retention_ms: Option<u64>,
    /// `local_retention_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_retention_bytes: Option<u64>,
}

/// The longest duration a topic config holds, ms; larger requested values are taken as it.
const MAX_MS: u64 = i64::MAX as u64;

impl Overrides {
    /// Reads the fields set in a protocol `TopicConfig`.
    ///
    /// # Errors
    /// `INVALID_CONFIG` for `DURABILITY_POLICY_UNSPECIFIED`, `INVALID_REQUEST` for a value
    /// that is not in the enum; both name `field`.
    pub fn from_pb(c: &pb::TopicConfig, field: &str) -> Result<Self, RpcError> {
        let durability = match c.durability {
            None => None,
            Some(v) => Some(match DurabilityPolicy::try_from(v) {
                Ok(DurabilityPolicy::Always) => DurabilitySetting::Always,
                Ok(DurabilityPolicy::Interval) => DurabilitySetting::Interval,
                Ok(DurabilityPolicy::Never) => DurabilitySetting::Never,
                Ok(DurabilityPolicy::Unspecified) => {
                    return Err(invalid_config(format!(
                        "{field}.durability DURABILITY_POLICY_UNSPECIFIED is not a policy; leave the field unset for the default"
                    )));
                }
                // An enum value this broker does not know, as from a newer client: a
                // malformed request (`docs/protocol.md`, "Compatibility").
                Err(_) => {
                    return Err(RpcError::invalid(format!(
                        "{field}.durability {v} is not a known policy (1 ALWAYS, 2 INTERVAL, 3 NEVER)"
                    )));
                }
            }),
        };
        // Durations past i64::MAX ms (292 million years) mean the same and are stored as that:
        // the topic's metadata is TOML, whose integers are i64.
        let ms = |v: Option<u64>| v.map(|v| v.min(MAX_MS));
        Ok(Overrides {
            retention_ms: ms(c.retention_ms),
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            segment_ms: ms(c.segment_ms),
            max_batch_bytes: c.max_batch_bytes,
            durability,
            flush_interval_ms: ms(c.flush_interval_ms),
            remote_storage: c.remote_storage,
            local_retention_ms: ms(c.local_retention_ms),
            local_retention_bytes: c.local_retention_bytes,
        })
    }

    /// The names of the fields set, sorted.
    pub fn names(&self) -> Vec<String> {
        let set = [
            self.retention_ms.is_some(),
            self.retention_bytes.is_some(),
            self.segment_bytes.is_some(),
            self.segment_ms.is_some(),
            self.max_batch_bytes.is_some(),
            self.durability.is_some(),
            self.flush_interval_ms.is_some(),
            self.remote_storage.is_some(),
            self.local_retention_ms.is_some(),
            self.local_retention_bytes.is_some(),
        ];
        let mut names: Vec<String> = CONFIG_FIELDS
            .iter()
            .zip(set)
            .filter(|(_, s)| *s)
            .map(|(n, _)| (*n).to_owned())
            .collect();
        names.sort();
        names
    }

    /// `self` with the fields set in `other` replaced.
    fn overlay(&self, other: &Overrides) -> Overrides {
        Overrides {
            retention_ms: other.retention_ms.or(self.retention_ms),
            retention_bytes: other.retention_bytes.or(self.retention_bytes),
            segment_bytes: other.segment_bytes.or(self.segment_bytes),
            segment_ms: other.segment_ms.or(self.segment_ms),
            max_batch_bytes: other.max_batch_bytes.or(self.max_batch_bytes),
            durability: other.durability.or(self.durability),
            flush_interval_ms: other.flush_interval_ms.or(self.flush_interval_ms),
            remote_storage: other.remote_storage.or(self.remote_storage),
            local_retention_ms: other.local_retention_ms.or(self.local_retention_ms),
            local_retention_bytes: other.local_retention_bytes.or(self.local_retention_bytes),
        }
    }

    /// Clears a field by name; false if there is no such field.
    fn reset(&mut self, name: &str) -> bool {
        match name {
            "retention_ms" => self.retention_ms = None,
            "retention_bytes" => self.retention_bytes = None,
            "segment_bytes" => self.segment_bytes = None,
            "segment_ms" => self.segment_ms = None,
            "max_batch_bytes" => self.max_batch_bytes = None,
            "durability" => self.durability = None,
            "flush_interval_ms" => self.flush_interval_ms = None,
            "remote_storage" => self.remote_storage = None,
            "local_retention_ms" => self.local_retention_ms = None,
            "local_retention_bytes" => self.local_retention_bytes = None,
            _ => return false,
        }
        true
    }

    /// The effective config: the defaults with these overrides applied.
    pub fn effective(&self, d: &TopicDefaults) -> TopicDefaults {
        TopicDefaults {
            retention_ms: self.retention_ms.unwrap_or(d.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(d.retention_bytes),
            segment_bytes: self.segment_bytes.unwrap_or(d.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(d.segment_ms),
            max_batch_bytes: self.max_batch_bytes.unwrap_or(d.max_batch_bytes),
            durability: self.durability.unwrap_or(d.durability),
            flush_interval_ms: self.flush_interval_ms.unwrap_or(d.flush_interval_ms),
            remote_storage: self.remote_storage.unwrap_or(d.remote_storage),
            local_retention_ms: self.local_retention_ms.unwrap_or(d.local_retention_ms),
            local_retention_bytes: self
                .local_retention_bytes
                .unwrap_or(d.local_retention_bytes),
        }
    }
}

fn invalid_config(message: String) -> RpcError {
    RpcError::new(ErrorCode::InvalidConfig, message)
}

/// The storage config for an effective topic config.
pub fn log_config(c: &TopicDefaults, s: &StorageSettings) -> LogConfig {
    let ms = Duration::from_millis;
    let nonzero = |v: u64| (v > 0).then(|| ms(v));
    // With tiered storage the log keeps the local limits (the tighter of local and total);
    // total retention applies to the copies.
    let (retention_ms, retention_bytes) = if c.remote_storage {
        (
            tighter(c.local_retention_ms, c.retention_ms),
            tighter(c.local_retention_bytes, c.retention_bytes),
        )
    } else {
        (c.retention_ms, c.retention_bytes)
    };
    LogConfig {
        segment_bytes: c.segment_bytes,
        segment_age: nonzero(c.segment_ms),
        retention_age: nonzero(retention_ms),
        retention_bytes: (retention_bytes > 0).then_some(retention_bytes),
        max_batch_bytes: c.max_batch_bytes,
        index_interval_bytes: s.index_interval_bytes,
        max_index_bytes: s.max_index_bytes,
        durability: match c.durability {
            DurabilitySetting::Always => Durability::Always,
            DurabilitySetting::Interval => Durability::Interval(ms(c.flush_interval_ms)),
            DurabilitySetting::Never => Durability::Never,
        },
        producer_expiry: ms(s.producer_expiry_ms),
        cache_window: (s.cache_window_bytes > 0).then_some(s.cache_window_bytes),
    }
}

/// The tighter of two limits where 0 means none.
fn tighter(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// An effective config as a protocol `TopicConfig` with every field set.
pub fn to_pb(c: &TopicDefaults) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: Some(c.retention_ms),
        retention_bytes: Some(c.retention_bytes),
        segment_bytes: Some(c.segment_bytes),
        segment_ms: Some(c.segment_ms),
        max_batch_bytes: Some(c.max_batch_bytes),
        durability: Some(match c.durability {
            DurabilitySetting::Always => DurabilityPolicy::Always,
            DurabilitySetting::Interval => DurabilityPolicy::Interval,
            DurabilitySetting::Never => DurabilityPolicy::Never,
        } as i32),
        flush_interval_ms: Some(c.flush_interval_ms),
        remote_storage: Some(c.remote_storage),
        local_retention_ms: Some(c.local_retention_ms),
        local_retention_bytes: Some(c.local_retention_bytes),
    }
}

/// What `topic.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicMeta {
    version: u32,
    partition_count: u32,
    /// The incarnation's id (random, made at create): names its copies in the object store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    /// When the topic was created, ms since the epoch (0 for topics older than the field).
    #[serde(default)]
    created_ms: i64,
    #[serde(default)]
    config: Overrides,
}

/// One topic.
#[derive(Debug)]
pub struct Topic {
    /// The name.
    pub name: Arc<str>,
    /// The incarnation's id: a topic deleted and created again gets a new one.
    pub id: String,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// The topic's record in the object store is current (tiered storage).
    record_current: AtomicBool,
    overrides: RwLock<Overrides>,
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    round_robin: AtomicU32,
    /// The topic's counters.
    pub metrics: TopicMetrics,
}

impl Topic {
    /// The partitions, in order.
    pub fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        read(&self.partitions).clone()
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        // At most max_partitions_per_topic (below 2^20) partitions exist.
        read(&self.partitions).len() as u32
    }

    /// One partition.
    ///
    /// # Errors
    /// `UNKNOWN_PARTITION` naming the valid range.
    pub fn partition(&self, index: u32) -> Result<Arc<Partition>, RpcError> {
        let partitions = self.partitions();
        partitions
            .get(index as usize)
            .cloned()
            .ok_or_else(|| RpcError::unknown_partition(&self.name, index, partitions.len() as u32))
    }

    /// The next partition for a keyless, partitionless produce entry.
    pub fn next_round_robin(&self) -> u32 {
        let count = self.partition_count().max(1);
        self.round_robin.fetch_add(1, Ordering::Relaxed) % count
    }

    /// The topic's metadata with `partition_count` partitions.
    fn meta(&self, partition_count: u32) -> TopicMeta {
        TopicMeta {
            version: META_VERSION,
            partition_count,
            id: self.id.clone(),
            created_ms: self.created_ms,
            config: self.overrides(),
        }
    }

    /// The fields set on the topic itself.
    pub fn overrides(&self) -> Overrides {
        read(&self.overrides).clone()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every topic of the broker.
#[derive(Debug)]
pub struct Topics {
    data_dir: PathBuf,
    defaults: TopicDefaults,
    storage: StorageSettings,
    limits: Limits,
    env: LogEnv,
    flusher: Mutex<Option<Flusher>>,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    admin: Mutex<()>,
    /// The object store of tiered storage, if configured.
    tiered: Option<Arc<Tiered>>,
}

/// A topic's metadata read at start, before its partitions are opened.
struct LoadedTopic {
    name: Arc<str>,
    meta: TopicMeta,
    config: LogConfig,
}

impl Topics {
    /// Opens every topic found under `data_dir` (recovering partitions that were not closed
    /// cleanly), cleans up unfinished creates and deletes, and starts the background flusher.
    /// Blocking.
    ///
    /// # Errors
    /// [`Error::Io`] for the data directory, [`Error::Metadata`] for an unreadable
    /// `topic.toml`, [`Error::Storage`] for a partition that cannot be opened.
    pub fn open(
        data_dir: &Path,
        defaults: TopicDefaults,
        storage: StorageSettings,
        limits: Limits,
        env: LogEnv,
        tiered: Option<Arc<Tiered>>,
    ) -> Result<Self, Error> {
        let topics_dir = data_dir.join(TOPICS_DIR);
        let deleted_dir = data_dir.join(DELETED_DIR);
        for dir in [&topics_dir, &deleted_dir] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let flusher = Flusher::start(Duration::from_millis(storage.flush_check_interval_ms))
            .map_err(|source| Error::Thread {
                what: "the flusher thread",
                source,
            })?;
        let topics = Topics {
            data_dir: data_dir.to_path_buf(),
            defaults,
            storage,
            limits,
            env,
            flusher: Mutex::new(Some(flusher)),
            map: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            tiered,
        };
        topics.restore_if_empty(&topics_dir)?;
        let entries =
            fs::read_dir(&topics_dir).map_err(|e| Error::io("list directory", &topics_dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list directory", &topics_dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                warn!(path = %path.display(), "ignoring a topic directory whose name is not UTF-8");
                continue;
            };
            if !path.is_dir() || validate_name(&name).is_err() {
                warn!(path = %path.display(), "ignoring an entry that is not a topic directory");
                continue;
            }
            if !path.join(TOPIC_FILE).exists() {
                warn!(path = %path.display(),
                    "removing a topic directory without topic.toml (a create that did not finish)");
                topics.move_to_deleted(&name)?;
                continue;
            }
            names.push(name);
        }
        names.sort();
        let loaded = names
            .iter()
            .map(|name| topics.read_topic(name))
            .collect::<Result<Vec<_>, Error>>()?;
        for topic in topics.open_partitions(loaded)? {
            write(&topics.map).insert(topic.name.to_string(), topic);
        }
        topics.update_counts();
        topics.load_manifests();
        Ok(topics)
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join(TOPICS_DIR).join(name)
    }

    /// Reads a topic's metadata and removes the partition directories past its count.
    fn read_topic(&self, name: &str) -> Result<LoadedTopic, Error> {
        let dir = self.topic_dir(name);
        let path = dir.join(TOPIC_FILE);
        let text = fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let meta: TopicMeta = toml::from_str(&text).map_err(|e| Error::Metadata {
            path: path.clone(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        if meta.version != META_VERSION {
            return Err(Error::Metadata {
                path,
                reason: format!(
                    "version {} is not supported (this build reads {META_VERSION})",
                    meta.version
                ),
            });
        }
        let effective = meta.config.effective(&self.defaults);
        if let Err((field, reason)) = effective.validate() {
            return Err(Error::Metadata {
                path,
                reason: format!("config.{field} {reason}"),
            });
        }
        // Partition directories past the count are left by an unfinished CreatePartitions.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let extra = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|p| p >= meta.partition_count);
                if extra && entry.path().is_dir() {
                    warn!(path = %entry.path().display(),
                        "removing a partition directory past the partition count (CreatePartitions did not finish)");
                    fs::remove_dir_all(entry.path())
                        .map_err(|e| Error::io("remove", entry.path(), e))?;
                }
            }
        }
        let mut meta = meta;
        if meta.id.is_empty() {
            // A topic from before ids: it gets one now, kept from then on.
            meta.id = crate::tiered::random_id();
            self.write_meta(name, &meta)
                .map_err(|e| Error::io("write", &path, std::io::Error::other(e.message)))?;
        }
        let config = log_config(&effective, &self.storage);
        Ok(LoadedTopic {
            name: Arc::from(name),
            meta,
            config,
        })
    }

    /// Opens the logs of every partition of `loaded` at once (`storage.log_threads` at a
    /// time, one filesystem sync for all) and builds the topics; one line says how long it
    /// took and how much recovery read.
    fn open_partitions(&self, loaded: Vec<LoadedTopic>) -> Result<Vec<Arc<Topic>>, Error> {
        let specs: Vec<LogSpec> = loaded
            .iter()
            .flat_map(|t| {
                (0..t.meta.partition_count).map(|index| LogSpec {
                    dir: runnel_storage::partition_dir(&self.data_dir, &t.name, index),
                    config: t.config.clone(),
                })
            })
            .collect();
        let threads = self.storage.log_threads as usize;
        let opened = runnel_storage::open_logs(specs, &self.env, threads).map_err(Error::Logs)?;
        info!(
            partitions = opened.logs.len(),
            reread_bytes = opened.reread_bytes,
            repairs = opened.repairs,
            took_ms = u64::try_from(opened.took.as_millis()).unwrap_or(u64::MAX),
            threads,
            "opened partitions"
        );
        let mut logs = opened.logs.into_iter();
        let mut topics = Vec::with_capacity(loaded.len());
        for t in loaded {
            let metrics = TopicMetrics::new(&t.name);
            let mut partitions = Vec::with_capacity(t.meta.partition_count as usize);
            for index in 0..t.meta.partition_count {
                // One log per spec, in order.
                let log = logs.next().ok_or_else(|| Error::Metadata {
                    path: self.topic_dir(&t.name),
                    reason: "fewer logs opened than partitions".into(),
                })?;
                let log = log.map_err(|source| Error::Storage {
                    topic: t.name.to_string(),
                    partition: index,
                    source,
                })?;
                let p = Partition::new(t.name.clone(), index, log, metrics.clone());
                if let Some(f) = lock(&self.flusher).as_ref() {
                    p.flush_with(f);
                }
                partitions.push(Arc::new(p));
            }
            let topic = Arc::new(Topic {
                metrics,
                name: t.name,
                id: t.meta.id,
                created_ms: t.meta.created_ms,
                record_current: AtomicBool::new(false),
                overrides: RwLock::new(t.meta.config),
                partitions: RwLock::new(Arc::new(partitions)),
                round_robin: AtomicU32::new(0),
            });
            self.attach_remote(&topic);
            topics.push(topic);
        }
        Ok(topics)
    }

    fn open_partition(
        &self,
        topic: &Arc<str>,
        index: u32,
        config: &LogConfig,
        metrics: &TopicMetrics,
    ) -> Result<Partition, Error> {
        let p = Partition::open(
            &self.data_dir,
            topic.clone(),
            index,
            config.clone(),
            self.env.clone(),
            metrics.clone(),
        )
        .map_err(|source| Error::Storage {
            topic: topic.to_string(),
            partition: index,
            source,
        })?;
        if let Some(f) = lock(&self.flusher).as_ref() {
            p.flush_with(f);
        }
        Ok(p)
    }

    /// The broker's topic defaults.
    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    /// Looks a topic up.
    ///
    /// # Errors
    /// `INVALID_TOPIC_NAME` for a name that breaks the rule, `UNKNOWN_TOPIC` if absent.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>, RpcError> {
        if let Some(t) = read(&self.map).get(name) {
            return Ok(t.clone());
        }
        validate_name(name)?;
        Err(RpcError::unknown_topic(name))
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        read(&self.map).values().cloned().collect()
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.list()
            .iter()
            .flat_map(|t| t.partitions().iter().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn total_partitions(&self) -> u64 {
        read(&self.map)
            .values()
            .map(|t| u64::from(t.partition_count()))
            .sum()
    }

    fn update_counts(&self) {
        let (topics, partitions) = {
            let map = read(&self.map);
            let partitions: u64 = map.values().map(|t| u64::from(t.partition_count())).sum();
            (map.len(), partitions)
        };
        metrics::plain_gauge(metrics::TOPICS).set(topics as f64);
        metrics::plain_gauge(metrics::PARTITIONS).set(partitions as f64);
    }

    /// The effective config of a topic.
    pub fn effective(&self, topic: &Topic) -> TopicDefaults {
        topic.overrides().effective(&self.defaults)
    }

    /// Describes a topic: effective config, overrides and partition figures.
    pub fn describe(&self, topic: &Topic) -> pb::TopicDescription {
        let overrides = topic.overrides();
        let partitions = topic.partitions();
        pb::TopicDescription {
            topic: topic.name.to_string(),
            partition_count: partitions.len() as u32,
            config: Some(to_pb(&overrides.effective(&self.defaults))),
            config_overrides: overrides.names(),
            partitions: partitions
                .iter()
                .map(|p| {
                    let mut d = pb::PartitionDescription {
                    partition: p.index,
                    log_start_offset: p.start_offset(),
                    log_end_offset: p.end_offset(),
                    size_bytes: p.size_bytes(),
                    segment_count: p.segment_count() as u32,
                    error: p.has_failed().then(|| {
                        RpcError::new(
                            ErrorCode::LogFailed,
                            format!(
                                "log {} refuses appends after an earlier write or fsync failure; restart the broker to reopen it",
                                p.dir().display()
                            ),
                        )
                        .to_pb()
                    }),
                    ..Default::default()
                    };
                    Self::remote_figures(p, &mut d);
                    d
                })
                .collect(),
        }
    }

    fn check_partition_count(&self, count: u32) -> Result<(), RpcError> {
        let max = self.limits.max_partitions_per_topic;
        if count == 0 || count > max {
            return Err(RpcError::new(
                ErrorCode::InvalidPartitionCount,
                format!("partition_count {count} is outside [1, {max}] (max_partitions_per_topic)"),
            ));
        }
        Ok(())
    }

    fn check_total(&self, topic: &str, adding: u32) -> Result<(), RpcError> {
        let in_use = self.total_partitions();
        let max = u64::from(self.limits.max_partitions);
        if in_use + u64::from(adding) > max {
            metrics::limit_rejected("max_partitions");
            return Err(RpcError::limit(format!(
                "cannot add {adding} partitions to topic {topic:?}: max_partitions ({max}) would be exceeded ({in_use} in use)"
            )));
        }
        Ok(())
    }

    /// Creates a topic. Blocking.
    ///
    /// # Errors
    /// `INVALID_TOPIC_NAME`, `INVALID_PARTITION_COUNT`, `INVALID_CONFIG`, `TOPIC_EXISTS`,
    /// `LIMIT_EXCEEDED`, or an I/O error as `INTERNAL` / `DISK_FULL`.
    pub fn create(
        &self,
        name: &str,
        partition_count: u32,
        config: Option<&pb::TopicConfig>,
    ) -> Result<Arc<Topic>, RpcError> {
        validate_name(name)?;
        self.check_partition_count(partition_count)?;
        let overrides = match config {
            Some(c) => Overrides::from_pb(c, "config")?,
            None => Overrides::default(),
        };
        let effective = overrides.effective(&self.defaults);
        effective
            .validate()
            .map_err(|(field, reason)| invalid_config(format!("config.{field} {reason}")))?;
        self.check_remote(&effective, false, "config")?;

        let _admin = lock(&self.admin);
        if read(&self.map).contains_key(name) {
            return Err(RpcError::new(
                ErrorCode::TopicExists,
                format!("topic {name:?} already exists"),
            ));
        }
        let max_topics = self.limits.max_topics as usize;
        if read(&self.map).len() >= max_topics {
            metrics::limit_rejected("max_topics");
            return Err(RpcError::limit(format!(
                "cannot create topic {name:?}: max_topics ({max_topics}) reached"
            )));
        }
        self.check_total(name, partition_count)?;

        let dir = self.topic_dir(name);
        let result = (|| -> Result<Arc<Topic>, RpcError> {
            if dir.exists() {
                // Left by an earlier create that failed half-way; it was never a topic.
                fs::remove_dir_all(&dir).map_err(|e| RpcError::io("remove", &dir, &e))?;
            }
            fs::create_dir_all(&dir).map_err(|e| RpcError::io("create directory", &dir, &e))?;
            let name_arc: Arc<str> = Arc::from(name);
            let config = log_config(&effective, &self.storage);
            let metrics = TopicMetrics::new(name);
            let mut partitions = Vec::with_capacity(partition_count as usize);
            for index in 0..partition_count {
                let p = self
                    .open_partition(&name_arc, index, &config, &metrics)
                    .map_err(|e| startup_to_rpc(&e))?;
                partitions.push(Arc::new(p));
            }
            let meta = TopicMeta {
                version: META_VERSION,
                partition_count,
                id: crate::tiered::random_id(),
                created_ms: crate::clock::now_ms(),
                config: overrides.clone(),
            };
            self.write_meta(name, &meta)?;
            let topics_dir = self.data_dir.join(TOPICS_DIR);
            files::sync_dir(&topics_dir).map_err(|e| RpcError::io("fsync", &topics_dir, &e))?;
            let topic = Arc::new(Topic {
                metrics,
                name: name_arc,
                id: meta.id,
                created_ms: meta.created_ms,
                record_current: AtomicBool::new(false),
                overrides: RwLock::new(overrides.clone()),
                partitions: RwLock::new(Arc::new(partitions)),
                round_robin: AtomicU32::new(0),
            });
            self.attach_remote(&topic);
            Ok(topic)
        })();
        let topic = match result {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                warn!(topic = name, error = %e.message, "create topic failed");
                return Err(e);
            }
        };
        write(&self.map).insert(name.to_owned(), topic.clone());
        self.update_counts();
        info!(topic = name, partitions = partition_count, overrides = ?overrides.names(),
            "created topic");
        Ok(topic)
    }

    fn write_meta(&self, name: &str, meta: &TopicMeta) -> Result<(), RpcError> {
        let body = toml::to_string(meta)
            .map_err(|e| RpcError::internal(format!("encoding topic metadata: {e}")))?;
        let text = format!(
            "# Topic metadata written by runneld; do not edit while the broker runs.\n{body}"
        );
        let path = self.topic_dir(name).join(TOPIC_FILE);
        files::write_atomic(&path, text.as_bytes()).map_err(|e| RpcError::io("write", &path, &e))
    }

    fn move_to_deleted(&self, name: &str) -> Result<PathBuf, Error> {
        let from = self.topic_dir(name);
        let deleted = self.data_dir.join(DELETED_DIR);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let to = deleted.join(deleted_name(stamp, name));
        fs::rename(&from, &to).map_err(|e| Error::io("rename", &from, e))?;
        files::sync_dir(&self.data_dir.join(TOPICS_DIR))
            .and_then(|()| files::sync_dir(&deleted))
            .map_err(|e| Error::io("fsync", &deleted, e))?;
        Ok(to)
    }

    /// Deletes a topic: closes its logs, moves its directory out of `topics/` (the commit
    /// point), drops it from the registry and wakes its readers. Returns the directory to
    /// remove in the background. Blocking.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, or an I/O error as `INTERNAL` (the topic then stays).
    pub fn delete(&self, name: &str) -> Result<PathBuf, RpcError> {
        let _admin = lock(&self.admin);
        let topic = self.get(name)?;
        let partitions = topic.partitions();
        for p in partitions.iter() {
            p.mark_deleted();
            // Closing stops appends that are still in flight from writing into the directory
            // after it moves; the fsyncs it does are wasted, but deletes are rare.
            if let Err(e) = p.close() {
                warn!(topic = name, partition = p.index, error = %e, "closing a deleted partition");
            }
        }
        let to = self.move_to_deleted(name).map_err(|e| {
            error!(topic = name, error = %e,
                "deleting the topic failed: its partitions are closed; delete it again, or restart the broker to reopen them");
            RpcError::internal(format!("deleting topic {name:?}: {e}"))
        })?;
        write(&self.map).remove(name);
        self.update_counts();
        if let Some(tiered) = &self.tiered
            && self.effective(&topic).remote_storage
        {
            tiered.delete_topic(name, &topic.id);
        }
        info!(topic = name, partitions = partitions.len(), "deleted topic");
        Ok(to)
    }

    /// Removes everything in `<data_dir>/deleted/`. Blocking; errors are logged.
    pub fn purge_deleted(&self) {
        let dir = self.data_dir.join(DELETED_DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            remove_deleted(&entry.path());
        }
    }

    /// Raises a topic's partition count. Returns the count afterwards. Blocking.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `INVALID_PARTITION_COUNT`, `LIMIT_EXCEEDED`, or an I/O error.
    pub fn create_partitions(&self, name: &str, count: u32) -> Result<u32, RpcError> {
        let _admin = lock(&self.admin);
        let topic = self.get(name)?;
        let current = topic.partition_count();
        if count == current {
            return Ok(current);
        }
        if count < current {
            return Err(RpcError::new(
                ErrorCode::InvalidPartitionCount,
                format!(
                    "partition_count {count} is below the current count {current} of topic {name:?}"
                ),
            ));
        }
        self.check_partition_count(count)?;
        self.check_total(name, count - current)?;
        let config = log_config(&self.effective(&topic), &self.storage);
        let mut added = Vec::new();
        let result = (|| {
            for index in current..count {
                let p = self
                    .open_partition(&topic.name, index, &config, &topic.metrics)
                    .map_err(|e| startup_to_rpc(&e))?;
                added.push(Arc::new(p));
            }
            self.write_meta(name, &topic.meta(count))
        })();
        if let Err(e) = result {
            for index in current..count {
                let _ =
                    fs::remove_dir_all(runnel_storage::partition_dir(&self.data_dir, name, index));
            }
            return Err(e);
        }
        {
            let mut partitions = write(&topic.partitions);
            let mut all = (**partitions).clone();
            all.extend(added);
            *partitions = Arc::new(all);
        }
        self.attach_remote(&topic);
        self.update_counts();
        info!(topic = name, from = current, to = count, "added partitions");
        Ok(count)
    }

    /// Changes a topic's config: `set` fields are set, `reset` fields return to the default.
    /// Applies to every partition at once. Returns the new overrides. Blocking.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `INVALID_CONFIG` naming the first bad field, or an I/O error.
    pub fn alter(
        &self,
        name: &str,
        set: Option<&pb::TopicConfig>,
        reset: &[String],
    ) -> Result<(Arc<Topic>, Overrides), RpcError> {
        let set = match set {
            Some(c) => Overrides::from_pb(c, "set")?,
            None => Overrides::default(),
        };
        let set_names = set.names();
        let _admin = lock(&self.admin);
        let topic = self.get(name)?;
        let mut next = topic.overrides().overlay(&set);
        for (i, field) in reset.iter().enumerate() {
            if set_names.contains(field) {
                return Err(invalid_config(format!(
                    "reset[{i}]: {field:?} is also in set; a field is either set or reset"
                )));
            }
            if !next.reset(field) {
                return Err(invalid_config(format!(
                    "reset[{i}]: {field:?} is not a TopicConfig field (one of {})",
                    CONFIG_FIELDS.join(", ")
                )));
            }
        }
        let effective = next.effective(&self.defaults);
        effective
            .validate()
            .map_err(|(field, reason)| invalid_config(format!("{field} {reason}")))?;
        self.check_remote(&effective, self.effective(&topic).remote_storage, "set")?;
        let mut meta = topic.meta(topic.partition_count());
        meta.config = next.clone();
        self.write_meta(name, &meta)?;
        *write(&topic.overrides) = next.clone();
        self.attach_remote(&topic);
        let config = log_config(&effective, &self.storage);
        for p in topic.partitions().iter() {
            if let Err(e) = p.set_config(config.clone()) {
                // TopicDefaults::validate covers every rule of LogConfig::validate.
                warn!(topic = name, partition = p.index, error = %e, "config not applied");
            }
        }
        info!(topic = name, overrides = ?next.names(), "altered topic config");
        Ok((topic, next))
    }

    /// Runs retention over every partition of every topic: deletes the segments past each
    /// topic's limits, logging what went and any failure. Blocking.
    pub fn enforce_retention(&self) {
        for p in self.all_partitions() {
            if p.is_deleted() {
                continue;
            }
            match p.enforce_retention() {
                Ok(outcome) if outcome.segments_deleted > 0 => {
                    p.topic_metrics
                        .retention_deleted
                        .increment(outcome.bytes_deleted);
                    info!(topic = %p.topic, partition = p.index,
                        segments = outcome.segments_deleted, bytes = outcome.bytes_deleted,
                        log_start_offset = outcome.log_start_offset, "retention deleted segments");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed");
                }
            }
        }
    }

    /// Stops the background flusher and closes every log cleanly (fsync, producer snapshot,
    /// clean-shutdown marker). Blocking. Returns how many logs failed to close.
    pub fn close_all(&self) -> usize {
        if let Some(f) = lock(&self.flusher).take() {
            f.stop();
        }
        let threads = self.storage.log_threads as usize;
        let closed = Partition::close_all(&self.all_partitions(), threads);
        info!(
            partitions = closed.closed,
            failed = closed.failed,
            took_ms = u64::try_from(closed.took.as_millis()).unwrap_or(u64::MAX),
            "closed partitions"
        );
        closed.failed
    }
}

/// The name of a deleted topic's directory in `deleted/`: `<nanoseconds>.<topic>`, the topic's
/// name cut to fit a file name's 255 bytes (topic names are ASCII, up to 249 bytes).
fn deleted_name(stamp: u128, topic: &str) -> String {
    let mut name = format!("{stamp}.{topic}");
    name.truncate(255);
    name
}

/// Removes one directory of `deleted/`, logging a failure.
pub fn remove_deleted(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        warn!(path = %path.display(), error = %e, "removing a deleted topic's files failed");
    }
}

fn startup_to_rpc(e: &Error) -> RpcError {
    match e {
        Error::Storage {
            topic,
            partition,
            source,
        } => RpcError::storage(
            source,
            crate::error::At {
                topic,
                partition: *partition,
                epoch: None,
            },
        ),
        other => RpcError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for ok in ["orders", "a", "A-b_c.9", &"x".repeat(249), "..."] {
            validate_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "not allowed"),
            ("..", "not allowed"),
            ("a/b", "character '/' at 1"),
            ("é", "character 'é' at 0"),
            (&"x".repeat(250), "250 characters"),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidTopicName);
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn config_ranges_match_the_protocol() {
        let d = TopicDefaults::default();
        d.validate().unwrap();
        let e = TopicDefaults {
            segment_bytes: 1000,
            ..d.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "segment_bytes");
        assert_eq!(e.1, "1000 is outside [4096, 2147483648]");
        let e = TopicDefaults {
            max_batch_bytes: 8192,
            segment_bytes: 4096,
            ..d.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "max_batch_bytes");
        // Every effective config that validates here is accepted by storage.
        log_config(&d, &StorageSettings::default())
            .validate()
            .unwrap();
    }

    #[test]
    fn overrides_round_trip_through_metadata() {
        let o = Overrides {
            retention_ms: Some(5),
            durability: Some(DurabilitySetting::Always),
            ..Overrides::default()
        };
        let meta = TopicMeta {
            version: 1,
            partition_count: 3,
            id: "0a1b".into(),
            created_ms: 17,
            config: o.clone(),
        };
        let text = toml::to_string(&meta).unwrap();
        let back: TopicMeta = toml::from_str(&text).unwrap();
        assert_eq!(back, meta);
        assert_eq!(o.names(), ["durability", "retention_ms"]);
        // A topic.toml from before ids reads with none.
        let old: TopicMeta = toml::from_str("version = 1\npartition_count = 2\n").unwrap();
        assert_eq!((old.id.as_str(), old.created_ms), ("", 0));
    }
}
