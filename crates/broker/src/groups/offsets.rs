//! Committed offsets: held in memory and stored durably in the offsets journal,
//! `<data_dir>/groups/offsets.log` (`docs/storage-format.md`, "Group offsets journal").
//!
//! The journal is an append-only file of records, each a CRC-checked batch of commits of one
//! group (one `CommitOffsets` or `ResetOffsets` request, so a request is applied all or
//! nothing) or a group deletion. One writer task owns the file: it takes every request queued
//! meanwhile, appends them with one `write` and one `fdatasync` (group commit), and only then
//! applies them to memory and answers, so readers never see an offset that is not durable. The
//! file moves into `spawn_blocking` for the I/O; no lock is held across it.
//!
//! At start the journal is replayed (a torn last record, left by a crash or power loss during
//! an append that was never answered, is dropped with a WARN line; damage anywhere else stops
//! the broker) and rewritten compactly and atomically (temporary file, fsync, rename, directory
//! fsync). While running it is compacted the same way when it grows past
//! `groups.offsets_compact_bytes` and twice its live size.
//!
//! Byte layout, little-endian:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic `RNGO` |
//! | 4 | 4 | version, u32, 1 |
//! | 8 | ... | records |
//!
//! A record: `body_len` u32, `crc` u32 (CRC-32 of the body), then the body: `kind` u8 (1
//! commit, 2 delete group), `time_ms` i64, `group_len` u16, `group` (UTF-8), `count` u32, and
//! `count` entries of `topic_len` u16, `topic`, `partition` u32, `offset` u64, `metadata_len`
//! u32, `metadata` (UTF-8). A delete has `count` 0.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::assignor::Tp;
use crate::error::{Error, RpcError};
use crate::files;
use runnel_proto::pb::ErrorCode;

/// The directory of group state under the data directory.
pub const GROUPS_DIR: &str = "groups";
/// The journal's file name in [`GROUPS_DIR`].
pub const OFFSETS_FILE: &str = "offsets.log";
const MAGIC: &[u8; 4] = b"RNGO";
const VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 8;
const RECORD_HEADER_LEN: usize = 8;
const KIND_COMMIT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// Requests written with one fsync at most.
const MAX_GROUP_COMMIT: usize = 1024;

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The offset to resume from.
    pub offset: u64,
    /// The metadata stored with it.
    pub metadata: String,
    /// When it was committed, ms since the Unix epoch.
    pub commit_time_ms: i64,
}

/// Every group's committed offsets.
pub type OffsetMap = BTreeMap<String, BTreeMap<Tp, Committed>>;

/// What one journal record does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store these offsets (all or none).
    Commit(Vec<(Tp, Committed)>),
    /// Forget the group's offsets.
    DeleteGroup,
}

/// A change of one group, with the time it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    group: String,
    time_ms: i64,
    change: Change,
}

/// A queued job for the writer task.
#[derive(Debug)]
pub enum Job {
    /// Append a change and answer once it is durable and applied.
    Write {
        /// The change.
        entry: Entry,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), RpcError>>,
    },
    /// Stop after the jobs queued before this one.
    Close(oneshot::Sender<()>),
}

/// A slot in the writer's queue, taken before the change is validated so that changes reach
/// the journal in the order they were validated.
pub type Slot = mpsc::OwnedPermit<Job>;

