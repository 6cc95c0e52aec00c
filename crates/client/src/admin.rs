//! [`Admin`]: every administrative RPC of the broker, with typed arguments and results.
//!
//! Reads (list, describe, broker info, offsets) are retried on transport errors; changes
//! (create, delete, alter) are not, because a change whose answer was lost may have been
//! made: the caller decides (a retried `create_topic` may answer `TOPIC_EXISTS`).

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Transport;
use runnel_proto::pb::{
    self, admin_service_client::AdminServiceClient, group_service_client::GroupServiceClient,
};

use crate::connection::Connection;
use crate::consumer::flatten;
use crate::consumer::{CommittedOffset, TopicPartition, group_by_topic};
use crate::error::{ClientError, Result};

/// How often reads are tried again after a transport error.
pub(crate) const READ_RETRIES: u32 = 3;

/// When the broker fsyncs a topic's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every append is fsynced before it is answered.
    Always,
    /// A background flusher fsyncs data older than `flush_interval_ms`.
    Interval,
    /// Only sealed segments and shutdown are fsynced.
    Never,
}

impl Durability {
    fn to_pb(self) -> pb::DurabilityPolicy {
        match self {
            Self::Always => pb::DurabilityPolicy::Always,
            Self::Interval => pb::DurabilityPolicy::Interval,
            Self::Never => pb::DurabilityPolicy::Never,
        }
    }

    fn from_pb(v: i32) -> Option<Self> {
        match pb::DurabilityPolicy::try_from(v).ok()? {
            pb::DurabilityPolicy::Always => Some(Self::Always),
            pb::DurabilityPolicy::Interval => Some(Self::Interval),
            pb::DurabilityPolicy::Never => Some(Self::Never),
            pb::DurabilityPolicy::Unspecified => None,
        }
    }
}

/// A topic's configuration (`docs/protocol.md`, "Topic config"). Unset fields take the
/// broker's defaults on create and stay unchanged on alter; a description sets them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// How long data is kept, in ms (0: no time limit).
    pub retention_ms: Option<u64>,
    /// The most data kept per partition, in bytes (0: no limit).
    pub retention_bytes: Option<u64>,
    /// The size at which a segment is sealed, in bytes.
    pub segment_bytes: Option<u64>,
    /// The age at which a segment is sealed, in ms (0: no limit).
    pub segment_ms: Option<u64>,
    /// The largest batch a producer may send, in bytes.
    pub max_batch_bytes: Option<u32>,
    /// When the logs are fsynced.
    pub durability: Option<Durability>,
    /// The flush interval of [`Durability::Interval`], in ms.
    pub flush_interval_ms: Option<u64>,
    /// Tiered storage: copy sealed segments to the broker's object store, serve offsets no
    /// longer on local disk from there, and keep only the local retention on disk. A broker
    /// without an object store refuses it (`INVALID_CONFIG`).
    pub remote_storage: Option<bool>,
    /// With `remote_storage`: how long copied data stays on local disk, in ms (0: as long as
    /// `retention_ms`, which still bounds how long it is kept at all).
    pub local_retention_ms: Option<u64>,
    /// With `remote_storage`: the most copied data kept on local disk per partition, in bytes
    /// (0: as much as `retention_bytes`, which still bounds the partition's total).
    pub local_retention_bytes: Option<u64>,
}

impl TopicConfig {
    fn to_pb(&self) -> pb::TopicConfig {
        pb::TopicConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            max_batch_bytes: self.max_batch_bytes,
            durability: self.durability.map(|d| d.to_pb() as i32),
            flush_interval_ms: self.flush_interval_ms,
            remote_storage: self.remote_storage,
            local_retention_ms: self.local_retention_ms,
            local_retention_bytes: self.local_retention_bytes,
        }
    }

    fn from_pb(c: Option<pb::TopicConfig>) -> Self {
        let c = c.unwrap_or_default();
        Self {
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            max_batch_bytes: c.max_batch_bytes,
            durability: c.durability.and_then(Durability::from_pb),
            flush_interval_ms: c.flush_interval_ms,
            remote_storage: c.remote_storage,
            local_retention_ms: c.local_retention_ms,
            local_retention_bytes: c.local_retention_bytes,
        }
    }
}

