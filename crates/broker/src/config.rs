//! The broker's configuration: one typed tree, layered as defaults, then the TOML file, then
//! `RUNNEL_*` environment variables, then command-line flags.
//!
//! Every key has a default that works (`Config::default()`), and `config/runneld.toml` lists
//! every key with its default and meaning; `docs/configuration.md` adds the environment
//! variable and flag of each. A key `section.name` maps to the environment variable
//! `RUNNEL_SECTION_NAME` (upper case, dots become underscores), for example
//! `limits.max_topics` is `RUNNEL_LIMITS_MAX_TOPICS`.
//!
//! Loading works on the TOML tree of the defaults: the file and every override are merged into
//! it key by key, so an unknown key or a value of the wrong type is reported with its full key
//! and where it came from, before the tree is turned into [`Config`] and [`Config::validate`]
//! checks the ranges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The prefix of environment variables that set config keys.
pub const ENV_PREFIX: &str = "RUNNEL_";

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where topics, partitions and broker metadata are stored.
    pub data_dir: PathBuf,
    /// The gRPC listener address (used by `runneld`; `run` takes an already bound listener).
    pub listen: SocketAddr,
    /// The HTTP listener address: metrics (`GET /metrics`) and the web console (`/`).
    pub metrics_listen: SocketAddr,
    /// Logging.
    pub log: LogSettings,
    /// Metrics.
    pub metrics: MetricsSettings,
    /// The web console on the metrics port.
    pub console: ConsoleSettings,
    /// Config of topics that do not override a field (`TopicConfig` in the protocol).
    pub topic_defaults: TopicDefaults,
    /// Storage engine settings that are not per topic.
    pub storage: StorageSettings,
    /// Tiered storage: the object store that topics with `remote_storage` copy segments to.
    pub remote_storage: RemoteStorageSettings,
    /// Limits on what clients may ask of the broker.
    pub limits: Limits,
    /// Consumer groups: membership timeouts, offsets, lag metrics.
    pub groups: GroupSettings,
    /// Share groups: acquisition locks, redelivery, dead letters, limits.
    pub shares: ShareSettings,
    /// Default quotas of every client id, and how they are enforced.
    pub quotas: QuotaSettings,
    /// gRPC server connection settings.
    pub server: ServerSettings,
    /// TLS on the gRPC listener.
    pub tls: TlsSettings,
    /// The Kafka protocol listener.
    pub kafka: KafkaSettings,
    /// Authentication and authorization.
    pub auth: AuthSettings,
    /// Shutdown behaviour.
    pub shutdown: ShutdownSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7171)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 7172)),
            log: LogSettings::default(),
            metrics: MetricsSettings::default(),
            console: ConsoleSettings::default(),
            topic_defaults: TopicDefaults::default(),
            storage: StorageSettings::default(),
            remote_storage: RemoteStorageSettings::default(),
            limits: Limits::default(),
            groups: GroupSettings::default(),
            shares: ShareSettings::default(),
            quotas: QuotaSettings::default(),
            server: ServerSettings::default(),
            tls: TlsSettings::default(),
            kafka: KafkaSettings::default(),
            auth: AuthSettings::default(),
            shutdown: ShutdownSettings::default(),
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `RUST_LOG`-style filter, for example `info` or `info,runnel_storage=debug`.
    pub filter: String,
    /// The line format.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable text, one event per line.
    Human,
    /// One JSON object per line.
    Json,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Whether to serve metrics on `metrics_listen`.
    pub enabled: bool,
    /// Bucket upper bounds, in seconds, of every `*_seconds` histogram.
    pub duration_buckets_seconds: Vec<f64>,
    /// Whether partition and group gauges are labelled per partition; false keeps one
    /// series per topic (group lag summed) for brokers with many partitions.
    pub partition_labels: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            enabled: true,
            duration_buckets_seconds: vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ],
            partition_labels: true,
        }
    }
}

/// The `[console]` section: the web console served on the metrics port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Whether to serve the console (at `/` of `metrics_listen`, with metrics enabled).
    pub enabled: bool,
    /// Serve it also when `metrics_listen` is not a loopback address. The console can create
    /// and delete topics: without auth, anyone who reaches the port may (so auth or
    /// `auth.insecure` is required then).
    pub allow_remote: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            allow_remote: false,
        }
    }
}

impl ConsoleSettings {
    /// Whether the console is served on a metrics listener bound to `addr`.
    pub fn served_on(&self, addr: SocketAddr) -> bool {
        self.enabled && (self.allow_remote || addr.ip().is_loopback())
    }
}

/// The `[topic_defaults]` section: the value of each `TopicConfig` field for topics that do
/// not set it. Ranges are those of `docs/protocol.md`, "Topic config".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// How long data is kept, ms; 0 means no time limit.
    pub retention_ms: u64,
    /// Most bytes kept per partition; 0 means no size limit.
    pub retention_bytes: u64,
    /// Size at which a segment is sealed.
    pub segment_bytes: u64,
    /// Age at which a segment is sealed, ms; 0 means no age limit.
    pub segment_ms: u64,
    /// Largest batch accepted.
    pub max_batch_bytes: u32,
    /// When logs are fsynced.
    pub durability: DurabilitySetting,
    /// The flush interval of the `interval` policy, ms.
    pub flush_interval_ms: u64,
    /// Copy sealed segments to `[remote_storage]` and serve older offsets from there.
    pub remote_storage: bool,
    /// With `remote_storage`: how long copied data stays on local disk, ms; 0 means as long
    /// as `retention_ms`.
    pub local_retention_ms: u64,
    /// With `remote_storage`: most copied bytes kept on local disk per partition; 0 means as
    /// many as `retention_bytes`.
    pub local_retention_bytes: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_batch_bytes: 1 << 20,
            durability: DurabilitySetting::Interval,
            flush_interval_ms: 100,
            remote_storage: false,
            local_retention_ms: 0,
            local_retention_bytes: 0,
        }
    }
}

impl TopicDefaults {
    /// Checks an effective topic config against the ranges of `docs/protocol.md`.
    ///
    /// # Errors
    /// The first bad field and why, as `(field, reason)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let c = self;
        let max_segment = runnel_storage::MAX_SEGMENT_BYTES;
        if !(4096..=max_segment).contains(&c.segment_bytes) {
            return Err((
                "segment_bytes",
                format!("{} is outside [4096, {max_segment}]", c.segment_bytes),
            ));
        }
        if !(128..=16 << 20).contains(&c.max_batch_bytes) {
            return Err((
                "max_batch_bytes",
                format!("{} is outside [128, {}]", c.max_batch_bytes, 16 << 20),
            ));
        }
        if u64::from(c.max_batch_bytes) > c.segment_bytes {
            return Err((
                "max_batch_bytes",
                format!(
                    "{} is larger than segment_bytes ({})",
                    c.max_batch_bytes, c.segment_bytes
                ),
            ));
        }
        if c.flush_interval_ms == 0 {
            return Err(("flush_interval_ms", "0 is below 1".into()));
        }
        let max_ms = i64::MAX as u64;
        for (name, v) in [
            ("retention_ms", c.retention_ms),
            ("segment_ms", c.segment_ms),
            ("flush_interval_ms", c.flush_interval_ms),
            ("local_retention_ms", c.local_retention_ms),
        ] {
            if v > max_ms {
                return Err((name, format!("{v} is outside [0, {max_ms}]")));
            }
        }
        Ok(())
    }
}

