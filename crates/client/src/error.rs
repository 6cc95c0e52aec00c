//! [`ClientError`], the one error type of the client, and [`ErrorCode`], the broker's stable
//! error codes as a Rust enum.
//!
//! The broker reports a failed RPC as a gRPC status whose `runnel-error-code` trailer holds
//! the Runnel code, and a failed part of a request (one partition of a produce) as an inline
//! `Error { code, message }`. Both become [`ClientError::Broker`] here, with the code, the
//! gRPC status and the broker's message, so an application can match on the code and
//! [`ClientError::is_retriable`] answers with the table of `docs/protocol.md`.

use std::sync::Arc;
use std::time::Duration;

use runnel_proto::{ERROR_CODE_METADATA_KEY, pb};

/// A source error shared between the records of a batch (errors are cloned to every record
/// of a failed batch, so sources are reference counted).
pub type SharedSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The broker's stable error codes (`runnel.v1.ErrorCode`), as listed in `docs/protocol.md`.
///
/// A code this client does not know is kept as [`ErrorCode::Unknown`] with its number: it is
/// treated by its gRPC status and as not retriable, as the protocol asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A broker bug or an unexpected condition.
    Internal,
    /// The request is malformed.
    InvalidRequest,
    /// The broker is shutting down; retry against the restarted broker.
    BrokerShuttingDown,
    /// The broker is starting and its partitions are still opening; retry shortly.
    BrokerStarting,
    /// A broker limit was reached (topics, partitions, subscriptions, request size...).
    LimitExceeded,
    /// The broker does not implement the method called, or a compressed request message.
    Unimplemented,
    /// The call's deadline passed before the broker answered.
    DeadlineExceeded,
    /// The topic does not exist.
    UnknownTopic,
    /// The topic has no partition with that number.
    UnknownPartition,
    /// The topic already exists.
    TopicExists,
    /// The topic name breaks the naming rule.
    InvalidTopicName,
    /// A topic config value is out of range, or a config name is unknown.
    InvalidConfig,
    /// A partition count is zero, too large, or lower than the current one.
    InvalidPartitionCount,
    /// The requested offset is outside the partition's log.
    OffsetOutOfRange,
    /// A produced batch is larger than the topic's `max_batch_bytes`.
    BatchTooLarge,
    /// A produced batch failed validation (CRC or structure).
    CorruptBatch,
    /// A produced batch has a format version the broker does not know.
    UnsupportedBatchVersion,
    /// An idempotent batch's sequence is not the next one expected.
    OutOfOrderSequence,
    /// Another instance re-initialised this producer id: this one must stop.
    ProducerFenced,
    /// The broker has no state for this producer id and epoch.
    UnknownProducer,
    /// The batch repeats a sequence written too long ago for its offsets to be known.
    DuplicateSequence,
    /// The broker's disk is full.
    DiskFull,
    /// The partition's log refuses writes after an I/O or fsync failure.
    LogFailed,
    /// Data stored on the broker failed its check when read.
    CorruptLog,
    /// Offsets held only in tiered storage could not be read from the object store.
    RemoteStorageUnavailable,
    /// The consumer group has neither members nor committed offsets.
    UnknownGroup,
    /// The group id (or static instance id) breaks the naming rule.
    InvalidGroupId,
    /// The member is no longer in the group (it left or timed out); it must join again.
    UnknownMember,
    /// The member does not own the partition at that epoch, or another instance with the same
    /// instance id replaced it.
    FencedMember,
    /// The operation needs a group without members.
    GroupNotEmpty,
    /// The client id has no quotas of its own.
    UnknownQuota,
    /// The call carried no credentials, or credentials the broker refused.
    Unauthenticated,
    /// No ACL allows the call (or one denies it).
    PermissionDenied,
    /// No user has that name.
    UnknownUser,
    /// A user with that name exists already.
    UserExists,
    /// No token has that id.
    UnknownToken,
    /// An acknowledgement names a record the member does not hold (never acquired, already
    /// acknowledged, lock expired, or another member's).
    InvalidRecordState,
    /// A code this client does not know (or `ERROR_CODE_UNSPECIFIED`), by number.
    Unknown(i32),
}

