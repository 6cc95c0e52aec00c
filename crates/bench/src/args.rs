//! The flags of the load generators (`produce`, `consume`, `e2e`) and the machine's
//! yardsticks, one set shared by all of them, and the checks clap cannot make.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::units;

/// What a load or yardstick run measures: the subcommand that was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Producers only: acknowledged throughput and produce-to-ack latency.
    Produce,
    /// Consumers reading data already written (written first if missing).
    Consume,
    /// Share group members accepting each record on its own (data written first if missing).
    Share,
    /// Producers and consumers at once: end-to-end latency.
    E2e,
    /// The machine's sequential write speed (no broker).
    Disk,
    /// The machine's loopback TCP speed (no broker).
    Net,
    /// The group commit a minimal program reaches: durable requests over loopback TCP,
    /// appended and fdatasynced in groups (no broker).
    Sync,
    /// The latencies a minimal program has at `--rate`: that interval's records sent as one
    /// message every `--linger` over loopback TCP, written into a file, answered and passed
    /// on to a consumer (no broker).
    Paced,
    /// How much time the machine keeps from busy threads, one per CPU (no broker).
    Cpu,
    /// A minimal Kafka client's reads over the Kafka listener (`--kafka`).
    KafkaFetch,
}

/// Which acknowledgement the producers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// Appended and readable.
    Written,
    /// Fsynced.
    Durable,
}

/// Batch compression.
/// How the producers hand records to the client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendArg {
    /// `Producer::send` per record, awaiting each record's delivery, as applications do.
    Record,
    /// `Producer::send_all` of `--batch-size` records built once and sent again and again,
    /// as iggy-bench resends one prebuilt batch.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// Uncompressed.
    None,
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// Examples shown by `runnel-bench --help`.
pub const EXAMPLES: &str = "Examples:
  runnel-bench produce --records 1000000 --batch-size 1000           # written acks, 1 KiB records
  runnel-bench produce --acks durable --batch-size 1 --max-in-flight 1 --producers 16 --duration 10s
  runnel-bench produce --rate 200000 --linger 1ms --duration 20s       # latency at a fixed rate
  runnel-bench consume --records 1000000                             # catch up on written data
  runnel-bench share --records 1000000 --consumers 4                 # share group, one accept per record
  runnel-bench consume --group --records 1000000 --consumers 4       # the same in a consumer group
  runnel-bench e2e --rate 100000 --duration 20s --output json
  runnel-bench produce --stalled-consumers 4 --broker-pid $(pidof runneld) --duration 30s
  runnel-bench disk --dir /var/lib/runnel && runnel-bench net        # the machine's own limits
  runnel-bench sync --producers 16 --duration 10s --dir /var/lib/runnel # the machine's group commit
  runnel-bench paced --rate 150000 --linger 1ms --duration 20s --dir /var/lib/runnel # the machine's latency at a rate
  runnel-bench cpu --duration 10s                                    # time the host keeps from busy CPUs
  runnel-bench kafka-fetch --kafka 127.0.0.1:9192 --topic orders --records 500000 # a minimal Kafka client's reads
  runnel-bench wire --broker-pid $(pidof runneld)                    # record-level calls next to batches
  scripts/bench-broker.sh                                            # every target, 3 runs each";

