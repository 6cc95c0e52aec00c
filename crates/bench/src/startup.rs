//! `runnel-bench startup`: how long the real `runneld` takes to stop, to open its partitions
//! after a clean stop, and to recover after `kill -9`.
//!
//! The bench never links the broker: it spawns the `runneld` binary (`--runneld`, by default
//! the one next to its own executable) on a fresh data directory with flags it writes
//! (`--data-dir`, `--listen`, `--set ...`), loads it through `runnel-client`, and asks
//! `grpc.health.v1.Health/Check` for the service `""` every [`POLL`] until it answers
//! `SERVING`. Each scenario has a data directory of its own, removed when it ends.
//!
//! | scenario | the data | each round |
//! |----------|----------|------------|
//! | `clean` | `--partitions` partitions in topics of at most [`PARTITIONS_PER_TOPIC`], one `--record-size` record each (one segment each) | SIGTERM, the time until the process exits (stop); start, the time until SERVING (open) |
//! | `kill9-large` | `--bytes` in partitions of `--bytes-per-partition`, segments of [`MAX_SEGMENT_BYTES`], so that all of it sits in active segments | SIGKILL; start, the time until SERVING (recovery, with a warm page cache) |
//! | `kill9-torn` | as `clean` | SIGKILL; [`TORN`] appended to every partition's active segment file (a torn tail); start, the time until SERVING |
//!
//! After the last round the partitions' end offsets are summed (`records_recovered`), so a
//! run also shows that no acknowledged record was lost.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use runnel_client::{Acks, Admin, Client, OffsetSpec, ProducerConfig, ProducerRecord, TopicConfig};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::units;

/// How often the health check is asked while the broker starts.
const POLL: Duration = Duration::from_millis(2);
/// How long a broker runs after its first SERVING before it is sent SIGTERM: `runneld`
/// answers SERVING a moment before it installs its signal handlers, and a SIGTERM in between
/// ends it by the default action, without its shutdown.
const SETTLE: Duration = Duration::from_millis(500);
/// The broker's default `limits.max_partitions_per_topic`: the bench spreads
/// `--partitions` over topics of at most this many.
const PARTITIONS_PER_TOPIC: u32 = 1024;
/// The largest segment the storage engine allows (`MAX_SEGMENT_BYTES` in
/// `crates/storage/src/config.rs`): `kill9-large` topics use it so that nothing is sealed.
const MAX_SEGMENT_BYTES: u64 = 2 << 30;
/// The bytes appended to every active segment in `kill9-torn`: shorter than a batch header,
/// so recovery must cut them.
const TORN: &[u8] = b"torn-tail";
/// Value bytes of each `kill9-large` record: 15 make a batch of about 1 MiB.
const LARGE_RECORD: usize = 64 << 10;
/// Prefix of the topics the bench creates.
const TOPIC: &str = "startup";

/// A startup scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Stop with SIGTERM and open again, many small partitions.
    Clean,
    /// Recover after SIGKILL with `--bytes` in active segments.
    #[value(name = "kill9-large")]
    Kill9Large,
    /// Recover after SIGKILL with a torn tail on every partition.
    #[value(name = "kill9-torn")]
    Kill9Torn,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Clean => "clean",
            Scenario::Kill9Large => "kill9-large",
            Scenario::Kill9Torn => "kill9-torn",
        }
    }
}

/// Examples shown by `runnel-bench startup --help`.
pub const EXAMPLES: &str = "Examples:
  runnel-bench startup                                   # all three scenarios, full size
  runnel-bench startup --scenario clean --partitions 4096 --rounds 3
  runnel-bench startup --scenario kill9-large --bytes 10GiB --dir /var/lib/runnel-bench
  runnel-bench startup --scenario kill9-torn --partitions 512 --output json
  runnel-bench startup --partitions 8 --bytes 1MiB --rounds 1   # a quick look";

