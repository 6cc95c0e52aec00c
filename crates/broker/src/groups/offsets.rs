//! Committed offsets: held in memory and stored durably in the internal log
//! `<data_dir>/internal/consumer_offsets` (`docs/storage-format.md`, "Committed offsets").
//!
//! Every change is one record in a batch of its own: the commits of one group (one
//! `CommitOffsets` or `ResetOffsets` request, so a request is applied all or nothing) or a
//! group deletion. One writer task owns the writes: it takes every request queued meanwhile,
//! awaits the durability of the partition records they commit past ([`OnDisk`]: a committed
//! offset never points past what a power cut keeps), writes them with one call, awaits the
//! storage group commit ([`InternalLog::durable`]), and only then applies them to memory and
//! answers, so readers never see an offset that is not durable. Changes are written and
//! applied in the order they were queued. No lock is held across the write or the fsync.
//!
//! At start the log is recovered like every partition and replayed. While running it is
//! compacted by snapshot (`internal_log.rs`) once it outgrows `groups.offsets_compact_bytes`.
//!
//! A record's value, little-endian: `kind` u8 (1 commit, 2 delete group), `time_ms` i64,
//! `group_len` u16, `group` (UTF-8), `count` u32, and `count` entries of `topic_len` u16,
//! `topic`, `partition` u32, `offset` u64, `metadata_len` u32, `metadata` (UTF-8). A delete
//! has `count` 0.
//!
//! The previous release kept the same records in a journal file, `groups/offsets.log`: a
//! header (magic `RNGO`, version u32 1), then records each framed by `body_len` u32 and `crc`
//! u32 (CRC-32 of the body). It is migrated into the internal log on first start.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use runnel_storage::LogEnv;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::assignor::Tp;
use crate::error::{Error, RpcError};
use crate::internal_log::{self, InternalLog, Legacy};

/// The internal log of committed offsets, under `internal/`.
pub const OFFSETS_LOG: &str = "consumer_offsets";
/// The previous release's journal, `groups/offsets.log` under the data directory.
const LEGACY_JOURNAL: [&str; 2] = ["groups", "offsets.log"];
const MAGIC: &[u8; 4] = b"RNGO";
const VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 8;
const RECORD_HEADER_LEN: usize = 8;
const KIND_COMMIT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// Requests written with one fsync at most.
const MAX_GROUP_COMMIT: usize = 1024;
/// Bytes a batch of one record adds to the record's value, at most: the batch header (65)
/// and the record's framing (30).
const BATCH_OVERHEAD: usize = 96;

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

/// What one record does.
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

/// A wait until partition records a change commits past are on disk (registered with the
/// partition's group commit when it is made), failing with the error to answer.
pub type OnDisk = Pin<Box<dyn Future<Output = Result<(), RpcError>> + Send>>;

/// A queued job for the writer task.
pub enum Job {
    /// Write a change once `on_disk` all resolved, and answer once it is durable and applied.
    Write {
        /// The change.
        entry: Entry,
        /// The records it commits past, to be on disk first.
        on_disk: Vec<OnDisk>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), RpcError>>,
    },
    /// Stop after the jobs queued before this one.
    Close(oneshot::Sender<()>),
}

/// A slot in the writer's queue, taken before the change is validated so that changes reach
/// the log in the order they were validated.
pub type Slot = mpsc::OwnedPermit<Job>;

