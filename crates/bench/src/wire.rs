//! `runnel-bench wire`: the record-level calls (`ProducePartition.records`, `Subscribe` with
//! `RECORD_FORMAT_RECORDS`) next to the batch form of the same calls, in records/s and CPU
//! time per record of the broker and of the bench.
//!
//! Unlike the other load modes, this one does not go through `runnel-client`: it drives the
//! broker with the raw stubs that `runnel-proto` generates, as a Python or grpcurl user does
//! who has no batch codec, so that the record-level figures are those such a user can reach.
//! The batch form uses the same stubs and encodes and decodes its batches with
//! `runnel-format`, and that work is counted as the bench's. Only the form differs between
//! the two runs:
//!
//! | phase | both forms | batches | records |
//! |-------|------------|---------|---------|
//! | produce | one `ProduceStream` on its own connection, `--in-flight` requests unanswered, each one entry of `--batch-size` records of `--record-size` bytes for partition 0 of a new 1-partition topic, acks written | the entry's `batches`: one batch built with [`BatchBuilder`] | the entry's `records` |
//! | consume | one `Subscribe` from offset 0 on its own connection until every record written is read | `RECORD_FORMAT_BATCHES`, each batch split and decoded with [`Batches`] | `RECORD_FORMAT_RECORDS` |
//!
//! Each form has its own topic (`<topic>-batches`, `<topic>-records`), deleted once it is
//! read back. CPU time is user plus system time from `/proc/<pid>/stat`, of the broker
//! (`--broker-pid`) and of the bench's own process, and the rest of the machine's (the busy
//! time of `/proc/stat` less those two: kernel writeback and reclaim, other processes), taken
//! before and after each phase and divided by the records of the phase; `/proc` counts in
//! clock ticks (10 ms here). Every record read is checked to be the next offset with a value of
//! `--record-size` bytes, and the count read to equal the count written.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use runnel_format::{BatchBuilder, Batches};
use runnel_proto::pb;
use runnel_proto::pb::admin_service_client::AdminServiceClient;
use runnel_proto::pb::consume_service_client::ConsumeServiceClient;
use runnel_proto::pb::produce_service_client::ProduceServiceClient;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::proc_cpu::{Cpu, CpuPerRecord};
use crate::units;

/// The largest response the bench accepts (a `Subscribe` response is about
/// `subscribe_max_bytes`, 1 MiB by default).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The largest HTTP/2 frame the bench accepts: `runnel-client`'s, so that the batch form's
/// figures compare with the `consume` rows.
const MAX_FRAME_BYTES: u32 = 256 << 10;
/// A phase fails if no answer or record arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Examples shown by `runnel-bench wire --help`.
pub const EXAMPLES: &str = "Examples:
  runnel-bench wire --broker-pid $(pidof runneld)                 # both forms, 1M records of 1 KiB
  runnel-bench wire --format records,batches --broker-pid $(pidof runneld) --output json
  runnel-bench wire --format records --records 100000             # the record-level form alone";

/// How records travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Record batches built and decoded by the bench (`batches`, `RECORD_FORMAT_BATCHES`).
    Batches,
    /// Records as protobuf messages, encoded and decoded by the broker (`records`,
    /// `RECORD_FORMAT_RECORDS`).
    Records,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Batches => "batches",
            Format::Records => "records",
        }
    }
}

/// Arguments of `runnel-bench wire`.
#[derive(Debug, Clone, clap::Args)]
pub struct WireArgs {
    /// The forms to run, in this order (repeat the flag or separate with commas)
    #[arg(
        long = "format",
        value_enum,
        value_delimiter = ',',
        default_values_t = [Format::Batches, Format::Records]
    )]
    pub formats: Vec<Format>,
    /// Records to produce and read back, per form
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes per record value (`100`, `1KiB`)
    #[arg(long, value_parser = units::parse_size, default_value = "1KiB")]
    pub record_size: u64,
    /// Records per produce request (one batch in the batch form); the batch must stay under
    /// the topic's max_batch_bytes (1 MiB by default)
    #[arg(long, default_value_t = 500)]
    pub batch_size: u32,
    /// Produce requests unanswered on the stream
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Prefix of the topics, `<topic>-batches` and `<topic>-records` (replaced if they exist)
    #[arg(long, default_value = "runnel-bench-wire")]
    pub topic: String,
    /// The broker's process id, to measure its CPU time per record
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
}