/// A topic in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// The topic's name.
    pub name: String,
    /// Its number of partitions.
    pub partition_count: u32,
}

/// A topic's effective config and the state of its partitions.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    /// The topic's name.
    pub name: String,
    /// The number of partitions (numbered from 0).
    pub partition_count: u32,
    /// The effective config, every field set.
    pub config: TopicConfig,
    /// The config fields set on the topic itself (the others follow broker defaults).
    pub overrides: Vec<String>,
    /// One entry per partition, in order.
    pub partitions: Vec<PartitionInfo>,
}

/// The state of one partition's log: on local disk and, with tiered storage
/// ([`TopicConfig::remote_storage`]), in the broker's object store.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    /// The partition number.
    pub partition: u32,
    /// The first offset still stored, locally or remotely.
    pub log_start_offset: u64,
    /// The offset the next record will get.
    pub log_end_offset: u64,
    /// Bytes on local disk (segments and indexes).
    pub size_bytes: u64,
    /// Number of segments on local disk, the active one included.
    pub segment_count: u32,
    /// The first offset on local disk: `log_start_offset` unless the object store holds
    /// older offsets.
    pub local_log_start_offset: u64,
    /// The first offset in the object store; equal to `remote_log_end_offset` when it holds
    /// none.
    pub remote_log_start_offset: u64,
    /// One past the last offset in the object store.
    pub remote_log_end_offset: u64,
    /// Bytes of the segments in the object store.
    pub remote_size_bytes: u64,
    /// Segments in the object store.
    pub remote_segment_count: u32,
    /// Sealed local segments not yet copied to the object store: what a lost disk would
    /// lose.
    pub upload_lag_segments: u32,
    /// The bytes of those segments.
    pub upload_lag_bytes: u64,
    /// Set when the log refuses writes (`LOG_FAILED`); the figures are the last known.
    pub error: Option<ClientError>,
}

impl TopicDescription {
    fn from_pb(d: pb::TopicDescription) -> Self {
        Self {
            name: d.topic,
            partition_count: d.partition_count,
            config: TopicConfig::from_pb(d.config),
            overrides: d.config_overrides,
            partitions: d
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                    segment_count: p.segment_count,
                    // A broker without tiered storage leaves the field at 0: everything it
                    // stores is local, so the local start is the log start.
                    local_log_start_offset: p.local_log_start_offset.max(p.log_start_offset),
                    remote_log_start_offset: p.remote_log_start_offset,
                    remote_log_end_offset: p.remote_log_end_offset,
                    remote_size_bytes: p.remote_size_bytes,
                    remote_segment_count: p.remote_segment_count,
                    upload_lag_segments: p.upload_lag_segments,
                    upload_lag_bytes: p.upload_lag_bytes,
                    error: p.error.as_ref().map(ClientError::from_inline),
                })
                .collect(),
        }
    }
}

/// A topic's config after a change.
#[derive(Debug, Clone)]
pub struct AlteredConfig {
    /// The effective config, every field set.
    pub config: TopicConfig,
    /// The fields now set on the topic.
    pub overrides: Vec<String>,
}

/// The rates of a quota (`docs/operations.md`, "Quotas"): a client over one is slowed down,
/// never failed. `None` follows the broker's default; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaRates {
    /// Batch bytes produced per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Batch bytes fetched per second (`Fetch`, subscriptions, group consumers).
    pub fetch_bytes_per_sec: Option<u64>,
    /// Calls, and requests on a produce stream, per second.
    pub requests_per_sec: Option<u64>,
}

impl QuotaRates {
    fn to_pb(self) -> pb::QuotaRates {
        pb::QuotaRates {
            produce_bytes_per_sec: self.produce_bytes_per_sec,
            fetch_bytes_per_sec: self.fetch_bytes_per_sec,
            requests_per_sec: self.requests_per_sec,
        }
    }

    fn from_pb(r: pb::QuotaRates) -> Self {
        QuotaRates {
            produce_bytes_per_sec: r.produce_bytes_per_sec,
            fetch_bytes_per_sec: r.fetch_bytes_per_sec,
            requests_per_sec: r.requests_per_sec,
        }
    }
}

/// The broker's quotas ([`Admin::list_quotas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaListing {
    /// The rates of client ids without quotas of their own; every field set.
    pub defaults: QuotaRates,
    /// Every client id with quotas of its own, sorted by client id.
    pub clients: Vec<ClientQuota>,
}

