//! ShareService: records acquired and acknowledged one by one by many members, lock expiry,
//! backoff, the delivery limit, durability across restarts, and the errors of acknowledging
//! what a member does not hold.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use runnel_proto::pb::{self, AckType, ErrorCode};

use runnel_test_support::prelude::*;

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
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    alter(
        &b,
        pb::ShareGroupSettings {
            lock_ms: Some(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
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
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    alter(
        &b,
        pb::ShareGroupSettings {
            backoff_ms: vec![400, 60_000],
            ..Default::default()
        },
    )
    .await
    .unwrap();
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
    let b = share_broker().await;
    create_topic(&b, "jobs", 1).await;
    alter(
        &b,
        pb::ShareGroupSettings {
            max_deliveries: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    produce_values(&b, "jobs", 0, "a", 2).await;
    for delivery in 1..=2 {
        let got = acquire(&b, "m", "jobs", 1, 0).await;
        assert_eq!((got[0].1, got[0].2), (0, delivery));
        let results = acknowledge(&b, "m", vec![ack("jobs", 0, 0, AckType::Release)]).await;
        assert!(results[0].is_none());
    }
    let got = acquire(&b, "m", "jobs", 10, 0).await;
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![1]);
    let described = b
        .share()
        .describe_share_group(pb::DescribeShareGroupRequest {
            group_id: GROUP.into(),
        })
        .await
        .unwrap()
        .into_inner();
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
