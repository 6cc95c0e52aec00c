//! The one place where an [`RpcError`] becomes a gRPC [`Status`]: the status code of each
//! Runnel code (`docs/protocol.md`, the error table) and the `runnel-error-code` trailer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use runnel_proto::pb::ErrorCode;
use tonic::body::Body;
use tonic::codegen::{Service, http};
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
/// or a string field that is not UTF-8) with `INTERNAL`, and one over the size limit with
/// `OUT_OF_RANGE`, both without a trailer; they are a malformed request and a limit
/// (`docs/protocol.md`, the error table). Any other status is returned as it is.
pub fn inbound(status: Status) -> Status {
    inbound_error(&status).map_or(status, |e| e.status())
}

/// The error to answer a request message with when reading it failed because it did not
/// decode or was too large; `None` when reading failed otherwise (the client went away).
pub fn inbound_error(status: &Status) -> Option<RpcError> {
    let message = status.message();
    match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(RpcError::invalid(format!("malformed request: {message}")))
        }
        Code::OutOfRange if message.contains("decoded message length too large") => {
            Some(RpcError::limit(format!(
                "the request message exceeds server.max_request_bytes: {}",
                message.trim_start_matches("Error, ")
            )))
        }
        _ => None,
    }
}

/// The Runnel error for a status that the gRPC library answered by itself, before or instead
/// of the broker's code: an undecodable or oversized request, an unknown service or method, a
/// compressed request. `None` for statuses that carry their trailer already.
fn library_error(status: &Status) -> Option<RpcError> {
    inbound_error(status).or_else(|| {
        (status.code() == Code::Unimplemented).then(|| {
            RpcError::new(
                ErrorCode::Unimplemented,
                format!("not implemented by this broker: {}", status.message()),
            )
        })
    })
}

/// Gives a trailers-only response (how a call that fails before its first message is
/// answered) the `runnel-error-code` trailer when the gRPC library produced its status.
pub fn with_error_code(response: http::Response<Body>) -> http::Response<Body> {
    let error = Status::from_header_map(response.headers())
        .filter(|s| {
            !s.metadata()
                .contains_key(runnel_proto::ERROR_CODE_METADATA_KEY)
        })
        .and_then(|s| library_error(&s));
    match error {
        Some(e) => e.status().into_http(),
        None => response,
    }
}

/// The layer that passes every response of the server through [`with_error_code`], so that
/// the statuses of routes the broker does not serve (an unknown service) get the trailer too.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCodeLayer;

impl<S> tower_layer::Layer<S> for ErrorCodeLayer {
    type Service = ErrorCodeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorCodeService { inner }
    }
}

/// A service whose trailers-only responses get the `runnel-error-code` trailer
/// ([`ErrorCodeLayer`]).
#[derive(Debug, Clone)]
pub struct ErrorCodeService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ErrorCodeService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let response = self.inner.call(req);
        Box::pin(async move {
            let Some(timeout) = deadline else {
                return response.await.map(with_error_code);
            };
            // At its grpc-timeout a client gives up by itself, and tonic answers a call still
            // unanswered with a bare CANCELLED from outside every layer a server can add;
            // answering a little earlier gives the client the status gRPC specifies, with its
            // trailer, in time to arrive.
            let margin = (timeout / 20).clamp(DEADLINE_MARGIN_MIN, DEADLINE_MARGIN_MAX);
            let early = timeout.saturating_sub(margin.min(timeout / 2));
            match tokio::time::timeout(early, response).await {
                Ok(response) => response.map(with_error_code),
                Err(_) => Ok(RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "the client's deadline (grpc-timeout {} ms) passed before the answer",
                        timeout.as_millis()
                    ),
                )
                .status()
                .into_http()),
            }
        })
    }
}

/// The broker answers DEADLINE_EXCEEDED a twentieth of a client's grpc-timeout before it
/// passes, at least this much earlier...
const DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(2);
/// ...and at most this much.
const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(100);

/// A `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::BrokerShuttingDown | ErrorCode::BrokerStarting | ErrorCode::LogFailed => {
            Code::Unavailable
        }
        ErrorCode::LimitExceeded | ErrorCode::DiskFull => Code::ResourceExhausted,
        ErrorCode::UnknownTopic
        | ErrorCode::UnknownPartition
        | ErrorCode::UnknownGroup
        | ErrorCode::UnknownQuota
        | ErrorCode::UnknownUser
        | ErrorCode::UnknownToken => Code::NotFound,
        ErrorCode::TopicExists | ErrorCode::DuplicateSequence | ErrorCode::UserExists => {
            Code::AlreadyExists
        }
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::OffsetOutOfRange => Code::OutOfRange,
        ErrorCode::OutOfOrderSequence => Code::Aborted,
        ErrorCode::ProducerFenced
        | ErrorCode::UnknownProducer
        | ErrorCode::UnknownMember
        | ErrorCode::FencedMember
        | ErrorCode::GroupNotEmpty
        | ErrorCode::InvalidRecordState => Code::FailedPrecondition,
        ErrorCode::CorruptLog => Code::DataLoss,
        ErrorCode::RemoteStorageUnavailable => Code::Unavailable,
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
