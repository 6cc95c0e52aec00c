//! The background flusher behind the `interval` durability policy.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;

use crate::log::Log;

struct Shared {
    logs: Mutex<Vec<Weak<Log>>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A thread that fsyncs the logs it watches once their unsynced data is older than their
/// `interval` policy allows. One flusher serves any number of logs; logs under `always` or
/// `never` are skipped. A log that is dropped is forgotten.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

impl Flusher {
    /// Starts the flusher thread, which checks its logs every `tick`.
    ///
    /// # Errors
    /// The OS error if the thread cannot be spawned.
    pub fn start(tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            logs: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("runnel-flusher".into())
            .spawn(move || run(&worker, tick))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a log to watch.
    pub fn watch(&self, log: &Arc<Log>) {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(log));
    }

    /// Stops the thread after its current round.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: &Shared, tick: Duration) {
    loop {
        {
            let stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            let (stop, _) = shared
                .wake
                .wait_timeout_while(stop, tick, |stop| !*stop)
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        let logs: Vec<Arc<Log>> = {
            let mut logs = shared.logs.lock().unwrap_or_else(|p| p.into_inner());
            logs.retain(|w| w.strong_count() > 0);
            logs.iter().filter_map(Weak::upgrade).collect()
        };
        let now = Instant::now();
        for log in logs {
            if log.has_failed() {
                continue;
            }
            if let Err(e) = log.flush_if_due(now) {
                error!(path = %log.dir().display(), error = %e, "background fsync failed");
            }
        }
    }
}
