//! Crashes at random moments under load: idempotent producers asking for durable acks and a
//! consumer group committing offsets, while the broker is killed (`kill -9`) and started
//! again, or its machine loses power, again and again. At the end every acknowledged record
//! is stored exactly once, in its producer's order, at the offset it was acknowledged at, and
//! no committed offset ever went backwards.
//!
//! The power cuts run the broker on `runnel-faultfs`: at each cut the process is killed, the
//! filesystem keeps what was fsynced and keeps, drops, tears or garbles the rest, and the
//! broker starts again under a new boot id, as after a reboot.
//!
//! The crash times and cuts come from a seed the test prints; `RUNNEL_CRASH_SEED=<seed>`
//! replays them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use runnel_client::{Acks, ConsumerConfig, OffsetReset, ProducerConfig, ProducerRecord};
use runnel_faultfs::{Cut, Disk, Faults, Mount};
use runnel_proto::pb::{self, ErrorCode};
use runnel_test_support::random::Rng;
use tempfile::TempDir;

use super::client_at;
use super::proxy::Proxy;
use crate::harness::*;

const TOPIC: &str = "crash";
const GROUP: &str = "crash-readers";
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 3;
const KILLS: usize = 12;
const CUTS: usize = 10;
/// Records a producer keeps waiting for before it awaits the oldest.
const IN_FLIGHT: usize = 256;

/// What one producer sent: per sequence number, the offset it was acknowledged at and when
/// the acknowledgement arrived, or none if its delivery failed.
type Outcomes = Vec<Option<(u64, Instant)>>;

/// What the producers ask for, and so what a crash may take of what was acknowledged.
#[derive(Debug, Clone, Copy)]
enum Promise {
    /// `ACKS_DURABLE`: nothing acknowledged is lost.
    Durable,
    /// `ACKS_WRITTEN` under `durability = "interval"`: a power cut may take what was
    /// acknowledged less than this long before it, and nothing older.
    Written { window: Duration },
}

impl Promise {
    fn acks(self) -> Acks {
        match self {
            Promise::Durable => Acks::Durable,
            Promise::Written { .. } => Acks::Written,
        }
    }

    /// If a record whose acknowledgement was seen at `acked` may be lost to the first crash
    /// after it: how long before that crash it was acknowledged. The acknowledgement may have
    /// arrived up to [`SEEN_LATE`] before it was seen, so a crash that close before counts.
    fn may_lose(self, acked: Instant, crashes: &[Instant]) -> Option<Duration> {
        match self {
            Promise::Durable => None,
            Promise::Written { window } => crashes
                .iter()
                .find(|&&c| c + SEEN_LATE >= acked)
                .map(|&c| c.saturating_duration_since(acked))
                .filter(|&age| age < window),
        }
    }
}

