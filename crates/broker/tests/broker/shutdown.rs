//! Graceful shutdown: streams end with UNAVAILABLE, logs close cleanly, nothing is lost.

use runnel_proto::pb::ErrorCode;
use tokio_stream::StreamExt as _;

use runnel_test_support::prelude::*;

#[tokio::test]
async fn shutdown_ends_subscriptions_and_closes_logs_cleanly() {
    let mut b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    for p in 0..2 {
        produce(&b, "t", p, vec![batch(10, 1_000)]).await;
    }
    let mut s = subscribe(&b, "t", 0, None).await;
    within(s.next()).await.unwrap().unwrap();
    b.signal_stop();
    let e = within(s.next()).await.unwrap().unwrap_err();
    assert_status(&e, ErrorCode::BrokerShuttingDown, "shutting down");
    let (config, _dir) = b.stop().await;
    for p in 0..2 {
        let marker =
            runnel_storage::partition_dir(&config.data_dir, "t", p).join(".clean-shutdown");
        assert!(marker.exists(), "partition {p} closed cleanly");
    }
}

#[tokio::test]
async fn health_turns_not_serving_at_shutdown_and_watchers_do_not_hold_it_up() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut b = TestBroker::start_with(|c| c.shutdown.deadline_ms = 60_000).await;
    let mut watch = HealthClient::new(b.channel())
        .watch(HealthCheckRequest {
            service: "runnel.v1.ProduceService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = within(watch.next()).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    b.signal_stop();
    let next = within(watch.next()).await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // The watch ends, so shutdown does not wait for the 60 s deadline (the fixture's stop
    // would time out after 30 s if it did).
    assert!(within(watch.next()).await.is_none());
    b.stop().await;
}
