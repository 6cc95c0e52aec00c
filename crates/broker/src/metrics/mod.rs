//! Every metric the broker exports, registered in this one module, and the Prometheus
//! exporter on `metrics_listen`.
//!
//! Names follow `runnel_<noun>_<unit>[_total]` in base units (bytes, seconds). Labels are
//! bounded: `topic`, `partition`, `rpc`, `code` (a gRPC status code name), `kind`, `limit`,
//! `quota` and `group`; never offsets or client ids. `docs/operations.md` lists them all.
//!
//! Most metrics go through the `metrics` facade into the Prometheus recorder. The group
//! gauges ([`GROUP_LAG`], [`GROUP_OLDEST_AGE`], [`GROUP_COMMITTED`], [`GROUP_MEMBERS`]) come and go with groups and
//! partitions, which the facade cannot express (it never forgets a series), so they live in a
//! [`GroupGauges`] table that is replaced at each refresh and rendered after the recorder's
//! output by the endpoint here.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use runnel_storage::{Observer, Repair, RepairKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::error::Error;

pub mod process;

/// Records appended, per topic (duplicates of idempotent retries are not counted).
pub const RECORDS_IN: &str = "runnel_records_in_total";
/// Batch bytes appended, per topic.
pub const BYTES_IN: &str = "runnel_bytes_in_total";
/// Records sent to consumers by `Fetch` and `Subscribe`, per topic (whole batches).
pub const RECORDS_OUT: &str = "runnel_records_out_total";
/// Batch bytes sent to consumers, per topic.
pub const BYTES_OUT: &str = "runnel_bytes_out_total";
/// RPCs answered, per `rpc` and status `code`.
pub const RPC_REQUESTS: &str = "runnel_rpc_requests_total";
/// RPC latency, per `rpc` and `code`; for streams, the time until the stream ended.
pub const RPC_DURATION: &str = "runnel_rpc_duration_seconds";
/// Duration of each log fsync.
pub const FSYNC_DURATION: &str = "runnel_fsync_duration_seconds";
/// Log end offset, per topic and partition.
pub const LOG_END_OFFSET: &str = "runnel_partition_log_end_offset";
/// Log start offset, per topic and partition.
pub const LOG_START_OFFSET: &str = "runnel_partition_log_start_offset";
/// Bytes of segment files, per topic and partition.
pub const PARTITION_SIZE: &str = "runnel_partition_size_bytes";
/// Open client connections.
pub const CONNECTIONS: &str = "runnel_connections_active";
/// Open `Subscribe` streams.
pub const SUBSCRIPTIONS: &str = "runnel_subscriptions_active";
/// Repairs made by crash recovery when opening partitions, per `kind`.
pub const RECOVERY_REPAIRS: &str = "runnel_recovery_repairs_total";
/// Bytes deleted by retention, per topic.
pub const RETENTION_DELETED: &str = "runnel_retention_deleted_bytes_total";
/// Batch bytes of produce requests being appended.
pub const PRODUCE_IN_FLIGHT: &str = "runnel_produce_in_flight_bytes";
/// Batch bytes read for fetches and subscription streams and not yet written to their
/// clients.
pub const READ_BUFFER: &str = "runnel_read_buffer_bytes";
/// Requests refused or delayed past their wait by a broker limit, per `limit`.
pub const LIMIT_REJECTIONS: &str = "runnel_limit_rejections_total";
/// How long answers were delayed by a client's quota, per `quota` (`produce_bytes`,
/// `fetch_bytes`, `requests`): its count is the answers delayed, its sum the time.
pub const QUOTA_THROTTLE: &str = "runnel_quota_throttle_seconds";
/// Logs that failed after a write or fsync error and refuse appends until the broker
/// restarts.
pub const LOGS_FAILED: &str = "runnel_logs_failed";
/// Rebalances of every group together.
pub const GROUP_REBALANCES: &str = "runnel_group_rebalances_total";
/// TLS handshakes that failed or timed out on the gRPC listener.
pub const TLS_HANDSHAKE_FAILURES: &str = "runnel_tls_handshake_failures_total";
/// Calls whose credentials were missing or refused, per mechanism.
pub const AUTH_FAILURES: &str = "runnel_authentication_failures_total";
/// Calls refused because no ACL allowed them, per operation.
pub const AUTH_DENIALS: &str = "runnel_authorization_denials_total";
/// Records acquired by share group members, per group and topic (redeliveries included).
pub const SHARE_ACQUIRED: &str = "runnel_share_records_acquired_total";
/// Records acquired again after an earlier delivery, per group and topic.
pub const SHARE_REDELIVERED: &str = "runnel_share_records_redelivered_total";
/// Records acknowledged by share group members, per group, topic and `kind` (accept,
/// release, reject, renew).
pub const SHARE_ACKNOWLEDGED: &str = "runnel_share_records_acknowledged_total";
/// Records whose acquisition lock expired, per group and topic.
pub const SHARE_LOCK_EXPIRIES: &str = "runnel_share_lock_expiries_total";
/// Records copied to a share group's dead-letter topic, per group and topic (the topic read).
pub const SHARE_DEAD_LETTERED: &str = "runnel_share_records_dead_lettered_total";
/// Records in flight (acquired, waiting for redelivery or for the dead-letter topic), per
/// share group, topic and partition.
pub const SHARE_IN_FLIGHT: &str = "runnel_share_records_in_flight";
/// Records not yet delivered to a share group, per group, topic and partition.
pub const SHARE_LAG: &str = "runnel_share_lag_records";
/// Topics.
pub const TOPICS: &str = "runnel_topics";
/// Partitions of all topics.
pub const PARTITIONS: &str = "runnel_partitions";
/// When the broker started, seconds since the Unix epoch.
pub const START_TIME: &str = "runnel_start_time_seconds";
/// Records a group has not consumed yet, per group, topic and partition (log end minus the
/// committed offset, clamped to the log start; never negative).
pub const GROUP_LAG: &str = "runnel_group_lag_records";
/// Age of the oldest record a group has not consumed, per group, topic and partition; 0
/// without lag.
pub const GROUP_OLDEST_AGE: &str = "runnel_group_oldest_unconsumed_age_seconds";
/// Members of each group that has any.
pub const GROUP_MEMBERS: &str = "runnel_group_members";
/// The committed offset of a group, per group, topic and partition.
pub const GROUP_COMMITTED: &str = "runnel_group_committed_offset";

