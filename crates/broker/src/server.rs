//! The broker's entry point [`run`]: opens the data directory, serves the gRPC services with
//! health and reflection on a bound listener, runs the background loops, and shuts down in
//! one shape: stop accepting, finish in-flight work, end streams, close every log cleanly.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use runnel_storage::{LogEnv, SystemClock};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Router;
use tracing::{error, info, warn};

use crate::auth::Auth;
use crate::background::Background;
use crate::broker::{Broker, State};
use crate::config::Config;
use crate::connections::{Conn, accept_loop};
use crate::console::Console;
use crate::data_dir;
use crate::error::Error;
use crate::groups::Groups;
use crate::kafka;
use crate::metrics::{self, GroupGauges};
use crate::producers::Producers;
use crate::quotas::Quotas;
use crate::services::router;
use crate::shares::ShareGroups;
use crate::shutdown::{self, Shutdown};
use crate::tasks::BlockingPool;
use crate::tiered::Tiered;
use crate::tls::Tls;
use crate::topics::Topics;

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
    // Open: check the config, lock the data directory (held until the end: one broker per
    // data directory), start the metrics exporter; serve, with health NOT_SERVING and the
    // services answering BROKER_STARTING, while the topics, producers and groups recover.
    config
        .validate()
        .map_err(|(key, reason)| Error::Config { key, reason })?;
    let started = Started::now();
    let lock = data_dir::open(&config.data_dir)?;
    let group_gauges = GroupGauges::new();
    let console = (config.metrics.enabled && config.console.served_on(config.metrics_listen))
        .then(|| Console::new(config.console.allow_remote));
    let tls = Tls::load(&config.tls)?;
    let kafka_listener = bind_kafka(&config).await?;
    let auth = Auth::open(&config.data_dir, &config.auth)?;
    let exporter = start_metrics(
        &config,
        &started,
        &group_gauges,
        console.clone(),
        &auth,
        tls.as_ref(),
    )?;
    let (trigger, signal) = shutdown::channel();
    let health = router::Health::starting().await;
    let quotas = Arc::new(Quotas::open(&config.data_dir, config.quotas.clone())?);
    let (router, services) = router::router(&config, &health, quotas.clone(), &auth)?;
    let mut serving = Serving::start(router, listener, tls.clone(), &config, &signal);
    let reloads = tokio::spawn(reload_on_sighup(tls.clone(), signal.clone()));
    let state = open_state(&config, group_gauges).await?;

    // Serve: the broker over that state behind the services, the background loops, all
    // watching one shutdown signal; then health says SERVING.
    let broker = Arc::new(Broker::new(
        config,
        state,
        signal.clone(),
        quotas,
        started.at,
        started.unix_ms,
    ));
    services.open(&broker);
    if let Some(console) = &console {
        console.open(&broker);
    }
    let background = Background::spawn(&broker, &signal);
    let kafka = kafka_listener.map(|l| serving.start_kafka(l, &broker, tls, &auth, &signal));
    health.serving().await;
    log_started(&broker, &serving);
    tell_systemd(&[sd_notify::NotifyState::Ready]);

    // Wait until the shutdown future completes, or the server fails.
    let server_ended = tokio::select! {
        () = shutdown => None,
        r = &mut serving.server => Some(r),
    };

    // Drain: report NOT_SERVING, fire the signal (streams and loops end), let in-flight
    // requests finish within the deadline.
    let shutdown_started = Instant::now();
    info!("shutdown started: no new connections, finishing in-flight requests");
    tell_systemd(&[sd_notify::NotifyState::Stopping]);
    health.not_serving().await;
    trigger.fire();
    health.clear().await;
    let serve_error = serving.drain(server_ended, &broker.config).await;
    background.join().await;
    if let Some(kafka) = kafka {
        let _ = kafka.await;
    }
    reloads.abort();

    // Close: commits answered before this point are durable, later ones were refused; then
    // every log is closed cleanly, the internal logs with the partitions.
    broker.groups.close().await;
    broker.shares.close().await;
    let failed = close_logs(&broker).await;
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    drop(lock);
    stopped(shutdown_started, failed, serve_error)
}

/// Binds `kafka.listen`, if set, before anything is opened, so that a taken port fails the
/// start at once.
async fn bind_kafka(config: &Config) -> Result<Option<TcpListener>, Error> {
    let addr = match config.kafka.listen_addr() {
        Ok(Some(addr)) => addr,
        Ok(None) => return Ok(None),
        Err(reason) => {
            return Err(Error::Config {
                key: "kafka.listen".into(),
                reason,
            });
        }
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| Error::KafkaListen { addr, source })
}

