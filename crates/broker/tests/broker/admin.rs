//! AdminService: topics and broker information.

use runnel_proto::pb::{self, DurabilityPolicy, ErrorCode};

use runnel_test_support::prelude::*;

#[tokio::test]
async fn create_list_describe_and_delete_a_topic() {
    let b = TestBroker::start().await;
    let mut admin = b.admin();
    let created = admin
        .create_topic(pb::CreateTopicRequest {
            topic: "orders".into(),
            partition_count: 3,
            config: Some(pb::TopicConfig {
                retention_ms: Some(60_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(created.partition_count, 3);
    assert_eq!(created.partitions.len(), 3);
    assert_eq!(created.config_overrides, ["retention_ms"]);
    let config = created.config.unwrap();
    assert_eq!(config.retention_ms, Some(60_000));
    assert_eq!(config.segment_bytes, Some(1 << 30));
    assert_eq!(config.durability, Some(DurabilityPolicy::Interval as i32));
    create_topic(&b, "alpha", 1).await;

    let listed = admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    let names: Vec<_> = listed
        .iter()
        .map(|t| (t.topic.as_str(), t.partition_count))
        .collect();
    assert_eq!(names, [("alpha", 1), ("orders", 3)]);

    produce(&b, "orders", 1, vec![batch(5, 1_000)]).await;
    let d = describe_topic(&b, "orders").await;
    let p1 = &d.partitions[1];
    assert_eq!(
        (p1.partition, p1.log_start_offset, p1.log_end_offset),
        (1, 0, 5)
    );
    assert_eq!(p1.segment_count, 1);
    assert!(p1.size_bytes > 0);
    assert_eq!(d.partitions[0].log_end_offset, 0);

    let dir = b.data_dir().join("topics/orders");
    assert!(dir.join("topic.toml").exists());
    admin
        .delete_topic(pb::DeleteTopicRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap();
    assert!(!dir.exists(), "the topic directory leaves topics/ at once");
    let err = admin
        .describe_topic(pb::DescribeTopicRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::UnknownTopic, "\"orders\" does not exist");

    // The name can be reused at once, and the new topic starts empty.
    create_topic(&b, "orders", 1).await;
    assert!(fetch_all(&b, "orders", 0, 0).await.is_empty());
    // Background removal of the old files finishes.
    within(async {
        while std::fs::read_dir(b.data_dir().join("deleted"))
            .unwrap()
            .count()
            > 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn admin_errors_carry_their_documented_status() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_topics = 2;
        c.limits.max_partitions_per_topic = 8;
        c.limits.max_partitions = 10;
    })
    .await;
    let mut admin = b.admin();
    let create = |topic: &str, partition_count, config| pb::CreateTopicRequest {
        topic: topic.into(),
        partition_count,
        config,
    };
    create_topic(&b, "a", 8).await;

    let e = admin.create_topic(create("a", 1, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::TopicExists, "topic \"a\" already exists");

    let e = admin
        .create_topic(create("a/b", 1, None))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidTopicName,
        "character '/' at 1 is not one of A-Z a-z 0-9 . _ -",
    );
    let long = "x".repeat(250);
    let e = admin
        .create_topic(create(&long, 1, None))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidTopicName, "more than 249");
    let e = admin.create_topic(create("..", 1, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::InvalidTopicName, "not allowed");

    let e = admin.create_topic(create("b", 0, None)).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidPartitionCount,
        "partition_count 0 is outside [1, 8]",
    );
    let e = admin.create_topic(create("b", 9, None)).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidPartitionCount,
        "max_partitions_per_topic",
    );

    // Each bad config, with the status it gets. An enum value the broker does not know is a
    // malformed request ("Compatibility"); the unspecified value is a bad config.
    let bad_configs = [
        (
            pb::TopicConfig {
                segment_bytes: Some(1000),
                ..Default::default()
            },
            ErrorCode::InvalidConfig,
            "config.segment_bytes 1000 is outside [4096, 2147483648]",
        ),
        (
            pb::TopicConfig {
                durability: Some(0),
                ..Default::default()
            },
            ErrorCode::InvalidConfig,
            "config.durability",
        ),
        (
            pb::TopicConfig {
                durability: Some(99),
                ..Default::default()
            },
            ErrorCode::InvalidRequest,
            "config.durability 99 is not a known policy",
        ),
        (
            pb::TopicConfig {
                max_batch_bytes: Some(100),
                ..Default::default()
            },
            ErrorCode::InvalidConfig,
            "config.max_batch_bytes 100",
        ),
    ];
    for (bad, code, needle) in bad_configs {
        let e = admin
            .create_topic(create("b", 1, Some(bad)))
            .await
            .unwrap_err();
        assert_status(&e, code, needle);
    }

    let e = admin.create_topic(create("b", 3, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "max_partitions (10)");
    create_topic(&b, "b", 1).await;
    let e = admin.create_topic(create("c", 1, None)).await.unwrap_err();
    assert_status(&e, ErrorCode::LimitExceeded, "max_topics (2) reached");

    let e = admin
        .delete_topic(pb::DeleteTopicRequest {
            topic: "zzz".into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "\"zzz\"");
    let e = admin
        .describe_topic(pb::DescribeTopicRequest {
            topic: "a b".into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidTopicName, "' ' at 1");

    // Nothing was created by the failed calls.
    let topics = admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(topics.len(), 2);
}

#[tokio::test]
async fn alter_topic_config_takes_effect_without_restart() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let mut admin = b.admin();
    let altered = admin
        .alter_topic_config(pb::AlterTopicConfigRequest {
            topic: "t".into(),
            set: Some(pb::TopicConfig {
                max_batch_bytes: Some(200),
                segment_ms: Some(1000),
                ..Default::default()
            }),
            reset: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(altered.config_overrides, ["max_batch_bytes", "segment_ms"]);
    assert_eq!(altered.config.unwrap().max_batch_bytes, Some(200));

    let big = batch(20, 1_000);
    assert!(big.len() > 200);
    let r = produce(&b, "t", 0, vec![big.clone()]).await;
    assert_inline(
        r.error.as_ref(),
        ErrorCode::BatchTooLarge,
        "partitions[0].batches[0]: batch of",
    );
    assert!(
        r.error
            .unwrap()
            .message
            .contains("max_batch_bytes (200 bytes) of topic \"t\"")
    );

    let reset = admin
        .alter_topic_config(pb::AlterTopicConfigRequest {
            topic: "t".into(),
            set: None,
            reset: vec!["max_batch_bytes".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.config_overrides, ["segment_ms"]);
    assert_eq!(reset.config.unwrap().max_batch_bytes, Some(1 << 20));
    let r = produce(&b, "t", 0, vec![big]).await;
    assert!(r.error.is_none(), "{:?}", r.error);

    // Invalid changes change nothing.
    for (req, needle) in [
        (
            pb::AlterTopicConfigRequest {
                topic: "t".into(),
                set: Some(pb::TopicConfig {
                    segment_ms: Some(5),
                    ..Default::default()
                }),
                reset: vec!["segment_ms".into()],
            },
            "reset[0]: \"segment_ms\" is also in set",
        ),
        (
            pb::AlterTopicConfigRequest {
                topic: "t".into(),
                set: None,
                reset: vec!["colour".into()],
            },
            "reset[0]: \"colour\" is not a TopicConfig field",
        ),
        (
            pb::AlterTopicConfigRequest {
                topic: "t".into(),
                set: Some(pb::TopicConfig {
                    flush_interval_ms: Some(0),
                    retention_ms: Some(1),
                    ..Default::default()
                }),
                reset: vec![],
            },
            "flush_interval_ms 0 is below 1",
        ),
    ] {
        let e = admin.alter_topic_config(req).await.unwrap_err();
        assert_status(&e, ErrorCode::InvalidConfig, needle);
    }
    let d = describe_topic(&b, "t").await;
    assert_eq!(d.config_overrides, ["segment_ms"]);
}

#[tokio::test]
async fn create_partitions_grows_a_topic() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    produce(&b, "t", 1, vec![batch(3, 1_000)]).await;
    let mut admin = b.admin();
    let grow = |n| pb::CreatePartitionsRequest {
        topic: "t".into(),
        partition_count: n,
    };
    assert_eq!(
        admin
            .create_partitions(grow(4))
            .await
            .unwrap()
            .into_inner()
            .partition_count,
        4
    );
    // A retry is a no-op; lowering is refused.
    assert_eq!(
        admin
            .create_partitions(grow(4))
            .await
            .unwrap()
            .into_inner()
            .partition_count,
        4
    );
    let e = admin.create_partitions(grow(3)).await.unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidPartitionCount,
        "partition_count 3 is below the current count 4 of topic \"t\"",
    );
    let r = produce(&b, "t", 3, vec![batch(2, 1_000)]).await;
    assert_eq!(r.batches[0].base_offset, 0);
    assert_eq!(fetch_all(&b, "t", 1, 0).await.len(), 1);
}

#[tokio::test]
async fn topics_and_config_survive_a_restart() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    b.admin()
        .alter_topic_config(pb::AlterTopicConfigRequest {
            topic: "t".into(),
            set: Some(pb::TopicConfig {
                durability: Some(DurabilityPolicy::Always as i32),
                ..Default::default()
            }),
            reset: vec![],
        })
        .await
        .unwrap();
    b.admin()
        .create_partitions(pb::CreatePartitionsRequest {
            topic: "t".into(),
            partition_count: 3,
        })
        .await
        .unwrap();
    produce(&b, "t", 2, vec![batch(4, 1_000)]).await;
    let b = b.restart().await;
    let d = within(describe_topic(&b, "t")).await;
    assert_eq!(d.partition_count, 3);
    assert_eq!(d.config_overrides, ["durability"]);
    assert_eq!(
        d.config.unwrap().durability,
        Some(DurabilityPolicy::Always as i32)
    );
    assert_eq!(d.partitions[2].log_end_offset, 4);
}

#[tokio::test]
async fn topics_with_the_longest_names_are_deleted_and_created_again() {
    let b = TestBroker::start().await;
    for len in [236, 249] {
        let name = "n".repeat(len);
        for _ in 0..2 {
            create_topic(&b, &name, 2).await;
            produce(&b, &name, 1, vec![batch(2, 1_000)]).await;
            b.admin()
                .delete_topic(pb::DeleteTopicRequest {
                    topic: name.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("deleting a {len}-character name: {e:?}"));
            let listed = b
                .admin()
                .list_topics(pb::ListTopicsRequest {})
                .await
                .unwrap()
                .into_inner();
            assert!(listed.topics.iter().all(|t| t.topic != name), "{listed:?}");
        }
    }
}

#[tokio::test]
async fn the_largest_uint64_values_are_taken_and_survive_a_restart() {
    let b = TestBroker::start().await;
    let config = pb::TopicConfig {
        retention_ms: Some(u64::MAX),
        retention_bytes: Some(u64::MAX),
        segment_ms: Some(u64::MAX),
        flush_interval_ms: Some(u64::MAX),
        ..Default::default()
    };
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "forever".into(),
            partition_count: 1,
            config: Some(config),
        })
        .await
        .expect("0 or more, as documented");
    produce(&b, "forever", 0, vec![batch(2, 1_000)]).await;
    let b = b.restart().await;
    let c = within(describe_topic(&b, "forever")).await.config.unwrap();
    // Durations past i64::MAX ms (292 million years) are held as that.
    let max_ms = i64::MAX as u64;
    assert_eq!(
        (c.retention_ms, c.segment_ms, c.flush_interval_ms),
        (Some(max_ms), Some(max_ms), Some(max_ms))
    );
    assert_eq!(c.retention_bytes, Some(u64::MAX));
    assert_eq!(fetch_all(&b, "forever", 0, 0).await.len(), 1);
}

#[tokio::test]
async fn unfinished_creates_are_cleaned_up_at_start() {
    let b = TestBroker::start().await;
    create_topic(&b, "kept", 1).await;
    let (config, dir) = b.stop().await;
    // A create that crashed before writing topic.toml, and partitions past the count.
    std::fs::create_dir_all(config.data_dir.join("topics/half/0")).unwrap();
    std::fs::create_dir_all(config.data_dir.join("topics/kept/5")).unwrap();
    let b = TestBroker::start_with(|c| c.data_dir = config.data_dir.clone()).await;
    let topics = within(b.admin().list_topics(pb::ListTopicsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].topic, "kept");
    assert!(!config.data_dir.join("topics/half").exists());
    assert!(!config.data_dir.join("topics/kept/5").exists());
    drop(dir);
}

#[tokio::test]
async fn broker_info_reports_the_broker() {
    let b = TestBroker::start().await;
    let info = b
        .admin()
        .broker_info(pb::BrokerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.data_dir, b.data_dir().display().to_string());
    assert!(info.disk_total_bytes > 0 && info.disk_free_bytes <= info.disk_total_bytes);
    assert!(info.start_time_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn a_second_broker_cannot_share_the_data_directory() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = runnel_broker::run(b.config.clone(), listener, async {})
        .await
        .unwrap_err();
    assert!(matches!(err, runnel_broker::Error::Locked { .. }), "{err}");
}