/// Segment bytes copied to the object store, per topic.
pub const REMOTE_UPLOADED_BYTES: &str = "runnel_remote_uploaded_bytes_total";
/// Segments copied to the object store, per topic.
pub const REMOTE_UPLOADED_SEGMENTS: &str = "runnel_remote_uploaded_segments_total";
/// Failed copies (retried with backoff), per topic.
pub const REMOTE_UPLOAD_ERRORS: &str = "runnel_remote_upload_errors_total";
/// Sealed bytes on local disk not yet copied, per partition.
pub const REMOTE_UPLOAD_LAG_BYTES: &str = "runnel_remote_upload_lag_bytes";
/// Sealed segments on local disk not yet copied, per partition.
pub const REMOTE_UPLOAD_LAG_SEGMENTS: &str = "runnel_remote_upload_lag_segments";
/// Bytes of segments in the object store, per partition.
pub const REMOTE_SIZE: &str = "runnel_remote_size_bytes";
/// Segments deleted from the object store by total retention, per topic.
pub const REMOTE_DELETED_SEGMENTS: &str = "runnel_remote_deleted_segments_total";
/// Bytes fetched from the object store for reads, per topic.
pub const REMOTE_FETCHED_BYTES: &str = "runnel_remote_fetched_bytes_total";
/// Remote reads answered from the cache or the store (`source` label `cache` or `store`), per chunk.
pub const REMOTE_CHUNK_READS: &str = "runnel_remote_chunk_reads_total";
/// Remote reads that failed because the store could not be reached, per topic.
pub const REMOTE_READ_ERRORS: &str = "runnel_remote_read_errors_total";
/// Manifest writes refused because another broker wrote the manifest, per topic.
pub const REMOTE_CONFLICTS: &str = "runnel_remote_manifest_conflicts_total";
/// Bytes held by the remote read cache.
pub const REMOTE_CACHE_SIZE: &str = "runnel_remote_cache_bytes";

