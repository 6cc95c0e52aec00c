//! The broker's object store ([`Tiered`]) and one partition's copy ([`RemoteLog`]): the
//! client, the runtime every request runs on, the manifest read, claimed and written with
//! conditional writes.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::StreamExt;
use metrics::counter;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::runtime::Runtime;
use tokio::sync::OnceCell;
use tracing::{error, info, warn};

use super::cache::SegmentCache;
use super::error::{RemoteError, one_line};
use super::manifest::{self, Keys, Manifest, TopicRecord};
use super::store;
use crate::config::RemoteStorageSettings;
use crate::error::Error;
use crate::metrics as names;

/// The broker's object store: client, read cache, and the runtime its requests run on.
pub struct Tiered {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) settings: RemoteStorageSettings,
    broker_id: String,
    pub(super) cache: SegmentCache,
    io: Option<Runtime>,
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("bucket", &self.settings.bucket)
            .field("broker_id", &self.broker_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Tiered {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks; from async code that would panic.
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// The file in the data directory holding the broker's id: the writer named in manifests.
pub const BROKER_ID_FILE: &str = "broker.id";

impl Tiered {
    /// Builds the client for `[remote_storage]` and probes the store (reachable, credentials,
    /// bucket, conditional writes). `None` when no bucket is configured. Blocking: it waits
    /// for the probe.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting at fault; [`Error::Io`] for the broker id file.
    pub fn open(
        settings: &RemoteStorageSettings,
        data_dir: &Path,
    ) -> Result<Option<Arc<Self>>, Error> {
        if !settings.enabled() {
            return Ok(None);
        }
        let store = store::build(settings)?;
        let broker_id = broker_id(data_dir)?;
        let tiered = Self::with_store(store, settings.clone(), broker_id)?;
        let (store, s, id) = (
            tiered.store.clone(),
            tiered.settings.clone(),
            tiered.broker_id.clone(),
        );
        tiered
            .run(async move { store::probe(store.as_ref(), &s, &id).await })
            .map_err(|_| Error::Config {
                key: "remote_storage".into(),
                reason: "the probe of the store did not finish".into(),
            })??;
        Ok(Some(tiered))
    }

    /// Tiered storage over `store` without a probe (tests use an in-memory store).
    ///
    /// # Errors
    /// [`Error::Thread`] if the runtime cannot start.
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        settings: RemoteStorageSettings,
        broker_id: String,
    ) -> Result<Arc<Self>, Error> {
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runnel-remote")
            .enable_all()
            .build()
            .map_err(|source| Error::Thread {
                what: "the object store runtime",
                source,
            })?;
        let cache = SegmentCache::new(settings.cache_bytes, settings.chunk_bytes);
        Ok(Arc::new(Tiered {
            store,
            settings,
            broker_id,
            cache,
            io: Some(io),
        }))
    }

    /// The broker's id, as manifests name their writer.
    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    /// The `[remote_storage]` settings.
    pub fn settings(&self) -> &RemoteStorageSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The copy of one partition of one topic incarnation.
    pub fn remote_log(
        self: &Arc<Self>,
        topic: &str,
        topic_id: &str,
        partition: u32,
    ) -> Arc<RemoteLog> {
        Arc::new(RemoteLog {
            tiered: self.clone(),
            keys: Keys::new(&self.settings.prefix, topic, topic_id, partition),
            topic: topic.into(),
            topic_id: topic_id.into(),
            partition,
            loaded: OnceCell::new(),
            manifest: RwLock::new(Arc::new(Manifest::empty(
                topic,
                topic_id,
                partition,
                &self.broker_id,
            ))),
            version: std::sync::Mutex::new(None),
            fenced: AtomicBool::new(false),
            uploading: AtomicBool::new(false),
            swept: AtomicBool::new(false),
            lag: std::sync::Mutex::new((0, 0)),
            retry: std::sync::Mutex::new(Backoff::default()),
        })
    }

    /// Runs `fut` on the store's runtime and waits for it, from any thread (a blocking
    /// reader, or a runtime thread that may block).
    ///
    /// # Errors
    /// [`RemoteError::ShuttingDown`] if the runtime stopped first.
    pub fn run<F>(&self, fut: F) -> Result<F::Output, RemoteError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let io = self.io.as_ref().ok_or(RemoteError::ShuttingDown)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        io.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| RemoteError::ShuttingDown)
    }

    /// Runs `fut` on the store's runtime; the handle can be awaited from any runtime.
    pub fn spawn<F>(&self, fut: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.io.as_ref().map(|io| io.spawn(fut))
    }

    /// Records a topic incarnation in the bucket (its partition count and config), for a
    /// restore. Blocking.
    ///
    /// # Errors
    /// [`RemoteError::Store`] if it cannot be written.
    pub fn put_topic_record(&self, record: &TopicRecord) -> Result<(), RemoteError> {
        let key =
            manifest::topic_record_key(&self.settings.prefix, &record.topic, &record.topic_id);
        let store = self.store.clone();
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        self.run(async move {
            use object_store::ObjectStoreExt;
            store
                .put(&key, bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| RemoteError::store(&key, &e))
        })?
    }

    /// Deletes a topic incarnation from the bucket: its record first (so that no restore
    /// brings it back), then every object under it. Runs in the background.
    pub fn delete_topic(self: &Arc<Self>, topic: &str, topic_id: &str) {
        let prefix = self.settings.prefix.clone();
        let (topic, topic_id) = (topic.to_owned(), topic_id.to_owned());
        let store = self.store.clone();
        self.spawn(async move {
            delete_topic(store.as_ref(), &prefix, &topic, &topic_id).await;
        });
    }
}

