//! The broker's background loops: retention, group timeouts and group lag, copies to the
//! object store, each ending when the shutdown signal fires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::groups::{self, Groups};
use crate::shares;
use crate::shutdown::Shutdown;
use crate::topics::Topics;

/// The running background loops.
pub(crate) struct Background {
    retention: JoinHandle<()>,
    group_ticks: JoinHandle<()>,
    group_lag: JoinHandle<()>,
    share_ticks: JoinHandle<()>,
    dead_letters: JoinHandle<()>,
    uploads: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts every loop over the broker's state.
    pub(crate) fn spawn(broker: &Arc<Broker>, shutdown: &Shutdown) -> Self {
        let config = &broker.config;
        Background {
            retention: tokio::spawn(retention_loop(
                broker.topics.clone(),
                Duration::from_millis(config.storage.retention_check_interval_ms),
                shutdown.clone(),
            )),
            group_ticks: tokio::spawn(group_tick_loop(broker.groups.clone(), shutdown.clone())),
            share_ticks: tokio::spawn(share_tick_loop(broker.clone(), shutdown.clone())),
            dead_letters: tokio::spawn(broker.clone().dead_letter_loop()),
            uploads: config
                .remote_storage
                .enabled()
                .then(|| tokio::spawn(upload_loop(broker.clone(), shutdown.clone()))),
            group_lag: tokio::spawn(groups::lag::refresh_loop(
                broker.groups.clone(),
                Duration::from_millis(config.groups.lag_refresh_interval_ms),
                shutdown.clone(),
            )),
        }
    }

    /// Waits for every loop to end (they end once the shutdown signal fires).
    pub(crate) async fn join(self) {
        let _ = self.retention.await;
        let _ = self.group_ticks.await;
        let _ = self.group_lag.await;
        let _ = self.share_ticks.await;
        let _ = self.dead_letters.await;
        if let Some(uploads) = self.uploads {
            let _ = uploads.await;
        }
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

/// Expires share group locks and wakes readers of delayed records every [`shares::TICK`],
/// and refreshes the share group gauges every `groups.lag_refresh_interval_ms`, until
/// shutdown.
async fn share_tick_loop(broker: Arc<Broker>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(shares::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refresh = Duration::from_millis(broker.config.groups.lag_refresh_interval_ms);
    let mut refreshed = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            _ = tick.tick() => broker.shares.tick(crate::clock::now_ms()),
        }
        if refreshed.elapsed() >= refresh {
            refreshed = Instant::now();
            let topics = &broker.topics;
            let samples = broker.shares.samples(|(topic, partition)| {
                let p = topics
                    .get(topic)
                    .and_then(|t| t.partition(*partition))
                    .ok()?;
                (!p.is_deleted()).then(|| p.end_offset())
            });
            broker.groups.gauges.replace_shares(samples);
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

/// Copies sealed segments to the object store every `remote_storage.upload_interval_ms`,
/// `upload_concurrency` partitions at a time, until shutdown (tiered storage).
async fn upload_loop(broker: Arc<Broker>, shutdown: Shutdown) {
    use futures_util::StreamExt;
    let settings = &broker.config.remote_storage;
    let mut tick = tokio::time::interval(Duration::from_millis(settings.upload_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let concurrency = settings.upload_concurrency as usize;
    loop {
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let topics = broker.topics.clone();
        let Ok(jobs) = tokio::task::spawn_blocking(move || topics.upload_jobs()).await else {
            continue;
        };
        let passes = futures_util::stream::iter(jobs)
            .filter_map(|(p, retention)| async move { p.upload(retention) })
            .buffer_unordered(concurrency)
            .for_each(|_| async {});
        tokio::select! {
            biased;
            () = shutdown.wait() => return,
            () = passes => {}
        }
    }
}