/// Arguments of `runnel-bench startup`.
#[derive(Debug, Clone, clap::Args)]
pub struct StartupArgs {
    /// Scenarios to run, in this order (repeat the flag or separate with commas)
    #[arg(
        long = "scenario",
        value_enum,
        value_delimiter = ',',
        default_values_t = [Scenario::Clean, Scenario::Kill9Large, Scenario::Kill9Torn]
    )]
    pub scenarios: Vec<Scenario>,
    /// `clean` and `kill9-torn`: partitions in all, in topics of at most 1024
    #[arg(long, default_value_t = 4096)]
    pub partitions: u32,
    /// `clean` and `kill9-torn`: value bytes of the one record each partition gets
    #[arg(long, value_parser = units::parse_size, default_value = "1KiB")]
    pub record_size: u64,
    /// `kill9-large`: bytes of record values to write before the kill
    #[arg(long, value_parser = units::parse_size, default_value = "10GiB")]
    pub bytes: u64,
    /// `kill9-large`: bytes per partition (at most 2GiB, the largest segment)
    #[arg(long, value_parser = units::parse_size, default_value = "1GiB")]
    pub bytes_per_partition: u64,
    /// Stops and starts (or kills and starts) per scenario
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The broker binary [default: runneld next to runnel-bench]
    #[arg(long, value_name = "PATH")]
    pub runneld: Option<PathBuf>,
    /// Where the temporary data directories go (use the disk you care about) [default: the
    /// system's temporary directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The longest a start, a stop or the data's setup may take before the run fails
    #[arg(long, value_parser = units::parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// No progress lines on stderr
    #[arg(long)]
    pub quiet: bool,
}

impl StartupArgs {
    /// Checks the values that clap cannot.
    ///
    /// # Errors
    /// A message naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.scenarios.is_empty() {
            bail!("--scenario needs at least one of clean, kill9-large, kill9-torn");
        }
        if self.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if self.record_size == 0 || self.record_size > 512 << 10 {
            bail!("--record-size must be 1 B to 512 KiB (one record per batch)");
        }
        if self.bytes == 0 {
            bail!("--bytes must be more than 0");
        }
        if !(LARGE_RECORD as u64..=MAX_SEGMENT_BYTES - (64 << 20))
            .contains(&self.bytes_per_partition)
        {
            bail!("--bytes-per-partition must be 64 KiB to 2 GiB minus 64 MiB (one segment)");
        }
        if self.large_partitions() > PARTITIONS_PER_TOPIC {
            bail!(
                "--bytes / --bytes-per-partition must be at most {PARTITIONS_PER_TOPIC} partitions"
            );
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0");
        }
        Ok(())
    }

    /// The partitions of the `kill9-large` topic.
    fn large_partitions(&self) -> u32 {
        u32::try_from(self.bytes.div_ceil(self.bytes_per_partition.max(1))).unwrap_or(u32::MAX)
    }

    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("runnel-bench startup: {line}");
        }
    }
}

/// One stop-and-open (or kill-and-open) of a scenario.
#[derive(Debug, Clone)]
struct Round {
    /// SIGTERM to exit, for `clean`.
    stop: Option<Duration>,
    /// Spawn to SERVING.
    open: Duration,
    /// Active segment files given a torn tail, for `kill9-torn`.
    torn_files: Option<u64>,
}

/// What one scenario measured.
#[derive(Debug, Clone)]
struct Outcome {
    scenario: Scenario,
    topics: u32,
    partitions: u32,
    records: u64,
    bytes: u64,
    segment_bytes: Option<u64>,
    setup: Duration,
    rounds: Vec<Round>,
    records_recovered: u64,
}

