//! GroupService.Consume: group members whose membership the broker runs. Records arrive on
//! the stream, `processed` commits, partitions move between members with their commits, and
//! a member that leaves stores what it acknowledged first. Waits are bounded; nothing asserts
//! on time.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use runnel_proto::pb::{
    self, ErrorCode, group_consume_request::Request as Said,
    group_consume_response::Response as Told,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use runnel_test_support::prelude::*;

/// A broker whose groups allow short heartbeats.
async fn group_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.groups.min_session_timeout_ms = 200;
        c.groups.heartbeat_interval_ms = 100;
    })
    .await
}

/// One member: its requests and the broker's responses.
struct Member {
    tx: mpsc::Sender<pb::GroupConsumeRequest>,
    rx: Streaming<pb::GroupConsumeResponse>,
    /// What it received, per partition: (offset, value).
    got: BTreeMap<(String, u32), Vec<(u64, String)>>,
    assigned: BTreeSet<(String, u32)>,
    /// True once an assignment arrived.
    told_once: bool,
}

fn start(group: &str, topics: &[&str]) -> pb::GroupConsumeStart {
    pb::GroupConsumeStart {
        join: Some(pb::JoinGroup {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            client_id: "test".into(),
            ..Default::default()
        }),
        format: pb::RecordFormat::Records as i32,
        ..Default::default()
    }
}

impl Member {
    async fn open(b: &Connection, first: pb::GroupConsumeRequest) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue");
        let mut groups = pb::group_service_client::GroupServiceClient::new(b.new_channel());
        let rx = groups.consume(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Member {
            tx,
            rx,
            got: BTreeMap::new(),
            assigned: BTreeSet::new(),
            told_once: false,
        })
    }

    async fn join(b: &Connection, group: &str, topics: &[&str]) -> Self {
        let first = pb::GroupConsumeRequest {
            request: Some(Said::Start(start(group, topics))),
        };
        let mut m = Self::open(b, first).await.expect("consume stream");
        match m.next().await.expect("joined") {
            Told::Joined(j) => assert!(!j.member_id.is_empty()),
            other => panic!("expected joined first, got {other:?}"),
        }
        m
    }

    /// The next response; an error status ends the stream.
    async fn next(&mut self) -> Result<Told, tonic::Status> {
        let r = within(self.rx.message()).await?;
        let told = r
            .and_then(|r| r.response)
            .ok_or_else(|| tonic::Status::ok("stream ended"))?;
        match &told {
            Told::Assignment(a) => {
                assert!(a.revoke.is_empty(), "the broker releases partitions itself");
                let assigned: BTreeSet<_> = a
                    .assigned
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
                    .collect();
                assert!(
                    !self.told_once || self.assigned != assigned,
                    "an assignment is sent only when it changes: {assigned:?} again"
                );
                self.told_once = true;
                self.assigned = assigned;
            }
            Told::Records(r) => {
                let got = self.got.entry((r.topic.clone(), r.partition)).or_default();
                for rec in &r.records {
                    let v = String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default());
                    got.push((rec.offset, v.into_owned()));
                }
            }
            Told::Joined(_) => {}
        }
        Ok(told)
    }

    /// Reads until `done` holds, acknowledging every record it gets.
    async fn consume_until(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            if let Told::Records(r) = self.next().await.expect("a response")
                && let Some(last) = r.records.last()
            {
                self.processed(&r.topic, r.partition, last.offset).await;
            }
        }
    }

    async fn processed(&self, topic: &str, partition: u32, offset: u64) {
        let p = pb::Processed {
            topic: topic.into(),
            partition,
            offset,
        };
        let said = Said::Processed(p);
        self.tx
            .send(pb::GroupConsumeRequest {
                request: Some(said),
            })
            .await
            .expect("send");
    }

    fn count(&self) -> usize {
        self.got.values().map(Vec::len).sum()
    }

    /// Leaves, and waits for the stream to end with OK.
    async fn leave(mut self) {
        let said = Said::Leave(pb::LeaveGroup {});
        self.tx
            .send(pb::GroupConsumeRequest {
                request: Some(said),
            })
            .await
            .expect("send");
        loop {
            match within(self.rx.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(status) => panic!("leave ended with {status:?}"),
            }
        }
    }
}

async fn produce_values(b: &Connection, topic: &str, partition: u32, values: &[String]) {
    let records = values
        .iter()
        .map(|v| pb::Record {
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            ..Default::default()
        })
        .collect();
    let entry = pb::ProducePartition {
        partition: Some(partition),
        records,
        ..Default::default()
    };
    let resp = b
        .produce()
        .produce(produce_request(topic, pb::Acks::Written, vec![entry]))
        .await
        .expect("produce")
        .into_inner();
    assert!(resp.results[0].error.is_none(), "{resp:?}");
}

