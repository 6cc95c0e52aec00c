//! The producer's sender task: takes closed batches, encodes and stamps them, pipelines them
//! over one `ProduceStream`, and settles each batch's outcome, retrying what can be retried.
//!
//! Per partition it keeps a queue of batches not in flight, in order, and a count of those in
//! flight. The broker answers a stream's requests in order, so the answer for a partition
//! always concerns its oldest batch in flight. The rules:
//!
//! - **Success** (or a `duplicate` of a batch already stored): the records' futures get their
//!   offsets.
//! - **Retriable error**, or the connection breaks: the batch goes back to the front of its
//!   queue. The partition stops sending ("rewinding") until every batch it has in flight is
//!   answered; with idempotence those answers are `OUT_OF_ORDER_SEQUENCE` (the broker
//!   refuses to write past the gap), and they go back too, in order. After a backoff the
//!   partition resends them all with their original sequences: the broker stores what it
//!   lacks and answers `duplicate` for what it has, so nothing is written twice and order is
//!   kept.
//! - **Permanent error** (or `delivery_timeout` passed): the batch's records fail. Its
//!   sequence was never written, so the partition's later batches are restamped to close the
//!   gap. If the batch's outcome is unknown (it was in flight when the connection broke), or
//!   the broker lost the producer's state (`UNKNOWN_PRODUCER`, or a gap nobody caused), the
//!   producer bumps its epoch instead: once no outcome is unknown, `InitProducer` with the
//!   current epoch, and every pending batch is restamped from sequence 0. A bump answered
//!   `PRODUCER_FENCED` means an earlier bump of ours took the epoch and its answer was lost
//!   (ids are never shared between producers): the next try asks for a new producer id.
//! - **`PRODUCER_FENCED`**: another instance took over the producer id; everything pending
//!   fails and the producer stops.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::connection::Transport;
use bytes::Bytes;
use futures_util::StreamExt as _;
use runnel_format::Compression;
use runnel_proto::pb::{self, produce_service_client::ProduceServiceClient};
use tokio::sync::mpsc;

use super::batch::{Batch, Body, BufferPool, Stored, lock, next_sequence, restamp};
use super::stream;
use super::timer::Timer;
use super::{Inner, is_fatal};
use crate::compression;
use crate::error::{ClientError, ErrorCode};

type PartKey = (Arc<str>, u32);

/// One partition's batches, from the sender's side.
#[derive(Debug, Default)]
struct Part {
    /// Batches not in flight, in order (returned ones first, then never-sent ones).
    queue: VecDeque<Batch>,
    /// Batches of this partition in flight.
    in_flight: usize,
    /// Batches answered with an error (or cut off) while rewinding, in order.
    returned: Vec<Batch>,
    /// Sending paused until every batch in flight is answered.
    rewinding: bool,
    /// A batch failed for good: restamp the batches after it, which begin at this index of
    /// `returned` (then continue in `queue`), from this sequence.
    restamp: Option<(usize, i32)>,
    /// The next batch's sequence.
    next_sequence: i32,
    /// Don't send before this (backoff after an error).
    retry_at: Option<Instant>,
    /// Consecutive failed attempts, for the backoff.
    attempts: u32,
}

impl Part {
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.returned.is_empty() && self.in_flight == 0
    }
}

/// A request on the stream, waiting for its answer.
#[derive(Debug)]
struct InFlight {
    request_id: u64,
    sent: Instant,
    batches: Vec<Batch>,
}

/// The open `ProduceStream`.
struct Stream {
    tx: mpsc::Sender<stream::Framed>,
    rx: stream::Answers,
}

/// What woke the sender.
enum Event {
    Wake,
    Message(Option<Result<pb::ProduceResponse, tonic::Status>>),
    Timer,
}

pub(super) struct Sender {
    inner: Arc<Inner>,
    /// Producer id and epoch, when idempotent.
    producer: Option<(i64, i16)>,
    client: ProduceServiceClient<Transport>,
    stream: Option<Stream>,
    next_request_id: u64,
    in_flight: VecDeque<InFlight>,
    parts: HashMap<PartKey, Part>,
    reconnect_attempt: u32,
    reconnect_at: Option<Instant>,
    /// An epoch bump is needed.
    reset: bool,
    reset_attempt: u32,
    /// A bump was fenced: the next reset asks for a new producer id.
    fresh_id: bool,
    last_error: Option<ClientError>,
}