/// Runs the scenarios of `args` and prints their table or JSON.
///
/// # Errors
/// No `runneld` binary, a broker that fails to start, stop or serve within `--timeout`, a
/// record that could not be delivered, or an I/O error in the data directory.
pub async fn run(args: &StartupArgs, json: bool) -> anyhow::Result<String> {
    args.validate()?;
    let runneld = match &args.runneld {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding runnel-bench's own path")?
            .with_file_name("runneld"),
    };
    if !runneld.is_file() {
        bail!(
            "no runneld at {}: build it (cargo build --release -p runnel-broker) or give --runneld",
            runneld.display()
        );
    }
    let base = match &args.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("runnel-startup-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("runnel-startup-").tempdir(),
    }
    .context("creating the temporary directory")?;
    let mut outcomes = Vec::new();
    for &scenario in &args.scenarios {
        let dir = base.path().join(scenario.name());
        let outcome = run_scenario(args, &runneld, &dir, scenario).await;
        // The data of one scenario can be gigabytes: free it before the next.
        let _ = std::fs::remove_dir_all(&dir);
        outcomes.push(outcome?);
    }
    base.close().context("removing the temporary directory")?;
    Ok(if json {
        format!("{}\n", to_json(&runneld, &outcomes))
    } else {
        to_text(&outcomes)
    })
}

/// One scenario on a data directory of its own.
async fn run_scenario(
    args: &StartupArgs,
    bin: &Path,
    dir: &Path,
    scenario: Scenario,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partitions = match scenario {
        Scenario::Clean | Scenario::Kill9Torn => args.partitions,
        Scenario::Kill9Large => args.large_partitions(),
    };
    let mut broker = Runneld::new(bin, dir, partitions, args.timeout);
    args.say(format_args!(
        "{}: starting runneld on {}",
        scenario.name(),
        dir.display()
    ));
    broker.start().await?;
    let setup_started = Instant::now();
    let client = Client::connect(broker.address()).await?;
    let admin = client.admin();
    let (topics, segment_bytes) = match scenario {
        Scenario::Kill9Large => (
            vec![(format!("{TOPIC}-large"), partitions)],
            Some(MAX_SEGMENT_BYTES),
        ),
        Scenario::Clean | Scenario::Kill9Torn => (small_topics(partitions), None),
    };
    for (topic, count) in &topics {
        let config = TopicConfig {
            segment_bytes,
            ..TopicConfig::default()
        };
        admin
            .create_topic(topic, *count, config)
            .await
            .with_context(|| format!("creating topic {topic:?} with {count} partitions"))?;
    }
    args.say(format_args!(
        "{}: {} topics, {partitions} partitions created in {:.1} s; writing",
        scenario.name(),
        topics.len(),
        setup_started.elapsed().as_secs_f64()
    ));
    let (records, bytes) = match scenario {
        Scenario::Kill9Large => fill(&client, &topics[0].0, partitions, args.bytes).await?,
        Scenario::Clean | Scenario::Kill9Torn => {
            one_each(&client, &topics, args.record_size).await?
        }
    };
    drop(client);
    let setup = setup_started.elapsed();
    args.say(format_args!(
        "{}: {records} records ({bytes} bytes) written, setup {:.1} s",
        scenario.name(),
        setup.as_secs_f64()
    ));

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let r = match scenario {
            Scenario::Clean => {
                let stop = broker.stop().await?;
                let open = broker.start().await?;
                Round {
                    stop: Some(stop),
                    open,
                    torn_files: None,
                }
            }
            Scenario::Kill9Large => {
                broker.kill9()?;
                let open = broker.start().await?;
                Round {
                    stop: None,
                    open,
                    torn_files: None,
                }
            }
            Scenario::Kill9Torn => {
                broker.kill9()?;
                let torn = tear_tails(&broker.data_dir, &topics)?;
                let open = broker.start().await?;
                Round {
                    stop: None,
                    open,
                    torn_files: Some(torn),
                }
            }
        };
        args.say(format_args!(
            "{} round {round}: stop {} open {:.3} s",
            scenario.name(),
            r.stop
                .map_or("-".to_owned(), |s| format!("{:.3} s", s.as_secs_f64())),
            r.open.as_secs_f64()
        ));
        rounds.push(r);
    }
    let client = Client::connect(broker.address()).await?;
    let records_recovered = end_offsets(&client.admin(), &topics).await?;
    drop(client);
    broker.stop().await?;
    Ok(Outcome {
        scenario,
        topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
        partitions,
        records,
        bytes,
        segment_bytes,
        setup,
        rounds,
        records_recovered,
    })
}