/// The `[shares]` section: share groups (`docs/protocol.md`, "Share groups"). Each group may
/// override lock_ms, max_deliveries, backoff_ms and start (`AlterShareGroup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShareSettings {
    /// How long an acquisition lock lasts, ms.
    pub lock_ms: u64,
    /// Deliveries after which a released or expired record is dead-lettered (or archived).
    pub max_deliveries: u32,
    /// Redelivery delays, ms: the n-th after the n-th delivery, the last for later ones.
    pub backoff_ms: Vec<u64>,
    /// Where a group starts reading a partition it has not read before.
    pub start: ShareStartSetting,
    /// The longest redelivery delay a release, a backoff step or a lock may ask for, ms.
    pub max_delay_ms: u64,
    /// Records in flight (acquired, waiting for redelivery or for the dead-letter topic) per
    /// share partition; no fresh record is acquired beyond it.
    pub max_in_flight_records: u32,
    /// The most records one ShareFetch acquires.
    pub max_fetch_records: u32,
    /// The most acknowledgements one ShareFetch or ShareAcknowledge carries.
    pub max_acknowledgements: u32,
    /// Share groups.
    pub max_groups: u32,
    /// Size past which the share groups' internal log is compacted, bytes.
    pub compact_bytes: u64,
}

impl Default for ShareSettings {
    fn default() -> Self {
        ShareSettings {
            lock_ms: 30_000,
            max_deliveries: 5,
            backoff_ms: Vec::new(),
            start: ShareStartSetting::Latest,
            max_delay_ms: 86_400_000,
            max_in_flight_records: 2_000,
            max_fetch_records: 10_000,
            max_acknowledgements: 10_000,
            max_groups: 10_000,
            compact_bytes: 64 << 20,
        }
    }
}

/// Where a share group starts reading a partition it has not read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareStartSetting {
    /// The log start: every stored record.
    Earliest,
    /// The log end: records produced from then on (Kafka's default).
    Latest,
}

/// Most steps of a backoff schedule.
pub const MAX_BACKOFF_STEPS: usize = 32;

/// A durability policy as written in the config file and in topic metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// fsync before answering every append.
    Always,
    /// A background flusher fsyncs every `flush_interval_ms`.
    Interval,
    /// The OS writes back when it likes.
    Never,
}

/// The `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Preallocated size of each index file of an active segment.
    pub max_index_bytes: u32,
    /// Idempotent producers idle longer than this are forgotten by a partition, ms.
    pub producer_expiry_ms: u64,
    /// How often the background flusher checks logs under the `interval` policy, ms.
    pub flush_check_interval_ms: u64,
    /// How often retention runs over every partition, ms.
    pub retention_check_interval_ms: u64,
    /// After each fsync, drop from the page cache what lies more than this many bytes behind
    /// the end of each segment; 0 keeps everything (the kernel evicts as it sees fit).
    pub cache_window_bytes: u64,
    /// Threads that open the partitions' logs at start and close them at shutdown.
    pub log_threads: u32,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            index_interval_bytes: 4096,
            max_index_bytes: 10 << 20,
            producer_expiry_ms: 7 * 24 * 3600 * 1000,
            flush_check_interval_ms: 20,
            retention_check_interval_ms: 300_000,
            cache_window_bytes: 0,
            log_threads: 8,
        }
    }
}

/// The `[remote_storage]` section: the S3-compatible object store of tiered storage
/// (`docs/tiered-storage.md`). Off while `bucket` is empty; topics then cannot turn
/// `remote_storage` on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteStorageSettings {
    /// The bucket segments are copied to; empty turns tiered storage off.
    pub bucket: String,
    /// The store's URL, for example `http://127.0.0.1:8333`; empty for AWS S3 in `region`.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// The access key id; empty takes `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id: String,
    /// The secret access key, best given as `RUNNEL_REMOTE_STORAGE_SECRET_ACCESS_KEY`; empty
    /// takes `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_access_key: String,
    /// A prefix for every key Runnel writes, so that brokers or clusters can share a bucket.
    pub prefix: String,
    /// Bytes of remote reads (segment chunks and indexes) kept in memory.
    pub cache_bytes: u64,
    /// Bytes fetched by one ranged read of a remote segment.
    pub chunk_bytes: u64,
    /// How often partitions are checked for sealed segments to copy, ms.
    pub upload_interval_ms: u64,
    /// Partitions copied at once.
    pub upload_concurrency: u32,
    /// The first wait before retrying a failed copy, doubled per failure, ms.
    pub retry_min_ms: u64,
    /// The longest wait between retries, ms.
    pub retry_max_ms: u64,
    /// How long one request to the store may take, ms.
    pub request_timeout_ms: u64,
    /// Restore topics from the bucket at start when the data directory has no topics.
    pub restore: RestoreSetting,
}

impl Default for RemoteStorageSettings {
    fn default() -> Self {
        RemoteStorageSettings {
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            prefix: String::new(),
            cache_bytes: 256 << 20,
            chunk_bytes: 4 << 20,
            upload_interval_ms: 1_000,
            upload_concurrency: 4,
            retry_min_ms: 500,
            retry_max_ms: 30_000,
            request_timeout_ms: 30_000,
            restore: RestoreSetting::Auto,
        }
    }
}

/// The secret is never shown.
impl std::fmt::Debug for RemoteStorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorageSettings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &REDACTED)
            .field("prefix", &self.prefix)
            .field("cache_bytes", &self.cache_bytes)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("upload_interval_ms", &self.upload_interval_ms)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("retry_min_ms", &self.retry_min_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("restore", &self.restore)
            .finish()
    }
}

/// When a broker rebuilds its topics from the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreSetting {
    /// When the data directory holds no topic and the bucket holds some.
    Auto,
    /// Never: a broker with an empty data directory starts empty.
    Off,
}

impl RemoteStorageSettings {
    /// True when a bucket is configured.
    pub fn enabled(&self) -> bool {
        !self.bucket.is_empty()
    }

