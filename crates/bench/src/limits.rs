//! The machine's own limits, measured with plain programs and none of Runnel's code, so that
//! the broker's figures can be stated as ratios of what this machine allows:
//!
//! - `disk`: `write` of `--bytes` in 1 MiB buffers into a new file in `--dir`, then one
//!   `fdatasync` (the figure counts both): the yardstick of the produce row.
//! - `net`: one loopback TCP connection carrying `--bytes` in 1 MiB `write`s to a reader
//!   with a 1 MiB buffer, on two threads.
//! - `sync`: the group commit a minimal program reaches: `--producers` threads, each with
//!   its own loopback TCP connection, send a `--record-size` request and wait for an 8-byte
//!   answer; a thread per connection on the other side appends the request to one file in
//!   `--dir` and answers once an `fdatasync` covers it. One `fdatasync` runs at a time; its
//!   leader first collects as many appends as the last one left waiting (yielding, for at
//!   most as long as the last one took), as the broker's storage does. No async runtime, no
//!   HTTP/2, no protobuf, no checksums: what fsync and thread wake-ups alone allow, the
//!   yardstick for the broker's durable produce.
//! - `paced`: the latencies a minimal program has at `--rate` records/s: every `--linger` one
//!   thread sends that interval's records as one message over loopback TCP, not waiting for
//!   answers; a thread on the other side writes each message into a file in `--dir` with one
//!   `write`, answers 8 bytes, and passes the message on to a consumer thread over a second
//!   connection. From each message's send: to its answer (`ack_latency`, the analogue of
//!   produce-to-ack) and to the consumer (`latency`, of produce-to-consume). The same bytes
//!   at the same pace as the broker's latency rows, through the page cache and nothing else:
//!   the yardstick for them (a record in the broker also waits up to one linger for its
//!   batch to close, which this does not count).
//! - `cpu`: one thread per CPU reading the clock in a loop for `--duration` (5 s unless
//!   given); every gap of 50 µs or more between two readings is time that thread did not
//!   run: interrupts, other tasks, or, on a virtual machine, the host running something else
//!   on that vCPU, which the guest does not always report as steal time.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::args::BenchArgs;
use crate::report::{Latency, Report, micros_histogram};

const BUF: usize = 1 << 20;

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn create(dir: &Path, name: &str) -> anyhow::Result<(TempFile, File)> {
    let path = dir.join(format!("runnel-bench-{name}-{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok((TempFile(path), file))
}

/// Sequential write speed in `args.dir`, one `fdatasync` included. Blocking.
pub fn disk(args: &BenchArgs) -> anyhow::Result<Report> {
    let buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8 | 1).collect();

    let (guard, mut file) = create(&args.dir, "disk")?;
    let started = Instant::now();
    let mut left = args.bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", guard.0.display()))?;
        left -= n as u64;
    }
    let written = started.elapsed();
    file.sync_data()
        .with_context(|| format!("fdatasync of {}", guard.0.display()))?;
    let total = started.elapsed();
    drop(file);
    drop(guard);

    let mut r = Report::new("disk");
    r.bytes = args.bytes;
    r.seconds = total.as_secs_f64();
    r.details = vec![
        ("write_seconds", json!(round6(written.as_secs_f64()))),
        (
            "fsync_seconds",
            json!(round6((total - written).as_secs_f64())),
        ),
    ];
    r.config = vec![
        ("dir", json!(args.dir.display().to_string())),
        ("buffer_bytes", json!(BUF)),
    ];
    Ok(r)
}

/// Loopback TCP speed over one connection. Blocking.
pub fn net(args: &BenchArgs) -> anyhow::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = listener.local_addr().context("the loopback port")?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let buf = vec![0x5au8; BUF];
    let mut socket = TcpStream::connect(addr).context("connecting over loopback")?;
    let started = Instant::now();
    let mut left = args.bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        socket
            .write_all(&buf[..n])
            .context("sending over loopback")?;
        left -= n as u64;
    }
    socket
        .shutdown(Shutdown::Write)
        .context("closing the loopback connection")?;
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback reader panicked"))?
        .context("receiving over loopback")?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == args.bytes,
        "sent {} bytes over loopback but {received} arrived",
        args.bytes
    );
    let mut r = Report::new("net");
    r.bytes = received;
    r.seconds = seconds;
    r.config = vec![("buffer_bytes", json!(BUF)), ("connections", json!(1))];
    Ok(r)
}

