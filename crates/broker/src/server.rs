//! The broker's entry point [`run`]: opens the data directory, serves the gRPC services with
//! health and reflection on a bound listener, runs retention, and shuts down in one shape:
//! stop accepting, finish in-flight work, end streams, close every log cleanly.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::metrics::Gauge;
use runnel_proto::pb::{
    admin_service_server::AdminServiceServer, group_service_server::GroupServiceServer,
    produce_service_server::ProduceServiceServer,
};
use runnel_storage::{LogEnv, SystemClock};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::error::Error;
use crate::groups::{self, Groups};
use crate::metrics;
use crate::producers::Producers;
use crate::services::admin::Admin;
use crate::services::consume_http::ConsumeRoutes;
use crate::services::groups::Groups as GroupsService;
use crate::services::produce::Produce;
use crate::shutdown::{self, Shutdown};
use crate::topics::Topics;

/// The gRPC service names whose health is reported, besides the overall `""`.
pub const SERVICE_NAMES: [&str; 4] = [
    "runnel.v1.AdminService",
    "runnel.v1.ProduceService",
    "runnel.v1.ConsumeService",
    "runnel.v1.GroupService",
];

/// Runs the broker on an already bound `listener` until `shutdown` completes, then shuts down
/// gracefully within `config.shutdown.deadline_ms` and returns.
///
/// Tests run it in-process on `127.0.0.1:0` with metrics disabled; `runneld` runs it with the
/// configured addresses and SIGINT/SIGTERM as `shutdown`.
///
/// # Errors
/// An invalid config, an unusable or locked data directory, a partition that cannot be
/// opened, a metrics listener that cannot be bound, or a failure of the gRPC server.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    config
        .validate()
        .map_err(|(key, reason)| Error::Config { key, reason })?;
    let started = Instant::now();
    let start_time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Error::io("create data directory", &data_dir, e))?;
    let lock = DataDirLock::acquire(&data_dir)?;

    let group_gauges = metrics::GroupGauges::new();
    let exporter = if config.metrics.enabled {
        Some(metrics::install(
            config.metrics_listen,
            &config.metrics.duration_buckets_seconds,
            group_gauges.clone(),
        )?)
    } else {
        None
    };
    metrics::plain_gauge(metrics::START_TIME).set(start_time_ms as f64 / 1000.0);

    let env = LogEnv {
        clock: Arc::new(SystemClock),
        observer: metrics::StorageObserver::new(),
    };
    let (defaults, storage, limits) = (
        config.topic_defaults.clone(),
        config.storage.clone(),
        config.limits.clone(),
    );
    let dir = data_dir.clone();
    let group_settings = config.groups.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let topics = Arc::new(Topics::open(&dir, defaults, storage, limits, env)?);
        let producers = Producers::open(&dir)?;
        let groups = Groups::open(&dir, group_settings, topics.clone(), group_gauges)?;
        Ok::<_, Error>((topics, producers, groups))
    })
    .await
    .map_err(|e| Error::Thread {
        what: "opening topics",
        source: io::Error::other(e.to_string()),
    })??;
    let (topics, producers, groups) = opened;
    let groups = Arc::new(groups);
    groups.start();
    {
        let t = topics.clone();
        tokio::task::spawn_blocking(move || t.purge_deleted());
    }

    let (trigger, signal) = shutdown::channel();
    let limits = &config.limits;
    let broker = Arc::new(Broker::new(
        config.clone(),
        topics.clone(),
        producers,
        groups.clone(),
        signal.clone(),
        started,
        start_time_ms,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        // Each reflection service also describes the other version, so a tool using either
        // one lists (and can describe) every service the broker serves.
        b.register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Metadata {
            path: PathBuf::from("runnel_proto::FILE_DESCRIPTOR_SET"),
            reason: e.to_string(),
        })?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Metadata {
            path: PathBuf::from("runnel_proto::FILE_DESCRIPTOR_SET"),
            reason: e.to_string(),
        })?;

    let max_request = usize::try_from(limits.max_request_bytes).unwrap_or(usize::MAX);
    let keepalive = config.server.http2_keepalive_interval_ms;
    let router = Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .tcp_nodelay(true)
        // Larger than HTTP/2's defaults (1 MiB windows, 16 KiB frames), so that a producer
        // keeps several 1 MiB batches moving and each arrives in a few frames
        // (docs/benchmarks.md, "Broker").
        .initial_stream_window_size(Some(config.server.http2_stream_window_bytes))
        .initial_connection_window_size(Some(config.server.http2_connection_window_bytes))
        .max_frame_size(Some(config.server.http2_max_frame_bytes))
        .http2_keepalive_interval((keepalive > 0).then(|| Duration::from_millis(keepalive)))
        .http2_keepalive_timeout(Some(Duration::from_millis(
            config.server.http2_keepalive_timeout_ms,
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AdminServiceServer::new(Admin::new(broker.clone()))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            ProduceServiceServer::new(Produce::new(broker.clone()))
                .max_decoding_message_size(max_request),
        )
        // The generated service, but `Subscribe` and `Fetch` skip tonic's encoder (one copy less).
        .add_service(ConsumeRoutes::new(broker.clone(), max_request))
        .add_service(
            GroupServiceServer::new(GroupsService::new(broker.clone()))
                .max_decoding_message_size(max_request),
        );

    let local_addr = listener.local_addr().ok();
    let (conn_tx, conn_rx) = mpsc::channel::<io::Result<Conn>>(1);
    let accept = tokio::spawn(accept_loop(
        listener,
        Arc::new(Semaphore::new(limits.max_connections as usize)),
        conn_tx,
        signal.clone(),
    ));
    let stop_serving = signal.clone();
    let mut server = tokio::spawn(
        router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
            stop_serving.wait().await
        }),
    );
    let retention = tokio::spawn(retention_loop(
        topics.clone(),
        Duration::from_millis(config.storage.retention_check_interval_ms),
        signal.clone(),
    ));
    let group_ticks = tokio::spawn(group_tick_loop(groups.clone(), signal.clone()));
    let group_lag = tokio::spawn(groups::lag::refresh_loop(
        groups.clone(),
        Duration::from_millis(config.groups.lag_refresh_interval_ms),
        signal.clone(),
    ));

    let metrics_listen = if config.metrics.enabled {
        config.metrics_listen.to_string()
    } else {
        "off".to_owned()
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local_addr.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        metrics_listen = %metrics_listen,
        data_dir = %data_dir.display(),
        topics = topics.list().len(),
        partitions = topics.all_partitions().len(),
        "runneld started"
    );

    let mut server_result = None;
    tokio::select! {
        () = shutdown => {}
        r = &mut server => server_result = Some(r),
    }
    let shutdown_started = Instant::now();
    info!("shutdown started: no new connections, finishing in-flight requests");
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in SERVICE_NAMES {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    trigger.fire();
    // Health `Watch` streams end only when their status is cleared; they have been told
    // NOT_SERVING, so end them rather than let them hold the drain until the deadline.
    let mut health = health;
    for name in std::iter::once("").chain(SERVICE_NAMES) {
        health.clear_service_status(name).await;
    }
    let _ = accept.await;

    let deadline = config.shutdown_deadline();
    let served = match server_result {
        Some(r) => Some(r),
        None => match tokio::time::timeout(deadline, &mut server).await {
            Ok(r) => Some(r),
            Err(_) => {
                warn!(
                    deadline_ms = config.shutdown.deadline_ms,
                    "shutdown deadline passed; dropping the requests still in flight"
                );
                server.abort();
                None
            }
        },
    };
    let _ = retention.await;
    let _ = group_ticks.await;
    let _ = group_lag.await;
    // Commits answered before this point are durable; later ones were refused.
    groups.close().await;
    let serve_error = match served {
        Some(Ok(Err(e))) => Some(Error::Serve(e)),
        Some(Err(join)) if join.is_panic() => Some(Error::Thread {
            what: "the gRPC server",
            source: io::Error::other(join.to_string()),
        }),
        _ => None,
    };

    let t = topics.clone();
    let failed = tokio::task::spawn_blocking(move || t.close_all())
        .await
        .unwrap_or(usize::MAX);
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    drop(lock);
    info!(
        took_ms = u64::try_from(shutdown_started.elapsed().as_millis()).unwrap_or(u64::MAX),
        logs_failed_to_close = failed,
        "runneld stopped"
    );
    match serve_error {
        Some(e) => {
            error!(error = %e, "gRPC server failed");
            Err(e)
        }
        None => Ok(()),
    }
}

