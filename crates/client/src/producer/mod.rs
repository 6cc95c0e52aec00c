//! The [`Producer`]: batches records per partition, compresses them, and pipelines them to the
//! broker over one `ProduceStream`, idempotently by default.
//!
//! How a record travels:
//!
//! 1. [`Producer::send`] waits for room in the memory budget (`buffer_bytes`, a semaphore of
//!    one permit per byte: the caller waits when the buffer is full), picks the partition,
//!    and appends the record to that partition's open batch. It returns a
//!    [`DeliveryFuture`] at once.
//! 2. A batch closes when it reaches `batch_bytes`, when it is `linger` old and its partition
//!    can send it (otherwise it keeps filling, as Kafka's accumulator does), or on
//!    [`Producer::flush`]. The sender task (one per producer, see `sender.rs`) encodes it
//!    with `runnel_format::BatchBuilder`, compresses the records section, stamps the producer
//!    id, epoch and sequence, and sends it; up to `max_in_flight_per_partition` batches per
//!    partition are in flight at once, in order.
//! 3. A batch that fails with a retriable error, or whose connection breaks, is sent again
//!    with the same sequence after a backoff, together with the batches after it, in order.
//!    The broker recognises the batches it already has (`duplicate`), so a retry never
//!    writes a record twice, and order per partition is kept.
//! 4. The batch's outcome resolves the [`DeliveryFuture`] of each of its records, and its
//!    share of the memory budget is returned.

mod batch;
mod sender;
mod stream;
mod timer;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use runnel_format::HEADER_LEN;
use runnel_proto::pb;
use tokio::sync::{Notify, Semaphore};

pub use batch::{Delivered, Deliveries, DeliveryFuture};

use crate::compression::Compression;
use crate::connection::Connection;
use crate::error::{ClientError, ErrorCode, Result};
use crate::partitioner::{Partitioner, PartitionerState};
use crate::record::ProducerRecord;
use batch::{
    Batch, BatchOutcome, Budget, BufferPool, OpenBatch, OutcomeWait, POSITION_SLACK, encoded_len,
    lock,
};

/// What the broker waits for before it answers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// The batch is appended and readable (survives a broker crash; a power loss may lose it
    /// unless the topic fsyncs every append).
    #[default]
    Written,
    /// An fsync covering the batch has completed (survives a power loss).
    Durable,
}

impl Acks {
    fn to_pb(self) -> pb::Acks {
        match self {
            Self::Written => pb::Acks::Written,
            Self::Durable => pb::Acks::Durable,
        }
    }
}

/// The producer's settings. `ProducerConfig::default()` is idempotent, uncompressed, with
/// 64 KiB batches, a 5 ms linger and a 32 MiB buffer.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// What the broker waits for before answering.
    pub acks: Acks,
    /// Idempotent producing: the broker drops retried duplicates, so retries write every
    /// record exactly once and keep order with several batches in flight. On by default.
    /// Without it, a retry after a lost answer can write a batch twice, and with more than
    /// one batch in flight per partition a retried batch can land after a later one.
    pub idempotence: bool,
    /// How records without an explicit partition are spread.
    pub partitioner: Partitioner,
    /// The codec for batches: none, lz4 or zstd. A batch that does not shrink is sent
    /// uncompressed.
    pub compression: Compression,
    /// The zstd level (1 to 22; 3 is zstd's default).
    pub zstd_level: i32,
    /// The size at which a batch is closed and sent, uncompressed, in bytes. A batch never
    /// exceeds the topic's `max_batch_bytes`; a record larger than `batch_bytes` is sent in a
    /// batch of its own.
    pub batch_bytes: usize,
    /// How long a batch may wait for more records before it is sent. Kept to within tens of
    /// microseconds on Linux (a `timerfd`); elsewhere Tokio's timer rounds it up to the next
    /// millisecond or two. A batch whose partition already has
    /// `max_in_flight_per_partition` batches in flight (or batches waiting) keeps taking
    /// records past its linger, up to `batch_bytes`, until it can go.
    pub linger: Duration,
    /// The memory for records not yet delivered, in bytes; `send` waits while it is used up.
    /// The buffers of delivered batches are kept for the next batches, up to a quarter of
    /// this (and at most 8), on top of it.
    pub buffer_bytes: usize,
    /// Batches in flight per partition, 1 to 5 (the broker remembers the last 5 batches of
    /// an idempotent producer per partition).
    pub max_in_flight_per_partition: usize,
    /// Requests in flight on the stream, 1 to 60 (the broker reads at most 64 ahead).
    pub max_in_flight_requests: usize,
    /// The largest request, in bytes; a single batch is always sent.
    pub max_request_bytes: usize,
    /// How long a record may take from `send` to its acknowledgement, retries included; then
    /// it fails with the last error.
    pub delivery_timeout: Duration,
    /// How long to wait for the answer to a request before the connection is taken for dead
    /// and the request is sent again on a new one.
    pub request_timeout: Duration,
    /// How often a topic's partition count and batch limit are looked up again.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::Written,
            idempotence: true,
            partitioner: Partitioner::Default,
            compression: Compression::None,
            zstd_level: 3,
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            buffer_bytes: 32 << 20,
            max_in_flight_per_partition: 5,
            max_in_flight_requests: 32,
            max_request_bytes: 8 << 20,
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

