//! The [`Consumer`]: records of assigned partitions as an async [`Stream`], standalone or as a
//! member of a consumer group, with offset commits.
//!
//! Each assigned partition has a reader task (`fetcher.rs`) on the broker's push
//! subscription (`Subscribe`); readers hand decoded, decompressed records to the consumer
//! through one bounded channel, so a slow application holds back the readers, the readers
//! hold back HTTP/2, and the broker stops reading ahead: memory stays bounded.
//!
//! **Consumed** means *returned by the stream and followed by another poll*: a record counts
//! as consumed once the application asks for the next one (as Kafka's poll loop does), so an
//! application that processes records one at a time never commits a record it has not
//! finished. Commits store the offset of the next record to consume.
//!
//! In a group ([`Consumer::subscribe`]), the broker assigns partitions; the consumer applies
//! assignments while the application polls the stream. For a revocation it stops reading
//! the partition, drops its buffered records, commits what was consumed (with auto-commit),
//! and only then releases the partition, so the next owner resumes exactly there: delivery
//! is at least once and nothing is skipped.

mod fetcher;
mod group;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use runnel_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::record::ConsumerRecord;
use fetcher::{Fetcher, FetcherConfig};
use group::{GroupCommand, GroupEvent, GroupSettings, GroupTask};

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// A topic and partition.
    pub fn new(topic: impl AsRef<str>, partition: u32) -> Self {
        Self {
            topic: topic.as_ref().into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still stored.
    Earliest,
    /// Only records appended from now on.
    Latest,
    /// This offset (the log start to the log end, inclusive).
    Offset(u64),
    /// The first batch whose newest record is at or after this time (ms since the Unix
    /// epoch).
    Timestamp(i64),
    /// The consumer group's committed offset (needs a `group_id`); without one,
    /// `auto_offset_reset` decides.
    Committed,
}

/// What to do when there is no committed offset, or the position has left the log
/// (retention deleted it). A consumer of a group whose position is past the log end (the
/// broker lost records it had read to a power cut) resumes from the group's committed offset
/// instead, when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Start from the oldest record still stored: nothing stored is skipped.
    #[default]
    Earliest,
    /// Start from the log end.
    Latest,
    /// Report an error in the stream and stop reading the partition.
    Error,
}

/// A change of a group member's partitions, as given to [`ConsumerConfig::on_rebalance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// These partitions are now the consumer's; their records follow.
    Assigned(Vec<TopicPartition>),
    /// These partitions were taken away after their offsets were committed (with
    /// auto-commit); no more of their records will be returned.
    Revoked(Vec<TopicPartition>),
    /// These partitions were lost without a commit (the member was removed from the group,
    /// for example after its connection broke); another member may already read them.
    Lost(Vec<TopicPartition>),
}

/// A function told of every assignment change, called in the task that polls the consumer.
pub type RebalanceListener = Arc<dyn Fn(&Rebalance) + Send + Sync>;

/// The consumer's settings.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The consumer group: needed for [`Consumer::subscribe`], commits and
    /// [`StartAt::Committed`].
    pub group_id: Option<String>,
    /// A name for this client, shown in group descriptions.
    pub client_id: String,
    /// A stable id for static group membership: a restarted instance with the same id gets
    /// its partitions back without a rebalance within its session timeout.
    pub instance_id: Option<String>,
    /// The group session timeout; `None` takes the broker's default.
    pub session_timeout: Option<Duration>,
    /// The assignment strategy ("sticky", "range", "roundrobin"); empty for the broker's.
    pub assignor: String,
    /// Commit what was consumed at this interval (and on revocation and close); `None` for
    /// manual commits only. Like Kafka's, auto-commits happen while the application polls
    /// the stream (a record counts as consumed once the next one is asked for).
    pub auto_commit_interval: Option<Duration>,
    /// Where to start without a committed offset, or when the position left the log.
    pub auto_offset_reset: OffsetReset,
    /// The most batch bytes per pushed response; 0 for the broker's default (1 MiB).
    pub max_bytes_per_response: u32,
    /// Decoded responses buffered between the readers and the application.
    pub buffered_responses: usize,
    /// The largest decompressed records section accepted, in bytes.
    pub max_decompressed_bytes: usize,
    /// Told of assignment changes in a group.
    pub on_rebalance: Option<RebalanceListener>,
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group_id", &self.group_id)
            .field("client_id", &self.client_id)
            .field("instance_id", &self.instance_id)
            .field("session_timeout", &self.session_timeout)
            .field("assignor", &self.assignor)
            .field("auto_commit_interval", &self.auto_commit_interval)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("max_bytes_per_response", &self.max_bytes_per_response)
            .field("buffered_responses", &self.buffered_responses)
            .field("max_decompressed_bytes", &self.max_decompressed_bytes)
            .field("on_rebalance", &self.on_rebalance.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group_id: None,
            client_id: "runnel-client".to_owned(),
            instance_id: None,
            session_timeout: None,
            assignor: String::new(),
            auto_commit_interval: Some(Duration::from_secs(5)),
            auto_offset_reset: OffsetReset::Earliest,
            max_bytes_per_response: 0,
            buffered_responses: 8,
            max_decompressed_bytes: 64 << 20,
            on_rebalance: None,
        }
    }
}