/// The broker's id, made once and kept in the data directory.
fn broker_id(data_dir: &Path) -> Result<String, Error> {
    let path = data_dir.join(BROKER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read", &path, e)),
    }
    let id = random_id();
    crate::files::write_atomic(&path, format!("{id}\n").as_bytes())
        .map_err(|e| Error::io("write", &path, e))?;
    Ok(id)
}

/// 16 random bytes as hex: broker ids, topic ids and upload ids.
pub fn random_id() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    // The OS random source does not fail on Linux once booted; a clock-based id is the
    // fallback should it ever.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = now.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One partition's copy in the object store.
pub struct RemoteLog {
    pub(super) tiered: Arc<Tiered>,
    pub(super) keys: Keys,
    pub(super) topic: Arc<str>,
    pub(super) topic_id: String,
    pub(super) partition: u32,
    /// Set once the manifest was read (or found missing) and claimed.
    pub(super) loaded: OnceCell<()>,
    /// The manifest as readers see it.
    pub(super) manifest: RwLock<Arc<Manifest>>,
    /// The version of the manifest this broker last read or wrote: the condition of its next
    /// write. `None` before the first write of a new manifest.
    pub(super) version: std::sync::Mutex<Option<object_store::UpdateVersion>>,
    /// Another broker wrote the manifest: this one copies nothing more.
    pub(super) fenced: AtomicBool,
    /// An upload pass is under way (one at a time).
    pub(super) uploading: AtomicBool,
    /// The objects no manifest names were deleted (once per start).
    pub(super) swept: AtomicBool,
    /// Sealed segments and bytes on local disk not yet copied, as of the last pass.
    pub(super) lag: std::sync::Mutex<(u32, u64)>,
    /// After a failed pass: no new pass before `until`; the wait doubles per failure.
    pub(super) retry: std::sync::Mutex<Backoff>,
}

/// The wait before the next upload pass after failures.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) until: Option<std::time::Instant>,
    pub(super) delay: std::time::Duration,
}

impl std::fmt::Debug for RemoteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLog")
            .field("manifest", &self.keys.manifest())
            .finish_non_exhaustive()
    }
}

impl RemoteLog {
    /// The manifest as of now (empty until loaded).
    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The broker's object store.
    pub fn tiered(&self) -> &Arc<Tiered> {
        &self.tiered
    }

