//! Produce: appending a request's batches to its partitions, waiting for the fsyncs it asks
//! for, and idempotent producers' ids and epochs.
//!
//! A produce request goes through two stages. The **write** stage resolves each entry's
//! partition, checks idempotent producers' epochs against the global registry, and appends
//! the entries in request order with `Partition::append`, which never waits for an fsync
//! (small requests on the runtime's thread with `Partition::try_append`, see
//! `INLINE_WRITE_MAX`).
//! The **finish** stage waits for the fsyncs that `ACKS_DURABLE` or the `always` policy ask for
//! (`Partition::want_durable`: the log's group commit, run on the blocking pool and awaited
//! without a thread per request) and builds the response. A front end runs both in turn for one
//! request, or, for a stream of requests, writes them in the order received and finishes them
//! in that order on a second task, so appends of later requests overlap the fsyncs of earlier
//! ones.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use runnel_proto::pb::{self, Acks, ErrorCode};
use runnel_storage::batch::{self, BatchHeader};

use super::Broker;
use super::budget::InFlight;
use crate::config::DurabilitySetting;
use crate::error::{At, RpcError};
use crate::partition::Partition;
use crate::tasks::blocking;
use crate::topics::Topic;

/// Checks that each entry carries batches or records (not both), and encodes the records of
/// record-level entries as one batch each, so that the rest of the path sees batches only.
/// Returns which entries were record-level, for error messages.
fn encode_records(entries: &mut [pb::ProducePartition]) -> Result<Vec<bool>, RpcError> {
    let now_ms = crate::clock::now_ms();
    let mut record_level = vec![false; entries.len()];
    for (i, e) in entries.iter_mut().enumerate() {
        match (e.batches.is_empty(), e.records.is_empty()) {
            (true, true) => {
                return Err(RpcError::invalid(format!(
                    "partitions[{i}]: at least one batch or record is required"
                )));
            }
            (false, false) => {
                return Err(RpcError::invalid(format!(
                    "partitions[{i}]: batches and records are both set; send one of them"
                )));
            }
            (false, true) if e.producer.is_some() => {
                return Err(RpcError::invalid(format!(
                    "partitions[{i}].producer: only for records; a batch carries its producer fields in its header"
                )));
            }
            (false, true) => {}
            (true, false) => {
                let batch = super::records::encode(&e.records, e.producer.as_ref(), now_ms)
                    .map_err(|err| err.at(&format!("partitions[{i}]")))?;
                e.records = Vec::new();
                e.batches = vec![batch];
                record_level[i] = true;
            }
        }
    }
    Ok(record_level)
}

/// An entry ready to append.
struct Planned {
    /// The entry in the request, for error messages.
    entry: Field,
    partition: Arc<Partition>,
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
}

/// A request after the write stage.
pub(crate) struct Written {
    request_id: u64,
    results: Vec<pb::ProducePartitionResult>,
    /// Partitions to fsync up to an offset before answering, with the entries that wait.
    syncs: Vec<(Arc<Partition>, u64, Vec<usize>)>,
    _in_flight: InFlight,
}

