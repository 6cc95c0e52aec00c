//! The Runnel broker: serves the `runnel.v1` gRPC services (`docs/protocol.md`) over
//! partitioned logs from `runnel-storage`, with the standard health service, server
//! reflection (v1 and v1alpha), Prometheus metrics and a web console.
//!
//! The entry point is [`run`]: it takes a [`Config`], an already bound listener and a shutdown
//! future, so the `runneld` binary only parses flags and handles signals, and tests run the
//! broker in-process on port 0.
//!
//! The modules, in layers from the top; a module names only modules of its own layer or
//! below, never above, and no two modules name each other in a circle (checked by
//! `scripts/module-graph.py`, see its `--layers`):
//!
//! 1. the process: `server` ([`run`]: the steps from start to stop), `background` (retention
//!    and group loops), `connections` (accepting connections under `limits.max_connections`),
//!    `data_dir` (the data directory's lock), `tls` (TLS on the gRPC listener, reloaded on
//!    SIGHUP).
//! 2. front ends: `services` (the gRPC services as adapters to the domain, their router, and
//!    `services/status.rs`, the one place errors become gRPC statuses); [`console`] (the web
//!    console's page and JSON API).
//! 3. the domain: `broker` (`Broker`, what every front end shares, and its produce, consume,
//!    topic administration and group operations; they know nothing of tonic).
//! 4. the state: [`auth`] (users, tokens, ACLs and the one authorization point), [`groups`] (the coordinator, assignors, committed offsets, lag), [`producers`]
//!    (idempotent producer ids and epochs), [`topics`] (the topic registry and its metadata).
//! 5. [`partition`]: one partition, the only door to its log; `internal_log`: one internal log
//!    (the broker's own state: committed offsets, producer ids), the only door to it.
//! 6. shared by all: [`config`] (the typed configuration tree and its layers), [`error`]
//!    (startup errors, and client errors with stable codes), [`metrics`] (every metric name,
//!    and the HTTP endpoint), [`shutdown`] (the one cancellation signal), `files` (atomic file
//!    replacement), `tasks` (blocking work off the runtime).

pub mod alloc;

/// The unit tests run with `runneld`'s allocator (the Kafka decoder's fuzz target needs it).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

pub mod auth;
mod background;
mod broker;
mod clock;
pub mod config;
mod connections;
pub mod console;
mod data_dir;
pub mod error;
mod files;
pub mod groups;
mod internal_log;
mod kafka;
pub mod metrics;
pub mod partition;
pub mod producers;
mod quotas;
mod server;
mod services;
pub mod shares;
pub mod shutdown;
mod tasks;
pub mod tiered;
mod tls;
pub mod topics;

pub use config::Config;
pub use error::{Error, RpcError};
pub use server::run;
pub use services::router::SERVICE_NAMES;