/// The quotas of one client id, or of one principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientQuota {
    /// The client id; empty for a principal's quotas.
    pub client_id: String,
    /// The principal (`User:<name>`) whose quotas these are: every call it makes pays them,
    /// whatever client id it names. `None` for a client id's.
    pub principal: Option<String>,
    /// The rates set for it.
    pub rates: QuotaRates,
    /// The rates it gets: those set, the defaults for the rest; every field set.
    pub effective: QuotaRates,
}

/// Facts about the running broker.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    /// The broker's version.
    pub version: String,
    /// When the broker started, ms since the Unix epoch.
    pub start_time_ms: i64,
    /// How long it has been running.
    pub uptime: Duration,
    /// Its data directory.
    pub data_dir: String,
    /// Free bytes on the data directory's filesystem.
    pub disk_free_bytes: u64,
    /// Size of that filesystem in bytes.
    pub disk_total_bytes: u64,
}

/// A position to look up or start from in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The oldest record still stored (the log start).
    Earliest,
    /// The offset the next record will get (the log end).
    Latest,
    /// The first batch whose newest record timestamp is at or after this time (ms since the
    /// Unix epoch), or the log end if there is none.
    Timestamp(i64),
}

/// An offset found by [`Admin::list_offsets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// For a timestamp lookup that found a batch, that batch's newest record timestamp.
    pub timestamp_ms: Option<i64>,
}

/// The admin API. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), runnel_client::ClientError> {
/// use runnel_client::{Client, TopicConfig};
/// let admin = Client::connect("127.0.0.1:7171").await?.admin();
/// let topic = admin.create_topic("orders", 3, TopicConfig::default()).await?;
/// println!("{} has {} partitions", topic.name, topic.partition_count);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    conn: Arc<Connection>,
    client: AdminServiceClient<Transport>,
}

impl Admin {
    pub(crate) fn new(conn: Arc<Connection>) -> Self {
        let client = AdminServiceClient::new(conn.channel.clone())
            .max_decoding_message_size(conn.config.max_message_bytes);
        Self { conn, client }
    }

