//! The Rust client of Runnel, the single-node event streaming broker: a [`Producer`], a
//! [`Consumer`], a [`ShareConsumer`] and an [`Admin`] over the broker's gRPC protocol
//! (`proto/runnel/v1`).
//!
//! - **Producer**: [`Producer::send`] returns a [`DeliveryFuture`] of the record's partition
//!   and offset; [`Producer::send_all`] queues many records at once and returns their
//!   [`Deliveries`], one future for all of them. Records are batched per partition by size and linger time, compressed
//!   (lz4, zstd) if asked, and pipelined over one stream with several batches in flight per
//!   partition. Memory is bounded: `send` waits while the buffer is full. Idempotence is on
//!   by default, so retries after errors or broken connections never write a record twice
//!   and keep order per partition. [`Producer::flush`] and [`Producer::close`] deliver or
//!   report every pending record.
//! - **Consumer**: a [`Stream`](futures_core::Stream) of [`ConsumerRecord`]s, standalone
//!   ([`Consumer::assign`], [`Consumer::seek`] to an offset, a time, the earliest or latest)
//!   or in a consumer group ([`Consumer::subscribe`]: the broker assigns partitions; changes
//!   reach [`ConsumerConfig::on_rebalance`]). Offsets are committed automatically at an
//!   interval, or by hand ([`Consumer::commit`]); on revocation they are committed before the
//!   partition is released. Delivery is at least once: nothing is skipped.
//! - **Share consumer**: [`ShareConsumer`], a member of a share group (a queue over topics):
//!   records acquired under a lock and acknowledged one by one (accept, release, reject,
//!   renew), the acknowledgements riding on the next poll; [`DeadLetter`]s read from a
//!   dead-letter topic and replayed ([`read_dead_letters`], [`replay_dead_letters`]), and
//!   [`dead_letter`] for consumer-group applications. The [`share`] module tells how.
//! - **Admin**: topics, partitions, configs, offsets, consumer groups, share groups and
//!   broker info, typed.
//! - **Errors**: one [`ClientError`] with the broker's [`ErrorCode`], gRPC status and message,
//!   and [`ClientError::is_retriable`].
//! - **Tracing**: [`TraceParent`] injects and extracts the W3C `traceparent` header so a
//!   trace follows an event from service to service.
//!
//! The client depends only on the protocol (`runnel-proto`) and the batch format
//! (`runnel-format`), never on the broker's code: it is what any other language's client
//! would be.
//!
//! # Quick start
//!
//! With a broker running (`cargo run --bin runneld`):
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use runnel_client::{
//!     Client, ConsumerConfig, ProducerConfig, ProducerRecord, StartAt, TopicConfig,
//!     TopicPartition,
//! };
//!
//! # async fn quick_start() -> Result<(), runnel_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7171").await?;
//! client.admin().ensure_topic("orders", 3, TopicConfig::default()).await?;
//!
//! // Produce: send returns once the record is queued; its future resolves on delivery.
//! let producer = client.producer(ProducerConfig::default()).await?;
//! let delivery = producer
//!     .send(ProducerRecord::new("orders", r#"{"total": 42}"#).key("order-42"))
//!     .await?;
//! let stored = delivery.await?;
//! println!("stored in partition {} at offset {}", stored.partition, stored.offset);
//! producer.close().await?;
//!
//! // Consume that partition from the start.
//! let mut consumer = client.consumer(ConsumerConfig::default())?;
//! consumer.assign(TopicPartition::new("orders", stored.partition), StartAt::Earliest)?;
//! if let Some(record) = consumer.next().await {
//!     let record = record?;
//!     println!("{:?} -> {:?}", record.key_str(), record.value_str());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The `examples/` directory holds a complete flow: an order service, and payment,
//! inventory and notification services each consuming in its own group.

mod admin;
mod client;
mod connection;
mod consumer;
mod error;
mod partitioner;
mod producer;
mod record;
mod security;
pub mod share;

pub use admin::{
    Admin, AlteredConfig, BrokerInfo, ClientQuota, Durability, GroupDescription, GroupListing,
    GroupMember, GroupPartition, GroupState, ListedOffset, OffsetResetPlan, OffsetSpec,
    PartitionInfo, QuotaListing, QuotaRates, ResetOffsets, ResetTo, TopicConfig, TopicDescription,
    TopicListing,
};
pub use client::Client;
pub use compression::Compression;
pub use connection::{Backoff, ClientConfig, ClientTls, Credentials, DEFAULT_PORT};
pub use consumer::{
    CommittedOffset, Consumer, ConsumerConfig, OffsetReset, Rebalance, RebalanceListener, StartAt,
    TopicPartition,
};
pub use error::{ClientError, ErrorCode, Result, SharedSource};
pub use partitioner::{PartitionFn, Partitioner};
pub use producer::{Acks, Delivered, Deliveries, DeliveryFuture, Producer, ProducerConfig};
pub use record::{
    ConsumerRecord, Header, InvalidTraceParent, ProducerRecord, RecordMetadata, TRACEPARENT_HEADER,
    TraceParent,
};
pub use runnel_format::compression;
pub use security::{
    Acl, AclFilter, AclOperation, AclPermission, AclResource, NewToken, Pattern, Security, Token,
    User,
};
pub use share::{
    AckFailure, AckKind, AckMode, AlterShareGroup, DeadLetter, ShareConsumer, ShareConsumerConfig,
    ShareGroupDescription, ShareGroupSettings, SharePartitionState, ShareRecord, ShareStart,
    dead_letter, dead_letter_headers, dead_letter_record, read_dead_letters, replay_dead_letters,
};