impl ErrorCode {
    /// The code for a number from the wire.
    pub fn from_i32(code: i32) -> Self {
        use pb::ErrorCode as P;
        match P::try_from(code) {
            Ok(P::Internal) => Self::Internal,
            Ok(P::InvalidRequest) => Self::InvalidRequest,
            Ok(P::BrokerShuttingDown) => Self::BrokerShuttingDown,
            Ok(P::BrokerStarting) => Self::BrokerStarting,
            Ok(P::LimitExceeded) => Self::LimitExceeded,
            Ok(P::Unimplemented) => Self::Unimplemented,
            Ok(P::DeadlineExceeded) => Self::DeadlineExceeded,
            Ok(P::UnknownTopic) => Self::UnknownTopic,
            Ok(P::UnknownPartition) => Self::UnknownPartition,
            Ok(P::TopicExists) => Self::TopicExists,
            Ok(P::InvalidTopicName) => Self::InvalidTopicName,
            Ok(P::InvalidConfig) => Self::InvalidConfig,
            Ok(P::InvalidPartitionCount) => Self::InvalidPartitionCount,
            Ok(P::OffsetOutOfRange) => Self::OffsetOutOfRange,
            Ok(P::BatchTooLarge) => Self::BatchTooLarge,
            Ok(P::CorruptBatch) => Self::CorruptBatch,
            Ok(P::UnsupportedBatchVersion) => Self::UnsupportedBatchVersion,
            Ok(P::OutOfOrderSequence) => Self::OutOfOrderSequence,
            Ok(P::ProducerFenced) => Self::ProducerFenced,
            Ok(P::UnknownProducer) => Self::UnknownProducer,
            Ok(P::DuplicateSequence) => Self::DuplicateSequence,
            Ok(P::DiskFull) => Self::DiskFull,
            Ok(P::LogFailed) => Self::LogFailed,
            Ok(P::CorruptLog) => Self::CorruptLog,
            Ok(P::RemoteStorageUnavailable) => Self::RemoteStorageUnavailable,
            Ok(P::UnknownGroup) => Self::UnknownGroup,
            Ok(P::InvalidGroupId) => Self::InvalidGroupId,
            Ok(P::UnknownMember) => Self::UnknownMember,
            Ok(P::FencedMember) => Self::FencedMember,
            Ok(P::GroupNotEmpty) => Self::GroupNotEmpty,
            Ok(P::UnknownQuota) => Self::UnknownQuota,
            Ok(P::Unauthenticated) => Self::Unauthenticated,
            Ok(P::PermissionDenied) => Self::PermissionDenied,
            Ok(P::UnknownUser) => Self::UnknownUser,
            Ok(P::UserExists) => Self::UserExists,
            Ok(P::UnknownToken) => Self::UnknownToken,
            Ok(P::InvalidRecordState) => Self::InvalidRecordState,
            // Unspecified and codes added after this client was built.
            _ => Self::Unknown(code),
        }
    }

