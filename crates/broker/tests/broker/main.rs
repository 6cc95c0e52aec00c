//! In-process tests of the broker: `run` on `127.0.0.1:0` with a temporary data directory,
//! driven over gRPC with the generated clients. One module per area.

/// `runneld`'s allocator: the Kafka listener's hostile-input tests need it.
#[global_allocator]
static ALLOCATOR: runnel_broker::alloc::Allocator = runnel_broker::alloc::Allocator;

mod admin;
mod consume;
mod group_consume;
mod groups;
mod health;
mod idempotence;
mod kafka;
mod kafka_groups;
mod kafka_security;
mod limits;
mod malformed;
mod produce;
mod quotas;
mod records;
mod security;
mod share;
mod shutdown;
mod tiered;
mod upgrade;