/// The committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    state: Arc<RwLock<OffsetMap>>,
    tx: mpsc::Sender<Job>,
    writer: Mutex<Option<Writer>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl OffsetStore {
    /// Replays and compacts the journal under `data_dir` (creating it if absent). Blocking.
    /// The writer starts with [`OffsetStore::start`].
    ///
    /// # Errors
    /// [`Error::Metadata`] for a journal damaged other than at its tail, [`Error::Io`].
    pub fn open(data_dir: &Path, compact_bytes: u64) -> Result<Self, Error> {
        let dir = data_dir.join(GROUPS_DIR);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            files::sync_dir(data_dir).map_err(|e| Error::io("fsync", data_dir, e))?;
        }
        let path = dir.join(OFFSETS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let (state, dropped) = replay(&bytes).map_err(|reason| Error::Metadata {
            path: path.clone(),
            reason,
        })?;
        if dropped > 0 {
            warn!(path = %path.display(), bytes = dropped,
                "offsets journal: dropped a torn last record (an append that was never acknowledged)");
        }
        let compact = encode_state(&state);
        files::write_atomic(&path, &compact).map_err(|e| Error::io("write", &path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let committed: usize = state.values().map(BTreeMap::len).sum();
        info!(
            groups = state.len(),
            offsets = committed,
            "loaded committed offsets"
        );
        let (tx, rx) = mpsc::channel(MAX_GROUP_COMMIT);
        let state = Arc::new(RwLock::new(state));
        Ok(OffsetStore {
            writer: Mutex::new(Some(Writer {
                path,
                file: Some(file),
                size: compact.len() as u64,
                live: compact.len() as u64,
                compact_bytes,
                failed: false,
                state: state.clone(),
                rx,
            })),
            state,
            tx,
            task: Mutex::new(None),
        })
    }

    /// Starts the writer task on the current runtime. Idempotent.
    pub fn start(&self) {
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            *lock(&self.task) = Some(tokio::spawn(w.run()));
        }
    }

    /// Takes a slot in the writer's queue, waiting while it is full.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN` once the store is closed.
    pub async fn slot(&self) -> Result<Slot, RpcError> {
        self.tx
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| RpcError::shutting_down())
    }

    /// Queues a change of `group` in a slot; the receiver answers once it is durable and
    /// visible (or failed). Does not block.
    pub fn submit(
        slot: Slot,
        group: &str,
        time_ms: i64,
        change: Change,
    ) -> oneshot::Receiver<Result<(), RpcError>> {
        let (reply, answer) = oneshot::channel();
        slot.send(Job::Write {
            entry: Entry {
                group: group.to_owned(),
                time_ms,
                change,
            },
            reply,
        });
        answer
    }

    /// Waits for a submitted change.
    ///
    /// # Errors
    /// The write's error, or `BROKER_SHUTTING_DOWN` if the writer stopped.
    pub async fn wait(answer: oneshot::Receiver<Result<(), RpcError>>) -> Result<(), RpcError> {
        answer
            .await
            .unwrap_or_else(|_| Err(RpcError::shutting_down()))
    }

    /// The committed offsets of a group (empty if it has none).
    pub fn group(&self, group: &str) -> BTreeMap<Tp, Committed> {
        read(&self.state).get(group).cloned().unwrap_or_default()
    }

    /// One committed offset.
    pub fn get(&self, group: &str, tp: &Tp) -> Option<Committed> {
        read(&self.state)
            .get(group)
            .and_then(|g| g.get(tp))
            .cloned()
    }

    /// True if the group has committed offsets.
    pub fn has_group(&self, group: &str) -> bool {
        read(&self.state).contains_key(group)
    }

    /// The ids of every group with committed offsets, sorted.
    pub fn groups(&self) -> Vec<String> {
        read(&self.state).keys().cloned().collect()
    }

    /// Every committed offset: `(group, topic, partition, offset)`.
    pub fn snapshot(&self) -> Vec<(String, Tp, u64)> {
        read(&self.state)
            .iter()
            .flat_map(|(g, offsets)| {
                offsets
                    .iter()
                    .map(move |(tp, c)| (g.clone(), tp.clone(), c.offset))
            })
            .collect()
    }

    /// Stops the writer after the changes already queued, and waits for it.
    pub async fn close(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let (reply, done) = oneshot::channel();
            if self.tx.send(Job::Close(reply)).await.is_ok() {
                let _ = done.await;
            }
            let _ = task.await;
        }
    }
}

