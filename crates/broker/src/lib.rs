//! The Runnel broker: it will serve the `runnel.v1` gRPC services (`docs/protocol.md`) over
//! partitioned logs from `runnel-storage`, with health, reflection and Prometheus metrics.
//!
//! Its entry point will be `run(config, listeners, shutdown)`, which the `runneld` binary calls
//! and tests call in-process on port 0. Nothing is implemented yet: the broker issue (issue 3)
//! fills this crate.
