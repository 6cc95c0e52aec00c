//! ShareService: records acquired and acknowledged one by one by many members, lock expiry,
//! backoff, the delivery limit, durability across restarts, and the errors of acknowledging
//! what a member does not hold.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use runnel_proto::pb::{self, AckType, ErrorCode};

use runnel_test_support::prelude::*;
use runnel_test_support::share::{Chaos, set_up_queue};

const GROUP: &str = "workers";

/// A broker whose share groups expire locks and retry quickly.
async fn share_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.shares.start = runnel_broker::config::ShareStartSetting::Earliest;
    })
    .await
}

fn fetch_req(member: &str, topic: &str, max_records: u32, wait_ms: u32) -> pb::ShareFetchRequest {
    pb::ShareFetchRequest {
        group_id: GROUP.into(),
        member_id: member.into(),
        topics: vec![topic.into()],
        max_records,
        max_wait_ms: wait_ms,
        format: pb::RecordFormat::Records.into(),
        record_limit: true,
        ..Default::default()
    }
}

/// Acquires up to `max` records for `member`: (partition, offset, delivery count, value).
async fn acquire(
    b: &TestBroker,
    member: &str,
    topic: &str,
    max: u32,
    wait_ms: u32,
) -> Vec<(u32, u64, u32, String)> {
    let resp = b
        .share()
        .share_fetch(fetch_req(member, topic, max, wait_ms))
        .await
        .expect("share fetch")
        .into_inner();
    let mut out = Vec::new();
    for p in resp.partitions {
        assert_eq!(p.records.len(), p.delivery_counts.len());
        let acquired: u64 = p
            .acquired
            .iter()
            .map(|a| a.last_offset - a.first_offset + 1)
            .sum();
        assert_eq!(
            acquired,
            p.records.len() as u64,
            "every acquired record is returned"
        );
        for (r, d) in p.records.iter().zip(&p.delivery_counts) {
            let value = String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap();
            out.push((p.partition, r.offset, *d, value));
        }
    }
    out
}

fn ack(topic: &str, partition: u32, offset: u64, kind: AckType) -> pb::Acknowledgement {
    pb::Acknowledgement {
        topic: topic.into(),
        partition,
        first_offset: offset,
        last_offset: offset,
        r#type: kind.into(),
        ..Default::default()
    }
}

async fn acknowledge(
    b: &TestBroker,
    member: &str,
    acks: Vec<pb::Acknowledgement>,
) -> Vec<Option<pb::Error>> {
    b.share()
        .share_acknowledge(pb::ShareAcknowledgeRequest {
            group_id: GROUP.into(),
            member_id: member.into(),
            acknowledgements: acks,
        })
        .await
        .expect("acknowledge")
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.error)
        .collect()
}

async fn alter(b: &TestBroker, settings: pb::ShareGroupSettings) -> Result<(), tonic::Status> {
    b.share()
        .alter_share_group(pb::AlterShareGroupRequest {
            group_id: GROUP.into(),
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// A share broker with the topic `jobs` (1 partition) and the group's `settings`.
async fn jobs_broker(settings: pb::ShareGroupSettings) -> TestBroker {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    alter(&b, settings).await.unwrap();
    b
}

async fn produce_values(b: &TestBroker, topic: &str, partition: u32, tag: &str, n: u64) {
    let r = produce(b, topic, partition, vec![batch_of(tag, 0, n)]).await;
    assert!(r.error.is_none(), "{r:?}");
}

#[tokio::test]
async fn members_share_records_and_accepted_ones_are_never_delivered_again_after_a_restart() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 2).await;
    produce_values(&b, "jobs", 0, "a", 50).await;
    produce_values(&b, "jobs", 1, "b", 50).await;

    let mut seen = BTreeSet::new();
    for round in 0..10 {
        for member in ["m1", "m2", "m3"] {
            let got = acquire(&b, member, "jobs", 7, 0).await;
            let acks: Vec<_> = got
                .iter()
                .map(|(p, o, d, _)| {
                    assert_eq!(*d, 1, "round {round}: first delivery");
                    assert!(seen.insert((*p, *o)), "{p}/{o} delivered twice");
                    ack("jobs", *p, *o, AckType::Accept)
                })
                .collect();
            if !acks.is_empty() {
                let results = acknowledge(&b, member, acks).await;
                assert!(results.iter().all(Option::is_none), "{results:?}");
            }
        }
    }
    assert_eq!(seen.len(), 100, "every record delivered once");

    let b = b.restart().await;
    assert!(acquire(&b, "m1", "jobs", 100, 0).await.is_empty());
    produce_values(&b, "jobs", 0, "c", 3).await;
    let got = acquire(&b, "m1", "jobs", 100, 5_000).await;
    let offsets: Vec<_> = got.iter().map(|(p, o, _, _)| (*p, *o)).collect();
    assert_eq!(offsets, vec![(0, 50), (0, 51), (0, 52)]);
    assert_eq!(got[0].3, "c-0");
}

#[tokio::test]
async fn records_held_at_a_restart_are_delivered_again_and_released_ones_keep_their_count() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "a", 10).await;
    let got = acquire(&b, "m1", "jobs", 10, 0).await;
    assert_eq!(got.len(), 10);
    let mut release = ack("jobs", 0, 3, AckType::Release);
    release.delay_ms = Some(0);
    let results = acknowledge(&b, "m1", vec![ack("jobs", 0, 0, AckType::Accept), release]).await;
    assert!(results.iter().all(Option::is_none), "{results:?}");

    let b = b.restart().await;
    let got = acquire(&b, "m2", "jobs", 100, 0).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        offsets,
        (1..10).collect::<Vec<_>>(),
        "all but the accepted one"
    );
    let counts: Vec<u32> = got.iter().map(|g| g.2).collect();
    let mut expected = vec![1; 9];
    expected[2] = 2; // offset 3 was released after one delivery
    assert_eq!(counts, expected);
}