impl Broker {
    /// Checks a request as a whole, resolves its entries and appends them in order.
    ///
    /// # Errors
    /// The request-level errors of `docs/protocol.md` (malformed request, unknown topic,
    /// in-flight limit, shutdown); entry errors are inline in the result.
    pub(crate) async fn produce_write(
        self: &Arc<Self>,
        req: pb::ProduceRequest,
    ) -> Result<Written, RpcError> {
        self.check_running()?;
        let acks = Acks::try_from(req.acks).map_err(|_| {
            RpcError::invalid(format!(
                "acks {} is not a known value (0 ACKS_UNSPECIFIED, 1 ACKS_WRITTEN, 2 ACKS_DURABLE)",
                req.acks
            ))
        })?;
        let topic = self.topics.get(&req.topic)?;
        if req.partitions.is_empty() {
            return Err(RpcError::invalid(
                "partitions: at least one entry is required",
            ));
        }
        let mut req = req;
        let record_level = encode_records(&mut req.partitions)?;
        let bytes: u64 = req
            .partitions
            .iter()
            .flat_map(|e| e.batches.iter())
            .map(|b| b.len() as u64)
            .sum();
        let in_flight = self.produce_budget.acquire(bytes).await?;
        let effective = self.topics.effective(&topic);
        let always = effective.durability == DurabilitySetting::Always;
        let sync = acks == Acks::Durable || always;

        let plans: Vec<Result<Planned, (u32, RpcError)>> = req
            .partitions
            .into_iter()
            .enumerate()
            .map(|(i, entry)| self.plan(&topic, Field::new(i, record_level[i]), entry))
            .collect();

        let mut writes = Writes::new(plans.len(), sync);
        let mut plans = plans.into_iter();
        let mut refused = None;
        if bytes <= INLINE_WRITE_MAX {
            for plan in plans.by_ref() {
                if let Some(plan) = writes.write(&topic, plan, true) {
                    refused = Some(Ok(plan));
                    break;
                }
            }
        }
        let rest: Vec<_> = refused.into_iter().chain(plans).collect();
        if !rest.is_empty() {
            let topic = topic.clone();
            writes = blocking(move || {
                for plan in rest {
                    writes.write(&topic, plan, false);
                }
                Ok(writes)
            })
            .await?;
        }
        Ok(Written {
            request_id: req.request_id,
            results: writes.results,
            syncs: writes.syncs,
            _in_flight: in_flight,
        })
    }

    /// Resolves one entry's partition and checks its batches' producer fields.
    fn plan(
        &self,
        topic: &Topic,
        i: Field,
        entry: pb::ProducePartition,
    ) -> Result<Planned, (u32, RpcError)> {
        let index = match (entry.partition, &entry.partition_key) {
            (Some(_), Some(_)) => {
                return Err((
                    0,
                    RpcError::invalid("partition and partition_key are both set; set one")
                        .at(&i.entry()),
                ));
            }
            (Some(p), None) => p,
            (None, Some(key)) => {
                let count = NonZeroU32::new(topic.partition_count())
                    .ok_or_else(|| (0, RpcError::internal("topic has no partitions")))?;
                runnel_proto::partition_for_key(key, count)
            }
            (None, None) => topic.next_round_robin(),
        };
        let partition = topic.partition(index).map_err(|e| (0, e.at(&i.entry())))?;
        let max_batch = partition.max_batch_bytes();
        let mut headers = Vec::with_capacity(entry.batches.len());
        for (j, b) in entry.batches.iter().enumerate() {
            let header = match BatchHeader::decode(b) {
                Ok(h) => h,
                Err(e) => {
                    let e = runnel_storage::Error::from(e);
                    return Err((index, storage_error(&e, &partition, None).at(&i.batch(j))));
                }
            };
            if let Err(e) = self.check_producer(&header, &partition) {
                // A corrupt batch's producer fields mean nothing: report the corruption.
                let e = match batch::validate(b, max_batch) {
                    Err(bad) => storage_error(&bad.into(), &partition, None),
                    Ok(_) => e,
                };
                return Err((index, e.at(&i.batch(j))));
            }
            headers.push(header);
        }
        Ok(Planned {
            entry: i,
            partition,
            batches: entry.batches,
            headers,
        })
    }

    fn check_producer(&self, h: &BatchHeader, p: &Partition) -> Result<(), RpcError> {
        let (id, epoch, seq) = (h.producer_id, h.producer_epoch, h.base_sequence);
        if id == -1 && epoch == -1 && seq == -1 {
            return Ok(());
        }
        if id < 0 || epoch < 0 || seq < 0 {
            return Err(RpcError::invalid(format!(
                "producer_id {id}, producer_epoch {epoch}, base_sequence {seq}: a batch is idempotent with all three 0 or more, or not with all three -1"
            )));
        }
        self.producers.check(id, epoch).map_err(|e| {
            if e.code == ErrorCode::UnknownProducer {
                RpcError::new(
                    e.code,
                    format!("{} (on {}/{})", e.message, p.topic, p.index),
                )
            } else {
                e
            }
        })
    }