/// What one `sync` connection's server thread appends and fsyncs: one file, one `fdatasync`
/// at a time, each covering every append before it.
struct Commit {
    file: File,
    state: Mutex<CommitState>,
    /// Signalled when an `fdatasync` ends.
    released: Condvar,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Bytes appended.
    written: u64,
    /// Bytes an ended `fdatasync` covered.
    synced: u64,
    /// A leader is collecting its group or running its `fdatasync`.
    running: bool,
    /// Appends waiting for their `fdatasync`.
    waiting: usize,
    /// Appends waiting when the last `fdatasync` ended: the size of the next group.
    expected: usize,
    /// How long the last `fdatasync` took.
    last: Duration,
    /// `fdatasync` calls, and their total time.
    fsyncs: u64,
    fsync_time: Duration,
    /// Why an `fdatasync` failed; every append after it fails too.
    failed: Option<String>,
}

/// A leader never collects its group for longer than this.
const COLLECT_MAX: Duration = Duration::from_millis(1);

impl Commit {
    /// A group commit over `file`, whose first group is one append.
    fn new(file: File) -> Self {
        Self {
            file,
            state: Mutex::new(CommitState {
                expected: 1,
                ..CommitState::default()
            }),
            released: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `record` and returns once an `fdatasync` covers it, running that `fdatasync`
    /// itself if none is running; returns the file size the append ended at.
    fn append(&self, record: &[u8], path: &Path) -> anyhow::Result<u64> {
        let mut st = self.lock();
        // Under the lock: the appends share the file position.
        (&self.file)
            .write_all(record)
            .with_context(|| format!("writing {}", path.display()))?;
        st.written += record.len() as u64;
        let end = st.written;
        st.waiting += 1;
        let result = loop {
            if let Some(e) = &st.failed {
                break Err(anyhow::anyhow!("fdatasync of {}: {e}", path.display()));
            }
            if st.synced >= end {
                break Ok(end);
            }
            if st.running {
                st = self
                    .released
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.running = true;
            let deadline = Instant::now() + st.last.min(COLLECT_MAX);
            while st.waiting < st.expected && Instant::now() < deadline {
                drop(st);
                std::thread::yield_now();
                st = self.lock();
            }
            let covers = st.written;
            drop(st);
            let started = Instant::now();
            let synced = self.file.sync_data();
            let took = started.elapsed();
            st = self.lock();
            st.running = false;
            st.last = took;
            st.fsyncs += 1;
            st.fsync_time += took;
            st.expected = st.waiting.max(1);
            match synced {
                Ok(()) => st.synced = covers,
                Err(e) => st.failed = Some(e.to_string()),
            }
            self.released.notify_all();
        };
        st.waiting -= 1;
        result
    }
}

/// Fills `buf` from `socket`; `false` if the other side closed the connection first.
fn read_or_end(socket: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    match socket.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The answer to every `sync` request.
const SYNC_ACK: [u8; 8] = *b"synced\0\0";

/// One `sync` connection's server side: appends each request and answers it once fsynced,
/// until the client closes the connection.
fn sync_server(
    commit: &Commit,
    path: &Path,
    mut socket: TcpStream,
    record_size: usize,
) -> anyhow::Result<()> {
    let mut record = vec![0u8; record_size];
    loop {
        if !read_or_end(&mut socket, &mut record).context("receiving a request over loopback")? {
            return Ok(());
        }
        commit.append(&record, path)?;
        socket
            .write_all(&SYNC_ACK)
            .context("answering over loopback")?;
    }
}

/// When a `sync` producer stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    After(u64),
    At(Instant),
}

/// One `sync` producer: sends `record` and waits for its answer until `stop`; the round
/// trips in microseconds.
fn sync_producer(
    mut socket: TcpStream,
    record: &[u8],
    stop: Stop,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = micros_histogram();
    let mut ack = [0u8; SYNC_ACK.len()];
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        match stop {
            Stop::After(n) if sent >= n => break,
            Stop::At(t) if now >= t => break,
            _ => {}
        }
        socket
            .write_all(record)
            .context("sending a request over loopback")?;
        socket
            .read_exact(&mut ack)
            .context("waiting for the answer over loopback")?;
        hist.saturating_record(now.elapsed().as_micros() as u64);
        sent += 1;
    }
    Ok(hist)
}

/// The group commit a minimal program reaches on this machine: `--producers` loopback
/// connections, one request in flight each, appended to one file and answered once
/// fsynced. Blocking.
pub fn sync(args: &BenchArgs) -> anyhow::Result<Report> {
    let (guard, file) = create(&args.dir, "sync")?;
    let commit = Arc::new(Commit::new(file));
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let producers = args.producers as usize;
    let mut clients = Vec::with_capacity(producers);
    let mut servers = Vec::with_capacity(producers);
    for i in 0..producers {
        let (client, server) = loopback_pair(&listener)?;
        let (commit, path, size) = (commit.clone(), guard.0.clone(), args.record_size);
        servers.push(
            std::thread::Builder::new()
                .name(format!("sync-server-{i}"))
                .spawn(move || sync_server(&commit, &path, server, size))
                .context("starting a server thread")?,
        );
        clients.push(client);
    }
    let record: Arc<[u8]> = (0..args.record_size).map(|i| (i % 251) as u8 | 1).collect();
    let started = Instant::now();
    let stops = (0..producers).map(|i| match args.duration {
        Some(d) => Stop::At(started + d),
        // The records, dealt: the first `records % producers` send one more.
        None => Stop::After(
            args.records / producers as u64
                + u64::from((i as u64) < args.records % producers as u64),
        ),
    });
    let producer_threads = clients
        .into_iter()
        .zip(stops)
        .enumerate()
        .map(|(i, (socket, stop))| {
            let record = record.clone();
            std::thread::Builder::new()
                .name(format!("sync-producer-{i}"))
                .spawn(move || sync_producer(socket, &record, stop))
                .context("starting a producer thread")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut hist = micros_histogram();
    let mut first_error = None;
    for t in producer_threads {
        match join(t, "producer") {
            Ok(h) => hist.add(&h).context("merging latency histograms")?,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The producers' sockets are closed: every server thread ends. A server's error explains
    // a producer's (its connection closed), so it comes first.
    for t in servers {
        join(t, "server")?;
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let st = commit.lock();
    let records = hist.len();
    let mut r = Report::new("sync");
    r.records = records;
    r.bytes = records * args.record_size as u64;
    r.seconds = seconds;
    r.latency = Latency::from_micros(&hist);
    r.latency_label = "request + append + group fdatasync + answer";
    r.details = vec![
        ("fsyncs", json!(st.fsyncs)),
        (
            "records_per_fsync",
            json!(round6(records as f64 / st.fsyncs.max(1) as f64)),
        ),
        (
            "fsync_mean_us",
            json!(round6(
                st.fsync_time.as_secs_f64() * 1e6 / st.fsyncs.max(1) as f64
            )),
        ),
    ];
    r.config = vec![
        ("dir", json!(args.dir.display().to_string())),
        ("producers", json!(producers)),
        ("record_size", json!(args.record_size)),
    ];
    Ok(r)
}

/// The answer to every `paced` message.
const PACED_ACK: [u8; 8] = *b"written\0";

/// How `paced` cuts `--rate` into messages: one of `records` records every `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pace {
    records: u64,
    period: Duration,
}

impl Pace {
    /// The records of one `interval` at `rate` records/s (at least one), and the period that
    /// keeps the rate exact.
    fn new(rate: f64, interval: Duration) -> Self {
        let records = ((rate * interval.as_secs_f64()).ceil() as u64).max(1);
        Pace {
            records,
            period: Duration::from_secs_f64(records as f64 / rate),
        }
    }
}

/// `paced`'s server side: writes each message into `file`, answers it, and passes it on to
/// the consumer, until the client closes its side.
fn paced_server(
    mut socket: TcpStream,
    mut file: File,
    mut consumer: TcpStream,
    message_bytes: usize,
) -> anyhow::Result<()> {
    let mut message = vec![0u8; message_bytes];
    loop {
        if !read_or_end(&mut socket, &mut message).context("receiving a message over loopback")? {
            return Ok(());
        }
        file.write_all(&message).context("writing a message")?;
        socket
            .write_all(&PACED_ACK)
            .context("answering over loopback")?;
        consumer
            .write_all(&message)
            .context("passing a message on over loopback")?;
    }
}

/// `paced`'s readers (the answers, the consumer): reads `size`-byte pieces until the other
/// side closes, and pairs each with the send time of the oldest message not yet seen; the
/// latencies in microseconds.
fn paced_reader(
    mut socket: TcpStream,
    size: usize,
    sent: std::sync::mpsc::Receiver<Instant>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = micros_histogram();
    let mut piece = vec![0u8; size];
    loop {
        if !read_or_end(&mut socket, &mut piece).context("reading over loopback")? {
            return Ok(hist);
        }
        let at = sent.recv().context("a message back that was not sent")?;
        hist.saturating_record(at.elapsed().as_micros() as u64);
    }
}

/// A loopback TCP connection: (connecting side, accepted side), both `TCP_NODELAY`.
fn loopback_pair(listener: &TcpListener) -> anyhow::Result<(TcpStream, TcpStream)> {
    let addr = listener.local_addr().context("the loopback port")?;
    let client = TcpStream::connect(addr).context("connecting over loopback")?;
    let (server, _) = listener.accept().context("accepting over loopback")?;
    for s in [&client, &server] {
        s.set_nodelay(true).context("setting TCP_NODELAY")?;
    }
    Ok((client, server))
}

/// Joins a probe thread, naming it if it panicked.
fn join<T>(t: std::thread::JoinHandle<anyhow::Result<T>>, name: &str) -> anyhow::Result<T> {
    t.join()
        .map_err(|_| anyhow::anyhow!("the {name} thread panicked"))?
}

/// The produce-to-ack and end-to-end latency a minimal program has at `--rate` records/s on
/// this machine: every `--linger` a thread sends that interval's records (`--record-size`
/// bytes each) as one message over loopback TCP, without waiting for answers; a thread on
/// the other side writes each message into a file in `--dir`, answers it, and passes it on
/// to a consumer over a second connection. Blocking.
pub fn paced(args: &BenchArgs) -> anyhow::Result<Report> {
    let rate = args.rate.context("--rate is required in paced mode")?;
    let pace = Pace::new(rate, args.linger);
    let message_bytes = usize::try_from(pace.records)
        .ok()
        .and_then(|n| n.checked_mul(args.record_size))
        .filter(|&n| n <= 1 << 30)
        .context("--rate x --linger x --record-size is more than 1 GiB per message")?;
    let (guard, file) = create(&args.dir, "paced")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let (mut client, server) = loopback_pair(&listener)?;
    let (consumer, forward) = loopback_pair(&listener)?;
    let server = std::thread::Builder::new()
        .name("paced-server".into())
        .spawn(move || paced_server(server, file, forward, message_bytes))
        .context("starting the server thread")?;
    let reader = |name: &str, socket: TcpStream, size: usize| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("paced-{name}"))
            .spawn(move || paced_reader(socket, size, rx))
            .context("starting a reader thread")
            .map(|t| (tx, t))
    };
    let answers = client.try_clone().context("cloning the client socket")?;
    let (acked_tx, acker) = reader("acks", answers, PACED_ACK.len())?;
    let (consumed_tx, consumer) = reader("consumer", consumer, message_bytes)?;

    let message: Vec<u8> = (0..message_bytes).map(|i| (i % 251) as u8 | 1).collect();
    let messages = match args.duration {
        Some(d) => (d.as_secs_f64() / pace.period.as_secs_f64()).ceil() as u64,
        None => args.records.div_ceil(pace.records),
    };
    let started = Instant::now();
    let mut send = || -> anyhow::Result<()> {
        for k in 0..messages {
            let due = started + pace.period.mul_f64(k as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Unbounded channels: never block.
            let now = Instant::now();
            let _ = acked_tx.send(now);
            let _ = consumed_tx.send(now);
            client
                .write_all(&message)
                .context("sending a message over loopback")?;
        }
        Ok(())
    };
    let sent = send();
    // The server ends at the end of the stream and closes both its connections; the readers
    // then end.
    let _ = client.shutdown(Shutdown::Write);
    let served = join(server, "server");
    let acked = join(acker, "reader");
    let consumed = join(consumer, "consumer");
    let seconds = started.elapsed().as_secs_f64();
    drop(guard);
    served?;
    sent?;
    let (acked, consumed) = (acked?, consumed?);
    let mut r = Report::new("paced");
    r.records = consumed.len() * pace.records;
    r.bytes = r.records * args.record_size as u64;
    r.seconds = seconds;
    r.latency = Latency::from_micros(&consumed);
    r.latency_label = "message send to consumer (through write)";
    r.ack_latency = Latency::from_micros(&acked);
    r.ack_latency_label = "message send to answer (write)";
    r.details = vec![
        ("messages", json!(consumed.len())),
        ("answered", json!(acked.len())),
        ("records_per_message", json!(pace.records)),
        ("message_bytes", json!(message_bytes)),
        ("period_us", json!(round6(pace.period.as_secs_f64() * 1e6))),
    ];
    r.config = vec![
        ("dir", json!(args.dir.display().to_string())),
        ("rate", json!(rate)),
        (
            "interval_ms",
            json!(round6(args.linger.as_secs_f64() * 1e3)),
        ),
        ("record_size", json!(args.record_size)),
    ];
    Ok(r)
}

/// Clock readings this far apart or more mean the spinning thread did not run in between;
/// closer ones are the loop itself.
const GAP_MIN: Duration = Duration::from_micros(50);

/// How long `cpu` spins without `--duration`.
const CPU_DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// The gaps one spinning thread saw.
struct Gaps {
    /// Gap lengths in microseconds.
    hist: Histogram<u64>,
    /// Their sum.
    lost: Duration,
    /// The previous clock reading.
    last: Instant,
}

impl Gaps {
    fn new(start: Instant) -> Self {
        Self {
            hist: micros_histogram(),
            lost: Duration::ZERO,
            last: start,
        }
    }

    /// Takes the next clock reading.
    fn observe(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        if gap >= GAP_MIN {
            self.hist.saturating_record(gap.as_micros() as u64);
            self.lost += gap;
        }
    }
}

/// Reads the clock in a loop for `duration`.
fn spin(duration: Duration) -> Gaps {
    let start = Instant::now();
    let mut gaps = Gaps::new(start);
    loop {
        let now = Instant::now();
        gaps.observe(now);
        if now.duration_since(start) >= duration {
            return gaps;
        }
    }
}

/// How much time the machine keeps from busy threads: one per CPU spins for `--duration`.
/// Blocking.
pub fn cpu(args: &BenchArgs) -> anyhow::Result<Report> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let duration = args.duration.unwrap_or(CPU_DEFAULT_DURATION);
    let started = Instant::now();
    let spinners = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("spin-{i}"))
                .spawn(move || spin(duration))
                .context("starting a spinning thread")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut hist = micros_histogram();
    let mut lost = Duration::ZERO;
    for s in spinners {
        let g = s
            .join()
            .map_err(|_| anyhow::anyhow!("a spinning thread panicked"))?;
        hist.add(&g.hist).context("merging gap histograms")?;
        lost += g.lost;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut r = Report::new("cpu");
    r.seconds = seconds;
    r.latency = Latency::from_micros(&hist);
    r.latency_label = "gaps in a spinning thread";
    r.details = vec![
        (
            "lost_percent",
            json!(round6(
                100.0 * lost.as_secs_f64() / (threads as f64 * duration.as_secs_f64())
            )),
        ),
        ("gaps", json!(hist.len())),
        ("gaps_over_1ms", json!(gaps_over_1ms(&hist))),
    ];
    r.config = vec![
        ("threads", json!(threads)),
        ("duration_s", json!(duration.as_secs_f64())),
        ("gap_min_us", json!(GAP_MIN.as_micros() as u64)),
    ];
    Ok(r)
}

/// Gaps of 1 ms or more in a histogram of microseconds (exact: below 2,048 µs, three
/// significant digits keep every value).
fn gaps_over_1ms(hist: &Histogram<u64>) -> u64 {
    hist.len() - hist.count_between(0, 999)
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> BenchArgs {
        crate::args::parse_args(argv).unwrap()
    }

    #[test]
    fn the_disk_probe_writes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let r = disk(&args(&["disk", "--bytes", "3000000", "--dir", d])).unwrap();
        assert_eq!(r.bytes, 3_000_000);
        assert!(r.latency.is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files removed"
        );
    }

    #[test]
    fn gaps_count_only_pauses_of_fifty_micros_or_more() {
        let t0 = Instant::now();
        let mut g = Gaps::new(t0);
        let at = |us: u64| t0 + Duration::from_micros(us);
        g.observe(at(10)); // the loop itself
        g.observe(at(59)); // 49 µs: still the loop
        g.observe(at(2_059)); // 2 ms off the CPU
        g.observe(at(2_159)); // 100 µs
        assert_eq!(g.hist.len(), 2);
        assert_eq!(g.lost, Duration::from_micros(2_100));
        assert_eq!(gaps_over_1ms(&g.hist), 1);
        assert_eq!(g.hist.max(), 2_000);
        g.observe(at(3_159)); // exactly 1 ms counts as over it
        assert_eq!(gaps_over_1ms(&g.hist), 2);
    }

    #[test]
    fn the_cpu_probe_spins_one_thread_per_cpu_for_the_duration() {
        let r = cpu(&args(&["cpu", "--duration", "200ms"])).unwrap();
        let threads = std::thread::available_parallelism().unwrap().get();
        assert!(r.seconds >= 0.2, "{}", r.seconds);
        let config: std::collections::HashMap<_, _> = r.config.iter().cloned().collect();
        assert_eq!(config["threads"], json!(threads));
        let details: std::collections::HashMap<_, _> = r.details.iter().cloned().collect();
        let lost = details["lost_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&lost), "{lost}");
        assert_eq!(
            details["gaps"].as_u64().unwrap(),
            r.latency.map_or(0, |l| l.count)
        );
    }

    #[test]
    fn the_sync_probe_answers_every_record_once_fsynced_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let r = sync(&args(&[
            "sync",
            "--producers",
            "4",
            "--records",
            "203",
            "--record-size",
            "100",
            "--dir",
            d,
        ]))
        .unwrap();
        assert_eq!(r.records, 203, "the records are dealt among the producers");
        assert_eq!(r.bytes, 20_300);
        assert_eq!(r.latency.unwrap().count, 203);
        let details: std::collections::HashMap<_, _> = r.details.iter().cloned().collect();
        let fsyncs = details["fsyncs"].as_u64().unwrap();
        assert!((1..=203).contains(&fsyncs), "{fsyncs}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "file removed"
        );
    }

    #[test]
    fn a_pace_sends_an_interval_of_records_per_message_at_the_exact_rate() {
        let p = Pace::new(168_658.0, Duration::from_millis(1));
        assert_eq!(p.records, 169);
        assert!((p.period.as_secs_f64() - 169.0 / 168_658.0).abs() < 1e-9);
        // Fewer records than one per interval: one record, less often.
        let p = Pace::new(100.0, Duration::from_millis(1));
        assert_eq!(p.records, 1);
        assert_eq!(p.period, Duration::from_millis(10));
    }

    #[test]
    fn the_paced_probe_writes_every_message_at_its_pace_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let r = paced(&args(&[
            "paced",
            "--rate",
            "20000",
            "--linger",
            "1ms",
            "--records",
            "190",
            "--record-size",
            "100",
            "--dir",
            d,
        ]))
        .unwrap();
        // 20 records a message: 190 records take 10 messages, every one answered.
        assert_eq!(r.records, 200);
        assert_eq!(r.bytes, 20_000);
        assert_eq!(
            r.latency.unwrap().count,
            10,
            "each message reached the consumer"
        );
        assert_eq!(
            r.ack_latency.unwrap().count,
            10,
            "each message was answered"
        );
        let details: std::collections::HashMap<_, _> = r.details.iter().cloned().collect();
        assert_eq!(details["messages"], json!(10));
        assert_eq!(details["message_bytes"], json!(2_000));
        // The tenth message is not sent before its time: 9 periods after the first.
        assert!(r.seconds >= 0.009, "{}", r.seconds);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "file removed"
        );
    }

    #[test]
    fn a_sync_append_returns_only_once_an_fsync_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, file) = create(dir.path(), "commit").unwrap();
        let commit = Arc::new(Commit::new(file));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (commit, path) = (commit.clone(), guard.0.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let end = commit.append(&[7u8; 10], &path).unwrap();
                        assert!(commit.lock().synced >= end, "returned before its fsync");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = commit.lock();
        assert_eq!(st.written, 4_000);
        assert_eq!(
            st.synced, 4_000,
            "the last append's fsync covered everything"
        );
        assert_eq!((st.waiting, st.running), (0, false));
        assert!(st.fsyncs <= 400, "{}", st.fsyncs);
        assert_eq!(std::fs::metadata(&guard.0).unwrap().len(), 4_000);
    }

    #[test]
    fn the_net_probe_moves_every_byte() {
        let r = net(&args(&["net", "--bytes", "5000000"])).unwrap();
        assert_eq!(r.bytes, 5_000_000);
        assert!(r.seconds > 0.0);
    }
}