#[tokio::test]
async fn acknowledging_what_the_member_does_not_hold_is_refused_naming_the_record() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "a", 10).await;
    acquire(&b, "m1", "jobs", 5, 0).await;

    let results = acknowledge(
        &b,
        "m2",
        vec![
            ack("jobs", 0, 2, AckType::Accept),
            ack("jobs", 0, 7, AckType::Accept),
            ack("jobs", 1, 0, AckType::Accept),
        ],
    )
    .await;
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "another member holds it",
    );
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "jobs/0 offset 2",
    );
    assert_inline(
        results[1].as_ref(),
        ErrorCode::InvalidRecordState,
        "never acquired",
    );
    assert_inline(
        results[2].as_ref(),
        ErrorCode::InvalidRecordState,
        "never acquired",
    );

    // A range that is partly held changes nothing.
    let mut range = ack("jobs", 0, 3, AckType::Accept);
    range.last_offset = 6;
    let results = acknowledge(&b, "m1", vec![range]).await;
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "offset 5",
    );
    let results = acknowledge(&b, "m1", vec![ack("jobs", 0, 3, AckType::Accept)]).await;
    assert!(results[0].is_none(), "{results:?}");
    let results = acknowledge(&b, "m1", vec![ack("jobs", 0, 3, AckType::Accept)]).await;
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "already acknowledged",
    );

    let err = b
        .share()
        .share_acknowledge(pb::ShareAcknowledgeRequest {
            group_id: GROUP.into(),
            member_id: "m1".into(),
            acknowledgements: vec![ack("jobs", 0, 3, AckType::Unspecified)],
        })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::InvalidRequest, "acknowledgements[0].type");
}

#[tokio::test]
async fn an_expired_lock_redelivers_and_the_late_acknowledgement_is_refused() {
    let b = jobs_broker(pb::ShareGroupSettings {
        lock_ms: Some(200),
        ..Default::default()
    })
    .await;
    produce_values(&b, "jobs", 0, "a", 1).await;
    let got = acquire(&b, "slow", "jobs", 1, 0).await;
    assert_eq!(got[0].2, 1);
    // The record comes back to another member once the lock expired.
    let again = acquire(&b, "fast", "jobs", 1, 10_000).await;
    assert_eq!((again[0].1, again[0].2), (0, 2));
    let results = acknowledge(&b, "slow", vec![ack("jobs", 0, 0, AckType::Accept)]).await;
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "another member holds it",
    );
    let results = acknowledge(&b, "fast", vec![ack("jobs", 0, 0, AckType::Accept)]).await;
    assert!(results[0].is_none());
}