    /// A new idempotent producer id with epoch 0, or the bumped epoch of an existing id
    /// (`InitProducer`).
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`crate::producers::Producers::init`].
    pub(crate) async fn init_producer(
        self: &Arc<Self>,
        producer_id: Option<i64>,
        producer_epoch: Option<i32>,
    ) -> Result<(i64, i16), RpcError> {
        self.check_running()?;
        let b = self.clone();
        blocking(move || b.producers.init(producer_id, producer_epoch)).await
    }

    /// Waits for the fsyncs a written request needs and builds its response.
    pub(crate) async fn produce_finish(self: &Arc<Self>, written: Written) -> pb::ProduceResponse {
        let Written {
            request_id,
            mut results,
            syncs,
            _in_flight,
        } = written;
        let waits: Vec<_> = syncs
            .into_iter()
            .map(|(p, offset, entries)| (p.want_durable(offset), p, entries))
            .collect();
        for (wait, p, entries) in waits {
            if let Err(e) = wait.await {
                let e = not_durable(&e, &p).to_pb();
                for i in entries {
                    results[i].batches.clear();
                    results[i].error = Some(e.clone());
                }
            }
        }
        pb::ProduceResponse {
            request_id,
            results,
            error: None,
        }
    }
}

/// Requests of at most this many bytes are appended on the runtime's thread that received
/// them (`Log::try_write_batches`: a `writev` into the page cache of blocks reserved ahead,
/// plus, once every 16 MiB, the `fallocate` that reserves the next ones; waiting at most
/// 20 µs for the writer lock, never for a roll or an fsync), saving the hand-off to the
/// blocking pool and back that dominates the cost of a small request. Larger requests, and
/// entries the log refuses to write without waiting, go to the blocking pool.
const INLINE_WRITE_MAX: u64 = 64 * 1024;

/// The results of a request's entries, appended in order, and the fsyncs they wait for.
struct Writes {
    results: Vec<pb::ProducePartitionResult>,
    /// Partitions to fsync up to an offset before answering, with the entries that wait.
    syncs: Vec<(Arc<Partition>, u64, Vec<usize>)>,
    /// Index in `syncs` by partition (its address).
    sync_slot: HashMap<usize, usize>,
    sync: bool,
}

impl Writes {
    fn new(entries: usize, sync: bool) -> Self {
        Self {
            results: Vec::with_capacity(entries),
            syncs: Vec::new(),
            sync_slot: HashMap::new(),
            sync,
        }
    }

    /// Appends the next entry and records its result. With `inline` the entry is written only
    /// if the log needs no waiting beyond a brief one for the writer lock
    /// (`Partition::try_append`); otherwise it is handed back, untouched, for a blocking
    /// context. Without `inline`, blocking.
    fn write(
        &mut self,
        topic: &Topic,
        plan: Result<Planned, (u32, RpcError)>,
        inline: bool,
    ) -> Option<Planned> {
        let plan = match plan {
            Ok(p) => p,
            Err((partition, e)) => {
                self.results.push(failed(partition, &e));
                return None;
            }
        };
        let p = &plan.partition;
        if p.is_deleted() {
            self.results
                .push(failed(p.index, &RpcError::unknown_topic(&p.topic)));
            return None;
        }
        let attempt = if inline {
            p.try_append(&plan.batches)
        } else {
            Some(p.append(&plan.batches))
        };
        let Some(result) = attempt else {
            return Some(plan);
        };
        match result {
            Ok(appended) => {
                let mut records = 0u64;
                let mut bytes = 0u64;
                for ((h, b), dup) in plan
                    .headers
                    .iter()
                    .zip(&plan.batches)
                    .zip(&appended.duplicates)
                {
                    if !dup {
                        records += u64::from(h.record_count);
                        bytes += b.len() as u64;
                    }
                }
                topic.metrics.records_in.increment(records);
                topic.metrics.bytes_in.increment(bytes);
                if self.sync {
                    let entry = self.results.len();
                    let syncs = &mut self.syncs;
                    let slot = *self
                        .sync_slot
                        .entry(Arc::as_ptr(p) as usize)
                        .or_insert_with(|| {
                            syncs.push((p.clone(), 0, Vec::new()));
                            syncs.len() - 1
                        });
                    let s = &mut syncs[slot];
                    s.1 = s.1.max(appended.next_offset);
                    s.2.push(entry);
                }
                self.results.push(pb::ProducePartitionResult {
                    partition: p.index,
                    error: None,
                    batches: appended
                        .base_offsets
                        .iter()
                        .zip(&appended.append_times)
                        .zip(&appended.duplicates)
                        .map(|((base, time), dup)| pb::BatchResult {
                            base_offset: *base,
                            append_time_ms: *time,
                            duplicate: *dup,
                        })
                        .collect(),
                });
            }
            Err(e) => {
                let e = if p.is_deleted() && matches!(e, runnel_storage::Error::Closed { .. }) {
                    RpcError::unknown_topic(&p.topic)
                } else {
                    entry_error(&e, &plan)
                };
                self.results.push(failed(p.index, &e));
            }
        }
        None
    }
}

