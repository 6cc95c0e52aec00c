//! Consume: `fetch` (a long poll over several partitions), `subscribe` (batches of one or more
//! partitions pushed into a bounded queue) and `list_offsets`. Reads return stored batches as
//! they are, or decoded records ([`super::records`]) when the request asks for them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::pb::{
    self, ErrorCode, OffsetBoundary, offset_query::Query, start_position::Position,
};
use runnel_storage::{BoundedRead, LargeBatch, ReadResult};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::budget::{Grant, Held, MIN_SHARE_BYTES};
use super::records::each_record;
use super::{Broker, capped};
use crate::error::RpcError;
use crate::metrics;
use crate::partition::{Partition, PartitionFailure, ReadError};
use crate::quotas::{Caller, Quota};
use crate::tasks::blocking;

pub(crate) fn storage_error(e: &impl PartitionFailure, p: &Partition) -> RpcError {
    e.to_rpc(p)
}

/// Completes when any receiver sees a change.
pub(crate) async fn any_changed(watches: &mut [watch::Receiver<u64>]) {
    if watches.is_empty() {
        return std::future::pending().await;
    }
    type Changed<'a> =
        Pin<Box<dyn Future<Output = Result<(), watch::error::RecvError>> + Send + 'a>>;
    let mut futures: Vec<Changed<'_>> = watches
        .iter_mut()
        .map(|w| Box::pin(w.changed()) as Changed<'_>)
        .collect();
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await;
}

/// What a read returns: stored batches, or records decoded from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Whole stored batches, byte for byte.
    Batches,
    /// Decoded records, at or after the requested offset.
    Records,
}

impl Format {
    /// The format a request's `format` field asks for.
    ///
    /// # Errors
    /// `INVALID_REQUEST` naming `field` for an unknown value.
    pub(crate) fn from_pb(value: i32, field: &str) -> Result<Self, RpcError> {
        match pb::RecordFormat::try_from(value) {
            Ok(pb::RecordFormat::Unspecified | pb::RecordFormat::Batches) => Ok(Format::Batches),
            Ok(pb::RecordFormat::Records) => Ok(Format::Records),
            Err(_) => Err(RpcError::invalid(format!(
                "{field} {value} is not a known value (1 RECORD_FORMAT_BATCHES, 2 RECORD_FORMAT_RECORDS)"
            ))),
        }
    }
}

/// One partition's read, in the requested format: batches, or records (then `batches` is
/// empty).
struct Formatted {
    batches: Vec<Bytes>,
    records: Vec<pb::Record>,
}

/// Turns a read starting at `from` into the requested format. Blocking for records (decodes).
fn formatted(
    batches: Vec<Bytes>,
    from: u64,
    format: Format,
    limit: usize,
    p: &Partition,
) -> Result<Formatted, RpcError> {
    Ok(match format {
        Format::Batches => Formatted {
            batches,
            records: Vec::new(),
        },
        Format::Records => Formatted {
            records: super::records::decode(&batches, from, limit, (&p.topic, p.index))?,
            batches: Vec::new(),
        },
    })
}

impl LargeResponse {
    /// The batch's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.batch.len()
    }
}

impl Broker {
    /// Reads the next piece of `large`'s batch, from byte `at`: as much as the stream may
    /// read now ([`ReadAhead`](super::budget::ReadAhead)), but at least [`MIN_SHARE_BYTES`]
    /// and without waiting (what the stream holds may be queued behind this very batch),
    /// counted as held until dropped.
    pub(crate) fn read_piece(
        self: &Arc<Self>,
        large: &LargeResponse,
        at: usize,
    ) -> impl Future<Output = Result<Bytes, RpcError>> + Send + 'static {
        let (batch, held) = (large.batch.clone(), large.held.clone());
        let rest = batch.len().saturating_sub(at);
        let grant = self.read_ahead.try_grant(&held, rest);
        let len = grant
            .as_ref()
            .map_or(0, Grant::bytes)
            .max(MIN_SHARE_BYTES as usize)
            .min(rest);
        blocking(move || {
            let piece = batch
                .read(at, len)
                .map_err(|e| RpcError::internal(format!("reading a batch: {e}")))?;
            let piece = held.track(vec![piece]).pop().unwrap_or_default();
            drop(grant);
            Ok(piece)
        })
    }
}

