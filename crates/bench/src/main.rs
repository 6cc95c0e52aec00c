//! `runnel-bench`, Runnel's benchmark tool: loads a running broker through `runnel-client`
//! and reports throughput and latency, and measures the machine's own limits so that the
//! broker's figures can be read as ratios of what the machine allows. `docs/benchmarks.md`
//! gives the figures and the commands that reproduce them.
//!
//! | mode | what runs | what is reported |
//! |------|-----------|------------------|
//! | `produce` | `--producers` producers, each its own connection and `Producer` | acknowledged records/s and MB/s; produce-to-ack latency |
//! | `consume` | tops the topic up to `--records` if needed (not timed), then `--consumers` consumers read it from the start | consumed records/s and MB/s |
//! | `e2e` | producers and consumers at once; consumers start at the log end | consumed records/s; produce-to-consume latency (and produce-to-ack) |
//! | `disk` | a plain sequential file write of `--bytes` in 1 MiB buffers + one `fdatasync` | MB/s |
//! | `net` | a plain loopback TCP transfer of `--bytes`, one connection, 1 MiB buffers | MB/s |
//! | `sync` | `--producers` loopback connections, one `--record-size` request in flight each, appended to one file in `--dir` by a thread per connection and answered once a group `fdatasync` covers it: a minimal program, no broker | requests/s; request-to-answer latency; fsyncs and records per fsync |
//! | `paced` | every `--linger`, the records of that interval at `--rate` sent as one message over loopback TCP, not waiting for answers; another thread writes each into a file in `--dir`, answers it and passes it on to a consumer thread: a minimal program, no broker | records/s; message-to-consumer latency (and message-to-answer) |
//! | `cpu` | one thread per CPU reading the clock in a loop for `--duration` (default 5 s) | the share of their time the machine kept from them, and the gaps' percentiles |
//! | `wire` | the record-level calls next to the batch form: one producer pipelining `ProduceStream` requests, then one `Subscribe` reading the records back, per form (`wire.rs`) | records/s, and the CPU microseconds per record of the broker, the bench and the rest of the machine, per form and phase; the record form's records/s over the batch form's |
//!
//! Latencies come from an HDR histogram (microsecond resolution, three significant digits).
//! Produce-to-ack runs from the `send` call to the record's delivery; produce-to-consume
//! from the `send` call to the consumer receiving it, carried as nanoseconds since the
//! bench's start in the value's first 8 bytes (the consumers run in the same process). MB is
//! 10^6 bytes of record values. `--output json` prints one JSON object (`report.rs`); a
//! progress line goes to stderr once a second.
//!
//! The bench talks to the broker through `runnel-client`, as an application does, except
//! `wire`, which uses the generated gRPC stubs of `runnel-proto` as a client in another
//! language does; it never links the broker or the storage engine.

mod args;
mod kafka;
mod limits;
mod load;
mod memory;
mod proc_cpu;
mod report;
mod startup;
mod units;
mod wire;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::args::{BenchArgs, Mode};

const ABOUT: &str = "Runnel's benchmark tool: load a broker through the client library and \
measure the machine's own limits.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "runnel-bench",
    version,
    about = ABOUT,
    after_help = args::EXAMPLES,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// The broker's gRPC address (produce, consume, e2e, wire)
    #[arg(
        long,
        global = true,
        env = "RUNNEL_BROKER",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7171"
    )]
    broker: String,

    /// How the result is printed
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Lines for people.
    Table,
    /// One JSON object.
    Json,
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Producers only: acknowledged throughput and produce-to-ack latency
    Produce(BenchArgs),
    /// Consumers reading data already written (written first if missing)
    Consume(BenchArgs),
    /// Share group members accepting each record on its own, on data already written
    /// (written first if missing)
    Share(BenchArgs),
    /// Producers and consumers at once: end-to-end latency
    E2e(BenchArgs),
    /// The machine's sequential write speed, one fdatasync included (no broker)
    Disk(BenchArgs),
    /// The machine's loopback TCP speed (no broker)
    Net(BenchArgs),
    /// A minimal Kafka client reading partition 0 of --topic over the Kafka listener (--kafka),
    /// one fetch of --batch-size KiB at a time: the yardstick of Kafka clients' reads
    KafkaFetch(BenchArgs),
    /// The group commit a minimal program reaches: durable requests over loopback TCP,
    /// appended and fdatasynced in groups (no broker)
    Sync(BenchArgs),
    /// The latencies a minimal program has at --rate: that interval's records sent as one
    /// message every --linger over loopback TCP, written into a file, answered and passed on
    /// to a consumer (no broker)
    Paced(BenchArgs),
    /// How much time the machine keeps from busy threads, one per CPU (no broker)
    Cpu(BenchArgs),
    /// How long runneld takes to stop, to open after a clean stop, and to recover after
    /// kill -9 (spawns the runneld binary on a temporary data directory)
    #[command(after_help = startup::EXAMPLES)]
    Startup(startup::StartupArgs),
    /// Record-level Produce and Subscribe (records as protobuf messages) next to the batch
    /// form: records/s and CPU per record, through the generated gRPC stubs
    #[command(after_help = wire::EXAMPLES)]
    Wire(wire::WireArgs),
}