    /// `[remote_storage]`: an endpoint that is an http(s) URL, a prefix that makes keys, sizes
    /// and delays in range.
    fn check(&self) -> Result<(), Invalid> {
        let is_url = ["http://", "https://"]
            .iter()
            .any(|scheme| self.endpoint.starts_with(scheme));
        if !self.endpoint.is_empty() && !is_url {
            return Err((
                "remote_storage.endpoint".into(),
                format!("{:?} must be an http:// or https:// URL", self.endpoint),
            ));
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") {
            return Err((
                "remote_storage.prefix".into(),
                format!(
                    "{:?} must not start with '/' or hold an empty part",
                    self.prefix
                ),
            ));
        }
        in_ranges(&[
            (
                "remote_storage.cache_bytes",
                self.cache_bytes,
                1 << 20,
                1 << 40,
            ),
            (
                "remote_storage.chunk_bytes",
                self.chunk_bytes,
                64 << 10,
                64 << 20,
            ),
            (
                "remote_storage.upload_interval_ms",
                self.upload_interval_ms,
                10,
                3_600_000,
            ),
            (
                "remote_storage.upload_concurrency",
                u64::from(self.upload_concurrency),
                1,
                256,
            ),
            (
                "remote_storage.retry_min_ms",
                self.retry_min_ms,
                1,
                3_600_000,
            ),
            (
                "remote_storage.retry_max_ms",
                self.retry_max_ms,
                self.retry_min_ms,
                3_600_000,
            ),
            (
                "remote_storage.request_timeout_ms",
                self.request_timeout_ms,
                100,
                3_600_000,
            ),
        ])?;
        if self.chunk_bytes > self.cache_bytes {
            return Err((
                "remote_storage.chunk_bytes".into(),
                format!(
                    "{} is larger than remote_storage.cache_bytes ({})",
                    self.chunk_bytes, self.cache_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The `[limits]` section (`docs/protocol.md`, "Limits").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open client connections; more wait in the listen backlog.
    pub max_connections: u32,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest gRPC message accepted, and largest records section decompressed for a
    /// record-level read.
    pub max_request_bytes: u64,
    /// Topics.
    pub max_topics: u32,
    /// Partitions of one topic.
    pub max_partitions_per_topic: u32,
    /// Partitions of all topics together.
    pub max_partitions: u32,
    /// Longest `Fetch` long poll, ms.
    pub fetch_max_wait_ms: u32,
    /// Default and cap of `FetchRequest.max_bytes`.
    pub fetch_max_bytes: u32,
    /// Default and cap of `FetchPartition.max_bytes`.
    pub fetch_partition_max_bytes: u32,
    /// Entries in one `Fetch`, `ListOffsets` or many-partition `Subscribe`.
    pub fetch_max_partitions: u32,
    /// Default and cap of `SubscribeRequest.max_bytes`.
    pub subscribe_max_bytes: u32,
    /// Responses queued per subscription.
    pub subscribe_queue_depth: u32,
    /// Batch bytes all fetches and subscription streams together may hold read for their
    /// clients and not yet written to them.
    pub read_buffer_bytes: u64,
    /// Partitions being streamed, by `Subscribe` and `GroupService.Consume`.
    pub max_subscriptions: u32,
    /// Requests read but not answered per `ProduceStream`.
    pub produce_stream_max_in_flight: u32,
    /// Batch bytes read but not answered per `ProduceStream`.
    pub produce_stream_max_in_flight_bytes: u64,
    /// Batch bytes being appended, all produce requests together.
    pub produce_max_in_flight_bytes: u64,
    /// How long a produce request waits for room under `produce_max_in_flight_bytes`
    /// before it fails with `LIMIT_EXCEEDED`, ms.
    pub produce_in_flight_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_concurrent_streams: 1024,
            max_request_bytes: 64 << 20,
            max_topics: 10_000,
            max_partitions_per_topic: 1024,
            max_partitions: 4096,
            fetch_max_wait_ms: 30_000,
            fetch_max_bytes: 3 << 20,
            fetch_partition_max_bytes: 1 << 20,
            fetch_max_partitions: 1024,
            subscribe_max_bytes: 1 << 20,
            subscribe_queue_depth: 2,
            read_buffer_bytes: 256 << 20,
            max_subscriptions: 1024,
            produce_stream_max_in_flight: 64,
            produce_stream_max_in_flight_bytes: 64 << 20,
            produce_max_in_flight_bytes: 256 << 20,
            produce_in_flight_wait_ms: 5_000,
        }
    }
}

/// The `[groups]` section: consumer groups (`docs/protocol.md`, "Consumer groups").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSettings {
    /// Session timeout of members that ask for none, ms.
    pub session_timeout_ms: u64,
    /// Smallest session timeout a member may ask for, ms.
    pub min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for, ms.
    pub max_session_timeout_ms: u64,
    /// How often members heartbeat, ms (at most a third of their session timeout).
    pub heartbeat_interval_ms: u64,
    /// How long a member has to release revoked partitions before it is removed, ms.
    pub rebalance_timeout_ms: u64,
    /// How often the lag gauges are recomputed, ms.
    pub lag_refresh_interval_ms: u64,
    /// Groups (with members or committed offsets).
    pub max_groups: u32,
    /// Members of one group.
    pub max_members_per_group: u32,
    /// Largest metadata string stored with a committed offset, bytes.
    pub offset_metadata_max_bytes: u32,
    /// Size past which the committed offsets' internal log is compacted, bytes; a quarter of
    /// it is the log's segment size and the largest commit.
    pub offsets_compact_bytes: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            session_timeout_ms: 45_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            heartbeat_interval_ms: 3_000,
            rebalance_timeout_ms: 60_000,
            lag_refresh_interval_ms: 10_000,
            max_groups: 10_000,
            max_members_per_group: 1_000,
            offset_metadata_max_bytes: 4_096,
            offsets_compact_bytes: 64 << 20,
        }
    }
}

/// The `[quotas]` section: the rates of client ids without an override of their own
/// (`runnel quota set`), and how they are enforced (`docs/operations.md`, "Quotas").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    /// Batch bytes each client id may produce per second; 0 is no limit.
    pub produce_bytes_per_sec: u64,
    /// Batch bytes each client id may be sent per second by fetches and subscriptions; 0 is
    /// no limit.
    pub fetch_bytes_per_sec: u64,
    /// Calls, and requests on a `ProduceStream`, each client id may make per second; 0 is no
    /// limit.
    pub requests_per_sec: u64,
    /// How much of its rate a client may use at once before answers wait, ms.
    pub burst_ms: u64,
    /// The longest one answer waits, ms; a client further in debt pays the rest with its
    /// next requests.
    pub max_throttle_ms: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            produce_bytes_per_sec: 0,
            fetch_bytes_per_sec: 0,
            requests_per_sec: 0,
            burst_ms: 1_000,
            max_throttle_ms: 10_000,
        }
    }
}

/// The `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// How often the broker sends an HTTP/2 PING on an idle connection, ms; 0 turns it off.
    pub http2_keepalive_interval_ms: u64,
    /// How long the broker waits for the PING's answer before closing the connection, ms.
    pub http2_keepalive_timeout_ms: u64,
    /// The HTTP/2 receive window of each stream, bytes: how much a producer may send on one
    /// stream before the broker has read it.
    pub http2_stream_window_bytes: u32,
    /// The HTTP/2 receive window of each connection, all its streams together, bytes.
    pub http2_connection_window_bytes: u32,
    /// The largest HTTP/2 frame the broker accepts, bytes (announced to clients, which then
    /// send large batches in fewer frames).
    pub http2_max_frame_bytes: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 20_000,
            http2_stream_window_bytes: 4 << 20,
            http2_connection_window_bytes: 8 << 20,
            http2_max_frame_bytes: 1 << 20,
        }
    }
}

/// The `[tls]` section: TLS on the gRPC listener. Empty paths leave it plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM; setting it turns TLS on (with `key_file`).
    pub cert_file: String,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// CA certificates, PEM: when set, every client must present a certificate they signed
    /// (mutual TLS).
    pub client_ca_file: String,
    /// Serve the HTTP port (metrics, console) over TLS too, with the same files.
    pub metrics: bool,
}

impl TlsSettings {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// `[tls]`: a certificate and a key together, and a client CA only with them.
    fn check(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, why: &str| Err((format!("tls.{key}"), why.to_owned()));
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (false, true) => invalid("key_file", "is required with tls.cert_file"),
            (true, false) => invalid("cert_file", "is required with tls.key_file"),
            (true, true) if !self.client_ca_file.is_empty() => invalid(
                "client_ca_file",
                "needs TLS: set tls.cert_file and tls.key_file too",
            ),
            (true, true) if self.metrics => invalid(
                "metrics",
                "needs TLS: set tls.cert_file and tls.key_file too",
            ),
            _ => Ok(()),
        }
    }
}

