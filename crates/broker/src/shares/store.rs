//! The durable state of share groups: the internal log `<data_dir>/internal/share_groups`
//! (`internal_log.rs`; `docs/storage-format.md`, "Share groups").
//!
//! Every change is one record: a group's settings, a share partition's changed records and
//! start offset, a share partition's whole state (in snapshots), or a group's deletion. All of
//! them restate rather than modify (a range of records *is* in a state, the start offset *is*
//! a value, a snapshot *replaces* a partition), so the log is compacted by snapshot.
//!
//! **Order.** A change is queued into the outbox under the lock of the group it changes, in
//! the order it was made in memory, and the one writer task writes the outbox in that order,
//! so replaying the log gives the state memory had. The writer takes everything queued
//! meanwhile, writes it with one call, waits for the storage group commit, and only then
//! answers: an acknowledgement is answered once it is durable. The outbox is bounded by its
//! producers: a request queues one change and waits for it; the lock-expiry tick queues its
//! changes and waits for them before it runs again.
//!
//! A record's value, little-endian: `kind` u8, `group_len` u16, `group` (UTF-8), then by kind:
//!
//! | kind | body |
//! |---|---|
//! | 1 settings | `lock_ms` u64 (0: unset), `max_deliveries` u16 (0: unset), `backoff_count` u16 (`u16::MAX`: unset) and as many `delay_ms` u64, `dead_letter_len` u16 and `dead_letter_topic` (empty: none), `start` u8 (0 unset, 1 earliest, 2 latest) |
//! | 2 partition changes | `topic_len` u16, `topic`, `partition` u32, `start` u64 (`u64::MAX`: unchanged), `count` u32, `count` ranges |
//! | 3 partition state | as 2, the ranges covering the whole window (done records included): replaces the partition |
//! | 4 delete group | nothing |
//!
//! A range: `first` u64, `last` u64, `state` u8, then for state 1 (available) `deliveries`
//! u16 and `not_before_ms` i64; for 2 (dead-lettering) `deliveries` u16, `reason_len` u16,
//! `reason`, and `copied` u8: 0, or 1 followed by the dead-letter partition u32 and its log
//! end offset before the copy u64; for 3 (done) nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};

use runnel_storage::LogEnv;
use tokio::sync::{Notify, oneshot};
use tracing::warn;

use super::state::{Change, Copy, RecordState};
use crate::error::{Error, RpcError};
use crate::internal_log::{self, InternalLog};

/// The internal log of share groups, under `internal/`.
pub const SHARES_LOG: &str = "share_groups";
const KIND_SETTINGS: u8 = 1;
const KIND_CHANGES: u8 = 2;
const KIND_PARTITION: u8 = 3;
const KIND_DELETE: u8 = 4;
const STATE_AVAILABLE: u8 = 1;
const STATE_DEAD_LETTERING: u8 = 2;
const STATE_DONE: u8 = 3;
const UNCHANGED: u64 = u64::MAX;
/// `backoff_count` of a group without a backoff of its own.
const UNSET_STEPS: u16 = u16::MAX;
/// Longest reason text stored with a dead-lettering record, bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// Where a partition's first unconsumed offset comes from when the group first reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The log start: every stored record.
    Earliest,
    /// The log end: records produced from then on (Kafka's default).
    Latest,
}

/// A share group's own settings, as stored: each unset field follows the broker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Acquisition lock duration, ms.
    pub lock_ms: Option<u64>,
    /// Deliveries after which a record is dead-lettered (or archived).
    pub max_deliveries: Option<u16>,
    /// Redelivery delays, ms: the n-th after the n-th delivery.
    pub backoff_ms: Option<Vec<u64>>,
    /// The dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Where a partition starts when the group first reads it.
    pub reset: Option<Reset>,
}

/// One record of the log, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A group's settings.
    Settings(Settings),
    /// Changed records (and maybe the start offset) of one partition.
    Changes {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The new start offset, if it moved.
        start: Option<u64>,
        /// The changed ranges.
        ranges: Vec<Change>,
    },
    /// The whole state of one partition (a snapshot's): replaces what was known.
    Partition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The start offset.
        start: u64,
        /// Every run of the window.
        ranges: Vec<Change>,
    },
    /// The group is deleted.
    Delete,
}

