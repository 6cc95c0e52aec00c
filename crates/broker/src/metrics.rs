//! Every metric the broker exports, registered in this one module, and the Prometheus
//! exporter on `metrics_listen`.
//!
//! Names follow `runnel_<noun>_<unit>[_total]` in base units (bytes, seconds). Labels are
//! bounded: `topic`, `partition`, `rpc`, `code` (a gRPC status code name) and `kind`; never
//! offsets or client ids. `docs/operations.md` lists them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;
use runnel_storage::{Observer, Repair, RepairKind};
use tonic::Code;

use crate::error::Error;

/// Records appended, per topic (duplicates of idempotent retries are not counted).
pub const RECORDS_IN: &str = "runnel_records_in_total";
/// Batch bytes appended, per topic.
pub const BYTES_IN: &str = "runnel_bytes_in_total";
/// Records sent to consumers by `Fetch` and `Subscribe`, per topic (whole batches).
pub const RECORDS_OUT: &str = "runnel_records_out_total";
/// Batch bytes sent to consumers, per topic.
pub const BYTES_OUT: &str = "runnel_bytes_out_total";
/// RPCs answered, per `rpc` and status `code`.
pub const RPC_REQUESTS: &str = "runnel_rpc_requests_total";
/// RPC latency, per `rpc` and `code`; for streams, the time until the stream ended.
pub const RPC_DURATION: &str = "runnel_rpc_duration_seconds";
/// Duration of each log fsync.
pub const FSYNC_DURATION: &str = "runnel_fsync_duration_seconds";
/// Log end offset, per topic and partition.
pub const LOG_END_OFFSET: &str = "runnel_partition_log_end_offset";
/// Log start offset, per topic and partition.
pub const LOG_START_OFFSET: &str = "runnel_partition_log_start_offset";
/// Bytes of segment files, per topic and partition.
pub const PARTITION_SIZE: &str = "runnel_partition_size_bytes";
/// Open client connections.
pub const CONNECTIONS: &str = "runnel_connections_active";
/// Open `Subscribe` streams.
pub const SUBSCRIPTIONS: &str = "runnel_subscriptions_active";
/// Repairs made by crash recovery when opening partitions, per `kind`.
pub const RECOVERY_REPAIRS: &str = "runnel_recovery_repairs_total";
/// Bytes deleted by retention, per topic.
pub const RETENTION_DELETED: &str = "runnel_retention_deleted_bytes_total";
/// Batch bytes of produce requests being appended.
pub const PRODUCE_IN_FLIGHT: &str = "runnel_produce_in_flight_bytes";
/// Requests refused or delayed past their wait by a broker limit, per `limit`.
pub const LIMIT_REJECTIONS: &str = "runnel_limit_rejections_total";
/// Topics.
pub const TOPICS: &str = "runnel_topics";
/// Partitions of all topics.
pub const PARTITIONS: &str = "runnel_partitions";
/// When the broker started, seconds since the Unix epoch.
pub const START_TIME: &str = "runnel_start_time_seconds";

/// Starts the Prometheus exporter on `addr` and installs it as the process's recorder, then
/// describes every metric. Must run before topics are opened: handles registered before a
/// recorder exists stay no-ops.
///
/// Returns the exporter task, to abort at shutdown.
///
/// # Errors
/// [`Error::Metrics`] if the address cannot be bound or a recorder is already installed (a
/// second broker in the same process: tests run brokers with metrics disabled).
pub fn install(addr: SocketAddr, buckets: &[f64]) -> Result<tokio::task::JoinHandle<()>, Error> {
    let err = |reason: String| Error::Metrics { addr, reason };
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(buckets)
        .map_err(|e| err(e.to_string()))?
        .build()
        .map_err(|e| err(e.to_string()))?;
    metrics::set_global_recorder(recorder).map_err(|e| err(e.to_string()))?;
    let task = tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics exporter stopped");
        }
    });
    describe();
    Ok(task)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_IN, Unit::Count, "Records appended, per topic.");
    describe_counter!(BYTES_IN, Unit::Bytes, "Batch bytes appended, per topic.");
    describe_counter!(
        RECORDS_OUT,
        Unit::Count,
        "Records sent to consumers, per topic."
    );
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Batch bytes sent to consumers, per topic."
    );
    describe_counter!(
        RPC_REQUESTS,
        Unit::Count,
        "RPCs answered, per rpc and status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "RPC latency (streams: until the stream ended), per rpc and status code."
    );
    describe_histogram!(FSYNC_DURATION, Unit::Seconds, "Duration of log fsyncs.");
    describe_gauge!(LOG_END_OFFSET, "Log end offset, per partition.");
    describe_gauge!(LOG_START_OFFSET, "Log start offset, per partition.");
    describe_gauge!(
        PARTITION_SIZE,
        Unit::Bytes,
        "Bytes of segment files, per partition."
    );
    describe_gauge!(CONNECTIONS, "Open client connections.");
    describe_gauge!(SUBSCRIPTIONS, "Open Subscribe streams.");
    describe_counter!(RECOVERY_REPAIRS, "Crash recovery repairs, per kind.");
    describe_counter!(
        RETENTION_DELETED,
        Unit::Bytes,
        "Bytes deleted by retention, per topic."
    );
    describe_gauge!(
        PRODUCE_IN_FLIGHT,
        Unit::Bytes,
        "Batch bytes of produce requests being appended."
    );
    describe_counter!(
        LIMIT_REJECTIONS,
        "Requests refused by a broker limit, per limit."
    );
    describe_gauge!(TOPICS, "Topics.");
    describe_gauge!(PARTITIONS, "Partitions of all topics.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Broker start time, Unix seconds."
    );
}