/// The `[kafka]` section: the Kafka protocol listener (`docs/kafka.md`), off while `listen`
/// is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// The address Kafka clients connect to, for example `127.0.0.1:9192`; empty turns the
    /// listener off.
    pub listen: String,
    /// The `host:port` the broker tells Kafka clients to connect to (Metadata); empty for
    /// `listen` (which must then not be an unspecified address such as `0.0.0.0`).
    pub advertised_address: String,
    /// Create a topic a Kafka client asks Metadata about (with auto-creation allowed) when it
    /// does not exist, as Kafka's `auto.create.topics.enable`; off by default, as a misspelt
    /// topic name then becomes a topic.
    pub auto_create_topics: bool,
    /// The partition count of an automatically created topic.
    pub auto_create_partitions: u32,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            listen: String::new(),
            advertised_address: String::new(),
            auto_create_topics: false,
            auto_create_partitions: 1,
        }
    }
}

impl KafkaSettings {
    /// The listener's address, `None` when off.
    ///
    /// # Errors
    /// The reason `listen` is not an address.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|e| format!("{:?} is not an address (host:port): {e}", self.listen))
    }

    /// `[kafka]`: addresses that parse, one to advertise, and no exposure without
    /// authentication (with `auth.enabled` clients authenticate with SASL/PLAIN or a client
    /// certificate; without it the listener serves loopback only, unless `auth.insecure`).
    fn check(&self, config: &Config) -> Result<(), Invalid> {
        let Some(addr) = self
            .listen_addr()
            .map_err(|r| ("kafka.listen".to_owned(), r))?
        else {
            return Ok(());
        };
        let max = config.limits.max_partitions_per_topic;
        if self.auto_create_partitions == 0 || self.auto_create_partitions > max {
            return Err((
                "kafka.auto_create_partitions".into(),
                format!(
                    "{} is outside 1..={max} (limits.max_partitions_per_topic)",
                    self.auto_create_partitions
                ),
            ));
        }
        if !self.advertised_address.is_empty() {
            let valid = self
                .advertised_address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err((
                    "kafka.advertised_address".into(),
                    format!("{:?} is not host:port", self.advertised_address),
                ));
            }
        } else if addr.ip().is_unspecified() {
            return Err((
                "kafka.advertised_address".into(),
                format!(
                    "must be set when kafka.listen is {addr}: Kafka clients connect to the address the broker advertises"
                ),
            ));
        }
        if !config.auth.enabled && !addr.ip().is_loopback() && !config.auth.insecure {
            return Err((
                "kafka.listen".into(),
                format!(
                    "{addr} is not a loopback address and auth.enabled is off: anyone who \
                     reaches it could read, write and delete every topic; turn on auth.enabled \
                     (Kafka clients then authenticate with SASL/PLAIN), or set auth.insecure \
                     to serve it anyway"
                ),
            ));
        }
        Ok(())
    }
}

/// The `[auth]` section: who may call the broker, and what each caller may do
/// (`docs/security.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Require every call to authenticate (password, token or client certificate) and allow
    /// only what ACLs allow. Off, every call is allowed: only on a loopback address, unless
    /// `insecure`.
    pub enabled: bool,
    /// Principals allowed everything, whatever the ACLs (`User:<name>`).
    pub super_users: Vec<String>,
    /// The first administrator's name: created with `bootstrap_password` when auth is on and
    /// no user exists yet; always a super user.
    pub bootstrap_user: String,
    /// The first administrator's password (at least 8 bytes); best given as the environment
    /// variable `RUNNEL_AUTH_BOOTSTRAP_PASSWORD`. Read on a start with no user only.
    pub bootstrap_password: String,
    /// Serve without authentication on an address other than loopback. Anyone who reaches
    /// the port can then read, write and delete everything.
    pub insecure: bool,
    /// After a failed authentication, attempts by the same principal from the same address
    /// are spaced by this, doubled per further failure, ms.
    pub failure_delay_ms: u64,
    /// The most that spacing grows to, ms.
    pub max_failure_delay_ms: u64,
    /// Serve `GET /metrics` on the HTTP port without credentials while auth is on (a
    /// Prometheus that cannot send any); everything else there still needs them.
    pub anonymous_metrics: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: false,
            super_users: Vec::new(),
            bootstrap_user: "admin".into(),
            bootstrap_password: String::new(),
            insecure: false,
            failure_delay_ms: 250,
            max_failure_delay_ms: 10_000,
            anonymous_metrics: false,
        }
    }
}

/// The password is never shown.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("super_users", &self.super_users)
            .field("bootstrap_user", &self.bootstrap_user)
            .field("bootstrap_password", &REDACTED)
            .field("insecure", &self.insecure)
            .field("failure_delay_ms", &self.failure_delay_ms)
            .field("max_failure_delay_ms", &self.max_failure_delay_ms)
            .field("anonymous_metrics", &self.anonymous_metrics)
            .finish()
    }
}

/// What stands for a secret wherever the config is shown.
pub const REDACTED: &str = "<redacted>";

impl AuthSettings {
    /// `[auth]`: principals of the right form, a bootstrap password long enough, delays in
    /// order.
    fn check(&self) -> Result<(), Invalid> {
        for (i, p) in self.super_users.iter().enumerate() {
            if let Some(name) = p.strip_prefix("User:")
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                continue;
            }
            return Err((
                format!("auth.super_users[{i}]"),
                format!("{p:?} must be of the form User:<name>"),
            ));
        }
        if !self.bootstrap_password.is_empty() && self.bootstrap_password.len() < 8 {
            return Err((
                "auth.bootstrap_password".into(),
                "must be at least 8 bytes".into(),
            ));
        }
        in_ranges(&[
            ("auth.failure_delay_ms", self.failure_delay_ms, 1, 60_000),
            (
                "auth.max_failure_delay_ms",
                self.max_failure_delay_ms,
                self.failure_delay_ms,
                3_600_000,
            ),
        ])
    }
}

/// The `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long in-flight requests get to finish after a shutdown signal before the broker
    /// drops them, ms. Logs are closed (fsynced, marked clean) after that either way.
    pub deadline_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            deadline_ms: 30_000,
        }
    }
}

