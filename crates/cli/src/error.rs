//! Exit codes and the one-line error message.
//!
//! Commands return `anyhow::Error`s with context saying what failed; `main` prints
//! [`one_line`] and exits with [`exit_code`]:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success (also when stdout's reader went away: a broken pipe) |
//! | 1 | any other failure |
//! | 2 | usage: bad flags or arguments, including names and values the broker rejects as invalid |
//! | 3 | not found: topic, partition, group or profile |
//! | 4 | connection: broker unreachable, connection lost, broker shutting down |

use std::fmt;
use std::io;

use runnel_client::{ClientError, ErrorCode};

/// Success.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad flags, arguments or values.
pub const USAGE: u8 = 2;
/// A topic, partition, group or profile that does not exist.
pub const NOT_FOUND: u8 = 3;
/// The broker cannot be reached or went away.
pub const UNAVAILABLE: u8 = 4;
/// The broker refused the credentials, or no ACL allows the call.
pub const NOT_ALLOWED: u8 = 5;

/// The exit-code table for `--help` and the docs.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (also when the reader of stdout goes away, as with `| head`)
  1  any other failure
  2  usage: bad flags or arguments, or names and values the broker rejects as invalid
  3  not found: the topic, partition, group or profile does not exist
  4  connection: the broker is unreachable, the connection broke, or the broker is starting or
     shutting down
  5  not allowed: no or wrong credentials (--user, --token-file), or no ACL allows the command";

/// An error in the command line found by the CLI itself (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Something named on the command line that does not exist, found by the CLI (exit code 3).
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// A broker that is there but does not serve, found by the CLI (exit code 4).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// A usage error as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// An unavailable-broker error as an `anyhow::Error`.
pub fn unavailable(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Unavailable(message.into()))
}

/// A not-found error as an `anyhow::Error`.
pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(NotFound(message.into()))
}

/// Whether the error is stdout's reader going away: not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The process exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if is_broken_pipe(err) {
        return OK;
    }
    for cause in err.chain() {
        if cause.is::<Usage>() {
            return USAGE;
        }
        if cause.is::<NotFound>() {
            return NOT_FOUND;
        }
        if cause.is::<Unavailable>() {
            return UNAVAILABLE;
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return client_code(e);
        }
    }
    FAILURE
}

fn client_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Broker { code, .. } => match code {
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::UnknownGroup
            | ErrorCode::UnknownQuota
            | ErrorCode::UnknownUser
            | ErrorCode::UnknownToken => NOT_FOUND,
            ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => NOT_ALLOWED,
            ErrorCode::InvalidTopicName
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidPartitionCount
            | ErrorCode::InvalidGroupId => USAGE,
            ErrorCode::BrokerShuttingDown | ErrorCode::BrokerStarting => UNAVAILABLE,
            _ => FAILURE,
        },
        ClientError::Unreachable { .. }
        | ClientError::Transport { .. }
        | ClientError::Timeout { .. } => UNAVAILABLE,
        ClientError::Config(_) | ClientError::InvalidArgument(_) => USAGE,
        ClientError::Undelivered { first, .. } => client_code(first),
        _ => FAILURE,
    }
}

/// The error as one line: the context chain joined by ": ", a broker error as its message
/// and code, a connection failure with its root cause.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            parts.push(client_text(e));
            // The client's message already includes its sources.
            break;
        }
        parts.push(cause.to_string());
    }
    let line = parts.join(": ");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn client_text(e: &ClientError) -> String {
    match e {
        ClientError::Broker { code, message, .. } if message.is_empty() => code.to_string(),
        ClientError::Broker { code, message, .. } => format!("{message} ({code})"),
        ClientError::Unreachable { addr, source } => {
            let mut root: &dyn std::error::Error = source.as_ref();
            while let Some(next) = root.source() {
                root = next;
            }
            format!("broker unreachable at {addr}: {root}")
        }
        ClientError::Undelivered { failed, first } => format!(
            "{failed} record(s) were not delivered; the first error: {}",
            client_text(first)
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    fn broker(code: ErrorCode, message: &str) -> ClientError {
        ClientError::Broker {
            code,
            status: code.grpc_code(),
            message: message.into(),
        }
    }

    #[test]
    fn codes_by_kind() {
        let e = anyhow::Error::new(broker(
            ErrorCode::UnknownTopic,
            "topic \"x\" does not exist",
        ))
        .context("cannot describe topic \"x\"");
        assert_eq!(exit_code(&e), NOT_FOUND);
        assert_eq!(
            one_line(&e),
            "cannot describe topic \"x\": topic \"x\" does not exist (UNKNOWN_TOPIC)"
        );
        let e = anyhow::Error::new(broker(ErrorCode::InvalidTopicName, "bad\nname"));
        assert_eq!(exit_code(&e), USAGE);
        assert_eq!(one_line(&e), "bad name (INVALID_TOPIC_NAME)");
        let e = anyhow::Error::new(broker(ErrorCode::TopicExists, "exists"));
        assert_eq!(exit_code(&e), FAILURE);
        let e = anyhow::Error::new(ClientError::Transport {
            // The gRPC code the protocol pairs with BROKER_SHUTTING_DOWN: UNAVAILABLE.
            status: ErrorCode::BrokerShuttingDown.grpc_code(),
            message: "gone".into(),
        });
        assert_eq!(exit_code(&e), UNAVAILABLE);
        let e = anyhow::Error::new(ClientError::Undelivered {
            failed: 3,
            first: Box::new(broker(ErrorCode::UnknownPartition, "no partition 9")),
        });
        assert_eq!(exit_code(&e), NOT_FOUND);
        assert!(one_line(&e).starts_with("3 record(s) were not delivered"));
        assert_eq!(exit_code(&usage("bad")), USAGE);
        assert_eq!(exit_code(&not_found("none")), NOT_FOUND);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), FAILURE);
    }

    #[test]
    fn a_broken_pipe_is_success() {
        let e: anyhow::Result<()> = Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        let e = e.context("writing records").unwrap_err();
        assert!(is_broken_pipe(&e));
        assert_eq!(exit_code(&e), OK);
    }
}
