//! Quotas per client id: set, listed and removed through the admin API, kept across restarts,
//! and enforced by delaying answers (never by failing them).
//!
//! The throttling tests assert lower bounds only: a throttled client cannot be faster than
//! its rate allows, whatever the machine; how fast an unthrottled one is belongs to
//! benchmarks.

use std::time::{Duration, Instant};

use runnel_proto::pb::{self, ErrorCode};
use tokio_stream::StreamExt as _;
use tonic::Request;

use runnel_test_support::prelude::*;

/// `message` sent as client id `id`.
fn from<T>(id: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("runnel-client-id", id.parse().expect("ascii"));
    r
}

fn rates(produce: Option<u64>, fetch: Option<u64>, requests: Option<u64>) -> pb::QuotaRates {
    pb::QuotaRates {
        produce_bytes_per_sec: produce,
        fetch_bytes_per_sec: fetch,
        requests_per_sec: requests,
    }
}

async fn set(b: &TestBroker, id: &str, r: pb::QuotaRates) {
    b.admin()
        .set_quota(pb::SetQuotaRequest {
            client_id: id.into(),
            rates: Some(r),
            ..Default::default()
        })
        .await
        .expect("set quota");
}

async fn list(b: &TestBroker) -> pb::ListQuotasResponse {
    b.admin()
        .list_quotas(pb::ListQuotasRequest {})
        .await
        .expect("list quotas")
        .into_inner()
}