/// A configuration that could not be loaded or is out of range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key that the broker does not know.
    #[error("unknown config key {key} (from {origin})")]
    UnknownKey {
        /// The full key, for example `limits.max_topic`.
        key: String,
        /// Where it was set.
        origin: String,
    },
    /// A value of the wrong type or out of range.
    #[error("invalid config key {key} (from {origin}): {reason}")]
    Invalid {
        /// The full key, for example `limits.max_topics`.
        key: String,
        /// Where the value was set: `default`, the file, an environment variable or a flag.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A value for one key from outside the file: an environment variable or a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The full key, for example `limits.max_topics`.
    pub key: String,
    /// The value as text: TOML syntax, except that a string needs no quotes.
    pub value: String,
    /// Where it came from, for error messages (`environment variable RUNNEL_X`, `flag --x`).
    pub origin: String,
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then `env` (every
    /// `RUNNEL_*` variable that names a key, plus `RUST_LOG` for `log.filter`), then `flags`;
    /// then validates it.
    ///
    /// `RUNNEL_*` variables that name no key are ignored (other Runnel tools use the prefix
    /// too).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key, the value's origin and the problem.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[Override],
    ) -> Result<Config, ConfigError> {
        let mut tree = Tree::defaults();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string().trim().replace('\n', " "),
                    })?;
            tree.merge_file(table, &format!("config file {}", path.display()))?;
        }
        let env: HashMap<String, String> = env.into_iter().collect();
        if let Some(filter) = env.get("RUST_LOG") {
            tree.set(&Override {
                key: "log.filter".into(),
                value: filter.clone(),
                origin: "environment variable RUST_LOG".into(),
            })?;
        }
        for key in tree.leaf_keys() {
            let var = env_var_name(&key);
            if let Some(value) = env.get(&var) {
                tree.set(&Override {
                    key,
                    value: value.clone(),
                    origin: format!("environment variable {var}"),
                })?;
            }
        }
        for flag in flags {
            tree.set(flag)?;
        }
        tree.finish()
    }

    /// Checks every value against its range, section by section in file order.
    ///
    /// # Errors
    /// The first bad key and the reason, as `(key, reason)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.check_addresses()?;
        self.log.check()?;
        self.metrics.check()?;
        self.topic_defaults
            .validate()
            .map_err(|(k, r)| (format!("topic_defaults.{k}"), r))?;
        self.storage.check()?;
        self.remote_storage.check()?;
        self.limits.check()?;
        self.groups.check()?;
        self.shares.check()?;
        self.quotas.check()?;
        self.server.check()?;
        self.tls.check()?;
        self.kafka.check(self)?;
        self.auth.check()?;
        self.check_exposure()?;
        self.shutdown.check()
    }

    /// The top-level keys: a data directory, and a metrics address apart from the gRPC one.
    fn check_addresses(&self) -> Result<(), Invalid> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir".into(), "must not be empty".into()));
        }
        if self.metrics.enabled && self.metrics_listen == self.listen && self.listen.port() != 0 {
            return Err((
                "metrics_listen".into(),
                format!("{} is also the gRPC listen address", self.metrics_listen),
            ));
        }
        Ok(())
    }

    /// Without authentication, the broker is open to whoever reaches it: allowed on a loopback
    /// address only (the gRPC listener, and the console when served to other hosts), unless
    /// `auth.insecure`.
    fn check_exposure(&self) -> Result<(), Invalid> {
        if self.auth.enabled || self.auth.insecure {
            return Ok(());
        }
        let open = |key: &str, addr: SocketAddr| {
            Err((
                key.to_owned(),
                format!(
                    "{addr} is not a loopback address and auth.enabled is false: anyone who \
                     reaches it could read, write and delete every topic; turn on \
                     auth.enabled (docs/security.md), or set auth.insecure (--insecure) to \
                     serve without authentication anyway"
                ),
            ))
        };
        if !self.listen.ip().is_loopback() {
            return open("listen", self.listen);
        }
        if self.metrics.enabled
            && self.console.enabled
            && self.console.allow_remote
            && !self.metrics_listen.ip().is_loopback()
        {
            return open("metrics_listen", self.metrics_listen);
        }
        Ok(())
    }

    /// The shutdown deadline.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown.deadline_ms)
    }

    /// Every key of the tree, dotted, in file order (for docs and tests).
    pub fn keys() -> Vec<String> {
        Tree::defaults().leaf_keys()
    }

    /// The configuration as TOML text, secrets shown as [`REDACTED`].
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.bootstrap_password.is_empty() {
            REDACTED.clone_into(&mut shown.auth.bootstrap_password);
        }
        if !shown.remote_storage.secret_access_key.is_empty() {
            REDACTED.clone_into(&mut shown.remote_storage.secret_access_key);
        }
        // Every field serializes (no maps with non-string keys, no NaN defaults).
        toml::to_string(&shown).unwrap_or_default()
    }
}

/// A bad key and why, as `(key, reason)`.
type Invalid = (String, String);

/// Fails unless `min <= value <= max`.
fn range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Invalid> {
    if value < min || value > max {
        Err((key.into(), format!("{value} is outside [{min}, {max}]")))
    } else {
        Ok(())
    }
}

/// Fails at the first `(key, value, min, max)` whose value is outside `[min, max]`.
fn in_ranges(ranges: &[(&str, u64, u64, u64)]) -> Result<(), Invalid> {
    for &(key, value, min, max) in ranges {
        range(key, value, min, max)?;
    }
    Ok(())
}

impl LogSettings {
    /// `[log]`: a filter in `tracing`'s directive syntax.
    fn check(&self) -> Result<(), Invalid> {
        if let Err(e) = self.filter.parse::<FilterCheck>() {
            return Err(("log.filter".into(), e.0));
        }
        Ok(())
    }
}

impl MetricsSettings {
    /// `[metrics]`: histogram buckets that are positive and increasing.
    fn check(&self) -> Result<(), Invalid> {
        let buckets = &self.duration_buckets_seconds;
        if buckets.is_empty()
            || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
            || buckets.windows(2).any(|w| w[0] >= w[1])
        {
            return Err((
                "metrics.duration_buckets_seconds".into(),
                "must be a non-empty list of positive numbers in increasing order".into(),
            ));
        }
        Ok(())
    }
}

impl StorageSettings {
    /// `[storage]`: index, cache and interval ranges.
    fn check(&self) -> Result<(), Invalid> {
        let s = self;
        range(
            "storage.index_interval_bytes",
            s.index_interval_bytes,
            1,
            u32::MAX,
        )?;
        range("storage.max_index_bytes", s.max_index_bytes, 1024, 1 << 30)?;
        if s.cache_window_bytes != 0 {
            range(
                "storage.cache_window_bytes",
                s.cache_window_bytes,
                runnel_storage::MIN_CACHE_WINDOW,
                u64::MAX,
            )?;
        }
        range(
            "storage.producer_expiry_ms",
            s.producer_expiry_ms,
            1000,
            u64::MAX >> 1,
        )?;
        range(
            "storage.flush_check_interval_ms",
            s.flush_check_interval_ms,
            1,
            60_000,
        )?;
        range(
            "storage.retention_check_interval_ms",
            s.retention_check_interval_ms,
            10,
            u64::MAX >> 1,
        )?;
        range("storage.log_threads", s.log_threads, 1, 256)?;
        Ok(())
    }
}

