//! [`Client`], the entry point: one connection to the broker, shared by the producers,
//! consumers, share consumers and admin made from it.

use std::sync::Arc;

use crate::admin::Admin;
use crate::connection::{ClientConfig, Connection};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::error::Result;
use crate::producer::{Producer, ProducerConfig};
use crate::share::{ShareConsumer, ShareConsumerConfig};

/// A connection to a Runnel broker, from which producers, consumers and the admin are made.
///
/// Cheap to clone; every clone, and everything made from it, multiplexes over the same
/// HTTP/2 connection, which is re-established (with backoff) when it breaks.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<Connection>,
}

impl Client {
    /// Connects to the broker at `address` (`host:port` or `http://host:port`) with the
    /// default settings.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`](crate::ClientError::Unreachable) ("broker unreachable at
    /// ADDR") if no connection could be made after `connect_attempts` tries.
    pub async fn connect(address: impl Into<String>) -> Result<Self> {
        Self::connect_with(ClientConfig::new(address)).await
    }

    /// Connects with explicit settings.
    ///
    /// # Errors
    /// [`ClientError::Config`](crate::ClientError::Config) for invalid settings, or
    /// [`ClientError::Unreachable`](crate::ClientError::Unreachable).
    pub async fn connect_with(config: ClientConfig) -> Result<Self> {
        Ok(Self {
            conn: Connection::connect(config).await?,
        })
    }

    /// The broker address this client was made for.
    pub fn address(&self) -> &str {
        &self.conn.config.address
    }

    /// The admin API: topics, partitions, configs, offsets, broker info.
    pub fn admin(&self) -> Admin {
        Admin::new(self.conn.clone())
    }

    /// The security API: users, tokens and ACLs.
    pub fn security(&self) -> crate::Security {
        crate::Security::new(self.conn.clone())
    }

    /// Starts a producer (for an idempotent one, after getting a producer id).
    ///
    /// # Errors
    /// [`ClientError::Config`](crate::ClientError::Config) for invalid settings; the
    /// broker's error if `InitProducer` fails.
    pub async fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::start(self.conn.clone(), config).await
    }

    /// Creates a consumer. It reads nothing until partitions are assigned to it.
    ///
    /// # Errors
    /// [`ClientError::Config`](crate::ClientError::Config) for invalid settings.
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer> {
        Consumer::new(self.conn.clone(), config)
    }

    /// Creates a member of a share group. It acquires nothing until its first
    /// [`ShareConsumer::poll`](crate::ShareConsumer::poll).
    ///
    /// # Errors
    /// [`ClientError::Config`](crate::ClientError::Config) for invalid settings.
    pub fn share_consumer(&self, config: ShareConsumerConfig) -> Result<ShareConsumer> {
        ShareConsumer::new(self.conn.clone(), config)
    }
}
