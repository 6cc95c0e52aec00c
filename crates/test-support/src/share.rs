//! Share groups under chaos: consumers that accept most records, release, reject or forget
//! some, crash now and then, and keep going while the broker itself is killed, recording in
//! one [`Ledger`] what the broker confirmed, so that a test can check that every record ends
//! exactly once accepted or dead-lettered.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_proto::pb::{self, AckType};
use tokio::sync::watch;

use crate::Connection;
use crate::random::Rng;

/// What every consumer saw, under one lock.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Values whose ACCEPT the broker confirmed.
    pub accepted: BTreeSet<String>,
    /// Values whose ACCEPT the broker confirmed a second time: must stay empty.
    pub accepted_twice: Vec<String>,
    /// Values accepted in requests whose answer never came (the broker died meanwhile): they
    /// may or may not be accepted.
    pub in_doubt: BTreeSet<String>,
    /// Values delivered again after their ACCEPT was confirmed: must stay empty.
    pub delivered_after_accept: Vec<String>,
    /// Simulated consumer crashes.
    pub crashes: u32,
    /// Fetches that failed (the broker was down).
    pub failed_fetches: u32,
}

/// A record's acknowledgement waiting for the next fetch, and its value if it accepts.
type Pending = (pb::Acknowledgement, Option<String>);