/// Encodes a record's value.
pub fn encode(group: &str, entry: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    let kind = match entry {
        Entry::Settings(_) => KIND_SETTINGS,
        Entry::Changes { .. } => KIND_CHANGES,
        Entry::Partition { .. } => KIND_PARTITION,
        Entry::Delete => KIND_DELETE,
    };
    b.push(kind);
    put_str(&mut b, group);
    match entry {
        Entry::Settings(s) => {
            b.extend_from_slice(&s.lock_ms.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&s.max_deliveries.unwrap_or(0).to_le_bytes());
            match &s.backoff_ms {
                None => b.extend_from_slice(&UNSET_STEPS.to_le_bytes()),
                Some(steps) => {
                    // At most MAX_BACKOFF_STEPS entries (checked when set).
                    b.extend_from_slice(&(steps.len() as u16).to_le_bytes());
                    for d in steps {
                        b.extend_from_slice(&d.to_le_bytes());
                    }
                }
            }
            put_str(&mut b, s.dead_letter_topic.as_deref().unwrap_or(""));
            b.push(match s.reset {
                None => 0,
                Some(Reset::Earliest) => 1,
                Some(Reset::Latest) => 2,
            });
        }
        Entry::Changes {
            topic,
            partition,
            start,
            ranges,
        } => put_partition(
            &mut b,
            topic,
            *partition,
            start.unwrap_or(UNCHANGED),
            ranges,
        ),
        Entry::Partition {
            topic,
            partition,
            start,
            ranges,
        } => put_partition(&mut b, topic, *partition, *start, ranges),
        Entry::Delete => {}
    }
    b
}

