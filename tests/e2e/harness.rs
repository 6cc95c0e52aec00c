//! The `Broker` fixture: runs the real `runneld` binary on free local ports with a temporary
//! data directory, waits until its health check answers, and can stop it with SIGTERM, kill
//! it with SIGKILL, and restart it on the same data directory.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use runnel_format::{BatchBuilder, RecordBatch};
use runnel_proto::pb::{
    self, admin_service_client::AdminServiceClient, consume_service_client::ConsumeServiceClient,
    produce_service_client::ProduceServiceClient,
};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Bounds every wait so that a bug hangs nothing. Never an assertion on speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `runneld` binary: `RUNNELD_BIN` if set, else `target/<profile>/runneld` next to this
/// test binary, rebuilt with cargo if missing or older than the sources it is built from.
pub fn runneld() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RUNNELD_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/e2e-<hash> -> target/<profile>/runneld
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let bin = profile_dir.join("runneld");
        let sources = [
            "crates/broker",
            "crates/storage",
            "crates/format",
            "crates/proto",
            "proto",
        ];
        if is_stale(&bin, &sources) {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "runnel-broker", "--bin", "runneld"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build of runneld failed");
        }
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// The `runnel` CLI binary: `RUNNEL_CLI_BIN` if set, else `target/<profile>/runnel` next to
/// `runneld`, rebuilt with cargo if missing or older than the sources it is built from.
pub fn runnel() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RUNNEL_CLI_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let bin = profile_dir.join("runnel");
        let sources = [
            "crates/cli",
            "crates/client",
            "crates/format",
            "crates/proto",
            "proto",
        ];
        if is_stale(&bin, &sources) {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "runnel-cli", "--bin", "runnel"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build of runnel failed");
        }
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace root")
        .to_path_buf()
}

/// True if `bin` is missing or older than a source file under `sources` (directories of the
/// workspace it is built from): `cargo test --workspace` always builds it fresh,
/// `cargo test -p runnel-e2e` may not.
fn is_stale(bin: &Path, sources: &[&str]) -> bool {
    fn newest(dir: &Path) -> SystemTime {
        let mut latest = SystemTime::UNIX_EPOCH;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let t = if path.is_dir() {
                    newest(&path)
                } else {
                    entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH)
                };
                latest = latest.max(t);
            }
        }
        latest
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    sources.iter().any(|d| newest(&root.join(d)) > built)
}

/// A free local port (bound and released; good enough on a test machine).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Two different free local ports: both are held while the second is chosen, so the kernel
/// cannot hand out the same port twice (it did: gRPC and metrics then collide).
pub fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (a, b) = (bind(), bind());
    (
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    )
}

/// A running `runneld`.
pub struct Broker {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    dir: TempDir,
    channel: Channel,
}