impl ConsumerConfig {
    /// The default settings for a member of `group`.
    pub fn group(group: impl Into<String>) -> Self {
        Self {
            group_id: Some(group.into()),
            ..Self::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.buffered_responses == 0 {
            return Err(ClientError::Config(
                "buffered_responses must be at least 1".into(),
            ));
        }
        if self.auto_commit_interval.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::Config(
                "auto_commit_interval must not be zero".into(),
            ));
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ClientError::Config("group_id must not be empty".into()));
        }
        Ok(())
    }
}

/// Records handed from a reader to the consumer.
#[derive(Debug)]
pub(crate) struct Chunk {
    tp: TopicPartition,
    generation: u64,
    /// The offset the reader's start resolved to, on its first chunk.
    start: Option<u64>,
    records: Result<VecDeque<ConsumerRecord>>,
}

/// The offset after the last record of a partition consumed, shared by its `Assigned` and
/// the chunk being returned from it: settling a returned record then costs no map lookup.
#[derive(Debug, Clone)]
struct Position(Arc<AtomicU64>);

impl Position {
    /// Stands for "nothing consumed"; offsets stay far below it.
    const NONE: u64 = u64::MAX;

    fn new(at: Option<u64>) -> Self {
        Self(Arc::new(AtomicU64::new(at.unwrap_or(Self::NONE))))
    }

    fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&at| at != Self::NONE)
    }

    fn set(&self, at: Option<u64>) {
        self.0.store(at.unwrap_or(Self::NONE), Ordering::Relaxed);
    }
}

/// A chunk of a live partition generation, returned record by record.
#[derive(Debug)]
struct Current {
    tp: TopicPartition,
    /// The partition's consumed position (the same cell as its `Assigned`'s).
    consumed: Position,
    records: VecDeque<ConsumerRecord>,
    /// The offset after the record returned last; consumed once the application polls
    /// again.
    returned: Option<u64>,
}

/// One assigned partition.
#[derive(Debug)]
struct Assigned {
    /// Chunks of other generations are stale (the partition was sought, paused or
    /// reassigned since).
    generation: u64,
    reader: Option<JoinHandle<()>>,
    /// Where to start when the reader is (re)started and nothing was consumed.
    start: StartAt,
    /// The offset after the last record consumed.
    consumed: Position,
    /// The consumed offset last committed.
    committed: Option<u64>,
    paused: bool,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// Reads records from assigned partitions, as a [`Stream`].
///
/// ```no_run
/// # async fn example() -> Result<(), runnel_client::ClientError> {
/// use futures_util::StreamExt as _;
/// use runnel_client::{Client, ConsumerConfig};
/// let client = Client::connect("127.0.0.1:7171").await?;
/// let mut consumer = client.consumer(ConsumerConfig::group("payments"))?;
/// consumer.subscribe(&["orders"])?;
/// while let Some(record) = consumer.next().await {
///     let record = record?;
///     println!("{}/{} at {}: {:?}", record.topic, record.partition, record.offset, record.value);
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    conn: Arc<Connection>,
    config: ConsumerConfig,
    fetcher_config: Arc<FetcherConfig>,
    tx: mpsc::Sender<Chunk>,
    rx: mpsc::Receiver<Chunk>,
    parts: HashMap<TopicPartition, Assigned>,
    next_generation: u64,
    /// The chunk being returned record by record; always of a partition's current
    /// generation (whatever ends a generation drops it).
    current: Option<Current>,
    group: Option<GroupLink>,
    auto_commit: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The consumer's side of its group task.
struct GroupLink {
    commands: mpsc::Sender<GroupCommand>,
    events: mpsc::Receiver<GroupEvent>,
    /// Commands that found the channel full, sent on the next poll.
    outbox: VecDeque<GroupCommand>,
    subscribed: bool,
    task: JoinHandle<()>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assignment", &self.assignment())
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Readers stop with their `Assigned`. The group task ends when its command channel
        // closes, which ends the membership without a commit (like a crash); use `close` to
        // commit and leave cleanly.
        if let Some(g) = &self.group
            && !g.subscribed
        {
            g.task.abort();
        }
    }
}

