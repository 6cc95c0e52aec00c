//! A group member whose membership the broker runs: `GroupService.Consume`.
//!
//! The client sends `start` once, then acknowledgements (`processed`) and maybe `leave`; the
//! broker does what a `Membership` client would do itself. It joins, keeps the member alive
//! while the stream lives (a heartbeat every heartbeat interval), and follows the member's
//! view: for each partition assigned it starts a reader (the one [`Broker::stream_partition`]
//! of `Subscribe`) from the committed offset, or the reset boundary without one; for each
//! partition revoked it stops the reader, commits what was processed and releases the
//! partition. Acknowledgements become commits of offset + 1, coalesced: one commit is in flight
//! at a time and the acknowledgements that arrive meanwhile go into the next. A commit that
//! fails as a whole ends the stream with its error.
//!
//! Each partition read counts against `max_subscriptions`, as a subscribed partition does.
//!
//! A [`GroupConsumer`] has two queues: `control` (joined, assignments, the final error) and
//! `records` (the readers' responses). The front end sends control messages first, so an
//! assignment goes out before the records of the partitions it adds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use runnel_proto::pb::{
    self, ErrorCode, OffsetBoundary, group_consume_request::Request as Said,
    group_consume_response::Response as Tell,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt as _};

use super::Broker;
use super::consume::{Delivery, Format, Outbound, ReadShape, SubscribeItem, SubscriptionEnd};
use super::groups::View;
use crate::error::RpcError;
use crate::groups::Joined;
use crate::partition::Partition;
use crate::quotas::Caller;

/// Control messages queued per stream: joined and assignments are few and complete.
const CONTROL_QUEUE: usize = 4;

/// What the client sent, as the front end read it.
pub(crate) type Inbound = Result<pb::GroupConsumeRequest, InboundError>;

/// Why the client's side of the stream gave no request.
#[derive(Debug)]
pub(crate) enum InboundError {
    /// The request did not decode: answered as this error.
    Malformed(RpcError),
    /// The client went away (reset or transport failure).
    Gone,
}

/// The two queues a group consumer's stream is made of.
pub(crate) struct GroupConsumer {
    /// Joined, assignments, and at most one error that ends the stream.
    pub(crate) control: mpsc::Receiver<Result<Tell, RpcError>>,
    /// The records (or batches) of the member's partitions; an error ends the stream.
    pub(crate) records: mpsc::Receiver<SubscribeItem>,
}

/// How a group consumer's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumeEnd {
    /// The member left with `leave` (or closed its side): OK.
    Left,
    /// The client went away or stopped reading.
    ClientGone,
    /// The stream ended with this error.
    Failed(ErrorCode),
}

/// The running member: the state the driver keeps between events.
struct Member {
    broker: Arc<Broker>,
    group: String,
    member_id: String,
    member_epoch: u32,
    shape: ReadShape,
    reset: OffsetBoundary,
    /// A reader task per partition being read.
    readers: HashMap<(String, u32), JoinHandle<SubscriptionEnd>>,
    /// Offsets to commit (the next offset to read), not yet sent to a commit.
    pending: BTreeMap<(String, u32), u64>,
    /// The commit in flight, if any.
    committing: Option<JoinHandle<Result<(), RpcError>>>,
    /// The partitions of the last assignment sent, to send only changes.
    told: Option<Vec<pb::TopicPartitions>>,
    /// Where the member's partition readers send.
    out: Outbound,
    control: mpsc::Sender<Result<Tell, RpcError>>,
}

