//! Errors. [`Error`] is what can stop the broker ([`crate::run`]); [`RpcError`] is what a
//! client is told: a stable code (`docs/protocol.md`, "Errors") and a message. This module is
//! the one place where storage errors become [`RpcError`]s; each front end then turns an
//! [`RpcError`] into its own reply in one place (the gRPC services in
//! `services/status.rs`), or into an inline [`pb::Error`].

use std::path::PathBuf;

use runnel_proto::pb::{self, ErrorCode};
use runnel_storage::REMEMBERED_BATCHES;

/// Why the broker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid config key {key}: {reason}")]
    Config {
        /// The key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A file or directory of the data directory could not be used.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the broker was doing.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {} is in use by another runneld (lock file {})", data_dir.display(), lock.display())]
    Locked {
        /// The data directory.
        data_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// Broker metadata on disk (topic or producer registry) is unreadable.
    #[error("corrupt broker metadata {}: {reason}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A partition's log could not be opened.
    #[error("cannot open partition {topic}/{partition}: {source}")]
    Storage {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The storage error.
        #[source]
        source: runnel_storage::Error,
    },
    /// An internal log (committed offsets, producer ids) could not be opened or written.
    #[error("cannot open the internal log {}: {source}", dir.display())]
    InternalLog {
        /// The log's directory.
        dir: PathBuf,
        /// The storage error.
        #[source]
        source: runnel_storage::Error,
    },
    /// The partitions' logs were opened but their filesystem could not be synced.
    #[error("cannot open the partitions' logs: {0}")]
    Logs(#[source] runnel_storage::Error),

    /// The metrics exporter could not start.
    #[error("cannot start the metrics exporter on {addr} (metrics_listen): {reason}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The exporter's error.
        reason: String,
    },
    /// The Kafka listener could not bind its address.
    #[error("cannot listen for Kafka clients on {addr} (kafka.listen): {source}")]
    KafkaListen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// A background thread could not be started.
    #[error("cannot start {what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// An error to report to a client: a stable [`ErrorCode`] and a message naming the field,
/// the value and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The Runnel code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str_name())
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// A failed file operation on broker metadata: `DISK_FULL` when the disk is full,
    /// `INTERNAL` otherwise.
    pub(crate) fn io(op: &str, path: &std::path::Path, e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            RpcError::new(
                ErrorCode::DiskFull,
                format!("disk full: {op} {}", path.display()),
            )
        } else {
            RpcError::internal(format!("{op} {}: {e}", path.display()))
        }
    }
}

