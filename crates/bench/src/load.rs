//! The broker load of `produce`, `consume` and `e2e`: producer and consumer tasks, each on
//! its own connection, the progress line, and the broker memory sampler.
//!
//! A producer task sends as fast as `send` accepts records (or at `--rate`), and hands each
//! record's [`DeliveryFuture`] with its send time to an acknowledger task through a bounded
//! channel; the acknowledger awaits them in order and records produce-to-ack latency. The
//! broker answers a producer's requests in order, so waiting in order measures each record
//! when its batch is acknowledged (all of a batch's records resolve at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use runnel_client::{
    AckMode, Acks, AlterShareGroup, Client, ClientConfig, Compression, ConsumerConfig, Delivered,
    Deliveries, DeliveryFuture, ProducerConfig, ProducerRecord, ShareConsumerConfig, ShareStart,
    StartAt, TopicConfig, TopicPartition,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::args::{AcksArg, BenchArgs, CompressionArg, Mode, SendArg};
use crate::proc_cpu::{Cpu, CpuPerRecord};
use crate::report::{Latency, Report, Rss, micros_histogram};

/// Records waiting for their acknowledgement per producer, beyond those the producer's own
/// buffer holds back.
const ACK_QUEUE: usize = 1 << 16;
/// Counters are published to the progress line every this many records.
const PUBLISH_EVERY: u64 = 1024;
/// Records a consumer takes from its buffer before it checks its stop signal and deadline.
const FAST_PATH_MAX: u32 = 4096;
/// An e2e or consume run fails if no record arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of a batch header (`docs/storage-format.md`).
const BATCH_HEADER: usize = 65;
/// The producer's allowance for a record's position in a batch (`POSITION_SLACK`).
const POSITION_SLACK: usize = 20;