/// `partitions` partitions as topics of at most [`PARTITIONS_PER_TOPIC`].
fn small_topics(partitions: u32) -> Vec<(String, u32)> {
    let mut topics = Vec::new();
    let mut left = partitions;
    while left > 0 {
        let n = left.min(PARTITIONS_PER_TOPIC);
        topics.push((format!("{TOPIC}-{}", topics.len()), n));
        left -= n;
    }
    topics
}

/// One record of `record_size` value bytes into every partition of `topics`.
async fn one_each(
    client: &Client,
    topics: &[(String, u32)],
    record_size: u64,
) -> anyhow::Result<(u64, u64)> {
    let value = Bytes::from(vec![
        b'r';
        usize::try_from(record_size).unwrap_or(usize::MAX)
    ]);
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Written,
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        })
        .await?;
    let mut records = 0u64;
    for (topic, count) in topics {
        for p in 0..*count {
            // The delivery is awaited by `close` below, for all records at once.
            drop(
                producer
                    .send(ProducerRecord::new(topic.clone(), value.clone()).partition(p))
                    .await?,
            );
            records += 1;
        }
    }
    producer.close().await?;
    Ok((records, records * record_size))
}

/// `bytes` of record values into the partitions of `topic`, round robin, in batches of
/// about 1 MiB.
async fn fill(
    client: &Client,
    topic: &str,
    partitions: u32,
    bytes: u64,
) -> anyhow::Result<(u64, u64)> {
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Written,
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            buffer_bytes: 64 << 20,
            ..ProducerConfig::default()
        })
        .await?;
    let value = Bytes::from(vec![b'L'; LARGE_RECORD]);
    let records = bytes.div_ceil(LARGE_RECORD as u64);
    for i in 0..records {
        let p = u32::try_from(i % u64::from(partitions)).unwrap_or(0);
        drop(
            producer
                .send(ProducerRecord::new(topic.to_owned(), value.clone()).partition(p))
                .await?,
        );
    }
    producer.close().await?;
    Ok((records, records * LARGE_RECORD as u64))
}

/// Appends [`TORN`] to the active (last) segment file of every partition of `topics`;
/// returns how many files it changed.
fn tear_tails(data_dir: &Path, topics: &[(String, u32)]) -> anyhow::Result<u64> {
    use std::io::Write as _;

    let mut torn = 0;
    for (topic, count) in topics {
        for p in 0..*count {
            let dir = data_dir.join("topics").join(topic).join(p.to_string());
            let active = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|x| x == "log"))
                .max()
                .with_context(|| format!("no segment file in {}", dir.display()))?;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&active)
                .and_then(|mut f| f.write_all(TORN))
                .with_context(|| format!("appending to {}", active.display()))?;
            torn += 1;
        }
    }
    Ok(torn)
}

/// The sum of the latest offsets of every partition of `topics`.
async fn end_offsets(admin: &Admin, topics: &[(String, u32)]) -> anyhow::Result<u64> {
    let queries: Vec<(&str, u32, OffsetSpec)> = topics
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.as_str(), p, OffsetSpec::Latest)))
        .collect();
    let mut total = 0;
    // A request of at most a topic's worth of queries, as the broker's fetch limits go.
    for chunk in queries.chunks(PARTITIONS_PER_TOPIC as usize) {
        for listed in admin.list_offsets(chunk).await? {
            total += listed?.offset;
        }
    }
    Ok(total)
}

/// The `runneld` process of a scenario, started and stopped on one data directory.
struct Runneld {
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    settings: Vec<String>,
    timeout: Duration,
    listen: Option<SocketAddr>,
    child: Option<Child>,
}