/// Arguments of the load generators and the yardsticks.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure: set from the subcommand.
    #[arg(skip = Mode::Produce)]
    pub mode: Mode,
    /// The Kafka listener's address (`kafka-fetch`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9192")]
    pub kafka: String,
    /// The topic to use; created with `--partitions` partitions if missing.
    #[arg(long, default_value = "runnel-bench")]
    pub topic: String,
    /// Producers, each with its own connection (`sync`: its own thread and loopback
    /// connection).
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers, each with its own connection; partitions are dealt among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Records to produce (or consume), all producers together.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Run for this long instead of a record count (`30s`, `2m`); `cpu` spins this long
    /// (5 s unless given).
    #[arg(long, value_parser = units::parse_duration)]
    pub duration: Option<Duration>,
    /// Bytes per record value (`100`, `1KiB`).
    #[arg(long, value_parser = parse_usize_size, default_value = "1KiB")]
    pub record_size: usize,
    /// Records per batch: the producer's batch size is set to hold this many records.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// How producers hand records to the client: one `send` per record, or `send_all` of
    /// `--batch-size` prebuilt records.
    #[arg(long, value_enum, default_value_t = SendArg::Record)]
    pub send: SendArg,
    /// How long a batch may wait for more records (`0`, `1ms`, `5ms`); `paced`: the interval
    /// between messages.
    #[arg(long, value_parser = units::parse_duration, default_value = "5ms")]
    pub linger: Duration,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// What the broker waits for before it acknowledges.
    #[arg(long, value_enum, default_value_t = AcksArg::Written)]
    pub acks: AcksArg,
    /// Batches in flight per partition and producer (1 to 5).
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// The producer's memory for records not yet acknowledged (`32MiB`); a buffer of a few
    /// records makes each producer wait for its acknowledgements (a closed loop).
    #[arg(long, value_parser = units::parse_size, default_value = "32MiB")]
    pub buffer: u64,
    /// Target rate in records/s, all producers together (unlimited if unset).
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    pub rate: Option<f64>,
    /// Consumers that subscribe and never read, to show that a stalled subscriber costs
    /// the broker bounded memory (use with `--broker-pid`); partitions are dealt among them
    /// (each gets one or more, or each partition several subscribers).
    #[arg(long, default_value_t = 0)]
    pub stalled_consumers: u32,
    /// `consume` as members of a new consumer group (subscribed, from the earliest record,
    /// committing offsets) rather than with partitions dealt out
    #[arg(long)]
    pub group: bool,
    /// The broker's process id, to sample its resident memory (VmRSS) once a second and to
    /// report its CPU per record.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Delete the topic when done.
    #[arg(long)]
    pub cleanup: bool,
    /// `disk` and `net`: bytes to write or transfer (`1GiB`).
    #[arg(long, value_parser = units::parse_size, default_value = "1GiB")]
    pub bytes: u64,
    /// `disk`, `sync` and `paced`: the directory to write in; use the broker's data
    /// directory's filesystem.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Checks the values that clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.producers == 0 && matches!(self.mode, Mode::Produce | Mode::E2e | Mode::Sync) {
            bail!("--producers must be at least 1");
        }
        if self.consumers == 0 && matches!(self.mode, Mode::Consume | Mode::Share | Mode::E2e) {
            bail!("--consumers must be at least 1");
        }
        if self.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if !(1..=5).contains(&self.max_in_flight) {
            bail!("--max-in-flight must be 1 to 5");
        }
        if self.mode == Mode::E2e && self.record_size < 8 {
            bail!(
                "--record-size must be at least 8 in e2e mode (the send time is carried in the value)"
            );
        }
        if self.mode == Mode::Sync && self.record_size == 0 {
            bail!("--record-size must be at least 1 in sync mode (each request is appended)");
        }
        if self.mode == Mode::Paced {
            if self.rate.is_none() {
                bail!("--rate is required in paced mode (records per second to send)");
            }
            if self.linger.is_zero() {
                bail!("--linger must be more than 0 in paced mode (the interval between messages)");
            }
            if self.record_size == 0 {
                bail!("--record-size must be at least 1 in paced mode (each message is written)");
            }
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be more than 0");
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            bail!("--rate must be a positive number of records per second");
        }
        if self.records == 0 && self.duration.is_none() {
            bail!("--records must be at least 1 (or give --duration)");
        }
        Ok(())
    }
}

/// A size in bytes that fits memory (`--record-size`).
fn parse_usize_size(text: &str) -> Result<usize, String> {
    let n = units::parse_size(text)?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= 64 << 20)
        .ok_or_else(|| format!("{text:?} is too large for a record (at most 64 MiB)"))
}

/// Parses `runnel-bench <argv>` into the mode's arguments, for the tests of this module and
/// its siblings.
#[cfg(test)]
pub(crate) fn parse_args(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
    use clap::Parser as _;

    let cli =
        crate::Cli::try_parse_from(std::iter::once("runnel-bench").chain(argv.iter().copied()))?;
    match cli.command.into_run() {
        crate::Run::Bench(args) => Ok(args),
        crate::Run::Startup(_) | crate::Run::Wire(_) => Err(clap::Error::raw(
            clap::error::ErrorKind::InvalidSubcommand,
            "startup and wire are not load or yardstick runs of these flags",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(argv: &[&str]) -> Result<(), String> {
        parse_args(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sync_needs_a_producer_and_a_record_to_append() {
        assert_eq!(check(&["sync", "--duration", "1s"]), Ok(()));
        assert_eq!(
            check(&["sync", "--producers", "0"]),
            Err("--producers must be at least 1".into())
        );
        let e = check(&["sync", "--record-size", "0"]).unwrap_err();
        assert!(
            e.starts_with("--record-size must be at least 1 in sync mode"),
            "{e}"
        );
        // Other modes that need no producers still take 0.
        assert_eq!(check(&["consume", "--producers", "0"]), Ok(()));
    }

    #[test]
    fn paced_needs_a_rate_an_interval_and_a_record() {
        assert_eq!(
            check(&["paced", "--rate", "1000", "--linger", "1ms"]),
            Ok(())
        );
        let e = check(&["paced", "--linger", "1ms"]).unwrap_err();
        assert!(e.starts_with("--rate is required in paced mode"), "{e}");
        let e = check(&["paced", "--rate", "1000", "--linger", "0"]).unwrap_err();
        assert!(
            e.starts_with("--linger must be more than 0 in paced mode"),
            "{e}"
        );
        let e = check(&["paced", "--rate", "1000", "--record-size", "0"]).unwrap_err();
        assert!(
            e.starts_with("--record-size must be at least 1 in paced mode"),
            "{e}"
        );
    }
}
