//! The Kafka protocol listener (`docs/kafka.md`): a front end beside gRPC, so that Kafka
//! clients and tools work unchanged against the same topics.
//!
//! A connection reads size-prefixed requests (at most `limits.max_request_bytes`), decodes
//! each with `kafka-protocol` (`apis.rs`), answers it through the same domain calls as the
//! gRPC services, and writes the responses in request order. What Kafka closes the connection
//! for, this listener closes it for: an API key it does not serve, a version it does not
//! serve (but for ApiVersions, answered with `UNSUPPORTED_VERSION` and the versions it
//! serves), a request that does not decode, or a size prefix over the limit. Batches cross
//! between Kafka's format and Runnel's at this edge (`runnel_format::kafka`).
//!
//! Consumer groups are Runnel's groups (`groups.rs` for the classic protocol, `consumer.rs`
//! for KIP-848's, `offsets.rs` for committed offsets). With authentication on, a connection
//! authenticates first (`sasl.rs`), and every handler authorizes what it touches through the
//! one authorization point (`Access::check`), with the ACLs of the matching gRPC call.

mod apis;
mod consumer;
mod context;
mod errors;
mod fetch;
mod groups;
mod listener;
mod metadata;
mod offsets;
mod produce;
mod sasl;
mod topics;

pub(crate) use context::Front;
pub(crate) use listener::serve;