impl Limits {
    /// `[limits]`: every limit within its range.
    fn check(&self) -> Result<(), Invalid> {
        let l = self;
        #[rustfmt::skip]
        let ranges = [
            ("limits.max_connections", u64::from(l.max_connections), 1, 1 << 20),
            ("limits.max_concurrent_streams", u64::from(l.max_concurrent_streams), 1, 1 << 20),
            ("limits.max_request_bytes", l.max_request_bytes, 64 << 10, 1 << 31),
            ("limits.max_topics", u64::from(l.max_topics), 1, 1 << 24),
            ("limits.max_partitions_per_topic", u64::from(l.max_partitions_per_topic), 1, 1 << 20),
            ("limits.max_partitions", u64::from(l.max_partitions), 1, 1 << 24),
            ("limits.fetch_max_wait_ms", u64::from(l.fetch_max_wait_ms), 0, 3_600_000),
            ("limits.fetch_max_bytes", u64::from(l.fetch_max_bytes), 1, 1 << 30),
            ("limits.fetch_partition_max_bytes", u64::from(l.fetch_partition_max_bytes), 1, 1 << 30),
            ("limits.fetch_max_partitions", u64::from(l.fetch_max_partitions), 1, 1 << 20),
            ("limits.subscribe_max_bytes", u64::from(l.subscribe_max_bytes), 1, 1 << 30),
            ("limits.subscribe_queue_depth", u64::from(l.subscribe_queue_depth), 1, 1024),
            ("limits.read_buffer_bytes", l.read_buffer_bytes, 1 << 20, 1 << 40),
            ("limits.max_subscriptions", u64::from(l.max_subscriptions), 1, 1 << 20),
            ("limits.produce_stream_max_in_flight", u64::from(l.produce_stream_max_in_flight), 1, 1 << 16),
            ("limits.produce_stream_max_in_flight_bytes", l.produce_stream_max_in_flight_bytes, 1, 1 << 40),
            ("limits.produce_max_in_flight_bytes", l.produce_max_in_flight_bytes, 1, 1 << 40),
            ("limits.produce_in_flight_wait_ms", l.produce_in_flight_wait_ms, 0, 3_600_000),
        ];
        in_ranges(&ranges)
    }
}

impl QuotaSettings {
    /// `[quotas]`: rates up to 2^40 per second, a burst and a throttle of at most an hour.
    fn check(&self) -> Result<(), Invalid> {
        let q = self;
        #[rustfmt::skip]
        let ranges = [
            ("quotas.produce_bytes_per_sec", q.produce_bytes_per_sec, 0, 1 << 40),
            ("quotas.fetch_bytes_per_sec", q.fetch_bytes_per_sec, 0, 1 << 40),
            ("quotas.requests_per_sec", q.requests_per_sec, 0, 1 << 40),
            ("quotas.burst_ms", q.burst_ms, 1, 3_600_000),
            ("quotas.max_throttle_ms", q.max_throttle_ms, 1, 3_600_000),
        ];
        in_ranges(&ranges)
    }
}

impl GroupSettings {
    /// `[groups]`: timeouts in order (min <= session <= max) and the group limits.
    fn check(&self) -> Result<(), Invalid> {
        let g = self;
        #[rustfmt::skip]
        let ranges = [
            ("groups.min_session_timeout_ms", g.min_session_timeout_ms, 100, 86_400_000),
            ("groups.max_session_timeout_ms", g.max_session_timeout_ms, g.min_session_timeout_ms, 86_400_000),
            ("groups.session_timeout_ms", g.session_timeout_ms, g.min_session_timeout_ms, g.max_session_timeout_ms),
            ("groups.heartbeat_interval_ms", g.heartbeat_interval_ms, 10, 3_600_000),
            ("groups.rebalance_timeout_ms", g.rebalance_timeout_ms, 100, 86_400_000),
            ("groups.lag_refresh_interval_ms", g.lag_refresh_interval_ms, 10, 3_600_000),
            ("groups.max_groups", u64::from(g.max_groups), 1, 1 << 24),
            ("groups.max_members_per_group", u64::from(g.max_members_per_group), 1, 1 << 20),
            ("groups.offset_metadata_max_bytes", u64::from(g.offset_metadata_max_bytes), 0, 1 << 20),
            ("groups.offsets_compact_bytes", g.offsets_compact_bytes, 4096, 1 << 40),
        ];
        in_ranges(&ranges)
    }
}

impl ShareSettings {
    /// `[shares]`: durations within `max_delay_ms`, limits at least 1.
    fn check(&self) -> Result<(), Invalid> {
        let s = self;
        #[rustfmt::skip]
        let ranges = [
            ("shares.max_delay_ms", s.max_delay_ms, 1, 30 * 86_400_000),
            ("shares.lock_ms", s.lock_ms, 100, s.max_delay_ms.max(100)),
            ("shares.max_deliveries", u64::from(s.max_deliveries), 1, 1000),
            ("shares.max_in_flight_records", u64::from(s.max_in_flight_records), 1, 1 << 20),
            ("shares.max_fetch_records", u64::from(s.max_fetch_records), 1, 1 << 20),
            ("shares.max_acknowledgements", u64::from(s.max_acknowledgements), 1, 1 << 20),
            ("shares.max_groups", u64::from(s.max_groups), 1, 1 << 24),
            ("shares.compact_bytes", s.compact_bytes, 4096, 1 << 40),
        ];
        in_ranges(&ranges)?;
        if s.backoff_ms.len() > MAX_BACKOFF_STEPS {
            return Err((
                "shares.backoff_ms".into(),
                format!(
                    "has {} steps, more than {MAX_BACKOFF_STEPS}",
                    s.backoff_ms.len()
                ),
            ));
        }
        if let Some(d) = s.backoff_ms.iter().find(|d| **d > s.max_delay_ms) {
            return Err((
                "shares.backoff_ms".into(),
                format!(
                    "step {d} is longer than shares.max_delay_ms ({})",
                    s.max_delay_ms
                ),
            ));
        }
        Ok(())
    }
}

impl ServerSettings {
    /// `[server]`: HTTP/2 keepalive, windows and frame size within what HTTP/2 allows.
    fn check(&self) -> Result<(), Invalid> {
        let s = self;
        #[rustfmt::skip]
        let ranges = [
            ("server.http2_keepalive_interval_ms", s.http2_keepalive_interval_ms, 0, 3_600_000),
            ("server.http2_keepalive_timeout_ms", s.http2_keepalive_timeout_ms, 1, 3_600_000),
            ("server.http2_stream_window_bytes", u64::from(s.http2_stream_window_bytes), 65_535, (1 << 31) - 1),
            ("server.http2_connection_window_bytes", u64::from(s.http2_connection_window_bytes), 65_535, (1 << 31) - 1),
            ("server.http2_max_frame_bytes", u64::from(s.http2_max_frame_bytes), 16_384, 16_777_215),
        ];
        in_ranges(&ranges)
    }
}

impl ShutdownSettings {
    /// `[shutdown]`: the deadline.
    fn check(&self) -> Result<(), Invalid> {
        range("shutdown.deadline_ms", self.deadline_ms, 0, 3_600_000)
    }
}

/// The environment variable for a dotted key.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Checks a tracing filter's syntax without depending on tracing-subscriber in the library:
/// directives are comma-separated `target=level`, `target` or `level`.
struct FilterCheck;

#[derive(Debug)]
struct FilterError(String);

impl std::str::FromStr for FilterCheck {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            // Span filters (`target[span{field=value}]=level`) are passed through unchecked.
            if directive.contains('[') {
                continue;
            }
            if let Some((_, level)) = directive.rsplit_once('=')
                && !LEVELS.contains(&level.to_ascii_lowercase().as_str())
            {
                return Err(FilterError(format!(
                    "directive {directive:?} has level {level:?}; expected one of {}",
                    LEVELS.join(", ")
                )));
            }
        }
        Ok(FilterCheck)
    }
}

/// The configuration as a TOML tree during loading, with the origin of every value.
struct Tree {
    root: toml::Table,
    origins: HashMap<String, String>,
}

impl Tree {
    fn defaults() -> Self {
        // The defaults are plain data that always serializes to a table.
        let root = toml::Table::try_from(Config::default()).unwrap_or_default();
        Tree {
            root,
            origins: HashMap::new(),
        }
    }

