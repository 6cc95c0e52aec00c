//! Configurable limits: past one, the caller waits or gets RESOURCE_EXHAUSTED naming it.

use runnel_proto::pb::{self, ErrorCode};
use tokio_stream::StreamExt as _;

use runnel_test_support::prelude::*;

#[tokio::test]
async fn subscriptions_past_the_limit_are_refused_until_one_closes() {
    let b = TestBroker::start_with(|c| c.limits.max_subscriptions = 1).await;
    create_topic(&b, "t", 1).await;
    let req = || pb::SubscribeRequest {
        topic: "t".into(),
        partition: 0,
        start: None,
        max_bytes: 0,
        ..Default::default()
    };
    let mut first = b.consume().subscribe(req()).await.unwrap().into_inner();
    within(first.next()).await.unwrap().unwrap();
    let e = b.consume().subscribe(req()).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::LimitExceeded,
        "max_subscriptions (1) reached",
    );
    drop(first);
    // The slot frees once the broker notices the client left.
    within(async {
        loop {
            match b.consume().subscribe(req()).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn requests_over_max_request_bytes_are_refused_by_grpc() {
    let b = TestBroker::start_with(|c| c.limits.max_request_bytes = 64 << 10).await;
    create_topic(&b, "t", 1).await;
    let big = batch(5000, 0);
    assert!(big.len() > 64 << 10);
    let e = b
        .produce()
        .produce(pb::ProduceRequest {
            request_id: 1,
            topic: "t".into(),
            acks: 0,
            partitions: vec![entry(0, vec![big])],
        })
        .await
        .unwrap_err();
    assert_too_large(&e);
    assert!(fetch_all(&b, "t", 0, 0).await.is_empty());
}

#[tokio::test]
async fn produce_in_flight_bytes_limit_refuses_after_its_wait() {
    let b = TestBroker::start_with(|c| {
        c.limits.produce_max_in_flight_bytes = 4096;
        c.limits.produce_in_flight_wait_ms = 0;
    })
    .await;
    create_topic(&b, "t", 1).await;
    // Hold the whole budget with durable produces on a topic whose fsyncs we cannot stall,
    // so instead saturate with many concurrent requests and check that every answer is
    // either a success or LIMIT_EXCEEDED naming the limit, and that nothing else happens.
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut p = b.produce();
        tasks.push(tokio::spawn(async move {
            p.produce(pb::ProduceRequest {
                request_id: 1,
                topic: "t".into(),
                acks: pb::Acks::Durable as i32,
                partitions: vec![entry(0, vec![batch(100, 0)])],
            })
            .await
        }));
    }
    let mut ok = 0u64;
    for t in tasks {
        match within(t).await.unwrap() {
            Ok(r) => {
                assert!(r.into_inner().results[0].error.is_none());
                ok += 1;
            }
            Err(e) => assert_status(
                &e,
                ErrorCode::LimitExceeded,
                "produce_max_in_flight_bytes (4096)",
            ),
        }
    }
    assert!(ok >= 1);
    let stored: usize = fetch_all(&b, "t", 0, 0).await.len();
    assert_eq!(stored as u64, ok, "refused requests stored nothing");
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let b = TestBroker::start_with(|c| c.limits.max_connections = 1).await;
    let connect = || {
        let uri = format!("http://{}", b.addr());
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .unwrap()
            .connect_lazy();
        pb::admin_service_client::AdminServiceClient::new(channel)
    };
    // The first connection takes the only slot (the fixture's own channel is never used).
    let mut first = connect();
    within(first.list_topics(pb::ListTopicsRequest {}))
        .await
        .unwrap();
    let mut second = connect();
    let call = tokio::spawn(async move { second.list_topics(pb::ListTopicsRequest {}).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !call.is_finished(),
        "the second connection waits in the backlog"
    );
    drop(first);
    within(call).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_fetch_reads_at_most_its_share_of_the_read_buffer() {
    let b = TestBroker::start_with(|c| {
        c.limits.read_buffer_bytes = 1 << 20;
        c.limits.fetch_max_bytes = 8 << 20;
        c.limits.fetch_partition_max_bytes = 8 << 20;
    })
    .await;
    create_topic(&b, "t", 1).await;
    let one = batch(15_000, 0);
    assert!(
        one.len() > 300 << 10 && one.len() < 1 << 20,
        "{}",
        one.len()
    );
    for _ in 0..8 {
        produce(&b, "t", 0, vec![one.clone()]).await;
    }
    let r = b
        .consume()
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition("t", 0, 0)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read: usize = r.results[0].batches.iter().map(|b| b.len()).sum();
    assert!(!r.results[0].batches.is_empty());
    assert!(
        read <= (1 << 20) + one.len(),
        "{read} bytes read with a 1 MiB read buffer"
    );
    assert!(r.results[0].batches.len() < 8, "the fetch asked for all 8");
}