/// Starts the HTTP endpoint on `addr` and installs the recorder as the process's recorder,
/// then describes every metric. Must run before topics are opened: handles registered before
/// a recorder exists stay no-ops.
///
/// The endpoint serves HTTP/1.1: `GET /metrics` with the recorder's metrics followed by the
/// `groups` gauges and the process's, and the routes of `pages` (the web console, which then
/// has `/`); without pages, `/` answers with the metrics too. A gRPC client pointed at the
/// port is told it is the wrong one.
///
/// Returns the endpoint task, to abort at shutdown.
///
/// # Errors
/// [`Error::Metrics`] if the address cannot be bound or a recorder is already installed (a
/// second broker in the same process: tests run brokers with metrics disabled).
pub fn install(
    addr: SocketAddr,
    buckets: &[f64],
    groups: Arc<GroupGauges>,
    data_dir: &Path,
    per_partition: bool,
    pages: Option<Router>,
    guard: Guard,
    tls: Option<HttpTls>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    PARTITION_LABELS.store(per_partition, std::sync::atomic::Ordering::Relaxed);
    let err = |reason: String| Error::Metrics { addr, reason };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| err(e.to_string()))?;
    let listener = TcpListener::from_std(listener).map_err(|e| err(e.to_string()))?;
    let recorder = PrometheusBuilder::new()
        .set_buckets(buckets)
        .map_err(|e| err(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| err(e.to_string()))?;
    let scrape = Scrape {
        handle: handle.clone(),
        groups,
        data_dir: data_dir.to_path_buf(),
    };
    let task = tokio::spawn(serve(listener, handle, guard(routes(scrape, pages)), tls));
    describe();
    Ok(task)
}

/// What wraps every route of the endpoint: the HTTP front end's authentication.
pub type Guard = Box<dyn FnOnce(Router) -> Router + Send>;

/// The acceptor of the next TLS handshake on the endpoint, when it serves TLS (`tls.metrics`);
/// called per connection, so that a reloaded certificate applies to new connections.
pub type HttpTls = Arc<dyn Fn() -> tokio_rustls::TlsAcceptor + Send + Sync>;

/// The longest a connection may take to send a request head (also between requests).
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read from the start of a connection that looks like HTTP/2.
const SCRAPE_MAX_REQUEST: usize = 16 << 10;
/// Connections served at once; more wait in the listen backlog.
const SCRAPE_MAX_CONNECTIONS: usize = 64;

/// What a scrape renders.
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    groups: Arc<GroupGauges>,
    data_dir: PathBuf,
}

/// The endpoint's routes: `/metrics`, and the pages or the metrics at `/`.
fn routes(scrape: Scrape, pages: Option<Router>) -> Router {
    let metrics = Router::new().route("/metrics", get(render));
    let app = match pages {
        Some(pages) => metrics.with_state(scrape).merge(pages),
        None => metrics.route("/", get(render)).with_state(scrape),
    };
    app.fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /metrics\n") })
}