/// Per-topic counters, registered once when the topic is opened.
#[derive(Debug, Clone)]
pub struct TopicMetrics {
    /// [`RECORDS_IN`].
    pub records_in: Counter,
    /// [`BYTES_IN`].
    pub bytes_in: Counter,
    /// [`RECORDS_OUT`].
    pub records_out: Counter,
    /// [`BYTES_OUT`].
    pub bytes_out: Counter,
    /// [`RETENTION_DELETED`].
    pub retention_deleted: Counter,
}

impl TopicMetrics {
    /// Registers the counters of `topic`.
    pub fn new(topic: &str) -> Self {
        let t = topic.to_owned();
        TopicMetrics {
            records_in: counter!(RECORDS_IN, "topic" => t.clone()),
            bytes_in: counter!(BYTES_IN, "topic" => t.clone()),
            records_out: counter!(RECORDS_OUT, "topic" => t.clone()),
            bytes_out: counter!(BYTES_OUT, "topic" => t.clone()),
            retention_deleted: counter!(RETENTION_DELETED, "topic" => t),
        }
    }
}

/// Per-partition gauges, registered once when the partition is opened.
#[derive(Debug, Clone)]
pub struct PartitionMetrics {
    /// [`LOG_END_OFFSET`].
    pub end_offset: Gauge,
    /// [`LOG_START_OFFSET`].
    pub start_offset: Gauge,
    /// [`PARTITION_SIZE`].
    pub size: Gauge,
}

impl PartitionMetrics {
    /// Registers the gauges of one partition.
    pub fn new(topic: &str, partition: u32) -> Self {
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        PartitionMetrics {
            end_offset: gauge!(LOG_END_OFFSET, &labels),
            start_offset: gauge!(LOG_START_OFFSET, &labels),
            size: gauge!(PARTITION_SIZE, &labels),
        }
    }
}

/// Feeds storage events (fsyncs, recovery repairs) into metrics.
#[derive(Debug)]
pub struct StorageObserver {
    fsync: Histogram,
}

impl StorageObserver {
    /// A new observer, shared by every log.
    pub fn new() -> Arc<Self> {
        Arc::new(StorageObserver {
            fsync: histogram!(FSYNC_DURATION),
        })
    }
}

impl Observer for StorageObserver {
    fn on_fsync(&self, took: Duration) {
        self.fsync.record(took.as_secs_f64());
    }

    fn on_repair(&self, repair: &Repair) {
        let kind = match repair.kind {
            RepairKind::TruncatedTail => "truncated_tail",
            RepairKind::DeletedSegment => "deleted_segment",
            RepairKind::RebuiltIndex => "rebuilt_index",
            RepairKind::DeletedOrphan => "deleted_orphan",
            _ => "other",
        };
        counter!(RECOVERY_REPAIRS, "kind" => kind).increment(1);
    }
}

/// Counts one answered RPC and its latency.
pub fn rpc_done(rpc: &'static str, code: Code, started: Instant) {
    let code = code_name(code);
    counter!(RPC_REQUESTS, "rpc" => rpc, "code" => code).increment(1);
    histogram!(RPC_DURATION, "rpc" => rpc, "code" => code).record(started.elapsed().as_secs_f64());
}

/// Counts a request refused (or answered with an error) because of a limit.
pub fn limit_rejected(limit: &'static str) {
    counter!(LIMIT_REJECTIONS, "limit" => limit).increment(1);
}

/// A gauge without labels.
pub fn plain_gauge(name: &'static str) -> Gauge {
    gauge!(name)
}

/// The gRPC name of a status code, as a label value.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