impl WireArgs {
    /// Checks the values that clap cannot.
    ///
    /// # Errors
    /// A message naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, f) in self.formats.iter().enumerate() {
            if self.formats[..i].contains(f) {
                bail!("--format names {} twice", f.name());
            }
        }
        if self.records == 0 {
            bail!("--records must be at least 1");
        }
        if self.record_size > 512 << 10 {
            bail!("--record-size must be at most 512 KiB");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        Ok(())
    }
}

/// What one phase (a form's produce or consume) measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    records: u64,
    /// Record value bytes.
    bytes: u64,
    seconds: f64,
    /// CPU per record: the bench's, and with `--broker-pid` the broker's and the rest of the
    /// machine's (kernel threads: page cache writeback and reclaim, deferred network work;
    /// other processes).
    cpu: CpuPerRecord,
}

impl Phase {
    fn records_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn mb_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / 1e6 / self.seconds
        } else {
            0.0
        }
    }

    fn to_json(self, format: Format, phase: &str) -> Value {
        json!({
            "format": format.name(),
            "phase": phase,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "records_per_sec": self.records_per_sec().round(),
            "mb_per_sec": round3(self.mb_per_sec()),
            "broker_cpu_us_per_record": self.cpu.broker.map(round3),
            "client_cpu_us_per_record": round3(self.cpu.client),
            "other_cpu_us_per_record": self.cpu.other.map(round3),
        })
    }
}

/// Both phases of one form.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FormRun {
    format: Format,
    produce: Phase,
    consume: Phase,
}

/// Runs the forms of `args` in turn against the broker at `broker` and renders the result.
///
/// # Errors
/// An unreachable broker, a refused request, a stalled phase, or a read that does not give
/// back exactly the records written.
pub async fn run(broker: &str, args: &WireArgs, json: bool) -> anyhow::Result<String> {
    args.validate()?;
    let endpoint = endpoint(broker)?;
    let value = crate::load::payload(usize::try_from(args.record_size)?);
    let mut admin = AdminServiceClient::new(connect(&endpoint).await?);
    let mut runs = Vec::new();
    for &format in &args.formats {
        let topic = format!("{}-{}", args.topic, format.name());
        recreate_topic(&mut admin, &topic).await?;
        // Each phase has a connection of its own, made before its clock starts.
        let channel = connect(&endpoint).await?;
        let done = Arc::new(AtomicU64::new(0));
        let phase = produce(channel, &topic, format, args, &value, &done);
        let produce = measure(args, format, "produce", done.clone(), phase).await?;
        let channel = connect(&endpoint).await?;
        let done = Arc::new(AtomicU64::new(0));
        let phase = consume(channel, &topic, format, args, &done);
        let consume = measure(args, format, "consume", done.clone(), phase).await?;
        ensure!(
            consume.records == produce.records,
            "{}: wrote {} records but read {}",
            format.name(),
            produce.records,
            consume.records
        );
        admin
            .delete_topic(pb::DeleteTopicRequest {
                topic: topic.clone(),
            })
            .await
            .with_context(|| format!("deleting topic {topic:?}"))?;
        runs.push(FormRun {
            format,
            produce,
            consume,
        });
    }
    Ok(if json {
        format!("{}\n", to_json(&runs, args))
    } else {
        to_text(&runs)
    })
}

