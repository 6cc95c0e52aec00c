//! The notification service: in the `notification` group, consumes `shop.orders` (to say "we
//! got your order") and `shop.payments` (to say "your payment went through"), following each
//! event's trace context.
//!
//! ```sh
//! cargo run -p runnel-client --example notification_service
//! ```

mod common;

use futures_util::StreamExt as _;
use runnel_client::{ConsumerConfig, Rebalance};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let client = common::connect().await?;
    let mut consumer = client.consumer(ConsumerConfig {
        on_rebalance: Some(std::sync::Arc::new(|change: &Rebalance| {
            tracing::info!(?change, "notification: partitions changed");
        })),
        ..ConsumerConfig::group("notification")
    })?;
    consumer.subscribe(&[common::ORDERS, common::PAYMENTS])?;
    tracing::info!("notification service waiting for events (Ctrl-C to stop)");
    loop {
        let record = tokio::select! {
            r = consumer.next() => match r {
                Some(r) => r?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let text = record.value_str().unwrap_or_default();
        let (kind, fields) = common::decode(text);
        let order_id = common::field(&fields, "order_id").unwrap_or("?");
        let trace = record
            .traceparent()
            .map(|t| t.to_string())
            .unwrap_or_default();
        match kind {
            "OrderCreated" => tracing::info!(order_id, %trace, "notify: we received your order"),
            "PaymentConfirmed" => {
                tracing::info!(order_id, %trace, "notify: your payment went through");
            }
            other => tracing::warn!(kind = other, "unknown event"),
        }
    }
    consumer.close().await?;
    Ok(())
}