#[tokio::test]
async fn quotas_are_set_listed_kept_across_a_restart_and_deleted() {
    let b = TestBroker::start_with(|c| c.quotas.fetch_bytes_per_sec = 5_000_000).await;
    set(&b, "billing", rates(Some(1 << 20), None, Some(0))).await;
    set(&b, "", rates(None, None, Some(50))).await;
    let listed = list(&b).await;
    assert_eq!(
        listed.defaults,
        Some(rates(Some(0), Some(5_000_000), Some(0)))
    );
    let ids: Vec<_> = listed
        .clients
        .iter()
        .map(|c| c.client_id.as_str())
        .collect();
    assert_eq!(ids, ["", "billing"], "sorted by client id");
    let billing = &listed.clients[1];
    assert_eq!(billing.rates, Some(rates(Some(1 << 20), None, Some(0))));
    assert_eq!(
        billing.effective,
        Some(rates(Some(1 << 20), Some(5_000_000), Some(0))),
        "the default fills what is not set"
    );

    let b = b.restart().await;
    assert_eq!(list(&b).await.clients, listed.clients, "durable");

    b.admin()
        .delete_quota(pb::DeleteQuotaRequest {
            client_id: "billing".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert_eq!(list(&b).await.clients.len(), 1);
    let e = b
        .admin()
        .delete_quota(pb::DeleteQuotaRequest {
            client_id: "billing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::UnknownQuota,
        "client id \"billing\" has no quotas of its own",
    );
}

#[tokio::test]
async fn bad_client_ids_and_rates_are_refused_naming_the_field_and_limit() {
    let b = TestBroker::start().await;
    let long = "x".repeat(256);
    let e = b
        .admin()
        .set_quota(pb::SetQuotaRequest {
            client_id: long.clone(),
            rates: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "client_id is 256 bytes, more than 255",
    );
    let e = b
        .admin()
        .set_quota(pb::SetQuotaRequest {
            client_id: "a".into(),
            rates: Some(rates(None, Some(1 << 41), None)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "rates.fetch_bytes_per_sec 2199023255552 is more than 1099511627776",
    );
    // A call naming a client id that is too long is refused before it is served.
    let e = b
        .admin()
        .list_topics(from(&long, pb::ListTopicsRequest {}))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "the runnel-client-id header is 256 bytes, more than 255",
    );
    assert!(list(&b).await.clients.is_empty(), "nothing was set");
}

/// A broker whose answers wait once a client is 100 ms ahead of its rate.
async fn throttling_broker() -> TestBroker {
    TestBroker::start_with(|c| c.quotas.burst_ms = 100).await
}

#[tokio::test]
async fn a_producer_over_its_byte_rate_is_slowed_to_it_and_loses_nothing() {
    let b = throttling_broker().await;
    create_topic(&b, "t", 1).await;
    let rate = 200_000;
    set(&b, "slow", rates(Some(rate), None, None)).await;
    let one = batch(500, 0);
    let mut sent = 0u64;
    let started = Instant::now();
    for i in 0..8 {
        let r = b
            .produce()
            .produce(from(
                "slow",
                pb::ProduceRequest {
                    request_id: i,
                    topic: "t".into(),
                    acks: pb::Acks::Written as i32,
                    partitions: vec![entry(0, vec![one.clone()])],
                },
            ))
            .await
            .expect("throttled, not failed")
            .into_inner();
        assert!(r.results[0].error.is_none(), "{r:?}");
        sent += one.len() as u64;
    }
    let least = Duration::from_secs_f64(sent as f64 / rate as f64) - Duration::from_millis(100);
    let took = started.elapsed();
    assert!(took >= least, "{sent} bytes at {rate} B/s took {took:?}");
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), 8, "everything stored");
}

#[tokio::test]
async fn a_consumer_over_its_byte_rate_gets_every_batch_at_that_rate() {
    let b = throttling_broker().await;
    create_topic(&b, "t", 1).await;
    let one = batch(500, 0);
    for _ in 0..6 {
        produce(&b, "t", 0, vec![one.clone()]).await;
    }
    let rate = 150_000;
    set(&b, "reader", rates(None, Some(rate), None)).await;

    // Fetch: one batch per call.
    let started = Instant::now();
    let mut offset = 0;
    let mut read = 0u64;
    for _ in 0..6 {
        let mut p = fetch_partition("t", 0, offset);
        p.max_bytes = 1;
        let r = b
            .consume()
            .fetch(from(
                "reader",
                pb::FetchRequest {
                    partitions: vec![p],
                    ..Default::default()
                },
            ))
            .await
            .expect("fetch")
            .into_inner();
        let result = &r.results[0];
        assert_eq!(result.batches.len(), 1, "{:?}", result.error);
        read += result.batches[0].len() as u64;
        offset = result.next_offset;
    }
    let least = Duration::from_secs_f64(read as f64 / rate as f64) - Duration::from_millis(100);
    let took = started.elapsed();
    assert!(
        took >= least,
        "Fetch: {read} bytes at {rate} B/s took {took:?}"
    );

    // Subscribe: the same client id, so its debt carries over; a fresh one pays from zero.
    set(&b, "streamer", rates(None, Some(rate), None)).await;
    let started = Instant::now();
    let mut stream = b
        .consume()
        .subscribe(from(
            "streamer",
            pb::SubscribeRequest {
                topic: "t".into(),
                partition: 0,
                start: Some(pb::StartPosition {
                    position: Some(pb::start_position::Position::Offset(0)),
                }),
                max_bytes: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let mut streamed = 0u64;
    let mut batches = 0;
    while batches < 6 {
        let r = within(stream.next()).await.expect("open").expect("item");
        batches += r.batches.len();
        streamed += r.batches.iter().map(|b| b.len() as u64).sum::<u64>();
    }
    let least = Duration::from_secs_f64(streamed as f64 / rate as f64) - Duration::from_millis(100);
    // The last batch is sent before its wait.
    let least = least.saturating_sub(Duration::from_secs_f64(one.len() as f64 / rate as f64));
    let took = started.elapsed();
    assert!(
        took >= least,
        "Subscribe: {streamed} bytes at {rate} B/s took {took:?}"
    );
}

#[tokio::test]
async fn calls_over_the_request_rate_wait_their_turn() {
    let b = throttling_broker().await;
    let rate = 20;
    set(&b, "chatty", rates(None, None, Some(rate))).await;
    let started = Instant::now();
    for _ in 0..12 {
        b.admin()
            .list_topics(from("chatty", pb::ListTopicsRequest {}))
            .await
            .expect("delayed, not failed");
    }
    // 12 calls at 20/s: 0.6 s, less the 0.1 s burst.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "12 calls at {rate}/s took {took:?}"
    );
}

#[tokio::test]
async fn a_principal_s_quota_paces_all_its_calls_whatever_client_ids_they_name() {
    use base64::Engine as _;
    let b = TestBroker::start_with(|c| {
        c.quotas.burst_ms = 100;
        c.auth.enabled = true;
        c.auth.bootstrap_password = "admin-password".into();
    })
    .await;
    let admin = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:admin-password")
    );
    fn authed<T>(message: T, authorization: &str) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert("authorization", authorization.parse().expect("ascii"));
        r
    }
    let rate = 20;
    let quota = pb::SetQuotaRequest {
        principal: "User:admin".into(),
        rates: Some(rates(None, None, Some(rate))),
        ..Default::default()
    };
    b.admin()
        .set_quota(authed(quota, &admin))
        .await
        .expect("set a principal's quota");
    let listed = b
        .admin()
        .list_quotas(authed(pb::ListQuotasRequest {}, &admin))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.clients.len(), 1);
    assert_eq!(listed.clients[0].principal, "User:admin");
    assert_eq!(listed.clients[0].client_id, "");

    // 12 calls under 12 client ids: one budget at 20/s, 0.6 s less the 0.1 s burst.
    let started = Instant::now();
    for i in 0..12 {
        let mut r = authed(pb::ListTopicsRequest {}, &admin);
        r.metadata_mut()
            .insert("runnel-client-id", format!("c{i}").parse().expect("ascii"));
        b.admin().list_topics(r).await.expect("delayed, not failed");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "12 calls at {rate}/s took {took:?}"
    );

    let both = pb::SetQuotaRequest {
        client_id: "c".into(),
        principal: "User:admin".into(),
        rates: Some(rates(None, None, Some(1))),
    };
    let e = b.admin().set_quota(authed(both, &admin)).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "client_id and principal are both set",
    );
    let bad = pb::DeleteQuotaRequest {
        principal: "alice".into(),
        ..Default::default()
    };
    let e = b
        .admin()
        .delete_quota(authed(bad, &admin))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "principal \"alice\" must be of the form User:<name>",
    );
}