impl Broker {
    /// Starts a broker-run group member for a `GroupService.Consume` stream. `inbound` is the
    /// client's side; `on_end` is called once the member's session is over.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN` or `BROKER_STARTING`; everything later ends the stream instead.
    pub(crate) fn group_consume<S>(
        self: &Arc<Self>,
        inbound: S,
        host: String,
        caller: Caller,
        on_end: impl FnOnce(ConsumeEnd) + Send + 'static,
    ) -> Result<GroupConsumer, RpcError>
    where
        S: Stream<Item = Inbound> + Unpin + Send + 'static,
    {
        self.check_running()?;
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        let depth = self.config.limits.subscribe_queue_depth.max(1) as usize;
        let (records_tx, records) = mpsc::channel(depth);
        let broker = self.clone();
        let open = self.read_ahead.open();
        tokio::spawn(async move {
            let out = Outbound {
                tx: records_tx,
                held: open.held.clone(),
                caller,
            };
            let end = run(broker, inbound, host, control_tx, out).await;
            drop(open);
            on_end(end);
        });
        Ok(GroupConsumer { control, records })
    }
}

/// Ends the stream with `e` (not waiting past the shutdown deadline for a client that does
/// not read).
async fn fail(
    b: &Broker,
    control: &mpsc::Sender<Result<Tell, RpcError>>,
    e: RpcError,
) -> ConsumeEnd {
    let code = e.code;
    let _ = tokio::time::timeout(b.config.shutdown_deadline(), control.send(Err(e))).await;
    ConsumeEnd::Failed(code)
}

/// Reads the `start` request: the first message of the stream.
async fn read_start<S>(
    b: &Broker,
    inbound: &mut S,
) -> Result<pb::GroupConsumeStart, Option<RpcError>>
where
    S: Stream<Item = Inbound> + Unpin,
{
    let wait = Duration::from_millis(b.config.groups.session_timeout_ms);
    let first = tokio::select! {
        biased;
        () = b.shutdown.wait() => return Err(Some(RpcError::shutting_down())),
        m = tokio::time::timeout(wait, inbound.next()) => m,
    };
    match first {
        Err(_) => Err(Some(RpcError::invalid(format!(
            "no start request within {} ms of opening the stream",
            wait.as_millis()
        )))),
        Ok(Some(Ok(pb::GroupConsumeRequest {
            request: Some(Said::Start(start)),
        }))) => Ok(start),
        Ok(Some(Ok(_))) => Err(Some(RpcError::invalid(
            "the first request of a Consume stream must be start",
        ))),
        Ok(Some(Err(InboundError::Malformed(e)))) => Err(Some(e)),
        Ok(None | Some(Err(InboundError::Gone))) => Err(None),
    }
}

/// Checks the `start` request's read settings.
fn read_settings(
    b: &Broker,
    start: &pb::GroupConsumeStart,
) -> Result<(ReadShape, OffsetBoundary), RpcError> {
    let shape = ReadShape {
        format: Format::from_pb(start.format, "start.format")?,
        max_bytes: super::capped(start.max_bytes, b.config.limits.subscribe_max_bytes),
        delivery: Delivery::Whole,
    };
    let reset = match OffsetBoundary::try_from(start.reset) {
        Ok(OffsetBoundary::Unspecified | OffsetBoundary::Earliest) => OffsetBoundary::Earliest,
        Ok(OffsetBoundary::Latest) => OffsetBoundary::Latest,
        Err(_) => {
            return Err(RpcError::invalid(format!(
                "start.reset {} is not a boundary; use OFFSET_BOUNDARY_EARLIEST (1) or OFFSET_BOUNDARY_LATEST (2)",
                start.reset
            )));
        }
    };
    Ok((shape, reset))
}