impl Runneld {
    fn new(bin: &Path, dir: &Path, partitions: u32, timeout: Duration) -> Self {
        let settings = [
            "metrics.enabled=false".to_owned(),
            format!("limits.max_partitions={}", partitions.max(4096)),
            format!("limits.max_partitions_per_topic={PARTITIONS_PER_TOPIC}"),
            // A stop is measured to its end, not cut short by the broker's own deadline.
            format!(
                "shutdown.deadline_ms={}",
                timeout.as_millis().min(3_600_000)
            ),
        ];
        Self {
            bin: bin.to_owned(),
            data_dir: dir.join("data"),
            log: dir.join("runneld.log"),
            settings: settings.to_vec(),
            timeout,
            listen: None,
            child: None,
        }
    }

    /// The listen address of the broker, for `runnel-client`.
    fn address(&self) -> String {
        self.listen.map_or_else(String::new, |a| a.to_string())
    }

    /// Spawns the broker on a free port and waits until its health check says SERVING;
    /// returns the time from the spawn to that answer.
    async fn start(&mut self) -> anyhow::Result<Duration> {
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free local port")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone().context("duplicating the log file")?;
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("RUNNEL_") || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen.to_string());
        for s in &self.settings {
            cmd.arg("--set").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.listen = Some(listen);
        self.wait_serving(listen, spawned).await
    }