/// A parsed command: a load or yardstick run, the startup benchmark, or the wire comparison.
pub(crate) enum Run {
    /// `produce`, `consume`, `e2e` and the yardsticks.
    Bench(BenchArgs),
    /// `startup`.
    Startup(startup::StartupArgs),
    /// `wire`.
    Wire(wire::WireArgs),
}

impl Command {
    /// The run the subcommand asks for; a load's or yardstick's mode is set from it.
    pub(crate) fn into_run(self) -> Run {
        let (mode, mut args) = match self {
            Command::Produce(a) => (Mode::Produce, a),
            Command::Consume(a) => (Mode::Consume, a),
            Command::Share(a) => (Mode::Share, a),
            Command::E2e(a) => (Mode::E2e, a),
            Command::Disk(a) => (Mode::Disk, a),
            Command::Net(a) => (Mode::Net, a),
            Command::KafkaFetch(a) => (Mode::KafkaFetch, a),
            Command::Sync(a) => (Mode::Sync, a),
            Command::Paced(a) => (Mode::Paced, a),
            Command::Cpu(a) => (Mode::Cpu, a),
            Command::Startup(a) => return Run::Startup(a),
            Command::Wire(a) => return Run::Wire(a),
        };
        args.mode = mode;
        Run::Bench(args)
    }
}

/// A measurement of the machine's own limits (`limits.rs`): blocking, no broker.
type Probe = fn(&BenchArgs) -> anyhow::Result<report::Report>;

fn main() -> ExitCode {
    memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "runnel-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// True if the error is stdout closed by its reader (`runnel-bench ... | head`): not a
/// failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.output == Output::Json;
    let run = cli.command.into_run();
    match &run {
        Run::Bench(args) => args.validate()?,
        Run::Startup(args) => args.validate()?,
        Run::Wire(args) => args.validate()?,
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let text = match run {
        Run::Bench(args) => {
            let report = runtime.block_on(measure(cli.broker, args))?;
            if json {
                format!("{}\n", report.to_json())
            } else {
                report.to_text()
            }
        }
        Run::Startup(args) => runtime.block_on(startup::run(&args, json))?,
        Run::Wire(args) => runtime.block_on(wire::run(&cli.broker, &args, json))?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Runs the load or the probe that `args.mode` names.
///
/// # Errors
/// An unreachable broker, a record that could not be delivered, or an I/O error of the
/// `disk`, `net`, `sync` and `paced` modes.
async fn measure(broker: String, args: BenchArgs) -> anyhow::Result<report::Report> {
    // The machine's limits are plain blocking programs.
    let probe: Option<(Probe, &str)> = match args.mode {
        Mode::Disk => Some((limits::disk, "disk")),
        Mode::Net => Some((limits::net, "network")),
        Mode::Sync => Some((limits::sync, "group commit")),
        Mode::Paced => Some((limits::paced, "paced write")),
        Mode::Cpu => Some((limits::cpu, "CPU")),
        Mode::KafkaFetch => Some((kafka::fetch, "Kafka fetch")),
        Mode::Produce | Mode::Consume | Mode::Share | Mode::E2e => None,
    };
    match probe {
        Some((probe, name)) => tokio::task::spawn_blocking(move || probe(&args))
            .await
            .with_context(|| format!("the {name} probe panicked"))?,
        None => load::run(&broker, &args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
