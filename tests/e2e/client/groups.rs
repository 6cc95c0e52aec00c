//! The consumer as a group member against the real broker: assignments, commits, crashes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use runnel_client::{
    Consumer, ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord, Rebalance, StartAt,
    TopicPartition,
};

use super::client;
use crate::harness::*;

async fn produce_n(b: &Broker, topic: &str, n: u32) {
    let c = client(b).await;
    let producer = c
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..n {
        let d = producer
            .send(ProducerRecord::new(topic, format!("{i:05}")).key(format!("key-{i}")))
            .await
            .expect("queued");
        drop(d);
    }
    producer.close().await.expect("close");
}

fn group_config(group: &str, events: &Arc<Mutex<Vec<Rebalance>>>) -> ConsumerConfig {
    let events = events.clone();
    ConsumerConfig {
        auto_commit_interval: Some(Duration::from_millis(100)),
        on_rebalance: Some(Arc::new(move |e: &Rebalance| {
            events.lock().expect("events").push(e.clone());
        })),
        ..ConsumerConfig::group(group)
    }
}

/// Reads records until `done` says so, returning (partition, offset, value) triples.
async fn read_until(
    consumer: &mut Consumer,
    mut done: impl FnMut(&[(u32, u64, String)]) -> bool,
) -> Vec<(u32, u64, String)> {
    let mut got = Vec::new();
    while !done(&got) {
        let r = within(consumer.next())
            .await
            .expect("the stream goes on")
            .expect("a record");
        got.push((
            r.partition,
            r.offset,
            r.value_str().expect("utf-8").to_owned(),
        ));
    }
    got
}

#[tokio::test]
async fn a_member_crash_with_auto_commit_skips_nothing() {
    let b = Broker::start().await;
    create_topic(&b, "orders", 4).await;
    produce_n(&b, "orders", 2_000).await;
    let c = client(&b).await;

    // Member A reads part of the topic, letting auto-commit run, then crashes (its
    // connection drops without a commit or a goodbye).
    let events_a = Arc::new(Mutex::new(Vec::new()));
    let mut a = c
        .consumer(group_config("billing", &events_a))
        .expect("consumer");
    a.subscribe(&["orders"]).expect("subscribe");
    let first = read_until(&mut a, |got| got.len() >= 700).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One more poll so the last record counts as consumed and an auto-commit can go out.
    let _ = tokio::time::timeout(Duration::from_millis(300), a.next()).await;
    assert!(
        events_a
            .lock()
            .expect("events")
            .iter()
            .any(|e| matches!(e, Rebalance::Assigned(p) if !p.is_empty())),
        "A saw its assignment"
    );
    drop(a);

    // Member B takes over every partition and reads from the committed offsets.
    let events_b = Arc::new(Mutex::new(Vec::new()));
    let c2 = client(&b).await;
    let mut bm = c2
        .consumer(group_config("billing", &events_b))
        .expect("consumer");
    bm.subscribe(&["orders"]).expect("subscribe");
    let mut seen: BTreeSet<String> = first.iter().map(|(_, _, v)| v.clone()).collect();
    let second = read_until(&mut bm, |got| {
        got.iter()
            .map(|(_, _, v)| v.clone())
            .chain(seen.iter().cloned())
            .collect::<BTreeSet<_>>()
            .len()
            >= 2_000
    })
    .await;
    seen.extend(second.iter().map(|(_, _, v)| v.clone()));
    let all: BTreeSet<String> = (0..2_000).map(|i| format!("{i:05}")).collect();
    assert_eq!(seen, all, "every record delivered at least once");

    // B started each partition at or before where A stopped: nothing skipped, and at most
    // what A had read since its last commit is read twice.
    let mut a_next: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, o, _) in &first {
        a_next.insert(*p, o + 1);
    }
    let mut b_first: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, o, _) in &second {
        b_first.entry(*p).or_insert(*o);
    }
    for (p, start) in &b_first {
        assert!(
            *start <= a_next.get(p).copied().unwrap_or(0),
            "partition {p}: skipped"
        );
    }
    let duplicates = first.len() + second.len() - 2_000;
    assert!(
        duplicates < 700,
        "auto-commit kept the replay short: {duplicates}"
    );
    assert_eq!(bm.assignment().len(), 4);
    bm.close().await.expect("close");
}