/// The writer task's state: it alone touches the file.
#[derive(Debug)]
struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    live: u64,
    compact_bytes: u64,
    failed: bool,
    state: Arc<RwLock<OffsetMap>>,
    rx: mpsc::Receiver<Job>,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut writes = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { entry, reply } => writes.push((entry, reply)),
                    Job::Close(done) => {
                        if !writes.is_empty() {
                            self.write(std::mem::take(&mut writes)).await;
                        }
                        self.rx.close();
                        while let Ok(late) = self.rx.try_recv() {
                            if let Job::Write { reply, .. } = late {
                                let _ = reply.send(Err(RpcError::shutting_down()));
                            }
                        }
                        let _ = done.send(());
                        return;
                    }
                }
                if writes.len() < MAX_GROUP_COMMIT {
                    next = self.rx.try_recv().ok();
                }
            }
            self.write(writes).await;
        }
    }

    /// Appends the changes with one write and one fsync, then applies and answers them.
    async fn write(&mut self, jobs: Vec<(Entry, oneshot::Sender<Result<(), RpcError>>)>) {
        let file = if self.failed { None } else { self.file.take() };
        let Some(file) = file else {
            for (_, reply) in jobs {
                let _ = reply.send(Err(failed_error(&self.path)));
            }
            return;
        };
        let mut buf = Vec::new();
        for (entry, _) in &jobs {
            encode_record(&mut buf, entry);
        }
        let size = self.size;
        let len = buf.len() as u64;
        let joined = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let result = append(&mut file, &buf, size);
            (file, result)
        })
        .await;
        let (file, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                self.failed = true;
                let message = format!("offsets journal writer failed: {e}");
                for (_, reply) in jobs {
                    let _ = reply.send(Err(RpcError::internal(message.clone())));
                }
                return;
            }
        };
        self.file = Some(file);
        match result {
            Ok(()) => {
                self.size += len;
                {
                    let mut state = write(&self.state);
                    for (entry, _) in &jobs {
                        apply(&mut state, entry);
                    }
                }
                for (_, reply) in jobs {
                    let _ = reply.send(Ok(()));
                }
                if self.size > self.compact_bytes && self.size > self.live.saturating_mul(2) {
                    self.compact().await;
                }
            }
            Err(AppendError { error, fatal }) => {
                if fatal {
                    self.failed = true;
                    tracing::error!(path = %self.path.display(), error = %error,
                        "offsets journal failed; commits are refused until the broker restarts");
                }
                let e = io_error(&self.path, &error, fatal);
                for (_, reply) in jobs {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn compact(&mut self) {
        let contents = encode_state(&read(&self.state));
        let path = self.path.clone();
        let old = self.file.take();
        let reopened = tokio::task::spawn_blocking(move || {
            let written = files::write_atomic(&path, &contents);
            // Whatever happened, the file at `path` is the journal now: the old one if the
            // rename did not happen, else the compacted one.
            drop(old);
            let file = OpenOptions::new().append(true).open(&path)?;
            let size = file.metadata()?.len();
            Ok::<_, io::Error>((file, size, written.err(), contents.len() as u64))
        })
        .await;
        match reopened {
            Ok(Ok((file, size, error, live))) => {
                self.file = Some(file);
                self.size = size;
                match error {
                    None => {
                        self.live = live;
                        info!(path = %self.path.display(), bytes = size, "compacted the offsets journal");
                    }
                    Some(e) => {
                        warn!(path = %self.path.display(), error = %e, "compacting the offsets journal failed; appending to it as it is");
                    }
                }
            }
            Ok(Err(e)) => {
                self.failed = true;
                tracing::error!(path = %self.path.display(), error = %e,
                    "reopening the offsets journal failed; commits are refused until the broker restarts");
            }
            Err(e) => {
                self.failed = true;
                tracing::error!(error = %e, "offsets journal compaction task failed");
            }
        }
    }
}

struct AppendError {
    error: io::Error,
    /// True if the file may hold data that is not known to be durable or not known to be
    /// absent (an fsync failure, or a failed rollback): no more appends.
    fatal: bool,
}

/// Appends `buf` at `size` and fdatasyncs. A failed write is rolled back by truncation.
fn append(file: &mut File, buf: &[u8], size: u64) -> Result<(), AppendError> {
    if let Err(error) = file.write_all(buf) {
        let fatal = file.set_len(size).is_err();
        return Err(AppendError { error, fatal });
    }
    file.sync_data()
        .map_err(|error| AppendError { error, fatal: true })
}

fn failed_error(path: &Path) -> RpcError {
    RpcError::new(
        ErrorCode::LogFailed,
        format!(
            "the offsets journal {} refuses commits after an earlier write or fsync failure; restart the broker",
            path.display()
        ),
    )
}

fn io_error(path: &Path, e: &io::Error, fatal: bool) -> RpcError {
    if e.kind() == io::ErrorKind::StorageFull && !fatal {
        RpcError::new(
            ErrorCode::DiskFull,
            format!(
                "disk full while writing {}; the commit was rolled back",
                path.display()
            ),
        )
    } else if fatal {
        failed_error(path)
    } else {
        RpcError::internal(format!("writing {}: {e}", path.display()))
    }
}

fn apply(state: &mut OffsetMap, entry: &Entry) {
    match &entry.change {
        Change::Commit(offsets) if offsets.is_empty() => {}
        Change::Commit(offsets) => {
            let g = state.entry(entry.group.clone()).or_default();
            for (tp, c) in offsets {
                g.insert(tp.clone(), c.clone());
            }
        }
        Change::DeleteGroup => {
            state.remove(&entry.group);
        }
    }
}

/// The largest record body compaction writes (a request's record is bounded by the request
/// size limit instead).
const MAX_COMPACT_BODY: usize = 16 << 20;

/// The whole state as a journal: per group and commit time, records of at most
/// [`MAX_COMPACT_BODY`], so every entry keeps its own commit time.
fn encode_state(state: &OffsetMap) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FILE_HEADER_LEN);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    for (group, offsets) in state {
        let mut by_time: BTreeMap<i64, Vec<(Tp, Committed)>> = BTreeMap::new();
        for (tp, c) in offsets {
            by_time
                .entry(c.commit_time_ms)
                .or_default()
                .push((tp.clone(), c.clone()));
        }
        for (time_ms, entries) in by_time {
            let mut chunk = Vec::new();
            let mut size = 0;
            for e in entries {
                let len = 18 + e.0.0.len() + e.1.metadata.len();
                if !chunk.is_empty() && size + len > MAX_COMPACT_BODY {
                    let full = std::mem::take(&mut chunk);
                    encode_record(&mut buf, &commit_entry(group, time_ms, full));
                    size = 0;
                }
                size += len;
                chunk.push(e);
            }
            encode_record(&mut buf, &commit_entry(group, time_ms, chunk));
        }
    }
    buf
}

