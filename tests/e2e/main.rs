//! Runnel's end-to-end suite: one test binary, one module per area.
//!
//! It starts the real `runneld` binary on free local ports with a temporary data directory
//! (`harness`) and drives it over gRPC with the generated clients: lifecycle (100,000 records,
//! restarts, SIGTERM under load, kill -9), streaming (long poll, Subscribe, a stalled
//! subscriber's memory), errors (every documented status, random input, a full disk),
//! idempotence, consumer groups (offsets across kill -9, lag gauges), reflection and
//! operations (config errors, exit codes, logs, metrics). The `protocol` module checks the
//! contract the descriptors carry. `client` drives the broker
//! through `runnel-client`: ordering, retries across broken connections, groups, compression,
//! and `kill -9` at random moments under durable load.
//! `cli` runs the real `runnel` binary and checks its stdout, stderr and exit codes.
//! `python` runs the Python examples' own checks (`examples/python`), and `grpcurl` the
//! grpcurl walkthrough of docs/protocol.md, command by command. `console` drives the web
//! console's API, and its page in headless Chromium. `security` runs a broker with
//! authentication on: users, tokens and ACLs through the CLI, the HTTP port, the audit log.
//! `share` drives share groups through `runnel-client` and the CLI: records shared out
//! exactly once, refused acknowledgements, and the dead-letter path (`runnel dlq`);
//! `share_crash` runs chaotic share group members through a `kill -9` of the broker.
//! `kafka` runs kcat (librdkafka) against the Kafka protocol listener.
//! `tiered` copies segments to a real S3-compatible store through `kill -9`s and reads them back.

mod harness;

mod bench;
mod cli;
mod client;
mod console;
mod deploy;
mod errors;
mod groups;
mod grpcurl;
mod idempotence;
mod kafka;
mod lifecycle;
mod operations;
mod protocol;
mod python;
mod reflection;
mod security;
mod share;
mod share_crash;
mod streaming;
mod tiered;
mod tls;