/// The metrics, in Prometheus' text format.
async fn render(State(s): State<Scrape>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let mut text = s.handle.render();
        s.groups.render(&mut text);
        process::render(&mut text, &s.data_dir);
        text
    })
    .await;
    match text {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn serve(listener: TcpListener, handle: PrometheusHandle, app: Router, tls: Option<HttpTls>) {
    // Histograms are drained at every render; upkeep bounds memory between scrapes.
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(tokio::sync::Semaphore::new(SCRAPE_MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Handlers and the guard find the client's address as axum's `ConnectInfo`.
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let acceptor = tls.as_ref().map(|tls| tls());
        tokio::spawn(async move {
            let served = match acceptor {
                Some(acceptor) => tls_connection(stream, acceptor, app).await,
                None => connection(stream, app).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection failed");
            }
            drop(permit);
        });
    }
}

/// Serves one connection: HTTP/1.1 requests, or the refusal of a gRPC call.
async fn connection(stream: TcpStream, app: Router) -> std::io::Result<()> {
    let mut start = [0u8; 4];
    let peeked = tokio::time::timeout(SCRAPE_READ_TIMEOUT, async {
        loop {
            let n = stream.peek(&mut start).await?;
            if n == 0 || n == start.len() {
                return Ok::<_, std::io::Error>(n);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    if peeked == start.len() && start == HTTP2_PREFACE[..start.len()] {
        return refuse_grpc(stream, Vec::new()).await;
    }
    http1(stream, app).await
}

/// Serves one TLS connection's HTTP/1.1 requests (ALPN offers nothing else, so a gRPC client
/// fails its handshake).
async fn tls_connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) -> std::io::Result<()> {
    let stream = tokio::time::timeout(SCRAPE_READ_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
    http1(stream, app).await
}

/// Serves HTTP/1.1 requests on `io` until the client closes or stays silent too long.
async fn http1<Io>(io: Io, app: Router) -> std::io::Result<()>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(SCRAPE_READ_TIMEOUT)
        .serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(app),
        )
        .await
        .map_err(std::io::Error::other)
}

/// How an HTTP/2 client (a gRPC client given this address) opens its connection.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a gRPC client pointed at the metrics port is told.
const NOT_GRPC: &str = "this is the metrics port of runneld (Prometheus over HTTP/1.1), not its gRPC port (listen, 7171 by default)";

/// Answers a gRPC call made to the metrics port with `UNAVAILABLE` and [`NOT_GRPC`], in the
/// few HTTP/2 frames that takes, so that the client says what is wrong rather than reporting
/// an HTTP/2 protocol error; then waits briefly for the client to close. `read` holds what
/// was read so far, from the start of the preface.
async fn refuse_grpc(mut stream: TcpStream, mut read: Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let first_call = async {
        loop {
            if let Some(stream_id) = read.strip_prefix(HTTP2_PREFACE).and_then(first_headers) {
                return Ok(stream_id);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 || read.len() > SCRAPE_MAX_REQUEST {
                return Err(std::io::Error::other("no gRPC call on the metrics port"));
            }
            read.extend_from_slice(&buf[..n]);
        }
    };
    let stream_id = tokio::time::timeout(SCRAPE_READ_TIMEOUT, first_call)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP/2 request"))??;
    stream.write_all(&grpc_refusal(stream_id)).await?;
    let _ = tokio::time::timeout(SCRAPE_READ_TIMEOUT, async {
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    stream.shutdown().await
}

/// The stream of the first HEADERS frame among the whole HTTP/2 frames at the start of
/// `bytes`, if there is one yet.
fn first_headers(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        if bytes[3] == 0x1 {
            return Some(stream_id);
        }
        bytes = bytes.get(9 + len..)?;
    }
    None
}

/// The server's side of an HTTP/2 connection whose first call (on `stream_id`) is answered
/// `grpc-status: 14` with [`NOT_GRPC`]: SETTINGS, the acknowledgement of the client's,
/// a trailers-only response, and GOAWAY.
fn grpc_refusal(stream_id: u32) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut block = vec![0x88]; // ":status: 200", static table entry 8
    for (name, value) in [
        ("content-type", "application/grpc"),
        ("grpc-status", "14"),
        ("grpc-message", NOT_GRPC),
    ] {
        block.push(0x00); // a literal field without indexing, with a literal name
        hpack_string(&mut block, name);
        hpack_string(&mut block, value);
    }
    let mut out = Vec::new();
    frame(&mut out, 0x4, 0x0, 0, &[]); // SETTINGS
    frame(&mut out, 0x4, 0x1, 0, &[]); // SETTINGS, ACK
    frame(&mut out, 0x1, 0x5, stream_id, &block); // HEADERS, END_STREAM | END_HEADERS
    let mut goaway = stream_id.to_be_bytes().to_vec(); // the last stream
    goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
    frame(&mut out, 0x7, 0x0, 0, &goaway);
    out
}

/// Appends an HPACK string literal, not Huffman-coded: its length as a 7-bit prefix integer,
/// then its bytes.
fn hpack_string(block: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        block.push(n as u8);
    } else {
        block.push(127);
        n -= 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
    }
    block.extend_from_slice(s.as_bytes());
}

/// The lag of one group on one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSample {
    /// The group id.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// [`GROUP_COMMITTED`].
    pub committed: u64,
    /// [`GROUP_LAG`].
    pub lag: u64,
    /// [`GROUP_OLDEST_AGE`].
    pub age_seconds: f64,
}

/// Everything the group gauges show, as of one refresh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSamples {
    /// Per group and partition with a committed offset.
    pub lag: Vec<LagSample>,
    /// Per group with members: the member count ([`GROUP_MEMBERS`]).
    pub members: Vec<(String, usize)>,
}

/// What a share group has in flight on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSample {
    /// The share group id.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// [`SHARE_IN_FLIGHT`].
    pub in_flight: u64,
    /// [`SHARE_LAG`].
    pub lag: u64,
}

/// The group gauges, replaced as a whole at each refresh.
#[derive(Debug, Default)]
pub struct GroupGauges {
    samples: Mutex<GroupSamples>,
    shares: Mutex<Vec<ShareSample>>,
}

impl GroupGauges {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupSamples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every sample.
    pub fn replace(&self, samples: GroupSamples) {
        *self.lock() = samples;
    }

    /// Replaces every share group sample.
    pub fn replace_shares(&self, samples: Vec<ShareSample>) {
        *self.shares.lock().unwrap_or_else(|p| p.into_inner()) = samples;
    }

    /// Drops a deleted group's series at once.
    pub fn remove_group(&self, group: &str) {
        let mut s = self.lock();
        s.lag.retain(|l| l.group != group);
        s.members.retain(|(g, _)| g != group);
    }

    /// The current samples.
    pub fn samples(&self) -> GroupSamples {
        self.lock().clone()
    }

    /// Appends the gauges in Prometheus text format: per group, topic and partition, or, with
    /// `metrics.partition_labels = false`, per group and topic (lag summed, age the oldest;
    /// committed offsets, which do not add up, left out).
    pub fn render(&self, out: &mut String) {
        let s = self.lock();
        let per_partition = partition_labels();
        // (labels, lag, age, committed), in sample order.
        let mut rows: Vec<(String, u64, f64, u64)> = Vec::with_capacity(s.lag.len());
        if per_partition {
            for l in &s.lag {
                let labels = format!(
                    "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                    escape(&l.group),
                    escape(&l.topic),
                    l.partition
                );
                rows.push((labels, l.lag, l.age_seconds, l.committed));
            }
        } else {
            let mut by_topic: std::collections::BTreeMap<(&str, &str), (u64, f64)> =
                std::collections::BTreeMap::new();
            for l in &s.lag {
                let e = by_topic.entry((&l.group, &l.topic)).or_default();
                e.0 += l.lag;
                e.1 = e.1.max(l.age_seconds);
            }
            for ((group, topic), (lag, age)) in by_topic {
                let labels = format!("group=\"{}\",topic=\"{}\"", escape(group), escape(topic));
                rows.push((labels, lag, age, 0));
            }
        }
        let scope = if per_partition {
            "per group, topic and partition"
        } else {
            "per group and topic"
        };
        let mut family =
            |name: &str, help: &str, value: &dyn Fn(&(String, u64, f64, u64)) -> String| {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "# HELP {name} {help}, {scope}.");
                let _ = writeln!(out, "# TYPE {name} gauge");
                for row in &rows {
                    let _ = writeln!(out, "{name}{{{}}} {}", row.0, value(row));
                }
            };
        family(GROUP_LAG, "Records a group has not consumed", &|r| {
            r.1.to_string()
        });
        family(
            GROUP_OLDEST_AGE,
            "Age of the oldest record a group has not consumed",
            &|r| r.2.to_string(),
        );
        if per_partition {
            family(GROUP_COMMITTED, "The committed offset of a group", &|r| {
                r.3.to_string()
            });
        }
        let _ = writeln!(out, "# HELP {GROUP_MEMBERS} Members of each group.");
        let _ = writeln!(out, "# TYPE {GROUP_MEMBERS} gauge");
        for (g, n) in &s.members {
            let _ = writeln!(out, "{GROUP_MEMBERS}{{group=\"{}\"}} {n}", escape(g));
        }
        drop(s);
        self.render_shares(out, per_partition);
    }

    /// Appends the share group gauges: per group, topic and partition, or summed per group and
    /// topic.
    fn render_shares(&self, out: &mut String, per_partition: bool) {
        let shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: std::collections::BTreeMap<String, (u64, u64)> =
            std::collections::BTreeMap::new();
        for s in shares.iter() {
            let mut labels = format!(
                "group=\"{}\",topic=\"{}\"",
                escape(&s.group),
                escape(&s.topic)
            );
            if per_partition {
                let _ = write!(labels, ",partition=\"{}\"", s.partition);
            }
            let row = rows.entry(labels).or_default();
            row.0 += s.in_flight;
            row.1 += s.lag;
        }
        let families = [
            (
                SHARE_IN_FLIGHT,
                "Records a share group has in flight (acquired, waiting for redelivery or for the dead-letter topic)",
                false,
            ),
            (
                SHARE_LAG,
                "Records not yet delivered to a share group",
                true,
            ),
        ];
        for (name, help, lag) in families {
            let _ = writeln!(out, "# HELP {name} {help}.");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, (in_flight, behind)) in &rows {
                let value = if lag { behind } else { in_flight };
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
}

/// Whether series are labelled per partition (`metrics.partition_labels`).
static PARTITION_LABELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether series are labelled per partition (`metrics.partition_labels`, set by [`install`]).
pub fn partition_labels() -> bool {
    PARTITION_LABELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Escapes a label value (group ids and topic names never need it; this is defence).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_IN, Unit::Count, "Records appended, per topic.");
    describe_counter!(BYTES_IN, Unit::Bytes, "Batch bytes appended, per topic.");
    describe_counter!(
        RECORDS_OUT,
        Unit::Count,
        "Records sent to consumers, per topic."
    );
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Batch bytes sent to consumers, per topic."
    );
    describe_counter!(
        RPC_REQUESTS,
        Unit::Count,
        "RPCs answered, per rpc and status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "RPC latency (streams: until the stream ended), per rpc and status code."
    );
    describe_histogram!(FSYNC_DURATION, Unit::Seconds, "Duration of log fsyncs.");
    describe_gauge!(LOG_END_OFFSET, "Log end offset, per partition.");
    describe_gauge!(LOG_START_OFFSET, "Log start offset, per partition.");
    describe_gauge!(
        PARTITION_SIZE,
        Unit::Bytes,
        "Bytes of segment files, per partition."
    );
    describe_gauge!(CONNECTIONS, "Open client connections.");
    describe_gauge!(SUBSCRIPTIONS, "Open Subscribe streams.");
    describe_counter!(RECOVERY_REPAIRS, "Crash recovery repairs, per kind.");
    describe_counter!(
        RETENTION_DELETED,
        Unit::Bytes,
        "Bytes deleted by retention, per topic."
    );
    describe_gauge!(
        PRODUCE_IN_FLIGHT,
        Unit::Bytes,
        "Batch bytes of produce requests being appended."
    );
    describe_gauge!(
        READ_BUFFER,
        Unit::Bytes,
        "Batch bytes read for fetches and subscription streams and not yet written to their clients."
    );
    describe_counter!(
        LIMIT_REJECTIONS,
        "Requests refused by a broker limit, per limit."
    );
    describe_histogram!(
        QUOTA_THROTTLE,
        Unit::Seconds,
        "How long answers were delayed by client quotas, per quota."
    );
    describe_gauge!(
        LOGS_FAILED,
        "Logs that failed after a write or fsync error and refuse appends until the broker restarts."
    );
    describe_counter!(
        GROUP_REBALANCES,
        Unit::Count,
        "Rebalances of consumer groups (a new generation), all groups together."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        Unit::Count,
        "TLS handshakes on the gRPC listener that failed or timed out."
    );
    describe_counter!(
        AUTH_FAILURES,
        Unit::Count,
        "Calls refused as unauthenticated, per mechanism (none, malformed, password, token)."
    );
    describe_counter!(
        AUTH_DENIALS,
        Unit::Count,
        "Calls refused because no ACL allows them (or one denies them), per operation."
    );
    describe_counter!(
        SHARE_ACQUIRED,
        Unit::Count,
        "Records acquired by share group members, per group and topic."
    );
    describe_counter!(
        SHARE_REDELIVERED,
        Unit::Count,
        "Records acquired again after an earlier delivery, per group and topic."
    );
    describe_counter!(
        SHARE_ACKNOWLEDGED,
        Unit::Count,
        "Records acknowledged by share group members, per group, topic and kind."
    );
    describe_counter!(
        SHARE_LOCK_EXPIRIES,
        Unit::Count,
        "Records whose acquisition lock expired, per share group and topic."
    );
    describe_counter!(
        SHARE_DEAD_LETTERED,
        Unit::Count,
        "Records copied to a share group's dead-letter topic, per group and topic read."
    );
    describe_counter!(
        REMOTE_UPLOADED_BYTES,
        Unit::Bytes,
        "Segment bytes copied to the object store, per topic."
    );
    describe_counter!(
        REMOTE_UPLOADED_SEGMENTS,
        Unit::Count,
        "Segments copied to the object store, per topic."
    );
    describe_counter!(
        REMOTE_UPLOAD_ERRORS,
        Unit::Count,
        "Failed segment copies (retried with backoff), per topic."
    );
    describe_gauge!(
        REMOTE_UPLOAD_LAG_BYTES,
        Unit::Bytes,
        "Sealed bytes on local disk not yet copied to the object store, per partition."
    );
    describe_gauge!(
        REMOTE_UPLOAD_LAG_SEGMENTS,
        Unit::Count,
        "Sealed segments on local disk not yet copied to the object store, per partition."
    );
    describe_gauge!(
        REMOTE_SIZE,
        Unit::Bytes,
        "Bytes of segments in the object store, per partition."
    );
    describe_counter!(
        REMOTE_DELETED_SEGMENTS,
        Unit::Count,
        "Segments deleted from the object store by retention, per topic."
    );
    describe_counter!(
        REMOTE_FETCHED_BYTES,
        Unit::Bytes,
        "Bytes fetched from the object store to serve reads, per topic."
    );
    describe_counter!(
        REMOTE_CHUNK_READS,
        Unit::Count,
        "Chunks of remote segments read, by source (cache or store)."
    );
    describe_counter!(
        REMOTE_READ_ERRORS,
        Unit::Count,
        "Remote reads that failed because the object store could not be read, per topic."
    );
    describe_counter!(
        REMOTE_CONFLICTS,
        Unit::Count,
        "Manifest writes refused because another broker changed the manifest, per topic."
    );
    describe_gauge!(
        REMOTE_CACHE_SIZE,
        Unit::Bytes,
        "Bytes held by the cache of remote reads."
    );
    describe_gauge!(TOPICS, "Topics.");
    describe_gauge!(PARTITIONS, "Partitions of all topics.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Broker start time, Unix seconds."
    );
}