impl Broker {
    /// Starts a broker with a fresh data directory and waits until it is healthy.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a broker with extra flags (for example `--set limits.max_topics=2`).
    pub async fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        Self::launch(
            dir,
            data_dir,
            args.iter().map(|s| (*s).to_owned()).collect(),
        )
        .await
    }

    /// Starts a broker on a given data directory (kept by `dir`).
    pub async fn start_in(dir: TempDir, data_dir: PathBuf, args: &[&str]) -> Self {
        Self::launch(
            dir,
            data_dir,
            args.iter().map(|s| (*s).to_owned()).collect(),
        )
        .await
    }

    async fn launch(dir: TempDir, data_dir: PathBuf, args: Vec<String>) -> Self {
        let (grpc, metrics) = free_addr_pair();
        let log = dir.path().join(format!(
            "runneld-{}.log",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command()
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(&args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn runneld");
        let channel = Endpoint::from_shared(format!("http://{grpc}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut broker = Broker {
            child: Some(child),
            grpc,
            metrics,
            data_dir,
            log,
            args,
            dir,
            channel,
        };
        broker.wait_ready().await;
        broker
    }

    /// Waits until the health check says SERVING; fails with the broker's log if it exits.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "runneld exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            let mut health = HealthClient::new(self.channel.clone());
            let check = health.check(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), check).await
                && r.into_inner().status() == ServingStatus::Serving
            {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "runneld not ready after {PATIENCE:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A channel on the fixture's connection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A channel on a new connection of its own.
    pub fn new_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect_lazy()
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    pub fn produce(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn consume(&self) -> ConsumeServiceClient<Channel> {
        ConsumeServiceClient::new(self.channel()).max_decoding_message_size(64 << 20)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) without waiting.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!(
                    "runneld did not exit within {PATIENCE:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (asserting exit code 0) and starts it again on the same
    /// data directory with the same flags.
    pub async fn restart(mut self) -> Self {
        let status = self.sigterm();
        assert!(
            status.success(),
            "runneld exited with {status}:\n{}",
            self.log_text()
        );
        self.start_again().await
    }

    /// Starts again on the same data directory after the process is gone (SIGTERM or kill).
    pub async fn start_again(mut self) -> Self {
        assert!(self.child.is_none(), "still running");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let args = std::mem::take(&mut self.args);
        Self::launch(dir, self.data_dir.clone(), args).await
    }

    /// The broker's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// `GET /metrics` from the metrics listener.
    pub fn scrape_metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).expect("connect to metrics");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )
        .expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `runneld` command with a clean environment (no RUNNEL_* or RUST_LOG from the caller).
pub fn command() -> Command {
    let mut cmd = Command::new(runneld());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RUNNEL_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Waits for `f`, failing the test after [`PATIENCE`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("finished within the patience")
}

/// A batch of records with values `"{tag}-{i}"` for `i` in `from..from + n`.
pub fn batch_of(tag: &str, from: u64, n: u64) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in from..from + n {
        b.push(
            None,
            Some(format!("{tag}-{i}").as_bytes()),
            &[],
            1_700_000_000_000 + i as i64,
        );
    }
    b.build()
}

/// An idempotent batch.
pub fn idempotent_batch(n: u32, id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    b.producer(id, epoch, seq);
    for i in 0..n {
        b.push(None, Some(format!("s{seq}-{i}").as_bytes()), &[], 1_000);
    }
    b.build()
}

/// The values of every record in stored batches, in order, skipping offsets below `from`.
pub fn values(batches: &[Bytes], from: u64) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let batch = RecordBatch::new(b.clone(), usize::MAX).expect("a valid stored batch");
        for r in batch.records().expect("records") {
            let r = r.expect("a valid record");
            if r.offset >= from {
                out.push(String::from_utf8_lossy(&r.value.expect("a value")).into_owned());
            }
        }
    }
    out
}

pub async fn create_topic(b: &Broker, topic: &str, partitions: u32) {
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: partitions,
            config: None,
        })
        .await
        .expect("create topic");
}

pub fn entry(partition: u32, batches: Vec<Bytes>) -> pb::ProducePartition {
    pb::ProducePartition {
        partition: Some(partition),
        partition_key: None,
        batches,
    }
}

/// One produce of `batches` to a partition; returns that entry's result.
pub async fn produce(
    b: &Broker,
    topic: &str,
    partition: u32,
    acks: pb::Acks,
    batches: Vec<Bytes>,
) -> pb::ProducePartitionResult {
    b.produce()
        .produce(pb::ProduceRequest {
            request_id: 0,
            topic: topic.into(),
            acks: acks as i32,
            partitions: vec![entry(partition, batches)],
        })
        .await
        .expect("produce")
        .into_inner()
        .results
        .remove(0)
}

/// Reads a partition from `offset` to its end with `Fetch`.
pub async fn fetch_all(b: &Broker, topic: &str, partition: u32, mut offset: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut consume = b.consume();
    loop {
        let r = consume
            .fetch(pb::FetchRequest {
                partitions: vec![pb::FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_bytes: 0,
                }],
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 0,
            })
            .await
            .expect("fetch")
            .into_inner()
            .results
            .remove(0);
        assert!(r.error.is_none(), "fetch error {:?}", r.error);
        if r.batches.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.batches);
    }
}

/// Asserts a status's gRPC code, its `runnel-error-code` trailer and a part of its message.
pub fn assert_status(
    status: &tonic::Status,
    code: tonic::Code,
    runnel: pb::ErrorCode,
    needle: &str,
) {
    assert_eq!(status.code(), code, "{status:?}");
    let trailer = status
        .metadata()
        .get(runnel_proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(trailer, Some(runnel as i32), "trailer of {status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

/// Asserts an inline error.
pub fn assert_inline(error: Option<&pb::Error>, runnel: pb::ErrorCode, needle: &str) {
    let e = error.expect("an inline error");
    assert_eq!(e.code, runnel as i32, "{e:?}");
    assert!(
        e.message.contains(needle),
        "{:?} lacks {needle:?}",
        e.message
    );
}