/// What a subscription read.
enum Read {
    /// Whole batches (none at the log end), their bytes, and the response's data.
    Whole(ReadResult, u64, Result<Formatted, RpcError>),
    /// One batch larger than the stream may hold, to be read in pieces.
    Large(LargeBatch),
}

/// Checks a request's list of partitions: at most `max` entries (`fetch_max_partitions`), and
/// none listed twice.
fn check_partition_list<'a>(
    entries: impl ExactSizeIterator<Item = (&'a str, u32)>,
    max: u32,
) -> Result<(), RpcError> {
    if entries.len() > max as usize {
        metrics::limit_rejected("fetch_max_partitions");
        return Err(RpcError::limit(format!(
            "partitions: {} entries exceed fetch_max_partitions ({max})",
            entries.len()
        )));
    }
    let mut seen: HashMap<(&str, u32), usize> = HashMap::new();
    for (i, (topic, partition)) in entries.enumerate() {
        if let Some(first) = seen.insert((topic, partition), i) {
            return Err(RpcError::invalid(format!(
                "partitions[{i}]: topic {topic:?} partition {partition} is listed twice (also partitions[{first}])"
            )));
        }
    }
    Ok(())
}

/// One partition of a fetch, resolved.
struct FetchTarget {
    topic: String,
    partition: u32,
    offset: u64,
    max_bytes: usize,
    resolved: Result<Arc<Partition>, RpcError>,
}

/// Reads every partition of a fetch once. Blocking. Returns the results and the batch bytes.
fn read_all(
    targets: &[FetchTarget],
    total_max: usize,
    format: Format,
    decode_limit: usize,
) -> (Vec<pb::FetchPartitionResult>, u64) {
    let mut total = 0u64;
    let mut results = Vec::with_capacity(targets.len());
    for t in targets {
        let mut result = pb::FetchPartitionResult {
            topic: t.topic.clone(),
            partition: t.partition,
            error: None,
            batches: Vec::new(),
            next_offset: t.offset,
            log_start_offset: 0,
            log_end_offset: 0,
            records: Vec::new(),
        };
        let p = match &t.resolved {
            Ok(p) if p.is_deleted() => {
                result.error = Some(RpcError::unknown_topic(&p.topic).to_pb());
                results.push(result);
                continue;
            }
            Ok(p) => p,
            Err(e) => {
                result.error = Some(e.to_pb());
                results.push(result);
                continue;
            }
        };
        let budget = (total_max as u64).saturating_sub(total);
        if budget == 0 && total > 0 {
            // The response is full; this partition gets its figures only.
            result.log_start_offset = p.start_offset();
            result.log_end_offset = p.end_offset();
            results.push(result);
            continue;
        }
        let limit = t.max_bytes.min(budget.max(1) as usize);
        match p.read(t.offset, limit) {
            Ok(read) => {
                let bytes = read.len_bytes() as u64;
                total += bytes;
                p.topic_metrics.records_out.increment(read.records);
                p.topic_metrics.bytes_out.increment(bytes);
                result.log_start_offset = read.log_start_offset;
                result.log_end_offset = read.log_end_offset;
                match formatted(read.batches, t.offset, format, decode_limit, p) {
                    Ok(data) => {
                        result.batches = data.batches;
                        result.records = data.records;
                        result.next_offset = read.next_offset;
                    }
                    Err(e) => result.error = Some(e.to_pb()),
                }
            }
            Err(e) => {
                if let ReadError::Local(runnel_storage::Error::OffsetOutOfRange {
                    log_start,
                    log_end,
                    ..
                }) = &e
                {
                    result.log_start_offset = *log_start;
                    result.log_end_offset = *log_end;
                } else {
                    result.log_start_offset = p.start_offset();
                    result.log_end_offset = p.end_offset();
                }
                result.error = Some(storage_error(&e, p).to_pb());
            }
        }
        results.push(result);
    }
    (results, total)
}