impl ProducerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ClientError::Config(m));
        if !(1..=5).contains(&self.max_in_flight_per_partition) {
            return bad(format!(
                "max_in_flight_per_partition {} is outside 1 to 5",
                self.max_in_flight_per_partition
            ));
        }
        if !(1..=60).contains(&self.max_in_flight_requests) {
            return bad(format!(
                "max_in_flight_requests {} is outside 1 to 60",
                self.max_in_flight_requests
            ));
        }
        if self.batch_bytes < 128 {
            return bad(format!("batch_bytes {} is below 128", self.batch_bytes));
        }
        if self.buffer_bytes < self.batch_bytes || self.buffer_bytes > u32::MAX as usize {
            return bad(format!(
                "buffer_bytes {} must be at least batch_bytes ({}) and below 4 GiB",
                self.buffer_bytes, self.batch_bytes
            ));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad(format!("zstd_level {} is outside 1 to 22", self.zstd_level));
        }
        if self.delivery_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("delivery_timeout and request_timeout must not be zero".into());
        }
        Ok(())
    }
}

/// What the producer knows of a topic.
#[derive(Debug, Clone, Copy)]
struct TopicMeta {
    partitions: NonZeroU32,
    max_batch_bytes: usize,
    fetched: Instant,
}

/// One topic's partitions being filled.
#[derive(Debug)]
struct TopicState {
    name: Arc<str>,
    meta: TopicMeta,
    partitioner: PartitionerState,
    open: OpenBatches,
}

/// A topic's open batches, by partition (a vector: partitions are numbered from 0, and a
/// lookup per record should not hash).
#[derive(Debug, Default)]
struct OpenBatches(Vec<Option<OpenBatch>>);

impl OpenBatches {
    fn get(&self, partition: u32) -> Option<&OpenBatch> {
        self.0.get(partition as usize)?.as_ref()
    }

    fn remove(&mut self, partition: u32) -> Option<OpenBatch> {
        self.0.get_mut(partition as usize)?.take()
    }

    /// The open batch of `partition`, opened with `open` if there is none.
    fn get_or_open(&mut self, partition: u32, open: impl FnOnce() -> OpenBatch) -> &mut OpenBatch {
        let i = partition as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i].get_or_insert_with(open)
    }

    /// Each open batch with its partition.
    fn iter(&self) -> impl Iterator<Item = (u32, &OpenBatch)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(p, o)| Some((p as u32, o.as_ref()?)))
    }

    /// Takes every open batch, with its partition.
    fn drain(&mut self) -> impl Iterator<Item = (u32, OpenBatch)> + '_ {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(p, o)| Some((p as u32, o.take()?)))
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// What `send`, `flush` and the sender share, under one mutex (never held across an await).
#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, TopicState>,
    /// Batches closed by `send` (full), in closing order.
    ready: Vec<Batch>,
    /// Close every open batch now (a flush).
    flush: bool,
    /// No more sends; the sender stops once everything is delivered.
    closing: bool,
    /// Fail everything pending now and stop.
    abort: bool,
    /// Why the producer stopped for good (fenced, or its sender ended).
    fatal: Option<ClientError>,
    /// Outcomes of batches not known to be done, for flush.
    unfinished: Unfinished,
}

