//! The one cancellation signal of the broker.
//!
//! [`run`](crate::run) fires it when its shutdown future completes: every task that can wait
//! for long (subscriptions, produce streams, long polls, the accept loop, retention) selects
//! on [`Shutdown::wait`] and finishes its work. A deadline then forces what is left.

use tokio::sync::watch;

/// Fires the shutdown signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A handle to the shutdown signal; clone it freely.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal: the trigger and a first handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Fires the signal; every handle sees it from now on.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown begins (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger is gone, which only happens once the broker stopped.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}