fn commit_entry(group: &str, time_ms: i64, offsets: Vec<(Tp, Committed)>) -> Entry {
    Entry {
        group: group.to_owned(),
        time_ms,
        change: Change::Commit(offsets),
    }
}

/// Appends one record. Lengths fit their fields: group ids and topic names are at most 249
/// bytes, metadata at most `groups.offset_metadata_max_bytes` (1 MiB at most), and a record
/// holds one request's entries (a request is at most `limits.max_request_bytes`, 2 GiB at
/// most) or at most [`MAX_COMPACT_BODY`] bytes of them, so its body fits a u32.
fn encode_record(buf: &mut Vec<u8>, entry: &Entry) {
    let mut body = Vec::new();
    let (kind, offsets): (u8, &[(Tp, Committed)]) = match &entry.change {
        Change::Commit(o) => (KIND_COMMIT, o),
        Change::DeleteGroup => (KIND_DELETE, &[]),
    };
    body.push(kind);
    body.extend_from_slice(&entry.time_ms.to_le_bytes());
    body.extend_from_slice(&(entry.group.len() as u16).to_le_bytes());
    body.extend_from_slice(entry.group.as_bytes());
    body.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    for ((topic, partition), c) in offsets {
        body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&partition.to_le_bytes());
        body.extend_from_slice(&c.offset.to_le_bytes());
        body.extend_from_slice(&(c.metadata.len() as u32).to_le_bytes());
        body.extend_from_slice(c.metadata.as_bytes());
    }
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    buf.extend_from_slice(&body);
}