impl Consumer {
    pub(crate) fn new(conn: Arc<Connection>, config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.buffered_responses);
        let fetcher_config = Arc::new(FetcherConfig {
            group: config.group_id.clone(),
            auto_offset_reset: config.auto_offset_reset,
            max_bytes_per_response: config.max_bytes_per_response,
            max_decompressed_bytes: config.max_decompressed_bytes,
        });
        let group = config.group_id.as_ref().map(|group| {
            let (commands, commands_rx) = mpsc::channel(64);
            let (events_tx, events) = mpsc::channel(16);
            let task = tokio::spawn(
                GroupTask {
                    conn: conn.clone(),
                    settings: GroupSettings {
                        group: group.clone(),
                        client_id: config.client_id.clone(),
                        instance_id: config.instance_id.clone(),
                        session_timeout: config.session_timeout,
                        assignor: config.assignor.clone(),
                    },
                    commands: commands_rx,
                    events: events_tx,
                }
                .run(),
            );
            GroupLink {
                commands,
                events,
                outbox: VecDeque::new(),
                subscribed: false,
                task,
            }
        });
        let auto_commit = match (&config.group_id, config.auto_commit_interval) {
            (Some(_), Some(interval)) => Some(Box::pin(tokio::time::sleep(interval))),
            _ => None,
        };
        Ok(Self {
            conn,
            config,
            fetcher_config,
            tx,
            rx,
            parts: HashMap::new(),
            next_generation: 0,
            current: None,
            group,
            auto_commit,
        })
    }

    /// Joins the consumer group (`group_id`) for `topics`: the broker assigns partitions,
    /// which are read from their committed offsets (or `auto_offset_reset`). Partitions
    /// assigned by hand are dropped.
    ///
    /// # Errors
    /// [`ClientError::Config`] without a `group_id`.
    pub fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        let Some(group) = &mut self.group else {
            return Err(ClientError::Config(
                "subscribe needs a group_id in the consumer config".into(),
            ));
        };
        if topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        group.subscribed = true;
        group.outbox.push_back(GroupCommand::Subscribe(
            topics.iter().map(|t| (*t).to_owned()).collect(),
        ));
        self.flush_outbox();
        self.parts.clear();
        self.current = None;
        Ok(())
    }

    /// Reads `tp` (standalone, not through the group), starting at `start`. Assigning a
    /// partition again restarts it there.
    ///
    /// # Errors
    /// [`ClientError::Config`] for [`StartAt::Committed`] without a `group_id`, or when
    /// subscribed to a group.
    pub fn assign(&mut self, tp: TopicPartition, start: StartAt) -> Result<()> {
        if self.group.as_ref().is_some_and(|g| g.subscribed) {
            return Err(ClientError::Config(
                "the consumer is subscribed to a group; the group assigns its partitions".into(),
            ));
        }
        if start == StartAt::Committed && self.config.group_id.is_none() {
            return Err(ClientError::Config(
                "StartAt::Committed needs a group_id in the consumer config".into(),
            ));
        }
        self.start_partition(tp, start);
        Ok(())
    }

    /// Reads every partition of `topic`, starting at `start`.
    ///
    /// # Errors
    /// As [`Consumer::assign`]; the broker's error if the topic cannot be described.
    pub async fn assign_topic(
        &mut self,
        topic: &str,
        start: StartAt,
    ) -> Result<Vec<TopicPartition>> {
        let description = crate::admin::Admin::new(self.conn.clone())
            .describe_topic(topic)
            .await?;
        let tps: Vec<_> = (0..description.partition_count)
            .map(|p| TopicPartition::new(topic, p))
            .collect();
        for tp in &tps {
            self.assign(tp.clone(), start)?;
        }
        Ok(tps)
    }

    /// Stops reading `tp`.
    pub fn unassign(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
        self.drop_current(tp);
    }

    /// Restarts reading `tp` at `to`; records buffered from the old position are dropped.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] if `tp` is not assigned.
    pub fn seek(&mut self, tp: &TopicPartition, to: StartAt) -> Result<()> {
        let Some(part) = self.parts.get_mut(tp) else {
            return Err(ClientError::InvalidArgument(format!(
                "{tp} is not assigned"
            )));
        };
        part.start = to;
        part.consumed.set(match to {
            StartAt::Offset(o) => Some(o),
            _ => None,
        });
        let paused = part.paused;
        if !paused {
            self.restart(tp);
        }
        Ok(())
    }

    /// Stops returning records of `tp` until [`Consumer::resume`]; reading stops too (the
    /// records buffered are dropped and read again on resume).
    pub fn pause(&mut self, tp: &TopicPartition) {
        self.settle_returned();
        self.next_generation += 1;
        let generation = self.next_generation;
        if let Some(part) = self.parts.get_mut(tp) {
            part.paused = true;
            part.generation = generation;
            if let Some(r) = part.reader.take() {
                r.abort();
            }
        }
        self.drop_current(tp);
    }

    /// Resumes a paused partition where the application left it.
    pub fn resume(&mut self, tp: &TopicPartition) {
        self.settle_returned();
        if let Some(part) = self.parts.get_mut(tp)
            && part.paused
        {
            part.paused = false;
            self.restart(tp);
        }
    }

    /// The partitions assigned, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut tps: Vec<_> = self.parts.keys().cloned().collect();
        tps.sort();
        tps
    }

    /// The offset after the last record of `tp` the application consumed, if any.
    pub fn position(&self, tp: &TopicPartition) -> Option<u64> {
        let part = self.parts.get(tp)?;
        match &self.current {
            Some(c) if c.tp == *tp && c.returned.is_some() => c.returned,
            _ => part.consumed.get(),
        }
    }

    /// Commits the position of every assigned partition: everything returned by the stream
    /// so far counts as processed. Waits until the broker has stored the offsets durably.
    ///
    /// # Errors
    /// [`ClientError::Config`] without a `group_id`; the broker's error (`FENCED_MEMBER` for
    /// a partition that moved to another member).
    pub async fn commit(&mut self) -> Result<()> {
        if let Some(c) = &self.current
            && let Some(next) = c.returned
        {
            c.consumed.set(Some(next));
        }
        let offsets = self.uncommitted();
        self.commit_offsets(&offsets).await?;
        for (tp, offset) in offsets {
            if let Some(part) = self.parts.get_mut(&tp) {
                part.committed = Some(offset);
            }
        }
        Ok(())
    }

    /// Commits the offset after `record`: it and everything before it in its partition are
    /// processed.
    ///
    /// # Errors
    /// As [`Consumer::commit`].
    pub async fn commit_record(&mut self, record: &ConsumerRecord) -> Result<()> {
        let tp = TopicPartition {
            topic: record.topic.clone(),
            partition: record.partition,
        };
        self.commit_offsets(&[(tp, record.offset + 1)]).await
    }

    /// Commits explicit offsets (each the offset of the next record to process).
    ///
    /// # Errors
    /// As [`Consumer::commit`].
    pub async fn commit_offsets(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let Some(group) = &mut self.group else {
            return Err(ClientError::Config(
                "commits need a group_id in the consumer config".into(),
            ));
        };
        let (reply, answer) = oneshot::channel();
        group
            .commands
            .send(GroupCommand::Commit {
                offsets: offsets.to_vec(),
                reply: Some(reply),
            })
            .await
            .map_err(|_| ClientError::Closed("consumer group task"))?;
        let r = answer
            .await
            .map_err(|_| ClientError::Closed("consumer group task"))?;
        if r.is_ok() {
            for (tp, offset) in offsets {
                if let Some(part) = self.parts.get_mut(tp) {
                    part.committed = Some(part.committed.map_or(*offset, |c| c.max(*offset)));
                }
            }
        }
        r
    }

    /// The group's committed offsets for `partitions` (`None` where there is none).
    ///
    /// # Errors
    /// [`ClientError::Config`] without a `group_id`; transport errors.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Option<u64>)>> {
        let Some(group) = &self.config.group_id else {
            return Err(ClientError::Config(
                "committed offsets need a group_id".into(),
            ));
        };
        let offsets = crate::admin::Admin::new(self.conn.clone())
            .fetch_committed(group, partitions)
            .await?;
        Ok(partitions
            .iter()
            .map(|tp| {
                let found = offsets
                    .iter()
                    .find(|o| *o.topic == *tp.topic && o.partition == tp.partition)
                    .and_then(|o| o.offset);
                (tp.clone(), found)
            })
            .collect())
    }

    /// Stops reading; with auto-commit, commits what was consumed; leaves the group (a static
    /// member, with an `instance_id`, only closes its membership stream, so that its next
    /// start gets its partitions back without a rebalance).
    ///
    /// # Errors
    /// The commit's error (the consumer is closed all the same).
    pub async fn close(mut self) -> Result<()> {
        self.settle_returned();
        let offsets = if self.config.auto_commit_interval.is_some() {
            self.uncommitted()
        } else {
            Vec::new()
        };
        self.parts.clear();
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let sent = group
            .commands
            .send(GroupCommand::Leave { offsets, reply })
            .await;
        if sent.is_err() {
            return Err(ClientError::Closed("consumer group task"));
        }
        answer
            .await
            .map_err(|_| ClientError::Closed("consumer group task"))?
    }

    /// Positions consumed but not committed yet.
    fn uncommitted(&self) -> Vec<(TopicPartition, u64)> {
        let mut out: Vec<_> = self
            .parts
            .iter()
            .filter_map(|(tp, p)| match p.consumed.get() {
                Some(c) if p.committed != Some(c) => Some((tp.clone(), c)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    fn start_partition(&mut self, tp: TopicPartition, start: StartAt) {
        self.parts.insert(
            tp.clone(),
            Assigned {
                generation: 0,
                reader: None,
                start,
                consumed: Position::new(match start {
                    StartAt::Offset(o) => Some(o),
                    _ => None,
                }),
                committed: None,
                paused: false,
            },
        );
        self.restart(&tp);
    }

    /// (Re)starts the reader of `tp` from its consumed position (or its start).
    fn restart(&mut self, tp: &TopicPartition) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.drop_current(tp);
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if let Some(r) = part.reader.take() {
            r.abort();
        }
        part.generation = generation;
        let start = part.consumed.get().map_or(part.start, StartAt::Offset);
        part.reader = Some(tokio::spawn(
            Fetcher {
                conn: self.conn.clone(),
                config: self.fetcher_config.clone(),
                tp: tp.clone(),
                generation,
                start,
                tx: self.tx.clone(),
            }
            .run(),
        ));
    }

    /// The record returned last is consumed now that the application came back.
    fn settle_returned(&mut self) {
        if let Some(c) = &mut self.current
            && let Some(next) = c.returned.take()
        {
            c.consumed.set(Some(next));
        }
    }

    /// Drops the chunk being returned if it is `tp`'s: its generation has ended, and a
    /// record returned from it but not settled does not count for the new position.
    fn drop_current(&mut self, tp: &TopicPartition) {
        if self.current.as_ref().is_some_and(|c| c.tp == *tp) {
            self.current = None;
        }
    }

    fn flush_outbox(&mut self) {
        let Some(group) = &mut self.group else {
            return;
        };
        while let Some(command) = group.outbox.pop_front() {
            match group.commands.try_send(command) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(command)) => {
                    group.outbox.push_front(command);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    group.outbox.clear();
                    break;
                }
            }
        }
    }

    fn notify(&self, event: Rebalance) {
        tracing::debug!(?event, "rebalance");
        if let Some(listener) = &self.config.on_rebalance {
            listener(&event);
        }
    }

    /// Applies group events; returns an error for the application, if any.
    fn poll_group(&mut self, cx: &mut Context<'_>) -> Option<ClientError> {
        loop {
            let event = match &mut self.group {
                Some(g) => match g.events.poll_recv(cx) {
                    Poll::Ready(Some(e)) => e,
                    _ => return None,
                },
                None => return None,
            };
            match event {
                GroupEvent::Assignment {
                    epoch,
                    assigned,
                    revoke,
                } => self.apply_assignment(epoch, assigned, revoke),
                GroupEvent::Lost(error) => {
                    let lost = self.assignment();
                    self.parts.clear();
                    self.current = None;
                    if !lost.is_empty() {
                        tracing::info!(%error, partitions = lost.len(), "partitions lost");
                        self.notify(Rebalance::Lost(lost));
                    }
                }
                GroupEvent::Error(e) => return Some(e),
            }
        }
    }

    fn apply_assignment(
        &mut self,
        epoch: u32,
        assigned: Vec<TopicPartition>,
        revoke: Vec<TopicPartition>,
    ) {
        let auto = self.config.auto_commit_interval.is_some();
        // Revoked: stop reading, drop what is buffered, commit what was consumed, release.
        let mut revoked = Vec::new();
        let mut offsets = Vec::new();
        for tp in &revoke {
            if let Some(part) = self.parts.remove(tp) {
                if auto
                    && let Some(c) = part.consumed.get()
                    && part.committed != Some(c)
                {
                    offsets.push((tp.clone(), c));
                }
                revoked.push(tp.clone());
            }
        }
        // Owned but in neither list: no longer ours (a complete assignment lists everything).
        let lost: Vec<TopicPartition> = self
            .parts
            .keys()
            .filter(|tp| !assigned.contains(tp) && !revoke.contains(tp))
            .cloned()
            .collect();
        for tp in &lost {
            self.parts.remove(tp);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| !self.parts.contains_key(&c.tp))
        {
            self.current = None;
        }
        if !revoked.is_empty() {
            self.notify(Rebalance::Revoked(revoked));
        }
        if !lost.is_empty() {
            self.notify(Rebalance::Lost(lost));
        }
        if !revoke.is_empty()
            && let Some(g) = &mut self.group
        {
            g.outbox.push_back(GroupCommand::Release {
                epoch,
                partitions: revoke,
                offsets,
            });
        }
        let new: Vec<TopicPartition> = assigned
            .into_iter()
            .filter(|tp| !self.parts.contains_key(tp))
            .collect();
        for tp in &new {
            self.start_partition(tp.clone(), StartAt::Committed);
        }
        if !new.is_empty() {
            self.notify(Rebalance::Assigned(new));
        }
        self.flush_outbox();
    }

    fn poll_auto_commit(&mut self, cx: &mut Context<'_>) {
        let Some(interval) = self.config.auto_commit_interval else {
            return;
        };
        let Some(timer) = &mut self.auto_commit else {
            return;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return;
        }
        timer.as_mut().reset(tokio::time::Instant::now() + interval);
        // Register the new deadline with the waker.
        let _ = timer.as_mut().poll(cx);
        let offsets = self.uncommitted();
        if offsets.is_empty() {
            return;
        }
        for (tp, offset) in &offsets {
            if let Some(part) = self.parts.get_mut(tp) {
                part.committed = Some(*offset);
            }
        }
        if let Some(g) = &mut self.group {
            g.outbox.push_back(GroupCommand::Commit {
                offsets,
                reply: None,
            });
        }
        self.flush_outbox();
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumerRecord>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.settle_returned();
        this.flush_outbox();
        if let Some(e) = this.poll_group(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        this.poll_auto_commit(cx);
        loop {
            if let Some(c) = &mut this.current {
                if let Some(record) = c.records.pop_front() {
                    c.returned = Some(record.offset + 1);
                    return Poll::Ready(Some(Ok(record)));
                }
                // Exhausted; the record returned last was settled above.
                this.current = None;
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    let Some(part) = this
                        .parts
                        .get_mut(&chunk.tp)
                        .filter(|p| p.generation == chunk.generation && !p.paused)
                    else {
                        continue;
                    };
                    if let Some(start) = chunk.start
                        && part.consumed.get().is_none()
                    {
                        part.consumed.set(Some(start));
                    }
                    match chunk.records {
                        Ok(records) => {
                            this.current = Some(Current {
                                consumed: part.consumed.clone(),
                                tp: chunk.tp,
                                records,
                                returned: None,
                            })
                        }
                        Err(e) => {
                            // The reader has stopped; the partition stays assigned but idle.
                            part.reader = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                // The consumer holds a sender itself, so the channel never closes.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A group's committed offset for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (the next record to process), if any.
    pub offset: Option<u64>,
    /// The metadata stored with it.
    pub metadata: String,
    /// When it was committed, ms since the Unix epoch (0 if never).
    pub commit_time_ms: i64,
}

impl CommittedOffset {
    pub(crate) fn from_pb(o: pb::CommittedOffset) -> Self {
        Self {
            topic: o.topic,
            partition: o.partition,
            offset: o.offset,
            metadata: o.metadata,
            commit_time_ms: o.commit_time_ms,
        }
    }
}

pub(crate) use fetcher::decode_batches;
pub(crate) use group::{flatten, group_by_topic};
