//! The one place where an [`RpcError`] becomes a gRPC [`Status`]: the status code of each
//! Runnel code (`docs/protocol.md`, the error table) and the `runnel-error-code` trailer.

use runnel_proto::pb::ErrorCode;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::error::RpcError;

impl RpcError {
    /// The gRPC status code of this error's Runnel code.
    pub fn grpc_code(&self) -> Code {
        grpc_code(self.code)
    }

    /// The error as a gRPC status with the `runnel-error-code` trailer.
    pub fn status(&self) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            runnel_proto::ERROR_CODE_METADATA_KEY,
            MetadataValue::from(self.code as i32),
        );
        Status::with_metadata(self.grpc_code(), self.message.clone(), metadata)
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        e.status()
    }
}

/// A status about a request message: tonic answers a message it cannot decode (not protobuf,
/// or a string field that is not UTF-8) with `INTERNAL` and no trailer; that is a malformed
/// request, `INVALID_ARGUMENT` / `INVALID_REQUEST` with the trailer (`docs/protocol.md`).
/// Any other status is returned as it is.
pub fn inbound(status: Status) -> Status {
    malformed(&status).map_or(status, |e| e.status())
}

/// The error to answer a message the client sent with, when reading it failed because it did
/// not decode; `None` when reading failed otherwise (the client went away).
pub fn malformed(status: &Status) -> Option<RpcError> {
    (status.code() == Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message"))
    .then(|| RpcError::invalid(format!("malformed request: {}", status.message())))
}

/// [`inbound`] for a whole response: a trailers-only response (how tonic answers a unary or
/// server-streaming call whose request it could not decode) is rewritten; others pass.
pub fn inbound_response(response: http::Response<Body>) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == Code::Internal => {
            let mapped = inbound(status);
            if mapped.code() == Code::Internal {
                response
            } else {
                mapped.into_http()
            }
        }
        _ => response,
    }
}

/// The gRPC status code for each Runnel code.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Unspecified | ErrorCode::Internal => Code::Internal,
        ErrorCode::InvalidRequest
        | ErrorCode::InvalidTopicName
        | ErrorCode::InvalidConfig
        | ErrorCode::InvalidPartitionCount
        | ErrorCode::BatchTooLarge
        | ErrorCode::CorruptBatch
        | ErrorCode::UnsupportedBatchVersion
        | ErrorCode::InvalidGroupId => Code::InvalidArgument,
        ErrorCode::BrokerShuttingDown | ErrorCode::BrokerStarting | ErrorCode::LogFailed => {
            Code::Unavailable
        }
        ErrorCode::LimitExceeded | ErrorCode::DiskFull => Code::ResourceExhausted,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::UnknownGroup => {
            Code::NotFound
        }
        ErrorCode::TopicExists | ErrorCode::DuplicateSequence => Code::AlreadyExists,
        ErrorCode::OffsetOutOfRange => Code::OutOfRange,
        ErrorCode::OutOfOrderSequence => Code::Aborted,
        ErrorCode::ProducerFenced
        | ErrorCode::UnknownProducer
        | ErrorCode::UnknownMember
        | ErrorCode::FencedMember
        | ErrorCode::GroupNotEmpty => Code::FailedPrecondition,
        ErrorCode::CorruptLog => Code::DataLoss,
    }
}

/// The gRPC name of a status code, as a label value.
pub(crate) fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use runnel_proto::pb::ErrorCode;
    use tonic::Code;

    use crate::error::{At, RpcError};

    #[test]
    fn status_carries_code_and_trailer() {
        let s = RpcError::unknown_topic("orders").status();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "topic \"orders\" does not exist");
        assert_eq!(
            s.metadata()
                .get(runnel_proto::ERROR_CODE_METADATA_KEY)
                .unwrap(),
            "10"
        );
    }

    #[test]
    fn storage_errors_get_the_documented_codes() {
        let at = At {
            topic: "orders",
            partition: 3,
            epoch: Some(0),
        };
        let e = RpcError::storage(
            &runnel_storage::Error::OutOfOrderSequence {
                producer_id: 17,
                expected: 42,
                received: 45,
            },
            at,
        );
        assert_eq!(e.code, ErrorCode::OutOfOrderSequence);
        assert_eq!(e.grpc_code(), Code::Aborted);
        assert_eq!(
            e.message,
            "producer 17 epoch 0 on orders/3: expected sequence 42, got 45"
        );
        let e = RpcError::storage(
            &runnel_storage::Error::OffsetOutOfRange {
                requested: 160,
                log_start: 100,
                log_end: 150,
            },
            at,
        );
        assert_eq!(
            e.message,
            "offset 160 is out of range for orders/3: readable offsets are 100 to 150 (log start 100, log end 150)"
        );
        assert_eq!(e.grpc_code(), Code::OutOfRange);
    }
}
