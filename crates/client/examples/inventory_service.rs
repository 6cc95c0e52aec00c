//! The inventory service: consumes `shop.orders` in the `inventory` group and reserves stock for
//! each order. Offsets are committed automatically (every 5 s, on rebalance and on close).
//!
//! ```sh
//! cargo run -p runnel-client --example inventory_service
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
            tracing::info!(?change, "inventory: partitions changed");
        })),
        ..ConsumerConfig::group("inventory")
    })?;
    consumer.subscribe(&[common::ORDERS])?;
    tracing::info!("inventory service waiting for orders (Ctrl-C to stop)");
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
        if kind == "OrderCreated" {
            tracing::info!(
                order_id = common::field(&fields, "order_id").unwrap_or("?"),
                sku = common::field(&fields, "sku").unwrap_or("?"),
                partition = record.partition,
                offset = record.offset,
                "stock reserved"
            );
        }
    }
    // Commits what was consumed and leaves the group, so its partitions move at once.
    consumer.close().await?;
    Ok(())
}
