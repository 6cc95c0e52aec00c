//! The producer's batches: the one being filled ([`OpenBatch`]), the one handed to the sender
//! ([`Batch`]), the outcome its records wait on ([`BatchOutcome`], [`DeliveryFuture`]), and
//! the share of the memory budget it holds ([`Budget`]).
//!
//! A record costs no allocation of its own: its bytes are appended to the batch's buffer and
//! its [`DeliveryFuture`] is a reference to the batch's outcome plus its index in the batch.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use runnel_format::{BatchBuilder, varint_len};
use tokio::sync::Semaphore;

use crate::error::ClientError;
use crate::record::{ProducerRecord, RecordMetadata};

/// Where a batch was stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) base_offset: u64,
    pub(crate) append_time_ms: i64,
}

/// The outcome of a batch, shared by the futures of its records.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    result: OnceLock<(u32, Result<Stored, ClientError>)>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    /// Sets the outcome for `records` records and wakes every waiting future. Only the first
    /// call counts.
    pub(crate) fn complete(&self, records: u32, result: Result<Stored, ClientError>) {
        if self.result.set((records, result)).is_ok() {
            let wakers = std::mem::take(&mut *lock(&self.wakers));
            for w in wakers {
                w.wake();
            }
        }
    }

    /// True once the outcome is known.
    pub(crate) fn is_done(&self) -> bool {
        self.result.get().is_some()
    }

    /// Polls for the outcome, registering the waker in `slot`.
    fn poll_outcome(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
    ) -> Poll<&(u32, Result<Stored, ClientError>)> {
        if let Some(r) = self.result.get() {
            return Poll::Ready(r);
        }
        let mut wakers = lock(&self.wakers);
        // `complete` sets the result before it takes the wakers, so checking again under the
        // lock closes the race.
        if let Some(r) = self.result.get() {
            return Poll::Ready(r);
        }
        match *slot {
            Some(i) if i < wakers.len() => wakers[i].clone_from(cx.waker()),
            _ => {
                *slot = Some(wakers.len());
                wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of one sent record: resolves to where it was stored, or why it was not.
///
/// Returned by [`Producer::send`](crate::Producer::send). Dropping it does not cancel the
/// record: it is delivered all the same.
#[derive(Debug)]
#[must_use = "the record is sent either way; await this to learn its offset or its error"]
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    index: u32,
    slot: Option<usize>,
}

impl DeliveryFuture {
    pub(crate) fn new(outcome: Arc<BatchOutcome>, index: u32) -> Self {
        Self {
            outcome,
            index,
            slot: None,
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let index = this.index;
        this.outcome
            .poll_outcome(cx, &mut this.slot)
            .map(|(_, r)| match r {
                Ok(s) => Ok(RecordMetadata::of(s, index)),
                Err(e) => Err(e.clone()),
            })
    }
}

impl RecordMetadata {
    /// Where record `index` of a batch stored as `stored` is.
    fn of(stored: &Stored, index: u32) -> Self {
        RecordMetadata {
            topic: stored.topic.clone(),
            partition: stored.partition,
            offset: stored.base_offset + u64::from(index),
            append_time_ms: stored.append_time_ms,
        }
    }
}

/// Records of one [`Deliveries`] that went into the same batch, one after the other.
#[derive(Debug)]
struct Run {
    outcome: Arc<BatchOutcome>,
    /// The first one's index in the batch.
    first: u32,
    count: u32,
    /// The waker slot this run's wait registered in its outcome.
    slot: Option<usize>,
}

/// The deliveries of the records of one [`Producer::send_all`](crate::Producer::send_all),
/// in the order they were given.
///
/// Awaited, it resolves once every one of them is stored or has failed, to a [`Delivered`]
/// that says where each went: one wait for the whole call, which costs the same for a
/// thousand records as for one. [`Deliveries::into_futures`] gives a [`DeliveryFuture`] per
/// record instead. Dropping it does not cancel the records: they are delivered all the same.
#[derive(Debug, Default)]
#[must_use = "the records are sent either way; await this to learn their offsets or errors"]
pub struct Deliveries {
    runs: Vec<Run>,
    /// Runs before this one are known to be done.
    done: usize,
    records: usize,
}

impl Deliveries {
    /// Adds the next record, `index` in the batch of `outcome`.
    pub(crate) fn push(&mut self, outcome: &Arc<BatchOutcome>, index: u32) {
        self.records += 1;
        if let Some(last) = self.runs.last_mut()
            && Arc::ptr_eq(&last.outcome, outcome)
            && last.first + last.count == index
        {
            last.count += 1;
            return;
        }
        self.runs.push(Run {
            outcome: outcome.clone(),
            first: index,
            count: 1,
            slot: None,
        });
    }

    /// Appends the records of `other` after these.
    pub fn extend(&mut self, other: Deliveries) {
        self.records += other.records;
        self.runs.extend(other.runs);
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records
    }

    /// True if there are no records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// A future per record, in order, as [`Producer::send`](crate::Producer::send) returns.
    pub fn into_futures(self) -> Vec<DeliveryFuture> {
        let mut out = Vec::with_capacity(self.records);
        for run in self.runs {
            out.extend((run.first..run.first + run.count).map(|i| DeliveryFuture {
                outcome: run.outcome.clone(),
                index: i,
                slot: None,
            }));
        }
        out
    }
}

impl Future for Deliveries {
    type Output = Delivered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivered> {
        let this = self.get_mut();
        while let Some(run) = this.runs.get_mut(this.done) {
            if run.outcome.poll_outcome(cx, &mut run.slot).is_pending() {
                return Poll::Pending;
            }
            this.done += 1;
        }
        Poll::Ready(Delivered {
            runs: std::mem::take(&mut this.runs),
            records: this.records,
        })
    }
}

/// Where the records of one [`Producer::send_all`](crate::Producer::send_all) went, in the
/// order they were given: what awaiting its [`Deliveries`] gives.
#[derive(Debug)]
pub struct Delivered {
    runs: Vec<Run>,
    records: usize,
}

impl Delivered {
    /// The number of records.
    pub fn len(&self) -> usize {
        self.records
    }

    /// True if there are no records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Each record's outcome in order: where it was stored, or why it was not.
    pub fn iter(&self) -> impl Iterator<Item = Result<RecordMetadata, ClientError>> + '_ {
        self.outcomes().flat_map(|(result, first, count)| {
            (first..first + count).map(move |i| match result {
                Ok(stored) => Ok(RecordMetadata::of(stored, i)),
                Err(e) => Err(e.clone()),
            })
        })
    }

    /// How many records were stored.
    pub fn stored(&self) -> usize {
        self.outcomes()
            .filter(|(r, _, _)| r.is_ok())
            .map(|(_, _, count)| count as usize)
            .sum()
    }

    /// The first error, if any record failed.
    pub fn first_error(&self) -> Option<&ClientError> {
        self.outcomes().find_map(|(r, _, _)| r.as_ref().err())
    }

    /// Ok if every record was stored, else the first error.
    ///
    /// # Errors
    /// The first failed record's error.
    pub fn check(&self) -> Result<(), ClientError> {
        self.first_error().map_or(Ok(()), |e| Err(e.clone()))
    }

    /// Each run of records: its batch's result, its first index in the batch, its count.
    fn outcomes(&self) -> impl Iterator<Item = (&Result<Stored, ClientError>, u32, u32)> + '_ {
        self.runs.iter().filter_map(|run| {
            let (_, result) = run.outcome.result.get()?;
            Some((result, run.first, run.count))
        })
    }
}

/// Waits for a batch's outcome; resolves to the number of records and whether they were
/// stored (for flush and close).
pub(crate) struct OutcomeWait {
    pub(crate) outcome: Arc<BatchOutcome>,
    pub(crate) slot: Option<usize>,
}

impl Future for OutcomeWait {
    type Output = (u32, Option<ClientError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.outcome
            .poll_outcome(cx, &mut this.slot)
            .map(|(n, r)| (*n, r.as_ref().err().cloned()))
    }
}

/// Permits of the producer's memory budget (one per byte), returned when dropped.
#[derive(Debug)]
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    permits: u32,
}

