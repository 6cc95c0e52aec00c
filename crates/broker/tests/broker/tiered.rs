//! Tiered storage against a real S3-compatible store (SeaweedFS, `runnel_test_support::s3`):
//! copies read back byte for byte after local retention deleted the originals, the store
//! unreachable for a while, bad settings refused at start, a data directory restored from
//! the bucket, and a second broker taking a partition's copy over.

use std::net::SocketAddr;
use std::time::Duration;

use runnel_proto::pb::{self, ErrorCode};
use runnel_test_support::prelude::*;
use runnel_test_support::s3::{self, Bucket, Proxy};

/// A bucket of its own (SeaweedFS started if needed).
async fn bucket() -> Bucket {
    tokio::task::spawn_blocking(s3::bucket)
        .await
        .expect("bucket")
}

/// A broker copying to `bucket`, with retention checked every 100 ms.
async fn broker(bucket: &Bucket) -> TestBroker {
    let settings = bucket.settings();
    TestBroker::start_with(|c| {
        c.remote_storage = settings;
        c.storage.retention_check_interval_ms = 100;
    })
    .await
}

/// A topic with [`s3::tiered_topic_config`].
async fn create_tiered(b: &Connection, topic: &str, partitions: u32) {
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: partitions,
            config: Some(s3::tiered_topic_config()),
        })
        .await
        .expect("create a tiered topic");
}