#[tokio::test]
async fn revocation_commits_before_the_partition_moves() {
    let b = Broker::start().await;
    create_topic(&b, "events", 4).await;
    produce_n(&b, "events", 400).await;
    let c = client(&b).await;

    let events_a = Arc::new(Mutex::new(Vec::new()));
    let mut a = c
        .consumer(group_config("audit", &events_a))
        .expect("consumer");
    a.subscribe(&["events"]).expect("subscribe");
    let first = read_until(&mut a, |got| got.len() >= 400).await;
    assert_eq!(a.assignment().len(), 4);

    // A second member joins: A must give up two partitions, committing them first, while
    // it keeps polling.
    let events_b = Arc::new(Mutex::new(Vec::new()));
    let mut bm = c
        .consumer(group_config("audit", &events_b))
        .expect("consumer");
    bm.subscribe(&["events"]).expect("subscribe");
    let a_task = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(50), a.next()).await;
            if a.assignment().len() == 2 {
                return a;
            }
        }
    });
    // B gets its two partitions; their records were all consumed by A and committed on
    // revocation, so B reads nothing old: only the new records.
    let a = within(a_task).await.expect("A gave up two partitions");
    let revoked: Vec<TopicPartition> = events_a
        .lock()
        .expect("events")
        .iter()
        .filter_map(|e| match e {
            Rebalance::Revoked(p) => Some(p.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(revoked.len(), 2, "{:?}", events_a.lock().expect("events"));
    let committed = bm.committed(&revoked).await.expect("committed");
    for (tp, offset) in &committed {
        let consumed = first
            .iter()
            .filter(|(p, _, _)| *p == tp.partition)
            .map(|(_, o, _)| o + 1)
            .max();
        assert_eq!(
            *offset, consumed,
            "{tp}: committed exactly what was consumed"
        );
    }
    // Let B settle on its partitions, then describe the group.
    let quiet = tokio::time::timeout(Duration::from_millis(500), bm.next()).await;
    assert!(quiet.is_err(), "B has nothing old to read: {quiet:?}");
    assert_eq!(bm.assignment().len(), 2);
    let admin = c.admin();
    let d = admin.describe_group("audit").await.expect("describe");
    assert_eq!(d.members.len(), 2);
    // The partitions that moved were committed on revocation: B has no lag on them.
    for p in d
        .partitions
        .iter()
        .filter(|p| revoked.iter().any(|r| r.partition == p.partition))
    {
        assert_eq!(p.lag, Some(0), "{p:?}");
    }
    let groups = admin.list_groups().await.expect("list");
    assert_eq!(groups.len(), 1);
    a.close().await.expect("close a");
    bm.close().await.expect("close b");
}

#[tokio::test]
async fn manual_commits_and_group_admin() {
    let b = Broker::start().await;
    create_topic(&b, "jobs", 1).await;
    produce_n(&b, "jobs", 10).await;
    let c = client(&b).await;
    let mut consumer = c
        .consumer(ConsumerConfig {
            auto_commit_interval: None,
            ..ConsumerConfig::group("workers")
        })
        .expect("consumer");
    let tp = TopicPartition::new("jobs", 0);
    // Standalone with a group: start from the committed offset (none yet: earliest).
    consumer
        .assign(tp.clone(), StartAt::Committed)
        .expect("assign");
    let mut last = None;
    for _ in 0..4 {
        last = Some(
            within(consumer.next())
                .await
                .expect("more")
                .expect("record"),
        );
    }
    let last = last.expect("four records");
    consumer.commit_record(&last).await.expect("commit");
    assert_eq!(
        consumer
            .committed(std::slice::from_ref(&tp))
            .await
            .expect("committed"),
        vec![(tp.clone(), Some(4))]
    );
    drop(consumer);

    // A new consumer resumes at the commit.
    let mut again = c
        .consumer(ConsumerConfig {
            auto_commit_interval: None,
            ..ConsumerConfig::group("workers")
        })
        .expect("consumer");
    again
        .assign(tp.clone(), StartAt::Committed)
        .expect("assign");
    let r = within(again.next()).await.expect("more").expect("record");
    assert_eq!(r.offset, 4);
    again.commit().await.expect("commit position");
    drop(again);

    let admin = c.admin();
    let committed = admin.fetch_committed("workers", &[]).await.expect("fetch");
    assert_eq!(committed[0].offset, Some(5));
    let plan = admin
        .reset_offsets(runnel_client::ResetOffsets {
            group: "workers".into(),
            topics: vec![("jobs".into(), vec![])],
            all_topics: false,
            to: runnel_client::ResetTo::Earliest,
            dry_run: false,
            force: false,
        })
        .await
        .expect("reset");
    assert_eq!((plan[0].previous_offset, plan[0].new_offset), (Some(5), 0));
    admin.delete_group("workers").await.expect("delete");
    let err = admin.describe_group("workers").await.expect_err("gone");
    assert_eq!(err.code(), Some(ErrorCode::UnknownGroup));
}