impl Budget {
    /// An empty share of `semaphore`.
    pub(crate) fn empty(semaphore: Arc<Semaphore>) -> Self {
        Self {
            semaphore,
            permits: 0,
        }
    }

    /// Adds `permits` acquired (and forgotten) by the caller.
    pub(crate) fn add(&mut self, permits: u32) {
        self.permits += permits;
    }

    /// Moves `permits` of these (all there are, if fewer) to `to`, a share of the same
    /// semaphore.
    pub(crate) fn give(&mut self, to: &mut Budget, permits: u32) {
        let permits = permits.min(self.permits);
        self.permits -= permits;
        to.permits += permits;
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.semaphore.add_permits(self.permits as usize);
    }
}

/// Buffers of acknowledged batches, kept for the next batches to fill: a batch then costs no
/// allocation, no growth copies and no page faults for fresh memory. Holds at most `keep`
/// buffers of at most `max_capacity` bytes each; anything else is freed.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<BytesMut>>,
    keep: usize,
    max_capacity: usize,
}

impl BufferPool {
    /// A pool for batches of up to `batch_bytes`, holding no more than a quarter of
    /// `buffer_bytes` (and at most 8 buffers).
    pub(crate) fn new(batch_bytes: usize, buffer_bytes: usize) -> Self {
        let max_capacity = batch_bytes.saturating_mul(2).max(4096);
        Self {
            free: Mutex::new(Vec::new()),
            keep: (buffer_bytes / 4 / max_capacity).min(8),
            max_capacity,
        }
    }