/// Runs one member from its `start` to the end of its stream.
async fn run<S>(
    b: Arc<Broker>,
    mut inbound: S,
    host: String,
    control: mpsc::Sender<Result<Tell, RpcError>>,
    out: Outbound,
) -> ConsumeEnd
where
    S: Stream<Item = Inbound> + Unpin,
{
    let start = match read_start(&b, &mut inbound).await {
        Ok(s) => s,
        Err(Some(e)) => return fail(&b, &control, e).await,
        Err(None) => return ConsumeEnd::ClientGone,
    };
    let (shape, reset) = match read_settings(&b, &start) {
        Ok(s) => s,
        Err(e) => return fail(&b, &control, e).await,
    };
    let Some(join) = start.join else {
        return fail(&b, &control, RpcError::invalid("start.join: required")).await;
    };
    let Joined {
        group,
        member_id,
        joined,
        mut view,
    } = match b.join_group(join, host) {
        Ok(j) => j,
        Err(e) => return fail(&b, &control, e.at("start.join")).await,
    };
    let heartbeat = Duration::from_millis(joined.heartbeat_interval_ms.max(1));
    let mut m = Member {
        broker: b.clone(),
        group,
        member_id,
        member_epoch: 0,
        shape,
        reset,
        readers: HashMap::new(),
        pending: BTreeMap::new(),
        committing: None,
        told: None,
        out,
        control,
    };
    let end = if m.tell(Tell::Joined(joined)).await {
        m.serve(&mut inbound, &mut view, heartbeat).await
    } else {
        ConsumeEnd::ClientGone
    };
    m.stop_readers();
    if end == ConsumeEnd::Left {
        let stored = m.commit_all().await;
        m.broker.groups().leave(&m.group, &m.member_id);
        if let Err(e) = stored {
            return fail(&b, &m.control, e).await;
        }
    } else {
        m.broker.groups().disconnected(&m.group, &m.member_id);
    }
    end
}

impl Member {
    /// Sends a control message; false if the client left or the broker is shutting down.
    async fn tell(&self, t: Tell) -> bool {
        tokio::select! {
            biased;
            () = self.broker.shutdown.wait() => false,
            sent = self.control.send(Ok(t)) => sent.is_ok(),
        }
    }