/// The flush interval of the `interval` power-cut test, and the window it is held to: the
/// interval, plus the flusher's check interval, plus room for a loaded machine.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const LOSS_WINDOW: Duration = Duration::from_secs(1);
/// How long after its arrival an acknowledgement may be seen (a task's scheduling delay).
const SEEN_LATE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_repeats_nothing_acknowledged() {
    let seed = seed();
    let b = Broker::start().await;
    under_crashes(
        b,
        Rng::new(seed),
        KILLS,
        Promise::Durable,
        async |mut b: Broker| {
            b.kill9();
            b.start_again().await
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_lose_and_repeat_nothing_acknowledged_durable() {
    let seed = seed();
    power_cuts(seed, Promise::Durable, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_under_interval_durability_lose_only_the_last_interval() {
    let seed = seed();
    let interval = format!(
        "topic_defaults.flush_interval_ms={}",
        FLUSH_INTERVAL.as_millis()
    );
    let promise = Promise::Written {
        window: LOSS_WINDOW,
    };
    power_cuts(
        seed,
        promise,
        &[
            "--set",
            "topic_defaults.durability=interval",
            "--set",
            &interval,
        ],
    )
    .await;
}

/// The load under `promise`, the broker on a [`Machine`] whose power is cut [`CUTS`] times.
async fn power_cuts(seed: u64, promise: Promise, args: &[&str]) {
    let Some(mut machine) = Machine::new(seed) else {
        return;
    };
    // Small segments and indexes: the load rolls and seals segments between cuts.
    let mut all = vec![
        "--set",
        "topic_defaults.segment_bytes=131072",
        "--set",
        "topic_defaults.max_batch_bytes=65536",
        "--set",
        "storage.max_index_bytes=16384",
    ];
    all.extend_from_slice(args);
    let b = machine.start(&all).await;
    under_crashes(b, Rng::new(seed), CUTS, promise, async |b: Broker| {
        machine.cut_power(b).await
    })
    .await;
    machine.report();
}

/// A consumer reads records before they are on disk, and a power cut takes them: its
/// group's committed offset still points inside the log (a commit first makes the records
/// below it durable), and the consumer, finding its position past the log end, resumes from
/// the committed offset rather than from the earliest one, skipping none of the records
/// written after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_cut_took_records_a_reader_read_it_resumes_from_its_commit_within_the_log() {
    let Some(mut machine) = Machine::new(seed()) else {
        return;
    };
    // Nothing is fsynced but what a commit or a seal asks for.
    let mut b = machine
        .start(&["--set", "topic_defaults.durability=never"])
        .await;
    create_topic(&b, TOPIC, 1).await;
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let write = async |b: &Broker, tag: &str, from: u64, n: u64| {
        let batch = runnel_test_support::batches::batch_of(tag, from, n);
        let r = produce_acked(b, TOPIC, 0, pb::Acks::Written, vec![batch]).await;
        assert!(r.error.is_none(), "{:?}", r.error);
    };
    let c = client_at(&proxy.addr.to_string()).await;
    let mut consumer = c.consumer(ConsumerConfig::group(GROUP)).expect("consumer");
    let tp = runnel_client::TopicPartition::new(TOPIC, 0);
    consumer
        .assign(tp.clone(), runnel_client::StartAt::Earliest)
        .expect("assign");
    let read = async |consumer: &mut runnel_client::Consumer, n: usize| {
        let mut got = Vec::new();
        while got.len() < n {
            let r = within(consumer.next())
                .await
                .expect("a record")
                .expect("read");
            got.push((
                r.offset,
                String::from_utf8_lossy(&r.value.expect("a value")).into_owned(),
            ));
        }
        got
    };

    write(&b, "committed", 0, 100).await;
    read(&mut consumer, 100).await;
    consumer.commit().await.expect("commit");
    write(&b, "lost", 100, 50).await;
    let lost = read(&mut consumer, 50).await;
    assert_eq!(lost[49], (149, "lost-149".to_owned()));

    b = machine.cut_power_keeping(b, Keep::Durable).await;
    proxy.set_upstream(b.grpc);
    let admin = c.admin();
    let end = admin
        .list_offset(TOPIC, 0, runnel_client::OffsetSpec::Latest)
        .await
        .expect("log end")
        .offset;
    let committed = admin.fetch_committed(GROUP, &[]).await.expect("committed");
    assert_eq!(committed.len(), 1, "{committed:?}");
    assert_eq!(committed[0].offset, Some(100), "{committed:?}");
    assert_eq!(
        end, 100,
        "the commit made the records below it durable, and only those"
    );

    write(&b, "after", 100, 10).await;
    let next = read(&mut consumer, 1).await;
    assert_eq!(next[0], (100, "after-100".to_owned()), "read after the cut");
    drop(consumer);
    machine.report();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_refuses_writes_keeps_reads_and_loses_nothing_acknowledged() {
    let Some(machine) = Machine::new(seed()) else {
        return;
    };
    let mut b = machine.start(&[]).await;
    create_topic(&b, TOPIC, FAULT_PARTITIONS).await;
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let load = Load::start(&proxy.addr.to_string(), Promise::Durable, FAULT_PARTITIONS);
    let started = Instant::now();
    let mut phases = Vec::new();
    let mut phase = |name: &'static str| phases.push((name, started.elapsed()));
    load.progresses(2000, &b).await;
    phase("load");
    let disk = &machine.disk;

    // Full in the middle of batches: the write that passes the capacity is cut short.
    disk.set_faults(Faults {
        capacity: Some(disk.used_bytes() + 200_000),
        ..Faults::default()
    });
    refused(&b, ErrorCode::DiskFull, "disk full while writing").await;
    reads_go_on(&b).await;
    disk.set_faults(Faults::default());
    load.progresses(2000, &b).await;
    phase("full");

    // A failed write is rolled back; the log takes appends again once the disk does.
    disk.set_faults(Faults {
        write_error: true,
        ..Faults::default()
    });
    refused(&b, ErrorCode::Internal, "write segment").await;
    phase("write EIO refused");
    reads_go_on(&b).await;
    phase("write EIO reads");
    disk.set_faults(Faults::default());
    load.progresses(2000, &b).await;
    phase("write EIO");

    // After a failed fsync the logs refuse appends until the broker restarts.
    disk.set_faults(Faults {
        fsync_error: true,
        ..Faults::default()
    });
    refused(&b, ErrorCode::LogFailed, "refuses appends").await;
    reads_go_on(&b).await;
    disk.set_faults(Faults::default());
    refused(&b, ErrorCode::LogFailed, "refuses appends").await;
    let metrics = b.scrape_metrics();
    assert!(sample(&metrics, "runnel_logs_failed") >= 1.0, "{metrics}");
    assert!(
        sample(&metrics, "runnel_group_rebalances_total") >= 1.0,
        "{metrics}"
    );
    b.kill9();
    b = b.start_again().await;
    proxy.set_upstream(b.grpc);
    load.progresses(2000, &b).await;
    phase("fsync EIO, restart");

    let done = load.finish(&b, |_| None).await;
    phase("finish");
    check_commits(&done.commits);
    eprintln!(
        "failing disk: {} records acknowledged, {} stored, {} read by the group; disk {:?}; \
         phases ended at {phases:?}",
        done.acked.acked,
        done.stored,
        done.consumed,
        disk.stats(),
    );
}

/// The value of the metric `name`, a series without labels, in `text` (0 if absent).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Partitions of the failing-disk test: faults hit many logs at once.
const FAULT_PARTITIONS: u32 = 16;

/// Waits until a durable append to partition 0 is refused with `code`, its message holding
/// `needle`.
async fn refused(b: &Broker, code: ErrorCode, needle: &str) {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let batch = || {
        // Unique: a probe that is stored must not look like a record stored twice.
        let value = format!("probe-{}", PROBES.fetch_add(1, Ordering::SeqCst));
        let mut bb = runnel_format::BatchBuilder::new();
        bb.push(None, Some(value.as_bytes()), &[], 0);
        vec![bb.build()]
    };
    let error = within(async {
        loop {
            let r = produce_acked(b, TOPIC, 0, pb::Acks::Durable, batch()).await;
            match r.error {
                Some(e) if e.code == code as i32 => break e,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_inline(Some(&error), code, needle);
}

/// Every partition reads back whole, every batch checking.
async fn reads_go_on(b: &Broker) {
    for p in 0..FAULT_PARTITIONS {
        assert!(
            !fetch_all(b, TOPIC, p, 0).await.is_empty(),
            "partition {p} reads nothing"
        );
    }
}

/// The seed of the crash times and cuts: `RUNNEL_CRASH_SEED`, or the clock's (printed).
fn seed() -> u64 {
    let seed = std::env::var("RUNNEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs())
        });
    eprintln!("RUNNEL_CRASH_SEED={seed}");
    seed
}

/// Runs the load against `b` while `crash` strikes it `crashes` times at random moments
/// (and gives back the broker started again), then checks what was stored.
async fn under_crashes(
    b: Broker,
    mut rng: Rng,
    crashes: usize,
    promise: Promise,
    mut crash: impl AsyncFnMut(Broker) -> Broker,
) {
    let started = Instant::now();
    let mut b = b;
    create_topic(&b, TOPIC, PARTITIONS).await;
    // The restarted broker listens on new ports; the proxy keeps the clients' address.
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let load = Load::start(&proxy.addr.to_string(), promise, PARTITIONS);
    let mut crash_times = Vec::new();
    for _ in 0..crashes {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(450) as u64)).await;
        crash_times.push(Instant::now());
        b = crash(b).await;
        proxy.set_upstream(b.grpc);
    }
    // Load on the last broker for a moment, then let everything finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = load
        .finish(&b, |at| promise.may_lose(at, &crash_times))
        .await;
    check_commits(&done.commits);
    eprintln!(
        "{crashes} crashes in {:.1} s: {} records acknowledged, {} lost (acknowledged at most \
         {:?} before a crash), {} stored, {} read by the group, {} committed offsets observed",
        started.elapsed().as_secs_f64(),
        done.acked.acked,
        done.acked.lost,
        done.acked.oldest_lost,
        done.stored,
        done.consumed,
        done.commits.len(),
    );
}

/// The load: [`PRODUCERS`] producers, a group reader and a watcher of its commits, running
/// until [`Load::finish`].
struct Load {
    partitions: u32,
    stop: Arc<AtomicBool>,
    /// Records acknowledged so far.
    acked: Arc<AtomicU64>,
    producers: Vec<tokio::task::JoinHandle<Outcomes>>,
    reader: tokio::task::JoinHandle<usize>,
    watcher: tokio::task::JoinHandle<Vec<(u32, u64)>>,
}

/// What the load did, checked.
struct Done {
    acked: Acknowledged,
    stored: usize,
    consumed: usize,
    commits: Vec<(u32, u64)>,
}

impl Load {
    fn start(addr: &str, promise: Promise, partitions: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let producers = (0..PRODUCERS)
            .map(|p| {
                let to = Target {
                    addr: addr.to_owned(),
                    partitions,
                    acks: promise.acks(),
                };
                tokio::spawn(produce_until(to, p, acked.clone(), stop.clone()))
            })
            .collect();
        Load {
            partitions,
            reader: tokio::spawn(read_in_group(addr.to_owned(), stop.clone())),
            watcher: tokio::spawn(watch_commits(addr.to_owned(), stop.clone())),
            stop,
            acked,
            producers,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits (within the suite's patience) until `more` records were acknowledged; if they
    /// are not, fails with the end of `b`'s log, which says what the broker was refusing.
    async fn progresses(&self, more: u64, b: &Broker) {
        let start = self.acked();
        let waited = tokio::time::timeout(PATIENCE, async {
            while self.acked() < start + more {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if waited.is_err() {
            let log = b.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the load had {} of {more} more acknowledgements after {PATIENCE:?}; the broker's log ends:\n{}",
                self.acked() - start,
                tail.join("\n")
            );
        }
    }

    /// Stops the load, waits for every delivery, reads what `b` stored and checks it
    /// ([`check_acknowledged`]).
    async fn finish(self, b: &Broker, may_lose: impl Fn(Instant) -> Option<Duration>) -> Done {
        self.stop.store(true, Ordering::SeqCst);
        let mut sent = Vec::new();
        for p in self.producers {
            sent.push(p.await.expect("producer task"));
        }
        let consumed = self.reader.await.expect("reader task");
        let commits = self.watcher.await.expect("watcher task");
        let mut stored = Vec::new();
        for p in 0..self.partitions {
            stored.push(values(&fetch_all(b, TOPIC, p, 0).await, 0));
        }
        let acked = check_acknowledged(&sent, &stored, may_lose);
        assert!(consumed > 0, "the group read nothing");
        Done {
            acked,
            stored: stored.iter().map(Vec::len).sum(),
            consumed,
            commits,
        }
    }
}

/// A machine whose disk is a `runnel-faultfs` filesystem and whose power can be cut.
struct Machine {
    disk: Disk,
    mount: Option<Mount>,
    /// Holds the mount point and the boot id file.
    dir: TempDir,
    rng: Rng,
    cuts: Vec<Cut>,
}

impl Machine {
    /// A machine, or none (after saying so) where the disk cannot be mounted (not root).
    fn new(seed: u64) -> Option<Self> {
        if !runnel_faultfs::can_mount() {
            eprintln!("SKIPPED: mounting runnel-faultfs needs root and /dev/fuse");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = Disk::new();
        std::fs::create_dir(dir.path().join("disk")).expect("mount point");
        let mut machine = Machine {
            mount: None,
            disk,
            dir,
            rng: Rng::new(seed ^ 0x5eed),
            cuts: Vec::new(),
        };
        machine.power_on();
        Some(machine)
    }

    fn disk_path(&self) -> PathBuf {
        self.dir.path().join("disk")
    }

    fn boot_id(&self) -> PathBuf {
        self.dir.path().join("boot_id")
    }

    /// Mounts the disk under a new boot id.
    fn power_on(&mut self) {
        let r = [self.rng.next_u64(), self.rng.next_u64()];
        let id = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            r[0] >> 32,
            (r[0] >> 16) & 0xffff,
            r[0] & 0xffff,
            r[1] >> 48,
            r[1] & 0xffff_ffff_ffff
        );
        std::fs::write(self.boot_id(), id).expect("boot id");
        let mount = self.disk.mount(&self.disk_path()).unwrap_or_else(|e| {
            panic!("mounting runnel-faultfs (needs /dev/fuse and root, as in CI): {e}")
        });
        self.mount = Some(mount);
    }

    /// Starts the broker on the disk; its start's `syncfs`, which a FUSE server never sees,
    /// is made here.
    async fn start(&self, args: &[&str]) -> Broker {
        let logs = tempfile::tempdir().expect("temp dir");
        let b =
            Broker::start_booted(logs, self.disk_path().join("data"), args, &self.boot_id()).await;
        self.disk.sync_all();
        b
    }

    /// Kills the broker, cuts the power (what was not made durable decided at random), and
    /// starts the broker again.
    async fn cut_power(&mut self, b: Broker) -> Broker {
        self.cut_power_keeping(b, Keep::Random).await
    }

    /// Kills the broker, cuts the power keeping `keep`, and starts the broker again.
    async fn cut_power_keeping(&mut self, mut b: Broker, keep: Keep) -> Broker {
        b.kill9();
        if let Some(mount) = self.mount.take() {
            mount.unmount().expect("unmount");
        }
        let rng = &mut self.rng;
        let cut = match keep {
            Keep::Random => self.disk.power_cut(&mut || rng.next_u64()),
            // The first choice of every decision keeps nothing that was not made durable.
            Keep::Durable => self.disk.power_cut(&mut || 0),
        };
        self.cuts.push(cut);
        self.power_on();
        let b = b.start_again().await;
        self.disk.sync_all();
        b
    }

    /// Prints what the cuts did.
    fn report(&self) {
        let sum = |f: fn(&Cut) -> u64| self.cuts.iter().map(f).sum::<u64>();
        eprintln!(
            "{} power cuts: {} unsynced bytes; files rewound {}, kept {}, torn {}, scattered {}; \
             directory changes lost {}, kept {}; disk {:?}",
            self.cuts.len(),
            sum(|c| c.unsynced_bytes),
            sum(|c| c.files_rewound as u64),
            sum(|c| c.files_kept as u64),
            sum(|c| c.files_torn as u64),
            sum(|c| c.files_scattered as u64),
            sum(|c| c.dir_changes_lost as u64),
            sum(|c| c.dir_changes_kept as u64),
            self.disk.stats(),
        );
    }
}

/// What a power cut keeps of what was not made durable.
enum Keep {
    /// Decided at random: none, all, a torn prefix, or scattered parts, per file.
    Random,
    /// Nothing.
    Durable,
}

/// The value of producer `p`'s record number `seq`.
fn value(p: usize, seq: usize) -> String {
    format!("p{p}-{seq:08}")
}

/// Where a producer sends.
struct Target {
    addr: String,
    partitions: u32,
    acks: Acks,
}

/// Sends records to the partitions in turn until `stop`, counting acknowledgements in
/// `acked`, then waits for every delivery.
async fn produce_until(
    to: Target,
    p: usize,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Outcomes {
    let Target {
        addr,
        partitions,
        acks,
    } = to;
    let c = client_at(&addr).await;
    let producer = c
        .producer(ProducerConfig {
            acks,
            linger: Duration::from_millis(1),
            // Longer than any restart: every record is delivered in the end.
            delivery_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let mut waiting = std::collections::VecDeque::new();
    let mut outcomes = Vec::new();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let partition = (seq % partitions as usize) as u32;
        let record = ProducerRecord::new(TOPIC, value(p, seq)).partition(partition);
        let delivery = producer.send(record).await.expect("queued");
        let acked = acked.clone();
        // Awaited at once, so that the time an acknowledgement was seen is when it arrived.
        waiting.push_back(tokio::spawn(async move {
            let outcome = delivery.await.ok().map(|m| (m.offset, Instant::now()));
            if outcome.is_some() {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        }));
        outcomes.push(None);
        seq += 1;
        if waiting.len() >= IN_FLIGHT {
            let first = seq - waiting.len();
            let d = waiting.pop_front().expect("a delivery");
            outcomes[first] = d.await.expect("delivery task");
        }
    }
    let first = seq - waiting.len();
    for (i, d) in waiting.into_iter().enumerate() {
        outcomes[first + i] = d.await.expect("delivery task");
    }
    outcomes
}

/// A member of the group with auto-commit, reading until `stop`; returns how many records
/// it got (errors while the broker is down are expected and skipped).
async fn read_in_group(addr: String, stop: Arc<AtomicBool>) -> usize {
    let c = client_at(&addr).await;
    let mut consumer = c
        .consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            auto_commit_interval: Some(Duration::from_millis(100)),
            session_timeout: Some(Duration::from_secs(6)),
            ..ConsumerConfig::group(GROUP)
        })
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut read = 0;
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Ok(Some(Ok(_))) => read += 1,
            Ok(Some(Err(_))) | Err(_) => {}
            Ok(None) => break,
        }
    }
    // The broker may be restarting; the commit on close is not what is checked.
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
    read
}

/// Reads the group's committed offsets every few milliseconds until `stop`: each partition's
/// observations in order (reads while the broker is down fail and are skipped).
async fn watch_commits(addr: String, stop: Arc<AtomicBool>) -> Vec<(u32, u64)> {
    let c = client_at(&addr).await;
    let admin = c.admin();
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let read = tokio::time::timeout(Duration::from_secs(1), admin.fetch_committed(GROUP, &[]));
        if let Ok(Ok(offsets)) = read.await {
            for o in offsets {
                if let Some(offset) = o.offset {
                    seen.push((o.partition, offset));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// What [`check_acknowledged`] found.
#[derive(Debug, Default)]
struct Acknowledged {
    acked: usize,
    /// Acknowledged records a crash was allowed to take and took.
    lost: usize,
    /// How long before its crash the oldest lost record was acknowledged.
    oldest_lost: Duration,
}

/// Every acknowledged record is stored once, at its acknowledged offset, unless `may_lose`
/// (given when its acknowledgement arrived) allows it to be missing (and says how long before
/// its crash it was acknowledged); every record stored is
/// stored after the records its producer sent to that partition before it; unacknowledged
/// records are stored at most once.
fn check_acknowledged(
    sent: &[Outcomes],
    stored: &[Vec<String>],
    may_lose: impl Fn(Instant) -> Option<Duration>,
) -> Acknowledged {
    let mut at: HashMap<&str, (u32, u64)> = HashMap::new();
    for (p, values) in stored.iter().enumerate() {
        for (offset, v) in values.iter().enumerate() {
            let previous = at.insert(v.as_str(), (p as u32, offset as u64));
            assert!(
                previous.is_none(),
                "{v} is stored twice: {previous:?} and {:?}",
                (p, offset)
            );
        }
    }
    let mut found = Acknowledged::default();
    for (p, outcomes) in sent.iter().enumerate() {
        // Per partition, the offsets of this producer's stored records in sequence order.
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (seq, outcome) in outcomes.iter().enumerate() {
            let v = value(p, seq);
            let partition = (seq % stored.len()) as u32;
            let stored_at = at.get(v.as_str()).copied();
            if let Some((offset, when)) = outcome {
                found.acked += 1;
                if let (None, Some(age)) = (stored_at, may_lose(*when)) {
                    found.lost += 1;
                    found.oldest_lost = found.oldest_lost.max(age);
                    continue;
                }
                assert_eq!(
                    stored_at,
                    Some((partition, *offset)),
                    "{v} was acknowledged at offset {offset} of partition {partition}, {:?} \
                     before the test ended",
                    when.elapsed()
                );
            }
            if let Some((_, offset)) = stored_at {
                if let Some(&before) = last.get(&partition) {
                    assert!(
                        offset > before,
                        "{v} at {offset} is stored before an earlier record at {before}"
                    );
                }
                last.insert(partition, offset);
            }
        }
    }
    assert!(found.acked > 0, "nothing was acknowledged");
    found
}

/// No partition's committed offset is ever seen lower than it was seen before.
fn check_commits(seen: &[(u32, u64)]) {
    let mut high: HashMap<u32, u64> = HashMap::new();
    for &(partition, offset) in seen {
        let before = high.entry(partition).or_insert(offset);
        assert!(
            offset >= *before,
            "partition {partition}'s committed offset went back from {before} to {offset}"
        );
        *before = offset;
    }
    assert!(!seen.is_empty(), "no committed offset was ever observed");
}