    /// A buffer to build a batch in: a kept one if there is one, else a new empty one.
    pub(crate) fn take(&self) -> BytesMut {
        lock(&self.free).pop().unwrap_or_default()
    }

    /// Hands back the bytes of a batch nobody needs any more; kept if no one else holds
    /// them and there is room.
    pub(crate) fn give(&self, batch: Bytes) {
        if let Ok(buffer) = batch.try_into_mut() {
            self.give_buffer(buffer);
        }
    }

    /// Hands back a buffer; kept if there is room.
    pub(crate) fn give_buffer(&self, mut buffer: BytesMut) {
        if buffer.capacity() == 0 || buffer.capacity() > self.max_capacity {
            return;
        }
        buffer.clear();
        let mut free = lock(&self.free);
        if free.len() < self.keep {
            free.push(buffer);
        }
    }
}

/// The exact size of `record`'s encoding at the start of a batch (timestamp and offset
/// deltas of 0), in bytes; later positions add at most a few bytes of varint.
pub(crate) fn encoded_len(record: &ProducerRecord) -> usize {
    let nullable = |b: Option<&Bytes>| {
        let len = b.map_or(-1, |b| b.len() as i64);
        varint_len(len) + b.map_or(0, Bytes::len)
    };
    let mut body = 1 + 1 + 1 + nullable(record.key.as_ref()) + nullable(record.value.as_ref());
    body += varint_len(record.headers.len() as i64);
    for h in &record.headers {
        body += nullable(Some(&h.name)) + nullable(h.value.as_ref());
    }
    varint_len(body as i64) + body
}

/// The most a record's encoding can grow with its position in a batch: the timestamp and
/// offset delta varints (up to 10 bytes each instead of 1), and a longer length varint.
pub(crate) const POSITION_SLACK: usize = 2 * 9 + 2;

/// The batch being filled for one partition.
#[derive(Debug)]
pub(crate) struct OpenBatch {
    pub(crate) builder: BatchBuilder,
    pub(crate) outcome: Arc<BatchOutcome>,
    pub(crate) budget: Budget,
    pub(crate) created: Instant,
}

impl OpenBatch {
    /// An empty batch building into `buffer`, holding `budget`.
    pub(crate) fn new(buffer: BytesMut, budget: Budget) -> Self {
        Self {
            builder: BatchBuilder::with_buffer(buffer),
            outcome: Arc::new(BatchOutcome::default()),
            budget,
            created: Instant::now(),
        }
    }

    /// Appends a record; returns its index in the batch. Headers go through a stack array
    /// (up to 16), so appending allocates nothing but the buffer's growth.
    pub(crate) fn push(&mut self, record: &ProducerRecord, timestamp: i64) -> u32 {
        let index = self.builder.len();
        let key = record.key.as_deref();
        let value = record.value.as_deref();
        const STACK: usize = 16;
        if record.headers.len() <= STACK {
            let mut headers: [(&[u8], Option<&[u8]>); STACK] = [(&[], None); STACK];
            for (slot, h) in headers.iter_mut().zip(&record.headers) {
                *slot = (&h.name[..], h.value.as_deref());
            }
            self.builder
                .push(key, value, &headers[..record.headers.len()], timestamp);
        } else {
            let headers: Vec<(&[u8], Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|h| (&h.name[..], h.value.as_deref()))
                .collect();
            self.builder.push(key, value, &headers, timestamp);
        }
        index
    }
}