    /// The member's event loop: view changes, requests, heartbeats and finished commits.
    async fn serve<S>(
        &mut self,
        inbound: &mut S,
        view: &mut tokio::sync::watch::Receiver<View>,
        heartbeat: Duration,
    ) -> ConsumeEnd
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let b = self.broker.clone();
        let mut beat = tokio::time::interval(heartbeat);
        let mut changed = true;
        loop {
            if changed {
                let current = view.borrow_and_update().clone();
                match current {
                    View::Assignment(a) => {
                        if let Err(end) = self.apply(a).await {
                            return end;
                        }
                    }
                    View::Removed(e) => return fail(&b, &self.control, e).await,
                }
                changed = false;
            }
            if self.committing.is_none() && !self.pending.is_empty() {
                self.committing = Some(self.start_commit());
            }
            tokio::select! {
                biased;
                () = b.shutdown.wait() => return fail(&b, &self.control, RpcError::shutting_down()).await,
                () = self.control.closed() => return ConsumeEnd::ClientGone,
                c = view.changed() => {
                    if c.is_err() {
                        let e = RpcError::unknown_member(&self.group, &self.member_id);
                        return fail(&b, &self.control, e).await;
                    }
                    changed = true;
                }
                _ = beat.tick() => {
                    if let Err(e) = b.groups().heartbeat(&self.group, &self.member_id) {
                        return fail(&b, &self.control, e).await;
                    }
                }
                stored = async {
                    match self.committing.as_mut() {
                        Some(c) => c.await,
                        None => std::future::pending().await,
                    }
                }, if self.committing.is_some() => {
                    self.committing = None;
                    if let Err(e) = joined(stored) {
                        return fail(&b, &self.control, e).await;
                    }
                }
                request = inbound.next() => match request {
                    Some(Ok(pb::GroupConsumeRequest { request: Some(Said::Processed(p)) })) => {
                        if let Err(e) = self.processed(p) {
                            return fail(&b, &self.control, e).await;
                        }
                    }
                    Some(Ok(pb::GroupConsumeRequest { request: Some(Said::Leave(_)) })) | None => {
                        return ConsumeEnd::Left;
                    }
                    Some(Ok(_)) => {
                        let e = RpcError::invalid("after start, send processed or leave; the member was removed");
                        return fail(&b, &self.control, e).await;
                    }
                    Some(Err(InboundError::Malformed(e))) => return fail(&b, &self.control, e).await,
                    Some(Err(InboundError::Gone)) => return ConsumeEnd::ClientGone,
                },
            }
        }
    }

    /// Applies a new view: stops, commits and releases revoked partitions, starts readers for
    /// new ones, and tells the client.
    async fn apply(&mut self, a: pb::Assignment) -> Result<(), ConsumeEnd> {
        self.member_epoch = a.member_epoch;
        let assigned: Vec<(String, u32)> = flatten(&a.assigned);
        let revoked: Vec<(String, u32)> = flatten(&a.revoke);
        let kept: std::collections::HashSet<&(String, u32)> = assigned.iter().collect();
        let gone: Vec<(String, u32)> = self
            .readers
            .keys()
            .filter(|tp| !kept.contains(tp))
            .cloned()
            .collect();
        for tp in &gone {
            if let Some(r) = self.readers.remove(tp) {
                r.abort();
            }
        }
        if !revoked.is_empty() {
            if let Err(e) = self.commit_only(&revoked).await {
                let b = self.broker.clone();
                return Err(fail(&b, &self.control, e).await);
            }
            let ack = pb::AcknowledgeAssignment {
                member_epoch: a.member_epoch,
                released: a.revoke.clone(),
            };
            let b = self.broker.clone();
            if let Err(e) = b.groups().acknowledge(&self.group, &self.member_id, &ack) {
                return Err(fail(&b, &self.control, e).await);
            }
        }
        // Acknowledgements of partitions no longer owned are dropped: their records go to the
        // next owner.
        self.pending.retain(|tp, _| kept.contains(tp));
        // A new epoch that changes nothing the client reads (a release elsewhere) is not news.
        if self.told.as_ref() != Some(&a.assigned) {
            self.told = Some(a.assigned.clone());
            let assignment = pb::Assignment {
                revoke: Vec::new(),
                ..a
            };
            if !self.tell(Tell::Assignment(assignment)).await {
                return Err(ConsumeEnd::ClientGone);
            }
        }
        for tp in assigned {
            if self.readers.contains_key(&tp) {
                continue;
            }
            match self.start_reader(&tp).await {
                Ok(handle) => {
                    self.readers.insert(tp, handle);
                }
                Err(e) => {
                    let b = self.broker.clone();
                    return Err(fail(&b, &self.control, e).await);
                }
            }
        }
        Ok(())
    }

    /// Starts reading one partition from its committed offset, or the reset boundary.
    async fn start_reader(
        &self,
        tp: &(String, u32),
    ) -> Result<JoinHandle<SubscriptionEnd>, RpcError> {
        let b = self.broker.clone();
        let p = b.topics.get(&tp.0)?.partition(tp.1)?;
        let start = self.start_offset(&p)?;
        let slot = b.subscription_slots(1)?;
        let (shape, out) = (self.shape, self.out.clone());
        Ok(tokio::spawn(async move {
            let end = b.stream_partition(&p, start, shape, &out).await;
            drop(slot);
            end
        }))
    }

    /// Where a newly assigned partition is read from: the committed offset, the log end if
    /// the log ends below it, and the reset boundary without one or below the log start.
    fn start_offset(&self, p: &Partition) -> Result<u64, RpcError> {
        let req = pb::FetchOffsetsRequest {
            group: self.group.clone(),
            partitions: vec![pb::TopicPartitions {
                topic: p.topic.to_string(),
                partitions: vec![p.index],
            }],
        };
        let committed = self
            .broker
            .groups()
            .fetch_offsets(&req)?
            .offsets
            .into_iter()
            .find_map(|c| c.offset);
        let (first, end) = (p.start_offset(), p.end_offset());
        Ok(match committed {
            Some(o) if (first..=end).contains(&o) => o,
            // The log was cut short below it (not on disk at a power cut): nothing is skipped.
            Some(o) if o > end => end,
            _ if self.reset == OffsetBoundary::Latest => end,
            _ => first,
        })
    }

    /// Records an acknowledgement for the next commit; ignored for a partition not read here.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for an offset at or past the partition's log end: no such record
    /// exists, and committing after it would skip records not yet written.
    fn processed(&mut self, p: pb::Processed) -> Result<(), RpcError> {
        let tp = (p.topic, p.partition);
        if !self.readers.contains_key(&tp) {
            return Ok(());
        }
        let end = self
            .broker
            .topics
            .get(&tp.0)
            .and_then(|t| t.partition(tp.1))
            .map_or(0, |part| part.end_offset());
        if p.offset >= end {
            return Err(RpcError::invalid(format!(
                "processed.offset {} is at or past the log end {end} of {}/{}: no such record",
                p.offset, tp.0, tp.1
            )));
        }
        let next = p.offset + 1;
        let e = self.pending.entry(tp).or_insert(next);
        *e = (*e).max(next);
        Ok(())
    }

    /// Starts a commit of every pending acknowledgement, in the background.
    fn start_commit(&mut self) -> JoinHandle<Result<(), RpcError>> {
        let offsets = std::mem::take(&mut self.pending);
        let req = self.commit_request(offsets);
        let b = self.broker.clone();
        tokio::spawn(async move { commit(&b, req).await })
    }

    /// Waits for the commit in flight, if any.
    async fn committed(&mut self) -> Result<(), RpcError> {
        match self.committing.take() {
            Some(c) => joined(c.await),
            None => Ok(()),
        }
    }

    /// Commits the pending acknowledgements of `tps` now, after the commit in flight.
    async fn commit_only(&mut self, tps: &[(String, u32)]) -> Result<(), RpcError> {
        self.committed().await?;
        let offsets: BTreeMap<_, _> = tps
            .iter()
            .filter_map(|tp| self.pending.remove_entry(tp))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        commit(&self.broker, self.commit_request(offsets)).await
    }

    /// Commits every pending acknowledgement now, after the commit in flight.
    async fn commit_all(&mut self) -> Result<(), RpcError> {
        self.committed().await?;
        let offsets = std::mem::take(&mut self.pending);
        if offsets.is_empty() {
            return Ok(());
        }
        commit(&self.broker, self.commit_request(offsets)).await
    }

    fn commit_request(&self, offsets: BTreeMap<(String, u32), u64>) -> pb::CommitOffsetsRequest {
        pb::CommitOffsetsRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.member_epoch,
            offsets: offsets
                .into_iter()
                .map(|((topic, partition), offset)| pb::OffsetCommit {
                    topic,
                    partition,
                    offset,
                    metadata: String::new(),
                })
                .collect(),
        }
    }

    fn stop_readers(&mut self) {
        for (_, r) in self.readers.drain() {
            r.abort();
        }
    }
}