    /// True once the manifest was read from the store.
    pub fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }

    /// The end of what is copied, below which local retention may delete; 0 until the
    /// manifest is loaded.
    pub fn copied_end(&self) -> u64 {
        if self.is_loaded() {
            self.manifest().end_offset()
        } else {
            0
        }
    }

    /// True if another broker took the partition over.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Sealed segments and bytes on local disk not yet copied, as of the last pass.
    pub fn lag(&self) -> (u32, u64) {
        *self
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn publish_local(&self, manifest: Manifest) {
        *self
            .manifest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(manifest);
    }

    pub(super) fn label(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    /// Reads the manifest once (or starts a new one), claiming it for this broker if
    /// another wrote it last (a restore, or a data directory moved to a new broker).
    ///
    /// # Errors
    /// [`RemoteError::Store`] if it cannot be read, [`RemoteError::Corrupt`] if it does not
    /// decode, [`RemoteError::Fenced`] if the claim loses a race.
    pub async fn load(&self) -> Result<(), RemoteError> {
        self.loaded
            .get_or_try_init(|| async { load(self).await })
            .await
            .map(|_| ())
    }
}

/// Reads the manifest (a missing one is a new, empty copy) and claims it if another broker
/// wrote it last.
async fn load(log: &RemoteLog) -> Result<(), RemoteError> {
    let store = log.tiered.store.as_ref();
    let key = log.keys.manifest();
    let (mut manifest, version) = match read_manifest(store, &key).await? {
        Some((manifest, version)) => (manifest, Some(version)),
        None => {
            let m = Manifest::empty(
                &log.topic,
                &log.topic_id,
                log.partition,
                log.tiered.broker_id(),
            );
            (m, None)
        }
    };
    *lock(&log.version) = version;
    if manifest.writer != log.tiered.broker_id() && lock(&log.version).is_some() {
        info!(partition = %log.label(), previous = %manifest.writer,
            "claiming the partition's copy in the object store");
        manifest.writer = log.tiered.broker_id().to_owned();
        write_manifest(log, &manifest).await?;
    }
    log.publish_local(manifest);
    Ok(())
}

/// The manifest at `key` and its version, or `None` if there is none.
pub(super) async fn read_manifest(
    store: &dyn ObjectStore,
    key: &Key,
) -> Result<Option<(Manifest, UpdateVersion)>, RemoteError> {
    let got = match store.get(key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(RemoteError::store(key, &e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(|e| RemoteError::store(key, &e))?;
    let manifest = Manifest::decode(&bytes).map_err(|reason| RemoteError::Corrupt {
        key: key.to_string(),
        reason,
    })?;
    Ok(Some((manifest, version)))
}

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the manifest: create-only the first time, then only over the version this broker
/// last saw. A refusal means another broker wrote it, unless the manifest now there is this
/// broker's own (an earlier write whose answer was lost): then its version is taken up.
pub(super) async fn write_manifest(
    log: &RemoteLog,
    manifest: &Manifest,
) -> Result<(), RemoteError> {
    let store = log.tiered.store.as_ref();
    let key = log.keys.manifest();
    let mode = match lock(&log.version).clone() {
        Some(v) => PutMode::Update(v),
        None => PutMode::Create,
    };
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    let payload = PutPayload::from(Bytes::from(manifest.encode()));
    match store.put_opts(&key, payload, opts).await {
        Ok(r) => {
            *lock(&log.version) = Some(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            });
            Ok(())
        }
        Err(
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
        ) => {
            let (there, version) =
                read_manifest(store, &key)
                    .await?
                    .ok_or_else(|| RemoteError::Corrupt {
                        key: key.to_string(),
                        reason: "refused as existing, then not found".into(),
                    })?;
            if there.writer == log.tiered.broker_id() && there == *manifest {
                *lock(&log.version) = Some(version);
                return Ok(());
            }
            counter!(names::REMOTE_CONFLICTS, "topic" => log.topic.to_string()).increment(1);
            error!(partition = %log.label(), manifest = %key, writer = %there.writer,
                "another broker wrote this partition's manifest: this broker stops copying it");
            Err(RemoteError::Fenced {
                key: key.to_string(),
                writer: there.writer,
            })
        }
        Err(e) => Err(RemoteError::store(&key, &e)),
    }
}

/// Deletes a topic incarnation: its record, then everything under its directory.
async fn delete_topic(store: &dyn ObjectStore, prefix: &str, topic: &str, topic_id: &str) {
    let record = manifest::topic_record_key(prefix, topic, topic_id);
    if let Err(e) = store.delete(&record).await
        && !matches!(e, object_store::Error::NotFound { .. })
    {
        warn!(topic, key = %record, error = %one_line(&e), "could not delete the topic's record in the object store");
        return;
    }
    let dir = Key::from(manifest::topic_dir(prefix, topic, topic_id));
    let mut listed = store.list(Some(&dir));
    let mut deleted = 0u64;
    while let Some(meta) = listed.next().await {
        match meta {
            Ok(meta) => {
                if store.delete(&meta.location).await.is_ok() {
                    deleted += 1;
                }
            }
            Err(e) => {
                warn!(topic, error = %one_line(&e), "could not list the topic's objects to delete them");
                return;
            }
        }
    }
    info!(
        topic,
        objects = deleted,
        "deleted the topic's copies from the object store"
    );
}