/// Reads the TLS certificate and key again at every SIGHUP, until shutdown; a failure keeps
/// the previous ones and is logged. Without TLS a SIGHUP is logged and changes nothing (it
/// never stops the broker, so `systemctl reload` is always safe).
async fn reload_on_sighup(tls: Option<Arc<Tls>>, shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; TLS files are read only at start");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match tls.as_ref().map(|tls| tls.reload()) {
            None => info!("SIGHUP: nothing to reload (TLS is off)"),
            Some(Ok(())) => {
                info!("SIGHUP: reloaded the TLS certificate and key; new connections use them")
            }
            Some(Err(e)) => {
                warn!(error = %e, "SIGHUP: the TLS files cannot be used; keeping the previous ones")
            }
        }
    }
}

/// Tells systemd (a `Type=notify` unit: `$NOTIFY_SOCKET`) that the broker is ready, once
/// every partition is open and health says `SERVING`, or that it is stopping. Nothing
/// without `$NOTIFY_SOCKET`; a failure is logged, never fatal.
fn tell_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "telling systemd the broker's state failed ($NOTIFY_SOCKET)");
    }
}

/// When the broker started, as an instant (for uptime) and as Unix time.
struct Started {
    at: Instant,
    unix_ms: i64,
}

impl Started {
    fn now() -> Self {
        Started {
            at: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

/// Installs the metrics exporter if enabled, and sets the start time gauge.
fn start_metrics(
    config: &Config,
    started: &Started,
    group_gauges: &Arc<GroupGauges>,
    console: Option<Arc<Console>>,
    auth: &Arc<Auth>,
    tls: Option<&Arc<Tls>>,
) -> Result<Option<JoinHandle<()>>, Error> {
    let http_tls = tls.filter(|tls| tls.on_http_port()).map(|tls| {
        let tls = tls.clone();
        Arc::new(move || tls.http_acceptor()) as metrics::HttpTls
    });
    let exporter = if config.metrics.enabled {
        Some(metrics::install(
            config.metrics_listen,
            &config.metrics.duration_buckets_seconds,
            group_gauges.clone(),
            &config.data_dir,
            config.metrics.partition_labels,
            console.clone().map(crate::console::routes),
            {
                let (auth, anonymous) = (auth.clone(), config.auth.anonymous_metrics);
                let with_page = console.is_some();
                Box::new(move |app| crate::console::guard(app, auth, anonymous, with_page))
            },
            http_tls,
        )?)
    } else {
        None
    };
    metrics::plain_gauge(metrics::START_TIME).set(started.unix_ms as f64 / 1000.0);
    metrics::at_zero();
    Ok(exporter)
}

/// Opens the topics (recovering every partition's log), the producer registry, the
/// consumer groups and the share groups, starts the writers of the groups' internal logs,
/// and removes in the background what deleted topics left.
async fn open_state(config: &Config, group_gauges: Arc<GroupGauges>) -> Result<State, Error> {
    let env = LogEnv {
        clock: Arc::new(SystemClock),
        observer: metrics::StorageObserver::new(),
        spawner: Arc::new(BlockingPool(Handle::current())),
    };
    let dir = config.data_dir.clone();
    let (defaults, storage, limits) = (
        config.topic_defaults.clone(),
        config.storage.clone(),
        config.limits.clone(),
    );
    let group_settings = config.groups.clone();
    let share_settings = config.shares.clone();
    let remote = config.remote_storage.clone();
    let (topics, producers, groups, shares) = tokio::task::spawn_blocking(move || {
        let tiered = Tiered::open(&remote, &dir)?;
        let topics = Arc::new(Topics::open(
            &dir,
            defaults,
            storage,
            limits,
            env.clone(),
            tiered,
        )?);
        let producers = Producers::open(&dir, &env)?;
        let max_members = group_settings.max_members_per_group;
        let groups = Groups::open(&dir, group_settings, topics.clone(), group_gauges, &env)?;
        let shares = ShareGroups::open(&dir, share_settings, max_members, &env)?;
        Ok::<_, Error>((topics, producers, groups, shares))
    })
    .await
    .map_err(|e| Error::Thread {
        what: "opening topics",
        source: io::Error::other(e.to_string()),
    })??;
    let groups = Arc::new(groups);
    groups.start();
    let shares = Arc::new(shares);
    shares.start();
    let t = topics.clone();
    tokio::task::spawn_blocking(move || t.purge_deleted());
    Ok(State {
        topics,
        producers,
        groups,
        shares,
    })
}

/// The gRPC server and the loop that accepts its connections.
struct Serving {
    accept: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    local_addr: Option<std::net::SocketAddr>,
    /// The connection slots (`limits.max_connections`), shared with the Kafka listener.
    slots: Arc<Semaphore>,
}

impl Serving {
    /// Serves `router` on the connections accepted from `listener` (at most
    /// `limits.max_connections` at once) until the shutdown signal.
    fn start(
        router: Router<router::Layers>,
        listener: TcpListener,
        tls: Option<Arc<Tls>>,
        config: &Config,
        signal: &Shutdown,
    ) -> Self {
        let local_addr = listener.local_addr().ok();
        let slots = Arc::new(Semaphore::new(config.limits.max_connections as usize));
        let (conn_tx, conn_rx) = mpsc::channel::<io::Result<Conn>>(1);
        let accept = tokio::spawn(accept_loop(
            listener,
            slots.clone(),
            tls,
            conn_tx,
            signal.clone(),
        ));
        let stop_serving = signal.clone();
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                stop_serving.wait().await
            }),
        );
        Serving {
            accept,
            server,
            local_addr,
            slots,
        }
    }

