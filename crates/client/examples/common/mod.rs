//! What the example services share: the broker address, the topics, a tiny event encoding
//! and logging.

#![allow(dead_code)] // each example uses part of it

use runnel_client::{Client, ClientError, TopicConfig};

/// Orders placed: key = order id, value = an `OrderCreated` event.
pub const ORDERS: &str = "shop.orders";
/// Payments taken: key = order id, value = a `PaymentConfirmed` event.
pub const PAYMENTS: &str = "shop.payments";

/// The broker address: `RUNNEL_BROKER`, as for the `runnel` tool, or the default
/// `127.0.0.1:7171`.
pub fn address() -> String {
    std::env::var("RUNNEL_BROKER").unwrap_or_else(|_| "127.0.0.1:7171".to_owned())
}

/// Logs to stderr; `RUST_LOG=runnel_client=debug` shows the client's reconnects and retries.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Connects and makes sure both topics exist (3 partitions each).
pub async fn connect() -> Result<Client, ClientError> {
    let client = Client::connect(address()).await?;
    let admin = client.admin();
    for topic in [ORDERS, PAYMENTS] {
        if admin.ensure_topic(topic, 3, TopicConfig::default()).await? {
            tracing::info!(topic, "created topic");
        }
    }
    Ok(client)
}

/// An event as `type|field=value|field=value`: enough for the example, no schema library.
pub fn encode(kind: &str, fields: &[(&str, String)]) -> String {
    let mut out = kind.to_owned();
    for (k, v) in fields {
        out.push('|');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The type and fields of an encoded event.
pub fn decode(text: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = text.split('|');
    let kind = parts.next().unwrap_or("");
    let fields = parts.filter_map(|p| p.split_once('=')).collect();
    (kind, fields)
}

/// A field of a decoded event.
pub fn field<'a>(fields: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}