/// Replays a journal. Returns the state and the number of bytes of a torn tail dropped.
fn replay(bytes: &[u8]) -> Result<(OffsetMap, usize), String> {
    let mut state = OffsetMap::new();
    if bytes.is_empty() {
        return Ok((state, 0));
    }
    if bytes.len() < FILE_HEADER_LEN || &bytes[..4] != MAGIC {
        return Err("not an offsets journal (bad magic)".into());
    }
    let version = u32_at(bytes, 4);
    if version != VERSION {
        return Err(format!(
            "version {version} is not supported (this build reads {VERSION})"
        ));
    }
    let mut pos = FILE_HEADER_LEN;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let torn = || Ok((state.clone(), rest.len()));
        if rest.len() < RECORD_HEADER_LEN {
            return torn();
        }
        let len = u32_at(rest, 0) as usize;
        let crc = u32_at(rest, 4);
        if len == 0 || RECORD_HEADER_LEN + len > rest.len() {
            if len == 0 && rest.iter().any(|b| *b != 0) {
                return Err(format!("record at byte {pos} has length 0"));
            }
            return torn();
        }
        let body = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        let last = RECORD_HEADER_LEN + len == rest.len();
        if crc32fast::hash(body) != crc {
            if last {
                return torn();
            }
            return Err(format!(
                "record at byte {pos} fails its CRC and is not the last one (damage, not a torn append)"
            ));
        }
        let entry = decode_body(body).map_err(|why| format!("record at byte {pos}: {why}"))?;
        apply(&mut state, &entry);
        pos += RECORD_HEADER_LEN + len;
    }
    Ok((state, 0))
}

