//! Storage engine benchmark: `cargo bench -p runnel-storage`.
//!
//! Prints one table, all figures measured in the same run on the same filesystem:
//!
//! - the yardstick: plain `File::write_all` of 1 MiB buffers, then one `fdatasync`; and the
//!   same with buffers of the benchmark's batch size, to show what unaligned appends cost the
//!   kernel by themselves;
//! - appends of 100 x 1 KiB record batches under `never`, then one fsync (`Log::flush`), so
//!   both write figures include getting the data to disk once at the end;
//! - appends under `always` by 1, 4 and 16 threads, each appending one 1-record (1 KiB) batch
//!   at a time and waiting for its fsync (group commit);
//! - sequential reads of the `never` log with `read(offset, 1 MiB)`, from the page cache.
//!
//! fsync latency on a shared machine drifts from second to second, so the measurements are
//! interleaved in rounds (raw, never, raw, never ...; 1, 4, 16, 1, 4, 16 ... threads): the
//! write figures keep each one's best round, the `always` figures the median round, and the
//! 16-vs-1 speedup is the median of the ratios within each round.
//!
//! | variable                   | default | meaning |
//! |----------------------------|---------|---------|
//! | `RUNNEL_BENCH_BYTES`       | 1 GiB   | bytes written by the yardstick and the `never` appends, per round |
//! | `RUNNEL_BENCH_ROUNDS`      | 3       | rounds of yardstick + `never` appends + reads |
//! | `RUNNEL_BENCH_ALWAYS_ROUNDS` | 7     | rounds of the `always` runs |
//! | `RUNNEL_BENCH_ALWAYS_MS`   | 700     | milliseconds each `always` run lasts |
//! | `RUNNEL_BENCH_DIR`         | the target dir's tmp | where the data goes (the disk you care about, not tmpfs) |
//! | `RUNNEL_BENCH_DEBUG`       | unset   | print fsync counts and times of every `always` run |
//!
//! `cargo test --benches` runs it with tiny sizes as a smoke test.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_storage::batch::BatchBuilder;
use runnel_storage::{Durability, Log, LogConfig, LogEnv, Observer};