/// Per-topic counters, registered once when the topic is opened.
#[derive(Debug, Clone)]
pub struct TopicMetrics {
    /// [`RECORDS_IN`].
    pub records_in: Counter,
    /// [`BYTES_IN`].
    pub bytes_in: Counter,
    /// [`RECORDS_OUT`].
    pub records_out: Counter,
    /// [`BYTES_OUT`].
    pub bytes_out: Counter,
    /// [`RETENTION_DELETED`].
    pub retention_deleted: Counter,
}

impl TopicMetrics {
    /// Registers the counters of `topic`.
    pub fn new(topic: &str) -> Self {
        let t = topic.to_owned();
        TopicMetrics {
            records_in: counter!(RECORDS_IN, "topic" => t.clone()),
            bytes_in: counter!(BYTES_IN, "topic" => t.clone()),
            records_out: counter!(RECORDS_OUT, "topic" => t.clone()),
            bytes_out: counter!(BYTES_OUT, "topic" => t.clone()),
            retention_deleted: counter!(RETENTION_DELETED, "topic" => t),
        }
    }
}

/// Per-partition gauges, registered once when the partition is opened.
#[derive(Debug, Clone)]
pub struct PartitionMetrics {
    /// [`LOG_END_OFFSET`].
    pub end_offset: Gauge,
    /// [`LOG_START_OFFSET`].
    pub start_offset: Gauge,
    /// [`PARTITION_SIZE`].
    pub size: Gauge,
}

