//! What Runnel's test suites share: the broker harnesses, the table of expected error
//! statuses, and the helpers that build requests and batches and read them back.
//!
//! Two suites use it as a dev-dependency: the in-process tests of `runnel-broker`
//! (`crates/broker/tests`), which run [`broker::TestBroker`] on `127.0.0.1:0`, and the
//! end-to-end suite (`tests/`), which spawns the real binaries with [`process::Broker`] and
//! [`process::runnel`]. Both harnesses hand out the same generated gRPC clients through
//! [`Connection`], so every helper in [`rpc`] and every assertion in [`errors`] works against
//! either. Tests usually import [`prelude`].
//!
//! Everything here panics on failure: it is test code, and a panic is a failed test with its
//! reason. Waits are bounded by [`PATIENCE`], never asserted on.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use runnel_proto::pb::{
    admin_service_client::AdminServiceClient, consume_service_client::ConsumeServiceClient,
    group_service_client::GroupServiceClient, produce_service_client::ProduceServiceClient,
    share_service_client::ShareServiceClient,
};
use tonic::transport::{Channel, Endpoint};

pub mod batches;
pub mod broker;
pub mod errors;
pub mod kafka;
pub mod process;
pub mod random;
pub mod reflection;
pub mod rpc;
pub mod s3;
pub mod share;

/// Bounds every wait in the tests so that a bug hangs nothing. Never an assertion on speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The largest response the test clients decode: fetches of whole topics in one call exceed
/// tonic's 4 MiB default.
pub const MAX_DECODING_BYTES: usize = 64 << 20;

/// Waits for `f`, failing the test if it takes longer than [`PATIENCE`].
///
/// # Panics
///
/// If `f` does not finish within [`PATIENCE`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("finished within the patience")
}

/// A lazily connected channel to `addr`.
fn connect_lazy(addr: SocketAddr, connect_timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an http:// URI of a socket address is valid")
        .connect_timeout(connect_timeout)
        .connect_lazy()
}

/// A connection to a broker under test: its address, a channel, and the generated clients
/// on that channel.
///
/// Both harnesses dereference to one, so every helper of [`rpc`] takes a `&Connection` and
/// accepts `&TestBroker` and `&Broker` alike.
#[derive(Debug, Clone)]
pub struct Connection {
    addr: SocketAddr,
    channel: Channel,
}

impl Connection {
    /// A lazily connected channel to `addr` that gives up connecting after `connect_timeout`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let channel = connect_lazy(addr, connect_timeout);
        Connection { addr, channel }
    }

    /// The broker's gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A channel on this connection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// True if the broker answers its health check for the server as a whole with `SERVING`
    /// within two seconds. Asks on a connection of its own, closed afterwards, so that a test
    /// of the connection limit finds every slot free.
    pub async fn is_serving(&self) -> bool {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.new_channel());
        let check = health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Ok(r)) if r.get_ref().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        )
    }

    /// A channel on a new connection of its own (a separate client process, in effect).
    pub fn new_channel(&self) -> Channel {
        connect_lazy(self.addr, PATIENCE)
    }

    /// An `AdminService` client on this connection.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// A `ProduceService` client on this connection that sends requests of any size (the
    /// broker, not the client, enforces the request limit).
    pub fn produce(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// A `ConsumeService` client on this connection.
    pub fn consume(&self) -> ConsumeServiceClient<Channel> {
        ConsumeServiceClient::new(self.channel()).max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// A `GroupService` client on this connection.
    pub fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel())
    }

    /// A `ShareService` client on this connection.
    pub fn share(&self) -> ShareServiceClient<Channel> {
        ShareServiceClient::new(self.channel()).max_decoding_message_size(MAX_DECODING_BYTES)
    }
}

/// The names most tests need, for a glob import.
pub mod prelude {
    pub use crate::batches::{batch, batch_of, idempotent_batch, values};
    pub use crate::broker::TestBroker;
    pub use crate::errors::{assert_inline, assert_status, assert_too_large};
    pub use crate::process::Broker;
    pub use crate::rpc::{
        CallKind, committed_offsets, create_topic, describe_topic, entry, fetch_all,
        fetch_partition, produce, produce_acked, produce_request, raw_call, raw_stream_first,
        raw_unary, subscribe,
    };
    pub use crate::{Connection, PATIENCE, within};
}