/// The body of a batch handed to the sender: records not yet encoded into a batch, or the
/// encoded batch (stamped with its producer id, epoch and sequence).
#[derive(Debug)]
pub(crate) enum Body {
    Unbuilt(BatchBuilder),
    Built(Bytes),
}

/// A closed batch, owned by the sender until its outcome is known.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) body: Body,
    pub(crate) records: NonZeroU32,
    /// The first record's sequence, once built by an idempotent producer.
    pub(crate) base_sequence: Option<i32>,
    pub(crate) outcome: Arc<BatchOutcome>,
    pub(crate) _budget: Budget,
    pub(crate) created: Instant,
    /// Sent, and no answer has said it was not written.
    pub(crate) maybe_written: bool,
}

impl Batch {
    /// Closes an open batch. `None` if it holds no record (never the case in practice: a
    /// batch is opened for a record).
    pub(crate) fn close(topic: Arc<str>, partition: u32, open: OpenBatch) -> Option<Self> {
        let records = NonZeroU32::new(open.builder.len())?;
        Some(Self {
            topic,
            partition,
            body: Body::Unbuilt(open.builder),
            records,
            base_sequence: None,
            outcome: open.outcome,
            _budget: open.budget,
            created: open.created,
            maybe_written: false,
        })
    }

    /// The encoded size, for request sizing (an estimate before it is built).
    pub(crate) fn len(&self) -> usize {
        match &self.body {
            Body::Unbuilt(b) => b.encoded_len(),
            Body::Built(bytes) => bytes.len(),
        }
    }

    /// Fails every record of the batch.
    pub(crate) fn fail(self, error: ClientError) {
        self.outcome.complete(self.records.get(), Err(error));
    }
}

