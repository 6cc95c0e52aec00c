//! `kill -9` at random moments under load: idempotent producers asking for durable acks and a
//! consumer group committing offsets, while the broker is killed and started again, again and
//! again. At the end every acknowledged record is stored exactly once, in its producer's
//! order, at the offset it was acknowledged at, and no committed offset ever went backwards.
//!
//! The kill times come from a seed the test prints; `RUNNEL_CRASH_SEED=<seed>` replays them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use runnel_client::{Acks, ConsumerConfig, OffsetReset, ProducerConfig, ProducerRecord};
use runnel_test_support::random::Rng;

use super::client_at;
use super::proxy::Proxy;
use crate::harness::*;

const TOPIC: &str = "crash";
const GROUP: &str = "crash-readers";
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 3;
const KILLS: usize = 12;
/// Records a producer keeps waiting for before it awaits the oldest.
const IN_FLIGHT: usize = 256;

/// What one producer sent: per sequence number, the offset it was acknowledged at, or none
/// if its delivery failed.
type Outcomes = Vec<Option<u64>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_repeats_nothing_acknowledged() {
    let seed = std::env::var("RUNNEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs())
        });
    eprintln!("RUNNEL_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let mut b = Broker::start().await;
    create_topic(&b, TOPIC, PARTITIONS).await;
    // The restarted broker listens on new ports; the proxy keeps the clients' address.
    let proxy = Proxy::start(b.grpc, None, 0).await;
    let addr = proxy.addr.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce_until(addr.clone(), p, stop.clone())))
        .collect();
    let reader = tokio::spawn(read_in_group(addr.clone(), stop.clone()));
    let watcher = tokio::spawn(watch_commits(addr.clone(), stop.clone()));

    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(450) as u64)).await;
        b.kill9();
        b = b.start_again().await;
        proxy.set_upstream(b.grpc);
    }
    // Load on the last broker for a moment, then let everything finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for p in producers {
        sent.push(p.await.expect("producer task"));
    }
    let consumed = reader.await.expect("reader task");
    let commits = watcher.await.expect("watcher task");

    let stored: Vec<Vec<String>> = {
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            out.push(values(&fetch_all(&b, TOPIC, p, 0).await, 0));
        }
        out
    };
    let acked = check_acknowledged(&sent, &stored);
    check_commits(&commits);
    assert!(consumed > 0, "the group read nothing");
    eprintln!(
        "{KILLS} kills in {:.1} s: {acked} records acknowledged, {} stored, {consumed} read \
         by the group, {} committed offsets observed",
        started.elapsed().as_secs_f64(),
        stored.iter().map(Vec::len).sum::<usize>(),
        commits.len(),
    );
}

/// The value of producer `p`'s record number `seq`.
fn value(p: usize, seq: usize) -> String {
    format!("p{p}-{seq:08}")
}

/// Sends records to the partitions in turn with durable acks until `stop`, then waits for
/// every delivery.
async fn produce_until(addr: String, p: usize, stop: Arc<AtomicBool>) -> Outcomes {
    let c = client_at(&addr).await;
    let producer = c
        .producer(ProducerConfig {
            acks: Acks::Durable,
            linger: Duration::from_millis(1),
            // Longer than any restart: every record is delivered in the end.
            delivery_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let mut waiting = std::collections::VecDeque::new();
    let mut outcomes = Vec::new();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let partition = (seq % PARTITIONS as usize) as u32;
        let record = ProducerRecord::new(TOPIC, value(p, seq)).partition(partition);
        waiting.push_back(producer.send(record).await.expect("queued"));
        outcomes.push(None);
        seq += 1;
        if waiting.len() >= IN_FLIGHT {
            let first = seq - waiting.len();
            let d = waiting.pop_front().expect("a delivery");
            outcomes[first] = d.await.ok().map(|m| m.offset);
        }
    }
    let first = seq - waiting.len();
    for (i, d) in waiting.into_iter().enumerate() {
        outcomes[first + i] = d.await.ok().map(|m| m.offset);
    }
    outcomes
}

/// A member of the group with auto-commit, reading until `stop`; returns how many records
/// it got (errors while the broker is down are expected and skipped).
async fn read_in_group(addr: String, stop: Arc<AtomicBool>) -> usize {
    let c = client_at(&addr).await;
    let mut consumer = c
        .consumer(ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            auto_commit_interval: Some(Duration::from_millis(100)),
            session_timeout: Some(Duration::from_secs(6)),
            ..ConsumerConfig::group(GROUP)
        })
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut read = 0;
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Ok(Some(Ok(_))) => read += 1,
            Ok(Some(Err(_))) | Err(_) => {}
            Ok(None) => break,
        }
    }
    // The broker may be restarting; the commit on close is not what is checked.
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
    read
}

/// Reads the group's committed offsets every few milliseconds until `stop`: each partition's
/// observations in order (reads while the broker is down fail and are skipped).
async fn watch_commits(addr: String, stop: Arc<AtomicBool>) -> Vec<(u32, u64)> {
    let c = client_at(&addr).await;
    let admin = c.admin();
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let read = tokio::time::timeout(Duration::from_secs(1), admin.fetch_committed(GROUP, &[]));
        if let Ok(Ok(offsets)) = read.await {
            for o in offsets {
                if let Some(offset) = o.offset {
                    seen.push((o.partition, offset));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// Every acknowledged record is stored once, at its acknowledged offset, after the records
/// its producer sent to that partition before it; unacknowledged records are stored at most
/// once. Returns how many were acknowledged.
fn check_acknowledged(sent: &[Outcomes], stored: &[Vec<String>]) -> usize {
    let mut at: HashMap<&str, (u32, u64)> = HashMap::new();
    for (p, values) in stored.iter().enumerate() {
        for (offset, v) in values.iter().enumerate() {
            let previous = at.insert(v.as_str(), (p as u32, offset as u64));
            assert!(
                previous.is_none(),
                "{v} is stored twice: {previous:?} and {:?}",
                (p, offset)
            );
        }
    }
    let mut acked = 0;
    for (p, outcomes) in sent.iter().enumerate() {
        // Per partition, the offsets of this producer's stored records in sequence order.
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (seq, outcome) in outcomes.iter().enumerate() {
            let v = value(p, seq);
            let partition = (seq % PARTITIONS as usize) as u32;
            let stored_at = at.get(v.as_str()).copied();
            if let Some(offset) = outcome {
                acked += 1;
                assert_eq!(
                    stored_at,
                    Some((partition, *offset)),
                    "{v} was acknowledged at offset {offset} of partition {partition}"
                );
            }
            if let Some((_, offset)) = stored_at {
                if let Some(&before) = last.get(&partition) {
                    assert!(
                        offset > before,
                        "{v} at {offset} is stored before an earlier record at {before}"
                    );
                }
                last.insert(partition, offset);
            }
        }
    }
    assert!(acked > 0, "nothing was acknowledged");
    acked
}

/// No partition's committed offset is ever seen lower than it was seen before.
fn check_commits(seen: &[(u32, u64)]) {
    let mut high: HashMap<u32, u64> = HashMap::new();
    for &(partition, offset) in seen {
        let before = high.entry(partition).or_insert(offset);
        assert!(
            offset >= *before,
            "partition {partition}'s committed offset went back from {before} to {offset}"
        );
        *before = offset;
    }
    assert!(!seen.is_empty(), "no committed offset was ever observed");
}