impl Sender {
    pub(super) fn new(inner: Arc<Inner>, producer: Option<(i64, i16)>) -> Self {
        let client = ProduceServiceClient::new(inner.conn.channel.clone())
            .max_decoding_message_size(inner.conn.config.max_message_bytes)
            .max_encoding_message_size(usize::MAX);
        Self {
            inner,
            producer,
            client,
            stream: None,
            next_request_id: 0,
            in_flight: VecDeque::new(),
            parts: HashMap::new(),
            reconnect_attempt: 0,
            reconnect_at: None,
            reset: false,
            reset_attempt: 0,
            fresh_id: false,
            last_error: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut timer = Timer::new();
        loop {
            let linger_deadline = self.collect();
            let (abort, fatal) = {
                let state = lock(&self.inner.state);
                (state.abort, state.fatal.clone())
            };
            if let Some(e) = fatal {
                self.fail_everything(&e);
                break;
            }
            if abort {
                self.fail_everything(&ClientError::Closed("producer"));
                break;
            }
            let now = Instant::now();
            self.check_request_timeout(now);
            self.expire(now);
            if self.reset && self.ready_to_reset() {
                self.bump_epoch().await;
                continue;
            }
            if self.stream.is_none()
                && self.has_work()
                && self.reconnect_at.is_none_or(|t| t <= now)
            {
                self.open_stream().await;
            }
            self.send_ready();
            if self.finished_closing() {
                break;
            }
            let deadline = self.next_deadline(linger_deadline, now);
            let event = {
                let wake = self.inner.wake.notified();
                let message = next_message(self.stream.as_mut());
                let timer = &mut timer;
                let timer = async move {
                    match deadline {
                        Some(d) => timer.sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = wake => Event::Wake,
                    m = message => Event::Message(m),
                    () = timer => Event::Timer,
                }
            };
            match event {
                Event::Wake | Event::Timer => {}
                Event::Message(Some(Ok(response))) => self.on_response(response),
                Event::Message(Some(Err(status))) => {
                    let e = self.inner.conn.error(status);
                    self.connection_lost(e);
                }
                Event::Message(None) => self.connection_lost(ClientError::Transport {
                    status: tonic::Code::Unavailable,
                    message: "the broker ended the produce stream".into(),
                }),
            }
        }
        let mut state = lock(&self.inner.state);
        state.closing = true;
        state.fatal.get_or_insert(ClientError::Closed("producer"));
    }

    /// Takes the batches `send` closed and the open ones whose linger is over (all of them on
    /// flush or close); returns the earliest linger deadline of those still open.
    ///
    /// An open batch whose linger is over stays open while its partition could not send it
    /// anyway (batches queued before it, or `max_in_flight_per_partition` in flight), and
    /// keeps taking records up to `batch_bytes`, as Kafka's accumulator does: when the
    /// broker falls behind, the records waiting meanwhile go out in a few full batches
    /// rather than in many small ones, each a request of its own. Its partition's next answer
    /// wakes the sender, which takes it then.
    pub(super) fn collect(&mut self) -> Option<Instant> {
        let linger = self.inner.config.linger;
        let max_in_flight = self.inner.config.max_in_flight_per_partition;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut batches = {
            let mut guard = lock(&self.inner.state);
            let state = &mut *guard;
            let all = std::mem::take(&mut state.flush) || state.closing || state.abort;
            let mut batches = std::mem::take(&mut state.ready);
            for topic in state.topics.values_mut() {
                let parts = &self.parts;
                let blocked = |p: u32| {
                    parts.get(&(topic.name.clone(), p)).is_some_and(|part| {
                        !part.queue.is_empty() || part.in_flight >= max_in_flight
                    })
                };
                let mut due = Vec::new();
                for (p, open) in topic.open.iter() {
                    let d = open.created + linger;
                    if all || (d <= now && !blocked(p)) {
                        due.push(p);
                    } else if d > now {
                        next = Some(next.map_or(d, |n| n.min(d)));
                    }
                }
                for p in due {
                    if let Some(open) = topic.open.remove(p) {
                        topic.partitioner.batch_closed(p);
                        batches.extend(Batch::close(topic.name.clone(), p, open));
                    }
                }
            }
            batches
        };
        for b in batches.drain(..) {
            self.parts
                .entry((b.topic.clone(), b.partition))
                .or_default()
                .queue
                .push_back(b);
        }
        next
    }

    pub(super) fn has_work(&self) -> bool {
        !self.in_flight.is_empty() || self.parts.values().any(|p| !p.is_idle())
    }

    fn finished_closing(&self) -> bool {
        if self.has_work() {
            return false;
        }
        let state = lock(&self.inner.state);
        state.closing && state.ready.is_empty() && state.topics.values().all(|t| t.open.is_empty())
    }

    /// The earliest time after `now`, the start of this turn of the loop, when something
    /// must happen without a wake-up.
    ///
    /// A deadline already passed at `now` was acted on in this turn (a retry or reconnect
    /// tried, a timeout checked): what it still waits for is a response, the stream or an
    /// epoch bump, each of which wakes the loop. Counting it would spin the loop without
    /// ever yielding until that happens.
    fn next_deadline(&self, linger: Option<Instant>, now: Instant) -> Option<Instant> {
        let config = &self.inner.config;
        let mut next = linger;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t.filter(|t| *t > now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if (self.stream.is_none() && self.has_work()) || self.reset {
            consider(self.reconnect_at);
        }
        consider(
            self.in_flight
                .front()
                .map(|f| f.sent + config.request_timeout),
        );
        for part in self.parts.values() {
            if let Some(front) = part.queue.front() {
                consider(Some(front.created + config.delivery_timeout));
                consider(part.retry_at);
            }
        }
        next
    }

    async fn open_stream(&mut self) {
        let mut channel = self.inner.conn.channel.clone();
        let call = stream::open(
            &mut channel,
            self.inner.config.max_in_flight_requests,
            self.inner.conn.config.max_message_bytes,
        );
        match tokio::time::timeout(self.inner.config.request_timeout, call).await {
            Ok(Ok((tx, rx))) => {
                self.stream = Some(Stream { tx, rx });
                self.reconnect_at = None;
            }
            Ok(Err(status)) => {
                let e = self.inner.conn.error(status);
                self.connection_lost(e);
            }
            Err(_) => self.connection_lost(ClientError::Timeout {
                what: "opening the produce stream".into(),
                after: self.inner.config.request_timeout,
            }),
        }
    }

    /// Whether a partition may send its next batch now.
    fn sendable(part: &Part, now: Instant, max_in_flight: usize, reset: bool) -> bool {
        let Some(front) = part.queue.front() else {
            return false;
        };
        !part.rewinding
            && part.retry_at.is_none_or(|t| t <= now)
            && part.in_flight < max_in_flight
            // While an epoch bump waits, only batches whose outcome is unknown go out, to
            // learn it; the rest wait for the new epoch.
            && (!reset || (matches!(front.body, Body::Built(_)) && front.maybe_written))
    }

    /// Sends requests while partitions have batches to send and the stream has room.
    fn send_ready(&mut self) {
        if self.stream.is_none() {
            return;
        }
        let config = &self.inner.config;
        let now = Instant::now();
        while self.in_flight.len() < config.max_in_flight_requests {
            let mut topic: Option<Arc<str>> = None;
            let mut batches: Vec<Batch> = Vec::new();
            let mut bytes = 0usize;
            for ((t, _), part) in &mut self.parts {
                if !Self::sendable(part, now, config.max_in_flight_per_partition, self.reset) {
                    continue;
                }
                if topic.as_ref().is_some_and(|chosen| chosen != t) {
                    continue;
                }
                let len = part.queue.front().map_or(0, Batch::len);
                if !batches.is_empty() && bytes + len > config.max_request_bytes {
                    continue;
                }
                let Some(mut batch) = part.queue.pop_front() else {
                    continue;
                };
                if let Err(e) = build(&mut batch, part, self.producer, config, &self.inner.buffers)
                {
                    batch.fail(e);
                    continue;
                }
                part.in_flight += 1;
                bytes += batch.len();
                topic = Some(t.clone());
                batches.push(batch);
            }
            let Some(topic) = topic else {
                break;
            };
            self.next_request_id += 1;
            let request = pb::ProduceRequest {
                request_id: self.next_request_id,
                topic: topic.to_string(),
                acks: config.acks.to_pb() as i32,
                partitions: batches
                    .iter_mut()
                    .map(|b| {
                        b.maybe_written = true;
                        let bytes = match &b.body {
                            Body::Built(bytes) => bytes.clone(),
                            // build() above made every batch Built.
                            Body::Unbuilt(_) => bytes::Bytes::new(),
                        };
                        pb::ProducePartition {
                            partition: Some(b.partition),
                            batches: vec![bytes],
                            ..Default::default()
                        }
                    })
                    .collect(),
            };
            let framed = stream::frame(&request);
            let sent = self.stream.as_ref().map(|s| s.tx.try_send(framed).is_ok());
            self.in_flight.push_back(InFlight {
                request_id: self.next_request_id,
                sent: now,
                batches,
            });
            if sent != Some(true) {
                self.connection_lost(ClientError::Transport {
                    status: tonic::Code::Unavailable,
                    message: "the produce stream closed".into(),
                });
                return;
            }
        }
    }

    fn on_response(&mut self, response: pb::ProduceResponse) {
        let Some(request) = self.in_flight.pop_front() else {
            self.connection_lost(ClientError::Protocol(format!(
                "an answer to request {} that is not in flight",
                response.request_id
            )));
            return;
        };
        if request.request_id != response.request_id
            || (response.error.is_none() && response.results.len() != request.batches.len())
        {
            let message = format!(
                "answer to request {} with {} results, expected request {} with {}",
                response.request_id,
                response.results.len(),
                request.request_id,
                request.batches.len()
            );
            self.in_flight.push_front(request);
            self.connection_lost(ClientError::Protocol(message));
            return;
        }
        self.reconnect_attempt = 0;
        if let Some(e) = &response.error {
            let e = ClientError::from_inline(e);
            for batch in request.batches {
                self.failed(batch, e.clone());
            }
            return;
        }
        for (batch, result) in request.batches.into_iter().zip(response.results) {
            match (&result.error, result.batches.first()) {
                (Some(e), _) => self.failed(batch, ClientError::from_inline(e)),
                (None, Some(stored)) => self.done(batch, stored),
                (None, None) => self.failed(
                    batch,
                    ClientError::Protocol("a produce result without a batch result".into()),
                ),
            }
        }
    }

    fn done(&mut self, mut batch: Batch, stored: &pb::BatchResult) {
        let key = (batch.topic.clone(), batch.partition);
        if stored.duplicate {
            tracing::debug!(topic = %key.0, partition = key.1, offset = stored.base_offset, "a resent batch was already stored");
        }
        batch.outcome.complete(
            batch.records.get(),
            Ok(Stored {
                topic: batch.topic.clone(),
                partition: batch.partition,
                base_offset: stored.base_offset,
                append_time_ms: stored.append_time_ms,
            }),
        );
        if let Body::Built(bytes) = std::mem::replace(&mut batch.body, Body::Built(Bytes::new())) {
            self.inner.buffers.give(bytes);
        }
        if let Some(part) = self.parts.get_mut(&key) {
            part.in_flight = part.in_flight.saturating_sub(1);
            part.attempts = 0;
        }
        self.end_rewind_if_drained(&key, true);
    }

    fn failed(&mut self, mut batch: Batch, error: ClientError) {
        let key = (batch.topic.clone(), batch.partition);
        if is_fatal(&error) {
            lock(&self.inner.state).fatal = Some(error.clone());
        }
        let idempotent = self.producer.is_some();
        let delivery_timeout = self.inner.config.delivery_timeout;
        let Some(part) = self.parts.get_mut(&key) else {
            batch.fail(error);
            return;
        };
        part.in_flight = part.in_flight.saturating_sub(1);
        let code = error.code();
        if code == Some(ErrorCode::DuplicateSequence) {
            // Written once, long ago; its offsets are no longer known.
            batch.fail(error);
            self.end_rewind_if_drained(&key, true);
            return;
        }
        // An answer with an error: this batch was not written, unless the log failed (an
        // fsync that failed after the write: the batch may be stored).
        if code != Some(ErrorCode::LogFailed) {
            batch.maybe_written = false;
        }
        let sequence_error = matches!(
            code,
            Some(ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducer)
        );
        let consequence = idempotent && part.rewinding && sequence_error;
        let lost_state = idempotent && !part.rewinding && sequence_error;
        let expired = batch.created.elapsed() >= delivery_timeout;
        if (consequence || lost_state || error.is_retriable()) && !expired && !is_fatal(&error) {
            if lost_state {
                tracing::warn!(topic = %key.0, partition = key.1, %error, "the broker lost this producer's state; bumping the epoch");
                self.reset = true;
            }
            part.returned.push(batch);
            part.rewinding = true;
            self.last_error = Some(error);
        } else {
            let error = if expired && error.is_retriable() {
                ClientError::Timeout {
                    what: format!("delivery to {}/{} (last error: {error})", key.0, key.1),
                    after: delivery_timeout,
                }
            } else {
                error
            };
            self.reset |= give_up(part, batch, error, idempotent);
        }
        self.end_rewind_if_drained(&key, true);
    }

    /// Ends a partition's rewind once nothing of it is in flight: the returned batches go
    /// back to the front of the queue, restamped if a batch before them failed for good.
    fn end_rewind_if_drained(&mut self, key: &PartKey, backoff: bool) {
        let producer = self.producer;
        let policy = self.inner.conn.config.backoff;
        let Some(part) = self.parts.get_mut(key) else {
            return;
        };
        if !part.rewinding || part.in_flight > 0 {
            return;
        }
        part.rewinding = false;
        for batch in std::mem::take(&mut part.returned).into_iter().rev() {
            part.queue.push_front(batch);
        }
        // After a batch known not to be written, no later one can have been.
        let mut not_written = false;
        for batch in &mut part.queue {
            if not_written {
                batch.maybe_written = false;
            } else if matches!(batch.body, Body::Built(_)) && !batch.maybe_written {
                not_written = true;
            }
        }
        if let (Some((from, sequence)), Some((id, epoch))) = (part.restamp.take(), producer) {
            let mut next = sequence;
            for batch in part.queue.iter_mut().skip(from) {
                if let Body::Built(bytes) = &batch.body {
                    batch.body = Body::Built(restamp(bytes, id, epoch, next));
                    batch.base_sequence = Some(next);
                    next = next_sequence(next, batch.records.get());
                }
            }
            part.next_sequence = next;
        }
        if backoff && !part.queue.is_empty() {
            part.retry_at = Some(Instant::now() + policy.delay(part.attempts));
            part.attempts += 1;
        }
    }

    /// The stream is gone: every batch in flight goes back to its queue, outcome unknown,
    /// and the stream is reopened after a backoff.
    fn connection_lost(&mut self, error: ClientError) {
        tracing::debug!(%error, in_flight = self.in_flight.len(), "produce stream lost");
        self.stream = None;
        let delay = self.inner.conn.config.backoff.delay(self.reconnect_attempt);
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        self.reconnect_at = Some(Instant::now() + delay);
        let mut touched = Vec::new();
        for request in std::mem::take(&mut self.in_flight) {
            for batch in request.batches {
                let key = (batch.topic.clone(), batch.partition);
                let part = self.parts.entry(key.clone()).or_default();
                part.in_flight = part.in_flight.saturating_sub(1);
                part.rewinding = true;
                part.returned.push(batch);
                touched.push(key);
            }
        }
        for key in touched {
            self.end_rewind_if_drained(&key, false);
        }
        self.last_error = Some(error);
    }

    fn check_request_timeout(&mut self, now: Instant) {
        let timeout = self.inner.config.request_timeout;
        if self
            .in_flight
            .front()
            .is_some_and(|r| r.sent + timeout <= now)
        {
            self.connection_lost(ClientError::Timeout {
                what: "a produce request".into(),
                after: timeout,
            });
        }
    }

    /// Fails batches that have waited longer than `delivery_timeout` in a partition with
    /// nothing in flight.
    fn expire(&mut self, now: Instant) {
        let timeout = self.inner.config.delivery_timeout;
        let idempotent = self.producer.is_some();
        let mut reset = false;
        let mut touched = Vec::new();
        for (key, part) in &mut self.parts {
            if part.in_flight > 0 || part.rewinding {
                continue;
            }
            while part
                .queue
                .front()
                .is_some_and(|b| b.created + timeout <= now)
            {
                let Some(batch) = part.queue.pop_front() else {
                    break;
                };
                let last = self
                    .last_error
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), ToString::to_string);
                let error = ClientError::Timeout {
                    what: format!("delivery to {}/{} (last error: {last})", key.0, key.1),
                    after: timeout,
                };
                reset |= give_up(part, batch, error, idempotent);
                touched.push(key.clone());
            }
        }
        self.reset |= reset;
        for key in touched {
            self.end_rewind_if_drained(&key, false);
        }
    }

    /// Whether the epoch can be bumped: nothing in flight and no outcome unknown.
    fn ready_to_reset(&self) -> bool {
        self.in_flight.is_empty()
            && self.parts.values().all(|p| {
                !p.rewinding && p.in_flight == 0 && p.queue.iter().all(|b| !b.maybe_written)
            })
            && self.reconnect_at.is_none_or(|t| t <= Instant::now())
    }

    /// `InitProducer` with the current epoch, then every pending batch restamped from 0.
    async fn bump_epoch(&mut self) {
        let Some((id, epoch)) = self.producer else {
            self.reset = false;
            return;
        };
        let call = self.client.init_producer(pb::InitProducerRequest {
            producer_id: (!self.fresh_id).then_some(id),
            producer_epoch: (!self.fresh_id).then_some(i32::from(epoch)),
        });
        match tokio::time::timeout(self.inner.config.request_timeout, call).await {
            Ok(Ok(response)) => {
                let r = response.into_inner();
                let (id, epoch) = (r.producer_id, r.producer_epoch as i16);
                tracing::info!(producer_id = id, epoch, "producer epoch bumped");
                self.producer = Some((id, epoch));
                self.fresh_id = false;
                for part in self.parts.values_mut() {
                    let mut next = 0;
                    for batch in &mut part.queue {
                        if let Body::Built(bytes) = &batch.body {
                            batch.body = Body::Built(restamp(bytes, id, epoch, next));
                            batch.base_sequence = Some(next);
                            next = next_sequence(next, batch.records.get());
                        }
                    }
                    part.next_sequence = next;
                    part.restamp = None;
                }
                self.reset = false;
                self.reset_attempt = 0;
            }
            Ok(Err(status)) => {
                let e = self.inner.conn.error(status);
                if e.code() == Some(ErrorCode::ProducerFenced) && !self.fresh_id {
                    // An earlier bump of ours whose answer was lost (a timeout, a broker
                    // killed after storing it) took the epoch; no other producer holds the
                    // id, and nothing pending has an unknown outcome: a new id carries on.
                    tracing::info!(
                        producer_id = id,
                        epoch,
                        "epoch bump fenced by a bump of ours whose answer was lost; asking for a new producer id"
                    );
                    self.fresh_id = true;
                    self.retry_reset_later(e);
                    return;
                }
                if is_fatal(&e) || e.code() == Some(ErrorCode::UnknownProducer) {
                    lock(&self.inner.state).fatal = Some(e);
                    return;
                }
                self.retry_reset_later(e);
            }
            Err(_) => self.retry_reset_later(ClientError::Timeout {
                what: "InitProducer".into(),
                after: self.inner.config.request_timeout,
            }),
        }
    }

    fn retry_reset_later(&mut self, error: ClientError) {
        tracing::debug!(%error, "epoch bump failed, retrying");
        let delay = self.inner.conn.config.backoff.delay(self.reset_attempt);
        self.reset_attempt = self.reset_attempt.saturating_add(1);
        self.reconnect_at = Some(Instant::now() + delay);
        self.last_error = Some(error);
    }

    /// Fails every pending record: queued, in flight and still open.
    pub(super) fn fail_everything(&mut self, error: &ClientError) {
        for request in std::mem::take(&mut self.in_flight) {
            for batch in request.batches {
                batch.fail(error.clone());
            }
        }
        for part in self.parts.values_mut() {
            for batch in part.queue.drain(..).chain(part.returned.drain(..)) {
                batch.fail(error.clone());
            }
            part.in_flight = 0;
        }
        let mut batches = Vec::new();
        {
            let mut guard = lock(&self.inner.state);
            let state = &mut *guard;
            batches.append(&mut state.ready);
            for topic in state.topics.values_mut() {
                for (p, open) in topic.open.drain() {
                    batches.extend(Batch::close(topic.name.clone(), p, open));
                }
            }
        }
        for batch in batches {
            batch.fail(error.clone());
        }
    }
}

/// Fails a batch for good. Returns true if the producer's epoch must be bumped because the
/// batch's outcome is unknown; otherwise, if the batch had a sequence, the partition's later
/// batches are marked for restamping from it.
fn give_up(part: &mut Part, batch: Batch, error: ClientError, idempotent: bool) -> bool {
    let mut reset = false;
    if idempotent && let Some(sequence) = batch.base_sequence {
        if batch.maybe_written {
            reset = true;
        } else if part.restamp.is_none() {
            part.restamp = Some((part.returned.len(), sequence));
        }
        part.rewinding = true;
    }
    tracing::debug!(topic = %batch.topic, partition = batch.partition, %error, "batch failed");
    batch.fail(error);
    reset
}

/// Encodes a batch on its first send: stamps the producer id, epoch and sequence, and
/// compresses the records section (sending it plain if compression does not shrink it).
fn build(
    batch: &mut Batch,
    part: &mut Part,
    producer: Option<(i64, i16)>,
    config: &super::ProducerConfig,
    buffers: &BufferPool,
) -> Result<(), ClientError> {
    let Body::Unbuilt(builder) = &mut batch.body else {
        return Ok(());
    };
    let plain = builder.records_section();
    let (codec, section) = match config.compression {
        Compression::None => (Compression::None, None),
        codec => {
            let packed = compression::compress(codec, plain, config.zstd_level).map_err(|e| {
                ClientError::InvalidArgument(format!("compressing a batch failed: {e}"))
            })?;
            if packed.len() < plain.len() {
                (codec, Some(packed))
            } else {
                (Compression::None, None)
            }
        }
    };
    if let Some((id, epoch)) = producer {
        builder.producer(id, epoch, part.next_sequence);
        batch.base_sequence = Some(part.next_sequence);
        part.next_sequence = next_sequence(part.next_sequence, batch.records.get());
    }
    let bytes = match &section {
        Some(packed) => {
            let bytes = builder.build_with(codec, packed);
            buffers.give_buffer(std::mem::take(builder).into_buffer());
            bytes
        }
        // In place: the records are not copied again.
        None => std::mem::take(builder).build(),
    };
    batch.body = Body::Built(bytes);
    Ok(())
}

async fn next_message(
    stream: Option<&mut Stream>,
) -> Option<Result<pb::ProduceResponse, tonic::Status>> {
    match stream {
        Some(s) => s.rx.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::tests_support::{inner_with_topic, push};
    use crate::producer::{DeliveryFuture, ProducerConfig};
    use runnel_format::BatchHeader;
    use std::time::Duration;

    impl Sender {
        /// Builds every queued batch and puts each in a request of its own, as `send_ready`
        /// would, without a stream.
        fn fake_send_all(&mut self) {
            let config = &self.inner.config;
            for part in self.parts.values_mut() {
                while let Some(mut batch) = part.queue.pop_front() {
                    build(&mut batch, part, self.producer, config, &self.inner.buffers)
                        .expect("built");
                    batch.maybe_written = true;
                    part.in_flight += 1;
                    self.next_request_id += 1;
                    self.in_flight.push_back(InFlight {
                        request_id: self.next_request_id,
                        sent: Instant::now(),
                        batches: vec![batch],
                    });
                }
            }
        }

        fn answer(&mut self, result: Result<u64, pb::ErrorCode>) {
            let id = self
                .in_flight
                .front()
                .expect("a request in flight")
                .request_id;
            let result = match result {
                Ok(offset) => pb::ProducePartitionResult {
                    partition: 0,
                    error: None,
                    batches: vec![pb::BatchResult {
                        base_offset: offset,
                        append_time_ms: 1,
                        duplicate: false,
                    }],
                },
                Err(code) => pb::ProducePartitionResult {
                    partition: 0,
                    error: Some(pb::Error {
                        code: code as i32,
                        message: format!("{code:?}"),
                    }),
                    batches: vec![],
                },
            };
            self.on_response(pb::ProduceResponse {
                request_id: id,
                results: vec![result],
                error: None,
            });
        }

        fn part0(&self) -> &Part {
            &self.parts[&(Arc::from("t"), 0)]
        }

        fn part0_mut(&mut self) -> &mut Part {
            self.parts
                .get_mut(&(Arc::from("t"), 0))
                .expect("partition 0")
        }

        /// Each queued batch's (base sequence in the header, records).
        fn queued_sequences(&self) -> Vec<(i32, u32)> {
            self.part0()
                .queue
                .iter()
                .map(|b| match &b.body {
                    Body::Built(bytes) => {
                        let h = BatchHeader::decode(bytes).expect("header");
                        assert_eq!(Some(h.base_sequence), b.base_sequence);
                        (h.base_sequence, h.record_count)
                    }
                    Body::Unbuilt(_) => (-1, b.records.get()),
                })
                .collect()
        }
    }

    /// A sender with three batches of 2, 3 and 4 records in flight on partition 0.
    fn three_in_flight() -> (Sender, Vec<DeliveryFuture>) {
        let inner = inner_with_topic(
            ProducerConfig {
                linger: Duration::from_secs(3600),
                ..ProducerConfig::default()
            },
            1,
        );
        let mut sender = Sender::new(inner.clone(), Some((7, 0)));
        let mut futures = Vec::new();
        for n in [2, 3, 4] {
            for _ in 0..n {
                futures.push(push(&inner, ProducerRecord::new("t", "v").partition(0)));
            }
            lock(&inner.state).flush = true;
            sender.collect();
        }
        sender.fake_send_all();
        (sender, futures)
    }

    use crate::record::ProducerRecord;

    #[tokio::test]
    async fn a_lingered_batch_keeps_filling_while_its_partition_cannot_send() {
        let inner = inner_with_topic(
            ProducerConfig {
                linger: Duration::ZERO,
                max_in_flight_per_partition: 1,
                ..ProducerConfig::default()
            },
            1,
        );
        let mut sender = Sender::new(inner.clone(), Some((7, 0)));
        let record = || ProducerRecord::new("t", "v").partition(0);
        let first = push(&inner, record());
        sender.collect();
        sender.fake_send_all();
        assert_eq!(sender.part0().in_flight, 1);

        // Its linger is over, but the partition has its one batch in flight.
        let later: Vec<_> = (0..3).map(|_| push(&inner, record())).collect();
        assert_eq!(sender.collect(), None, "no deadline to wake up for");
        assert!(sender.part0().queue.is_empty(), "the batch stayed open");
        let more = push(&inner, record());
        sender.collect();
        let open = |s: &Sender| {
            lock(&s.inner.state).topics["t"]
                .open
                .get(0)
                .expect("open")
                .builder
                .len()
        };
        assert_eq!(open(&sender), 4, "the open batch took the next record too");

        // The answer makes room: the four records go out as one batch.
        sender.answer(Ok(0));
        assert_eq!(first.await.expect("stored").offset, 0);
        sender.collect();
        assert_eq!(sender.queued_sequences(), vec![(-1, 4)]);
        assert!(lock(&inner.state).topics["t"].open.is_empty());
        sender.fake_send_all();
        sender.answer(Ok(1));
        for (i, d) in later.into_iter().chain([more]).enumerate() {
            assert_eq!(d.await.expect("stored").offset, 1 + i as u64);
        }
    }

    #[tokio::test]
    async fn a_retriable_error_resends_it_and_the_later_batches_with_their_sequences() {
        let (mut s, futures) = three_in_flight();
        s.answer(Ok(100));
        s.answer(Err(pb::ErrorCode::LogFailed));
        assert!(s.part0().rewinding, "waits for the batch still in flight");
        s.answer(Err(pb::ErrorCode::OutOfOrderSequence));
        let part = s.part0();
        assert!(!part.rewinding);
        assert!(part.retry_at.is_some(), "after a backoff");
        assert_eq!(
            s.queued_sequences(),
            [(2, 3), (5, 4)],
            "the same sequences again"
        );
        assert!(!s.reset, "a consequence, not a lost producer");
        let first = futures.into_iter().next().expect("a future");
        assert_eq!(first.await.expect("delivered").offset, 100);
    }

    #[tokio::test]
    async fn a_permanent_error_fails_the_batch_and_restamps_the_later_ones() {
        let (mut s, futures) = three_in_flight();
        s.answer(Ok(100));
        s.answer(Err(pb::ErrorCode::BatchTooLarge));
        s.answer(Err(pb::ErrorCode::OutOfOrderSequence));
        assert_eq!(s.queued_sequences(), [(2, 4)], "the gap is closed");
        assert_eq!(s.part0().next_sequence, 6);
        let mut futures = futures.into_iter().skip(2);
        let failed = futures.next().expect("a future").await.expect_err("failed");
        assert_eq!(failed.code(), Some(ErrorCode::BatchTooLarge));
    }

    #[tokio::test]
    async fn a_broken_connection_returns_every_batch_in_order_outcome_unknown() {
        let (mut s, _futures) = three_in_flight();
        s.answer(Ok(100));
        s.connection_lost(ClientError::Transport {
            status: tonic::Code::Unavailable,
            message: "cut".into(),
        });
        assert!(s.stream.is_none() && s.reconnect_at.is_some());
        assert_eq!(s.queued_sequences(), [(2, 3), (5, 4)]);
        assert!(s.part0().queue.iter().all(|b| b.maybe_written));
        assert_eq!(s.part0().in_flight, 0);
    }

    #[tokio::test]
    async fn a_passed_retry_waiting_for_the_stream_sets_no_deadline_before_the_reconnect() {
        let (mut s, _futures) = three_in_flight();
        s.answer(Ok(100));
        s.answer(Err(pb::ErrorCode::LogFailed));
        s.answer(Err(pb::ErrorCode::OutOfOrderSequence));
        s.connection_lost(ClientError::Transport {
            status: tonic::Code::Unavailable,
            message: "cut".into(),
        });
        let reconnect = s.reconnect_at.expect("a reconnect backoff");
        let now = Instant::now();
        s.part0_mut().retry_at = Some(now - Duration::from_millis(1));
        assert!(!s.part0().queue.is_empty(), "batches wait for the stream");
        assert_eq!(
            s.next_deadline(None, now),
            Some(reconnect),
            "the passed retry does not make the loop spin until the reconnect"
        );
    }

    #[tokio::test]
    async fn a_lost_producer_state_bumps_the_epoch_once_nothing_is_unknown() {
        let (mut s, _futures) = three_in_flight();
        s.answer(Err(pb::ErrorCode::UnknownProducer));
        assert!(s.reset);
        assert!(!s.ready_to_reset(), "two batches are still in flight");
        s.answer(Err(pb::ErrorCode::OutOfOrderSequence));
        s.answer(Err(pb::ErrorCode::OutOfOrderSequence));
        s.reconnect_at = None;
        assert!(s.ready_to_reset());
        assert_eq!(s.queued_sequences(), [(0, 2), (2, 3), (5, 4)]);
    }

    #[tokio::test]
    async fn a_batch_whose_fsync_failed_keeps_its_outcome_open() {
        let (mut s, _futures) = three_in_flight();
        for _ in 0..3 {
            s.answer(Err(pb::ErrorCode::LogFailed));
        }
        assert_eq!(s.queued_sequences(), [(0, 2), (2, 3), (5, 4)]);
        assert!(
            s.part0().queue.iter().all(|b| b.maybe_written),
            "written, maybe stored: retried with the same sequences, never given to others"
        );
    }

    #[tokio::test]
    async fn fencing_stops_the_producer() {
        let (mut s, futures) = three_in_flight();
        s.answer(Err(pb::ErrorCode::ProducerFenced));
        let fatal = lock(&s.inner.state).fatal.clone().expect("fatal");
        assert_eq!(fatal.code(), Some(ErrorCode::ProducerFenced));
        s.fail_everything(&fatal);
        for f in futures {
            assert_eq!(
                f.await.expect_err("failed").code(),
                Some(ErrorCode::ProducerFenced)
            );
        }
    }
}