/// The committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    state: Arc<RwLock<OffsetMap>>,
    log: Arc<InternalLog>,
    tx: mpsc::Sender<Job>,
    writer: Mutex<Option<Writer>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl OffsetStore {
    /// Opens (recovering) and replays the internal log of committed offsets under
    /// `data_dir`, creating it, from the previous release's journal if there is one.
    /// Blocking. The writer starts with [`OffsetStore::start`].
    ///
    /// # Errors
    /// As [`InternalLog::open`] and [`InternalLog::replay`].
    pub fn open(data_dir: &Path, compact_bytes: u64, env: &LogEnv) -> Result<Self, Error> {
        let legacy_path = LEGACY_JOURNAL
            .iter()
            .fold(data_dir.to_path_buf(), |p, part| p.join(part));
        let read_legacy = |bytes: &[u8], max_batch: usize| {
            let (state, dropped) = replay_journal(bytes)?;
            if dropped > 0 {
                warn!(
                    bytes = dropped,
                    "offsets journal: dropped a torn last record (an append that was never acknowledged)"
                );
            }
            Ok(snapshot(&state, max_batch))
        };
        let log = InternalLog::open(
            data_dir,
            OFFSETS_LOG,
            compact_bytes,
            env,
            Some(Legacy {
                path: legacy_path,
                read: &read_legacy,
            }),
        )?;
        let mut state = OffsetMap::new();
        log.replay(|value, _| {
            apply(&mut state, &decode_body(value)?);
            Ok(())
        })?;
        let committed: usize = state.values().map(BTreeMap::len).sum();
        info!(
            groups = state.len(),
            offsets = committed,
            "loaded committed offsets"
        );
        let (tx, rx) = mpsc::channel(MAX_GROUP_COMMIT);
        let state = Arc::new(RwLock::new(state));
        let log = Arc::new(log);
        Ok(OffsetStore {
            writer: Mutex::new(Some(Writer {
                log: log.clone(),
                state: state.clone(),
                rx,
            })),
            state,
            log,
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

    /// Queues a change of `group` in a slot, to be written once `on_disk` all resolved; the
    /// receiver answers once it is durable and visible (or failed). Does not block.
    pub fn submit(
        slot: Slot,
        group: &str,
        time_ms: i64,
        change: Change,
        on_disk: Vec<OnDisk>,
    ) -> oneshot::Receiver<Result<(), RpcError>> {
        let (reply, answer) = oneshot::channel();
        slot.send(Job::Write {
            entry: Entry {
                group: group.to_owned(),
                time_ms,
                change,
            },
            on_disk,
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

    /// Stops the writer after the changes already queued, waits for it, and closes the log
    /// cleanly (blocking work on the runtime's blocking pool).
    pub async fn close(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let (reply, done) = oneshot::channel();
            if self.tx.send(Job::Close(reply)).await.is_ok() {
                let _ = done.await;
            }
            let _ = task.await;
        }
        let log = self.log.clone();
        let closed = tokio::task::spawn_blocking(move || log.close()).await;
        if let Ok(Err(e)) = closed {
            warn!(error = %e, "closing the committed offsets log failed; the next start recovers it");
        }
    }
}

/// A change waiting for its answer.
type Pending = (Entry, oneshot::Sender<Result<(), RpcError>>);

/// A change waiting for the records it commits past, and for its answer.
type Queued = (Entry, Vec<OnDisk>, oneshot::Sender<Result<(), RpcError>>);

/// The writer task's state: it alone writes to the log.
#[derive(Debug)]
struct Writer {
    log: Arc<InternalLog>,
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
                    Job::Write {
                        entry,
                        on_disk,
                        reply,
                    } => writes.push((entry, on_disk, reply)),
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

    /// Awaits the records each change commits past (all waits were registered when the
    /// changes were made, so their fsyncs ran together), writes the changes with one call, one
    /// batch each, awaits the group commit, then applies and answers them; compacts the log
    /// when it is due.
    async fn write(&mut self, queued: Vec<Queued>) {
        let mut jobs: Vec<Pending> = Vec::with_capacity(queued.len());
        'jobs: for (entry, on_disk, reply) in queued {
            for wait in on_disk {
                if let Err(e) = wait.await {
                    let _ = reply.send(Err(e));
                    continue 'jobs;
                }
            }
            jobs.push((entry, reply));
        }
        let max = self.log.max_batch_bytes();
        let mut batches = Vec::with_capacity(jobs.len());
        let mut accepted = Vec::with_capacity(jobs.len());
        for (entry, reply) in jobs {
            let mut value = Vec::new();
            encode_body(&mut value, &entry);
            if value.len() + BATCH_OVERHEAD > max {
                let _ = reply.send(Err(too_large(&entry, value.len(), max)));
                continue;
            }
            batches.push(internal_log::batch([value]));
            accepted.push((entry, reply));
        }
        if accepted.is_empty() {
            return;
        }
        let outcome = self.log.write_durably(batches).await;
        if let Err(e) = outcome {
            for (_, reply) in accepted {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        {
            let mut state = write(&self.state);
            for (entry, _) in &accepted {
                apply(&mut state, entry);
            }
        }
        for (_, reply) in accepted {
            let _ = reply.send(Ok(()));
        }
        if self.log.compact_due() {
            self.compact().await;
        }
    }

    /// Writes the whole state as a snapshot and deletes what it replaces; no other write
    /// runs meanwhile (this task is the only writer).
    async fn compact(&mut self) {
        let batches = snapshot(&read(&self.state), self.log.max_batch_bytes());
        self.log.compact(batches).await;
    }
}

fn too_large(entry: &Entry, bytes: usize, max: usize) -> RpcError {
    let count = match &entry.change {
        Change::Commit(o) => o.len(),
        Change::DeleteGroup => 0,
    };
    RpcError::limit(format!(
        "the change of group {:?} ({count} offsets) takes {bytes} bytes, more than the offsets log's largest record ({} bytes, a quarter of groups.offsets_compact_bytes); commit fewer partitions at once or raise groups.offsets_compact_bytes",
        entry.group,
        max - BATCH_OVERHEAD
    ))
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

/// The whole state as the batches of a snapshot: per group and commit time, records that
/// fit a batch of at most `max_batch` bytes, so every entry keeps its own commit time.
fn snapshot(state: &OffsetMap, max_batch: usize) -> Vec<Bytes> {
    let max_value = max_batch.saturating_sub(BATCH_OVERHEAD).max(1);
    let mut values = Vec::new();
    for (group, offsets) in state {
        let mut by_time: BTreeMap<i64, Vec<(Tp, Committed)>> = BTreeMap::new();
        for (tp, c) in offsets {
            by_time
                .entry(c.commit_time_ms)
                .or_default()
                .push((tp.clone(), c.clone()));
        }
        // The fixed part of a value: kind, time, group length, group, count.
        let fixed = 15 + group.len();
        for (time_ms, entries) in by_time {
            let mut chunk = Vec::new();
            let mut size = fixed;
            for e in entries {
                let len = 18 + e.0.0.len() + e.1.metadata.len();
                if !chunk.is_empty() && size + len > max_value {
                    let full = std::mem::take(&mut chunk);
                    values.push(commit_value(group, time_ms, full));
                    size = fixed;
                }
                size += len;
                chunk.push(e);
            }
            values.push(commit_value(group, time_ms, chunk));
        }
    }
    internal_log::batches(values, max_batch)
}

fn commit_value(group: &str, time_ms: i64, offsets: Vec<(Tp, Committed)>) -> Vec<u8> {
    let mut value = Vec::new();
    encode_body(
        &mut value,
        &Entry {
            group: group.to_owned(),
            time_ms,
            change: Change::Commit(offsets),
        },
    );
    value
}

/// Appends a record's value. Lengths fit their fields: group ids and topic names are at most
/// 249 bytes, metadata at most `groups.offset_metadata_max_bytes` (1 MiB at most), and a
/// value holds one request's entries (a request is at most `limits.max_request_bytes`, 2 GiB
/// at most), so its count fits a u32.
fn encode_body(body: &mut Vec<u8>, entry: &Entry) {
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
}

/// Replays the previous release's journal. Returns the state and the number of bytes of a
/// torn tail dropped.
fn replay_journal(bytes: &[u8]) -> Result<(OffsetMap, usize), String> {
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

    /// A journal of the previous release, framed as `docs/storage-format.md` describes it.
    fn journal(entries: &[Entry]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&VERSION.to_le_bytes());
        for e in entries {
            let mut body = Vec::new();
            encode_body(&mut body, e);
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        buf
    }

    fn replay_batches(batches: &[Bytes]) -> OffsetMap {
        let mut state = OffsetMap::new();
        for b in batches {
            let batch = runnel_storage::batch::RecordBatch::new(b.clone(), usize::MAX).unwrap();
            for r in batch.records().unwrap() {
                apply(
                    &mut state,
                    &decode_body(&r.unwrap().value.unwrap()).unwrap(),
                );
            }
        }
        state
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
        let (state, dropped) = replay_journal(&bytes).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(state.len(), 1);
        let c = &state["g"][&("t".to_owned(), 0)];
        assert_eq!(
            (c.offset, c.metadata.as_str(), c.commit_time_ms),
            (7, "m7", 11)
        );
        // A snapshot keeps exactly the state, commit times included, however small its
        // batches.
        let mut bigger = state.clone();
        for p in 0..50 {
            bigger.get_mut("g").unwrap().insert(
                ("u".to_owned(), p),
                Committed {
                    offset: u64::from(p),
                    metadata: String::new(),
                    commit_time_ms: 99 + i64::from(p % 3),
                },
            );
        }
        for max in [256, 1 << 20] {
            let batches = snapshot(&bigger, max);
            assert!(batches.iter().all(|b| b.len() <= max), "max {max}");
            assert_eq!(replay_batches(&batches), bigger, "max {max}");
        }
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_elsewhere_is_refused() {
        let whole = journal(&[commit("g", "t", 0, 5, 10), commit("g", "t", 0, 9, 11)]);
        let first_end = journal(&[commit("g", "t", 0, 5, 10)]).len();
        for cut in first_end + 1..whole.len() {
            let (state, dropped) = replay_journal(&whole[..cut]).unwrap();
            assert_eq!(dropped, cut - first_end, "cut at {cut}");
            assert_eq!(state["g"][&("t".to_owned(), 0)].offset, 5);
        }
        // A last record with a bad CRC (a torn write that reached full length) is a tail too.
        let mut bad_tail = whole.clone();
        *bad_tail.last_mut().unwrap() ^= 0xff;
        assert_eq!(
            replay_journal(&bad_tail).unwrap().0["g"][&("t".to_owned(), 0)].offset,
            5
        );
        // Zeros after the last record (a power loss after the size grew) are a tail.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(replay_journal(&zeros).unwrap().1, 64);
        // A bad CRC in the middle is damage.
        let mut middle = whole.clone();
        middle[first_end - 1] ^= 0xff;
        assert!(replay_journal(&middle).unwrap_err().contains("CRC"));
        assert!(replay_journal(b"nope, not a journal").is_err());
    }

    async fn commit_one(store: &OffsetStore, group: &str, partition: u32, offset: u64) {
        let slot = store.slot().await.unwrap();
        let change = Change::Commit(vec![(
            ("t".into(), partition),
            Committed {
                offset,
                metadata: String::new(),
                commit_time_ms: 1_000,
            },
        )]);
        OffsetStore::wait(OffsetStore::submit(slot, group, 1_000, change, Vec::new()))
            .await
            .unwrap();
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("internal").join(OFFSETS_LOG))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count()
    }

    #[tokio::test]
    async fn commits_are_durable_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let env = LogEnv::default();
        let store = OffsetStore::open(dir.path(), 4096, &env).unwrap();
        store.start();
        for i in 0..300u64 {
            commit_one(&store, "g", (i % 3) as u32, i).await;
        }
        commit_one(&store, "gone", 0, 1).await;
        assert!(store.has_group("gone"));
        let slot = store.slot().await.unwrap();
        OffsetStore::wait(OffsetStore::submit(
            slot,
            "gone",
            6,
            Change::DeleteGroup,
            Vec::new(),
        ))
        .await
        .unwrap();
        assert_eq!(store.get("g", &("t".into(), 2)).unwrap().offset, 299);
        // 300 commits of about 130 bytes in segments of 4 KiB: compaction keeps a few.
        let segments = segment_files(dir.path());
        assert!(segments <= 4, "{segments} segments left after compaction");
        // A change larger than the log's largest record is refused, alone.
        let slot = store.slot().await.unwrap();
        let many = (0..400)
            .map(|p| {
                (
                    ("t".to_owned(), p),
                    Committed {
                        offset: 1,
                        metadata: String::new(),
                        commit_time_ms: 7,
                    },
                )
            })
            .collect();
        let err = OffsetStore::wait(OffsetStore::submit(
            slot,
            "big",
            7,
            Change::Commit(many),
            Vec::new(),
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code, runnel_proto::pb::ErrorCode::LimitExceeded);
        assert!(
            err.message.contains("groups.offsets_compact_bytes"),
            "{err}"
        );
        store.close().await;
        assert!(store.slot().await.is_err());

        let again = OffsetStore::open(dir.path(), 4096, &env).unwrap();
        assert_eq!(again.groups(), ["g"]);
        let offsets: Vec<u64> = again.group("g").values().map(|c| c.offset).collect();
        assert_eq!(offsets, [297, 298, 299]);
    }

    #[tokio::test]
    async fn the_previous_releases_journal_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups");
        std::fs::create_dir(&groups).unwrap();
        let mut old = journal(&[commit("g", "t", 0, 5, 10), commit("h", "t", 1, 8, 12)]);
        old.extend_from_slice(&[48, 0, 0, 0, 1, 2, 3]);
        std::fs::write(groups.join("offsets.log"), &old).unwrap();
        let env = LogEnv::default();
        let store = OffsetStore::open(dir.path(), 1 << 20, &env).unwrap();
        assert_eq!(store.get("g", &("t".into(), 0)).unwrap().offset, 5);
        assert_eq!(store.get("h", &("t".into(), 1)).unwrap().commit_time_ms, 12);
        assert!(
            !groups.exists(),
            "the old journal and its directory are gone"
        );
        store.start();
        commit_one(&store, "g", 0, 6).await;
        store.close().await;

        // A leftover journal next to a migrated log (a crash before its deletion) is not
        // replayed again: the log wins and the file goes.
        std::fs::create_dir(&groups).unwrap();
        std::fs::write(groups.join("offsets.log"), &old).unwrap();
        let again = OffsetStore::open(dir.path(), 1 << 20, &env).unwrap();
        assert_eq!(again.get("g", &("t".into(), 0)).unwrap().offset, 6);
        assert!(!groups.exists());

        // A damaged journal stops the start, naming the file.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(other.path().join("groups")).unwrap();
        std::fs::write(other.path().join("groups/offsets.log"), b"nope").unwrap();
        let err = OffsetStore::open(other.path(), 1 << 20, &env).unwrap_err();
        assert!(err.to_string().contains("offsets.log"), "{err}");
    }
}
