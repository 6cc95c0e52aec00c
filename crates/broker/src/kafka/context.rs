//! What every connection's handlers share.

use std::sync::Arc;

use crate::broker::Broker;

/// What every connection's handlers share.
#[derive(Debug)]
pub(crate) struct Context {
    /// The broker the requests are served by.
    pub(super) broker: Arc<Broker>,
    /// The host advertised to clients (Metadata).
    pub(super) host: String,
    /// The port advertised to clients.
    pub(super) port: i32,
}

/// What one connection's handlers know of it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The client's address, as group listings show it.
    pub(super) peer: String,
}