#[tokio::test]
async fn a_released_record_waits_for_the_backoff_without_holding_back_the_others() {
    let b = jobs_broker(pb::ShareGroupSettings {
        backoff_ms: vec![400, 60_000],
        ..Default::default()
    })
    .await;
    produce_values(&b, "jobs", 0, "a", 1).await;
    let got = acquire(&b, "m", "jobs", 1, 0).await;
    assert_eq!(got.len(), 1);
    let released = Instant::now();
    let results = acknowledge(&b, "m", vec![ack("jobs", 0, 0, AckType::Release)]).await;
    assert!(results[0].is_none());
    // Records behind it are delivered meanwhile.
    produce_values(&b, "jobs", 0, "b", 3).await;
    let behind = acquire(&b, "m", "jobs", 10, 0).await;
    assert_eq!(
        behind.iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // The released record comes back, but not before its backoff.
    let again = acquire(&b, "m", "jobs", 10, 10_000).await;
    assert!(released.elapsed() >= Duration::from_millis(400));
    assert_eq!((again[0].1, again[0].2), (0, 2));
}

#[tokio::test]
async fn past_max_deliveries_a_record_is_archived_when_there_is_no_dead_letter_topic() {
    let b = jobs_broker(pb::ShareGroupSettings {
        max_deliveries: Some(2),
        ..Default::default()
    })
    .await;
    produce_values(&b, "jobs", 0, "a", 2).await;
    for delivery in 1..=2 {
        let got = acquire(&b, "m", "jobs", 1, 0).await;
        assert_eq!((got[0].1, got[0].2), (0, delivery));
        let results = acknowledge(&b, "m", vec![ack("jobs", 0, 0, AckType::Release)]).await;
        assert!(results[0].is_none());
    }
    let got = acquire(&b, "m", "jobs", 10, 0).await;
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![1]);
    let described = describe(&b).await;
    let p = &described.partitions[0];
    assert_eq!((p.start_offset, p.next_offset, p.acquired), (1, 2, 1));
    assert_eq!(described.members, vec!["m".to_owned()]);
}