    /// The number on the wire.
    pub fn as_i32(self) -> i32 {
        use pb::ErrorCode as P;
        let p = match self {
            Self::Internal => P::Internal,
            Self::InvalidRequest => P::InvalidRequest,
            Self::BrokerShuttingDown => P::BrokerShuttingDown,
            Self::BrokerStarting => P::BrokerStarting,
            Self::LimitExceeded => P::LimitExceeded,
            Self::Unimplemented => P::Unimplemented,
            Self::DeadlineExceeded => P::DeadlineExceeded,
            Self::UnknownTopic => P::UnknownTopic,
            Self::UnknownPartition => P::UnknownPartition,
            Self::TopicExists => P::TopicExists,
            Self::InvalidTopicName => P::InvalidTopicName,
            Self::InvalidConfig => P::InvalidConfig,
            Self::InvalidPartitionCount => P::InvalidPartitionCount,
            Self::OffsetOutOfRange => P::OffsetOutOfRange,
            Self::BatchTooLarge => P::BatchTooLarge,
            Self::CorruptBatch => P::CorruptBatch,
            Self::UnsupportedBatchVersion => P::UnsupportedBatchVersion,
            Self::OutOfOrderSequence => P::OutOfOrderSequence,
            Self::ProducerFenced => P::ProducerFenced,
            Self::UnknownProducer => P::UnknownProducer,
            Self::DuplicateSequence => P::DuplicateSequence,
            Self::DiskFull => P::DiskFull,
            Self::LogFailed => P::LogFailed,
            Self::CorruptLog => P::CorruptLog,
            Self::RemoteStorageUnavailable => P::RemoteStorageUnavailable,
            Self::UnknownGroup => P::UnknownGroup,
            Self::InvalidGroupId => P::InvalidGroupId,
            Self::UnknownMember => P::UnknownMember,
            Self::FencedMember => P::FencedMember,
            Self::GroupNotEmpty => P::GroupNotEmpty,
            Self::UnknownQuota => P::UnknownQuota,
            Self::Unauthenticated => P::Unauthenticated,
            Self::PermissionDenied => P::PermissionDenied,
            Self::UnknownUser => P::UnknownUser,
            Self::UserExists => P::UserExists,
            Self::UnknownToken => P::UnknownToken,
            Self::InvalidRecordState => P::InvalidRecordState,
            Self::Unknown(n) => return n,
        };
        p as i32
    }

    /// The gRPC status the broker pairs with this code (`docs/protocol.md`, "The error
    /// table"); used for inline errors, which carry no status of their own.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            Self::Internal | Self::Unknown(_) => C::Internal,
            Self::InvalidRequest
            | Self::InvalidTopicName
            | Self::InvalidConfig
            | Self::InvalidPartitionCount
            | Self::BatchTooLarge
            | Self::CorruptBatch
            | Self::UnsupportedBatchVersion
            | Self::InvalidGroupId => C::InvalidArgument,
            Self::BrokerShuttingDown
            | Self::BrokerStarting
            | Self::LogFailed
            | Self::RemoteStorageUnavailable => C::Unavailable,
            Self::LimitExceeded | Self::DiskFull => C::ResourceExhausted,
            Self::UnknownTopic
            | Self::UnknownPartition
            | Self::UnknownGroup
            | Self::UnknownQuota
            | Self::UnknownUser
            | Self::UnknownToken => C::NotFound,
            Self::TopicExists | Self::DuplicateSequence | Self::UserExists => C::AlreadyExists,
            Self::Unauthenticated => C::Unauthenticated,
            Self::PermissionDenied => C::PermissionDenied,
            Self::OffsetOutOfRange => C::OutOfRange,
            Self::OutOfOrderSequence => C::Aborted,
            Self::ProducerFenced
            | Self::UnknownProducer
            | Self::UnknownMember
            | Self::FencedMember
            | Self::GroupNotEmpty
            | Self::InvalidRecordState => C::FailedPrecondition,
            Self::CorruptLog => C::DataLoss,
            Self::Unimplemented => C::Unimplemented,
            Self::DeadlineExceeded => C::DeadlineExceeded,
        }
    }

    /// Whether sending the same request again can succeed without changing it: the
    /// "retriable" column of `docs/protocol.md`. Unknown codes are not retriable.
    ///
    /// `LIMIT_EXCEEDED` counts as retriable (with backoff): the limits a running application
    /// meets are concurrency limits (in-flight bytes, subscriptions) that clear by themselves.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            Self::BrokerShuttingDown
                | Self::BrokerStarting
                | Self::DeadlineExceeded
                | Self::LimitExceeded
                | Self::CorruptBatch
                | Self::DiskFull
                | Self::LogFailed
                | Self::RemoteStorageUnavailable
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "UNKNOWN({n})"),
            known => {
                let name = pb::ErrorCode::try_from(known.as_i32())
                    .map(|c| c.as_str_name())
                    .unwrap_or("UNKNOWN");
                f.write_str(name.strip_prefix("ERROR_CODE_").unwrap_or(name))
            }
        }
    }
}

