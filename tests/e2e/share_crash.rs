//! Share groups across `kill -9`: eight chaotic members (accepting, releasing, rejecting,
//! forgetting, crashing) work through 100,000 records while the broker is killed and
//! restarted in the middle; every record ends accepted or dead-lettered, none is delivered
//! again once its acceptance was confirmed, and the share gauges are on `/metrics`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_proto::pb;
use runnel_test_support::prelude::*;
use runnel_test_support::share::{Ledger, chaotic_consumer, check, done_records, values_of};
use runnel_test_support::within;
use tokio::sync::watch;

const GROUP: &str = "workers";
const RECORDS: u64 = 100_000;

#[tokio::test]
async fn share_groups_account_for_every_record_across_kill_9() {
    let b = Broker::start_with(&[
        "--set",
        "shares.start=earliest",
        "--set",
        "shares.lock_ms=1000",
        "--set",
        "groups.lag_refresh_interval_ms=100",
    ])
    .await;
    create_topic(&b, "q", 2).await;
    create_topic(&b, "q.dlq", 1).await;
    b.share()
        .alter_share_group(pb::AlterShareGroupRequest {
            group_id: GROUP.into(),
            settings: Some(pb::ShareGroupSettings {
                dead_letter_topic: Some("q.dlq".into()),
                max_deliveries: Some(3),
                backoff_ms: vec![5, 20],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("alter the share group");
    for chunk in 0..RECORDS / 1000 {
        let partition = (chunk % 2) as u32;
        let r = produce_acked(
            &b,
            "q",
            partition,
            pb::Acks::Durable,
            vec![batch_of("r", chunk * 1000, 1000)],
        )
        .await;
        assert!(r.error.is_none(), "{r:?}");
    }

    let (current, broker) = watch::channel((*b).clone());
    let (stop_tx, stop) = watch::channel(false);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let consumers: Vec<_> = (0..8)
        .map(|i| {
            let run = chaotic_consumer(
                broker.clone(),
                GROUP.into(),
                "q".into(),
                i,
                stop.clone(),
                ledger.clone(),
            );
            tokio::spawn(run)
        })
        .collect();

    // Kill the broker once a third of the records are done, and start it again.
    within(async {
        while done_records(&b, GROUP).await.unwrap_or(0) < RECORDS / 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut b = b;
    b.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = b.start_again().await;
    current.send((*b).clone()).expect("consumers listen");

    within(async {
        while done_records(&b, GROUP).await != Some(RECORDS) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop_tx.send(true).expect("consumers listen");
    for c in consumers {
        c.await.expect("a consumer");
    }
    let dead = values_of(&b, "q.dlq", 0).await;
    let produced: BTreeSet<String> = (0..RECORDS).map(|i| format!("r-{i}")).collect();
    {
        let ledger = ledger.lock().expect("ledger");
        check(&ledger, &dead, &produced);
        assert!(ledger.failed_fetches > 0, "the broker was down for a while");
    }

    // The gauges: nothing in flight and nothing left to deliver.
    let text = within(async {
        loop {
            let text = b.scrape_metrics();
            if text.contains(
                "runnel_share_records_in_flight{group=\"workers\",topic=\"q\",partition=\"1\"} 0",
            ) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        text.contains("runnel_share_lag_records{group=\"workers\",topic=\"q\",partition=\"0\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("runnel_share_records_acquired_total{"),
        "{text}"
    );
    assert!(
        text.contains("runnel_share_records_dead_lettered_total{"),
        "{text}"
    );
}