/// Holds a subscription's slots (one per partition) and their share of the gauge of open
/// subscriptions.
pub(crate) struct SubscriptionGuard {
    _permit: OwnedSemaphorePermit,
    partitions: usize,
}

impl SubscriptionGuard {
    fn new(permit: OwnedSemaphorePermit, partitions: usize) -> Self {
        metrics::plain_gauge(metrics::SUBSCRIPTIONS).increment(partitions as f64);
        SubscriptionGuard {
            _permit: permit,
            partitions,
        }
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        metrics::plain_gauge(metrics::SUBSCRIPTIONS).decrement(self.partitions as f64);
    }
}

/// Where a stream's partition readers send: the stream's queue, what its responses hold of
/// the read buffer, and the caller whose fetch quota they pay.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    /// The stream's queue.
    pub(crate) tx: mpsc::Sender<SubscribeItem>,
    /// What the stream's responses hold of the read buffer.
    pub(crate) held: Arc<Held>,
    /// Who the stream serves.
    pub(crate) caller: Caller,
}

/// One partition of a subscription, resolved, with where it starts.
pub(crate) struct Subscribed {
    /// The partition.
    pub(crate) partition: Arc<Partition>,
    /// The offset its first response confirms and its reads start from.
    pub(crate) start: u64,
}

/// How a subscription reads: the format, the most batch bytes per response, and how a batch
/// larger than the stream's share of the read buffer travels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadShape {
    /// Batches or records.
    pub(crate) format: Format,
    /// The most batch bytes in one response.
    pub(crate) max_bytes: usize,
    /// Whole, or (batches only) in pieces.
    pub(crate) delivery: Delivery,
}

impl ReadShape {
    /// The most a read asks of the read buffer: a response's worth, or with
    /// [`Delivery::Pieces`] all the stream's room, which decides whether the first batch
    /// goes in pieces (the response's size still caps what is read whole).
    fn wanted(&self) -> usize {
        match self.delivery {
            Delivery::Whole => self.max_bytes,
            Delivery::Pieces => usize::MAX,
        }
    }
}

/// How a subscription sends a batch larger than its stream may read at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Read whole, in a [`Pushed::Response`]: the front end encodes whole messages.
    Whole,
    /// As a [`Pushed::Large`], read in pieces as the client takes them: the front end writes
    /// a message's bytes as they come (`services/consume_http.rs`), so that a stalled
    /// stream holds a piece of such a batch, not all of it.
    Pieces,
}

/// What a subscription's queue yields: responses (each naming its partition), then at most
/// one error that ends it.
pub type SubscribeItem = Result<Pushed, RpcError>;

/// One response of a subscription.
#[derive(Debug)]
pub enum Pushed {
    /// A response with everything in it.
    Response(pb::SubscribeResponse),
    /// A response of one batch that is read in pieces (only with [`Delivery::Pieces`]).
    Large(LargeResponse),
}

impl Pushed {
    /// The whole response, for a stream opened with [`Delivery::Whole`], which is never
    /// sent a [`Pushed::Large`].
    pub(crate) fn whole(self) -> Result<pb::SubscribeResponse, RpcError> {
        match self {
            Pushed::Response(r) => Ok(r),
            Pushed::Large(_) => Err(RpcError::internal(
                "a batch to be read in pieces on a stream that sends whole responses",
            )),
        }
    }
}

/// A response whose one batch is read in pieces, each counted in the stream's share of the
/// read buffer until HTTP/2 has written it.
#[derive(Debug)]
pub struct LargeResponse {
    /// Everything but the batch.
    pub(crate) response: pb::SubscribeResponse,
    /// The batch.
    pub(crate) batch: LargeBatch,
    /// What the stream's responses hold of the read buffer.
    pub(crate) held: Arc<Held>,
}

/// How a subscription ended, for the front end's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionEnd {
    /// The client stopped reading (the queue was dropped).
    ClientLeft,
    /// The subscription ended with this error, the last item of its queue.
    Failed(ErrorCode),
}

