//! Consumer groups against the real binary: committed offsets survive `kill -9` (and a torn
//! append left in their internal log), and the lag gauges on `/metrics` match the logs.
//! Membership and assignment are tested in-process (`crates/broker/tests/broker/groups.rs`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runnel_proto::pb;

use crate::harness::*;

async fn commit(b: &Broker, group: &str, offsets: &[(u32, u64, &str)]) {
    let r = b
        .groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: group.into(),
            member_id: String::new(),
            member_epoch: 0,
            offsets: offsets
                .iter()
                .map(|(p, o, m)| pb::OffsetCommit {
                    topic: "t".into(),
                    partition: *p,
                    offset: *o,
                    metadata: (*m).into(),
                })
                .collect(),
        })
        .await
        .expect("commit")
        .into_inner();
    assert!(r.results.iter().all(|r| r.error.is_none()), "{r:?}");
}

/// The value of one series in a scrape, if present.
fn series(text: &str, name: &str, group: &str, partition: u32) -> Option<f64> {
    let prefix = format!("{name}{{group=\"{group}\",topic=\"t\",partition=\"{partition}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes until `done` holds (the gauges refresh every 100 ms here).
async fn scrape_until(b: &Broker, done: impl Fn(&str) -> bool) -> String {
    within(async {
        loop {
            let text = b.scrape_metrics();
            if done(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn committed_offsets_survive_kill_9_and_the_lag_gauges_match_the_logs() {
    let b = Broker::start_with(&["--set", "groups.lag_refresh_interval_ms=100"]).await;
    create_topic(&b, "t", 3).await;
    for (p, n) in [(0, 10), (1, 20), (2, 30)] {
        produce(&b, "t", p, vec![batch_of("r", 0, n)]).await;
    }
    commit(&b, "g", &[(0, 3, "three"), (1, 20, ""), (2, 25, "")]).await;
    commit(&b, "other", &[(0, 10, "done")]).await;
    commit(&b, "g", &[(2, 27, "later")]).await;

    let mut b = b;
    b.kill9();
    // A crash in the middle of an append leaves a torn batch at the end of the internal
    // log's active segment; recovery cuts it as it does a partition's.
    let log_dir = b.data_dir.join("internal/consumer_offsets");
    let active = std::fs::read_dir(&log_dir)
        .expect("the committed offsets log")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("an active segment");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .expect("active segment")
        .write_all(b"torn-tail")
        .expect("append a torn batch");
    let b = b.start_again().await;
    let log = b.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("storage recovery repair") && l.contains("consumer_offsets")),
        "{log}"
    );

    let g = committed_offsets(&b, "g").await;
    let want: BTreeMap<u32, (u64, String)> = [
        (0, (3, "three".to_owned())),
        (1, (20, String::new())),
        (2, (27, "later".to_owned())),
    ]
    .into();
    assert_eq!(g, want);
    assert_eq!(
        committed_offsets(&b, "other").await[&0],
        (10, "done".to_owned())
    );

    // Lag = log end - committed offset; the age is that of the record at the committed
    // offset (harness batches are stamped 1_700_000_000_000 + offset).
    let text = scrape_until(&b, |t| {
        series(t, "runnel_group_lag_records", "g", 0).is_some()
            && series(t, "runnel_group_lag_records", "other", 0).is_some()
    })
    .await;
    let lag = |g: &str, p: u32| series(&text, "runnel_group_lag_records", g, p);
    assert_eq!(
        (lag("g", 0), lag("g", 1), lag("g", 2), lag("other", 0)),
        (Some(7.0), Some(0.0), Some(3.0), Some(0.0)),
        "{text}"
    );
    let committed = |g: &str, p: u32| series(&text, "runnel_group_committed_offset", g, p);
    assert_eq!(
        (committed("g", 0), committed("g", 2), committed("other", 0)),
        (Some(3.0), Some(27.0), Some(10.0)),
        "{text}"
    );
    let age = |g: &str, p: u32| series(&text, "runnel_group_oldest_unconsumed_age_seconds", g, p);
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expected = now_s - 1_700_000_000.003;
    let got = age("g", 0).expect("age of g/0");
    assert!(
        (got - expected).abs() < 600.0,
        "age {got}, expected about {expected}"
    );
    assert_eq!(age("g", 1), Some(0.0), "no lag, no age");

    // DescribeGroup agrees with the gauges.
    let d = b
        .groups()
        .describe_group(pb::DescribeGroupRequest { group: "g".into() })
        .await
        .unwrap()
        .into_inner();
    let lags: Vec<Option<u64>> = d.partitions.iter().map(|p| p.lag).collect();
    assert_eq!(lags, [Some(7), Some(0), Some(3)]);

    // New records raise the lag; a deleted group's series disappear.
    produce(&b, "t", 1, vec![batch_of("r", 20, 5)]).await;
    b.groups()
        .delete_group(pb::DeleteGroupRequest {
            group: "other".into(),
        })
        .await
        .expect("delete group");
    let text = scrape_until(&b, |t| {
        series(t, "runnel_group_lag_records", "g", 1) == Some(5.0)
    })
    .await;
    assert!(!text.contains("group=\"other\""), "{text}");
    assert!(text.contains("runnel_rpc_requests_total{rpc=\"DeleteGroup\",code=\"OK\"} 1"));
}

#[tokio::test]
async fn without_partition_labels_the_gauges_are_per_topic() {
    let b = Broker::start_with(&[
        "--set",
        "groups.lag_refresh_interval_ms=100",
        "--set",
        "metrics.partition_labels=false",
    ])
    .await;
    create_topic(&b, "t", 3).await;
    for (p, n) in [(0, 10), (1, 20), (2, 30)] {
        produce(&b, "t", p, vec![batch_of("r", 0, n)]).await;
    }
    commit(&b, "g", &[(0, 3, ""), (1, 20, ""), (2, 25, "")]).await;
    let text = scrape_until(&b, |t| t.contains("runnel_group_lag_records{")).await;
    assert!(
        text.contains("runnel_group_lag_records{group=\"g\",topic=\"t\"} 12"),
        "7 + 0 + 5 records behind:\n{text}"
    );
    assert!(!text.contains("partition=\""), "{text}");
    assert!(!text.contains("runnel_group_committed_offset{"), "{text}");
    assert!(
        text.contains("runnel_records_in_total{topic=\"t\"} 60"),
        "{text}"
    );
}
