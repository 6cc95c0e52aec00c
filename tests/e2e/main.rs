//! Runnel's end-to-end suite: one test binary, one module per area.
//!
//! It will start the real `runneld` binary on free local ports with a temporary data
//! directory and drive it over gRPC through `runnel-client` and the `runnel` CLI: admin,
//! produce, consume, idempotence, restart and recovery (SIGTERM, kill -9), disk-full and CLI
//! exit codes. Those modules arrive with the broker, client and CLI issues; until then only
//! the protocol contract can be checked end to end.

mod protocol;