impl PartitionMetrics {
    /// Registers the gauges of one partition; without [`partition_labels`], gauges that
    /// export nothing.
    pub fn new(topic: &str, partition: u32) -> Self {
        if !partition_labels() {
            return PartitionMetrics {
                end_offset: Gauge::noop(),
                start_offset: Gauge::noop(),
                size: Gauge::noop(),
            };
        }
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        PartitionMetrics {
            end_offset: gauge!(LOG_END_OFFSET, &labels),
            start_offset: gauge!(LOG_START_OFFSET, &labels),
            size: gauge!(PARTITION_SIZE, &labels),
        }
    }
}

/// Feeds storage events (fsyncs, recovery repairs) into metrics.
#[derive(Debug)]
pub struct StorageObserver {
    fsync: Histogram,
}

impl StorageObserver {
    /// A new observer, shared by every log.
    pub fn new() -> Arc<Self> {
        Arc::new(StorageObserver {
            fsync: histogram!(FSYNC_DURATION),
        })
    }
}

impl Observer for StorageObserver {
    fn on_fsync(&self, took: Duration) {
        self.fsync.record(took.as_secs_f64());
    }

    fn on_repair(&self, repair: &Repair) {
        let kind = match repair.kind {
            RepairKind::TruncatedTail => "truncated_tail",
            RepairKind::DeletedSegment => "deleted_segment",
            RepairKind::RebuiltIndex => "rebuilt_index",
            RepairKind::DeletedOrphan => "deleted_orphan",
            _ => "other",
        };
        counter!(RECOVERY_REPAIRS, "kind" => kind).increment(1);
    }

