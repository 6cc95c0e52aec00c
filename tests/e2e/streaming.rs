//! Long polls and subscriptions against the real broker, and the memory bound of a
//! subscriber that stops reading.

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::{
    self, OffsetBoundary, consume_service_client::ConsumeServiceClient, start_position::Position,
};
use tokio_stream::StreamExt as _;

use crate::harness::*;

#[tokio::test]
async fn a_long_poll_wakes_on_new_data() {
    let b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let mut consume = b.consume();
    let poll = tokio::spawn(async move {
        consume
            .fetch(pb::FetchRequest {
                partitions: vec![pb::FetchPartition {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 0,
                }],
                max_wait_ms: 30_000,
                min_bytes: 1,
                max_bytes: 0,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll waits for data");
    produce(&b, "t", 0, vec![batch_of("x", 0, 3)]).await;
    let started = Instant::now();
    let r = within(poll)
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(values(&r.batches, 0), ["x-0", "x-1", "x-2"]);
    eprintln!(
        "long poll answered {:?} after the append",
        started.elapsed()
    );
}

#[tokio::test]
async fn subscribe_delivers_a_new_record_promptly() {
    let b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let mut s = subscribe(&b, "t", 0, None).await;
    assert_eq!(within(s.next()).await.unwrap().unwrap().next_offset, 0);
    let sent = Instant::now();
    produce(&b, "t", 0, vec![batch_of("new", 0, 1)]).await;
    let r = within(s.next()).await.unwrap().unwrap();
    eprintln!(
        "subscription delivered {:?} after the produce started",
        sent.elapsed()
    );
    assert_eq!(values(&r.batches, 0), ["new-0"]);
    assert_eq!((r.next_offset, r.log_end_offset), (1, 1));
}

/// A batch of about 1000 KB (under the default max_batch_bytes of 1 MiB).
fn big_batch(i: u64) -> Bytes {
    let mut b = runnel_format::BatchBuilder::new();
    let value = vec![b'v'; 100_000];
    for j in 0..10 {
        b.push(
            Some(format!("{i}-{j}").as_bytes()),
            Some(&value),
            &[],
            1_700_000_000_000,
        );
    }
    b.build()
}

/// A batch of about 64 KB.
fn batch_64k(i: u64) -> Bytes {
    let mut b = runnel_format::BatchBuilder::new();
    b.push(
        None,
        Some(&vec![b'v'; 64_000]),
        &[],
        i64::try_from(i).unwrap_or(0),
    );
    b.build()
}

/// The broker's `runnel_read_buffer_bytes`.
fn read_ahead(b: &Broker) -> f64 {
    let text = b.scrape_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix("runnel_read_buffer_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A `Subscribe` of partition `p` of topic "t" from its earliest record.
fn from_earliest(p: u32) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: "t".into(),
        partition: p,
        start: Some(pb::StartPosition {
            position: Some(Position::Boundary(OffsetBoundary::Earliest as i32)),
        }),
        ..Default::default()
    }
}

/// A broker with a 1 MiB read buffer whose topic "t" holds `batches` batches `batch(i)` in
/// each of its `partitions` partitions, and a subscriber from the start of each partition, on
/// a connection of its own, that read only the response confirming its start and stopped.
async fn stalled_subscribers(
    partitions: u32,
    batches: u64,
    batch: fn(u64) -> Bytes,
) -> (Broker, Vec<tonic::Streaming<pb::SubscribeResponse>>) {
    let b = Broker::start_with(&["--set", "limits.read_buffer_bytes=1048576"]).await;
    create_topic(&b, "t", partitions).await;
    for p in 0..partitions {
        for i in 0..batches {
            let r = produce(&b, "t", p, vec![batch(i)]).await;
            assert!(r.error.is_none(), "{r:?}");
        }
    }
    let mut stalled = Vec::new();
    for p in 0..partitions {
        let mut s = ConsumeServiceClient::new(b.new_channel())
            .subscribe(from_earliest(p))
            .await
            .unwrap()
            .into_inner();
        within(s.next()).await.unwrap().unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (b, stalled)
}

#[tokio::test]
async fn stalled_subscribers_hold_at_most_the_read_buffer_and_readers_keep_reading() {
    const PARTITIONS: u32 = 8;
    const BATCHES: u64 = 64;
    // 8 x 4 MB of backlog, past the stalled subscribers' 2 MiB windows.
    let (b, stalled) = stalled_subscribers(PARTITIONS, BATCHES, batch_64k).await;
    // 1 MiB in all, and one whole batch over it at most per stream.
    let bound = f64::from(1 << 20) + f64::from(PARTITIONS) * 66_000.0;
    let held = read_ahead(&b);
    assert!(held > 0.0, "the stalled subscribers hold nothing?");
    assert!(held <= bound, "read-ahead {held} bytes, over {bound}");

    // Another subscriber on a stalled partition reads the whole backlog, one batch at a
    // time if the stalled streams hold the whole budget.
    let mut reader = ConsumeServiceClient::new(b.new_channel())
        .subscribe(from_earliest(0))
        .await
        .unwrap()
        .into_inner();
    let mut next = 0;
    while next < BATCHES {
        next = within(reader.next()).await.unwrap().unwrap().next_offset;
    }
    assert_eq!(next, BATCHES);
    assert!(read_ahead(&b) <= bound);
    drop(stalled);
}

/// A batch of about 300 KB: 3 records of 100,000 bytes, each value starting `<i>-<j>-`.
fn batch_300k(i: u64) -> Bytes {
    let mut b = runnel_format::BatchBuilder::new();
    for j in 0..3 {
        let mut value = format!("{i}-{j}-").into_bytes();
        value.resize(100_000, b'v');
        b.push(None, Some(&value), &[], 1_700_000_000_000);
    }
    b.build()
}

#[tokio::test]
async fn stalled_subscribers_hold_a_piece_of_a_batch_larger_than_their_share() {
    const PARTITIONS: u32 = 8;
    const BATCHES: u64 = 16;
    // 1 MiB over 8 streams: 128 KiB each, less than one batch; 8 x 4.8 MB of backlog.
    let (b, mut stalled) = stalled_subscribers(PARTITIONS, BATCHES, batch_300k).await;
    // The budget, and a piece of 16 KiB at most over it per stream: not a 300 KB batch each.
    let bound = f64::from(1 << 20) + f64::from(PARTITIONS) * f64::from(16 << 10);
    let held = read_ahead(&b);
    assert!(held > 0.0, "the stalled subscribers hold nothing?");
    assert!(held <= bound, "read-ahead {held} bytes, over {bound}");

    // Every batch arrives whole (its CRC checks) and in order, to a new subscriber and to a
    // stalled one that reads again.
    for mut s in [
        ConsumeServiceClient::new(b.new_channel())
            .subscribe(from_earliest(0))
            .await
            .unwrap()
            .into_inner(),
        stalled.pop().unwrap(),
    ] {
        let mut read = Vec::new();
        while read.len() < 3 * BATCHES as usize {
            let r = within(s.next()).await.unwrap().unwrap();
            read.extend(values(&r.batches, 0));
        }
        for (n, v) in read.iter().enumerate() {
            let prefix = format!("{}-{}-", n / 3, n % 3);
            assert!(v.starts_with(&prefix) && v.len() == 100_000, "record {n}");
        }
    }
    assert!(read_ahead(&b) <= bound);
    drop(stalled);
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_grow_broker_memory() {
    let b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let producer =
        |b: &Broker| pb::produce_service_client::ProduceServiceClient::new(b.new_channel());
    let mut prod = producer(&b);
    let mut send = async |i: u64| {
        let r = prod
            .produce(pb::ProduceRequest {
                request_id: i,
                topic: "t".into(),
                acks: pb::Acks::Written as i32,
                partitions: vec![entry(0, vec![big_batch(i)])],
            })
            .await
            .expect("produce")
            .into_inner();
        assert!(r.results[0].error.is_none(), "{r:?}");
    };
    // Warm up the broker's allocator with the same traffic as the measured phase.
    for i in 0..16 {
        send(i).await;
    }
    // The subscriber, on a connection of its own, reads one response from the start of the
    // log and then stops reading while producers keep writing.
    let mut s = ConsumeServiceClient::new(b.new_channel())
        .subscribe(pb::SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            start: Some(pb::StartPosition {
                position: Some(Position::Boundary(OffsetBoundary::Earliest as i32)),
            }),
            max_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    within(s.next()).await.unwrap().unwrap();
    within(s.next()).await.unwrap().unwrap();
    for i in 16..32 {
        send(i).await;
    }
    let before = b.rss_kib();
    // 128 batches of ~1 MB: a broker that buffered for the stalled subscriber would grow by
    // about that much.
    for i in 32..160 {
        send(i).await;
    }
    let after = b.rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("broker RSS {before} KiB -> {after} KiB while a subscriber stalled");
    assert!(
        grown_mib < 48,
        "broker memory grew by {grown_mib} MiB while a subscriber stalled ({before} -> {after} KiB)"
    );

    // Nothing was dropped: the subscriber resumes where it stopped and sees every batch.
    let mut last = 0;
    while last < 1600 {
        let r = within(s.next()).await.unwrap().unwrap();
        last = r.next_offset;
    }
    assert_eq!(last, 1600);
}
