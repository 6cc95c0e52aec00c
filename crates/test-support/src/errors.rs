//! The one table of expected error statuses, and the assertions both suites make through it.
//!
//! For every documented [`ErrorCode`], [`EXPECTED_STATUSES`] gives the gRPC status a failed
//! RPC carries; the `runnel-error-code` trailer ([`runnel_proto::ERROR_CODE_METADATA_KEY`])
//! carries the code's number. The table is checked against `docs/protocol.md` ("The error
//! table") by this crate's tests, so a test asserting through it asserts the documented
//! contract.

use runnel_proto::pb::{self, ErrorCode};
use tonic::Code;

/// The gRPC status that carries one Runnel error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedStatus {
    /// The Runnel code, sent as its number in the `runnel-error-code` trailer.
    pub error: ErrorCode,
    /// The gRPC status code of a whole-RPC failure with that Runnel code.
    pub status: Code,
}

const fn row(error: ErrorCode, status: Code) -> ExpectedStatus {
    ExpectedStatus { error, status }
}

/// Every documented error code with its gRPC status, in the order of `docs/protocol.md`.
pub const EXPECTED_STATUSES: &[ExpectedStatus] = &[
    row(ErrorCode::UnknownTopic, Code::NotFound),
    row(ErrorCode::UnknownPartition, Code::NotFound),
    row(ErrorCode::TopicExists, Code::AlreadyExists),
    row(ErrorCode::InvalidTopicName, Code::InvalidArgument),
    row(ErrorCode::InvalidConfig, Code::InvalidArgument),
    row(ErrorCode::InvalidPartitionCount, Code::InvalidArgument),
    row(ErrorCode::InvalidRequest, Code::InvalidArgument),
    row(ErrorCode::OffsetOutOfRange, Code::OutOfRange),
    row(ErrorCode::BatchTooLarge, Code::InvalidArgument),
    row(ErrorCode::CorruptBatch, Code::InvalidArgument),
    row(ErrorCode::UnsupportedBatchVersion, Code::InvalidArgument),
    row(ErrorCode::OutOfOrderSequence, Code::Aborted),
    row(ErrorCode::ProducerFenced, Code::FailedPrecondition),
    row(ErrorCode::UnknownProducer, Code::FailedPrecondition),
    row(ErrorCode::DuplicateSequence, Code::AlreadyExists),
    row(ErrorCode::LimitExceeded, Code::ResourceExhausted),
    row(ErrorCode::Unimplemented, Code::Unimplemented),
    row(ErrorCode::DeadlineExceeded, Code::DeadlineExceeded),
    row(ErrorCode::DiskFull, Code::ResourceExhausted),
    row(ErrorCode::LogFailed, Code::Unavailable),
    row(ErrorCode::CorruptLog, Code::DataLoss),
    row(ErrorCode::RemoteStorageUnavailable, Code::Unavailable),
    row(ErrorCode::UnknownGroup, Code::NotFound),
    row(ErrorCode::InvalidGroupId, Code::InvalidArgument),
    row(ErrorCode::UnknownMember, Code::FailedPrecondition),
    row(ErrorCode::FencedMember, Code::FailedPrecondition),
    row(ErrorCode::GroupNotEmpty, Code::FailedPrecondition),
    row(ErrorCode::InvalidRecordState, Code::FailedPrecondition),
    row(ErrorCode::UnknownQuota, Code::NotFound),
    row(ErrorCode::Unauthenticated, Code::Unauthenticated),
    row(ErrorCode::PermissionDenied, Code::PermissionDenied),
    row(ErrorCode::UnknownUser, Code::NotFound),
    row(ErrorCode::UserExists, Code::AlreadyExists),
    row(ErrorCode::UnknownToken, Code::NotFound),
    row(ErrorCode::BrokerShuttingDown, Code::Unavailable),
    row(ErrorCode::BrokerStarting, Code::Unavailable),
    row(ErrorCode::Internal, Code::Internal),
];

/// The gRPC status documented for `error`.
///
/// # Panics
///
/// If `error` is not in [`EXPECTED_STATUSES`] (`ERROR_CODE_UNSPECIFIED`, which no error
/// carries).
pub fn expected_status(error: ErrorCode) -> Code {
    EXPECTED_STATUSES
        .iter()
        .find(|r| r.error == error)
        .map(|r| r.status)
        .unwrap_or_else(|| panic!("{error:?} is not a documented error code"))
}

