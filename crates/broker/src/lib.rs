//! The Runnel broker: serves the `runnel.v1` gRPC services (`docs/protocol.md`) over
//! partitioned logs from `runnel-storage`, with the standard health service, server
//! reflection (v1 and v1alpha) and Prometheus metrics.
//!
//! The entry point is [`run`]: it takes a [`Config`], an already bound listener and a shutdown
//! future, so the `runneld` binary only parses flags and handles signals, and tests run the
//! broker in-process on port 0.
//!
//! - [`config`]: the typed configuration tree and its layers (defaults, file, env, flags).
//! - [`topics`] and [`partition`]: the topic registry, metadata persistence, name rules.
//! - [`producers`]: idempotent producer ids and epochs.
//! - [`groups`]: consumer groups: the coordinator, assignors, committed offsets, lag.
//! - [`services`]: the admin, produce, consume and group services.
//! - [`error`]: the one place errors become gRPC statuses.
//! - [`metrics`]: every metric name, and the exporter.
//! - [`shutdown`]: the one cancellation signal.

mod broker;
pub mod config;
pub mod error;
mod files;
pub mod groups;
pub mod metrics;
pub mod partition;
pub mod producers;
mod server;
pub mod services;
pub mod shutdown;
mod tasks;
pub mod topics;

pub use config::Config;
pub use error::{Error, RpcError};
pub use server::{SERVICE_NAMES, run};