    /// The connection, for the admin calls of other modules (share groups).
    pub(crate) fn conn(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Creates a topic with `partitions` partitions; unset config fields take the broker's
    /// defaults.
    ///
    /// # Errors
    /// `TOPIC_EXISTS`, `INVALID_TOPIC_NAME`, `INVALID_CONFIG`, `INVALID_PARTITION_COUNT` or
    /// `LIMIT_EXCEEDED` as [`ClientError::Broker`]; transport errors.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription> {
        let r = self
            .client
            .clone()
            .create_topic(pb::CreateTopicRequest {
                topic: topic.to_owned(),
                partition_count: partitions,
                config: Some(config.to_pb()),
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        r.topic
            .map(TopicDescription::from_pb)
            .ok_or_else(|| ClientError::Protocol("CreateTopic returned no description".into()))
    }

    /// Creates a topic unless it exists; returns whether it was created.
    ///
    /// # Errors
    /// As [`Admin::create_topic`], except `TOPIC_EXISTS`.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<bool> {
        match self.create_topic(topic, partitions, config).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(crate::ErrorCode::TopicExists) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic and its data.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`; transport errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.client
            .clone()
            .delete_topic(pb::DeleteTopicRequest {
                topic: topic.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// Every topic with its partition count, sorted by name.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                let req = pb::ListTopicsRequest {};
                async move { c.list_topics(req).await }
            })
            .await?
            .into_inner();
        Ok(r.topics
            .into_iter()
            .map(|t| TopicListing {
                name: t.topic,
                partition_count: t.partition_count,
            })
            .collect())
    }

    /// A topic's effective config and its partitions' offsets and sizes.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`; transport errors (after retries).
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                let req = pb::DescribeTopicRequest {
                    topic: topic.to_owned(),
                };
                async move { c.describe_topic(req).await }
            })
            .await?
            .into_inner();
        r.topic
            .map(TopicDescription::from_pb)
            .ok_or_else(|| ClientError::Protocol("DescribeTopic returned no description".into()))
    }

    /// Changes the fields set in `set` and returns the fields named in `reset` to the broker
    /// default; validated as a whole.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `INVALID_CONFIG`; transport errors.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: TopicConfig,
        reset: &[&str],
    ) -> Result<AlteredConfig> {
        let r = self
            .client
            .clone()
            .alter_topic_config(pb::AlterTopicConfigRequest {
                topic: topic.to_owned(),
                set: Some(set.to_pb()),
                reset: reset.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        Ok(AlteredConfig {
            config: TopicConfig::from_pb(r.config),
            overrides: r.config_overrides,
        })
    }

    /// Raises a topic's partition count to `total` (equal to the current count is a no-op).
    /// Returns the count now.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `INVALID_PARTITION_COUNT`; transport errors.
    pub async fn create_partitions(&self, topic: &str, total: u32) -> Result<u32> {
        let r = self
            .client
            .clone()
            .create_partitions(pb::CreatePartitionsRequest {
                topic: topic.to_owned(),
                partition_count: total,
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        Ok(r.partition_count)
    }

    /// The broker's version, uptime, data directory and disk space.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn broker_info(&self) -> Result<BrokerInfo> {
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                let req = pb::BrokerInfoRequest {};
                async move { c.broker_info(req).await }
            })
            .await?
            .into_inner();
        Ok(BrokerInfo {
            version: r.version,
            start_time_ms: r.start_time_ms,
            uptime: Duration::from_millis(r.uptime_ms),
            data_dir: r.data_dir,
            disk_free_bytes: r.disk_free_bytes,
            disk_total_bytes: r.disk_total_bytes,
        })
    }

    /// Whether the broker serves: the standard gRPC health check (`grpc.health.v1`) of the
    /// service `""`, which says `SERVING` once every partition is open and `NOT_SERVING`
    /// while the broker starts or stops.
    ///
    /// # Errors
    /// Transport errors (no retries: a probe answers for now).
    pub async fn serving(&self) -> Result<bool> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(self.conn.channel.clone());
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        Ok(r.status == ServingStatus::Serving as i32)
    }

    /// Sets the quotas of `client_id`, replacing any it had; rates left `None` follow the
    /// broker's defaults, 0 is no limit.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a client id or rate out of range; transport errors.
    pub async fn set_quota(&self, client_id: &str, rates: QuotaRates) -> Result<()> {
        self.client
            .clone()
            .set_quota(pb::SetQuotaRequest {
                client_id: client_id.to_owned(),
                rates: Some(rates.to_pb()),
                principal: String::new(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// Sets the quotas of `principal` (`User:<name>`), replacing any it had: every call it
    /// makes pays them, whatever client id it names, in place of its client ids' quotas.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a principal or rate out of range; transport errors.
    pub async fn set_principal_quota(&self, principal: &str, rates: QuotaRates) -> Result<()> {
        self.client
            .clone()
            .set_quota(pb::SetQuotaRequest {
                client_id: String::new(),
                rates: Some(rates.to_pb()),
                principal: principal.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// Removes the quotas of `principal`: its calls pay their client ids' quotas again.
    ///
    /// # Errors
    /// `UNKNOWN_QUOTA` if it had none; transport errors.
    pub async fn delete_principal_quota(&self, principal: &str) -> Result<()> {
        self.client
            .clone()
            .delete_quota(pb::DeleteQuotaRequest {
                client_id: String::new(),
                principal: principal.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// Removes the quotas of `client_id`: it follows the broker's defaults again.
    ///
    /// # Errors
    /// `UNKNOWN_QUOTA` if it had none; transport errors.
    pub async fn delete_quota(&self, client_id: &str) -> Result<()> {
        self.client
            .clone()
            .delete_quota(pb::DeleteQuotaRequest {
                client_id: client_id.to_owned(),
                principal: String::new(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// The broker's default quotas, and every client id with quotas of its own.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_quotas(&self) -> Result<QuotaListing> {
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                async move { c.list_quotas(pb::ListQuotasRequest {}).await }
            })
            .await?
            .into_inner();
        Ok(QuotaListing {
            defaults: QuotaRates::from_pb(r.defaults.unwrap_or_default()),
            clients: r
                .clients
                .into_iter()
                .map(|c| ClientQuota {
                    client_id: c.client_id,
                    principal: (!c.principal.is_empty()).then_some(c.principal),
                    rates: QuotaRates::from_pb(c.rates.unwrap_or_default()),
                    effective: QuotaRates::from_pb(c.effective.unwrap_or_default()),
                })
                .collect(),
        })
    }

    /// Looks up offsets: one result per query, in order, each its own success or error.
    ///
    /// # Errors
    /// The whole call fails for a malformed request or a transport error (after retries);
    /// a query's own problem (`UNKNOWN_TOPIC`, `UNKNOWN_PARTITION`) is in its result.
    pub async fn list_offsets(
        &self,
        queries: &[(&str, u32, OffsetSpec)],
    ) -> Result<Vec<Result<ListedOffset>>> {
        let request = pb::ListOffsetsRequest {
            queries: queries
                .iter()
                .map(|(topic, partition, spec)| pb::OffsetQuery {
                    topic: (*topic).to_owned(),
                    partition: *partition,
                    query: Some(match spec {
                        OffsetSpec::Earliest => {
                            pb::offset_query::Query::Boundary(pb::OffsetBoundary::Earliest as i32)
                        }
                        OffsetSpec::Latest => {
                            pb::offset_query::Query::Boundary(pb::OffsetBoundary::Latest as i32)
                        }
                        OffsetSpec::Timestamp(t) => pb::offset_query::Query::TimestampMs(*t),
                    }),
                })
                .collect(),
        };
        let consume =
            pb::consume_service_client::ConsumeServiceClient::new(self.conn.channel.clone());
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = consume.clone();
                let req = request.clone();
                async move { c.list_offsets(req).await }
            })
            .await?
            .into_inner();
        Ok(r.results
            .into_iter()
            .map(|q| match q.error {
                Some(e) => Err(ClientError::from_inline(&e)),
                None => Ok(ListedOffset {
                    topic: q.topic,
                    partition: q.partition,
                    offset: q.offset,
                    timestamp_ms: q.timestamp_ms,
                }),
            })
            .collect())
    }

    /// Looks up one partition's offset.
    ///
    /// # Errors
    /// As [`Admin::list_offsets`], with the query's own error.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<ListedOffset> {
        self.list_offsets(&[(topic, partition, spec)])
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| {
                Err(ClientError::Protocol(
                    "ListOffsets returned no result".into(),
                ))
            })
    }

    /// Every consumer group that has members or committed offsets, sorted by id.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let client = self.groups();
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = client.clone();
                let req = pb::ListGroupsRequest {};
                async move { c.list_groups(req).await }
            })
            .await?
            .into_inner();
        Ok(r.groups
            .into_iter()
            .map(|g| GroupListing {
                state: GroupState::from_pb(g.state),
                group: g.group,
                member_count: g.member_count,
            })
            .collect())
    }

    /// A group's state, members with their partitions, and per partition the committed
    /// offset and the lag.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`; transport errors (after retries).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let client = self.groups();
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = client.clone();
                let req = pb::DescribeGroupRequest {
                    group: group.to_owned(),
                };
                async move { c.describe_group(req).await }
            })
            .await?
            .into_inner();
        Ok(GroupDescription {
            group: r.group,
            state: GroupState::from_pb(r.state),
            generation: r.generation,
            assignor: r.assignor,
            members: r
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    host: m.host,
                    member_epoch: m.member_epoch,
                    topics: m.topics,
                    assigned: flatten(&m.assigned),
                    revoking: flatten(&m.revoking),
                    pending: flatten(&m.pending),
                    session_timeout: Duration::from_millis(m.session_timeout_ms),
                    connected: m.connected,
                })
                .collect(),
            partitions: r
                .partitions
                .into_iter()
                .map(|p| GroupPartition {
                    topic: p.topic,
                    partition: p.partition,
                    committed_offset: p.committed_offset,
                    metadata: p.metadata,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    lag: p.lag,
                    owner: (!p.owner.is_empty()).then_some(p.owner),
                })
                .collect(),
        })
    }

    /// Deletes a group's committed offsets.
    ///
    /// # Errors
    /// `GROUP_NOT_EMPTY` while it has members, `UNKNOWN_GROUP`; transport errors.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.groups()
            .delete_group(pb::DeleteGroupRequest {
                group: group.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// A group's committed offsets for `partitions` (all of the group's when empty).
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn fetch_committed(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<CommittedOffset>> {
        let client = self.groups();
        let request = pb::FetchOffsetsRequest {
            group: group.to_owned(),
            partitions: group_by_topic(partitions),
        };
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = client.clone();
                let req = request.clone();
                async move { c.fetch_offsets(req).await }
            })
            .await?
            .into_inner();
        Ok(r.offsets
            .into_iter()
            .map(CommittedOffset::from_pb)
            .collect())
    }

    /// Moves a group's committed offsets (see [`ResetOffsets`]); returns the plan, applied
    /// unless it was a dry run.
    ///
    /// # Errors
    /// `GROUP_NOT_EMPTY` while the group has members (unless forced), `UNKNOWN_TOPIC`,
    /// `INVALID_REQUEST`; transport errors.
    pub async fn reset_offsets(&self, reset: ResetOffsets) -> Result<Vec<OffsetResetPlan>> {
        let r = self
            .groups()
            .reset_offsets(reset.into_pb())
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        Ok(OffsetResetPlan::from_pb(r))
    }

    fn groups(&self) -> GroupServiceClient<Transport> {
        GroupServiceClient::new(self.conn.channel.clone())
            .max_decoding_message_size(self.conn.config.max_message_bytes)
    }
}