/// Counters shared by the tasks and the progress line.
#[derive(Debug)]
struct Shared {
    /// The time base of the send times carried in e2e values.
    base: Instant,
    sent: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What one producer task did.
struct Produced {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// What one consumer task did.
struct Consumed {
    records: u64,
    bytes: u64,
    /// When the first record arrived.
    first: Option<Instant>,
    last: Option<Instant>,
    latency: Histogram<u64>,
}

/// Runs `produce`, `consume` or `e2e` against the broker.
pub async fn run(broker: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    let client = Client::connect(broker.to_owned()).await?;
    let admin = client.admin();
    let created = admin
        .ensure_topic(&args.topic, args.partitions, TopicConfig::default())
        .await
        .with_context(|| format!("creating topic {:?}", args.topic))?;
    let description = admin.describe_topic(&args.topic).await?;
    if !created && description.partition_count != args.partitions {
        eprintln!(
            "runnel-bench: topic {:?} exists with {} partitions; using them",
            args.topic, description.partition_count
        );
    }
    let shared = Arc::new(Shared {
        base: Instant::now(),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(match args.mode {
        Mode::Consume => "consume",
        Mode::Share => "share",
        _ => "produce",
    });
    let progress = (!args.quiet).then(|| tokio::spawn(progress(shared.clone(), phase_rx)));
    let (rss_stop, rss) = match args.broker_pid {
        Some(pid) => {
            let (tx, rx) = watch::channel(false);
            (Some(tx), Some(tokio::spawn(sample_rss(pid, rx))))
        }
        None => (None, None),
    };
    let mut stalled = Vec::new();
    for i in 0..args.stalled_consumers {
        // The smallest window: a consumer that stops reading stalls the broker's sends at
        // once, as one whose process stopped would, instead of taking megabytes first.
        let c = Client::connect_with(ClientConfig {
            receive_window_bytes: 65_535,
            ..ClientConfig::new(broker)
        })
        .await?;
        // And the smallest buffers: one response of at most 64 KiB between its readers and
        // the application that never comes.
        let mut consumer = c.consumer(ConsumerConfig {
            buffered_responses: 1,
            max_bytes_per_response: 64 << 10,
            ..consumer_config()
        })?;
        for p in stalled_partitions(i, args.stalled_consumers, description.partition_count) {
            consumer.assign(TopicPartition::new(&args.topic, p), StartAt::Latest)?;
        }
        stalled.push(consumer);
    }

    let result = match args.mode {
        Mode::Produce => produce_only(broker, args, &shared).await,
        Mode::Consume => consume_only(broker, args, &shared, &admin, &description, &phase_tx).await,
        Mode::Share => share_only(broker, args, &shared, &admin, &description, &phase_tx).await,
        _ => end_to_end(broker, args, &shared, &description).await,
    };
    drop(stalled);
    if let Some(p) = progress {
        p.abort();
        if !args.quiet {
            eprintln!();
        }
    }
    let mut report = result?;
    if let (Some(stop), Some(task)) = (rss_stop, rss) {
        let _ = stop.send(true);
        report.rss = task.await.ok().flatten();
    }
    if args.cleanup {
        admin
            .delete_topic(&args.topic)
            .await
            .with_context(|| format!("deleting topic {:?}", args.topic))?;
    }
    report.config = config_of(args, description.partition_count);
    if report.errors > 0 {
        eprintln!("runnel-bench: {} records failed", report.errors);
    }
    Ok(report)
}

async fn produce_only(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
) -> anyhow::Result<Report> {
    let cpu = Cpu::now(args.broker_pid)?;
    let started = Instant::now();
    let produced = produce_all(broker, args, shared, false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuPerRecord::between(&cpu, &Cpu::now(args.broker_pid)?, produced.acked);
    let mut r = Report::new("produce");
    r.cpu = Some(cpu);
    r.records = produced.acked;
    r.bytes = produced.acked * args.record_size as u64;
    r.seconds = seconds;
    r.errors = produced.failed;
    r.latency = Latency::from_micros(&produced.latency);
    r.latency_label = "produce to ack";
    if let Some(e) = produced.first_error {
        r.details.push(("first_error", json!(e)));
    }
    Ok(r)
}

/// Writes what the topic lacks of `--records` (untimed), for `consume` and `share`; returns
/// the topic as it is then and the records to read.
async fn ensure_records(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    admin: &runnel_client::Admin,
    description: &runnel_client::TopicDescription,
    phase: &watch::Sender<&'static str>,
) -> anyhow::Result<(runnel_client::TopicDescription, u64)> {
    let mut description = description.clone();
    let available: u64 = description
        .partitions
        .iter()
        .map(|p| p.log_end_offset - p.log_start_offset)
        .sum();
    let wanted = if args.duration.is_some() {
        available.max(1)
    } else {
        args.records
    };
    if available < wanted {
        // Write what is missing first, untimed, with the producer settings given.
        let _ = phase.send("write (untimed)");
        let fill = BenchArgs {
            records: wanted - available,
            duration: None,
            rate: None,
            ..args.clone()
        };
        let produced = produce_all(broker, &fill, shared, false).await?;
        if produced.failed > 0 {
            bail!(
                "writing the data to consume failed for {} records: {}",
                produced.failed,
                produced.first_error.unwrap_or_default()
            );
        }
        description = admin.describe_topic(&args.topic).await?;
        let _ = phase.send(match args.mode {
            Mode::Share => "share",
            _ => "consume",
        });
    }
    Ok((description, wanted))
}

async fn consume_only(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    admin: &runnel_client::Admin,
    description: &runnel_client::TopicDescription,
    phase: &watch::Sender<&'static str>,
) -> anyhow::Result<Report> {
    let (description, wanted) =
        ensure_records(broker, args, shared, admin, description, phase).await?;
    if args.group {
        return group_only(broker, args, shared, wanted).await;
    }
    // Each partition's share of `wanted`, from its start.
    let held: Vec<u64> = description
        .partitions
        .iter()
        .map(|p| p.log_end_offset - p.log_start_offset)
        .collect();
    let ranges = description
        .partitions
        .iter()
        .zip(shares(wanted, &held))
        .filter(|(_, share)| *share > 0)
        .map(|(p, share)| {
            (
                p.partition,
                p.log_start_offset,
                Some(p.log_start_offset + share),
            )
        })
        .collect();
    let deadline = args.duration.map(|d| Instant::now() + d);
    let cpu = Cpu::now(args.broker_pid)?;
    let started = Instant::now();
    let consumed = consume_all(broker, args, shared, ranges, false, deadline, None).await?;
    let seconds = consumed
        .last
        .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    let cpu = CpuPerRecord::between(&cpu, &Cpu::now(args.broker_pid)?, consumed.records);
    let mut r = Report::new("consume");
    r.cpu = Some(cpu);
    r.records = consumed.records;
    r.bytes = consumed.bytes;
    r.seconds = seconds;
    // Time to the first record: for a topic whose start is in tiered storage, the first
    // ranged reads of the object store.
    if let Some(first) = consumed.first {
        let ms = first.duration_since(started).as_secs_f64() * 1000.0;
        r.details
            .push(("first_record_ms", (((ms * 10.0).round()) / 10.0).into()));
    }
    Ok(r)
}

/// `share`: `--consumers` members of a new share group, starting at the earliest record,
/// accept each record on its own until `--records` (or every record stored, with
/// `--duration`) are accepted.
async fn share_only(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    admin: &runnel_client::Admin,
    description: &runnel_client::TopicDescription,
    phase: &watch::Sender<&'static str>,
) -> anyhow::Result<Report> {
    let (_, wanted) = ensure_records(broker, args, shared, admin, description, phase).await?;
    let group = format!("runnel-bench-{}", std::process::id());
    admin
        .alter_share_group(
            &group,
            &AlterShareGroup {
                start: Some(ShareStart::Earliest),
                ..AlterShareGroup::default()
            },
        )
        .await
        .context("creating the share group")?;
    let mut r = members(broker, args, shared, "share", |client| {
        let config = ShareConsumerConfig {
            ack_mode: AckMode::Manual,
            ..ShareConsumerConfig::new(group.clone(), [args.topic.clone()])
        };
        let consumer = client.share_consumer(config)?;
        Ok(tokio::spawn(share_member(consumer, shared.clone(), wanted)))
    })
    .await?;
    admin.delete_share_group(&group, true).await?;
    r.details.push(("group", json!(group)));
    Ok(r)
}

/// `consume --group`: `--consumers` members of a new consumer group read `wanted` records
/// from the earliest, committing offsets (at the client's interval, and when they leave).
async fn group_only(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    wanted: u64,
) -> anyhow::Result<Report> {
    let group = format!("runnel-bench-{}", std::process::id());
    let mut r = members(broker, args, shared, "consume", |client| {
        let mut consumer = client.consumer(ConsumerConfig::group(group.clone()))?;
        consumer.subscribe(&[args.topic.as_str()])?;
        Ok(tokio::spawn(group_member(consumer, shared.clone(), wanted)))
    })
    .await?;
    r.details.push(("group", json!(group)));
    Ok(r)
}

/// Runs `--consumers` members, each started by `start` on a connection of its own, until
/// they all end; reports the records they counted in `shared.consumed` and the value bytes
/// they return, with the CPU each record cost.
async fn members(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    mode: &'static str,
    mut start: impl FnMut(Client) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<u64>>>,
) -> anyhow::Result<Report> {
    let cpu = Cpu::now(args.broker_pid)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.consumers.max(1) {
        tasks.push(start(Client::connect(broker.to_owned()).await?)?);
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.context("a member panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let records = shared.consumed.load(Ordering::Relaxed);
    let mut r = Report::new(mode);
    r.cpu = Some(CpuPerRecord::between(
        &cpu,
        &Cpu::now(args.broker_pid)?,
        records,
    ));
    r.records = records;
    r.bytes = bytes;
    r.seconds = seconds;
    Ok(r)
}

/// One consumer group member: reads until the members together read `wanted`, then leaves
/// (committing); returns the value bytes it read.
async fn group_member(
    mut consumer: runnel_client::Consumer,
    shared: Arc<Shared>,
    wanted: u64,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    while shared.consumed.load(Ordering::Relaxed) < wanted {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        match next {
            Ok(Some(record)) => {
                bytes += record?.value.as_ref().map_or(0, |v| v.len() as u64);
                shared.consumed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => break,
            // Nothing for a while: look at the count again (the others may be done).
            Err(_) => {}
        }
    }
    consumer.close().await?;
    Ok(bytes)
}

/// One share group member: accepts each record it gets, one acknowledgement per record,
/// until the members together accepted `wanted`; returns the value bytes it accepted.
async fn share_member(
    mut consumer: runnel_client::ShareConsumer,
    shared: Arc<Shared>,
    wanted: u64,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    let mut last_record = Instant::now();
    while shared.consumed.load(Ordering::Relaxed) < wanted {
        let records = consumer.poll().await?;
        if records.is_empty() {
            if last_record.elapsed() > STALL_TIMEOUT {
                bail!("no record for {STALL_TIMEOUT:?}");
            }
            continue;
        }
        last_record = Instant::now();
        for record in &records {
            bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
            consumer.accept(record);
        }
        shared
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    consumer.close().await?;
    Ok(bytes)
}

async fn end_to_end(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    description: &runnel_client::TopicDescription,
) -> anyhow::Result<Report> {
    let ranges = description
        .partitions
        .iter()
        .map(|p| (p.partition, p.log_end_offset, None))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumers = {
        let broker = broker.to_owned();
        let args = args.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            consume_all(&broker, &args, &shared, ranges, true, None, Some(stop_rx)).await
        })
    };
    let cpu = Cpu::now(args.broker_pid)?;
    let started = Instant::now();
    let produced = produce_all(broker, args, shared, true).await;
    // Wait until everything acknowledged has been consumed, or nothing moves any more.
    let target = produced.as_ref().map_or(0, |p| p.acked);
    let mut last_seen = (shared.consumed.load(Ordering::Relaxed), Instant::now());
    while !consumers.is_finished() {
        let now = shared.consumed.load(Ordering::Relaxed);
        if now >= target {
            break;
        }
        if now != last_seen.0 {
            last_seen = (now, Instant::now());
        } else if last_seen.1.elapsed() > STALL_TIMEOUT {
            let _ = stop_tx.send(true);
            bail!("consumers stalled at {now} of {target} records");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(true);
    let consumed = consumers.await.context("the consumer tasks panicked")??;
    let produced = produced?;
    let cpu = CpuPerRecord::between(&cpu, &Cpu::now(args.broker_pid)?, consumed.records);
    let mut r = Report::new("e2e");
    r.cpu = Some(cpu);
    r.records = consumed.records;
    r.bytes = consumed.bytes;
    r.seconds = consumed
        .last
        .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    r.errors = produced.failed;
    r.latency = Latency::from_micros(&consumed.latency);
    r.latency_label = "produce to consume";
    r.ack_latency = Latency::from_micros(&produced.latency);
    r.details.push(("produced", json!(produced.acked)));
    if let Some(e) = produced.first_error {
        r.details.push(("first_error", json!(e)));
    }
    Ok(r)
}

/// Runs `args.producers` producer tasks to completion and merges what they did.
async fn produce_all(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    stamp: bool,
) -> anyhow::Result<Produced> {
    let payload = payload(args.record_size);
    let n = u64::from(args.producers);
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut tasks = Vec::new();
    for i in 0..n {
        let quota = match deadline {
            Some(_) => None,
            None => Some(args.records / n + u64::from(i < args.records % n)),
        };
        let client = Client::connect(broker.to_owned()).await?;
        let task = ProducerTask {
            client,
            topic: args.topic.clone(),
            config: producer_config(args),
            quota,
            deadline,
            rate: args.rate.map(|r| r / n as f64),
            payload: payload.clone(),
            stamp,
            send: args.send,
            batch_size: args.batch_size.max(1),
            shared: shared.clone(),
        };
        tasks.push(tokio::spawn(task.run()));
    }
    let mut total = Produced {
        acked: 0,
        failed: 0,
        first_error: None,
        latency: micros_histogram(),
    };
    for t in tasks {
        let p = t.await.context("a producer task panicked")??;
        total.acked += p.acked;
        total.failed += p.failed;
        total.first_error = total.first_error.or(p.first_error);
        total
            .latency
            .add(&p.latency)
            .context("merging latency histograms")?;
    }
    Ok(total)
}

struct ProducerTask {
    client: Client,
    topic: String,
    config: ProducerConfig,
    quota: Option<u64>,
    deadline: Option<Instant>,
    /// Records per second for this task.
    rate: Option<f64>,
    payload: Bytes,
    /// Carry the send time in the value's first 8 bytes (e2e).
    stamp: bool,
    /// One `send` per record, or `send_all` of `batch_size` records.
    send: SendArg,
    batch_size: usize,
    shared: Arc<Shared>,
}

/// Counts one delivery's outcome into `out` (failures and the first error); 1 if it was
/// acknowledged, else 0.
fn settle(
    delivery: runnel_client::Result<runnel_client::RecordMetadata>,
    out: &mut Produced,
) -> u64 {
    match delivery {
        Ok(_) => 1,
        Err(e) => {
            out.failed += 1;
            out.first_error.get_or_insert_with(|| e.to_string());
            0
        }
    }
}

/// Counts a `send_all`'s records: returns how many were stored, adds the others to the
/// failures.
fn settle_all(delivered: &Delivered, out: &mut Produced) -> u64 {
    let stored = delivered.stored();
    if let Some(e) = delivered.first_error() {
        out.failed += (delivered.len() - stored) as u64;
        out.first_error.get_or_insert_with(|| e.to_string());
    }
    stored as u64
}

/// What a producer task hands its acknowledger: one record's delivery, or a `send_all`'s.
enum Sent {
    One(DeliveryFuture),
    All(Deliveries),
}

impl ProducerTask {
    /// A record's value: the payload, with the send time in its first 8 bytes for e2e.
    fn value(&self) -> Bytes {
        if self.stamp {
            let mut v = BytesMut::with_capacity(self.payload.len());
            v.put_u64_le(self.shared.now_ns());
            v.put_slice(&self.payload[8..]);
            v.freeze()
        } else {
            self.payload.clone()
        }
    }

    async fn run(self) -> anyhow::Result<Produced> {
        let producer = self.client.producer(self.config.clone()).await?;
        let (tx, mut rx) = mpsc::channel::<(Instant, Sent)>(ACK_QUEUE);
        let shared = self.shared.clone();
        let acker = tokio::spawn(async move {
            let mut out = Produced {
                acked: 0,
                failed: 0,
                first_error: None,
                latency: micros_histogram(),
            };
            let mut unpublished = 0u64;
            while let Some((sent, deliveries)) = rx.recv().await {
                let failed_before = out.failed;
                let mut acked = 0;
                match deliveries {
                    Sent::One(d) => acked += settle(d.await, &mut out),
                    Sent::All(deliveries) => acked += settle_all(&deliveries.await, &mut out),
                }
                unpublished += acked + out.failed - failed_before;
                // One latency per call, counted for each record it carried.
                out.acked += acked;
                let latency = sent.elapsed().as_micros() as u64;
                out.latency.saturating_record_n(latency, acked);
                if unpublished >= PUBLISH_EVERY {
                    shared.acked.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                }
            }
            shared.acked.fetch_add(unpublished, Ordering::Relaxed);
            out
        });

        let started = Instant::now();
        let mut sent = 0u64;
        let mut unpublished = 0u64;
        // The records `send_all` sends again and again (built once, as iggy-bench does).
        let mut prebuilt: Vec<ProducerRecord> = match self.send {
            SendArg::Record => Vec::new(),
            SendArg::All => (0..self.batch_size)
                .map(|_| ProducerRecord::new(self.topic.as_str(), self.payload.clone()))
                .collect(),
        };
        let result: anyhow::Result<()> = async {
            loop {
                if self.quota.is_some_and(|q| sent >= q) {
                    break;
                }
                if let Some(rate) = self.rate {
                    let due = started + Duration::from_secs_f64(sent as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let now = Instant::now();
                if self.deadline.is_some_and(|d| now >= d) {
                    break;
                }
                let (count, deliveries) = match self.send {
                    SendArg::Record => {
                        let record = ProducerRecord::new(self.topic.as_str(), self.value());
                        (1, Sent::One(producer.send(record).await?))
                    }
                    SendArg::All => {
                        let n = self.quota.map_or(prebuilt.len() as u64, |q| {
                            (q - sent).min(prebuilt.len() as u64)
                        }) as usize;
                        if self.stamp {
                            for r in &mut prebuilt[..n] {
                                r.value = Some(self.value());
                            }
                        }
                        (
                            n as u64,
                            Sent::All(producer.send_all(&prebuilt[..n]).await?),
                        )
                    }
                };
                if tx.send((now, deliveries)).await.is_err() {
                    bail!("the acknowledger stopped");
                }
                sent += count;
                unpublished += count;
                if unpublished >= PUBLISH_EVERY {
                    self.shared.sent.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                }
            }
            Ok(())
        }
        .await;
        self.shared.sent.fetch_add(unpublished, Ordering::Relaxed);
        drop(tx);
        // Failures are counted record by record by the acknowledger.
        let _ = producer.close().await;
        let out = acker.await.context("the acknowledger panicked")?;
        result?;
        Ok(out)
    }
}

/// The partitions stalled subscriber `i` of `n` subscribes to: dealt round-robin over `min(n,
/// partitions)` slots, so that fewer subscribers than partitions share them out and more
/// subscribers than partitions stack up evenly on each.
fn stalled_partitions(i: u32, n: u32, partitions: u32) -> impl Iterator<Item = u32> {
    let slots = n.min(partitions).max(1);
    (0..partitions).filter(move |p| p % slots == i % slots)
}

/// Runs the consumer tasks over `ranges` (partition, first offset, end offset if bounded),
/// dealing partitions among `args.consumers`, until every bounded range is read, `deadline`
/// passes, or `stop` is set; merges what they did.
async fn consume_all(
    broker: &str,
    args: &BenchArgs,
    shared: &Arc<Shared>,
    ranges: Vec<(u32, u64, Option<u64>)>,
    timed: bool,
    deadline: Option<Instant>,
    stop: Option<watch::Receiver<bool>>,
) -> anyhow::Result<Consumed> {
    let n = args.consumers.max(1) as usize;
    let mut dealt: Vec<Vec<(u32, u64, Option<u64>)>> = vec![Vec::new(); n];
    for (i, r) in ranges.into_iter().enumerate() {
        dealt[i % n].push(r);
    }
    let (_keep, default_stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for parts in dealt.into_iter().filter(|p| !p.is_empty()) {
        let client = Client::connect(broker.to_owned()).await?;
        let task = ConsumerTask {
            client,
            topic: args.topic.clone(),
            parts,
            timed,
            deadline,
            stop: stop.clone().unwrap_or_else(|| default_stop.clone()),
            shared: shared.clone(),
        };
        tasks.push(tokio::spawn(task.run()));
    }
    let mut total = Consumed {
        records: 0,
        bytes: 0,
        first: None,
        last: None,
        latency: micros_histogram(),
    };
    for t in tasks {
        let c = t.await.context("a consumer task panicked")??;
        total.records += c.records;
        total.bytes += c.bytes;
        total.last = total.last.max(c.last);
        total.first = match (total.first, c.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total
            .latency
            .add(&c.latency)
            .context("merging latency histograms")?;
    }
    Ok(total)
}

struct ConsumerTask {
    client: Client,
    topic: String,
    parts: Vec<(u32, u64, Option<u64>)>,
    /// Read the send time from the value's first 8 bytes (e2e).
    timed: bool,
    deadline: Option<Instant>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

impl ConsumerTask {
    async fn run(mut self) -> anyhow::Result<Consumed> {
        let mut consumer = self.client.consumer(consumer_config())?;
        // Indexed by partition: a lookup per record costs no hashing.
        let mut ends: Vec<Option<u64>> = Vec::new();
        let mut remaining = 0u64;
        let mut unbounded = false;
        for &(p, start, end) in &self.parts {
            consumer.assign(TopicPartition::new(&self.topic, p), StartAt::Offset(start))?;
            match end {
                Some(end) => {
                    let i = p as usize;
                    if ends.len() <= i {
                        ends.resize(i + 1, None);
                    }
                    ends[i] = Some(end);
                    remaining += end - start;
                }
                None => unbounded = true,
            }
        }
        let mut out = Consumed {
            records: 0,
            bytes: 0,
            first: None,
            last: None,
            latency: micros_histogram(),
        };
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut in_a_row = 0u32;
        while unbounded || remaining > 0 {
            // Records already buffered are taken without arming the stop, deadline and stall
            // timers (which cost more than handling a record); those are checked whenever
            // nothing is ready, and at least every FAST_PATH_MAX records.
            let ready = if in_a_row < FAST_PATH_MAX {
                consumer.next().now_or_never()
            } else {
                None
            };
            let next = match ready {
                Some(r) => {
                    in_a_row += 1;
                    Ok(r)
                }
                None => {
                    in_a_row = 0;
                    tokio::select! {
                        biased;
                        _ = self.stop.changed() => break,
                        () = &mut deadline => break,
                        r = tokio::time::timeout(STALL_TIMEOUT, consumer.next()) => r,
                    }
                }
            };
            let record = match next {
                Ok(Some(r)) => r?,
                Ok(None) => break,
                Err(_) => bail!(
                    "no record arrived for {} s with {remaining} still to read",
                    STALL_TIMEOUT.as_secs()
                ),
            };
            if let Some(&Some(end)) = ends.get(record.partition as usize) {
                if record.offset >= end {
                    continue;
                }
                remaining -= 1;
            }
            let value = record.value.as_deref().unwrap_or_default();
            if self.timed && value.len() >= 8 {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&value[..8]);
                let sent = u64::from_le_bytes(ts);
                let micros = self.shared.now_ns().saturating_sub(sent) / 1000;
                out.latency.saturating_record(micros);
            }
            if out.records == 0 {
                out.first = Some(Instant::now());
            }
            out.records += 1;
            out.bytes += value.len() as u64;
            // Every record: the e2e run stops once the count reaches what was produced.
            self.shared.consumed.fetch_add(1, Ordering::Relaxed);
        }
        out.last = Some(Instant::now());
        Ok(out)
    }
}

/// Splits `wanted` records among partitions holding `available` records each: evenly, and
/// what a partition lacks from the ones that have more.
fn shares(wanted: u64, available: &[u64]) -> Vec<u64> {
    let mut shares = vec![0u64; available.len()];
    let mut left = wanted.min(available.iter().sum());
    while left > 0 {
        let open: Vec<usize> = (0..available.len())
            .filter(|&i| shares[i] < available[i])
            .collect();
        let each = (left / open.len() as u64).max(1);
        for i in open {
            let add = each.min(available[i] - shares[i]).min(left);
            shares[i] += add;
            left -= add;
        }
    }
    shares
}

/// A consumer that reads partitions it is given, with no group and no commits.
fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        client_id: "runnel-bench".to_owned(),
        auto_commit_interval: None,
        ..ConsumerConfig::default()
    }
}

/// The producer settings of `args`.
fn producer_config(args: &BenchArgs) -> ProducerConfig {
    let batch_bytes = batch_bytes(args.record_size, args.batch_size);
    ProducerConfig {
        acks: match args.acks {
            AcksArg::Written => Acks::Written,
            AcksArg::Durable => Acks::Durable,
        },
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        batch_bytes,
        linger: args.linger,
        // The producer needs room for one batch at least.
        buffer_bytes: usize::try_from(args.buffer)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize)
            .max(batch_bytes),
        max_in_flight_per_partition: args.max_in_flight,
        ..ProducerConfig::default()
    }
}

/// The producer `batch_bytes` at which a batch closes with `records` records of
/// `record_size`-byte values (no key, no headers): the batch header, each record's encoding
/// (the offset delta varint grows with the position), and the producer's position slack.
pub(crate) fn batch_bytes(record_size: usize, records: usize) -> usize {
    let varint = |v: u64| -> usize {
        let mut n = 1;
        let mut v = v >> 7;
        while v > 0 {
            n += 1;
            v >>= 7;
        }
        n
    };
    let zigzag = |v: u64| v << 1;
    // attributes, timestamp delta 0, offset delta 0, null key, value length, value, no headers
    let body = 1 + 1 + 1 + 1 + varint(zigzag(record_size as u64)) + record_size + 1;
    let first = varint(zigzag(body as u64)) + body;
    let growth: usize = (0..records as u64).map(|i| varint(zigzag(i)) - 1).sum();
    (BATCH_HEADER + records * first + growth + POSITION_SLACK).max(128)
}

/// A value of `size` bytes: random letters, like Kafka's perf tool uses.
pub(crate) fn payload(size: usize) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'A' + (x % 26) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn config_of(args: &BenchArgs, partitions: u32) -> Vec<(&'static str, serde_json::Value)> {
    fn name<T: clap::ValueEnum>(v: &T) -> String {
        v.to_possible_value()
            .map_or_else(String::new, |p| p.get_name().to_owned())
    }
    vec![
        ("topic", json!(args.topic)),
        ("producers", json!(args.producers)),
        ("consumers", json!(args.consumers)),
        ("group", json!(args.group)),
        ("partitions", json!(partitions)),
        ("records", json!(args.records)),
        ("duration_s", json!(args.duration.map(|d| d.as_secs_f64()))),
        ("record_size", json!(args.record_size)),
        ("batch_size", json!(args.batch_size)),
        ("send", json!(name(&args.send))),
        (
            "batch_bytes",
            json!(batch_bytes(args.record_size, args.batch_size)),
        ),
        ("linger_ms", json!(args.linger.as_secs_f64() * 1000.0)),
        ("compression", json!(name(&args.compression))),
        ("acks", json!(name(&args.acks))),
        ("max_in_flight", json!(args.max_in_flight)),
        ("buffer_bytes", json!(args.buffer)),
        ("rate", json!(args.rate)),
        ("stalled_consumers", json!(args.stalled_consumers)),
    ]
}

/// Prints a progress line to stderr once a second.
async fn progress(shared: Arc<Shared>, phase: watch::Receiver<&'static str>) {
    let started = Instant::now();
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        );
        eprintln!(
            "[{:>5.1}s] {:<16} sent {:>11}  acked {:>11} ({:>9}/s)  consumed {:>11} ({:>9}/s)",
            started.elapsed().as_secs_f64(),
            *phase.borrow(),
            now.0,
            now.1,
            now.1 - last.1,
            now.2,
            now.2 - last.2,
        );
        last = now;
    }
}

/// Samples `pid`'s VmRSS once a second until `stop` is set.
async fn sample_rss(pid: u32, mut stop: watch::Receiver<bool>) -> Option<Rss> {
    let read = || -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let start = read()?;
    let mut rss = Rss {
        start,
        max: start,
        end: start,
        samples: 1,
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Some(v) = read() {
            rss.max = rss.max.max(v);
            rss.end = v;
            rss.samples += 1;
        }
    }
    if let Some(v) = read() {
        rss.max = rss.max.max(v);
        rss.end = v;
        rss.samples += 1;
    }
    Some(rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_subscribers_share_out_the_partitions_or_stack_up_evenly() {
        let of = |i, n, p| stalled_partitions(i, n, p).collect::<Vec<_>>();
        assert_eq!(of(0, 2, 5), [0, 2, 4]);
        assert_eq!(of(1, 2, 5), [1, 3]);
        assert_eq!(of(5, 6, 4), [1]);
        let mut per_partition = [0; 4];
        for i in 0..1000 {
            for p in stalled_partitions(i, 1000, 4) {
                per_partition[p as usize] += 1;
            }
        }
        assert_eq!(per_partition, [250; 4]);
    }

    #[test]
    fn batch_bytes_fit_the_topic_default_for_1000_records_of_1_kib() {
        let b = batch_bytes(1024, 1000);
        assert!(b < 1 << 20, "{b}");
        assert!(b > 1000 * 1024, "{b}");
        // One record per batch: just above one record's encoding.
        let one = batch_bytes(1024, 1);
        assert!((1024 + 65..1024 + 65 + 40).contains(&one), "{one}");
    }

    #[test]
    fn shares_split_evenly_and_take_what_a_partition_lacks_from_the_others() {
        assert_eq!(shares(10, &[100, 100]), [5, 5]);
        assert_eq!(shares(11, &[100, 100, 100]), [4, 4, 3]);
        assert_eq!(shares(2500, &[1900, 1100]), [1400, 1100]);
        assert_eq!(shares(50, &[10, 0, 30]), [10, 0, 30]);
        assert_eq!(shares(0, &[5]), [0]);
    }

    #[test]
    fn the_payload_is_letters_of_the_asked_size() {
        let p = payload(1000);
        assert_eq!(p.len(), 1000);
        assert!(p.iter().all(u8::is_ascii_uppercase));
    }
}