/// Runs `phase`, which counts its records into `done` and returns the records and value bytes
/// it moved, between two CPU readings, with a progress line.
async fn measure(
    args: &WireArgs,
    format: Format,
    name: &str,
    done: Arc<AtomicU64>,
    phase: impl Future<Output = anyhow::Result<(u64, u64)>>,
) -> anyhow::Result<Phase> {
    let label = format!("{} {name}", format.name());
    let progress = (!args.quiet).then(|| tokio::spawn(progress(label.clone(), done)));
    let before = Cpu::now(args.broker_pid)?;
    let started = Instant::now();
    let result = phase.await;
    let seconds = started.elapsed().as_secs_f64();
    let after = Cpu::now(args.broker_pid)?;
    if let Some(p) = progress {
        p.abort();
    }
    let (records, bytes) = result.with_context(|| label)?;
    Ok(Phase {
        records,
        bytes,
        seconds,
        cpu: CpuPerRecord::between(&before, &after, records),
    })
}

/// Produces `args.records` records to partition 0 of `topic` on one `ProduceStream`, keeping
/// `args.in_flight` requests unanswered; counts acknowledged records into `done`.
async fn produce(
    channel: Channel,
    topic: &str,
    format: Format,
    args: &WireArgs,
    value: &Bytes,
    done: &AtomicU64,
) -> anyhow::Result<(u64, u64)> {
    let mut client = ProduceServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<pb::ProduceRequest>(args.in_flight);
    // The requests sent and not yet answered, (request id, records), in the order sent.
    let mut unanswered: VecDeque<(u64, u64)> = VecDeque::with_capacity(args.in_flight);
    let mut sent = 0u64;
    let send = |sent: &mut u64, unanswered: &mut VecDeque<(u64, u64)>| -> anyhow::Result<()> {
        let n = u64::from(args.batch_size).min(args.records - *sent);
        // The id is the offset the request's first record gets.
        let request = produce_request(*sent, topic, format, n as usize, value, now_ms());
        // The channel has room for `in_flight` requests, and no more are ever unanswered.
        tx.try_send(request)
            .map_err(|_| anyhow::anyhow!("the request stream is closed or full"))?;
        unanswered.push_back((*sent, n));
        *sent += n;
        Ok(())
    };
    // The window is filled before the call, so that the stream opens with requests to read.
    while sent < args.records && unanswered.len() < args.in_flight {
        send(&mut sent, &mut unanswered)?;
    }
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = client
        .produce_stream(requests)
        .await
        .context("opening the produce stream")?
        .into_inner();
    let mut acked = 0u64;
    while let Some((id, n)) = unanswered.pop_front() {
        let response = tokio::time::timeout(STALL_TIMEOUT, responses.message())
            .await
            .context("no produce answer for 60 s")?
            .context("the produce stream failed")?
            .context("the broker ended the produce stream")?;
        check_answer(&response, id, acked)?;
        acked += n;
        done.store(acked, Ordering::Relaxed);
        if sent < args.records {
            send(&mut sent, &mut unanswered)?;
        }
    }
    Ok((acked, acked * args.record_size))
}