/// The outcomes a flush waits for, pruned of finished ones as it grows.
#[derive(Debug, Default)]
struct Unfinished {
    list: Vec<Arc<BatchOutcome>>,
    pruned_len: usize,
}

impl Unfinished {
    fn track(&mut self, outcome: &Arc<BatchOutcome>) {
        if self.list.len() >= 2 * self.pruned_len + 64 {
            self.prune();
        }
        self.list.push(outcome.clone());
    }

    fn prune(&mut self) {
        self.list.retain(|o| !o.is_done());
        self.pruned_len = self.list.len();
    }
}

#[derive(Debug)]
struct Inner {
    conn: Arc<Connection>,
    config: ProducerConfig,
    state: Mutex<State>,
    /// Wakes the sender: a batch was opened or closed, a flush or close was asked for.
    wake: Notify,
    budget: Arc<Semaphore>,
    /// Buffers of acknowledged batches, for the next ones.
    buffers: BufferPool,
}

/// Closes the producer when the last handle is dropped (the sender holds `Inner` too, so
/// `Inner` itself lives on until the sender has delivered what is pending).
#[derive(Debug)]
struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.0.state).closing = true;
        self.0.wake.notify_one();
    }
}

/// Sends records to the broker: batching, compression, retries, idempotence.
///
/// Cheap to clone: clones share the batches and the connection. Dropping the last clone
/// lets the pending records go out in the background; [`Producer::close`] waits for them
/// and reports failures.
///
/// ```no_run
/// # async fn example() -> Result<(), runnel_client::ClientError> {
/// use runnel_client::{Client, ProducerConfig, ProducerRecord};
/// let client = Client::connect("127.0.0.1:7171").await?;
/// let producer = client.producer(ProducerConfig::default()).await?;
/// let delivery = producer.send(ProducerRecord::new("orders", "hello").key("order-42")).await?;
/// let stored = delivery.await?;
/// println!("stored at {}/{}", stored.partition, stored.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

impl Producer {
    /// Starts a producer on `conn`: gets a producer id if idempotent and starts the sender.
    pub(crate) async fn start(conn: Arc<Connection>, config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        let producer_id = if config.idempotence {
            let client =
                pb::produce_service_client::ProduceServiceClient::new(conn.channel.clone());
            let r = conn
                .retry(3, || {
                    let mut c = client.clone();
                    let req = pb::InitProducerRequest {
                        producer_id: None,
                        producer_epoch: None,
                    };
                    async move { c.init_producer(req).await }
                })
                .await?
                .into_inner();
            Some((r.producer_id, r.producer_epoch as i16))
        } else {
            None
        };
        let inner = Arc::new(Inner::new(conn, config));
        tokio::spawn(sender::Sender::new(inner.clone(), producer_id).run());
        Ok(Self {
            handle: Arc::new(Handle(inner)),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.0
    }

    /// Queues a record and returns the future of its delivery.
    ///
    /// Waits while the producer's buffer is full (backpressure), and the first time a topic
    /// is used, for its partition count. Records sent by one task to one partition are
    /// stored in the order of the calls.
    ///
    /// # Errors
    /// - [`ClientError::RecordTooLarge`] if the record alone would make a batch larger than
    ///   the topic's `max_batch_bytes` (or than the whole buffer);
    /// - [`ClientError::InvalidArgument`] for a partition the topic does not have;
    /// - the broker's error if the topic cannot be described (for example `UNKNOWN_TOPIC`);
    /// - [`ClientError::Closed`] after [`Producer::close`], or the fatal error that stopped
    ///   the producer (`PRODUCER_FENCED`).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let inner = self.inner();
        if let Some(sent) = inner.try_send_now(&record) {
            return sent;
        }
        inner.check_open()?;
        let size = inner.checked_size(&record, None).await?;
        let budget = inner
            .reserve(cost_of(size, inner.config.buffer_bytes))
            .await?;
        let mut future = None;
        inner.append(&[record], &[size], budget, |outcome, i| {
            future = Some(DeliveryFuture::new(outcome.clone(), i));
        })?;
        delivery(future)
    }

    /// Queues many records at once, as calling [`Producer::send`] for each in turn would,
    /// and returns their [`Deliveries`]: one future for all of them (or a future per record,
    /// [`Deliveries::into_futures`]). For a caller that already holds many records, at a
    /// fraction of the cost per record: the records are checked first, the buffer is
    /// reserved and the producer's state locked once per chunk of them (a quarter of
    /// `buffer_bytes`) rather than once per record, their topic is looked up once per run of
    /// records of the same topic, their deliveries are tracked per batch rather than per
    /// record, and they are borrowed, so the same records can be sent again without a copy.
    ///
    /// # Errors
    /// As [`Producer::send`]. Every record is checked before any is queued, so a record too
    /// large or a partition that does not exist queues nothing; a producer that closes or
    /// stops for good meanwhile fails the call after queuing the chunks before it (their
    /// records are delivered; [`Producer::flush`] reports them).
    pub async fn send_all(&self, records: &[ProducerRecord]) -> Result<Deliveries> {
        let inner = self.inner();
        inner.check_open()?;
        let mut sizes = Vec::with_capacity(records.len());
        let mut last_topic: Option<(&str, TopicMeta)> = None;
        for record in records {
            let known = last_topic
                .filter(|(t, _)| *t == record.topic)
                .map(|(_, m)| m);
            let meta = match known {
                Some(m) => m,
                None => inner.topic_meta(&record.topic).await?,
            };
            last_topic = Some((record.topic.as_str(), meta));
            sizes.push(inner.checked_size(record, Some(meta)).await?);
        }
        let chunk_limit = (inner.config.buffer_bytes / 4).max(1);
        let mut deliveries = Deliveries::default();
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut cost = 0usize;
            while end < records.len() {
                let c = cost_of(sizes[end], inner.config.buffer_bytes) as usize;
                if end > start && cost + c > chunk_limit {
                    break;
                }
                cost += c;
                end += 1;
            }
            // A chunk costs at most a quarter of the buffer, or one record's share of it.
            let budget = inner
                .reserve(u32::try_from(cost).unwrap_or(u32::MAX))
                .await?;
            let (records, sizes) = (&records[start..end], &sizes[start..end]);
            inner.append(records, sizes, budget, |outcome, i| {
                deliveries.push(outcome, i)
            })?;
            start = end;
        }
        Ok(deliveries)
    }