    fn leaf_keys(&self) -> Vec<String> {
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&key, t, out),
                    _ => out.push(key),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &self.root, &mut out);
        out
    }

    fn merge_file(&mut self, file: toml::Table, origin: &str) -> Result<(), ConfigError> {
        fn merge(
            prefix: &str,
            into: &mut toml::Table,
            from: toml::Table,
            origin: &str,
            origins: &mut HashMap<String, String>,
        ) -> Result<(), ConfigError> {
            for (k, v) in from {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let Some(slot) = into.get_mut(&k) else {
                    return Err(ConfigError::UnknownKey {
                        key,
                        origin: origin.into(),
                    });
                };
                match (slot, v) {
                    (toml::Value::Table(into), toml::Value::Table(from)) => {
                        merge(&key, into, from, origin, origins)?;
                    }
                    (slot, v) => {
                        let v = coerce(slot, v).map_err(|reason| ConfigError::Invalid {
                            key: key.clone(),
                            origin: origin.into(),
                            reason,
                        })?;
                        *slot = v;
                        origins.insert(key, origin.into());
                    }
                }
            }
            Ok(())
        }
        merge("", &mut self.root, file, origin, &mut self.origins)
    }

    fn set(&mut self, o: &Override) -> Result<(), ConfigError> {
        let unknown = || ConfigError::UnknownKey {
            key: o.key.clone(),
            origin: o.origin.clone(),
        };
        let mut parts = o.key.split('.').peekable();
        let mut table = &mut self.root;
        let slot = loop {
            let part = parts.next().ok_or_else(unknown)?;
            let value = table.get_mut(part).ok_or_else(unknown)?;
            if parts.peek().is_none() {
                break value;
            }
            table = value.as_table_mut().ok_or_else(unknown)?;
        };
        if slot.is_table() {
            return Err(unknown());
        }
        let parsed = if slot.is_str() {
            toml::Value::String(o.value.clone())
        } else {
            let doc: toml::Table =
                format!("v = {}", o.value)
                    .parse()
                    .map_err(|_| ConfigError::Invalid {
                        key: o.key.clone(),
                        origin: o.origin.clone(),
                        reason: format!("{:?} is not a {}", o.value, slot.type_str()),
                    })?;
            doc.get("v").cloned().ok_or_else(unknown)?
        };
        *slot = coerce(slot, parsed).map_err(|reason| ConfigError::Invalid {
            key: o.key.clone(),
            origin: o.origin.clone(),
            reason,
        })?;
        self.origins.insert(o.key.clone(), o.origin.clone());
        Ok(())
    }

    fn origin(&self, key: &str) -> String {
        self.origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| "default".into())
    }

    fn finish(self) -> Result<Config, ConfigError> {
        // Re-read the merged tree as text, so that a value that fails to convert (an address,
        // an enum name) comes with a span from which the key is recovered.
        let text = toml::to_string(&self.root).unwrap_or_default();
        let config: Config = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map(|span| key_at(&text, span.start))
                .unwrap_or_default();
            ConfigError::Invalid {
                origin: self.origin(&key),
                key,
                reason: e.message().to_string(),
            }
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                origin: self.origin(&key),
                key,
                reason,
            })?;
        Ok(config)
    }
}