/// Produces `n` batches of 20 records (values `tag-i`) to partition 0.
async fn produce_batches(b: &Connection, topic: &str, tag: &str, from: u64, n: u64) {
    for i in 0..n {
        let r = produce(b, topic, 0, vec![batch_of(tag, from + i * 20, 20)]).await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
}

/// Waits until every sealed segment of partition 0 is copied and local retention deleted
/// them; returns the description then.
async fn copied_and_trimmed(b: &Connection, topic: &str) -> pb::PartitionDescription {
    within(async {
        loop {
            let d = describe_topic(b, topic).await.partitions.remove(0);
            if d.upload_lag_segments == 0
                && d.remote_log_end_offset > 0
                && d.local_log_start_offset == d.remote_log_end_offset
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn list_offset(
    b: &Connection,
    topic: &str,
    query: pb::offset_query::Query,
) -> pb::OffsetQueryResult {
    let r = b
        .consume()
        .list_offsets(pb::ListOffsetsRequest {
            queries: vec![pb::OffsetQuery {
                topic: topic.into(),
                partition: 0,
                query: Some(query),
            }],
        })
        .await
        .expect("list offsets")
        .into_inner();
    r.results.into_iter().next().expect("one result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_gone_from_local_disk_are_read_from_the_bucket_byte_for_byte() {
    let bucket = bucket().await;
    let b = broker(&bucket).await;
    create_tiered(&b, "orders", 1).await;
    produce_batches(&b, "orders", "o", 0, 150).await;
    let before = fetch_all(&b, "orders", 0, 0).await;
    assert_eq!(values(&before, 0).len(), 3000);

    let d = copied_and_trimmed(&b, "orders").await;
    assert_eq!(d.log_start_offset, 0, "the log starts in the bucket");
    assert!(
        d.local_log_start_offset > 0 && d.remote_segment_count > 1,
        "{d:?}"
    );
    assert!(
        d.remote_size_bytes > 0 && d.size_bytes < d.remote_size_bytes,
        "{d:?}"
    );
    // Every batch, byte for byte, across the copies and the local tail, and from inside one.
    assert_eq!(fetch_all(&b, "orders", 0, 0).await, before);
    let inside = d.local_log_start_offset - 7;
    let tail = fetch_all(&b, "orders", 0, inside).await;
    assert_eq!(values(&tail, inside), values(&before, inside));

    // ListOffsets: the earliest offset is in the bucket, and so is an early time.
    let earliest = list_offset(
        &b,
        "orders",
        pb::offset_query::Query::Boundary(pb::OffsetBoundary::Earliest as i32),
    )
    .await;
    assert_eq!(earliest.offset, 0);
    let t = list_offset(
        &b,
        "orders",
        pb::offset_query::Query::TimestampMs(1_700_000_000_000 + 45),
    )
    .await;
    assert!(t.error.is_none(), "{:?}", t.error);
    assert_eq!(t.offset, 40, "the batch holding record 45");

    // A subscription from 0 gets every record too.
    let got = subscribe_values(&b, "orders", 3000).await;
    assert_eq!(got, values(&before, 0));
    b.stop().await;
}

/// Subscribes to partition 0 from offset 0 until `n` records arrived; their values.
async fn subscribe_values(b: &Connection, topic: &str, n: usize) -> Vec<String> {
    let mut stream = b
        .consume()
        .subscribe(pb::SubscribeRequest {
            topic: topic.into(),
            partition: 0,
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::Offset(0)),
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut out = Vec::new();
    within(async {
        while out.len() < n {
            let r = stream
                .message()
                .await
                .expect("a message")
                .expect("not the end");
            out.extend(values(&r.batches, 0));
        }
    })
    .await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_for_a_while_delays_copies_never_appends_and_reads_say_unavailable() {
    let bucket = bucket().await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], s3::PORT))).await;
    let mut settings = bucket.settings();
    settings.endpoint = format!("http://{}", proxy.addr);
    settings.request_timeout_ms = 1_000;
    let b = TestBroker::start_with(|c| {
        c.remote_storage = settings;
        c.storage.retention_check_interval_ms = 100;
    })
    .await;
    create_tiered(&b, "jobs", 1).await;
    produce_batches(&b, "jobs", "j", 0, 60).await;
    let d = copied_and_trimmed(&b, "jobs").await;

    proxy.take_down();
    // Appends go on; the copies wait.
    produce_batches(&b, "jobs", "j", 1200, 60).await;
    let lagging = within(async {
        loop {
            let d = describe_topic(&b, "jobs").await.partitions.remove(0);
            if d.upload_lag_segments > 0 {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(lagging.log_end_offset, 2400);
    assert_eq!(
        lagging.local_log_start_offset, d.local_log_start_offset,
        "nothing uncopied is deleted"
    );
    // A read of copied offsets fails, clearly and retriably.
    let r = b
        .consume()
        .fetch(pb::FetchRequest {
            partitions: vec![fetch_partition("jobs", 0, 0)],
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    let err = r.results[0].error.as_ref().expect("an inline error");
    assert_eq!(
        err.code,
        ErrorCode::RemoteStorageUnavailable as i32,
        "{err:?}"
    );
    assert!(
        err.message.contains("offset 0 of jobs/0"),
        "{}",
        err.message
    );
    // Local offsets are still served.
    let local = fetch_all(&b, "jobs", 0, d.local_log_start_offset).await;
    assert_eq!(
        values(&local, d.local_log_start_offset).len() as u64,
        2400 - d.local_log_start_offset
    );

    proxy.bring_back();
    let caught_up = copied_and_trimmed(&b, "jobs").await;
    assert!(caught_up.remote_log_end_offset > d.remote_log_end_offset);
    let all = fetch_all(&b, "jobs", 0, 0).await;
    let expected: Vec<String> = (0..2400).map(|i| format!("j-{i}")).collect();
    assert_eq!(values(&all, 0), expected);
    b.stop().await;
}

/// `run`'s error for a broker started with `settings`.
async fn start_error(settings: runnel_broker::config::RemoteStorageSettings) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = runnel_test_support::broker::test_config(dir.path());
    config.remote_storage = settings;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = within(runnel_broker::run(config, listener, async {}))
        .await
        .expect_err("the start is refused");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_start_with_one_line_naming_the_setting() {
    let bucket = bucket().await;
    let mut s = bucket.settings();
    s.bucket = "no-such-bucket-here".into();
    let e = start_error(s).await;
    assert!(
        e.contains("remote_storage.bucket") && e.contains("does not exist"),
        "{e}"
    );

    let mut s = bucket.settings();
    s.secret_access_key = "wrong".into();
    let e = start_error(s).await;
    assert!(e.contains("remote_storage.secret_access_key"), "{e}");

    // An HTTP server that is not S3: it answers every request with a page of HTML.
    let not_s3 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = not_s3.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = not_s3.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let body = "<html>hello</html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
    let mut s = bucket.settings();
    s.endpoint = format!("http://{addr}");
    s.request_timeout_ms = 1_000;
    let e = start_error(s).await;
    assert!(e.contains("remote_storage.endpoint"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // And a topic cannot turn tiered storage on without a store, nor off once on.
    let plain = TestBroker::start().await;
    let err = plain
        .admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "t".into(),
            partition_count: 1,
            config: Some(pb::TopicConfig {
                remote_storage: Some(true),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused");
    assert_status(
        &err,
        ErrorCode::InvalidConfig,
        "config.remote_storage true needs tiered storage",
    );
    let b = broker(&bucket).await;
    create_tiered(&b, "t", 1).await;
    let err = b
        .admin()
        .alter_topic_config(pb::AlterTopicConfigRequest {
            topic: "t".into(),
            set: Some(pb::TopicConfig {
                remote_storage: Some(false),
                ..Default::default()
            }),
            reset: vec![],
        })
        .await
        .expect_err("refused");
    assert_status(
        &err,
        ErrorCode::InvalidConfig,
        "set.remote_storage cannot be turned off",
    );
    b.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_directory_is_restored_from_the_bucket() {
    let bucket = bucket().await;
    let b = broker(&bucket).await;
    create_tiered(&b, "events", 1).await;
    produce_batches(&b, "events", "e", 0, 100).await;
    let d = copied_and_trimmed(&b, "events").await;
    let copied_end = d.remote_log_end_offset;
    let before = fetch_all(&b, "events", 0, 0).await;
    // The disk dies: the broker and its whole data directory are gone.
    let (_, dir) = b.stop().await;
    drop(dir);

    let b = broker(&bucket).await;
    let restored = describe_topic(&b, "events").await;
    assert_eq!(restored.partition_count, 1);
    assert_eq!(
        restored.config.as_ref().and_then(|c| c.remote_storage),
        Some(true)
    );
    let p = &restored.partitions[0];
    assert_eq!((p.log_start_offset, p.log_end_offset), (0, copied_end));
    // Everything copied reads back at the same offsets with the same bytes; what was not
    // copied (the active segment) is lost, as documented.
    let after = fetch_all(&b, "events", 0, 0).await;
    assert_eq!(after[..], before[..after.len()]);
    assert_eq!(values(&after, 0).len() as u64, copied_end);
    // New records follow at the end.
    let r = produce(&b, "events", 0, vec![batch_of("new", 0, 3)]).await;
    assert_eq!(r.batches[0].base_offset, copied_end);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_copies_takes_them_over_and_the_first_stops() {
    let bucket = bucket().await;
    let a = broker(&bucket).await;
    create_tiered(&a, "shared", 1).await;
    produce_batches(&a, "shared", "s", 0, 100).await;
    copied_and_trimmed(&a, "shared").await;
    // Broker b starts on an empty data directory over the same bucket: it restores the
    // topic and claims its manifest.
    let b = broker(&bucket).await;
    let claimed = describe_topic(&b, "shared").await.partitions.remove(0);
    // a rolls more segments; its next manifest write meets b's, and a stops copying.
    produce_batches(&a, "shared", "s", 2000, 100).await;
    let a_side = within(async {
        loop {
            let d = describe_topic(&a, "shared").await.partitions.remove(0);
            if d.upload_lag_segments > 0 {
                // Give a's uploader time for several passes: it must stay behind.
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                return describe_topic(&a, "shared").await.partitions.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        a_side.upload_lag_segments > 0,
        "a copies nothing more: {a_side:?}"
    );
    assert_eq!(a_side.remote_log_end_offset, claimed.remote_log_end_offset);
    // b's copies are intact: they read back as a wrote them.
    let from_b = fetch_all(&b, "shared", 0, 0).await;
    let expected: Vec<String> = (0..claimed.remote_log_end_offset)
        .map(|i| format!("s-{i}"))
        .collect();
    assert_eq!(values(&from_b, 0), expected);
    a.stop().await;
    b.stop().await;
}