    /// Sends a record and waits for its delivery: `send(record).await?.await`.
    ///
    /// # Errors
    /// As [`Producer::send`], and the record's delivery error.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<crate::record::RecordMetadata> {
        self.send(record).await?.await
    }

    /// Sends every record queued so far at once (without waiting for `linger`) and waits
    /// until each is delivered or has failed.
    ///
    /// # Errors
    /// [`ClientError::Undelivered`] with the count and the first error if any of those
    /// records failed (each record's own future has its error).
    pub async fn flush(&self) -> Result<()> {
        let inner = self.inner();
        let pending = {
            let mut state = lock(&inner.state);
            state.flush = true;
            state.unfinished.prune();
            state.unfinished.list.clone()
        };
        inner.wake.notify_one();
        let mut failed = 0u64;
        let mut first = None;
        for outcome in pending {
            let (records, error) = OutcomeWait {
                outcome,
                slot: None,
            }
            .await;
            if let Some(e) = error {
                failed += u64::from(records);
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(ClientError::Undelivered {
                failed,
                first: Box::new(e),
            }),
        }
    }

    /// Stops accepting records, delivers every pending one (retrying for up to
    /// `delivery_timeout`), and stops the sender. Every pending record's future resolves.
    ///
    /// # Errors
    /// As [`Producer::flush`].
    pub async fn close(&self) -> Result<()> {
        lock(&self.inner().state).closing = true;
        self.flush().await
    }

    /// Like [`Producer::close`], but after `timeout` fails the records still pending with
    /// [`ClientError::Closed`] (their outcome may then be unknown: a batch in flight may have
    /// been written) and stops.
    ///
    /// # Errors
    /// As [`Producer::flush`]; [`ClientError::Timeout`] if the timeout struck.
    pub async fn close_within(&self, timeout: Duration) -> Result<()> {
        lock(&self.inner().state).closing = true;
        match tokio::time::timeout(timeout, self.flush()).await {
            Ok(r) => r,
            Err(_) => {
                lock(&self.inner().state).abort = true;
                self.inner().wake.notify_one();
                // Let the sender fail what is pending, so every future has resolved.
                let _ = self.flush().await;
                Err(ClientError::Timeout {
                    what: "closing the producer".into(),
                    after: timeout,
                })
            }
        }
    }
}

