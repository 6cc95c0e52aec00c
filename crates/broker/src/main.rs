//! `runneld`, the Runnel broker daemon: parses flags, loads the configuration, sets up logging,
//! binds the gRPC listener, and runs the broker until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 2 for invalid configuration or flags, 1 for any other
//! failure (data directory unusable or locked, port in use, a partition that cannot be opened).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use runnel_broker::config::{Config, ConfigError, LogFormat, Override};
use tracing_subscriber::EnvFilter;

/// The system allocator, with huge allocations committed lazily (`runnel_broker::alloc`).
#[global_allocator]
static ALLOCATOR: runnel_broker::alloc::Allocator = runnel_broker::alloc::Allocator;

/// The Runnel event streaming broker.
///
/// Configuration is layered: built-in defaults, then the TOML file given with --config, then
/// RUNNEL_* environment variables (a key `section.name` is RUNNEL_SECTION_NAME), then flags.
/// See docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "runneld", version)]
struct Args {
    /// The TOML configuration file (config/runneld.toml lists every key).
    #[arg(long, env = "RUNNEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where topics and broker metadata are stored [key: data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// The gRPC listen address [key: listen].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The HTTP listen address: metrics and the web console [key: metrics_listen].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log line format, human or json [key: log.format].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, RUST_LOG syntax [key: log.filter].
    #[arg(long, value_name = "FILTER")]
    log_filter: Option<String>,
    /// Serves without authentication on an address other than loopback: anyone who reaches
    /// the port may then read, write and delete everything [key: auth.insecure].
    #[arg(long)]
    insecure: bool,
    /// Sets any config key, for example --set limits.max_topics=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Prints the effective configuration as TOML and exits.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn overrides(&self) -> Result<Vec<Override>, ConfigError> {
        let mut out = Vec::new();
        let named = [
            ("data_dir", "--data-dir", &self.data_dir),
            ("listen", "--listen", &self.listen),
            ("metrics_listen", "--metrics-listen", &self.metrics_listen),
            ("log.format", "--log-format", &self.log_format),
            ("log.filter", "--log-filter", &self.log_filter),
        ];
        for (key, flag, value) in named {
            if let Some(value) = value {
                out.push(Override {
                    key: key.into(),
                    value: value.clone(),
                    origin: format!("flag {flag}"),
                });
            }
        }
        if self.insecure {
            out.push(Override {
                key: "auth.insecure".into(),
                value: "true".into(),
                origin: "flag --insecure".into(),
            });
        }
        for s in &self.set {
            let Some((key, value)) = s.split_once('=') else {
                return Err(ConfigError::Invalid {
                    key: s.clone(),
                    origin: "flag --set".into(),
                    reason: "expected KEY=VALUE".into(),
                });
            };
            out.push(Override {
                key: key.trim().into(),
                value: value.into(),
                origin: "flag --set".into(),
            });
        }
        Ok(out)
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args = Args::parse();
    let config = match args
        .overrides()
        .and_then(|flags| Config::load(args.config.as_deref(), utf8_env(), &flags))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runneld: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "runneld failed");
            eprintln!("runneld: {e:#}");
            // A config value found unusable once read (a TLS file) is a configuration error.
            let config = matches!(
                e.downcast_ref::<runnel_broker::error::Error>(),
                Some(runnel_broker::error::Error::Config { .. })
            );
            if config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The environment's UTF-8 variables (a config value is never anything else; others are
/// skipped rather than aborting as `std::env::vars` would).
fn utf8_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

fn init_tracing(config: &Config) {
    // validate() checked the filter's syntax; fall back to `info` if the subscriber disagrees.
    let filter = EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("runneld")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        // Handlers first: a signal that arrives while the broker starts is not lost.
        let shutdown = signal();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
        runnel_broker::run(config, listener, shutdown).await?;
        Ok(())
    });
    // Every log is closed by now; do not wait long for background file removal.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on the first of them.
fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the broker with SIGKILL");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "received shutdown signal");
    }
}

/// Asks glibc's malloc to keep freed memory for reuse, unless the operator tuned it through
/// its environment variables (`MALLOC_*_`, or `glibc.malloc.*` in `GLIBC_TUNABLES`).
///
/// Every produce request is received into a buffer of its own and every read into another,
/// up to a few MiB each, freed once written or sent. By default glibc serves these sizes
/// with fresh `mmap`s and returns them when freed, so their pages are faulted in and zeroed
/// again for every request: 300k page faults for 2 GB produced and read back. Allocations
/// below 32 MiB now come from malloc's heaps, which give memory back only once 64 MiB at
/// their top are free: 13k faults for the same run, and the resident size stays at the peak
/// working set (29-33 MB there instead of falling back to 23-26 MB). Figures and commands:
/// docs/benchmarks.md, "Malloc tunables".
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::vars_os().any(|(k, v)| {
            let k = k.to_string_lossy();
            (k == "GLIBC_TUNABLES" && v.to_string_lossy().contains("glibc.malloc."))
                || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if !tuned {
            // SAFETY: `mallopt` only sets two of malloc's tunables under malloc's own locks
            // and may be called at any time; a refused value leaves glibc's default.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            }
        }
    }
}
