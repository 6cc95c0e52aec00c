//! What every connection's handlers share, and what one connection knows of its client.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{Access, Auth};
use crate::broker::Broker;

/// What the server hands the Kafka front end.
#[derive(Debug)]
pub(crate) struct Front {
    /// The broker the requests are served by.
    pub(crate) broker: Arc<Broker>,
    /// Who may connect and what they may do.
    pub(crate) auth: Arc<Auth>,
    /// The listener's address, advertised unless `kafka.advertised_address` says otherwise.
    pub(crate) local: Option<SocketAddr>,
}

/// What every connection's handlers share.
#[derive(Debug)]
pub(crate) struct Context {
    /// The broker the requests are served by.
    pub(super) broker: Arc<Broker>,
    /// Who may connect and what they may do.
    pub(super) auth: Arc<Auth>,
    /// The host advertised to clients (Metadata).
    pub(super) host: String,
    /// The port advertised to clients.
    pub(super) port: i32,
}

/// What one connection's handlers know of it.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client's address.
    pub(super) addr: Option<SocketAddr>,
    /// The caller, once authenticated (from the start while authentication is off, or with
    /// a verified client certificate); the revision of the security state it was last
    /// checked at.
    pub(super) access: Option<(Access, u64)>,
    /// A SASL handshake named a mechanism served: SaslAuthenticate may follow.
    pub(super) handshaken: bool,
    /// Why the connection closes once the answer is written (a refused authentication).
    pub(super) closing: Option<String>,
}

impl Session {
    /// The client's address as group listings show it.
    pub(super) fn peer(&self) -> String {
        self.addr.map(|a| a.to_string()).unwrap_or_default()
    }
}