/// The sequence after a batch of `records` records starting at `sequence`: sequences wrap
/// from `i32::MAX` to 0 (Kafka's rule, `docs/protocol.md`).
pub(crate) fn next_sequence(sequence: i32, records: u32) -> i32 {
    ((i64::from(sequence) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32
}

/// A copy of an encoded batch with another producer id, epoch and base sequence, and the
/// CRC recomputed: for re-sequencing batches already sent, whose records must not be
/// encoded again.
pub(crate) fn restamp(batch: &[u8], producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    // A built batch always holds a whole header.
    runnel_format::restamp_producer(batch, producer_id, epoch, sequence)
        .unwrap_or_else(|_| Bytes::copy_from_slice(batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_format::HEADER_LEN;
    use runnel_format::{BatchHeader, RecordBatch};

    #[test]
    fn encoded_len_is_exact_for_a_record_alone() {
        let records = [
            ProducerRecord::new("t", "v"),
            ProducerRecord::new("t", vec![7u8; 300]).key("k"),
            ProducerRecord {
                value: None,
                ..ProducerRecord::new("t", "")
            },
            ProducerRecord::new("t", vec![1u8; 70_000])
                .header("a", "b")
                .header("traceparent", "x".repeat(55)),
        ];
        for r in &records {
            let mut open =
                OpenBatch::new(BytesMut::new(), Budget::empty(Arc::new(Semaphore::new(0))));
            open.push(r, 1_000);
            assert_eq!(
                open.builder.encoded_len(),
                HEADER_LEN + encoded_len(r),
                "{r:?}"
            );
        }
    }

    #[test]
    fn the_pool_keeps_unshared_buffers_up_to_its_bounds() {
        // 64 KiB batches in a 1 MiB buffer: up to 2 buffers of at most 128 KiB.
        let pool = BufferPool::new(64 << 10, 1 << 20);
        let batch = |len: usize| Bytes::from(vec![7u8; len]);
        let shared = batch(1000);
        let _other = shared.clone();
        pool.give(shared);
        pool.give(batch(200 << 10));
        assert!(
            pool.take().capacity() == 0,
            "shared or oversized buffers are not kept"
        );
        for _ in 0..3 {
            pool.give(batch(1000));
        }
        let (a, b) = (pool.take(), pool.take());
        assert!(a.is_empty() && a.capacity() >= 1000 && b.capacity() >= 1000);
        assert_eq!(pool.take().capacity(), 0, "the third buffer was freed");
    }

    #[test]
    fn many_headers_take_the_heap_path() {
        let mut r = ProducerRecord::new("t", "v");
        for i in 0..40 {
            r = r.header(format!("h{i}"), "x");
        }
        let mut open = OpenBatch::new(BytesMut::new(), Budget::empty(Arc::new(Semaphore::new(0))));
        open.push(&r, 5);
        let batch = RecordBatch::new(open.builder.build(), 1 << 20).unwrap();
        let rec = batch.records().unwrap().next().unwrap().unwrap();
        assert_eq!(rec.headers.len(), 40);
        assert_eq!(&rec.headers[39].name[..], b"h39");
    }

    #[test]
    fn restamping_keeps_the_batch_valid() {
        let mut b = BatchBuilder::new();
        b.producer(5, 0, 10);
        b.push(None, Some(b"x"), &[], 1);
        b.push(None, Some(b"y"), &[], 2);
        let original = b.build();
        let stamped = restamp(&original, 77, 3, 2_000_000_000);
        let batch = RecordBatch::new(stamped.clone(), 1 << 20).expect("valid after restamp");
        let h: &BatchHeader = batch.header();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 3, 2_000_000_000)
        );
        assert_eq!(&stamped[HEADER_LEN..], &original[HEADER_LEN..]);
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(next_sequence(0, 5), 5);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 5), 3);
    }

    #[test]
    fn the_budget_returns_its_permits() {
        let sem = Arc::new(Semaphore::new(100));
        let mut budget = Budget::empty(sem.clone());
        for _ in 0..3 {
            sem.try_acquire_many(10).unwrap().forget();
            budget.add(10);
        }
        assert_eq!(sem.available_permits(), 70);
        drop(budget);
        assert_eq!(sem.available_permits(), 100);
    }

    #[tokio::test]
    async fn every_record_future_sees_the_batch_outcome() {
        let outcome = Arc::new(BatchOutcome::default());
        let futures: Vec<_> = (0..3)
            .map(|i| DeliveryFuture::new(outcome.clone(), i))
            .collect();
        let waiter = tokio::spawn(futures_util::future::join_all(futures));
        tokio::task::yield_now().await;
        outcome.complete(
            3,
            Ok(Stored {
                topic: "t".into(),
                partition: 2,
                base_offset: 40,
                append_time_ms: 9,
            }),
        );
        let got = waiter.await.unwrap();
        let offsets: Vec<u64> = got.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, [40, 41, 42]);
        // A late future resolves at once; a second completion is ignored.
        outcome.complete(3, Err(ClientError::Closed("producer")));
        let late = DeliveryFuture::new(outcome, 1).await.unwrap();
        assert_eq!((late.partition, late.offset), (2, 41));
    }

    #[test]
    fn deliveries_wait_for_every_batch_and_say_where_each_record_went() {
        let (a, b) = (
            Arc::new(BatchOutcome::default()),
            Arc::new(BatchOutcome::default()),
        );
        let mut deliveries = Deliveries::default();
        for (outcome, index) in [(&a, 0), (&a, 1), (&b, 0), (&a, 5)] {
            deliveries.push(outcome, index);
        }
        assert_eq!(
            (deliveries.len(), deliveries.runs.len()),
            (4, 3),
            "a run per batch stretch"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let mut deliveries = std::pin::pin!(deliveries);
        assert!(deliveries.as_mut().poll(&mut cx).is_pending());
        let stored = Stored {
            topic: "t".into(),
            partition: 1,
            base_offset: 100,
            append_time_ms: 7,
        };
        a.complete(6, Ok(stored));
        assert!(
            deliveries.as_mut().poll(&mut cx).is_pending(),
            "b is not done"
        );
        b.complete(1, Err(ClientError::Closed("producer")));
        let Poll::Ready(delivered) = deliveries.as_mut().poll(&mut cx) else {
            panic!("every batch is done");
        };
        let offsets: Vec<Option<u64>> =
            delivered.iter().map(|r| r.ok().map(|m| m.offset)).collect();
        assert_eq!(offsets, [Some(100), Some(101), None, Some(105)]);
        assert_eq!((delivered.len(), delivered.stored()), (4, 3));
        assert!(matches!(delivered.check(), Err(ClientError::Closed(_))));
    }
}
