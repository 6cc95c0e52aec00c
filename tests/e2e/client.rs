//! `runnel-client` against the real broker: the producer's ordering, retries and idempotence
//! across broken connections, compression, limits; the standalone and group consumer; admin;
//! the broker killed at random moments under load.

mod consumer;
mod crash;
mod groups;
mod producer;
mod proxy;

use std::time::Duration;

use runnel_client::{Backoff, Client, ClientConfig};

use crate::harness::Broker;

/// A client of `addr` that retries fast (tests wait for nothing longer than they must).
pub async fn client_at(addr: &str) -> Client {
    Client::connect_with(ClientConfig {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
        },
        ..ClientConfig::new(addr)
    })
    .await
    .expect("connect")
}

/// A client of the broker.
pub async fn client(b: &Broker) -> Client {
    client_at(&b.grpc.to_string()).await
}