/// Group ids, topic names and reasons are short (checked before they get here): their
/// lengths fit a u16.
fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_partition(b: &mut Vec<u8>, topic: &str, partition: u32, start: u64, ranges: &[Change]) {
    put_str(b, topic);
    b.extend_from_slice(&partition.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    // A partition has at most max_in_flight_records ranges in flight (at most 2^20).
    b.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for r in ranges {
        b.extend_from_slice(&r.first.to_le_bytes());
        b.extend_from_slice(&r.last.to_le_bytes());
        match &r.state {
            RecordState::Available {
                deliveries,
                not_before_ms,
            } => {
                b.push(STATE_AVAILABLE);
                b.extend_from_slice(&deliveries.to_le_bytes());
                b.extend_from_slice(&not_before_ms.to_le_bytes());
            }
            RecordState::DeadLettering {
                deliveries,
                reason,
                copy,
            } => {
                b.push(STATE_DEAD_LETTERING);
                b.extend_from_slice(&deliveries.to_le_bytes());
                put_str(b, truncated(reason, MAX_REASON_BYTES));
                match copy {
                    None => b.push(0),
                    Some(c) => {
                        b.push(1);
                        b.extend_from_slice(&c.partition.to_le_bytes());
                        b.extend_from_slice(&c.from.to_le_bytes());
                    }
                }
            }
            // Acquired is never written (Change::state is durable()).
            RecordState::Done | RecordState::Acquired { .. } => b.push(STATE_DONE),
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a record's value.
///
/// # Errors
/// What is wrong with it.
pub fn decode(value: &[u8]) -> Result<(String, Entry), String> {
    let mut r = Reader { buf: value, pos: 0 };
    let kind = r.u8()?;
    let group = r.string()?;
    let entry = match kind {
        KIND_SETTINGS => {
            let lock_ms = r.u64()?;
            let max_deliveries = r.u16()?;
            let steps = r.u16()?;
            let backoff_ms = if steps == UNSET_STEPS {
                None
            } else {
                Some((0..steps).map(|_| r.u64()).collect::<Result<_, _>>()?)
            };
            let dl = r.string()?;
            let reset = match r.u8()? {
                0 => None,
                1 => Some(Reset::Earliest),
                2 => Some(Reset::Latest),
                other => return Err(format!("unknown reset {other}")),
            };
            Entry::Settings(Settings {
                lock_ms: (lock_ms != 0).then_some(lock_ms),
                max_deliveries: (max_deliveries != 0).then_some(max_deliveries),
                backoff_ms,
                dead_letter_topic: (!dl.is_empty()).then_some(dl),
                reset,
            })
        }
        KIND_CHANGES | KIND_PARTITION => {
            let topic = r.string()?;
            let partition = r.u32()?;
            let start = r.u64()?;
            let count = r.u32()?;
            let mut ranges = Vec::new();
            for _ in 0..count {
                ranges.push(r.range()?);
            }
            if kind == KIND_CHANGES {
                Entry::Changes {
                    topic,
                    partition,
                    start: (start != UNCHANGED).then_some(start),
                    ranges,
                }
            } else {
                Entry::Partition {
                    topic,
                    partition,
                    start,
                    ranges,
                }
            }
        }
        KIND_DELETE => Entry::Delete,
        other => return Err(format!("unknown kind {other}")),
    };
    if r.pos != value.len() {
        return Err(format!("{} bytes after the record", value.len() - r.pos));
    }
    Ok((group, entry))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }
    fn range(&mut self) -> Result<Change, String> {
        let first = self.u64()?;
        let last = self.u64()?;
        if last < first {
            return Err(format!("range {first}-{last} ends before it starts"));
        }
        let state = match self.u8()? {
            STATE_AVAILABLE => RecordState::Available {
                deliveries: self.u16()?,
                not_before_ms: i64::from_le_bytes(self.array()?),
            },
            STATE_DEAD_LETTERING => RecordState::DeadLettering {
                deliveries: self.u16()?,
                reason: self.string()?.into(),
                copy: match self.u8()? {
                    0 => None,
                    1 => Some(Copy {
                        partition: self.u32()?,
                        from: self.u64()?,
                    }),
                    other => return Err(format!("unknown copy flag {other}")),
                },
            },
            STATE_DONE => RecordState::Done,
            other => return Err(format!("unknown record state {other}")),
        };
        Ok(Change { first, last, state })
    }
}

/// A change waiting to be written, and whom to tell.
type Queued = (Vec<u8>, Option<oneshot::Sender<Result<(), RpcError>>>);

/// The share groups' log and its writer.
#[derive(Debug)]
pub struct Store {
    log: Arc<InternalLog>,
    outbox: Mutex<Vec<Queued>>,
    queued: Notify,
}

/// A wait for a queued change to be durable.
#[derive(Debug)]
#[must_use]
pub struct Written(Vec<oneshot::Receiver<Result<(), RpcError>>>);

impl Written {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Written(Vec::new())
    }

    /// Waits for `other` too.
    pub fn and(mut self, other: Written) -> Self {
        self.0.extend(other.0);
        self
    }

    /// Waits until every change is durable.
    ///
    /// # Errors
    /// The first write's error, or `BROKER_SHUTTING_DOWN` if the writer stopped.
    pub async fn wait(self) -> Result<(), RpcError> {
        for rx in self.0 {
            rx.await
                .unwrap_or_else(|_| Err(RpcError::shutting_down()))?;
        }
        Ok(())
    }
}

impl Store {
    /// Opens (recovering) the log under `data_dir` and calls `apply` with every record in
    /// order. Blocking.
    ///
    /// # Errors
    /// As [`InternalLog::open`] and [`InternalLog::replay`]; a record that does not decode.
    pub fn open(
        data_dir: &Path,
        compact_bytes: u64,
        env: &LogEnv,
        mut apply: impl FnMut(String, Entry),
    ) -> Result<Self, Error> {
        let log = InternalLog::open(data_dir, SHARES_LOG, compact_bytes, env, None)?;
        log.replay(|value, _| {
            let (group, entry) = decode(value)?;
            apply(group, entry);
            Ok(())
        })?;
        Ok(Store {
            log: Arc::new(log),
            outbox: Mutex::new(Vec::new()),
            queued: Notify::new(),
        })
    }

    /// Queues a change (call it under the lock of the group it changes, so changes are
    /// written in the order they were made). Does not block.
    pub fn queue(&self, group: &str, entry: &Entry) -> Written {
        let (tx, rx) = oneshot::channel();
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((encode(group, entry), Some(tx)));
        self.queued.notify_one();
        Written(vec![rx])
    }

    /// The largest record the log takes, bytes.
    pub fn max_record_bytes(&self) -> usize {
        self.log.max_batch_bytes().saturating_sub(128)
    }

    /// Writes the outbox until `stop` resolves and the outbox is empty; compacts the log
    /// with `snapshot` (every group's whole state, taken under their locks) when it is due.
    pub async fn run(
        &self,
        stop: impl std::future::Future<Output = ()>,
        snapshot: impl Fn() -> Vec<Vec<u8>>,
    ) {
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let jobs = std::mem::take(
                &mut *self
                    .outbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if jobs.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = self.queued.notified() => {}
                    () = &mut stop => stopping = true,
                }
                continue;
            }
            self.write(jobs).await;
            if self.log.compact_due() {
                self.compact(snapshot()).await;
            }
        }
    }

    async fn write(&self, jobs: Vec<Queued>) {
        let max = self.log.max_batch_bytes();
        let (values, replies): (Vec<Vec<u8>>, Vec<_>) = jobs.into_iter().unzip();
        let outcome = self
            .log
            .write_durably(internal_log::batches(values, max))
            .await;
        if let Err(e) = &outcome {
            warn!(error = %e.message, "writing share group state failed");
        }
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(outcome.clone());
        }
    }

    async fn compact(&self, values: Vec<Vec<u8>>) {
        let batches = internal_log::batches(values, self.log.max_batch_bytes());
        self.log.compact(batches).await;
    }

    /// Closes the log cleanly (blocking work on the blocking pool).
    pub async fn close(&self) {
        let log = self.log.clone();
        let closed = tokio::task::spawn_blocking(move || log.close()).await;
        if let Ok(Err(e)) = closed {
            warn!(error = %e, "closing the share groups log failed; the next start recovers it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_record_round_trips() {
        let entries = [
            Entry::Settings(Settings {
                lock_ms: Some(30_000),
                max_deliveries: Some(5),
                backoff_ms: Some(vec![1000, 10_000]),
                dead_letter_topic: Some("orders.dlq".into()),
                reset: Some(Reset::Earliest),
            }),
            Entry::Settings(Settings::default()),
            Entry::Settings(Settings {
                backoff_ms: Some(vec![]),
                ..Settings::default()
            }),
            Entry::Changes {
                topic: "orders".into(),
                partition: 3,
                start: Some(17),
                ranges: vec![
                    Change {
                        first: 17,
                        last: 20,
                        state: RecordState::Available {
                            deliveries: 2,
                            not_before_ms: 123,
                        },
                    },
                    Change {
                        first: 21,
                        last: 21,
                        state: RecordState::DeadLettering {
                            deliveries: 1,
                            reason: "bad ümlaut".into(),
                            copy: None,
                        },
                    },
                    Change {
                        first: 22,
                        last: 22,
                        state: RecordState::DeadLettering {
                            deliveries: 3,
                            reason: "".into(),
                            copy: Some(Copy {
                                partition: 2,
                                from: 99,
                            }),
                        },
                    },
                    Change {
                        first: 23,
                        last: 30,
                        state: RecordState::Done,
                    },
                ],
            },
            Entry::Partition {
                topic: "orders".into(),
                partition: 0,
                start: 5,
                ranges: vec![],
            },
            Entry::Delete,
        ];
        for e in entries {
            let value = encode("g", &e);
            assert_eq!(decode(&value).unwrap(), ("g".to_owned(), e.clone()));
            for cut in 0..value.len() {
                assert!(decode(&value[..cut]).is_err(), "{e:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let s = "é".repeat(3000);
        let t = truncated(&s, MAX_REASON_BYTES);
        assert!(t.len() <= MAX_REASON_BYTES && t.len() >= MAX_REASON_BYTES - 1);
    }
}
