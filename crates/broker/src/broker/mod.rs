//! The broker's domain: [`Broker`], what every front end shares, and the operations they
//! call: produce ([`produce`]), consume ([`consume`]), topic administration ([`admin`]) and
//! consumer groups ([`groups`]).
//!
//! Nothing here knows a wire protocol's transport: requests and responses are plain values
//! (protocol messages where they are plain data), failures are [`RpcError`]s with a stable
//! code, and each front end (the gRPC services today) turns them into its own replies. Checks
//! every call must pass, such as [`Broker::check_running`], are made here, so that every front
//! end passes them.

pub mod admin;
pub mod budget;
pub mod consume;
pub mod dead_letters;
pub mod group_consume;
pub mod groups;
pub mod produce;
pub mod records;
pub mod share;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::RpcError;
use crate::groups::Groups;
use crate::producers::Producers;
use crate::quotas::Quotas;
use crate::shares::ShareGroups;
use crate::shutdown::Shutdown;
use crate::topics::Topics;
use budget::{ProduceBudget, ReadAhead};

/// The broker's state, opened from the data directory.
#[derive(Debug)]
pub struct State {
    /// The topics and their partitions.
    pub topics: Arc<Topics>,
    /// Idempotent producer ids and epochs.
    pub producers: Producers,
    /// Consumer groups and their committed offsets.
    pub groups: Arc<Groups>,
    /// Share groups.
    pub shares: Arc<ShareGroups>,
}

/// What every front end shares: the configuration, the topics and their partitions, the
/// idempotent producers, the consumer groups, the shutdown signal, the broker-wide limits
/// and the quotas of client ids.
#[derive(Debug)]
pub struct Broker {
    /// The configuration the broker runs with.
    pub config: Config,
    /// The topics and their partitions.
    pub topics: Arc<Topics>,
    /// Idempotent producer ids and epochs.
    pub producers: Producers,
    /// Consumer groups and their committed offsets.
    pub groups: Arc<Groups>,
    /// Share groups and their records in flight.
    pub shares: Arc<ShareGroups>,
    /// The shutdown signal.
    pub shutdown: Shutdown,
    /// Produce batch bytes being appended (`limits.produce_max_in_flight_bytes`).
    pub(crate) produce_budget: ProduceBudget,
    /// Open subscriptions (`limits.max_subscriptions`).
    pub(crate) subscriptions: Arc<Semaphore>,
    /// The read buffer of fetches and subscriptions (`limits.read_buffer_bytes`).
    pub(crate) read_ahead: ReadAhead,
    /// The quotas of client ids.
    pub(crate) quotas: Arc<Quotas>,
    /// When the broker started.
    pub started: Instant,
    /// When the broker started, in milliseconds since the Unix epoch.
    pub start_time_ms: i64,
}

impl Broker {
    /// The broker over state already opened, with the limits of `config`.
    pub fn new(
        config: Config,
        state: State,
        shutdown: Shutdown,
        quotas: Arc<Quotas>,
        started: Instant,
        start_time_ms: i64,
    ) -> Self {
        let limits = &config.limits;
        Broker {
            produce_budget: ProduceBudget::new(
                limits.produce_max_in_flight_bytes,
                std::time::Duration::from_millis(limits.produce_in_flight_wait_ms),
            ),
            subscriptions: Arc::new(Semaphore::new(limits.max_subscriptions as usize)),
            read_ahead: ReadAhead::new(limits.read_buffer_bytes),
            quotas,
            topics: state.topics,
            producers: state.producers,
            groups: state.groups,
            shares: state.shares,
            shutdown,
            started,
            start_time_ms,
            config,
        }
    }

    /// Fails with `BROKER_SHUTTING_DOWN` once shutdown has begun.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`.
    pub fn check_running(&self) -> Result<(), RpcError> {
        if self.shutdown.is_triggered() {
            Err(RpcError::shutting_down())
        } else {
            Ok(())
        }
    }
}

/// A requested size capped by a broker limit; 0 means the limit.
pub(crate) fn capped(requested: u32, limit: u32) -> usize {
    if requested == 0 {
        limit as usize
    } else {
        requested.min(limit) as usize
    }
}