    /// Polls the health check every [`POLL`] until it says SERVING.
    async fn wait_serving(
        &mut self,
        listen: SocketAddr,
        spawned: Instant,
    ) -> anyhow::Result<Duration> {
        let endpoint = Endpoint::from_shared(format!("http://{listen}"))
            .context("the broker's address")?
            .connect_timeout(Duration::from_millis(200));
        let mut channel: Option<Channel> = None;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "runneld exited with {status} before it was serving; its log ends:\n{}",
                    self.log_tail()
                );
            }
            if spawned.elapsed() > self.timeout {
                bail!(
                    "runneld not serving after {:?}; its log ends:\n{}",
                    self.timeout,
                    self.log_tail()
                );
            }
            if channel.is_none() {
                channel = endpoint.connect().await.ok();
            }
            if let Some(ch) = &channel {
                let mut health = HealthClient::new(ch.clone());
                let check = health.check(HealthCheckRequest {
                    service: String::new(),
                });
                match tokio::time::timeout(Duration::from_secs(1), check).await {
                    Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => {
                        return Ok(spawned.elapsed());
                    }
                    Ok(Ok(_)) => {}
                    // Not listening yet, or the connection broke: connect again.
                    Ok(Err(_)) | Err(_) => channel = None,
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits [`SETTLE`], sends SIGTERM and waits for the process to exit; returns the time
    /// from the signal to the exit.
    async fn stop(&mut self) -> anyhow::Result<Duration> {
        tokio::time::sleep(SETTLE).await;
        let mut child = self.child.take().context("runneld is not running")?;
        let pid = rustix::process::Pid::from_child(&child);
        let sent = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to runneld")?;
        let timeout = self.timeout;
        let exited = tokio::task::spawn_blocking(move || {
            let status = child.wait();
            (status, sent.elapsed())
        });
        let Ok(waited) = tokio::time::timeout(timeout, exited).await else {
            // The waiting thread owns the child and reaps it once it is gone.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            bail!(
                "runneld did not exit within {timeout:?} of SIGTERM (killed); its log ends:\n{}",
                self.log_tail()
            );
        };
        let (status, took) = waited.context("the waiting thread panicked")?;
        let status = status.context("waiting for runneld")?;
        if !status.success() {
            let early = if std::os::unix::process::ExitStatusExt::signal(&status) == Some(15) {
                " (ended by the signal itself: its handlers were not installed yet)"
            } else {
                ""
            };
            bail!(
                "runneld exited with {status} after SIGTERM{early}; its log ends:\n{}",
                self.log_tail()
            );
        }
        Ok(took)
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("runneld is not running")?;
        child.kill().context("sending SIGKILL to runneld")?;
        child.wait().context("reaping runneld")?;
        Ok(())
    }

    /// The last lines of the broker's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Runneld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Median, minimum and maximum of some seconds; `null` if there are none.
fn spread(values: impl Iterator<Item = Duration>) -> Value {
    let mut v: Vec<f64> = values.map(|d| d.as_secs_f64()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    json!({
        "median": round6(median),
        "min": round6(v[0]),
        "max": round6(v[v.len() - 1]),
    })
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn to_json(runneld: &Path, outcomes: &[Outcome]) -> Value {
    let scenarios: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let rounds: Vec<Value> = o
                .rounds
                .iter()
                .map(|r| {
                    json!({
                        "stop_seconds": r.stop.map(|d| round6(d.as_secs_f64())),
                        "open_seconds": round6(r.open.as_secs_f64()),
                        "torn_files": r.torn_files,
                    })
                })
                .collect();
            json!({
                "scenario": o.scenario.name(),
                "topics": o.topics,
                "partitions": o.partitions,
                "records": o.records,
                "bytes": o.bytes,
                "segment_bytes": o.segment_bytes,
                "setup_seconds": round6(o.setup.as_secs_f64()),
                "rounds": rounds,
                "stop_seconds": spread(o.rounds.iter().filter_map(|r| r.stop)),
                "open_seconds": spread(o.rounds.iter().map(|r| r.open)),
                "records_recovered": o.records_recovered,
            })
        })
        .collect();
    json!({
        "mode": "startup",
        "runneld": runneld.display().to_string(),
        "scenarios": scenarios,
    })
}

fn to_text(outcomes: &[Outcome]) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>12} {:>7} {:>10} {:>10} {:>10}",
        "scenario", "partitions", "MiB", "round", "stop s", "open s", "torn"
    );
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.3}", d.as_secs_f64()));
    for o in outcomes {
        for (i, r) in o.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<12} {:>10} {:>12.1} {:>7} {:>10} {:>10} {:>10}",
                o.scenario.name(),
                o.partitions,
                o.bytes as f64 / f64::from(1 << 20),
                i + 1,
                secs(r.stop),
                secs(Some(r.open)),
                r.torn_files.map_or("-".to_owned(), |n| n.to_string()),
            );
        }
        let lost = o.records.saturating_sub(o.records_recovered);
        let _ = writeln!(
            out,
            "{:<12} {} records written, {} at the end ({lost} missing); setup {:.1} s",
            "",
            o.records,
            o.records_recovered,
            o.setup.as_secs_f64()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_topics_of_at_most_1024() {
        let t = small_topics(4096);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|(_, n)| *n == 1024));
        let t = small_topics(1030);
        assert_eq!(
            t,
            [("startup-0".to_owned(), 1024), ("startup-1".to_owned(), 6)]
        );
    }

    #[test]
    fn a_torn_tail_goes_on_the_last_segment_of_each_partition() {
        let dir = tempfile::tempdir().unwrap();
        let topics = vec![("t".to_owned(), 2)];
        for p in 0..2 {
            let d = dir.path().join("topics/t").join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("00000000000000000000.log"), b"old").unwrap();
            std::fs::write(d.join("00000000000000000010.log"), b"new").unwrap();
            std::fs::write(d.join("00000000000000000010.index"), b"").unwrap();
        }
        assert_eq!(tear_tails(dir.path(), &topics).unwrap(), 2);
        let d = dir.path().join("topics/t/1");
        assert_eq!(
            std::fs::read(d.join("00000000000000000010.log")).unwrap(),
            [&b"new"[..], TORN].concat()
        );
        assert_eq!(
            std::fs::read(d.join("00000000000000000000.log")).unwrap(),
            b"old"
        );
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = |v: &[u64]| spread(v.iter().map(|&ms| Duration::from_millis(ms)));
        assert_eq!(s(&[]), Value::Null);
        assert_eq!(
            s(&[3, 1, 2]),
            json!({"median": 0.002, "min": 0.001, "max": 0.003})
        );
        assert_eq!(
            s(&[4, 1]),
            json!({"median": 0.0025, "min": 0.001, "max": 0.004})
        );
    }
}