    fn on_failed(&self, _dir: &std::path::Path) {
        gauge!(LOGS_FAILED).increment(1.0);
    }
}

/// Counts one answered RPC and its latency; `code` is the name of its status code (for gRPC,
/// `OK`, `NOT_FOUND`, ...).
pub fn rpc_done(rpc: &'static str, code: &'static str, started: Instant) {
    counter!(RPC_REQUESTS, "rpc" => rpc, "code" => code).increment(1);
    histogram!(RPC_DURATION, "rpc" => rpc, "code" => code).record(started.elapsed().as_secs_f64());
}

/// Counts a request refused (or answered with an error) because of a limit.
pub fn limit_rejected(limit: &'static str) {
    counter!(LIMIT_REJECTIONS, "limit" => limit).increment(1);
}

/// Exports the series alerts watch from the start, at 0, rather than only once something
/// happened: failed logs and group rebalances.
pub fn at_zero() {
    gauge!(LOGS_FAILED).set(0.0);
    counter!(GROUP_REBALANCES).absolute(0);
}

/// Counts a TLS handshake that failed or timed out.
pub fn tls_handshake_failed() {
    counter!(TLS_HANDSHAKE_FAILURES).increment(1);
}

/// Counts a call refused as unauthenticated; `mechanism` is `none`, `malformed`, `password` or
/// `token`.
pub fn auth_failed(mechanism: &'static str) {
    counter!(AUTH_FAILURES, "mechanism" => mechanism).increment(1);
}

