//! The payment service: consumes `shop.orders` in the `payment` group, takes each payment and
//! publishes `PaymentConfirmed` to `shop.payments` with the same key, continuing the order's
//! trace. Offsets are committed by hand after the confirmation is stored, so a crash
//! replays the order rather than losing the payment (at least once).
//!
//! ```sh
//! cargo run -p runnel-client --example payment_service
//! ```

mod common;

use futures_util::StreamExt as _;
use runnel_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Rebalance, TraceParent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let client = common::connect().await?;
    let producer = client.producer(ProducerConfig::default()).await?;
    let mut consumer = client.consumer(ConsumerConfig {
        auto_commit_interval: None,
        on_rebalance: Some(std::sync::Arc::new(|change: &Rebalance| {
            tracing::info!(?change, "payment: partitions changed");
        })),
        ..ConsumerConfig::group("payment")
    })?;
    consumer.subscribe(&[common::ORDERS])?;
    tracing::info!("payment service waiting for orders (Ctrl-C to stop)");

    loop {
        let record = tokio::select! {
            r = consumer.next() => match r {
                Some(r) => r?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let text = record.value_str().unwrap_or_default().to_owned();
        let (kind, fields) = common::decode(&text);
        if kind != "OrderCreated" {
            continue;
        }
        let order_id = common::field(&fields, "order_id").unwrap_or("?").to_owned();
        let total = common::field(&fields, "total_cents")
            .unwrap_or("0")
            .to_owned();
        // Continue the trace: same trace id, a new span for this service's work.
        let trace = record
            .traceparent()
            .map_or_else(TraceParent::generate, |t| t.child());
        let confirmed = common::encode(
            "PaymentConfirmed",
            &[("order_id", order_id.clone()), ("amount_cents", total)],
        );
        let stored = producer
            .send_and_wait(
                ProducerRecord::new(common::PAYMENTS, confirmed)
                    .key(order_id.clone())
                    .traceparent(&trace),
            )
            .await?;
        consumer.commit_record(&record).await?;
        tracing::info!(%order_id, offset = stored.offset, trace = %trace, "PaymentConfirmed published");
    }
    producer.close().await?;
    consumer.close().await?;
    Ok(())
}
