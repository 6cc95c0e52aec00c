//! The real binaries: [`Broker`] runs `runneld` on free local ports with a temporary data
//! directory, waits until its health check answers, and can stop it with SIGTERM, kill it with
//! SIGKILL and restart it on the same data directory; [`runnel`] finds the CLI.
//!
//! The binaries are built with cargo in the test binary's profile and found next to it in
//! `target/<profile>/`, so `cargo test -p runnel-e2e` runs against the code of the tree.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::{Connection, PATIENCE};

/// A binary of the workspace that the end-to-end suite runs.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The environment variable that, when set, names the binary to use instead.
    pub env_var: &'static str,
    /// The package that builds it.
    pub package: &'static str,
    /// The binary's name.
    pub name: &'static str,
}

/// The broker, `runneld`; `RUNNELD_BIN` overrides it.
pub const RUNNELD: Binary = Binary {
    env_var: "RUNNELD_BIN",
    package: "runnel-broker",
    name: "runneld",
};

/// The CLI, `runnel`; `RUNNEL_CLI_BIN` overrides it.
pub const RUNNEL: Binary = Binary {
    env_var: "RUNNEL_CLI_BIN",
    package: "runnel-cli",
    name: "runnel",
};

/// The benchmark tool, `runnel-bench`; `RUNNEL_BENCH_BIN` overrides it.
pub const RUNNEL_BENCH: Binary = Binary {
    env_var: "RUNNEL_BENCH_BIN",
    package: "runnel-bench",
    name: "runnel-bench",
};

impl Binary {
    /// The binary's path: its environment variable if set, else `target/<profile>/<name>` next
    /// to the running test binary, after `cargo build` of it in that profile.
    ///
    /// Cargo, not a guess from file times, decides whether the binary is current: a no-op
    /// build takes a fraction of a second, and it is the only check that also notices a
    /// binary built from another checkout sharing the target directory.
    /// `cargo test --workspace` has built it already; `cargo test -p runnel-e2e` has not.
    ///
    /// # Panics
    ///
    /// If the test binary is not in `target/<profile>/deps`, or cargo fails to build it.
    pub fn path(&self) -> PathBuf {
        if let Some(bin) = std::env::var_os(self.env_var) {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        // Cargo names the `dev` profile's directory `debug`; every other one by its name.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile directory in {}", exe.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", self.package, "--bin", self.name])
            .args(["--profile", profile])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of {} failed", self.name);
        let bin = profile_dir.join(self.name);
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    }
}

/// The `runneld` binary ([`RUNNELD`]), located once per test binary.
pub fn runneld() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| RUNNELD.path())
}

/// The `runnel` CLI binary ([`RUNNEL`]), located once per test binary.
pub fn runnel() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| RUNNEL.path())
}

/// The `runnel-bench` binary ([`RUNNEL_BENCH`]), located once per test binary.
pub fn runnel_bench() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| RUNNEL_BENCH.path())
}

/// The workspace's root directory.
///
/// # Panics
///
/// Never in this workspace (this crate is at `crates/test-support`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-support is two levels below the workspace root")
        .to_path_buf()
}

/// A command for `program` without the caller's `RUNNEL_*` and `RUST_LOG` variables, so the
/// environment of whoever runs the tests changes nothing.
pub fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RUNNEL_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// A `runneld` command with a clean environment ([`clean_command`]).
pub fn runneld_command() -> Command {
    clean_command(runneld())
}

/// A `runnel` command with a clean environment ([`clean_command`]), no profile file of the
/// person running the tests, and stdin closed.
pub fn runnel_command() -> Command {
    let mut cmd = clean_command(runnel());
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-runnel-test-config");
    cmd.stdin(Stdio::null());
    cmd
}

/// Waits (bounded by [`PATIENCE`]) for `child` to exit and returns its status.
///
/// # Panics
///
/// If it has not exited within [`PATIENCE`] (it is killed first), or cannot be waited for.
pub fn wait_bounded(child: &mut Child) -> ExitStatus {
    exit_within_patience(child)
        .unwrap_or_else(|| panic!("process {} did not exit within {PATIENCE:?}", child.id()))
}

/// Waits up to [`PATIENCE`] for `child` to exit; past it, kills and reaps it and returns
/// `None`.
fn exit_within_patience(child: &mut Child) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free local port (bound and released; good enough on a test machine).
///
/// # Panics
///
/// If no local port is available.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Two different free local ports: both are held while the second is chosen, so the kernel
/// cannot hand out the same port twice (it did: gRPC and metrics then collide).
///
/// # Panics
///
/// If no local port is available.
pub fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (a, b) = (bind(), bind());
    (
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    )
}