fn decode_body(body: &[u8]) -> Result<Entry, String> {
    let mut r = Reader { buf: body, pos: 0 };
    let kind = r.take(1)?[0];
    let time_ms = i64::from_le_bytes(r.array()?);
    let group_len = u16::from_le_bytes(r.array()?) as usize;
    let group = r.string(group_len)?;
    let count = u32::from_le_bytes(r.array()?);
    let change = match kind {
        KIND_COMMIT => {
            let mut offsets = Vec::new();
            for _ in 0..count {
                let topic_len = u16::from_le_bytes(r.array()?) as usize;
                let topic = r.string(topic_len)?;
                let partition = u32::from_le_bytes(r.array()?);
                let offset = u64::from_le_bytes(r.array()?);
                let meta_len = u32::from_le_bytes(r.array()?) as usize;
                let metadata = r.string(meta_len)?;
                offsets.push((
                    (topic, partition),
                    Committed {
                        offset,
                        metadata,
                        commit_time_ms: time_ms,
                    },
                ));
            }
            Change::Commit(offsets)
        }
        KIND_DELETE => Change::DeleteGroup,
        other => return Err(format!("unknown kind {other}")),
    };
    if r.pos != body.len() {
        return Err(format!("{} bytes after the last entry", body.len() - r.pos));
    }
    Ok(Entry {
        group,
        time_ms,
        change,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn string(&mut self, n: usize) -> Result<String, String> {
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("invalid UTF-8 before byte {}", self.pos))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, topic: &str, partition: u32, offset: u64, time_ms: i64) -> Entry {
        Entry {
            group: group.into(),
            time_ms,
            change: Change::Commit(vec![(
                (topic.into(), partition),
                Committed {
                    offset,
                    metadata: format!("m{offset}"),
                    commit_time_ms: time_ms,
                },
            )]),
        }
    }

    fn journal(entries: &[Entry]) -> Vec<u8> {
        let mut buf = encode_state(&OffsetMap::new());
        for e in entries {
            encode_record(&mut buf, e);
        }
        buf
    }

    #[test]
    fn replay_applies_commits_and_deletes_in_order() {
        let bytes = journal(&[
            commit("g", "t", 0, 5, 10),
            commit("g", "t", 0, 7, 11),
            commit("h", "t", 1, 3, 12),
            Entry {
                group: "h".into(),
                time_ms: 13,
                change: Change::DeleteGroup,
            },
        ]);
        let (state, dropped) = replay(&bytes).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(state.len(), 1);
        let c = &state["g"][&("t".to_owned(), 0)];
        assert_eq!(
            (c.offset, c.metadata.as_str(), c.commit_time_ms),
            (7, "m7", 11)
        );
        // Compaction keeps exactly the state, commit times included.
        let mut bigger = state.clone();
        bigger.get_mut("g").unwrap().insert(
            ("u".to_owned(), 3),
            Committed {
                offset: 1,
                metadata: String::new(),
                commit_time_ms: 99,
            },
        );
        assert_eq!(replay(&encode_state(&bigger)).unwrap().0, bigger);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_elsewhere_is_refused() {
        let whole = journal(&[commit("g", "t", 0, 5, 10), commit("g", "t", 0, 9, 11)]);
        let first_end = journal(&[commit("g", "t", 0, 5, 10)]).len();
        for cut in first_end + 1..whole.len() {
            let (state, dropped) = replay(&whole[..cut]).unwrap();
            assert_eq!(dropped, cut - first_end, "cut at {cut}");
            assert_eq!(state["g"][&("t".to_owned(), 0)].offset, 5);
        }
        // A last record with a bad CRC (a torn write that reached full length) is a tail too.
        let mut bad_tail = whole.clone();
        *bad_tail.last_mut().unwrap() ^= 0xff;
        assert_eq!(
            replay(&bad_tail).unwrap().0["g"][&("t".to_owned(), 0)].offset,
            5
        );
        // Zeros after the last record (a power loss after the size grew) are a tail.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(replay(&zeros).unwrap().1, 64);
        // A bad CRC in the middle is damage.
        let mut middle = whole.clone();
        middle[first_end - 1] ^= 0xff;
        assert!(replay(&middle).unwrap_err().contains("CRC"));
        assert!(replay(b"nope, not a journal").is_err());
    }

    #[tokio::test]
    async fn commits_are_durable_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path(), 4096).unwrap();
        store.start();
        for i in 0..200u64 {
            let slot = store.slot().await.unwrap();
            let answer = OffsetStore::submit(
                slot,
                "g",
                1_000,
                Change::Commit(vec![(
                    ("t".into(), (i % 3) as u32),
                    Committed {
                        offset: i,
                        metadata: String::new(),
                        commit_time_ms: 1_000,
                    },
                )]),
            );
            OffsetStore::wait(answer).await.unwrap();
        }
        let slot = store.slot().await.unwrap();
        let one = vec![(
            ("t".to_owned(), 0),
            Committed {
                offset: 1,
                metadata: String::new(),
                commit_time_ms: 5,
            },
        )];
        OffsetStore::wait(OffsetStore::submit(slot, "gone", 5, Change::Commit(one)))
            .await
            .unwrap();
        assert!(store.has_group("gone"));
        let slot = store.slot().await.unwrap();
        OffsetStore::wait(OffsetStore::submit(slot, "gone", 6, Change::DeleteGroup))
            .await
            .unwrap();
        assert_eq!(store.get("g", &("t".into(), 2)).unwrap().offset, 197);
        let size = std::fs::metadata(dir.path().join("groups/offsets.log"))
            .unwrap()
            .len();
        assert!(size < 4096 + 200, "compacted while running: {size} bytes");
        store.close().await;
        assert!(store.slot().await.is_err());

        let again = OffsetStore::open(dir.path(), 4096).unwrap();
        assert_eq!(again.groups(), ["g"]);
        let g = again.group("g");
        let offsets: Vec<u64> = g.values().map(|c| c.offset).collect();
        assert_eq!(offsets, [198, 199, 197]);
    }
}