impl ResetOffsets {
    /// The request, for consumer groups and share groups alike.
    pub(crate) fn into_pb(self) -> pb::ResetOffsetsRequest {
        let target = match self.to {
            ResetTo::Earliest => {
                pb::reset_offsets_request::Target::Boundary(pb::OffsetBoundary::Earliest as i32)
            }
            ResetTo::Latest => {
                pb::reset_offsets_request::Target::Boundary(pb::OffsetBoundary::Latest as i32)
            }
            ResetTo::Offset(o) => pb::reset_offsets_request::Target::Offset(o),
            ResetTo::Timestamp(t) => pb::reset_offsets_request::Target::TimestampMs(t),
            ResetTo::ShiftBy(n) => pb::reset_offsets_request::Target::ShiftBy(n),
        };
        pb::ResetOffsetsRequest {
            group: self.group,
            topics: self
                .topics
                .into_iter()
                .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                .collect(),
            all_topics: self.all_topics,
            target: Some(target),
            dry_run: self.dry_run,
            force: self.force,
        }
    }
}

impl OffsetResetPlan {
    /// The plan of an answer.
    pub(crate) fn from_pb(r: pb::ResetOffsetsResponse) -> Vec<Self> {
        r.resets
            .into_iter()
            .map(|o| OffsetResetPlan {
                topic: o.topic,
                partition: o.partition,
                previous_offset: o.previous_offset,
                new_offset: o.new_offset,
            })
            .collect()
    }
}