/// Accepts connections while fewer than `max_connections` are open; past that, new clients
/// wait in the listen backlog. Ends at shutdown, which closes the listener.
async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    conns: mpsc::Sender<io::Result<Conn>>,
    shutdown: Shutdown,
) {
    let gauge = metrics::plain_gauge(metrics::CONNECTIONS);
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.wait() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.wait() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let conn = Conn::new(stream, permit, gauge.clone());
                if conns.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An accepted connection holding one `max_connections` slot until it closes.
struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Conn {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Conn {
            stream,
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Enforces group session and rebalance timeouts every [`groups::TICK`] until shutdown.
async fn group_tick_loop(groups: Arc<Groups>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(groups::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            _ = tick.tick() => groups.tick(Instant::now()),
        }
    }
}

/// Runs retention over every partition every `interval` until shutdown.
async fn retention_loop(topics: Arc<Topics>, interval: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let t = topics.clone();
        let _ = tokio::task::spawn_blocking(move || t.enforce_retention()).await;
    }
}

/// An exclusive lock on the data directory (`<data_dir>/.lock`, `flock`), so that two brokers
/// never share one; the kernel releases it when the process dies.
#[derive(Debug)]
struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    fn acquire(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::Locked {
                data_dir: data_dir.to_path_buf(),
                lock: path,
            }),
            Err(e) => Err(Error::io("lock", &path, e.into())),
        }
    }
}
