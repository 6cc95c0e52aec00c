//! Topic administration, client quotas and what the broker says about itself: create,
//! delete, list, describe and reconfigure topics, add partitions, set and list the quotas of
//! client ids, and the broker's version, uptime and disk.

use std::sync::Arc;

use runnel_proto::pb::{self, ErrorCode};

use super::Broker;
use crate::auth::acl::check_principal;
use crate::error::RpcError;
use crate::quotas::{Owner, Quota, Rates};
use crate::tasks::blocking;
use crate::topics::{self, remove_deleted};
use runnel_proto::check_client_id;

/// What the broker says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's version.
    pub version: &'static str,
    /// When the broker started, in milliseconds since the Unix epoch.
    pub start_time_ms: i64,
    /// How long it has run.
    pub uptime_ms: u64,
    /// Its data directory.
    pub data_dir: String,
    /// Bytes free for unprivileged users on the data directory's file system.
    pub disk_free_bytes: u64,
    /// The size of that file system.
    pub disk_total_bytes: u64,
}

/// A topic's config as it applies, and the fields set on the topic itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfigChange {
    /// The effective config.
    pub config: pb::TopicConfig,
    /// The names of the fields the topic overrides.
    pub overrides: Vec<String>,
}

impl Broker {
    /// Creates a topic and describes it.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`topics::Topics::create`].
    pub(crate) async fn create_topic(
        &self,
        name: String,
        partition_count: u32,
        config: Option<pb::TopicConfig>,
    ) -> Result<pb::TopicDescription, RpcError> {
        self.check_running()?;
        let topics = self.topics.clone();
        blocking(move || {
            let t = topics.create(&name, partition_count, config.as_ref())?;
            Ok(topics.describe(&t))
        })
        .await
    }

    /// Deletes a topic; its files are removed in the background (a restart finishes the job
    /// if this does not).
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`topics::Topics::delete`].
    pub(crate) async fn delete_topic(&self, name: String) -> Result<(), RpcError> {
        self.check_running()?;
        let topics = self.topics.clone();
        let trash = blocking(move || topics.delete(&name)).await?;
        tokio::task::spawn_blocking(move || remove_deleted(&trash));
        Ok(())
    }

    /// Every topic's name and partition count.
    pub(crate) fn list_topics(&self) -> Vec<pb::TopicListing> {
        self.topics
            .list()
            .iter()
            .map(|t| pb::TopicListing {
                topic: t.name.to_string(),
                partition_count: t.partition_count(),
            })
            .collect()
    }

    /// A topic's config and partitions.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`.
    pub(crate) fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription, RpcError> {
        self.topics.get(name).map(|t| self.topics.describe(&t))
    }

    /// Sets the fields of `set` and returns the fields named in `reset` to the broker's
    /// defaults, on every partition at once.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`topics::Topics::alter`].
    pub(crate) async fn alter_topic_config(
        &self,
        name: String,
        set: Option<pb::TopicConfig>,
        reset: Vec<String>,
    ) -> Result<TopicConfigChange, RpcError> {
        self.check_running()?;
        let topics = self.topics.clone();
        blocking(move || {
            let (_, overrides) = topics.alter(&name, set.as_ref(), &reset)?;
            Ok(TopicConfigChange {
                config: topics::to_pb(&overrides.effective(topics.defaults())),
                overrides: overrides.names(),
            })
        })
        .await
    }

    /// Grows a topic to `partition_count` partitions; returns the new count.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`topics::Topics::create_partitions`].
    pub(crate) async fn create_partitions(
        &self,
        name: String,
        partition_count: u32,
    ) -> Result<u32, RpcError> {
        self.check_running()?;
        let topics = self.topics.clone();
        blocking(move || topics.create_partitions(&name, partition_count)).await
    }

    /// The broker's version, start time, uptime and data directory's disk space.
    ///
    /// # Errors
    /// `INTERNAL` if the file system cannot be asked for its space.
    pub(crate) async fn broker_info(self: &Arc<Self>) -> Result<BrokerInfo, RpcError> {
        let dir = self.config.data_dir.clone();
        let st = blocking(move || {
            rustix::fs::statvfs(&dir)
                .map_err(|e| RpcError::internal(format!("statvfs {}: {e}", dir.display())))
        })
        .await?;
        Ok(BrokerInfo {
            version: env!("CARGO_PKG_VERSION"),
            start_time_ms: self.start_time_ms,
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            data_dir: self.config.data_dir.display().to_string(),
            disk_free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            disk_total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }

    /// The owner of the quotas a request names: `principal` if set (then `client_id` must be
    /// empty), else `client_id`.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a client id or principal out of bounds, or both given.
    pub(crate) fn quota_owner(client_id: String, principal: String) -> Result<Owner, RpcError> {
        if principal.is_empty() {
            check_client_id(client_id.as_bytes())
                .map_err(|why| RpcError::invalid(format!("client_id {why}")))?;
            return Ok(Owner::Client(client_id.into()));
        }
        if !client_id.is_empty() {
            return Err(RpcError::invalid(
                "client_id and principal are both set; set one",
            ));
        }
        check_principal(&principal).map_err(|why| RpcError::invalid(format!("principal {why}")))?;
        Ok(Owner::Principal(principal.into()))
    }

    /// Sets the quotas of `owner` to `rates`, replacing any it had; durable before it
    /// returns.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a rate out of range; `DISK_FULL` or `INTERNAL` if the quotas
    /// cannot be stored.
    pub(crate) async fn set_quota(
        self: &Arc<Self>,
        owner: Owner,
        rates: Rates,
    ) -> Result<(), RpcError> {
        for quota in [Quota::ProduceBytes, Quota::FetchBytes, Quota::Requests] {
            if let Some(rate) = rates.get(quota).filter(|r| *r > MAX_RATE) {
                return Err(RpcError::invalid(format!(
                    "rates.{}_per_sec {rate} is more than {MAX_RATE}",
                    quota.name()
                )));
            }
        }
        let quotas = self.quotas.clone();
        blocking(move || {
            quotas.set(&owner, Some(rates))?;
            tracing::info!(%owner, ?rates, "quotas set");
            Ok(())
        })
        .await
    }

    /// Removes the quotas of `owner`; durable before it returns.
    ///
    /// # Errors
    /// `UNKNOWN_QUOTA` if it had none; `DISK_FULL` or `INTERNAL` if the quotas cannot be
    /// stored.
    pub(crate) async fn delete_quota(self: &Arc<Self>, owner: Owner) -> Result<(), RpcError> {
        let quotas = self.quotas.clone();
        blocking(move || {
            if quotas.set(&owner, None)? {
                tracing::info!(%owner, "quotas deleted");
                Ok(())
            } else {
                Err(RpcError::new(
                    ErrorCode::UnknownQuota,
                    format!("{owner} has no quotas of its own"),
                ))
            }
        })
        .await
    }

    /// The default rates, and every owner with rates of its own: `(owner, rates set,
    /// effective rates)`, principals first, each kind sorted. Every field of the defaults and
    /// the effective rates is set.
    pub(crate) fn list_quotas(&self) -> (Rates, Vec<(Owner, Rates, Rates)>) {
        let q = &self.quotas;
        let defaults = q.effective(&Rates::default());
        let owners = q
            .overrides()
            .into_iter()
            .map(|(owner, set)| {
                let effective = q.effective(&set);
                (owner, set, effective)
            })
            .collect();
        (defaults, owners)
    }
}

/// The highest rate a quota may have (per second).
const MAX_RATE: u64 = 1 << 40;
