//! The in-process harness: `runnel_broker::run` on `127.0.0.1:0` with a temporary data
//! directory, stopped through its shutdown future and restarted on the same directory.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use runnel_broker::Config;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Connection, PATIENCE};

/// A config for tests: the given data directory, metrics off, a short shutdown deadline.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    c.metrics.enabled = false;
    c.shutdown.deadline_ms = 5_000;
    c
}

/// A broker running in this process, on a tokio task of the test's runtime; its clients are
/// those of the [`Connection`] it dereferences to.
///
/// Dropping it begins shutdown without waiting; [`TestBroker::stop`] waits for `run` to
/// return cleanly.
pub struct TestBroker {
    connection: Connection,
    /// The config the broker runs with.
    pub config: Config,
    dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), runnel_broker::Error>>>,
}

impl TestBroker {
    /// Starts a broker with [`test_config`] on a new temporary data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a new temporary data directory after `tweak` adjusts the test
    /// config.
    ///
    /// # Panics
    ///
    /// If no temporary directory or local port is available.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::launch(config, Some(dir)).await
    }

    /// Starts a broker with `config` over a data directory an earlier one left (what
    /// [`TestBroker::stop`] returned), after a test changed what is in it.
    ///
    /// # Panics
    ///
    /// As [`TestBroker::start`].
    pub async fn launch(config: Config, dir: Option<TempDir>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(runnel_broker::run(config.clone(), listener, async move {
            let _ = stopped.await;
        }));
        let broker = TestBroker {
            connection: Connection::new(addr, PATIENCE),
            config,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        broker.wait_ready().await;
        broker
    }

    /// Waits until the broker's health check says `SERVING` (its partitions are open), or
    /// until `run` has returned (a test of a start that fails looks at its result).
    async fn wait_ready(&self) {
        let started = std::time::Instant::now();
        while !self.task.as_ref().is_none_or(JoinHandle::is_finished) {
            if self.is_serving().await {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the broker was not serving after {PATIENCE:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Begins shutdown without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the broker down and waits for `run` to return; returns its config and the
    /// temporary directory that holds its data.
    ///
    /// # Panics
    ///
    /// If `run` does not return within [`PATIENCE`], panics, or returns an error.
    pub async fn stop(mut self) -> (Config, Option<TempDir>) {
        self.signal_stop();
        let task = self
            .task
            .take()
            .expect("a TestBroker runs until stop consumes it");
        let result = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("run returns within the patience")
            .expect("run does not panic");
        result.expect("run ends cleanly");
        (self.config.clone(), self.dir.take())
    }

    /// Stops and starts again with the same config and data directory (on a new port).
    ///
    /// # Panics
    ///
    /// As [`TestBroker::stop`].
    pub async fn restart(self) -> Self {
        let (config, dir) = self.stop().await;
        Self::launch(config, dir).await
    }
}

impl Deref for TestBroker {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
