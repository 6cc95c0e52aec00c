//! The order service: publishes `OrderCreated` events to `shop.orders`, keyed by order id (so
//! every event of an order lands on the same partition, in order), each with a fresh W3C
//! trace context in its `traceparent` header.
//!
//! ```sh
//! cargo run -p runnel-client --example order_service -- 10
//! ```

mod common;

use runnel_client::{ProducerConfig, ProducerRecord, TraceParent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let count: u32 = std::env::args().nth(1).map_or(Ok(10), |a| a.parse())?;
    let client = common::connect().await?;
    let producer = client.producer(ProducerConfig::default()).await?;

    let mut deliveries = Vec::new();
    for i in 1..=count {
        let order_id = format!("order-{}-{i}", std::process::id());
        let event = common::encode(
            "OrderCreated",
            &[
                ("order_id", order_id.clone()),
                ("customer", format!("customer-{}", i % 4)),
                ("total_cents", (1_000 + 250 * i).to_string()),
                ("sku", format!("sku-{}", i % 3)),
            ],
        );
        let trace = TraceParent::generate();
        let record = ProducerRecord::new(common::ORDERS, event)
            .key(order_id.clone())
            .traceparent(&trace);
        // `send` waits only for room in the buffer; the delivery resolves later.
        deliveries.push((order_id, trace, producer.send(record).await?));
    }
    for (order_id, trace, delivery) in deliveries {
        let stored = delivery.await?;
        tracing::info!(
            %order_id,
            partition = stored.partition,
            offset = stored.offset,
            trace_id = %&trace.to_string()[3..35],
            "OrderCreated published"
        );
    }
    // Deliver anything still pending (nothing here) and report failures.
    producer.close().await?;
    Ok(())
}