/// Runs one chaotic member of `group` reading `topic` until `stop` says so, connecting to
/// whatever broker `broker` names (it changes when the broker restarts on a new port).
async fn chaotic_consumer(
    broker: watch::Receiver<Connection>,
    group: String,
    topic: String,
    index: u64,
    stop: watch::Receiver<bool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut rng = Rng::new(0x5eed + index);
    let mut incarnation = 0;
    let mut pending: Vec<Pending> = Vec::new();
    while !*stop.borrow() {
        if rng.below(40) == 0 {
            lock(&ledger).crashes += 1;
            incarnation += 1;
            pending.clear();
            continue;
        }
        let request = pb::ShareFetchRequest {
            group_id: group.clone(),
            member_id: format!("c{index}-{incarnation}"),
            topics: vec![topic.clone()],
            acknowledgements: pending.iter().map(|(a, _)| a.clone()).collect(),
            max_records: 100,
            max_wait_ms: 100,
            format: pb::RecordFormat::Records.into(),
            // Small acquisitions, split batches: members interleave within batches.
            record_limit: true,
            ..Default::default()
        };
        let conn = broker.borrow().clone();
        let answer = conn.share().share_fetch(request).await;
        let resp = match answer {
            Ok(r) => r.into_inner(),
            Err(_) => {
                settle(&ledger, &mut pending, None);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        settle(&ledger, &mut pending, Some(&resp.acknowledgements));
        pending = decide(&mut rng, index, &topic, resp.partitions, &ledger);
    }
}

/// Records what became of the acknowledgements sent: the broker's `results`, or none when
/// the request failed (its acceptances are then in doubt).
fn settle(
    ledger: &Mutex<Ledger>,
    pending: &mut Vec<Pending>,
    results: Option<&[pb::AcknowledgementResult]>,
) {
    let mut l = lock(ledger);
    let Some(results) = results else {
        l.failed_fetches += 1;
        l.in_doubt
            .extend(pending.drain(..).filter_map(|(_, value)| value));
        return;
    };
    for ((_, value), result) in pending.drain(..).zip(results) {
        // An acknowledgement of a record whose lock expired meanwhile is refused.
        if let (Some(v), None) = (value, &result.error)
            && !l.accepted.insert(v.clone())
        {
            l.accepted_twice.push(v);
        }
    }
}

/// Chooses what to do with each record fetched: accept 80%, release 10% (at once or after
/// 10 ms), reject 5%, forget 5% (its lock expires).
fn decide(
    rng: &mut Rng,
    index: u64,
    topic: &str,
    partitions: Vec<pb::SharePartitionRecords>,
    ledger: &Mutex<Ledger>,
) -> Vec<Pending> {
    let mut out = Vec::new();
    for p in partitions {
        for r in p.records {
            let value =
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            {
                let mut l = lock(ledger);
                if l.accepted.contains(&value) {
                    l.delivered_after_accept.push(value.clone());
                }
            }
            let mut ack = pb::Acknowledgement {
                topic: topic.to_owned(),
                partition: p.partition,
                first_offset: r.offset,
                last_offset: r.offset,
                r#type: AckType::Accept.into(),
                ..Default::default()
            };
            let accepted = match rng.below(100) {
                0..=79 => Some(value),
                80..=89 => {
                    ack.r#type = AckType::Release.into();
                    ack.delay_ms = Some(rng.below(2) as u64 * 10);
                    None
                }
                90..=94 => {
                    ack.r#type = AckType::Reject.into();
                    ack.error = format!("rejected by c{index}");
                    None
                }
                _ => continue,
            };
            out.push((ack, accepted));
        }
    }
    out
}

/// Checks the ledger against the dead-letter topic's values and every value produced:
/// nothing accepted twice or dead-lettered twice or both, nothing delivered after its
/// acceptance was confirmed, and every record accepted, dead-lettered, or accepted in doubt.
///
/// # Panics
///
/// On the first property that fails.
pub fn check(ledger: &Ledger, dead: &[String], produced: &BTreeSet<String>) {
    let accepted = &ledger.accepted;
    let dead_set: BTreeSet<&String> = dead.iter().collect();
    assert!(
        ledger.accepted_twice.is_empty(),
        "accepted twice: {:?}",
        ledger.accepted_twice
    );
    assert_eq!(
        dead_set.len(),
        dead.len(),
        "a record was dead-lettered twice"
    );
    assert!(
        dead_set.iter().all(|d| !accepted.contains(*d)),
        "a record was accepted and dead-lettered"
    );
    assert!(
        ledger.delivered_after_accept.is_empty(),
        "delivered again after their acceptance was confirmed: {:?}",
        ledger.delivered_after_accept
    );
    let lost: Vec<&String> = produced
        .iter()
        .filter(|v| {
            !accepted.contains(*v) && !dead_set.contains(v) && !ledger.in_doubt.contains(*v)
        })
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "records neither accepted nor dead-lettered: {lost:?}"
    );
    assert!(
        ledger.accepted.len() + dead.len() <= produced.len() + ledger.in_doubt.len(),
        "more outcomes than records"
    );
}

/// The queue of the chaos tests: the topics `q` (2 partitions) and `q.dlq`, the share group
/// `group` dead-lettering to `q.dlq` after 3 deliveries with a backoff of 5 and 20 ms, and
/// `records` records `r-0`, `r-1`... on `q` (durable), 1,000 per batch.
///
/// # Panics
///
/// If a call fails.
pub async fn set_up_queue(b: &Connection, group: &str, records: u64) {
    crate::rpc::create_topic(b, "q", 2).await;
    crate::rpc::create_topic(b, "q.dlq", 1).await;
    b.share()
        .alter_share_group(pb::AlterShareGroupRequest {
            group_id: group.into(),
            settings: Some(pb::ShareGroupSettings {
                dead_letter_topic: Some("q.dlq".into()),
                max_deliveries: Some(3),
                backoff_ms: vec![5, 20],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("alter the share group");
    for chunk in 0..records.div_ceil(1000) {
        let partition = (chunk % 2) as u32;
        let n = (records - chunk * 1000).min(1000);
        let batch = crate::batches::batch_of("r", chunk * 1000, n);
        let r = crate::rpc::produce_acked(b, "q", partition, pb::Acks::Durable, vec![batch]).await;
        assert!(r.error.is_none(), "{r:?}");
    }
}

/// Chaotic members of a group reading `q`, and what they saw.
pub struct Chaos {
    /// What every member saw.
    pub ledger: Arc<Mutex<Ledger>>,
    /// Where the members connect: send a new connection when the broker moves.
    pub broker: watch::Sender<Connection>,
    stop: watch::Sender<bool>,
    members: Vec<tokio::task::JoinHandle<()>>,
    group: String,
}

impl Chaos {
    /// Starts `members` chaotic members of `group` reading `q` on `b`.
    pub fn start(b: &Connection, group: &str, members: u64) -> Self {
        let (broker, connect) = watch::channel(b.clone());
        let (stop, stopped) = watch::channel(false);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let members = (0..members)
            .map(|i| {
                let run = chaotic_consumer(
                    connect.clone(),
                    group.to_owned(),
                    "q".into(),
                    i,
                    stopped.clone(),
                    ledger.clone(),
                );
                tokio::spawn(run)
            })
            .collect();
        Chaos {
            ledger,
            broker,
            stop,
            members,
            group: group.to_owned(),
        }
    }

    /// Waits until the group has done `records` records (accepted or dead-lettered).
    pub async fn wait_done(&self, b: &Connection, records: u64) {
        crate::within(async {
            while done_records(b, &self.group).await.unwrap_or(0) < records {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Stops the members, and checks the ledger against `q.dlq` and the `records` produced
    /// ([`check`]); returns the dead letters' count and the ledger.
    ///
    /// # Panics
    ///
    /// If a member panicked or a property fails.
    pub async fn finish(self, b: &Connection, records: u64) -> (usize, Ledger) {
        let _ = self.stop.send(true);
        for m in self.members {
            m.await.expect("a member");
        }
        let dead = values_of(b, "q.dlq", 0).await;
        let produced: BTreeSet<String> = (0..records).map(|i| format!("r-{i}")).collect();
        let ledger = std::mem::take(&mut *lock(&self.ledger));
        check(&ledger, &dead, &produced);
        eprintln!(
            "chaos of {records} records: {} accepted, {} dead-lettered, {} accepted in doubt, {} member crashes, {} failed fetches",
            ledger.accepted.len(),
            dead.len(),
            ledger.in_doubt.len(),
            ledger.crashes,
            ledger.failed_fetches
        );
        (dead.len(), ledger)
    }
}

/// The values of every record of one partition of a topic.
pub async fn values_of(b: &Connection, topic: &str, partition: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let resp = b
            .consume()
            .fetch(pb::FetchRequest {
                partitions: vec![pb::FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_bytes: 0,
                }],
                format: pb::RecordFormat::Records.into(),
                ..Default::default()
            })
            .await
            .expect("fetch")
            .into_inner();
        let records = &resp.results[0].records;
        let Some(last) = records.last() else {
            return out;
        };
        offset = last.offset + 1;
        out.extend(
            records.iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            }),
        );
    }
}

/// The records a share group has done on every partition: the sum of the share-partition
/// start offsets.
pub async fn done_records(b: &Connection, group: &str) -> Option<u64> {
    let d = b
        .share()
        .describe_share_group(pb::DescribeShareGroupRequest {
            group_id: group.into(),
        })
        .await
        .ok()?
        .into_inner();
    Some(d.partitions.iter().map(|p| p.start_offset).sum())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