/// A consumer group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members; the group exists through its committed offsets.
    Empty,
    /// Every member owns exactly what the assignor gave it.
    Stable,
    /// Partitions are moving between members.
    Reconciling,
    /// A state this client does not know.
    Unknown(i32),
}

impl GroupState {
    fn from_pb(v: i32) -> Self {
        match pb::GroupState::try_from(v) {
            Ok(pb::GroupState::Empty) => Self::Empty,
            Ok(pb::GroupState::Stable) => Self::Stable,
            Ok(pb::GroupState::Reconciling) => Self::Reconciling,
            _ => Self::Unknown(v),
        }
    }
}

/// A group in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Its number of members.
    pub member_count: u32,
}

/// A group's description.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// The generation (raised on every membership or subscription change).
    pub generation: u64,
    /// The assignment strategy (empty without members).
    pub assignor: String,
    /// The members, sorted by member id.
    pub members: Vec<GroupMember>,
    /// The partitions of the subscribed topics and those with committed offsets.
    pub partitions: Vec<GroupPartition>,
}

/// A member of a group.
#[derive(Debug, Clone)]
pub struct GroupMember {
    /// The member id.
    pub member_id: String,
    /// The static instance id, if any.
    pub instance_id: Option<String>,
    /// The client id the member gave.
    pub client_id: String,
    /// The member's address, `ip:port`.
    pub host: String,
    /// The member's epoch.
    pub member_epoch: u32,
    /// The topics it subscribes to.
    pub topics: Vec<String>,
    /// The partitions it owns and keeps.
    pub assigned: Vec<TopicPartition>,
    /// The partitions it owns but must release.
    pub revoking: Vec<TopicPartition>,
    /// The partitions it was given that another member has not released yet.
    pub pending: Vec<TopicPartition>,
    /// Its session timeout.
    pub session_timeout: Duration,
    /// False for a static member whose stream ended.
    pub connected: bool,
}