/// The outcome of a commit task.
fn joined(r: Result<Result<(), RpcError>, tokio::task::JoinError>) -> Result<(), RpcError> {
    r.unwrap_or_else(|e| Err(RpcError::internal(format!("commit task failed: {e}"))))
}

/// Stores a commit; the entries refused (a partition that moved meanwhile) are dropped and the
/// others committed again, since a commit is all or none.
///
/// # Errors
/// A failure of the commit as a whole (`DISK_FULL`, `LOG_FAILED`, `UNKNOWN_MEMBER`,
/// shutdown): what was processed is not stored, so the member's stream ends with it.
async fn commit(b: &Broker, mut req: pb::CommitOffsetsRequest) -> Result<(), RpcError> {
    for _ in 0..2 {
        match b.commit_offsets(req.clone()).await {
            Ok(r) if r.results.iter().all(|r| r.error.is_none()) => return Ok(()),
            Ok(r) => {
                // An entry refused for its own sake (FENCED_MEMBER: the partition moved) is
                // dropped; the others were refused only because a commit is all or none.
                req.offsets = std::mem::take(&mut req.offsets)
                    .into_iter()
                    .zip(&r.results)
                    .filter(|(_, result)| {
                        result
                            .error
                            .as_ref()
                            .is_none_or(|e| e.code == ErrorCode::InvalidRequest as i32)
                    })
                    .map(|(offset, _)| offset)
                    .collect();
                if req.offsets.is_empty() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The (topic, partition) pairs of a list of topic partitions.
fn flatten(tps: &[pb::TopicPartitions]) -> Vec<(String, u32)> {
    tps.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}