fn numbered(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

#[tokio::test]
async fn a_member_reads_everything_commits_on_processed_and_a_successor_resumes() {
    let b = group_broker().await;
    create_topic(&b, "orders", 2).await;
    produce_values(&b, "orders", 0, &numbered("p0", 5)).await;
    produce_values(&b, "orders", 1, &numbered("p1", 3)).await;

    let mut m = Member::join(&b, "billing", &["orders"]).await;
    m.consume_until(|m| m.count() == 8).await;
    assert_eq!(m.assigned.len(), 2);
    let p0: Vec<&str> = m.got[&("orders".to_string(), 0)]
        .iter()
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(p0, ["p0-0", "p0-1", "p0-2", "p0-3", "p0-4"]);
    m.leave().await;
    let committed = committed_offsets(&b, "billing").await;
    assert_eq!(committed[&0].0, 5);
    assert_eq!(committed[&1].0, 3);

    // The next member starts after the commits: only the new record arrives.
    produce_values(&b, "orders", 1, &["p1-new".to_string()]).await;
    let mut next = Member::join(&b, "billing", &["orders"]).await;
    next.consume_until(|m| m.count() == 1).await;
    assert_eq!(
        next.got[&("orders".to_string(), 1)],
        [(3, "p1-new".to_string())]
    );
    next.leave().await;
}

#[tokio::test]
async fn partitions_move_to_a_new_member_with_their_commits() {
    let b = group_broker().await;
    create_topic(&b, "t", 4).await;
    for p in 0..4 {
        produce_values(&b, "t", p, &numbered(&format!("a{p}"), 10)).await;
    }
    let mut first = Member::join(&b, "g", &["t"]).await;
    first.consume_until(|m| m.count() == 40).await;

    // A second member joins: the broker revokes some of the first member's partitions,
    // commits what it processed, and gives them to the second.
    let mut second = Member::join(&b, "g", &["t"]).await;
    while second.assigned.is_empty() {
        tokio::select! {
            r = first.next() => { r.expect("first member's stream"); }
            r = second.next() => { r.expect("second member's stream"); }
        }
    }
    while first.assigned.len() + second.assigned.len() != 4 {
        first.next().await.expect("first member's stream");
    }
    assert!(first.assigned.is_disjoint(&second.assigned));
    for p in 0..4 {
        produce_values(&b, "t", p, &numbered(&format!("b{p}"), 2)).await;
    }
    let owned_by_second = second.assigned.len() * 2;
    second.consume_until(|m| m.count() == owned_by_second).await;
    // The second member got only the new records of its partitions: the first member's
    // commits moved with them.
    for (tp, got) in &second.got {
        assert!(second.assigned.contains(tp));
        let values: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, [format!("b{}-0", tp.1), format!("b{}-1", tp.1)]);
    }
    first.leave().await;
    second.leave().await;
}

#[tokio::test]
async fn closing_the_request_side_leaves_and_bad_starts_are_refused() {
    let b = group_broker().await;
    create_topic(&b, "t", 1).await;
    produce_values(&b, "t", 0, &numbered("v", 3)).await;
    let mut m = Member::join(&b, "g", &["t"]).await;
    m.consume_until(|m| m.count() == 3).await;
    let Member { tx, mut rx, .. } = m;
    drop(tx);
    while within(rx.message()).await.expect("ends with OK").is_some() {}
    assert_eq!(committed_offsets(&b, "g").await[&0].0, 3);
    let group = b
        .groups()
        .describe_group(pb::DescribeGroupRequest { group: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(group.members.is_empty(), "{group:?}");

    // An acknowledgement of a record that does not exist ends the stream.
    let mut m = Member::join(&b, "g", &["t"]).await;
    m.consume_until(|m| !m.assigned.is_empty()).await;
    m.processed("t", 0, 3).await;
    let status = loop {
        if let Err(status) = m.next().await {
            break status;
        }
    };
    assert_status(
        &status,
        ErrorCode::InvalidRequest,
        "processed.offset 3 is at or past the log end 3 of t/0",
    );

    let bad = |s: pb::GroupConsumeStart| pb::GroupConsumeRequest {
        request: Some(Said::Start(s)),
    };
    let cases = [
        (
            pb::GroupConsumeRequest {
                request: Some(Said::Leave(pb::LeaveGroup {})),
            },
            ErrorCode::InvalidRequest,
            "the first request of a Consume stream must be start",
        ),
        (
            bad(pb::GroupConsumeStart {
                reset: 9,
                ..start("g", &["t"])
            }),
            ErrorCode::InvalidRequest,
            "start.reset 9",
        ),
        (
            bad(pb::GroupConsumeStart {
                format: 5,
                ..start("g", &["t"])
            }),
            ErrorCode::InvalidRequest,
            "start.format 5",
        ),
        (
            bad(pb::GroupConsumeStart {
                join: None,
                ..start("g", &["t"])
            }),
            ErrorCode::InvalidRequest,
            "start.join",
        ),
        (
            bad(start("bad group!", &["t"])),
            ErrorCode::InvalidGroupId,
            "start.join",
        ),
    ];
    for (first, code, needle) in cases {
        let mut m = match Member::open(&b, first).await {
            Ok(m) => m,
            Err(status) => {
                assert_status(&status, code, needle);
                continue;
            }
        };
        let status = m.next().await.expect_err("the stream ends with an error");
        assert_status(&status, code, needle);
    }
}