/// One produce request: `n` records of `value`, all stamped `timestamp_ms`, for partition 0,
/// as one batch or as records.
fn produce_request(
    id: u64,
    topic: &str,
    format: Format,
    n: usize,
    value: &Bytes,
    timestamp_ms: i64,
) -> pb::ProduceRequest {
    let entry = match format {
        Format::Batches => {
            let mut batch = BatchBuilder::new();
            for _ in 0..n {
                batch.push(None, Some(value), &[], timestamp_ms);
            }
            pb::ProducePartition {
                partition: Some(0),
                batches: vec![batch.build()],
                ..Default::default()
            }
        }
        Format::Records => pb::ProducePartition {
            partition: Some(0),
            records: (0..n)
                .map(|_| pb::Record {
                    timestamp_ms,
                    value: Some(value.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    };
    pb::ProduceRequest {
        request_id: id,
        topic: topic.to_owned(),
        acks: pb::Acks::Written.into(),
        partitions: vec![entry],
    }
}

/// Checks that a produce answer is the one to request `id` (answers come in request order)
/// and that its one batch was stored at offset `acked`, right after the records before it.
///
/// # Errors
/// An error in the answer, or an answer other than the one expected.
fn check_answer(response: &pb::ProduceResponse, id: u64, acked: u64) -> anyhow::Result<()> {
    ensure!(
        response.request_id == id,
        "an answer to request {}, expected one to {id}",
        response.request_id
    );
    if let Some(e) = &response.error {
        bail!("request {id} failed: {} ({:?})", e.message, e.code());
    }
    let [entry] = response.results.as_slice() else {
        bail!(
            "request {id}: {} results for one entry",
            response.results.len()
        );
    };
    if let Some(e) = &entry.error {
        bail!("request {id} failed: {} ({:?})", e.message, e.code());
    }
    let [batch] = entry.batches.as_slice() else {
        bail!(
            "request {id}: {} batch results for one batch",
            entry.batches.len()
        );
    };
    ensure!(
        batch.base_offset == acked,
        "request {id} was stored at offset {}, expected {acked}",
        batch.base_offset
    );
    Ok(())
}

/// Reads partition 0 of `topic` from offset 0 on one `Subscribe` in `format` until
/// `args.records` records are in hand; counts them into `done`.
async fn consume(
    channel: Channel,
    topic: &str,
    format: Format,
    args: &WireArgs,
    done: &AtomicU64,
) -> anyhow::Result<(u64, u64)> {
    let mut client =
        ConsumeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let record_format = match format {
        Format::Batches => pb::RecordFormat::Batches,
        Format::Records => pb::RecordFormat::Records,
    };
    let request = pb::SubscribeRequest {
        topic: topic.to_owned(),
        partition: 0,
        start: Some(pb::StartPosition {
            position: Some(pb::start_position::Position::Offset(0)),
        }),
        format: record_format.into(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(request)
        .await
        .context("subscribing")?
        .into_inner();
    let mut read = Read::new(args.record_size);
    while read.next < args.records {
        let response = tokio::time::timeout(STALL_TIMEOUT, stream.message())
            .await
            .with_context(|| {
                format!(
                    "no record for 60 s at offset {} of {}",
                    read.next, args.records
                )
            })?
            .context("the subscription failed")?
            .context("the broker ended the subscription")?;
        match format {
            Format::Batches => read.batches(&response.batches)?,
            Format::Records => read.records(&response.records)?,
        }
        done.store(read.next, Ordering::Relaxed);
    }
    Ok((read.next, read.bytes))
}

/// A consumer's position: every record taken must be the next offset and carry a value of
/// the size written.
#[derive(Debug)]
struct Read {
    /// The offset of the next record; the records taken so far, reading from 0.
    next: u64,
    /// Value bytes taken.
    bytes: u64,
    record_size: u64,
}

impl Read {
    fn new(record_size: u64) -> Self {
        Self {
            next: 0,
            bytes: 0,
            record_size,
        }
    }

    /// Takes decoded records (the record form).
    fn records(&mut self, records: &[pb::Record]) -> anyhow::Result<()> {
        for r in records {
            self.take(r.offset, r.value.as_deref())?;
        }
        Ok(())
    }

    /// Splits and decodes stored batches (the batch form); records before the position, which
    /// a batch that starts earlier carries, are skipped.
    fn batches(&mut self, batches: &[Bytes]) -> anyhow::Result<()> {
        for bytes in batches {
            for batch in Batches::new(bytes.clone()) {
                let batch = batch.with_context(|| format!("a batch at offset {}", self.next))?;
                for record in batch.records()? {
                    let r = record.with_context(|| format!("a record at offset {}", self.next))?;
                    if r.offset >= self.next {
                        self.take(r.offset, r.value.as_deref())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, offset: u64, value: Option<&[u8]>) -> anyhow::Result<()> {
        ensure!(
            offset == self.next,
            "read offset {offset}, expected {}",
            self.next
        );
        let len = value.map_or(0, <[u8]>::len) as u64;
        ensure!(
            len == self.record_size,
            "the record at offset {offset} has a value of {len} bytes, not {}",
            self.record_size
        );
        self.next += 1;
        self.bytes += len;
        Ok(())
    }
}

/// The record form's records/s over the batch form's, per phase; `None` unless both ran.
fn ratios(runs: &[FormRun]) -> Option<(f64, f64)> {
    let find = |f: Format| runs.iter().find(|r| r.format == f);
    let (batches, records) = (find(Format::Batches)?, find(Format::Records)?);
    let ratio = |r: &Phase, b: &Phase| {
        let b = b.records_per_sec();
        if b > 0.0 {
            r.records_per_sec() / b
        } else {
            0.0
        }
    };
    Some((
        ratio(&records.produce, &batches.produce),
        ratio(&records.consume, &batches.consume),
    ))
}

fn to_json(runs: &[FormRun], args: &WireArgs) -> Value {
    let phases: Vec<Value> = runs
        .iter()
        .flat_map(|r| {
            [
                r.produce.to_json(r.format, "produce"),
                r.consume.to_json(r.format, "consume"),
            ]
        })
        .collect();
    json!({
        "mode": "wire",
        "phases": phases,
        "ratios": ratios(runs).map(|(p, c)| json!({
            "produce": round3(p),
            "consume": round3(c),
        })),
        "config": {
            "formats": args.formats.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "records": args.records,
            "record_size": args.record_size,
            "batch_size": args.batch_size,
            "in_flight": args.in_flight,
            "partitions": 1,
            "acks": "written",
            "broker_pid": args.broker_pid,
        },
    })
}

fn to_text(runs: &[FormRun]) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<8} {:>10} {:>8} {:>11} {:>8} {:>14} {:>14} {:>14}",
        "format",
        "phase",
        "records",
        "seconds",
        "records/s",
        "MB/s",
        "broker us/rec",
        "client us/rec",
        "other us/rec"
    );
    for r in runs {
        for (name, p) in [("produce", &r.produce), ("consume", &r.consume)] {
            let us = |cpu: Option<f64>| cpu.map_or("-".to_owned(), |us| format!("{us:.2}"));
            let _ = writeln!(
                out,
                "{:<8} {:<8} {:>10} {:>8.3} {:>11.0} {:>8.1} {:>14} {:>14.2} {:>14}",
                r.format.name(),
                name,
                p.records,
                p.seconds,
                p.records_per_sec(),
                p.mb_per_sec(),
                us(p.cpu.broker),
                p.cpu.client,
                us(p.cpu.other),
            );
        }
    }
    if let Some((produce, consume)) = ratios(runs) {
        let _ = writeln!(
            out,
            "records/batches, records/s: produce {produce:.2}, consume {consume:.2}"
        );
    }
    out
}

/// The broker's endpoint, with `runnel-client`'s transport settings (no Nagle delay, 256 KiB
/// frames), so that the two forms differ only in the messages they carry.
fn endpoint(broker: &str) -> anyhow::Result<Endpoint> {
    let url = if broker.contains("://") {
        broker.to_owned()
    } else {
        format!("http://{broker}")
    };
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| format!("broker address {url:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES))
}

/// A connection of its own.
async fn connect(endpoint: &Endpoint) -> anyhow::Result<Channel> {
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the broker at {}", endpoint.uri()))
}

/// Deletes `topic` if it exists and creates it with one partition and the broker's defaults.
async fn recreate_topic(
    admin: &mut AdminServiceClient<Channel>,
    topic: &str,
) -> anyhow::Result<()> {
    match admin
        .delete_topic(pb::DeleteTopicRequest {
            topic: topic.to_owned(),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(s).with_context(|| format!("deleting topic {topic:?}")),
    }
    admin
        .create_topic(pb::CreateTopicRequest {
            topic: topic.to_owned(),
            partition_count: 1,
            config: None,
        })
        .await
        .with_context(|| format!("creating topic {topic:?}"))?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Prints `label`, the records done and the rate to stderr once a second.
async fn progress(label: String, done: Arc<AtomicU64>) {
    let started = Instant::now();
    let mut last = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = done.load(Ordering::Relaxed);
        eprintln!(
            "[{:>5.1}s] {label:<16} {now:>11} records ({:>9}/s)",
            started.elapsed().as_secs_f64(),
            now - last
        );
        last = now;
    }
}

/// Rounds to three decimals, so JSON shows no float noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use runnel_format::RecordBatch;

    use super::*;

    fn args(argv: &[&str]) -> Result<WireArgs, String> {
        use clap::Parser as _;

        let cli = crate::Cli::try_parse_from(
            ["runnel-bench", "wire"]
                .into_iter()
                .chain(argv.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        match cli.command.into_run() {
            crate::Run::Wire(a) => a.validate().map(|()| a).map_err(|e| e.to_string()),
            _ => Err("not wire".into()),
        }
    }

    /// A batch as stored: built, then given its base offset (outside the CRC).
    fn stored(n: usize, base_offset: u64, value: &Bytes) -> Bytes {
        let request = produce_request(0, "t", Format::Batches, n, value, 7);
        let mut b = request.partitions[0].batches[0].to_vec();
        b[..8].copy_from_slice(&base_offset.to_le_bytes());
        Bytes::from(b)
    }

    #[test]
    fn the_flags_default_to_both_forms_and_refuse_a_form_twice() {
        let a = args(&[]).unwrap();
        assert_eq!(a.formats, [Format::Batches, Format::Records]);
        assert_eq!(
            (a.records, a.record_size, a.batch_size, a.in_flight),
            (1_000_000, 1024, 500, 8)
        );
        assert_eq!(
            args(&["--format", "records"]).unwrap().formats,
            [Format::Records]
        );
        let e = args(&["--format", "records,records"]).unwrap_err();
        assert!(e.contains("names records twice"), "{e}");
        assert!(args(&["--in-flight", "0"]).is_err());
        assert!(args(&["--batch-size", "0"]).is_err());
    }

    #[test]
    fn both_forms_send_the_same_records_to_partition_0() {
        let value = crate::load::payload(1024);
        let batches = produce_request(3, "t", Format::Batches, 500, &value, 1_700);
        let records = produce_request(3, "t", Format::Records, 500, &value, 1_700);
        for r in [&batches, &records] {
            assert_eq!((r.request_id, r.topic.as_str()), (3, "t"));
            assert_eq!(r.acks, i32::from(pb::Acks::Written));
            assert_eq!(r.partitions.len(), 1);
            assert_eq!(r.partitions[0].partition, Some(0));
        }
        let [batch] = batches.partitions[0].batches.as_slice() else {
            panic!("one batch");
        };
        assert!(batches.partitions[0].records.is_empty());
        // 500 records of 1 KiB stay under the default max_batch_bytes of 1 MiB.
        let decoded: Vec<_> = RecordBatch::new(batch.clone(), 1 << 20)
            .unwrap()
            .records()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let sent = &records.partitions[0].records;
        assert!(records.partitions[0].batches.is_empty());
        assert_eq!((decoded.len(), sent.len()), (500, 500));
        for (d, s) in decoded.iter().zip(sent) {
            assert_eq!((d.key.as_ref(), s.key.as_ref()), (None, None));
            assert_eq!(d.value.as_ref(), Some(&value));
            assert_eq!(s.value.as_ref(), Some(&value));
            assert_eq!((d.timestamp, s.timestamp_ms), (1_700, 1_700));
            assert!(d.headers.is_empty() && s.headers.is_empty());
        }
    }

    #[test]
    fn an_answer_must_be_the_next_one_and_without_error() {
        let answer = |id: u64, base_offset: u64| pb::ProduceResponse {
            request_id: id,
            results: vec![pb::ProducePartitionResult {
                partition: 0,
                error: None,
                batches: vec![pb::BatchResult {
                    base_offset,
                    ..Default::default()
                }],
            }],
            error: None,
        };
        assert!(check_answer(&answer(500, 500), 500, 500).is_ok());
        let e = check_answer(&answer(0, 0), 500, 500).unwrap_err();
        assert!(e.to_string().contains("expected one to 500"), "{e}");
        let e = check_answer(&answer(500, 501), 500, 500).unwrap_err();
        assert!(e.to_string().contains("expected 500"), "{e}");
        let mut failed = answer(0, 0);
        failed.results[0].error = Some(pb::Error {
            code: pb::ErrorCode::BatchTooLarge.into(),
            message: "too large".into(),
        });
        let e = check_answer(&failed, 0, 0).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        failed.results.clear();
        assert!(check_answer(&failed, 0, 0).is_err());
    }

    #[test]
    fn a_read_takes_each_offset_once_in_order_in_both_forms() {
        let value = crate::load::payload(16);
        let mut read = Read::new(16);
        read.batches(&[stored(3, 0, &value)]).unwrap();
        // A batch that starts before the position: its first records are skipped.
        read.batches(&[stored(4, 1, &value)]).unwrap();
        assert_eq!((read.next, read.bytes), (5, 80));
        let record = |offset: u64| pb::Record {
            offset,
            value: Some(value.clone()),
            ..Default::default()
        };
        read.records(&[record(5), record(6)]).unwrap();
        assert_eq!((read.next, read.bytes), (7, 112));
        let e = read.records(&[record(8)]).unwrap_err();
        assert!(e.to_string().contains("read offset 8, expected 7"), "{e}");
        let e = read.batches(&[stored(1, 9, &value)]).unwrap_err();
        assert!(e.to_string().contains("read offset 9, expected 7"), "{e}");
        let short = pb::Record {
            value: Some(Bytes::from_static(b"short")),
            ..record(7)
        };
        let e = read.records(&[short]).unwrap_err();
        assert!(e.to_string().contains("5 bytes, not 16"), "{e}");
    }

    /// A phase whose CPU seconds (the broker's, the bench's) give its per-record figures.
    fn phase(records: u64, seconds: f64, broker: Option<f64>, client: f64) -> Phase {
        let before = Cpu {
            broker: broker.map(|_| 0.0),
            client: 0.0,
            machine: 0.0,
        };
        let after = Cpu {
            broker,
            client,
            machine: client + broker.unwrap_or(0.0) + 0.0005,
        };
        Phase {
            records,
            bytes: records * 1024,
            seconds,
            cpu: CpuPerRecord::between(&before, &after, records),
        }
    }

    #[test]
    fn the_json_object_has_both_forms_their_cpu_per_record_and_the_ratios() {
        let runs = [
            FormRun {
                format: Format::Batches,
                produce: phase(1_000, 0.5, Some(0.002), 0.001),
                consume: phase(1_000, 0.25, Some(0.001), 0.003),
            },
            FormRun {
                format: Format::Records,
                produce: phase(1_000, 1.0, Some(0.004), 0.0015),
                consume: phase(1_000, 1.0, None, 0.002),
            },
        ];
        let a = args(&["--broker-pid", "1"]).unwrap();
        let v = to_json(&runs, &a);
        assert_eq!(v["mode"], "wire");
        let phases = v["phases"].as_array().unwrap();
        assert_eq!(phases.len(), 4);
        let p = &phases[0];
        assert_eq!(
            (p["format"].as_str(), p["phase"].as_str()),
            (Some("batches"), Some("produce"))
        );
        assert_eq!(p["records"], 1_000);
        assert_eq!(p["bytes"], 1_024_000);
        assert_eq!(p["seconds"], 0.5);
        assert_eq!(p["records_per_sec"], 2_000.0);
        assert_eq!(p["mb_per_sec"], 2.048);
        assert_eq!(p["broker_cpu_us_per_record"], 2.0);
        assert_eq!(p["client_cpu_us_per_record"], 1.0);
        assert_eq!(p["other_cpu_us_per_record"], 0.5);
        assert!(phases[3]["broker_cpu_us_per_record"].is_null());
        assert!(phases[3]["other_cpu_us_per_record"].is_null());
        assert_eq!(v["ratios"], json!({"produce": 0.5, "consume": 0.25}));
        assert_eq!(v["config"]["records"], 1_000_000);
        assert_eq!(v["config"]["formats"], json!(["batches", "records"]));
        let text = to_text(&runs);
        assert!(text.contains("produce 0.50, consume 0.25"), "{text}");
        // One form alone has no ratio.
        assert!(to_json(&runs[1..], &a)["ratios"].is_null());
    }
}