/// Counts a call refused by authorization.
pub fn auth_denied(operation: &'static str) {
    counter!(AUTH_DENIALS, "operation" => operation).increment(1);
}

/// Counts records acquired by a share group member; `redelivered` of them not for the first
/// time.
pub fn share_acquired(group: &str, topic: &str, records: u64, redelivered: u64) {
    let labels = [("group", group.to_owned()), ("topic", topic.to_owned())];
    counter!(SHARE_ACQUIRED, &labels).increment(records);
    if redelivered > 0 {
        counter!(SHARE_REDELIVERED, &labels).increment(redelivered);
    }
}

/// Counts records acknowledged; `kind` is accept, release, reject or renew.
pub fn share_acknowledged(group: &str, topic: &str, kind: &'static str, records: u64) {
    let labels = [
        ("group", group.to_owned()),
        ("topic", topic.to_owned()),
        ("kind", kind.to_owned()),
    ];
    counter!(SHARE_ACKNOWLEDGED, &labels).increment(records);
}

/// Counts records whose acquisition lock expired.
pub fn share_lock_expiries(group: &str, topic: &str, records: u64) {
    let labels = [("group", group.to_owned()), ("topic", topic.to_owned())];
    counter!(SHARE_LOCK_EXPIRIES, &labels).increment(records);
}

/// Counts records copied to a dead-letter topic.
pub fn share_dead_lettered(group: &str, topic: &str, records: u64) {
    let labels = [("group", group.to_owned()), ("topic", topic.to_owned())];
    counter!(SHARE_DEAD_LETTERED, &labels).increment(records);
}

/// Counts a group rebalance.
pub fn group_rebalanced() {
    counter!(GROUP_REBALANCES).increment(1);
}

/// Counts an answer delayed by `delay` under the quota named `quota`.
pub fn quota_throttled(quota: &'static str, delay: Duration) {
    histogram!(QUOTA_THROTTLE, "quota" => quota).record(delay.as_secs_f64());
}

/// A gauge without labels.
pub fn plain_gauge(name: &'static str) -> Gauge {
    gauge!(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_call_on_the_metrics_port_is_answered_on_its_stream() {
        // The client's SETTINGS, then HEADERS on stream 3.
        let mut client = vec![0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        assert_eq!(first_headers(&client), None, "no call yet");
        client.extend_from_slice(&[0, 0, 1, 0x1, 0x4, 0, 0, 0, 3, 0x83]);
        assert_eq!(first_headers(&client), Some(3));
        assert_eq!(first_headers(&client[..client.len() - 1]), Some(3));

        let answer = grpc_refusal(3);
        let kinds: Vec<(u8, u32)> = {
            let mut out = Vec::new();
            let mut rest = &answer[..];
            while rest.len() >= 9 {
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                out.push((
                    rest[3],
                    u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
                ));
                rest = &rest[9 + len..];
            }
            out
        };
        assert_eq!(kinds, [(0x4, 0), (0x4, 0), (0x1, 3), (0x7, 0)]);
        assert!(
            answer
                .windows(NOT_GRPC.len())
                .any(|w| w == NOT_GRPC.as_bytes())
        );
    }

    #[test]
    fn long_hpack_strings_carry_their_length_in_continuation_bytes() {
        let mut block = Vec::new();
        hpack_string(&mut block, &"x".repeat(300));
        // 300 = 127 + 173; 173 = 45 + 128 * 1.
        assert_eq!(&block[..3], &[127, 45 | 0x80, 1]);
        assert_eq!(block.len(), 3 + 300);
    }
}