fn failed(partition: u32, e: &RpcError) -> pb::ProducePartitionResult {
    pb::ProducePartitionResult {
        partition,
        error: Some(e.to_pb()),
        batches: Vec::new(),
    }
}

/// The answer for entries written whose fsync then failed: `LOG_FAILED`, whatever the
/// fsync's error, since the log now refuses appends until the broker restarts. The batches
/// are in the log but may not be on disk, so the answer must not read as "not written": a
/// retry (with the same sequence, as `LOG_FAILED` is retriable) is answered as a duplicate
/// if the batch survived the restart and written if it did not.
fn not_durable(e: &runnel_storage::Error, p: &Partition) -> RpcError {
    let cause = storage_error(e, p, None);
    RpcError::new(
        ErrorCode::LogFailed,
        format!(
            "{}/{}: written but not known to be on disk ({}); the log refuses appends until \
             the broker restarts",
            p.topic, p.index, cause.message
        ),
    )
}

fn storage_error(e: &runnel_storage::Error, p: &Partition, epoch: Option<i16>) -> RpcError {
    RpcError::storage(
        e,
        At {
            topic: &p.topic,
            partition: p.index,
            epoch,
        },
    )
}

/// Maps an append error to the batch it concerns, named in the message.
fn entry_error(e: &runnel_storage::Error, plan: &Planned) -> RpcError {
    use runnel_storage::Error as S;
    let p = &plan.partition;
    if e.is_bad_batch() {
        // Find the batch at fault; validation is repeated only on this failure path.
        let max = p.max_batch_bytes();
        for (j, b) in plan.batches.iter().enumerate() {
            if let Err(bad) = batch::validate(b, max) {
                return storage_error(&bad.into(), p, None).at(&plan.entry.batch(j));
            }
        }
        return storage_error(e, p, None).at(&plan.entry.entry());
    }
    let sequence_of = match e {
        S::OutOfOrderSequence {
            producer_id,
            received,
            ..
        } => Some((*producer_id, *received)),
        S::UnknownProducer {
            producer_id,
            sequence,
        }
        | S::DuplicateSequence {
            producer_id,
            sequence,
        } => Some((*producer_id, *sequence)),
        S::ProducerFenced { producer_id, .. } => Some((*producer_id, i32::MIN)),
        _ => None,
    };
    if let Some((pid, seq)) = sequence_of {
        let found = plan
            .headers
            .iter()
            .position(|h| h.producer_id == pid && (seq == i32::MIN || h.base_sequence == seq));
        if let Some(j) = found {
            let epoch = plan.headers[j].producer_epoch;
            return storage_error(e, p, Some(epoch)).at(&plan.entry.batch(j));
        }
    }
    storage_error(e, p, None).at(&plan.entry.entry())
}

/// The request field an error concerns: `partitions[i]`, or `partitions[i].batches[j]`.
/// Formatted only on an error path, so that a request allocates no field names.
/// Where an entry is in the request, as error messages name it.
#[derive(Debug, Clone, Copy)]
struct Field {
    /// The entry's index (`partitions[i]`).
    index: usize,
    /// True for an entry of `records` (encoded as one batch by the broker).
    records: bool,
}

impl Field {
    fn new(index: usize, records: bool) -> Self {
        Field { index, records }
    }

    /// The entry: `partitions[i]`.
    fn entry(self) -> String {
        format!("partitions[{}]", self.index)
    }

    /// Its batch `j`: `partitions[i].batches[j]`, or `partitions[i].records` for the one batch
    /// of a record-level entry.
    fn batch(self, j: usize) -> String {
        if self.records {
            format!("partitions[{}].records", self.index)
        } else {
            format!("partitions[{}].batches[{j}]", self.index)
        }
    }
}
