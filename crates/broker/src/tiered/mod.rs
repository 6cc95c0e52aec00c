//! Tiered storage: sealed segments copied to an S3-compatible object store, offsets no longer
//! on local disk read back from there, total retention applied to the copies, and a lost data
//! directory rebuilt from them (`docs/tiered-storage.md`).
//!
//! - [`Tiered`]: the broker's one door to the store: the client (`store.rs`, probed at
//!   start), the cache of remote reads (`read.rs`), and a small runtime of its own on which
//!   every request to the store runs, so that a blocking reader of a partition can wait for
//!   one from any thread.
//! - [`RemoteLog`]: one partition's copy: its manifest (`manifest.rs`), the uploads that
//!   extend it and the retention that trims it (`upload.rs`), reads (`read.rs`).
//! - `restore.rs`: topics rebuilt from the bucket.
//!
//! The storage engine knows nothing of this: it lists sealed segments and their files, and
//! deletes local segments only below the end of what was copied.

mod manifest;
mod read;
mod restore;
mod store;
mod upload;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use object_store::ObjectStore;
use tokio::runtime::Runtime;
use tokio::sync::OnceCell;

pub use manifest::{MANIFEST_VERSION, Manifest, RemoteSegment, TopicRecord};
pub use read::{RemoteRead, SegmentCache};
pub use restore::{RestoredTopic, list_topics, restore_partition};
pub use store::one_line;
pub use upload::{Retention, UploadOutcome};

use crate::config::RemoteStorageSettings;
use crate::error::Error;
use manifest::Keys;

/// Why a request to the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The store could not be read or written; retried (uploads) or reported as
    /// `REMOTE_STORAGE_UNAVAILABLE` (reads).
    #[error("object store request for {key} failed: {reason}")]
    Store {
        /// The object's key.
        key: String,
        /// The store's error, on one line.
        reason: String,
    },
    /// Another broker wrote the partition's manifest: this one stops copying it.
    #[error(
        "the manifest {key} was written by broker {writer}; this broker stops copying the partition"
    )]
    Fenced {
        /// The manifest's key.
        key: String,
        /// The broker id found in it.
        writer: String,
    },
    /// An object is not what its manifest says.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The local log and the manifest disagree: the first sealed local segment not copied
    /// does not start where the copies end.
    #[error(
        "partition {partition}: the copies end at offset {remote_end} but the next local segment starts at {local_base}"
    )]
    Gap {
        /// `topic/partition`.
        partition: String,
        /// The end of the copies.
        remote_end: u64,
        /// The base of the next local segment.
        local_base: u64,
    },
    /// Local storage failed while copying.
    #[error(transparent)]
    Local(#[from] runnel_storage::Error),
    /// A local file could not be read for an upload.
    #[error("read {} for upload: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl RemoteError {
    fn file(path: &Path, source: std::io::Error) -> Self {
        RemoteError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    fn store(key: &object_store::path::Path, e: &object_store::Error) -> Self {
        RemoteError::Store {
            key: key.to_string(),
            reason: one_line(e),
        }
    }
}

/// The broker's object store: client, read cache, and the runtime its requests run on.
pub struct Tiered {
    store: Arc<dyn ObjectStore>,
    settings: RemoteStorageSettings,
    broker_id: String,
    cache: SegmentCache,
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
            upload::delete_topic(store.as_ref(), &prefix, &topic, &topic_id).await;
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
    tiered: Arc<Tiered>,
    keys: Keys,
    topic: Arc<str>,
    topic_id: String,
    partition: u32,
    /// Set once the manifest was read (or found missing) and claimed.
    loaded: OnceCell<()>,
    /// The manifest as readers see it.
    manifest: RwLock<Arc<Manifest>>,
    /// The version of the manifest this broker last read or wrote: the condition of its next
    /// write. `None` before the first write of a new manifest.
    version: std::sync::Mutex<Option<object_store::UpdateVersion>>,
    /// Another broker wrote the manifest: this one copies nothing more.
    fenced: AtomicBool,
    /// An upload pass is under way (one at a time).
    uploading: AtomicBool,
    /// The objects no manifest names were deleted (once per start).
    swept: AtomicBool,
    /// Sealed segments and bytes on local disk not yet copied, as of the last pass.
    lag: std::sync::Mutex<(u32, u64)>,
    /// After a failed pass: no new pass before `until`; the wait doubles per failure.
    retry: std::sync::Mutex<Backoff>,
}

/// The wait before the next upload pass after failures.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    until: Option<std::time::Instant>,
    delay: std::time::Duration,
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

    fn publish_local(&self, manifest: Manifest) {
        *self
            .manifest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(manifest);
    }

    fn label(&self) -> String {
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
            .get_or_try_init(|| async { upload::load(self).await })
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