impl Broker {
    /// Reads each requested partition from its offset, waiting up to `max_wait_ms` for
    /// `min_bytes` (woken by appends); per-partition failures are inline in the results. A
    /// fetch reads at most its share of the read buffer (`limits.read_buffer_bytes`), and its
    /// answer waits as long as the bytes read take under the caller's fetch quota.
    ///
    /// # Errors
    /// The request-level errors of `docs/protocol.md` (malformed request, limits, shutdown).
    pub(crate) async fn fetch(
        &self,
        req: pb::FetchRequest,
        caller: &Caller,
    ) -> Result<pb::FetchResponse, RpcError> {
        self.check_running()?;
        let limits = &self.config.limits;
        if req.partitions.is_empty() {
            return Err(RpcError::invalid(
                "partitions: at least one entry is required",
            ));
        }
        check_partition_list(
            req.partitions
                .iter()
                .map(|p| (p.topic.as_str(), p.partition)),
            limits.fetch_max_partitions,
        )?;
        if req.max_wait_ms > limits.fetch_max_wait_ms {
            return Err(RpcError::invalid(format!(
                "max_wait_ms {} exceeds fetch_max_wait_ms ({})",
                req.max_wait_ms, limits.fetch_max_wait_ms
            )));
        }
        let format = Format::from_pb(req.format, "format")?;
        let decode_limit = self.decode_limit();
        let targets: Vec<FetchTarget> = req
            .partitions
            .into_iter()
            .map(|p| FetchTarget {
                resolved: self
                    .topics
                    .get(&p.topic)
                    .and_then(|t| t.partition(p.partition)),
                max_bytes: capped(p.max_bytes, limits.fetch_partition_max_bytes),
                topic: p.topic,
                partition: p.partition,
                offset: p.offset,
            })
            .collect();
        let total_max = capped(req.max_bytes, limits.fetch_max_bytes);
        let mut watches: Vec<watch::Receiver<u64>> = targets
            .iter()
            .filter_map(|t| t.resolved.as_ref().ok().map(|p| p.watch_end()))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.max_wait_ms.into());
        let targets = Arc::new(targets);
        let reader = self.read_ahead.open();
        loop {
            for w in &mut watches {
                w.borrow_and_update();
            }
            let t = targets.clone();
            let grant = self.read_ahead.wait_room(&reader.held, total_max).await;
            let room = grant.bytes();
            let (mut results, total) =
                blocking(move || Ok(read_all(&t, room, format, decode_limit))).await?;
            for r in &mut results {
                if !r.batches.is_empty() {
                    r.batches = grant.track(std::mem::take(&mut r.batches));
                }
            }
            drop(grant);
            let any_error = results.iter().any(|r| r.error.is_some());
            let done = req.min_bytes == 0
                || req.max_wait_ms == 0
                || total >= u64::from(req.min_bytes)
                || any_error
                || tokio::time::Instant::now() >= deadline
                || self.shutdown.is_triggered();
            if done {
                self.quotas.pace(caller, Quota::FetchBytes, total).await;
                return Ok(pb::FetchResponse { results });
            }
            tokio::select! {
                () = any_changed(&mut watches) => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.shutdown.wait() => {}
            }
        }
    }

    fn resolve_start(
        &self,
        p: &Arc<Partition>,
        start: Option<pb::StartPosition>,
    ) -> Result<ResolvedStart, RpcError> {
        Ok(match start.and_then(|s| s.position) {
            None => ResolvedStart::At(p.end_offset()),
            Some(Position::Boundary(b)) => match OffsetBoundary::try_from(b) {
                Ok(OffsetBoundary::Earliest) => ResolvedStart::At(p.start_offset()),
                Ok(OffsetBoundary::Latest) => ResolvedStart::At(p.end_offset()),
                _ => {
                    return Err(RpcError::invalid(format!(
                        "start.boundary {b} is not a boundary; use OFFSET_BOUNDARY_EARLIEST (1) or OFFSET_BOUNDARY_LATEST (2)"
                    )));
                }
            },
            Some(Position::Offset(o)) => {
                let (start, end) = (p.start_offset(), p.end_offset());
                if o < start || o > end {
                    return Err(storage_error(
                        &runnel_storage::Error::OffsetOutOfRange {
                            requested: o,
                            log_start: start,
                            log_end: end,
                        },
                        p,
                    ));
                }
                ResolvedStart::At(o)
            }
            Some(Position::TimestampMs(ts)) => ResolvedStart::Time(ts),
        })
    }

    /// The most bytes a batch may decompress to for a record-level read.
    fn decode_limit(&self) -> usize {
        usize::try_from(self.config.limits.max_request_bytes).unwrap_or(usize::MAX)
    }

    /// Resolves a start position to an offset.
    ///
    /// # Errors
    /// An invalid boundary, an offset out of range, a failed time lookup.
    pub(crate) async fn start_offset(
        &self,
        p: &Arc<Partition>,
        start: Option<pb::StartPosition>,
    ) -> Result<u64, RpcError> {
        Ok(match self.resolve_start(p, start)? {
            ResolvedStart::At(o) => o,
            ResolvedStart::Time(ts) => {
                let part = p.clone();
                blocking(move || {
                    Ok(part
                        .offset_for_time(ts)
                        .map_err(|e| storage_error(&e, &part))?
                        .map_or_else(|| part.end_offset(), |(o, _)| o))
                })
                .await?
            }
        })
    }

    /// The partitions a Subscribe request names, with their start positions: `topic` and
    /// `partition`, or the `partitions` list.
    fn subscribe_targets(
        req: pb::SubscribeRequest,
        max_partitions: u32,
    ) -> Result<Vec<pb::SubscribePartition>, RpcError> {
        if req.partitions.is_empty() {
            return Ok(vec![pb::SubscribePartition {
                topic: req.topic,
                partition: req.partition,
                start: req.start,
            }]);
        }
        if !req.topic.is_empty() || req.partition != 0 || req.start.is_some() {
            return Err(RpcError::invalid(
                "topic, partition and start are for one partition; with partitions, set them in each entry",
            ));
        }
        check_partition_list(
            req.partitions
                .iter()
                .map(|p| (p.topic.as_str(), p.partition)),
            max_partitions,
        )?;
        Ok(req.partitions)
    }

    /// Opens a subscription to one or more partitions: a queue of responses (the first of
    /// each partition, without data, gives its resolved start) fed by a reader per partition
    /// until the client drops the queue or the stream must end, in which case its last item
    /// is the error. `on_end` is called once every reader has ended.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` (`max_subscriptions`, `fetch_max_partitions`), a malformed request,
    /// an unknown topic or partition, a start out of range, shutdown.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        req: pb::SubscribeRequest,
        caller: Caller,
        delivery: Delivery,
        on_end: impl FnOnce(SubscriptionEnd) + Send + 'static,
    ) -> Result<ReceiverStream<SubscribeItem>, RpcError> {
        self.check_running()?;
        let limits = &self.config.limits;
        let format = Format::from_pb(req.format, "format")?;
        let shape = ReadShape {
            format,
            max_bytes: capped(req.max_bytes, limits.subscribe_max_bytes),
            delivery: match format {
                Format::Batches => delivery,
                Format::Records => Delivery::Whole,
            },
        };
        let listed = !req.partitions.is_empty();
        let targets = Self::subscribe_targets(req, limits.fetch_max_partitions)?;
        let guard = self.subscription_slots(targets.len())?;
        let mut subscribed = Vec::with_capacity(targets.len());
        for (i, t) in targets.into_iter().enumerate() {
            let at = |e: RpcError| {
                if listed {
                    e.at(&format!("partitions[{i}]"))
                } else {
                    e
                }
            };
            let partition = self
                .topics
                .get(&t.topic)
                .and_then(|topic| topic.partition(t.partition))
                .map_err(at)?;
            let start = self.start_offset(&partition, t.start).await.map_err(at)?;
            subscribed.push(Subscribed { partition, start });
        }
        let (tx, rx) = mpsc::channel(limits.subscribe_queue_depth.max(1) as usize);
        let broker = self.clone();
        let open = self.read_ahead.open();
        let out = Outbound {
            tx,
            held: open.held.clone(),
            caller,
        };
        tokio::spawn(async move {
            let end = broker.stream_partitions(subscribed, shape, out).await;
            drop((guard, open));
            on_end(end);
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Takes `n` subscription slots.
    pub(crate) fn subscription_slots(&self, n: usize) -> Result<SubscriptionGuard, RpcError> {
        let limits = &self.config.limits;
        let permit = u32::try_from(n)
            .ok()
            .and_then(|n| self.subscriptions.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                metrics::limit_rejected("max_subscriptions");
                RpcError::limit(format!(
                    "max_subscriptions ({}) reached: {} open, {n} more asked for; close a subscription or retry later",
                    limits.max_subscriptions,
                    limits.max_subscriptions as usize - self.subscriptions.available_permits(),
                ))
            })?;
        Ok(SubscriptionGuard::new(permit, n))
    }

    /// Runs a reader per partition, all feeding `tx`, until the client leaves or one of them
    /// ends the stream with an error (then the others stop). Returns how the stream ended.
    pub(crate) async fn stream_partitions(
        self: &Arc<Self>,
        partitions: Vec<Subscribed>,
        shape: ReadShape,
        out: Outbound,
    ) -> SubscriptionEnd {
        let mut readers = tokio::task::JoinSet::new();
        for Subscribed { partition, start } in partitions {
            let (broker, out) = (self.clone(), out.clone());
            readers.spawn(async move {
                broker
                    .stream_partition(&partition, start, shape, &out)
                    .await
            });
        }
        drop(out);
        let mut end = SubscriptionEnd::ClientLeft;
        while let Some(ended) = readers.join_next().await {
            match ended {
                Ok(SubscriptionEnd::ClientLeft) => {}
                Ok(failed) => {
                    end = failed;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a subscription reader failed");
                    end = SubscriptionEnd::Failed(ErrorCode::Internal);
                    break;
                }
            }
        }
        readers.abort_all();
        end
    }

    /// Pushes a partition's batches (or records) into a subscription's queue, starting with
    /// a response without data that confirms `start`, until the client leaves or the stream
    /// must end. Reads from disk only when the queue has room, so a client that stops reading
    /// stops the reader, only while the stream holds less than its share of the read buffer
    /// ([`ReadAhead`](super::budget::ReadAhead)), and after each response only once
    /// the caller's fetch quota allows. Returns how the stream ended.
    pub(crate) async fn stream_partition(
        &self,
        p: &Arc<Partition>,
        start: u64,
        shape: ReadShape,
        out: &Outbound,
    ) -> SubscriptionEnd {
        let (tx, held) = (&out.tx, &out.held);
        let response = |next_offset, log_start_offset, log_end_offset, data: Formatted| {
            pb::SubscribeResponse {
                batches: data.batches,
                next_offset,
                log_start_offset,
                log_end_offset,
                records: data.records,
                topic: p.topic.to_string(),
                partition: p.index,
            }
        };
        let empty = || Formatted {
            batches: Vec::new(),
            records: Vec::new(),
        };
        let first = response(start, p.start_offset(), p.end_offset(), empty());
        if tx.send(Ok(Pushed::Response(first))).await.is_err() {
            return SubscriptionEnd::ClientLeft;
        }
        let mut end = p.watch_end();
        let mut next = start;
        let shutdown = &self.shutdown;
        let decode_limit = self.decode_limit();
        let status = loop {
            let slot = tokio::select! {
                biased;
                () = shutdown.wait() => break RpcError::shutting_down(),
                slot = tx.reserve() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return SubscriptionEnd::ClientLeft,
                },
            };
            if p.is_deleted() {
                break RpcError::unknown_topic(&p.topic);
            }
            end.borrow_and_update();
            let grant = tokio::select! {
                biased;
                () = shutdown.wait() => break RpcError::shutting_down(),
                () = tx.closed() => return SubscriptionEnd::ClientLeft,
                g = self.read_ahead.wait_room(held, shape.wanted()) => g,
            };
            let part = p.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut read = match shape.delivery {
                    Delivery::Whole => part.read(next, grant.bytes())?,
                    // A batch goes in pieces when it is larger than the stream's room (its
                    // grant, not capped by the response size), and never when it is no
                    // larger than a piece.
                    Delivery::Pieces => match part.read_bounded(
                        next,
                        grant.bytes().min(shape.max_bytes),
                        grant.bytes().max(MIN_SHARE_BYTES as usize),
                    )? {
                        BoundedRead::Batches(read) => read,
                        BoundedRead::Large(large) => return Ok(Read::Large(large)),
                    },
                };
                let bytes = read.len_bytes() as u64;
                let batches = grant.track(std::mem::take(&mut read.batches));
                drop(grant);
                let data = formatted(batches, next, shape.format, decode_limit, &part);
                Ok::<_, ReadError>(Read::Whole(read, bytes, data))
            })
            .await;
            let read = match read {
                Ok(r) => r,
                Err(e) => break RpcError::internal(format!("read task failed: {e}")),
            };
            let sent = match read {
                Ok(Read::Whole(_, _, Err(e))) => break e,
                Ok(Read::Whole(read, bytes, Ok(data))) if bytes > 0 => {
                    next = read.next_offset;
                    slot.send(Ok(Pushed::Response(response(
                        next,
                        read.log_start_offset,
                        read.log_end_offset,
                        data,
                    ))));
                    Some((read.records, bytes))
                }
                Ok(Read::Large(batch)) => {
                    next = batch.next_offset;
                    let sent = (batch.records, batch.len() as u64);
                    slot.send(Ok(Pushed::Large(LargeResponse {
                        response: response(
                            next,
                            batch.log_start_offset,
                            batch.log_end_offset,
                            empty(),
                        ),
                        batch,
                        held: held.clone(),
                    })));
                    Some(sent)
                }
                Ok(Read::Whole(..)) => {
                    drop(slot);
                    None
                }
                Err(e @ ReadError::Local(runnel_storage::Error::OffsetOutOfRange { .. })) => {
                    let e = storage_error(&e, p);
                    break RpcError::new(
                        e.code,
                        format!(
                            "{}; retention removed data this subscription had not read yet",
                            e.message
                        ),
                    );
                }
                Err(e) => break storage_error(&e, p),
            };
            match sent {
                Some((records, bytes)) => {
                    p.topic_metrics.records_out.increment(records);
                    p.topic_metrics.bytes_out.increment(bytes);
                    let delay = self.quotas.charge(&out.caller, Quota::FetchBytes, bytes);
                    if !delay.is_zero() {
                        tokio::select! {
                            biased;
                            () = shutdown.wait() => break RpcError::shutting_down(),
                            () = tx.closed() => return SubscriptionEnd::ClientLeft,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                None => {
                    tokio::select! {
                        biased;
                        () = shutdown.wait() => break RpcError::shutting_down(),
                        () = tx.closed() => return SubscriptionEnd::ClientLeft,
                        changed = end.changed() => if changed.is_err() {
                            break RpcError::unknown_topic(&p.topic);
                        },
                    }
                }
            }
        };
        let end = SubscriptionEnd::Failed(status.code);
        // A stalled client may never make room for the final status; do not wait past the
        // shutdown deadline for it.
        let deadline = self.config.shutdown_deadline();
        let _ = tokio::time::timeout(deadline, tx.send(Err(status))).await;
        end
    }

    /// Answers offset queries: a partition's first or end offset, or the first batch at or
    /// after a time; per-query failures are inline in the results.
    ///
    /// # Errors
    /// A malformed request, or too many queries (`fetch_max_partitions`).
    pub(crate) async fn list_offsets(
        &self,
        req: pb::ListOffsetsRequest,
    ) -> Result<pb::ListOffsetsResponse, RpcError> {
        self.list_offsets_to(req, TimeLookup::Batch).await
    }

    /// [`Broker::list_offsets`], a time query answered to `granularity`.
    ///
    /// # Errors
    /// As [`Broker::list_offsets`].
    pub(crate) async fn list_offsets_to(
        &self,
        req: pb::ListOffsetsRequest,
        granularity: TimeLookup,
    ) -> Result<pb::ListOffsetsResponse, RpcError> {
        let limits = &self.config.limits;
        let decompress_limit = limits.max_request_bytes as usize;
        if req.queries.is_empty() {
            return Err(RpcError::invalid("queries: at least one query is required"));
        }
        if req.queries.len() > limits.fetch_max_partitions as usize {
            metrics::limit_rejected("fetch_max_partitions");
            return Err(RpcError::limit(format!(
                "queries: {} entries exceed fetch_max_partitions ({})",
                req.queries.len(),
                limits.fetch_max_partitions
            )));
        }
        let mut lookups = Vec::with_capacity(req.queries.len());
        for (i, q) in req.queries.into_iter().enumerate() {
            let query = match q.query {
                None => {
                    return Err(RpcError::invalid(format!(
                        "queries[{i}].query: set boundary or timestamp_ms"
                    )));
                }
                Some(Query::Boundary(b)) => match OffsetBoundary::try_from(b) {
                    Ok(OffsetBoundary::Earliest) => Lookup::Earliest,
                    Ok(OffsetBoundary::Latest) => Lookup::Latest,
                    _ => {
                        return Err(RpcError::invalid(format!(
                            "queries[{i}].boundary {b} is not a boundary; use OFFSET_BOUNDARY_EARLIEST (1) or OFFSET_BOUNDARY_LATEST (2)"
                        )));
                    }
                },
                Some(Query::TimestampMs(ts)) => Lookup::Time(ts),
            };
            let resolved = self
                .topics
                .get(&q.topic)
                .and_then(|t| t.partition(q.partition));
            lookups.push((q.topic, q.partition, resolved, query));
        }
        let results = blocking(move || {
            Ok(lookups
                .into_iter()
                .map(|(topic, partition, resolved, query)| {
                    let mut r = pb::OffsetQueryResult {
                        topic,
                        partition,
                        error: None,
                        offset: 0,
                        timestamp_ms: None,
                    };
                    let p = match resolved {
                        Ok(p) => p,
                        Err(e) => {
                            r.error = Some(e.to_pb());
                            return r;
                        }
                    };
                    match query {
                        Lookup::Earliest => r.offset = p.start_offset(),
                        Lookup::Latest => r.offset = p.end_offset(),
                        Lookup::Time(ts) => match p.offset_for_time(ts) {
                            Ok(Some((offset, max_ts))) => {
                                r.offset = offset;
                                r.timestamp_ms = Some(max_ts);
                                if granularity == TimeLookup::Record
                                    && let Some((o, t)) =
                                        first_record_at(&p, offset, ts, decompress_limit)
                                {
                                    (r.offset, r.timestamp_ms) = (o, Some(t));
                                }
                            }
                            Ok(None) => r.offset = p.end_offset(),
                            Err(e) => r.error = Some(storage_error(&e, &p).to_pb()),
                        },
                    }
                    r
                })
                .collect())
        })
        .await?;
        Ok(pb::ListOffsetsResponse { results })
    }
}

/// What a time query of ListOffsets answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeLookup {
    /// The first batch holding a record at or after the time (gRPC's answer: readers get
    /// whole batches).
    Batch,
    /// The first record at or after the time (Kafka's answer).
    Record,
}

/// The first record at or after `timestamp` in the batch at `offset` of `p`: its offset and
/// timestamp. `None` if the batch cannot be read now (the batch's answer stands). Blocking.
fn first_record_at(p: &Partition, offset: u64, timestamp: i64, limit: usize) -> Option<(u64, i64)> {
    let read = p.read(offset, 1).ok()?;
    let mut found = None;
    let each = |r: runnel_storage::batch::Record| {
        if found.is_none() && r.timestamp >= timestamp {
            found = Some((r.offset, r.timestamp));
        }
    };
    each_record(&read.batches, offset, limit, (&p.topic, p.index), each).ok()?;
    found
}

enum ResolvedStart {
    At(u64),
    Time(i64),
}

enum Lookup {
    Earliest,
    Latest,
    Time(i64),
}