/// The Runnel code in a status's `runnel-error-code` trailer, if it has a valid one.
pub fn trailer_code(status: &tonic::Status) -> Option<i32> {
    status
        .metadata()
        .get(runnel_proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
}

/// Asserts a failed RPC's status: the gRPC code documented for `error`, `error` in the
/// trailer, and a message that contains `needle`.
///
/// # Panics
///
/// If any of the three differs.
pub fn assert_status(status: &tonic::Status, error: ErrorCode, needle: &str) {
    assert_eq!(status.code(), expected_status(error), "status: {status:?}");
    assert_eq!(
        trailer_code(status),
        Some(error as i32),
        "trailer of {status:?}"
    );
    assert!(
        status.message().contains(needle),
        "message {:?} lacks {needle:?}",
        status.message()
    );
}

/// Asserts an inline error (one part of a request failed): its code is `error` and its
/// message contains `needle`.
///
/// # Panics
///
/// If there is no error, or its code or message differs.
pub fn assert_inline(error: Option<&pb::Error>, expected: ErrorCode, needle: &str) {
    let e = error.expect("an inline error");
    assert_eq!(e.code, expected as i32, "inline error {e:?}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
}

/// Asserts the status of a request over the size limit (`server.max_request_bytes`), which
/// the gRPC library refuses before the broker sees it and the broker answers as its limit.
///
/// # Panics
///
/// If the status is not `LIMIT_EXCEEDED` naming `max_request_bytes`.
pub fn assert_too_large(status: &tonic::Status) {
    assert_status(status, ErrorCode::LimitExceeded, "max_request_bytes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    /// `NotFound` -> `NOT_FOUND`, the name gRPC documents.
    fn grpc_name(code: Code) -> String {
        let mut out = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    /// The rows of "The error table" in docs/protocol.md: (gRPC status, code name, number).
    fn documented() -> Vec<(String, String, i32)> {
        let path = crate::process::workspace_root().join("docs/protocol.md");
        let text = std::fs::read_to_string(&path).expect("docs/protocol.md");
        let table = text
            .split("### The error table")
            .nth(1)
            .expect("docs/protocol.md has \"The error table\"");
        let mut rows = Vec::new();
        for line in table.lines().skip_while(|l| !l.starts_with('|')) {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (status, code) = (cells[2].trim_matches('`'), cells[3]);
            let Some((name, number)) = code.split_once(" (") else {
                continue; // the header and the separator
            };
            let number = number.trim_end_matches(')').parse().expect("a code number");
            rows.push((status.to_owned(), name.trim_matches('`').to_owned(), number));
        }
        rows
    }

    #[test]
    fn the_table_is_the_documented_one() {
        let ours: Vec<_> = EXPECTED_STATUSES
            .iter()
            .map(|r| {
                let name = r.error.as_str_name().trim_start_matches("ERROR_CODE_");
                (grpc_name(r.status), name.to_owned(), r.error as i32)
            })
            .collect();
        assert_eq!(ours, documented());
    }

    #[test]
    fn every_error_code_but_unspecified_is_in_the_table() {
        for n in 0..=1000 {
            if let Ok(error) = ErrorCode::try_from(n)
                && error != ErrorCode::Unspecified
            {
                assert!(
                    EXPECTED_STATUSES.iter().any(|r| r.error == error),
                    "{error:?} has no row"
                );
            }
        }
    }

    #[test]
    fn assertions_accept_a_status_as_the_broker_sends_it() {
        let mut status = Status::new(Code::NotFound, "topic \"zz\" does not exist");
        let code = (ErrorCode::UnknownTopic as i32).to_string();
        status.metadata_mut().insert(
            runnel_proto::ERROR_CODE_METADATA_KEY,
            code.parse()
                .expect("ASCII digits are a valid metadata value"),
        );
        assert_status(&status, ErrorCode::UnknownTopic, "\"zz\"");
        assert_eq!(trailer_code(&status), Some(10));
    }
}