/// Makes `v` fit the type of the default `slot`: integers are accepted where floats are
/// expected, every other mismatch is an error.
fn coerce(slot: &toml::Value, v: toml::Value) -> Result<toml::Value, String> {
    use toml::Value as V;
    match (slot, v) {
        (V::Float(_), V::Integer(i)) => Ok(V::Float(i as f64)),
        // A list of numbers takes integers as floats; other lists (of principals) are taken
        // as they are, and their items checked when the tree is read.
        (V::Array(defaults), V::Array(items))
            if defaults.iter().all(V::is_float) && !defaults.is_empty() =>
        {
            items
                .into_iter()
                .map(|item| match item {
                    V::Integer(i) => Ok(V::Float(i as f64)),
                    V::Float(f) => Ok(V::Float(f)),
                    other => Err(format!("expected numbers, found a {}", other.type_str())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(V::Array)
        }
        (V::Array(_), V::Array(items)) => Ok(V::Array(items)),
        (V::Integer(_), V::Integer(i)) if i < 0 => Err(format!("{i} is negative")),
        (slot, v) if slot.same_type(&v) => Ok(v),
        (slot, v) => Err(format!(
            "expected a {}, found a {}",
            slot.type_str(),
            v.type_str()
        )),
    }
}

/// The dotted key of the `key = value` line that contains byte `pos` of a TOML text written
/// by `toml::to_string` (plain `[section]` headers, one key per line).
fn key_at(text: &str, pos: usize) -> String {
    let before = &text[..pos.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let name = line.split('=').next().unwrap_or("").trim();
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if section.is_empty() {
        name.to_owned()
    } else {
        format!("{section}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flag(key: &str, value: &str) -> Override {
        Override {
            key: key.into(),
            value: value.into(),
            origin: format!("flag --{key}"),
        }
    }

    #[test]
    fn each_section_reports_its_first_bad_key() {
        let bad = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        Config::default().validate().unwrap();
        let e = bad(&|c| c.data_dir = PathBuf::new());
        assert_eq!(e, ("data_dir".into(), "must not be empty".into()));
        let e = bad(&|c| c.topic_defaults.flush_interval_ms = 0);
        assert_eq!(e.0, "topic_defaults.flush_interval_ms");
        let e = bad(&|c| c.storage.max_index_bytes = 1);
        assert_eq!(e.0, "storage.max_index_bytes");
        let e = bad(&|c| {
            c.limits.max_connections = 0;
            c.limits.max_topics = 0;
        });
        assert_eq!(
            e,
            (
                "limits.max_connections".into(),
                "0 is outside [1, 1048576]".into()
            )
        );
        let e = bad(&|c| c.groups.session_timeout_ms = c.groups.max_session_timeout_ms + 1);
        assert_eq!(e.0, "groups.session_timeout_ms");
        let e = bad(&|c| c.server.http2_max_frame_bytes = 100);
        assert_eq!(e.1, "100 is outside [16384, 16777215]");
        let e = bad(&|c| c.shutdown.deadline_ms = 3_600_001);
        assert_eq!(e.0, "shutdown.deadline_ms");
        // Sections are checked in file order: the earlier one is reported.
        let e = bad(&|c| {
            c.storage.max_index_bytes = 1;
            c.shutdown.deadline_ms = 3_600_001;
        });
        assert_eq!(e.0, "storage.max_index_bytes");
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_ones() {
        let c = Config::load(None, env(&[]), &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:7171");
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:7172");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runneld.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\n[limits]\nmax_topics = 5\nfetch_max_bytes = 100\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("RUNNEL_LIMITS_MAX_TOPICS", "6"),
                ("RUNNEL_DATA_DIR", "/from/env"),
                ("RUNNEL_SOMETHING_ELSE", "ignored"),
                ("RUST_LOG", "debug"),
            ]),
            &[flag("data_dir", "/from/flag")],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.limits.max_topics, 6);
        assert_eq!(c.limits.fetch_max_bytes, 100);
        assert_eq!(c.log.filter, "debug");
    }

    #[test]
    fn errors_name_the_key_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runneld.toml");
        std::fs::write(&path, "[limits]\nmax_topic = 5\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownKey { key, .. } if key == "limits.max_topic"),
            "{e}"
        );

        std::fs::write(&path, "[limits]\nmax_topics = \"many\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(
            e.to_string().contains("limits.max_topics") && e.to_string().contains("string"),
            "{e}"
        );

        // Environment and flag values out of range or malformed: each message names the key
        // (and the variable it came from) and the rule.
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(Pairs, Pairs, &[&str])] = &[
            (
                &[("RUNNEL_LISTEN", "nowhere")],
                &[],
                &["key listen", "RUNNEL_LISTEN"],
            ),
            (&[], &[("log.format", "xml")], &["log.format"]),
            (
                &[],
                &[("limits.max_topics", "0")],
                &["limits.max_topics", "outside [1,"],
            ),
            (
                &[("RUNNEL_TOPIC_DEFAULTS_SEGMENT_BYTES", "1000")],
                &[],
                &[
                    "topic_defaults.segment_bytes",
                    "RUNNEL_TOPIC_DEFAULTS_SEGMENT_BYTES",
                ],
            ),
            (
                &[],
                &[("storage.cache_window_bytes", "4096")],
                &["storage.cache_window_bytes", "outside [1048576,"],
            ),
            (&[("RUNNEL_LIMITS_MAX_TOPICS", "-3")], &[], &["negative"]),
            (&[], &[("log.filter", "info,foo=loud")], &["log.filter"]),
        ];
        for (vars, flags, wanted) in cases {
            let flags: Vec<_> = flags.iter().map(|(k, v)| flag(k, v)).collect();
            let msg = Config::load(None, env(vars), &flags)
                .unwrap_err()
                .to_string();
            for w in *wanted {
                assert!(msg.contains(w), "{vars:?} {flags:?}: {msg:?} lacks {w:?}");
            }
        }
        let ok = Config::load(
            None,
            env(&[("RUNNEL_STORAGE_CACHE_WINDOW_BYTES", "67108864")]),
            &[],
        )
        .unwrap();
        assert_eq!(ok.storage.cache_window_bytes, 64 << 20);

        let e = Config::load(None, env(&[]), &[flag("limits.nope", "1")]).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { .. }));
    }

    #[test]
    fn the_sample_file_lists_every_key_with_its_default() {
        let sample = include_str!("../../../config/runneld.toml");
        // Uncommenting every `# key = value` line must give exactly the defaults.
        let mut text = String::new();
        for line in sample.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("# ")
                && rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.starts_with(|c: char| c.is_ascii_lowercase())
                        && k.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
            {
                text.push_str(rest);
            } else if t.starts_with('[') {
                text.push_str(t);
            }
            text.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = Config::load(Some(&path), env(&[]), &[]).unwrap();
        assert_eq!(loaded, Config::default());
        let table: toml::Table = text.parse().unwrap();
        let mut listed = Vec::new();
        for (k, v) in &table {
            match v {
                toml::Value::Table(t) => listed.extend(t.keys().map(|n| format!("{k}.{n}"))),
                _ => listed.push(k.clone()),
            }
        }
        let mut all = Config::keys();
        all.sort();
        listed.sort();
        assert_eq!(listed, all, "config/runneld.toml must list every key");
    }

    #[test]
    fn the_configuration_doc_lists_every_key() {
        let doc = include_str!("../../../docs/configuration.md");
        for key in Config::keys() {
            assert!(doc.contains(&format!("| `{key}` |")), "{key} missing");
            assert!(
                doc.contains(&env_var_name(&key)),
                "{key}'s variable missing"
            );
        }
    }

    #[test]
    fn without_auth_only_loopback_is_served_unless_insecure() {
        let mut c = Config {
            listen: "0.0.0.0:7171".parse().unwrap(),
            ..Config::default()
        };
        let (key, why) = c.validate().unwrap_err();
        assert_eq!(key, "listen");
        assert!(
            why.contains("not a loopback address") && why.contains("--insecure"),
            "{why}"
        );
        c.auth.insecure = true;
        assert_eq!(c.validate(), Ok(()));
        c.auth.insecure = false;
        c.auth.enabled = true;
        assert_eq!(c.validate(), Ok(()));
        c.auth.super_users = vec!["alice".into()];
        assert_eq!(c.validate().unwrap_err().0, "auth.super_users[0]");
    }

    #[test]
    fn the_kafka_listener_serves_beyond_loopback_only_with_authentication() {
        let mut c = Config::default();
        c.kafka.listen = "10.1.2.3:9192".into();
        let (key, why) = c.validate().unwrap_err();
        assert_eq!(key, "kafka.listen");
        assert!(why.contains("SASL/PLAIN"), "{why}");
        c.auth.enabled = true;
        assert_eq!(c.validate(), Ok(()));
        c.auth.enabled = false;
        c.auth.insecure = true;
        assert_eq!(c.validate(), Ok(()));
        c.kafka.listen = "0.0.0.0:9192".into();
        assert_eq!(c.validate().unwrap_err().0, "kafka.advertised_address");
    }

    #[test]
    fn the_bootstrap_password_is_never_shown() {
        let mut c = Config::default();
        c.auth.bootstrap_password = "s3cret-passw0rd".into();
        assert!(!c.to_toml().contains("s3cret"), "{}", c.to_toml());
        assert!(c.to_toml().contains(REDACTED));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn env_var_names_follow_the_key() {
        assert_eq!(
            env_var_name("limits.max_topics"),
            "RUNNEL_LIMITS_MAX_TOPICS"
        );
        assert_eq!(env_var_name("data_dir"), "RUNNEL_DATA_DIR");
    }

    #[test]
    fn tls_needs_a_certificate_and_a_key_together_before_anything_else() {
        let tls = |cert: &str, key: &str, ca: &str, metrics: bool| TlsSettings {
            cert_file: cert.into(),
            key_file: key.into(),
            client_ca_file: ca.into(),
            metrics,
        };
        let key = |t: TlsSettings| t.check().err().map(|(k, _)| k);
        assert_eq!(key(tls("", "", "", false)), None);
        assert_eq!(key(tls("c", "k", "a", true)), None);
        assert_eq!(
            key(tls("c", "", "", false)).as_deref(),
            Some("tls.key_file")
        );
        assert_eq!(
            key(tls("", "k", "", false)).as_deref(),
            Some("tls.cert_file")
        );
        assert_eq!(
            key(tls("", "", "a", false)).as_deref(),
            Some("tls.client_ca_file")
        );
        assert_eq!(key(tls("", "", "", true)).as_deref(), Some("tls.metrics"));
    }

    #[test]
    fn the_console_is_served_on_loopback_only_unless_allowed_remote() {
        let c = ConsoleSettings::default();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(c.served_on(at("127.0.0.1:7172")));
        assert!(c.served_on(at("[::1]:7172")));
        assert!(!c.served_on(at("0.0.0.0:7172")));
        assert!(!c.served_on(at("10.1.2.3:7172")));
        let remote = ConsoleSettings {
            allow_remote: true,
            ..ConsoleSettings::default()
        };
        assert!(remote.served_on(at("0.0.0.0:7172")));
        let off = ConsoleSettings {
            enabled: false,
            ..ConsoleSettings::default()
        };
        assert!(!off.served_on(at("127.0.0.1:7172")));
    }
}
