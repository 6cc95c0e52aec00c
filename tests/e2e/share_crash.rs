//! Share groups across `kill -9`: eight chaotic members (accepting, releasing, rejecting,
//! forgetting, crashing) work through 100,000 records while the broker is killed and
//! restarted in the middle; every record ends accepted or dead-lettered, none is delivered
//! again once its acceptance was confirmed, and the share gauges are on `/metrics`.

use std::time::Duration;

use runnel_test_support::prelude::*;
use runnel_test_support::share::{Chaos, set_up_queue};
use runnel_test_support::within;

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
    set_up_queue(&b, GROUP, RECORDS).await;
    let chaos = Chaos::start(&b, GROUP, 8);

    // Kill the broker once a third of the records are done, and start it again.
    chaos.wait_done(&b, RECORDS / 3).await;
    let mut b = b;
    b.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = b.start_again().await;
    chaos.broker.send((*b).clone()).expect("members listen");
    chaos.wait_done(&b, RECORDS).await;
    let (_, ledger) = chaos.finish(&b, RECORDS).await;
    assert!(ledger.failed_fetches > 0, "the broker was down for a while");

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