const MIB: usize = 1 << 20;
const RECORD_BYTES: usize = 1024;
const THREADS: [usize; 3] = [1, 4, 16];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    std::env::var_os("RUNNEL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_age: None,
        retention_age: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

/// A batch of `records` records with 1 KiB values and 19-byte keys.
fn make_batch(seed: u64, records: u32) -> Bytes {
    let mut b = BatchBuilder::new();
    let mut value = vec![0u8; RECORD_BYTES];
    for i in 0..records {
        for (j, v) in value.iter_mut().enumerate() {
            *v = (seed as usize + i as usize * 7 + j) as u8;
        }
        let key = format!("key-{seed:06}-{i:05}");
        b.push(
            Some(key.as_bytes()),
            Some(&value),
            &[],
            1_700_000_000_000 + i64::from(i),
        );
    }
    b.build()
}

/// Counts fsyncs and their time, to show how many appends each group commit covered.
#[derive(Debug, Default)]
struct FsyncCounter {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Observer for FsyncCounter {
    fn on_fsync(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct Figure {
    name: String,
    bytes: u64,
    records: u64,
    secs: f64,
    /// Appends per fsync, for the `always` runs.
    per_fsync: Option<f64>,
}

impl Figure {
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

fn debug_split(what: &str, wrote: f64, total: f64) {
    if std::env::var_os("RUNNEL_BENCH_DEBUG").is_some() {
        eprintln!(
            "{what}: {wrote:.3} s writing, {:.3} s in the final fsync",
            total - wrote
        );
    }
}

/// Plain buffered writes of `buf_len` bytes each, then one `fdatasync`.
fn yardstick(dir: &Path, total: u64, buf_len: usize) -> Figure {
    let path = dir.join("yardstick.bin");
    let buf = vec![0x5au8; buf_len];
    let started = Instant::now();
    let mut file = File::create(&path).expect("create");
    let mut written = 0u64;
    while written < total {
        file.write_all(&buf).expect("write");
        written += buf.len() as u64;
    }
    let wrote = started.elapsed().as_secs_f64();
    file.sync_data().expect("fdatasync");
    let secs = started.elapsed().as_secs_f64();
    debug_split(&format!("raw {buf_len}"), wrote, secs);
    drop(file);
    std::fs::remove_file(&path).expect("remove");
    Figure {
        name: if buf_len == MIB {
            "raw File::write_all, 1 MiB buffers, + fdatasync".into()
        } else {
            format!("raw File::write_all, {buf_len} B buffers (= batch), + fdatasync")
        },
        bytes: written,
        records: 0,
        secs,
        per_fsync: None,
    }
}

/// Appends about `total` bytes of 100-record batches under `never`, then fsyncs.
fn append_never(dir: &Path, total: u64) -> (Figure, Log) {
    let batches: Vec<Bytes> = (0..16).map(|s| make_batch(s, 100)).collect();
    // One segment, so that the one fsync at the end is the only one, as for the yardstick.
    let config = LogConfig {
        segment_bytes: runnel_storage::MAX_SEGMENT_BYTES,
        ..config(Durability::Never)
    };
    let log = Log::open(dir.join("never"), config).expect("open");
    let started = Instant::now();
    let (mut bytes, mut records, mut i) = (0u64, 0u64, 0usize);
    while bytes < total {
        let b = &batches[i % batches.len()];
        log.append(b.clone()).expect("append");
        bytes += b.len() as u64;
        records += 100;
        i += 1;
    }
    let wrote = started.elapsed().as_secs_f64();
    log.flush().expect("flush");
    let secs = started.elapsed().as_secs_f64();
    debug_split("never", wrote, secs);
    let figure = Figure {
        name: "append 100 x 1 KiB batches, never, + fsync".into(),
        bytes,
        records,
        secs,
        per_fsync: None,
    };
    (figure, log)
}

fn append_always(dir: &Path, threads: usize, run_for: Duration, debug: bool) -> Figure {
    let fsyncs = Arc::new(FsyncCounter::default());
    let env = LogEnv {
        observer: fsyncs.clone(),
        ..LogEnv::default()
    };
    let path = dir.join(format!("always-{threads}"));
    let log = Arc::new(Log::open_with(&path, config(Durability::Always), env).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (log, stop, appended, bytes) =
                (log.clone(), stop.clone(), appended.clone(), bytes.clone());
            std::thread::spawn(move || {
                let batch = make_batch(t as u64, 1);
                while !stop.load(Ordering::Relaxed) {
                    log.append(batch.clone()).expect("append");
                    appended.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("appender");
    }
    let secs = started.elapsed().as_secs_f64();
    let syncs = fsyncs.count.load(Ordering::Relaxed).max(1);
    let records = appended.load(Ordering::Relaxed);
    if debug {
        let busy = fsyncs.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        eprintln!(
            "always, {threads:>2} threads: {records} appends, {syncs} fsyncs of {:.0} us, fsync busy {:.0}%",
            busy / syncs as f64 * 1e6,
            busy / secs * 100.0
        );
    }
    drop(log);
    std::fs::remove_dir_all(&path).expect("remove");
    Figure {
        name: format!(
            "append 1 x 1 KiB batches, always, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ),
        bytes: bytes.load(Ordering::Relaxed),
        records,
        secs,
        per_fsync: Some(records as f64 / syncs as f64),
    }
}

fn read_all(log: &Log) -> Figure {
    let started = Instant::now();
    let (mut at, mut bytes) = (log.start_offset(), 0u64);
    let end = log.end_offset();
    while at < end {
        let r = log.read(at, MIB).expect("read");
        bytes += r.len_bytes() as u64;
        at = r.next_offset;
    }
    let secs = started.elapsed().as_secs_f64();
    Figure {
        name: "read(offset, 1 MiB) in a loop, page cache".into(),
        bytes,
        records: end - log.start_offset(),
        secs,
        per_fsync: None,
    }
}

/// The faster of two runs of the same measurement.
fn best(a: Option<Figure>, b: Figure) -> Figure {
    match a {
        Some(a) if a.mb_per_sec() >= b.mb_per_sec() => a,
        _ => b,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then stay tiny.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total = env_u64("RUNNEL_BENCH_BYTES", if quick { 4 << 20 } else { 1 << 30 });
    let rounds = env_u64("RUNNEL_BENCH_ROUNDS", if quick { 1 } else { 3 }).max(1);
    let always_rounds = env_u64("RUNNEL_BENCH_ALWAYS_ROUNDS", if quick { 1 } else { 7 }).max(1);
    let always_ms = env_u64("RUNNEL_BENCH_ALWAYS_MS", if quick { 50 } else { 700 });
    let debug = std::env::var_os("RUNNEL_BENCH_DEBUG").is_some();
    let base = bench_dir();
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    println!(
        "runnel-storage bench: {} MiB x {rounds} rounds of raw/never/read, {always_rounds} rounds of \
         {always_ms} ms always runs, data in {}",
        total >> 20,
        dir.path().display()
    );

    let batch_len = make_batch(0, 100).len();
    let (mut raw, mut raw_batch, mut never, mut reads) = (None, None, None, None);
    for round in 0..rounds {
        // The order turns each round: on a VM, whichever run first touches memory the
        // previous one freed can pay for the host faulting it back in.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => raw = Some(best(raw, yardstick(dir.path(), total, MIB))),
                1 => raw_batch = Some(best(raw_batch, yardstick(dir.path(), total, batch_len))),
                _ => {
                    let (figure, log) = append_never(dir.path(), total);
                    never = Some(best(never, figure));
                    // Twice: the first pass may still find pages the write left cold.
                    for _ in 0..2 {
                        reads = Some(best(reads, read_all(&log)));
                    }
                    log.close().expect("close");
                    drop(log);
                    std::fs::remove_dir_all(dir.path().join("never")).expect("remove");
                }
            }
        }
    }
    let (raw, never, reads) = (
        raw.expect("round"),
        never.expect("round"),
        reads.expect("round"),
    );

    let mut runs: Vec<Vec<Figure>> = vec![Vec::new(); THREADS.len()];
    for _ in 0..always_rounds {
        for (i, threads) in THREADS.iter().enumerate() {
            runs[i].push(append_always(
                dir.path(),
                *threads,
                Duration::from_millis(always_ms),
                debug,
            ));
        }
    }
    let speedup = median(
        (0..always_rounds as usize)
            .map(|r| runs[2][r].records_per_sec() / runs[0][r].records_per_sec())
            .collect(),
    );
    let always: Vec<Figure> = runs
        .iter()
        .map(|rs| {
            let rate = median(rs.iter().map(Figure::records_per_sec).collect());
            let per_fsync = median(rs.iter().filter_map(|f| f.per_fsync).collect());
            // The median round's figure, by records per second.
            let mut f = rs
                .iter()
                .min_by(|a, b| {
                    (a.records_per_sec() - rate)
                        .abs()
                        .total_cmp(&(b.records_per_sec() - rate).abs())
                })
                .expect("a round")
                .clone();
            f.per_fsync = Some(per_fsync);
            f
        })
        .collect();

    println!();
    println!("| measurement | MB/s | records/s | vs raw write | appends per fsync |");
    println!("|---|---:|---:|---:|---:|");
    let row = |f: &Figure| {
        let records = if f.records == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", f.records_per_sec())
        };
        let per_fsync = f.per_fsync.map_or("-".to_string(), |p| format!("{p:.1}"));
        println!(
            "| {} | {:.0} | {records} | {:.3} | {per_fsync} |",
            f.name,
            f.mb_per_sec(),
            f.mb_per_sec() / raw.mb_per_sec(),
        );
    };
    let raw_batch = raw_batch.expect("round");
    row(&raw);
    row(&raw_batch);
    row(&never);
    always.iter().for_each(row);
    row(&reads);
    println!();
    let ratio = never.mb_per_sec() / raw.mb_per_sec();
    println!(
        "target: never appends >= 0.8 x raw write speed: {ratio:.2} x ({})",
        verdict(ratio >= 0.8)
    );
    println!(
        "target: always, 16 appenders >= 8 x the records/s of 1: {speedup:.1} x, median of {always_rounds} rounds ({})",
        verdict(speedup >= 8.0)
    );
    let gbs = reads.mb_per_sec() / 1000.0;
    println!(
        "target: reads >= 2 GB/s from the page cache: {gbs:.2} GB/s ({})",
        verdict(gbs >= 2.0)
    );
}