/// A running `runneld`, killed when dropped; its clients are those of the [`Connection`] it
/// dereferences to.
pub struct Broker {
    child: Option<Child>,
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The Prometheus metrics address.
    pub metrics: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// The file the process sees as its boot id, if not the machine's ([`Broker::start_booted`]).
    boot_id: Option<PathBuf>,
    dir: TempDir,
    connection: Connection,
}

impl Broker {
    /// Starts a broker with a fresh data directory and waits until it is healthy.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a broker with extra flags (for example `--set limits.max_topics=2`).
    ///
    /// # Panics
    ///
    /// If no temporary directory is available, or as [`Broker::start_in`].
    pub async fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        Self::start_in(dir, data_dir, args).await
    }

    /// Starts a broker on a given data directory (kept by `dir`, which also holds its log).
    ///
    /// # Panics
    ///
    /// If `runneld` cannot be spawned, exits, or is not healthy within [`PATIENCE`].
    pub async fn start_in(dir: TempDir, data_dir: PathBuf, args: &[&str]) -> Self {
        let args = args.iter().map(|s| (*s).to_owned()).collect();
        Self::launch(dir, data_dir, args, None).await
    }

    /// As [`Broker::start_in`], with the process seeing the content of `boot_id` as the
    /// kernel's boot id (`/proc/sys/kernel/random/boot_id`, bound over in a mount namespace
    /// of its own; needs root), so that a test can make a restart look like a new boot. The
    /// file is read at every start: rewrite it before [`Broker::start_again`] after a
    /// simulated power cut.
    ///
    /// # Panics
    ///
    /// As [`Broker::start_in`].
    pub async fn start_booted(
        dir: TempDir,
        data_dir: PathBuf,
        args: &[&str],
        boot_id: &Path,
    ) -> Self {
        let args = args.iter().map(|s| (*s).to_owned()).collect();
        Self::launch(dir, data_dir, args, Some(boot_id.to_path_buf())).await
    }

    /// `runneld`, under its own boot id where one is given.
    fn command(boot_id: Option<&Path>) -> Command {
        let Some(boot_id) = boot_id else {
            return runneld_command();
        };
        let mut cmd = clean_command(Path::new("unshare"));
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /proc/sys/kernel/random/boot_id && shift && exec "$@""#)
            .arg("sh")
            .arg(boot_id)
            .arg(runneld());
        cmd
    }

    async fn launch(
        dir: TempDir,
        data_dir: PathBuf,
        args: Vec<String>,
        boot_id: Option<PathBuf>,
    ) -> Self {
        let (grpc, metrics) = free_addr_pair();
        let log = dir.path().join(format!(
            "runneld-{}.log",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Self::command(boot_id.as_deref())
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
        let mut broker = Broker {
            child: Some(child),
            grpc,
            metrics,
            data_dir,
            log,
            args,
            boot_id,
            dir,
            // Short: the health check below retries its connection until PATIENCE.
            connection: Connection::new(grpc, Duration::from_secs(5)),
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
            if self.is_serving().await {
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

    /// The broker's log (stdout and stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    ///
    /// # Panics
    ///
    /// If the process has exited and been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("runneld running").id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    ///
    /// # Panics
    ///
    /// As [`Broker::signal`] and [`Broker::wait_exit`].
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) without waiting.
    ///
    /// # Panics
    ///
    /// If the process is gone or `kill` fails.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    ///
    /// # Panics
    ///
    /// If the process is gone already.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("runneld running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Waits (bounded by [`PATIENCE`]) for the process to exit.
    ///
    /// # Panics
    ///
    /// If the process is gone already or does not exit in time (it is killed first; the
    /// message holds its log).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("runneld running");
        exit_within_patience(&mut child).unwrap_or_else(|| {
            panic!(
                "runneld did not exit within {PATIENCE:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// Stops the broker with SIGTERM (asserting exit code 0) and starts it again on the same
    /// data directory with the same flags.
    ///
    /// # Panics
    ///
    /// If the broker exits with an error, or as [`Broker::start_in`].
    pub async fn restart(mut self) -> Self {
        let status = self.sigterm();
        assert!(
            status.success(),
            "runneld exited with {status}:\n{}",
            self.log_text()
        );
        self.start_again().await
    }

    /// Starts again on the same data directory with the same flags, after the process is gone
    /// (SIGTERM or kill).
    ///
    /// # Panics
    ///
    /// If the process still runs, or as [`Broker::start_in`].
    pub async fn start_again(mut self) -> Self {
        assert!(self.child.is_none(), "runneld still running");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let args = std::mem::take(&mut self.args);
        let boot_id = self.boot_id.take();
        Self::launch(dir, self.data_dir.clone(), args, boot_id).await
    }

    /// The broker's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    ///
    /// # Panics
    ///
    /// If the process is gone or `/proc` has no `VmRSS` line for it.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// `GET /metrics` from the metrics listener: the whole HTTP response.
    ///
    /// # Panics
    ///
    /// If the listener does not answer `200`.
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

impl Deref for Broker {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
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