impl Inner {
    fn new(conn: Arc<Connection>, config: ProducerConfig) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(config.buffer_bytes)),
            buffers: BufferPool::new(config.batch_bytes, config.buffer_bytes),
            conn,
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    fn check_open(&self) -> Result<()> {
        let state = lock(&self.state);
        if let Some(e) = &state.fatal {
            return Err(e.clone());
        }
        if state.closing {
            return Err(ClientError::Closed("producer"));
        }
        Ok(())
    }

    /// The topic's partition count and batch limit, from the cache or `DescribeTopic`.
    async fn topic_meta(&self, topic: &str) -> Result<TopicMeta> {
        let cached = lock(&self.state).topics.get(topic).map(|t| t.meta);
        if let Some(meta) = cached
            && meta.fetched.elapsed() < self.config.metadata_max_age
        {
            return Ok(meta);
        }
        let admin = pb::admin_service_client::AdminServiceClient::new(self.conn.channel.clone());
        let described = self
            .conn
            .retry(3, || {
                let mut c = admin.clone();
                let req = pb::DescribeTopicRequest {
                    topic: topic.to_owned(),
                };
                async move { c.describe_topic(req).await }
            })
            .await;
        let description = match described {
            Ok(d) => d.into_inner().topic,
            // A stale answer beats none while the broker is away.
            Err(e) if cached.is_some() && e.is_retriable() => None,
            Err(e) => return Err(e),
        };
        let meta = match description {
            Some(d) => TopicMeta {
                partitions: NonZeroU32::new(d.partition_count).ok_or_else(|| {
                    ClientError::Protocol(format!("topic {topic:?} is described with 0 partitions"))
                })?,
                max_batch_bytes: d
                    .config
                    .and_then(|c| c.max_batch_bytes)
                    .map_or(1 << 20, |m| m as usize),
                fetched: Instant::now(),
            },
            None => match cached {
                Some(m) => TopicMeta {
                    fetched: Instant::now(),
                    ..m
                },
                None => {
                    return Err(ClientError::Protocol(format!(
                        "DescribeTopic of {topic:?} returned no description"
                    )));
                }
            },
        };
        let mut state = lock(&self.state);
        let entry = state
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicState {
                name: topic.into(),
                meta,
                partitioner: PartitionerState::default(),
                open: OpenBatches::default(),
            });
        entry.meta = meta;
        Ok(meta)
    }

    /// Waits for `cost` bytes of the buffer (backpressure) and returns them as a budget.
    async fn reserve(&self, cost: u32) -> Result<Budget> {
        self.budget
            .acquire_many(cost)
            .await
            .map_err(|_| ClientError::Closed("producer"))?
            .forget();
        let mut budget = Budget::empty(self.budget.clone());
        budget.add(cost);
        Ok(budget)
    }

    /// [`Producer::send`] in one hold of the state lock, for the common case: the topic's
    /// metadata is cached and fresh and the buffer has room. `None`, with nothing done,
    /// otherwise; `send` then takes the slow path, which waits.
    fn try_send_now(&self, record: &ProducerRecord) -> Option<Result<DeliveryFuture>> {
        let size = encoded_len(record);
        let cost = cost_of(size, self.config.buffer_bytes);
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.fatal.is_some() || state.closing {
            return None;
        }
        let meta = state.topics.get(record.topic.as_str())?.meta;
        if meta.fetched.elapsed() >= self.config.metadata_max_age {
            return None;
        }
        if let Err(e) = self.check_size(record, size, meta) {
            return Some(Err(e));
        }
        self.budget.try_acquire_many(cost).ok()?.forget();
        let mut budget = Budget::empty(self.budget.clone());
        budget.add(cost);
        let mut future = None;
        let sent = self.append_locked(
            state,
            std::slice::from_ref(record),
            &[size],
            budget,
            |outcome, i| future = Some(DeliveryFuture::new(outcome.clone(), i)),
        );
        drop(guard);
        Some(sent.and_then(|wake| {
            if wake {
                self.wake.notify_one();
            }
            delivery(future)
        }))
    }

    /// Checks a record before it is queued: its size against the buffer and the topic's
    /// `max_batch_bytes`, and its partition against the topic's (`meta`, or looked up).
    /// Returns its encoded size.
    async fn checked_size(
        &self,
        record: &ProducerRecord,
        meta: Option<TopicMeta>,
    ) -> Result<usize> {
        let size = encoded_len(record);
        let meta = match meta {
            Some(m) => m,
            None => {
                self.check_size_alone(record, size)?;
                self.topic_meta(&record.topic).await?
            }
        };
        self.check_size(record, size, meta)?;
        Ok(size)
    }

    /// Checks a record of the encoded `size` against the producer's buffer.
    fn check_size_alone(&self, record: &ProducerRecord, size: usize) -> Result<()> {
        let alone = HEADER_LEN + size;
        if alone > self.config.buffer_bytes {
            return Err(ClientError::RecordTooLarge {
                topic: record.topic.clone(),
                size: alone,
                limit: self.config.buffer_bytes,
                limit_name: "the producer's buffer_bytes",
            });
        }
        Ok(())
    }

    /// Checks a record of the encoded `size` against the buffer, and against its topic's
    /// `max_batch_bytes` and partitions (`meta`).
    fn check_size(&self, record: &ProducerRecord, size: usize, meta: TopicMeta) -> Result<()> {
        self.check_size_alone(record, size)?;
        let alone = HEADER_LEN + size;
        if alone > meta.max_batch_bytes {
            return Err(ClientError::RecordTooLarge {
                topic: record.topic.clone(),
                size: alone,
                limit: meta.max_batch_bytes,
                limit_name: "the topic's max_batch_bytes",
            });
        }
        if let Some(p) = record.partition
            && p >= meta.partitions.get()
        {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} of topic {:?} does not exist: the topic has partitions 0 to {}",
                record.topic,
                meta.partitions.get() - 1
            )));
        }
        Ok(())
    }

    /// Appends records (of the encoded `sizes`) to their partitions' open batches under one
    /// hold of the state lock, each batch taking its records' share of `budget`; hands each
    /// record's batch outcome and index in the batch to `deliver`, in order.
    fn append(
        &self,
        records: &[ProducerRecord],
        sizes: &[usize],
        budget: Budget,
        deliver: impl FnMut(&Arc<BatchOutcome>, u32),
    ) -> Result<()> {
        let wake = self.append_locked(&mut lock(&self.state), records, sizes, budget, deliver)?;
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// [`Inner::append`] with the state locked; returns whether to wake the sender.
    fn append_locked(
        &self,
        state: &mut State,
        records: &[ProducerRecord],
        sizes: &[usize],
        mut budget: Budget,
        mut deliver: impl FnMut(&Arc<BatchOutcome>, u32),
    ) -> Result<bool> {
        if let Some(e) = &state.fatal {
            return Err(e.clone());
        }
        if state.closing {
            return Err(ClientError::Closed("producer"));
        }
        let mut appends = Appends {
            ready: &mut state.ready,
            unfinished: &mut state.unfinished,
            wake: false,
        };
        let mut result = Ok(());
        // Consecutive records of one topic look it up once.
        let mut current: Option<&mut TopicState> = None;
        for (record, &size) in records.iter().zip(sizes) {
            let topic = match current.take() {
                Some(t) if *t.name == *record.topic => t,
                _ => match state.topics.get_mut(record.topic.as_str()) {
                    Some(t) => t,
                    None => {
                        result = Err(vanished(&record.topic));
                        break;
                    }
                },
            };
            let cost = cost_of(size, self.config.buffer_bytes);
            self.append_one(
                topic,
                &mut appends,
                record,
                size,
                (&mut budget, cost),
                &mut deliver,
            );
            current = Some(topic);
        }
        if result.is_err() && appends.wake {
            // The records before the one that failed are queued: tell the sender now.
            self.wake.notify_one();
        }
        result.map(|()| appends.wake)
    }

    /// Appends one record to its partition's open batch, moving `cost` permits of `budget`
    /// to that batch's, and hands the batch's outcome and the record's index to `deliver`.
    fn append_one(
        &self,
        topic: &mut TopicState,
        appends: &mut Appends<'_>,
        record: &ProducerRecord,
        size: usize,
        (budget, cost): (&mut Budget, u32),
        deliver: &mut impl FnMut(&Arc<BatchOutcome>, u32),
    ) {
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let limit = self.config.batch_bytes.min(topic.meta.max_batch_bytes);
        let hard_limit = topic.meta.max_batch_bytes;
        let fits = |open: &OpenBatch, target: usize| {
            open.builder.encoded_len() + size + POSITION_SLACK <= target
        };
        let mut partition = match record.partition {
            Some(p) => p,
            None => {
                let p = self.config.partitioner.choose(
                    record.key.as_ref(),
                    topic.meta.partitions,
                    &mut topic.partitioner,
                );
                // The sticky partition's batch is full: close it and let the partitioner
                // move on before this record is placed (Kafka's sticky partitioner).
                if record.key.is_none()
                    && let Some(open) = topic.open.get(p)
                    && !fits(open, limit)
                {
                    if let Some(open) = topic.open.remove(p)
                        && let Some(b) = Batch::close(topic.name.clone(), p, open)
                    {
                        appends.ready.push(b);
                        appends.wake = true;
                    }
                    topic.partitioner.batch_closed(p);
                    self.config.partitioner.choose(
                        None,
                        topic.meta.partitions,
                        &mut topic.partitioner,
                    )
                } else {
                    p
                }
            }
        };
        partition = partition.min(topic.meta.partitions.get() - 1);
        // Close the open batch if this record would overflow it.
        if let Some(open) = topic.open.get(partition)
            && !fits(open, limit)
            && !open.builder.is_empty()
            && let Some(open) = topic.open.remove(partition)
            && let Some(b) = Batch::close(topic.name.clone(), partition, open)
        {
            appends.ready.push(b);
            topic.partitioner.batch_closed(partition);
            appends.wake = true;
        }
        let open = topic.open.get_or_open(partition, || {
            appends.wake = true; // a new linger deadline
            let open = OpenBatch::new(self.buffers.take(), Budget::empty(self.budget.clone()));
            appends.unfinished.track(&open.outcome);
            open
        });
        let index = open.push(record, timestamp);
        budget.give(&mut open.budget, cost);
        deliver(&open.outcome, index);
        // Full (or a large record alone): close at once.
        if open.builder.encoded_len() + POSITION_SLACK >= limit.min(hard_limit)
            && let Some(open) = topic.open.remove(partition)
            && let Some(b) = Batch::close(topic.name.clone(), partition, open)
        {
            appends.ready.push(b);
            topic.partitioner.batch_closed(partition);
            appends.wake = true;
        }
    }
}

