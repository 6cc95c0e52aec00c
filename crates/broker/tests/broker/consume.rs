//! ConsumeService: Fetch, Subscribe, ListOffsets.

use std::time::Duration;

use runnel_proto::pb::{self, ErrorCode, OffsetBoundary, start_position::Position};
use tokio_stream::StreamExt as _;

use runnel_test_support::prelude::*;

#[tokio::test]
async fn a_long_poll_wakes_on_new_data() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    let mut consume = b.consume();
    let poll = tokio::spawn(async move {
        consume
            .fetch(pb::FetchRequest {
                partitions: vec![fetch_partition("t", 0, 0), fetch_partition("t", 1, 0)],
                max_wait_ms: 30_000,
                min_bytes: 1,
                max_bytes: 0,
                ..Default::default()
            })
            .await
    });
    // The poll waits (it cannot finish before data exists), then an append wakes it long
    // before its 30 s wait is over; `within` only bounds the test.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished());
    produce(&b, "t", 1, vec![batch(3, 1_000)]).await;
    let resp = within(poll).await.unwrap().unwrap().into_inner();
    assert!(resp.results[0].batches.is_empty());
    assert_eq!(resp.results[1].batches.len(), 1);
    assert_eq!(resp.results[1].next_offset, 3);
    assert_eq!(resp.results[1].log_end_offset, 3);
}

#[tokio::test]
async fn fetch_reports_errors_per_partition_and_respects_limits() {
    let b = TestBroker::start_with(|c| c.limits.fetch_max_wait_ms = 1_000).await;
    create_topic(&b, "t", 1).await;
    for _ in 0..4 {
        produce(&b, "t", 0, vec![batch(10, 1_000)]).await;
    }
    let mut consume = b.consume();
    let resp = consume
        .fetch(pb::FetchRequest {
            partitions: vec![
                fetch_partition("t", 0, 41),
                fetch_partition("t", 3, 0),
                fetch_partition("nope", 0, 0),
            ],
            max_wait_ms: 1_000,
            min_bytes: 1_000_000,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &resp.results;
    assert_inline(
        r[0].error.as_ref(),
        ErrorCode::OffsetOutOfRange,
        "offset 41 is out of range for t/0: readable offsets are 0 to 40",
    );
    assert_eq!((r[0].log_start_offset, r[0].log_end_offset), (0, 40));
    assert_inline(
        r[1].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partition 3",
    );
    assert_inline(r[2].error.as_ref(), ErrorCode::UnknownTopic, "\"nope\"");

    // max_bytes 1 still returns the first (containing) batch, whole.
    let resp = consume
        .fetch(pb::FetchRequest {
            partitions: vec![pb::FetchPartition {
                max_bytes: 1,
                ..fetch_partition("t", 0, 15)
            }],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].batches.len(), 1);
    assert_eq!(resp.results[0].next_offset, 20);

    let e = consume
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition("t", 0, 0)],
            max_wait_ms: 1_001,
            min_bytes: 1,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "max_wait_ms 1001 exceeds fetch_max_wait_ms (1000)",
    );
    let e = consume
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition("t", 0, 0), fetch_partition("t", 0, 5)],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "partitions[1]: topic \"t\" partition 0 is listed twice (also partitions[0])",
    );
    let e = consume
        .fetch(pb::FetchRequest {
            partitions: vec![],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "partitions");

    // A whole-response cap: the first batch always comes, then the budget stops reads.
    let resp = consume
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition("t", 0, 0)],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].batches.len(), 1);
}

#[tokio::test]
async fn subscribe_pushes_new_batches_from_each_start_position() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    produce(&b, "t", 0, vec![batch(5, 1_000)]).await;
    produce(&b, "t", 0, vec![batch(5, 5_000)]).await;

    let mut latest = subscribe(&b, "t", 0, None).await;
    let first = within(latest.next()).await.unwrap().unwrap();
    assert!(first.batches.is_empty());
    assert_eq!((first.next_offset, first.log_end_offset), (10, 10));

    let mut earliest = subscribe(
        &b,
        "t",
        0,
        Some(Position::Boundary(OffsetBoundary::Earliest as i32)),
    )
    .await;
    let first = within(earliest.next()).await.unwrap().unwrap();
    assert_eq!(first.next_offset, 0);
    let mut got = 0;
    while got < 10 {
        let r = within(earliest.next()).await.unwrap().unwrap();
        got = r.next_offset;
    }

    let mut by_time = subscribe(&b, "t", 0, Some(Position::TimestampMs(5_002))).await;
    assert_eq!(
        within(by_time.next()).await.unwrap().unwrap().next_offset,
        5
    );
    let mut by_offset = subscribe(&b, "t", 0, Some(Position::Offset(7))).await;
    assert_eq!(
        within(by_offset.next()).await.unwrap().unwrap().next_offset,
        7
    );
    let r = within(by_offset.next()).await.unwrap().unwrap();
    assert_eq!(
        u64::from_le_bytes(r.batches[0][0..8].try_into().unwrap()),
        5,
        "the containing batch"
    );

    // A new batch is pushed to the live subscriber.
    produce(&b, "t", 0, vec![batch(2, 9_000)]).await;
    let r = within(latest.next()).await.unwrap().unwrap();
    assert_eq!(r.batches.len(), 1);
    assert_eq!(r.next_offset, 12);

    let e = b
        .consume()
        .subscribe(pb::SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            start: Some(pb::StartPosition {
                position: Some(Position::Offset(13)),
            }),
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::OffsetOutOfRange,
        "offset 13 is out of range for t/0",
    );
    let e = b
        .consume()
        .subscribe(pb::SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            start: Some(pb::StartPosition {
                position: Some(Position::Boundary(0)),
            }),
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "start.boundary 0");
}

#[tokio::test]
async fn deleting_a_topic_ends_its_subscriptions_with_not_found() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let mut s = subscribe(&b, "t", 0, None).await;
    within(s.next()).await.unwrap().unwrap();
    b.admin()
        .delete_topic(pb::DeleteTopicRequest { topic: "t".into() })
        .await
        .unwrap();
    let e = within(s.next()).await.unwrap().unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "\"t\"");
}

#[tokio::test]
async fn list_offsets_finds_boundaries_and_times() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    produce(&b, "t", 0, vec![batch(5, 1_000)]).await;
    produce(&b, "t", 0, vec![batch(5, 2_000)]).await;
    let q = |query| pb::OffsetQuery {
        topic: "t".into(),
        partition: 0,
        query: Some(query),
    };
    use pb::offset_query::Query;
    let resp = b
        .consume()
        .list_offsets(pb::ListOffsetsRequest {
            queries: vec![
                q(Query::Boundary(OffsetBoundary::Earliest as i32)),
                q(Query::Boundary(OffsetBoundary::Latest as i32)),
                q(Query::TimestampMs(1_500)),
                q(Query::TimestampMs(99_999)),
                pb::OffsetQuery {
                    partition: 9,
                    ..q(Query::TimestampMs(0))
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let r = &resp.results;
    assert_eq!(r[0].offset, 0);
    assert_eq!(r[1].offset, 10);
    assert_eq!((r[2].offset, r[2].timestamp_ms), (5, Some(2_004)));
    assert_eq!((r[3].offset, r[3].timestamp_ms), (10, None));
    assert_inline(
        r[4].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partition 9",
    );

    let e = b
        .consume()
        .list_offsets(pb::ListOffsetsRequest {
            queries: vec![pb::OffsetQuery {
                topic: "t".into(),
                partition: 0,
                query: None,
            }],
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "queries[0].query");
}