#[tokio::test]
async fn a_dead_letter_topic_must_exist_and_must_not_be_read_by_the_group() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    let err = alter(
        &b,
        pb::ShareGroupSettings {
            dead_letter_topic: Some("nowhere".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_status(
        &err,
        ErrorCode::UnknownTopic,
        "settings.dead_letter_topic \"nowhere\"",
    );
    acquire(&b, "m", "jobs", 1, 0).await;
    let err = alter(
        &b,
        pb::ShareGroupSettings {
            dead_letter_topic: Some("jobs".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_status(&err, ErrorCode::InvalidConfig, "a topic the group reads");
    create_topic(&b, "jobs.dlq", 1).await;
    alter(
        &b,
        pb::ShareGroupSettings {
            dead_letter_topic: Some("jobs.dlq".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = b
        .share()
        .share_fetch(fetch_req("m", "jobs.dlq", 1, 0))
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::InvalidRequest, "dead-letter topic");
    let err = alter(
        &b,
        pb::ShareGroupSettings {
            lock_ms: Some(10),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_status(&err, ErrorCode::InvalidConfig, "settings.lock_ms 10");
}

/// Reads every record of a topic's partition 0 with its headers.
async fn read_all(b: &TestBroker, topic: &str) -> Vec<pb::Record> {
    let resp = b
        .consume()
        .fetch(pb::FetchRequest {
            partitions: vec![pb::FetchPartition {
                topic: topic.into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
            }],
            format: pb::RecordFormat::Records.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.results[0].records.clone()
}

fn header<'a>(r: &'a pb::Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .rev()
        .find(|h| h.key == name)
        .and_then(|h| h.value.as_deref())
        .map(|v| std::str::from_utf8(v).unwrap())
}

/// Polls the dead-letter topic until it holds `n` records.
async fn dead_letters(b: &TestBroker, topic: &str, n: usize) -> Vec<pb::Record> {
    runnel_test_support::within(async {
        loop {
            let records = read_all(b, topic).await;
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn rejected_and_exhausted_records_are_copied_to_the_dead_letter_topic_with_why_and_whence() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    create_topic(&b, "jobs.dlq", 1).await;
    alter(
        &b,
        pb::ShareGroupSettings {
            dead_letter_topic: Some("jobs.dlq".into()),
            max_deliveries: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut builder = runnel_storage::batch::BatchBuilder::new();
    builder.push(Some(b"k0"), Some(b"v0"), &[(b"trace", Some(b"t0"))], 1_000);
    builder.push(Some(b"k1"), Some(b"v1"), &[], 1_001);
    builder.push(None, Some(b"v2"), &[], 1_002);
    let r = produce(&b, "jobs", 0, vec![builder.build()]).await;
    assert!(r.error.is_none());
    let got = acquire(&b, "m", "jobs", 3, 0).await;
    assert_eq!(got.len(), 3);
    let mut reject = ack("jobs", 0, 0, AckType::Reject);
    reject.error = "bad total".into();
    let results = acknowledge(
        &b,
        "m",
        vec![
            reject,
            ack("jobs", 0, 1, AckType::Release),
            ack("jobs", 0, 2, AckType::Accept),
        ],
    )
    .await;
    assert!(results.iter().all(Option::is_none), "{results:?}");

    let dead = dead_letters(&b, "jobs.dlq", 2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let first = &dead[0];
    assert_eq!(first.key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(first.value.as_deref(), Some(&b"v0"[..]));
    assert_eq!(first.timestamp_ms, 1_000);
    assert_eq!(
        header(first, "trace"),
        Some("t0"),
        "the record's own headers are kept"
    );
    assert_eq!(header(first, "runnel.dlq.topic"), Some("jobs"));
    assert_eq!(header(first, "runnel.dlq.partition"), Some("0"));
    assert_eq!(header(first, "runnel.dlq.offset"), Some("0"));
    assert_eq!(header(first, "runnel.dlq.group"), Some(GROUP));
    assert_eq!(header(first, "runnel.dlq.delivery_count"), Some("1"));
    assert_eq!(header(first, "runnel.dlq.error"), Some("bad total"));
    assert!(
        header(first, "runnel.dlq.time_ms")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let second = &dead[1];
    assert_eq!(header(second, "runnel.dlq.offset"), Some("1"));
    assert!(
        header(second, "runnel.dlq.error")
            .unwrap()
            .contains("max_deliveries"),
        "{second:?}"
    );

    // Done: nothing is delivered again, before or after a restart, and nothing is copied twice.
    let b = b.restart().await;
    assert!(acquire(&b, "m", "jobs", 10, 0).await.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_all(&b, "jobs.dlq").await.len(), 2);
    let described = describe(&b).await;
    assert_eq!(described.partitions[0].start_offset, 3);
}

async fn describe(b: &TestBroker) -> pb::DescribeShareGroupResponse {
    b.share()
        .describe_share_group(pb::DescribeShareGroupRequest {
            group_id: GROUP.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn start_offset(b: &TestBroker) -> u64 {
    describe(b).await.partitions[0].start_offset
}

/// Opens the stopped broker's share groups, makes record 0 of `jobs` a dead letter whose copy
/// was started at `from` in partition 0 of the dead-letter topic (as a crash between the two
/// would leave it), and closes them.
async fn start_a_copy_offline(config: &runnel_broker::config::Config, from: u64) {
    use runnel_broker::shares::state::{Ack, Copy};
    use runnel_broker::shares::{AckEntry, ShareGroups};
    let shares = std::sync::Arc::new(
        ShareGroups::open(
            &config.data_dir,
            config.shares.clone(),
            100,
            &runnel_storage::LogEnv::default(),
        )
        .unwrap(),
    );
    shares.start();
    let group = shares.get(GROUP).unwrap();
    let tp = ("jobs".to_owned(), 0);
    let member: std::sync::Arc<str> = "offline".into();
    let now = 1;
    group.plan(&tp, |_| 0, 0, 1, now, 100);
    assert_eq!(group.acquire(&member, &tp, (0, 0), 1, now, 100).0.len(), 1);
    let reject = AckEntry {
        tp: tp.clone(),
        first: 0,
        last: 0,
        ack: Ack::Reject {
            reason: "crashed mid-copy".into(),
        },
    };
    let (results, written) = group.acknowledge(&member, &[reject], now);
    assert!(results[0].is_ok());
    written.wait().await.unwrap();
    let copy = Copy { partition: 0, from };
    group.copying(&tp, &[(0, 0)], copy).wait().await.unwrap();
    shares.close().await;
}

#[tokio::test]
async fn a_dead_letter_copy_cut_short_by_a_crash_is_found_or_made_once() {
    for copy_was_written in [true, false] {
        let b = share_broker().await;
        create_topic(&b, "jobs", 1).await;
        create_topic(&b, "jobs.dlq", 1).await;
        alter(
            &b,
            pb::ShareGroupSettings {
                dead_letter_topic: Some("jobs.dlq".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        produce_values(&b, "jobs", 0, "a", 2).await;
        produce_values(&b, "jobs.dlq", 0, "unrelated", 1).await;
        if copy_was_written {
            // The copy made before the crash, as the copier writes it.
            let mut builder = runnel_storage::batch::BatchBuilder::new();
            let headers: [(&[u8], Option<&[u8]>); 4] = [
                (b"runnel.dlq.topic", Some(b"jobs")),
                (b"runnel.dlq.partition", Some(b"0")),
                (b"runnel.dlq.offset", Some(b"0")),
                (b"runnel.dlq.group", Some(GROUP.as_bytes())),
            ];
            builder.push(None, Some(b"a-0"), &headers, 1);
            let r = produce(&b, "jobs.dlq", 0, vec![builder.build()]).await;
            assert!(r.error.is_none());
        }
        let (config, dir) = b.stop().await;
        start_a_copy_offline(&config, 1).await;
        let b = TestBroker::launch(config, dir).await;

        // Once record 0 is done, its copy is in the dead-letter topic exactly once.
        runnel_test_support::within(async {
            while start_offset(&b).await < 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let dead = read_all(&b, "jobs.dlq").await;
        assert_eq!(
            dead.len(),
            2,
            "copied exactly once ({copy_was_written}): {dead:?}"
        );
        assert_eq!(header(&dead[1], "runnel.dlq.offset"), Some("0"));
        let got = acquire(&b, "m", "jobs", 10, 0).await;
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![1],
            "0 is done"
        );
    }
}

#[tokio::test]
async fn eight_chaotic_consumers_account_for_every_record_exactly_once() {
    const RECORDS: u64 = 100_000;
    let b = TestBroker::start_with(|c| {
        c.shares.start = runnel_broker::config::ShareStartSetting::Earliest;
        c.shares.lock_ms = 500;
    })
    .await;
    set_up_queue(&b, GROUP, RECORDS).await;
    let chaos = Chaos::start(&b, GROUP, 8);
    chaos.wait_done(&b, RECORDS).await;
    let (dead, ledger) = chaos.finish(&b, RECORDS).await;
    assert!(ledger.in_doubt.is_empty(), "the broker never died");
    assert_eq!(ledger.accepted.len() + dead, RECORDS as usize);
    assert!(ledger.crashes > 0 && dead > 0, "the chaos happened");
}

#[tokio::test]
async fn a_topic_deleted_and_created_again_is_read_from_its_new_start() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "old", 10).await;
    let got = acquire(&b, "m", "jobs", 10, 0).await;
    let mut all = ack("jobs", 0, 0, AckType::Accept);
    all.last_offset = 9;
    assert!(acknowledge(&b, "m", vec![all]).await[0].is_none());
    b.admin()
        .delete_topic(pb::DeleteTopicRequest {
            topic: "jobs".into(),
        })
        .await
        .unwrap();
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "new", 3).await;
    let got_new = acquire(&b, "m", "jobs", 10, 0).await;
    assert_eq!(got.len(), 10);
    let values: Vec<&str> = got_new.iter().map(|g| g.3.as_str()).collect();
    assert_eq!(values, ["new-0", "new-1", "new-2"]);
    let b = b.restart().await;
    let again = acquire(&b, "m2", "jobs", 10, 0).await;
    assert_eq!(
        again.len(),
        3,
        "held, not done: delivered again after the restart"
    );
    assert!(again.iter().all(|g| g.3.starts_with("new-")));
}

#[tokio::test]
async fn the_share_log_compacts_and_a_restart_finds_the_same_state() {
    let b = TestBroker::start_with(|c| {
        c.shares.start = runnel_broker::config::ShareStartSetting::Earliest;
        c.shares.compact_bytes = 4096;
    })
    .await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "a", 400).await;
    // Accept every record but each tenth, which is released with a long delay: 40 records
    // stay in flight, each delivered once, and hundreds of changes are written.
    let mut delayed = Vec::new();
    for _ in 0..40 {
        let got = acquire(&b, "m", "jobs", 10, 0).await;
        for (_, offset, _, _) in got {
            let mut a = ack("jobs", 0, offset, AckType::Accept);
            if offset % 10 == 0 {
                a.r#type = AckType::Release.into();
                a.delay_ms = Some(3_600_000);
                delayed.push(offset);
            }
            assert!(acknowledge(&b, "m", vec![a]).await[0].is_none());
        }
    }
    assert_eq!(delayed.len(), 40);
    let segments = |b: &TestBroker| {
        std::fs::read_dir(b.data_dir().join("internal/share_groups"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count()
    };
    assert!(segments(&b) <= 3, "compacted: {} segments", segments(&b));
    let b = b.restart().await;
    let d = describe(&b).await;
    let p = &d.partitions[0];
    assert_eq!((p.start_offset, p.next_offset, p.available), (0, 400, 40));
    assert!(
        acquire(&b, "m", "jobs", 100, 0).await.is_empty(),
        "all delayed or done"
    );
}

#[tokio::test]
async fn without_record_limit_whole_batches_are_acquired() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "a", 10).await;
    produce_values(&b, "jobs", 0, "b", 10).await;
    let fetch = |member: &str, max_records: u32| pb::ShareFetchRequest {
        record_limit: false,
        ..fetch_req(member, "jobs", max_records, 0)
    };
    let acquired = |resp: pb::ShareFetchResponse| -> Vec<(u64, u64)> {
        resp.partitions[0]
            .acquired
            .iter()
            .map(|a| (a.first_offset, a.last_offset))
            .collect()
    };
    let first = b.share().share_fetch(fetch("m1", 3)).await.unwrap();
    let first = first.into_inner();
    assert_eq!(first.partitions[0].records.len(), 10);
    assert_eq!(
        acquired(first),
        vec![(0, 9)],
        "the batch holding the third record, whole"
    );
    let second = b.share().share_fetch(fetch("m2", 12)).await.unwrap();
    assert_eq!(acquired(second.into_inner()), vec![(10, 19)]);
}

#[tokio::test]
async fn a_share_fetch_names_the_field_it_refuses() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    let cases = [
        (
            pb::ShareFetchRequest {
                max_wait_ms: 10_000_000,
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::InvalidRequest,
            "max_wait_ms 10000000 exceeds fetch_max_wait_ms",
        ),
        (
            pb::ShareFetchRequest {
                max_records: 1 << 30,
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::LimitExceeded,
            "shares.max_fetch_records",
        ),
        (
            pb::ShareFetchRequest {
                member_id: String::new(),
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::InvalidRequest,
            "member_id must be 1 to 255 bytes",
        ),
        (
            pb::ShareFetchRequest {
                group_id: "a/b".into(),
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::InvalidGroupId,
            "group_id \"a/b\"",
        ),
        (
            pb::ShareFetchRequest {
                acknowledgements: vec![ack("jobs", 0, 0, AckType::Accept); 10_001],
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::LimitExceeded,
            "10001 entries exceed shares.max_acknowledgements (10000)",
        ),
        (
            fetch_req("m", "nowhere", 1, 0),
            ErrorCode::UnknownTopic,
            "nowhere",
        ),
        (
            pb::ShareFetchRequest {
                topics: vec![],
                ..fetch_req("m", "jobs", 1, 0)
            },
            ErrorCode::InvalidRequest,
            "topics: at least one topic",
        ),
    ];
    for (request, code, needle) in cases {
        let err = b.share().share_fetch(request).await.unwrap_err();
        assert_status(&err, code, needle);
    }
}

#[tokio::test]
async fn a_reset_moves_the_start_and_what_was_in_flight_is_forgotten() {
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    produce_values(&b, "jobs", 0, "a", 10).await;
    let got = acquire(&b, "m", "jobs", 4, 0).await;
    assert_eq!(got.len(), 4);
    let reset = |target, dry_run, force| pb::ResetOffsetsRequest {
        group: GROUP.into(),
        topics: vec![pb::TopicPartitions {
            topic: "jobs".into(),
            partitions: vec![],
        }],
        target: Some(target),
        dry_run,
        force,
        ..Default::default()
    };
    use pb::reset_offsets_request::Target;
    let err = b
        .share()
        .reset_share_group_offsets(reset(Target::Offset(6), false, false))
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::GroupNotEmpty, "holding 4 records");
    let plan = b
        .share()
        .reset_share_group_offsets(reset(Target::ShiftBy(6), true, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plan.resets[0].previous_offset, plan.resets[0].new_offset),
        (Some(0), 6)
    );
    b.share()
        .reset_share_group_offsets(reset(Target::Offset(6), false, true))
        .await
        .unwrap();
    let results = acknowledge(&b, "m", vec![ack("jobs", 0, 1, AckType::Accept)]).await;
    assert_inline(
        results[0].as_ref(),
        ErrorCode::InvalidRecordState,
        "offset 1",
    );
    let b = b.restart().await;
    let got = acquire(&b, "m2", "jobs", 100, 0).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        offsets,
        vec![6, 7, 8, 9],
        "from the new start, after a restart too"
    );
}