/// A partition as a group sees it.
#[derive(Debug, Clone)]
pub struct GroupPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset, if any.
    pub committed_offset: Option<u64>,
    /// The metadata stored with it.
    pub metadata: String,
    /// The log start offset.
    pub log_start_offset: u64,
    /// The log end offset.
    pub log_end_offset: u64,
    /// Records not yet consumed (unset without a committed offset).
    pub lag: Option<u64>,
    /// The member that owns the partition, if any.
    pub owner: Option<String>,
}

/// Where [`Admin::reset_offsets`] moves committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// A given offset (clamped to the log).
    Offset(u64),
    /// The first batch at or after a time (ms since the Unix epoch).
    Timestamp(i64),
    /// The committed offset plus this (negative moves back).
    ShiftBy(i64),
}

/// A request to move a group's committed offsets.
#[derive(Debug, Clone)]
pub struct ResetOffsets {
    /// The group id.
    pub group: String,
    /// Topics and partitions to move (an empty partition list means all of the topic).
    pub topics: Vec<(String, Vec<u32>)>,
    /// Move every partition the group has an offset for, instead of `topics`.
    pub all_topics: bool,
    /// Where to.
    pub to: ResetTo,
    /// Only compute the plan.
    pub dry_run: bool,
    /// Reset even while the group has members.
    pub force: bool,
}

/// One partition's offset reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetResetPlan {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset before, if any.
    pub previous_offset: Option<u64>,
    /// The committed offset after.
    pub new_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_config_round_trips_through_pb() {
        let config = TopicConfig {
            retention_ms: Some(30 * 86_400_000),
            retention_bytes: Some(0),
            segment_bytes: Some(1 << 30),
            segment_ms: Some(0),
            max_batch_bytes: Some(1 << 20),
            durability: Some(Durability::Interval),
            flush_interval_ms: Some(1_000),
            remote_storage: Some(true),
            local_retention_ms: Some(86_400_000),
            local_retention_bytes: Some(0),
        };
        let pb = config.to_pb();
        assert_eq!(pb.remote_storage, Some(true));
        assert_eq!(pb.local_retention_ms, Some(86_400_000));
        assert_eq!(pb.local_retention_bytes, Some(0));
        assert_eq!(TopicConfig::from_pb(Some(pb)), config);
        assert_eq!(TopicConfig::default().to_pb(), pb::TopicConfig::default());
    }

    #[test]
    fn partition_descriptions_carry_local_and_remote_figures() {
        let d = TopicDescription::from_pb(pb::TopicDescription {
            topic: "t".into(),
            partition_count: 2,
            partitions: vec![
                pb::PartitionDescription {
                    partition: 0,
                    log_start_offset: 100,
                    log_end_offset: 900,
                    size_bytes: 4096,
                    segment_count: 2,
                    local_log_start_offset: 600,
                    remote_log_start_offset: 100,
                    remote_log_end_offset: 700,
                    remote_size_bytes: 8192,
                    remote_segment_count: 3,
                    upload_lag_segments: 1,
                    upload_lag_bytes: 1024,
                    ..Default::default()
                },
                // A broker without tiered storage sends no local start.
                pb::PartitionDescription {
                    partition: 1,
                    log_start_offset: 50,
                    log_end_offset: 80,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let p = &d.partitions[0];
        assert_eq!(
            (
                p.log_start_offset,
                p.local_log_start_offset,
                p.log_end_offset
            ),
            (100, 600, 900)
        );
        assert_eq!(
            (p.remote_log_start_offset, p.remote_log_end_offset),
            (100, 700)
        );
        assert_eq!((p.remote_size_bytes, p.remote_segment_count), (8192, 3));
        assert_eq!((p.upload_lag_segments, p.upload_lag_bytes), (1, 1024));
        assert_eq!(d.partitions[1].local_log_start_offset, 50);
    }
}