/// Where a storage error happened, to name it in the message.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: u32,
    /// The epoch of the batch at fault, if known (sequence errors name it).
    pub epoch: Option<i16>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_REQUEST` with a message naming the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `UNKNOWN_TOPIC`.
    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(
            ErrorCode::UnknownTopic,
            format!("topic {topic:?} does not exist"),
        )
    }

    /// `UNKNOWN_PARTITION`, naming the valid range.
    pub fn unknown_partition(topic: &str, partition: u32, count: u32) -> Self {
        Self::new(
            ErrorCode::UnknownPartition,
            format!(
                "partition {partition} of topic {topic:?} does not exist: the topic has partitions 0 to {}",
                count.saturating_sub(1)
            ),
        )
    }

    /// `BROKER_SHUTTING_DOWN`.
    pub fn shutting_down() -> Self {
        Self::new(ErrorCode::BrokerShuttingDown, "the broker is shutting down")
    }

    /// `BROKER_STARTING`: the partitions are still opening.
    pub fn starting() -> Self {
        Self::new(
            ErrorCode::BrokerStarting,
            "the broker is starting: its partitions are still opening; retry once health says SERVING",
        )
    }

    /// `LIMIT_EXCEEDED`.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Prefixes the message with the part of the request at fault, for example
    /// `partitions[0].batches[2]`.
    #[must_use]
    pub fn at(mut self, field: &str) -> Self {
        self.message = format!("{field}: {}", self.message);
        self
    }

    /// The client's view of a storage error.
    pub fn storage(e: &runnel_storage::Error, at: At<'_>) -> Self {
        use runnel_storage::Error as S;
        use runnel_storage::batch::Error as B;
        let At {
            topic,
            partition,
            epoch,
        } = at;
        let epoch_text = epoch.map(|e| format!(" epoch {e}")).unwrap_or_default();
        match e {
            S::Batch(B::BatchTooLarge { size, limit }) => Self::new(
                ErrorCode::BatchTooLarge,
                format!(
                    "batch of {size} bytes exceeds max_batch_bytes ({limit} bytes) of topic {topic:?}"
                ),
            ),
            S::Batch(B::UnsupportedVersion { .. }) => {
                Self::new(ErrorCode::UnsupportedBatchVersion, e.to_string())
            }
            // CRC mismatches, structural faults, and any fault a newer format adds.
            S::Batch(_) => Self::new(ErrorCode::CorruptBatch, e.to_string()),
            S::OutOfOrderSequence {
                producer_id,
                expected,
                received,
            } => Self::new(
                ErrorCode::OutOfOrderSequence,
                format!(
                    "producer {producer_id}{epoch_text} on {topic}/{partition}: expected sequence {expected}, got {received}"
                ),
            ),
            S::ProducerFenced {
                producer_id,
                epoch,
                current_epoch,
            } => Self::fenced(*producer_id, i32::from(*epoch), i32::from(*current_epoch)),
            S::UnknownProducer {
                producer_id,
                sequence,
            } => Self::new(
                ErrorCode::UnknownProducer,
                format!(
                    "producer {producer_id}{epoch_text} has no state on {topic}/{partition} and its sequence {sequence} is not 0"
                ),
            ),
            S::DuplicateSequence {
                producer_id,
                sequence,
            } => Self::new(
                ErrorCode::DuplicateSequence,
                format!(
                    "producer {producer_id} on {topic}/{partition}: sequence {sequence} was already written; only the last {REMEMBERED_BATCHES} batches' offsets are kept"
                ),
            ),
            S::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            } => Self::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {requested} is out of range for {topic}/{partition}: readable offsets are {log_start} to {log_end} (log start {log_start}, log end {log_end})"
                ),
            ),
            S::DiskFull { path, .. } => Self::new(
                ErrorCode::DiskFull,
                format!(
                    "disk full while writing {}; the append was rolled back",
                    path.display()
                ),
            ),
            S::LogFailed { .. } => Self::new(ErrorCode::LogFailed, e.to_string()),
            S::CorruptSegment { .. } => Self::new(ErrorCode::CorruptLog, e.to_string()),
            S::Closed { .. } => Self::shutting_down(),
            S::InvalidConfig { key, reason } => {
                Self::new(ErrorCode::InvalidConfig, format!("config.{key} {reason}"))
            }
            _ => Self::internal(format!("{topic}/{partition}: {e}")),
        }
    }

    /// `REMOTE_STORAGE_UNAVAILABLE`: offsets held only in the object store could not be read.
    pub fn remote_unavailable(offset: u64, at: At<'_>, reason: &str) -> Self {
        Self::new(
            ErrorCode::RemoteStorageUnavailable,
            format!(
                "offset {offset} of {}/{} is held in the object store, which did not answer: {reason}",
                at.topic, at.partition
            ),
        )
    }

    /// `PRODUCER_FENCED`.
    pub fn fenced(producer_id: i64, epoch: i32, current: i32) -> Self {
        Self::new(
            ErrorCode::ProducerFenced,
            format!(
                "producer {producer_id} epoch {epoch} is fenced: the current epoch is {current}"
            ),
        )
    }

    /// `UNKNOWN_GROUP`.
    pub fn unknown_group(group: &str) -> Self {
        Self::new(
            ErrorCode::UnknownGroup,
            format!("group {group:?} does not exist: it has no members and no committed offsets"),
        )
    }

    /// `UNKNOWN_MEMBER`, saying why the member is gone if known.
    pub fn unknown_member(group: &str, member: &str) -> Self {
        Self::new(
            ErrorCode::UnknownMember,
            format!(
                "member {member:?} is not a member of group {group:?}: it left, was removed after its session or rebalance timeout, or the broker restarted; join again"
            ),
        )
    }

    /// `GROUP_NOT_EMPTY`.
    pub fn group_not_empty(group: &str, members: usize, what: &str) -> Self {
        Self::new(
            ErrorCode::GroupNotEmpty,
            format!("group {group:?} has {members} active member(s); {what}"),
        )
    }

    /// The error as an inline `pb::Error`.
    pub fn to_pb(&self) -> pb::Error {
        pb::Error {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}