    /// Accepts the Kafka listener's connections on the same slots as gRPC's, with the same
    /// TLS, and serves them.
    fn start_kafka(
        &self,
        listener: TcpListener,
        broker: &Arc<Broker>,
        tls: Option<Arc<Tls>>,
        auth: &Arc<Auth>,
        signal: &Shutdown,
    ) -> JoinHandle<()> {
        let local = listener.local_addr().ok();
        let (conn_tx, conn_rx) = mpsc::channel::<io::Result<Conn>>(1);
        tokio::spawn(accept_loop(
            listener,
            self.slots.clone(),
            tls,
            conn_tx,
            signal.clone(),
        ));
        let front = kafka::Front {
            broker: broker.clone(),
            auth: auth.clone(),
            local,
        };
        kafka::serve(conn_rx, front, signal.clone(), Conn::peer)
    }

    /// After the shutdown signal: waits for the accept loop to end and for in-flight requests
    /// to finish, at most the shutdown deadline, then drops what is left. `ended` is the
    /// server's result if it already ended. Returns the server's failure, if any.
    async fn drain(
        mut self,
        ended: Option<Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>>,
        config: &Config,
    ) -> Option<Error> {
        let _ = self.accept.await;
        let served = match ended {
            Some(r) => Some(r),
            None => {
                match tokio::time::timeout(config.shutdown_deadline(), &mut self.server).await {
                    Ok(r) => Some(r),
                    Err(_) => {
                        warn!(
                            deadline_ms = config.shutdown.deadline_ms,
                            "shutdown deadline passed; dropping the requests still in flight"
                        );
                        self.server.abort();
                        None
                    }
                }
            }
        };
        match served {
            Some(Ok(Err(e))) => Some(Error::Serve(e)),
            Some(Err(join)) if join.is_panic() => Some(Error::Thread {
                what: "the gRPC server",
                source: io::Error::other(join.to_string()),
            }),
            _ => None,
        }
    }
}

/// The line that says the broker is up, where, and with how much.
fn log_started(broker: &Broker, serving: &Serving) {
    let config = &broker.config;
    let metrics_listen = if config.metrics.enabled {
        config.metrics_listen.to_string()
    } else {
        "off".to_owned()
    };
    let console = if !config.metrics.enabled || !config.console.enabled {
        "off".to_owned()
    } else if config.console.served_on(config.metrics_listen) {
        let scheme = if config.tls.enabled() && config.tls.metrics {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/", config.metrics_listen)
    } else {
        "off (metrics_listen is not loopback; see console.allow_remote)".to_owned()
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %serving.local_addr.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        metrics_listen = %metrics_listen,
        tls = if config.tls.enabled() { "on" } else { "off" },
        console = %console,
        data_dir = %config.data_dir.display(),
        topics = broker.topics.list().len(),
        partitions = broker.topics.all_partitions().len(),
        "runneld started"
    );
}

/// Logs the end of shutdown, and the server's failure if it failed.
fn stopped(
    shutdown_started: Instant,
    logs_failed: usize,
    serve_error: Option<Error>,
) -> Result<(), Error> {
    info!(
        took_ms = u64::try_from(shutdown_started.elapsed().as_millis()).unwrap_or(u64::MAX),
        logs_failed_to_close = logs_failed,
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

/// Closes every partition's log and the producer ids' log cleanly; returns how many failed
/// to close.
async fn close_logs(broker: &Arc<Broker>) -> usize {
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        let producers = match b.producers.close() {
            Ok(()) => 0,
            Err(e) => {
                warn!(error = %e, "closing the producer ids log failed; the next start recovers it");
                1
            }
        };
        b.topics.close_all() + producers
    })
    .await
    .unwrap_or(usize::MAX)
}