/// Everything that can go wrong in the client.
///
/// Cloneable, because a failed batch hands the same error to each of its records.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker refused a request, as a whole or for one part of it.
    #[error("{code} ({status:?}): {message}")]
    Broker {
        /// The Runnel error code.
        code: ErrorCode,
        /// The gRPC status code (for inline errors, the one the protocol pairs with `code`).
        status: tonic::Code,
        /// The broker's message, which names the field, the value and the limit.
        message: String,
    },

    /// The broker could not be reached: no connection could be made to it.
    #[error("broker unreachable at {addr}: {source}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why the connection failed.
        #[source]
        source: SharedSource,
    },

    /// The connection broke or a call failed below the Runnel protocol (HTTP/2, TCP); the
    /// request's outcome is unknown. Retriable.
    #[error("transport error ({status:?}): {message}")]
    Transport {
        /// The gRPC status code reported.
        status: tonic::Code,
        /// What the transport said.
        message: String,
    },

    /// A record cannot be sent because its batch would be larger than the limit: the topic's
    /// `max_batch_bytes` or the producer's buffer.
    #[error(
        "record of {size} bytes for topic {topic:?} is larger than {limit_name} ({limit} bytes)"
    )]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// The record's size in a batch of its own, header included, in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
        /// Which limit: `max_batch_bytes` of the topic, or the producer's `buffer_bytes`.
        limit_name: &'static str,
    },

    /// A batch received from the broker failed its CRC or structure check, or its
    /// compressed records could not be decompressed.
    #[error("corrupt batch from {topic}/{partition} at offset {offset}: {reason}")]
    CorruptData {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The position being read.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The producer or consumer was closed (or its background task has stopped).
    #[error("{0} is closed")]
    Closed(&'static str),

    /// An operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What timed out.
        what: String,
        /// The time allowed.
        after: Duration,
    },

    /// Records of a flush or a close were not delivered.
    #[error("{failed} record(s) were not delivered; the first error: {first}")]
    Undelivered {
        /// How many records failed.
        failed: u64,
        /// The error of the first failed record.
        first: Box<ClientError>,
    },

    /// The broker answered in a way the protocol does not allow (a client or broker bug).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// An invalid argument to a client call (for example a partition out of range).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Acknowledgements of a share consumer that the broker refused (the others of the same
    /// call were applied): a record whose lock expired, that another member holds, or that
    /// was acknowledged already (`INVALID_RECORD_STATE`).
    #[error("{}", refused_text(failures))]
    Acknowledgement {
        /// One per refused record (or per range, for a refusal that names no record).
        failures: Vec<crate::share::AckFailure>,
    },

    /// A record read as a dead letter lacks a dead-letter header, or has one malformed.
    #[error("record {topic}/{partition} at offset {offset} is not a dead letter: {reason}")]
    NotADeadLetter {
        /// The topic read.
        topic: String,
        /// The partition.
        partition: u32,
        /// The record's offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// "N acknowledgement(s) refused; the first: ...".
fn refused_text(failures: &[crate::share::AckFailure]) -> String {
    match failures.first() {
        Some(first) => format!(
            "{} acknowledgement(s) refused; the first: {first}",
            failures.len()
        ),
        None => "no acknowledgement refused".to_owned(),
    }
}

impl ClientError {
    /// Whether trying the same operation again may succeed: the protocol's table for broker
    /// errors; true for transport errors and an unreachable broker; false otherwise.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Broker { code, .. } => code.is_retriable(),
            Self::Unreachable { .. } | Self::Transport { .. } | Self::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The Runnel error code, for errors reported by the broker (for refused
    /// acknowledgements, the first one's).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::Acknowledgement { failures } => failures.first()?.error.code(),
            _ => None,
        }
    }

    /// The gRPC status code, for errors that came with one (for refused acknowledgements,
    /// the first one's).
    pub fn grpc_status(&self) -> Option<tonic::Code> {
        match self {
            Self::Broker { status, .. } | Self::Transport { status, .. } => Some(*status),
            Self::Acknowledgement { failures } => failures.first()?.error.grpc_status(),
            _ => None,
        }
    }

    /// The broker's message, for errors reported by the broker.
    pub fn broker_message(&self) -> Option<&str> {
        match self {
            Self::Broker { message, .. } => Some(message),
            _ => None,
        }
    }

    /// An inline error from a response (`runnel.v1.Error`).
    pub fn from_inline(e: &pb::Error) -> Self {
        let code = ErrorCode::from_i32(e.code);
        Self::Broker {
            code,
            status: code.grpc_code(),
            message: e.message.clone(),
        }
    }

    /// A failed RPC's status, with the Runnel code from its `runnel-error-code` trailer.
    ///
    /// Statuses without the trailer come from the gRPC library or the transport:
    /// `OUT_OF_RANGE` is a message over the size limit (`LIMIT_EXCEEDED`, as the protocol
    /// says); `UNAVAILABLE`, `UNKNOWN`, `CANCELLED` and `INTERNAL` mean the connection or
    /// stream broke ([`ClientError::Transport`]); `DEADLINE_EXCEEDED` is a timeout.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i32>().ok());
        let message = status.message().to_owned();
        match code {
            Some(code) => Self::Broker {
                code: ErrorCode::from_i32(code),
                status: status.code(),
                message,
            },
            None => match status.code() {
                tonic::Code::OutOfRange => Self::Broker {
                    code: ErrorCode::LimitExceeded,
                    status: status.code(),
                    message,
                },
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::DeadlineExceeded => Self::Transport {
                    status: status.code(),
                    message: with_causes(
                        if message.is_empty() {
                            format!("{status}")
                        } else {
                            message
                        },
                        status,
                    ),
                },
                other => Self::Broker {
                    code: ErrorCode::Unknown(0),
                    status: other,
                    message,
                },
            },
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

/// The result type of the client's fallible operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `message` followed by the causes of `status` that say something it does not ("transport
/// error: http2 error: frame with invalid size"), so that a failed connection says why.
fn with_causes(mut message: String, status: &tonic::Status) -> String {
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status_with_code(code: tonic::Code, runnel: Option<&str>, msg: &str) -> tonic::Status {
        let mut s = tonic::Status::new(code, msg);
        if let Some(r) = runnel {
            s.metadata_mut().insert(
                ERROR_CODE_METADATA_KEY,
                MetadataValue::try_from(r).expect("ascii"),
            );
        }
        s
    }

    #[test]
    fn every_known_code_round_trips_and_matches_the_table() {
        // The codes of the error table, with the documented status and retriability.
        let table = [
            (1, tonic::Code::Internal, false),
            (2, tonic::Code::InvalidArgument, false),
            (3, tonic::Code::Unavailable, true),
            (4, tonic::Code::ResourceExhausted, true),
            (6, tonic::Code::Unimplemented, false),
            (7, tonic::Code::DeadlineExceeded, true),
            (10, tonic::Code::NotFound, false),
            (11, tonic::Code::NotFound, false),
            (12, tonic::Code::AlreadyExists, false),
            (13, tonic::Code::InvalidArgument, false),
            (14, tonic::Code::InvalidArgument, false),
            (15, tonic::Code::InvalidArgument, false),
            (20, tonic::Code::OutOfRange, false),
            (30, tonic::Code::InvalidArgument, false),
            (31, tonic::Code::InvalidArgument, true),
            (32, tonic::Code::InvalidArgument, false),
            (40, tonic::Code::Aborted, false),
            (41, tonic::Code::FailedPrecondition, false),
            (42, tonic::Code::FailedPrecondition, false),
            (43, tonic::Code::AlreadyExists, false),
            (50, tonic::Code::ResourceExhausted, true),
            (51, tonic::Code::Unavailable, true),
            (52, tonic::Code::DataLoss, false),
            (60, tonic::Code::NotFound, false),
            (61, tonic::Code::InvalidArgument, false),
            (62, tonic::Code::FailedPrecondition, false),
            (63, tonic::Code::FailedPrecondition, false),
            (64, tonic::Code::FailedPrecondition, false),
            (70, tonic::Code::NotFound, false),
            (90, tonic::Code::FailedPrecondition, false),
        ];
        for (n, status, retriable) in table {
            let code = ErrorCode::from_i32(n);
            assert!(!matches!(code, ErrorCode::Unknown(_)), "{n} is known");
            assert_eq!(code.as_i32(), n);
            assert_eq!(code.grpc_code(), status, "{code}");
            assert_eq!(code.is_retriable(), retriable, "{code}");
        }
        assert_eq!(ErrorCode::from_i32(0), ErrorCode::Unknown(0));
        assert_eq!(ErrorCode::from_i32(999), ErrorCode::Unknown(999));
        assert!(!ErrorCode::Unknown(999).is_retriable());
        assert_eq!(ErrorCode::UnknownTopic.to_string(), "UNKNOWN_TOPIC");
    }

    #[test]
    fn a_status_with_the_trailer_becomes_a_broker_error() {
        let s = status_with_code(
            tonic::Code::NotFound,
            Some("10"),
            "topic \"orders\" does not exist",
        );
        let e = ClientError::from(s);
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
        assert_eq!(e.grpc_status(), Some(tonic::Code::NotFound));
        assert_eq!(e.broker_message(), Some("topic \"orders\" does not exist"));
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("UNKNOWN_TOPIC"), "{e}");

        let s = status_with_code(tonic::Code::Unavailable, Some("3"), "shutting down");
        assert!(ClientError::from(s).is_retriable());
    }

    #[test]
    fn an_unknown_code_is_judged_by_its_status_and_not_retried() {
        let s = status_with_code(tonic::Code::Unavailable, Some("77"), "new");
        let e = ClientError::from(s);
        assert_eq!(e.code(), Some(ErrorCode::Unknown(77)));
        assert_eq!(e.grpc_status(), Some(tonic::Code::Unavailable));
        assert!(!e.is_retriable());
    }

    #[test]
    fn statuses_without_the_trailer() {
        let e = ClientError::from(status_with_code(tonic::Code::OutOfRange, None, "too big"));
        assert_eq!(e.code(), Some(ErrorCode::LimitExceeded));
        let e = ClientError::from(status_with_code(
            tonic::Code::Unavailable,
            None,
            "tcp connect error",
        ));
        assert!(matches!(e, ClientError::Transport { .. }));
        assert!(e.is_retriable());
        let e = ClientError::from(status_with_code(tonic::Code::PermissionDenied, None, "no"));
        assert!(!e.is_retriable());
    }

    #[test]
    fn refused_acknowledgements_carry_the_first_ones_code() {
        let refused = |offset| crate::share::AckFailure {
            topic: "jobs".into(),
            partition: 0,
            first_offset: offset,
            last_offset: offset,
            kind: crate::share::AckKind::Accept,
            error: ClientError::from_inline(&pb::Error {
                code: pb::ErrorCode::InvalidRecordState as i32,
                message: format!("jobs/0 offset {offset}: already acknowledged"),
            }),
        };
        let e = ClientError::Acknowledgement {
            failures: vec![refused(3), refused(4)],
        };
        assert_eq!(e.code(), Some(ErrorCode::InvalidRecordState));
        assert_eq!(e.grpc_status(), Some(tonic::Code::FailedPrecondition));
        assert!(!e.is_retriable());
        let text = e.to_string();
        assert!(
            text.starts_with("2 acknowledgement(s) refused; the first: accept of jobs/0 offset 3: INVALID_RECORD_STATE"),
            "{text}"
        );
    }

    #[test]
    fn inline_errors_take_the_documented_status() {
        let e = ClientError::from_inline(&pb::Error {
            code: pb::ErrorCode::DiskFull as i32,
            message: "disk full".into(),
        });
        assert_eq!(e.grpc_status(), Some(tonic::Code::ResourceExhausted));
        assert!(e.is_retriable());
    }
}