/// What appending records changes beside their topics' open batches.
struct Appends<'a> {
    ready: &'a mut Vec<Batch>,
    unfinished: &'a mut Unfinished,
    /// The sender has something new to do: a batch closed, or a new linger deadline.
    wake: bool,
}

/// The error for a topic missing from the producer's metadata: `topic_meta` inserted it and
/// topics are never removed, so this is a bug.
fn vanished(topic: &str) -> ClientError {
    ClientError::Protocol(format!(
        "topic {topic:?} vanished from the producer's metadata"
    ))
}

/// The delivery future of the record `send` just queued.
fn delivery(future: Option<DeliveryFuture>) -> Result<DeliveryFuture> {
    future.ok_or_else(|| ClientError::Protocol("a sent record got no delivery future".into()))
}

/// What a record of `size` encoded bytes reserves of a buffer of `buffer_bytes`.
fn cost_of(size: usize, buffer_bytes: usize) -> u32 {
    u32::try_from((size + POSITION_SLACK).min(buffer_bytes)).unwrap_or(u32::MAX)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether an error means the producer must stop for good.
fn is_fatal(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::ProducerFenced)
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::connection::{ClientConfig, Transport};
    use tonic::transport::Endpoint;

    /// A producer's shared state on a connection that is never used, with topic `t` of
    /// `partitions` partitions already described.
    pub(super) fn inner_with_topic(config: ProducerConfig, partitions: u32) -> Arc<Inner> {
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let conn = Arc::new(Connection {
            config: ClientConfig::default(),
            channel: Transport::new(channel, Default::default()),
        });
        let inner = Arc::new(Inner::new(conn, config));
        lock(&inner.state).topics.insert(
            "t".into(),
            TopicState {
                name: "t".into(),
                meta: TopicMeta {
                    partitions: NonZeroU32::new(partitions).expect("non-zero"),
                    max_batch_bytes: 1 << 20,
                    fetched: Instant::now(),
                },
                partitioner: PartitionerState::default(),
                open: OpenBatches::default(),
            },
        );
        inner
    }

    /// Appends a record as `send` does, without waiting.
    pub(super) fn push(inner: &Arc<Inner>, record: ProducerRecord) -> DeliveryFuture {
        let size = encoded_len(&record);
        let cost = (size + POSITION_SLACK) as u32;
        inner
            .budget
            .try_acquire_many(cost)
            .expect("room in the budget")
            .forget();
        let mut budget = Budget::empty(inner.budget.clone());
        budget.add(cost);
        let mut future = None;
        inner
            .append(&[record], &[size], budget, |outcome, i| {
                future = Some(DeliveryFuture::new(outcome.clone(), i));
            })
            .expect("appended");
        future.expect("one future")
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{inner_with_topic as inner, push};
    use super::*;

    #[tokio::test]
    async fn batches_close_at_their_size_and_keep_record_order() {
        let config = ProducerConfig {
            batch_bytes: 1024,
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        };
        let inner = inner(config, 2);
        for i in 0..100 {
            drop(push(
                &inner,
                ProducerRecord::new("t", vec![b'v'; 90]).partition(i % 2),
            ));
        }
        let state = lock(&inner.state);
        assert!(!state.ready.is_empty(), "full batches were closed");
        for b in &state.ready {
            assert!(b.len() <= 1024, "a batch of {} bytes", b.len());
            assert!(b.records.get() > 1);
        }
        let closed: u32 = state.ready.iter().map(|b| b.records.get()).sum();
        let open: u32 = state.topics["t"]
            .open
            .iter()
            .map(|(_, o)| o.builder.len())
            .sum();
        assert_eq!(closed + open, 100, "every record is in exactly one batch");
    }

    #[tokio::test]
    async fn keyless_records_stick_to_a_partition_until_its_batch_is_full() {
        let config = ProducerConfig {
            batch_bytes: 1024,
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        };
        let inner = inner(config, 4);
        for _ in 0..30 {
            drop(push(&inner, ProducerRecord::new("t", vec![b'v'; 90])));
        }
        let state = lock(&inner.state);
        // Each full batch was on one partition, and the next one moved elsewhere.
        assert!(state.ready.len() >= 2);
        for pair in state.ready.windows(2) {
            assert_ne!(pair[0].partition, pair[1].partition, "sticky moves on");
        }
        assert_eq!(
            state.topics["t"].open.iter().count(),
            1,
            "one open batch at a time"
        );
    }

    #[tokio::test]
    async fn the_sender_takes_lingered_batches_and_a_flush_takes_all() {
        let lingering = inner(
            ProducerConfig {
                linger: Duration::from_secs(3600),
                ..ProducerConfig::default()
            },
            1,
        );
        drop(push(&lingering, ProducerRecord::new("t", "a")));
        let mut sender = sender::Sender::new(lingering.clone(), None);
        assert!(sender.collect().is_some(), "a linger deadline is pending");
        assert!(!sender.has_work(), "nothing is due before the linger ends");
        lock(&lingering.state).flush = true;
        assert!(sender.collect().is_none());
        assert!(sender.has_work(), "the flush closed the open batch");

        let eager = inner(
            ProducerConfig {
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
            1,
        );
        drop(push(&eager, ProducerRecord::new("t", "a")));
        let mut sender = sender::Sender::new(eager, None);
        assert!(sender.collect().is_none());
        assert!(sender.has_work(), "a zero linger sends at once");
    }

    #[tokio::test]
    async fn the_budget_is_held_until_the_outcome_and_then_returned() {
        let inner = inner(
            ProducerConfig {
                linger: Duration::from_secs(3600),
                ..ProducerConfig::default()
            },
            1,
        );
        let before = inner.budget.available_permits();
        let delivery = push(&inner, ProducerRecord::new("t", vec![0u8; 1000]));
        assert!(inner.budget.available_permits() <= before - 1000);
        let mut sender = sender::Sender::new(inner.clone(), None);
        sender.fail_everything(&ClientError::Closed("producer"));
        assert!(matches!(delivery.await, Err(ClientError::Closed(_))));
        assert_eq!(inner.budget.available_permits(), before);
    }
}
