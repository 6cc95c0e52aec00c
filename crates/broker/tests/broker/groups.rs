//! GroupService: membership with cooperative assignment, static membership, timeouts,
//! fencing, committed offsets, lag, and the admin RPCs.
//!
//! Members here are real Membership streams, each on its own connection. Each test member keeps
//! its own view of what it owns, updated as a client must: it adds `assigned` and `revoke`
//! when an assignment arrives and drops `revoke` before acknowledging. All views share one
//! lock, so a snapshot of them is consistent, and the tests check at every step that no
//! partition is in two views (and, from DescribeGroup, owned by two members). Waits are
//! bounded polls; nothing asserts on time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_proto::pb::{
    self, ErrorCode, group_service_client::GroupServiceClient, membership_request::Request as Said,
    membership_response::Response as Told, reset_offsets_request::Target,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use runnel_test_support::prelude::*;
use runnel_test_support::random::Rng;

type Tp = (String, u32);

const HEARTBEAT: Duration = Duration::from_millis(100);

/// A broker whose groups allow short session timeouts and refresh lag quickly.
async fn group_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.groups.min_session_timeout_ms = 200;
        c.groups.heartbeat_interval_ms = 100;
        c.groups.lag_refresh_interval_ms = 100;
        c.storage.retention_check_interval_ms = 50;
    })
    .await
}

fn flatten(list: &[pb::TopicPartitions]) -> BTreeSet<Tp> {
    list.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

fn tps(topic: &str, partitions: impl IntoIterator<Item = u32>) -> BTreeSet<Tp> {
    partitions
        .into_iter()
        .map(|p| (topic.to_owned(), p))
        .collect()
}

/// Every test member's own view of what it owns, under one lock.
#[derive(Clone, Default)]
struct Views(Arc<Mutex<BTreeMap<String, BTreeSet<Tp>>>>);

impl Views {
    fn set(&self, name: &str, owned: BTreeSet<Tp>) {
        self.0.lock().unwrap().insert(name.to_owned(), owned);
    }

    fn remove(&self, name: &str) {
        self.0.lock().unwrap().remove(name);
    }

    fn of(&self, name: &str) -> BTreeSet<Tp> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Panics if a partition is in two views.
    fn assert_disjoint(&self) {
        let views = self.0.lock().unwrap().clone();
        let mut seen: BTreeMap<&Tp, &str> = BTreeMap::new();
        for (name, owned) in &views {
            for tp in owned {
                if let Some(other) = seen.insert(tp, name) {
                    panic!("{tp:?} is owned by both {other} and {name}: {views:?}");
                }
            }
        }
    }

    /// Checks the views continuously until the returned guard is dropped.
    fn watch(&self) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let views = self.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                views.assert_disjoint();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Watcher {
            stop,
            task: Some(task),
        }
    }
}

struct Watcher {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Watcher {
    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            t.await.expect("no partition was ever owned twice");
        }
    }
}

#[derive(Debug, Default, Clone)]
struct MemberState {
    member_id: String,
    epoch: u32,
    generation: u64,
    assignments: usize,
    /// Partitions released after a revocation.
    released: usize,
    ended: Option<tonic::Status>,
    ended_ok: bool,
}

enum Ctl {
    Leave,
    Crash,
    StopHeartbeats,
}

struct Spec<'a> {
    group: &'a str,
    topics: &'a [&'a str],
    instance_id: Option<&'a str>,
    session_ms: u64,
    assignor: &'a str,
}

impl<'a> Spec<'a> {
    fn new(group: &'a str, topics: &'a [&'a str]) -> Self {
        Spec {
            group,
            topics,
            instance_id: None,
            session_ms: 1_000,
            assignor: "",
        }
    }
}

/// A group member driven by a task that heartbeats, keeps its view and releases revoked
/// partitions at once.
struct Member {
    name: String,
    state: Arc<Mutex<MemberState>>,
    ctl: mpsc::Sender<Ctl>,
    task: JoinHandle<()>,
}

impl Member {
    /// Joins and waits for the first assignment.
    async fn join(b: &TestBroker, views: &Views, name: &str, spec: Spec<'_>) -> Self {
        let m = Self::attempt(b, views, name, spec).await;
        assert!(
            m.state().ended.is_none(),
            "{name} failed to join: {:?}",
            m.state().ended
        );
        m
    }

    /// Tries to join; waits for the first assignment or the end of the stream.
    async fn attempt(b: &TestBroker, views: &Views, name: &str, spec: Spec<'_>) -> Self {
        let join = pb::JoinGroup {
            group: spec.group.into(),
            topics: spec.topics.iter().map(|t| (*t).to_owned()).collect(),
            client_id: format!("client-{name}"),
            instance_id: spec.instance_id.map(str::to_owned),
            session_timeout_ms: spec.session_ms,
            assignor: spec.assignor.into(),
        };
        let state = Arc::new(Mutex::new(MemberState::default()));
        let (ctl, ctl_rx) = mpsc::channel(4);
        let (ready, is_ready) = oneshot::channel();
        let task = tokio::spawn(drive(
            GroupServiceClient::new(b.new_channel()),
            join,
            name.to_owned(),
            views.clone(),
            state.clone(),
            ctl_rx,
            ready,
        ));
        let _ = within(is_ready).await;
        Member {
            name: name.to_owned(),
            state,
            ctl,
            task,
        }
    }

    fn state(&self) -> MemberState {
        self.state.lock().unwrap().clone()
    }

    fn id(&self) -> String {
        self.state().member_id
    }

    async fn leave(self) {
        let _ = self.ctl.send(Ctl::Leave).await;
        within(self.task).await.unwrap();
    }

    /// Drops the stream and the connection without leaving, like a killed process.
    async fn crash(self) {
        let _ = self.ctl.send(Ctl::Crash).await;
        within(self.task).await.unwrap();
    }

    async fn stop_heartbeats(&self) {
        let _ = self.ctl.send(Ctl::StopHeartbeats).await;
    }
}

fn request(r: Said) -> pb::MembershipRequest {
    pb::MembershipRequest { request: Some(r) }
}

async fn drive(
    mut client: GroupServiceClient<Channel>,
    join: pb::JoinGroup,
    name: String,
    views: Views,
    state: Arc<Mutex<MemberState>>,
    mut ctl: mpsc::Receiver<Ctl>,
    ready: oneshot::Sender<()>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(request(Said::Join(join))).await.unwrap();
    let mut responses = match client
        .membership(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            state.lock().unwrap().ended = Some(status);
            let _ = ready.send(());
            return;
        }
    };
    let mut ready = Some(ready);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut beating = true;
    loop {
        tokio::select! {
            c = ctl.recv() => match c {
                Some(Ctl::Leave) => {
                    views.remove(&name);
                    let _ = tx.send(request(Said::Leave(pb::LeaveGroup {}))).await;
                    loop {
                        match responses.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                state.lock().unwrap().ended_ok = true;
                                return;
                            }
                            Err(status) => {
                                state.lock().unwrap().ended = Some(status);
                                return;
                            }
                        }
                    }
                }
                Some(Ctl::Crash) | None => {
                    views.remove(&name);
                    return;
                }
                Some(Ctl::StopHeartbeats) => beating = false,
            },
            _ = beat.tick(), if beating => {
                let _ = tx.send(request(Said::Heartbeat(pb::Heartbeat {}))).await;
            }
            m = responses.message() => match m {
                Ok(Some(pb::MembershipResponse { response: Some(r) })) => match r {
                    Told::Joined(j) => state.lock().unwrap().member_id = j.member_id,
                    Told::Assignment(a) => {
                        let assigned = flatten(&a.assigned);
                        let revoke = flatten(&a.revoke);
                        views.set(&name, assigned.union(&revoke).cloned().collect());
                        {
                            let mut s = state.lock().unwrap();
                            s.epoch = a.member_epoch;
                            s.generation = a.generation;
                            s.assignments += 1;
                        }
                        if !revoke.is_empty() {
                            // Stop, commit (nothing to commit here), release, acknowledge.
                            views.set(&name, assigned);
                            state.lock().unwrap().released += revoke.len();
                            let ack = pb::AcknowledgeAssignment {
                                member_epoch: a.member_epoch,
                                released: a.revoke,
                            };
                            let _ = tx.send(request(Said::Acknowledge(ack))).await;
                        }
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Told::Heartbeat(_) => {}
                },
                Ok(Some(_)) => panic!("{name}: a response with nothing set"),
                Ok(None) => {
                    views.remove(&name);
                    state.lock().unwrap().ended_ok = true;
                    return;
                }
                Err(status) => {
                    views.remove(&name);
                    state.lock().unwrap().ended = Some(status);
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    return;
                }
            }
        }
    }
}

async fn describe(b: &TestBroker, group: &str) -> pb::DescribeGroupResponse {
    b.groups()
        .describe_group(pb::DescribeGroupRequest {
            group: group.into(),
        })
        .await
        .expect("describe group")
        .into_inner()
}

/// Checks DescribeGroup's ownership: no partition owned (assigned or revoking) twice.
fn assert_owned_once(d: &pb::DescribeGroupResponse) {
    let mut seen = BTreeMap::new();
    for m in &d.members {
        for tp in flatten(&m.assigned).union(&flatten(&m.revoking)) {
            if let Some(other) = seen.insert(tp.clone(), m.member_id.clone()) {
                panic!("{tp:?} owned by {other} and {} in {d:#?}", m.member_id);
            }
        }
    }
}

/// Polls until `done` holds of the description, checking views and descriptions meanwhile.
async fn settle(
    b: &TestBroker,
    views: &Views,
    group: &str,
    mut done: impl FnMut(&pb::DescribeGroupResponse) -> bool,
) -> pb::DescribeGroupResponse {
    within(async {
        loop {
            views.assert_disjoint();
            let d = describe(b, group).await;
            assert_owned_once(&d);
            if done(&d) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// True once the group is stable and each listed member has received its latest assignment
/// and its own view equals it.
fn stable_and_agreed(d: &pb::DescribeGroupResponse, views: &Views, members: &[&Member]) -> bool {
    d.state == pb::GroupState::Stable as i32
        && members.iter().all(|m| {
            let state = m.state();
            d.members
                .iter()
                .find(|dm| dm.member_id == state.member_id)
                .is_some_and(|dm| {
                    dm.member_epoch == state.epoch && flatten(&dm.assigned) == views.of(&m.name)
                })
        })
}

fn assigned_of(d: &pb::DescribeGroupResponse, member_id: &str) -> BTreeSet<Tp> {
    d.members
        .iter()
        .find(|m| m.member_id == member_id)
        .map(|m| flatten(&m.assigned))
        .unwrap_or_default()
}

#[tokio::test]
async fn three_members_share_twelve_partitions_and_a_killed_ones_go_to_the_others() {
    let b = group_broker().await;
    create_topic(&b, "orders", 12).await;
    let views = Views::default();
    let watcher = views.watch();
    // A session timeout longer than the test's patience: the hand-over below can only come
    // from the broker noticing the lost stream, not from the timeout.
    let spec = || Spec {
        session_ms: 60_000,
        ..Spec::new("billing", &["orders"])
    };
    let a = Member::join(&b, &views, "a", spec()).await;
    let m2 = Member::join(&b, &views, "b", spec()).await;
    let c = Member::join(&b, &views, "c", spec()).await;
    let d = settle(&b, &views, "billing", |d| {
        stable_and_agreed(d, &views, &[&a, &m2, &c])
    })
    .await;
    assert_eq!(d.members.len(), 3);
    for m in [&a, &m2, &c] {
        assert_eq!(views.of(&m.name).len(), 4, "{} owns 4", m.name);
    }
    assert_eq!(d.assignor, "sticky");
    let all: BTreeSet<Tp> = d
        .members
        .iter()
        .flat_map(|m| flatten(&m.assigned))
        .collect();
    assert_eq!(all, tps("orders", 0..12));
    let member = &d.members[0];
    assert!(member.client_id.starts_with("client-"), "{member:?}");
    assert!(member.host.starts_with("127.0.0.1:"), "{member:?}");
    assert!(member.connected);

    let (before_a, before_c, lost) = (views.of("a"), views.of("c"), views.of("b"));
    let generation = d.generation;
    m2.crash().await;
    let d = settle(&b, &views, "billing", |d| {
        d.members.len() == 2 && stable_and_agreed(d, &views, &[&a, &c])
    })
    .await;
    let (after_a, after_c) = (views.of("a"), views.of("c"));
    assert!(after_a.is_superset(&before_a), "a kept its partitions");
    assert!(after_c.is_superset(&before_c), "c kept its partitions");
    assert_eq!((after_a.len(), after_c.len()), (6, 6));
    let moved: BTreeSet<Tp> = after_a
        .difference(&before_a)
        .chain(after_c.difference(&before_c))
        .cloned()
        .collect();
    assert_eq!(moved, lost, "only the killed member's partitions moved");
    assert!(d.generation > generation);
    watcher.finish().await;
    a.leave().await;
    c.leave().await;
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_removed_after_its_session_timeout() {
    let b = group_broker().await;
    create_topic(&b, "t", 4).await;
    let views = Views::default();
    // The silent member never learns in time that it lost its partitions (that is the point),
    // so its view is kept apart from the others'.
    let silent_views = Views::default();
    let a = Member::join(&b, &views, "a", Spec::new("g", &["t"])).await;
    let silent = Member::join(&b, &silent_views, "b", Spec::new("g", &["t"])).await;
    settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a]) && stable_and_agreed(d, &silent_views, &[&silent])
    })
    .await;
    // The stream stays open (a half-open connection, a stuck process); only heartbeats stop.
    silent.stop_heartbeats().await;
    let d = settle(&b, &views, "g", |d| d.members.len() == 1).await;
    assert_eq!(d.members[0].member_id, a.id());
    within(async {
        while silent.state().ended.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let status = silent.state().ended.unwrap();
    assert_status(&status, ErrorCode::UnknownMember, "session timeout");
    settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a]) && views.of("a").len() == 4
    })
    .await;
    a.leave().await;
}

#[tokio::test]
async fn a_restarted_static_member_keeps_its_partitions_without_a_rebalance() {
    let b = group_broker().await;
    create_topic(&b, "t", 12).await;
    let views = Views::default();
    let watcher = views.watch();
    let spec = |id| Spec {
        instance_id: Some(id),
        session_ms: 60_000,
        ..Spec::new("g", &["t"])
    };
    let a = Member::join(&b, &views, "a", spec("pod-a")).await;
    let m2 = Member::join(&b, &views, "b", spec("pod-b")).await;
    let c = Member::join(&b, &views, "c", spec("pod-c")).await;
    let d = settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a, &m2, &c])
    })
    .await;
    let generation = d.generation;
    let b_partitions = views.of("b");
    let old_id = m2.id();
    assert_eq!(b_partitions.len(), 4);
    let (epoch_a, epoch_c) = (a.state().epoch, c.state().epoch);
    let (seen_a, seen_c) = (a.state().assignments, c.state().assignments);

    m2.crash().await;
    // The broker keeps the departed static member and its partitions.
    let d = settle(&b, &views, "g", |d| {
        d.members
            .iter()
            .any(|m| m.member_id == old_id && !m.connected)
    })
    .await;
    assert_eq!(d.generation, generation);
    assert_eq!(assigned_of(&d, &old_id), b_partitions);

    let back = Member::join(&b, &views, "b2", spec("pod-b")).await;
    assert_eq!(views.of("b2"), b_partitions, "the same partitions, at once");
    assert_ne!(back.id(), old_id);
    let d = settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a, &back, &c])
    })
    .await;
    assert_eq!(d.generation, generation, "no rebalance");
    assert_eq!(d.members.len(), 3);
    assert!(d.members.iter().all(|m| m.connected));
    assert_eq!(back.state().generation, generation);
    // The other members were not disturbed at all.
    assert_eq!((a.state().epoch, c.state().epoch), (epoch_a, epoch_c));
    assert_eq!(
        (a.state().assignments, c.state().assignments),
        (seen_a, seen_c)
    );

    // The old incarnation is fenced: its member id is gone.
    let (topic, partition) = b_partitions.iter().next().cloned().unwrap();
    let err = b
        .groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: "g".into(),
            member_id: old_id.clone(),
            member_epoch: 1,
            offsets: vec![pb::OffsetCommit {
                topic,
                partition,
                offset: 0,
                metadata: String::new(),
            }],
        })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::UnknownMember, &old_id);

    // A second stream with the same instance id replaces (fences) the first one. Two live
    // processes with one instance id is a misconfiguration that static membership resolves
    // by fencing the older, so their views are not compared.
    watcher.finish().await;
    let twin_views = Views::default();
    let twin = Member::join(&b, &twin_views, "b3", spec("pod-b")).await;
    within(async {
        while back.state().ended.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let status = back.state().ended.unwrap();
    assert_status(&status, ErrorCode::FencedMember, "same instance id");
    assert_eq!(twin_views.of("b3"), b_partitions);
    for m in [a, c, twin] {
        m.leave().await;
    }
}

#[tokio::test]
async fn random_joins_leaves_and_crashes_never_own_a_partition_twice() {
    let b = group_broker().await;
    create_topic(&b, "x", 8).await;
    create_topic(&b, "y", 5).await;
    for (seed, assignor) in [(7, "sticky"), (11, "range"), (13, "roundrobin")] {
        let group = format!("random-{assignor}");
        let mut rng = Rng::new(seed);
        let views = Views::default();
        let watcher = views.watch();
        let mut live: Vec<Member> = Vec::new();
        let mut states = Vec::new();
        let mut joined = 0;
        for step in 0..30 {
            let statics: Vec<usize> = (0..live.len())
                .filter(|&i| live[i].name.contains('#'))
                .collect();
            let action = if live.is_empty() { 0 } else { rng.below(6) };
            match action {
                // Join (more often than the rest, so the group stays busy), or restart a
                // static member: kill it and start it again with the same instance id.
                0..=2 | 5 if live.len() < 6 || (action == 5 && !statics.is_empty()) => {
                    let restart = (action == 5 && !statics.is_empty())
                        .then(|| live.remove(statics[rng.below(statics.len())]));
                    let instance = match &restart {
                        Some(m) => m.name.split_once('#').map(|(_, id)| id.to_owned()),
                        None => (rng.below(3) == 0)
                            .then(|| format!("{assignor}-static-{}", rng.below(3))),
                    };
                    if let Some(m) = restart {
                        m.crash().await;
                    }
                    // Reusing a live static id restarts that instance too.
                    if let Some(id) = &instance
                        && let Some(i) = live
                            .iter()
                            .position(|m| m.name.ends_with(&format!("#{id}")))
                    {
                        live.remove(i).crash().await;
                    }
                    joined += 1;
                    let topics: &[&str] = match rng.below(4) {
                        0 => &["x"],
                        1 => &["y"],
                        _ => &["x", "y"],
                    };
                    let name = match &instance {
                        Some(id) => format!("{assignor}-{joined}#{id}"),
                        None => format!("{assignor}-{joined}"),
                    };
                    let spec = Spec {
                        instance_id: instance.as_deref(),
                        assignor,
                        ..Spec::new(&group, topics)
                    };
                    let m = Member::join(&b, &views, &name, spec).await;
                    states.push(m.state.clone());
                    live.push(m);
                }
                3 => {
                    let m = live.remove(rng.below(live.len()));
                    m.leave().await;
                }
                _ => {
                    let m = live.remove(rng.below(live.len()));
                    m.crash().await;
                }
            }
            views.assert_disjoint();
            if live.is_empty() {
                continue;
            }
            let members: Vec<&Member> = live.iter().collect();
            let d = settle(&b, &views, &group, |d| {
                stable_and_agreed(d, &views, &members)
            })
            .await;
            let connected: usize = d.members.iter().filter(|m| m.connected).count();
            assert_eq!(connected, live.len(), "step {step}: {d:#?}");
        }
        watcher.finish().await;
        for m in live {
            m.leave().await;
        }
        let released: usize = states.iter().map(|s| s.lock().unwrap().released).sum();
        assert!(
            released >= 10,
            "{assignor}: only {released} partitions moved cooperatively"
        );
    }
}

async fn commit(
    b: &TestBroker,
    group: &str,
    member: &str,
    epoch: u32,
    offsets: &[(&str, u32, u64)],
) -> Result<pb::CommitOffsetsResponse, tonic::Status> {
    b.groups()
        .commit_offsets(pb::CommitOffsetsRequest {
            group: group.into(),
            member_id: member.into(),
            member_epoch: epoch,
            offsets: offsets
                .iter()
                .map(|(t, p, o)| pb::OffsetCommit {
                    topic: (*t).into(),
                    partition: *p,
                    offset: *o,
                    metadata: format!("at {o}"),
                })
                .collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn commits_from_members_that_do_not_own_the_partition_are_fenced() {
    let b = group_broker().await;
    create_topic(&b, "t", 2).await;
    for p in 0..2 {
        produce(&b, "t", p, vec![batch(10, 0)]).await;
    }
    let views = Views::default();
    let a = Member::join(&b, &views, "a", Spec::new("g", &["t"])).await;
    settle(&b, &views, "g", |d| stable_and_agreed(d, &views, &[&a])).await;
    let epoch_a = a.state().epoch;
    let r = commit(&b, "g", &a.id(), epoch_a, &[("t", 0, 5), ("t", 1, 6)])
        .await
        .unwrap();
    assert!(r.results.iter().all(|r| r.error.is_none()), "{r:?}");

    let m2 = Member::join(&b, &views, "b", Spec::new("g", &["t"])).await;
    settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a, &m2])
    })
    .await;
    let (_, moved_p) = views.of("b").into_iter().next().unwrap();
    let kept_p = 1 - moved_p;
    // a still owns kept_p (at its old epoch too), but no longer moved_p.
    let r = commit(
        &b,
        "g",
        &a.id(),
        epoch_a,
        &[("t", kept_p, 7), ("t", moved_p, 7)],
    )
    .await
    .unwrap();
    assert_inline(
        r.results[1].error.as_ref(),
        ErrorCode::FencedMember,
        "does not own",
    );
    // All or none: the partition a still owns was not stored either.
    assert_inline(
        r.results[0].error.as_ref(),
        ErrorCode::InvalidRequest,
        "not stored: offsets[1] was refused",
    );
    assert_eq!(
        committed_offsets(&b, "g").await[&kept_p].0,
        if kept_p == 0 { 5 } else { 6 }
    );
    let r = commit(&b, "g", &a.id(), epoch_a, &[("t", kept_p, 7)])
        .await
        .unwrap();
    assert!(r.results[0].error.is_none(), "{r:?}");
    // b owns moved_p since its current epoch; an epoch before that is stale.
    let epoch_b = m2.state().epoch;
    let r = commit(&b, "g", &m2.id(), epoch_b, &[("t", moved_p, 8)])
        .await
        .unwrap();
    assert!(r.results[0].error.is_none(), "{r:?}");
    let r = commit(&b, "g", &m2.id(), 0, &[("t", moved_p, 9)])
        .await
        .unwrap();
    assert_inline(
        r.results[0].error.as_ref(),
        ErrorCode::FencedMember,
        "since epoch",
    );
    // Unknown partitions are inline errors too; standalone commits need an empty group.
    let r = commit(&b, "g", &m2.id(), epoch_b, &[("t", 9, 1), ("nope", 0, 1)])
        .await
        .unwrap();
    assert_inline(
        r.results[0].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partition 9",
    );
    assert_inline(r.results[1].error.as_ref(), ErrorCode::UnknownTopic, "nope");
    // An offset past the log end points at no record (a consumer that read records a
    // power cut took); the log end itself is a position.
    let r = commit(&b, "g", &m2.id(), epoch_b, &[("t", moved_p, 11)])
        .await
        .unwrap();
    assert_inline(
        r.results[0].error.as_ref(),
        ErrorCode::OffsetOutOfRange,
        &format!("t/{moved_p}: offset 11 is past the log end 10"),
    );
    let err = commit(&b, "g", "", 0, &[("t", 0, 1)]).await.unwrap_err();
    assert_status(&err, ErrorCode::GroupNotEmpty, "members");

    let a_id = a.id();
    a.crash().await;
    let err = commit(&b, "g", &a_id, epoch_a, &[("t", kept_p, 10)])
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::UnknownMember, &a_id);

    let fetched = b
        .groups()
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "g".into(),
            partitions: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    let got: BTreeMap<u32, u64> = fetched
        .iter()
        .map(|c| (c.partition, c.offset.unwrap()))
        .collect();
    assert_eq!(got[&kept_p], 7);
    assert_eq!(got[&moved_p], 8, "fenced commits changed nothing");
    m2.leave().await;
}

#[tokio::test]
async fn describe_reports_members_offsets_and_lag_clamped_by_retention() {
    let b = group_broker().await;
    create_topic(&b, "t", 2).await;
    produce(&b, "t", 0, vec![batch(10, 1_000)]).await;
    produce(&b, "t", 1, vec![batch(3, 1_000)]).await;
    let r = commit(&b, "standalone", "", 0, &[("t", 0, 4), ("t", 1, 3)])
        .await
        .unwrap();
    assert!(r.results.iter().all(|r| r.error.is_none()), "{r:?}");
    let d = describe(&b, "standalone").await;
    assert_eq!(d.state, pb::GroupState::Empty as i32);
    assert!(d.members.is_empty());
    let lags: Vec<(u32, Option<u64>, Option<u64>, u64)> = d
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed_offset, p.lag, p.log_end_offset))
        .collect();
    assert_eq!(lags, [(0, Some(4), Some(6), 10), (1, Some(3), Some(0), 3)]);
    assert_eq!(d.partitions[0].metadata, "at 4");

    let listed = b
        .groups()
        .list_groups(pb::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].group.as_str(), listed[0].member_count),
        ("standalone", 0)
    );

    // Retention deletes past the committed offset: the lag counts only what is left.
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "short".into(),
            partition_count: 1,
            config: Some(pb::TopicConfig {
                segment_bytes: Some(4096),
                max_batch_bytes: Some(4096),
                retention_bytes: Some(1),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for i in 0..12 {
        produce(&b, "short", 0, vec![batch(20, 1_000 + i)]).await;
    }
    commit(&b, "standalone", "", 0, &[("short", 0, 0)])
        .await
        .unwrap();
    let d = within(async {
        loop {
            let d = describe(&b, "standalone").await;
            let p = d
                .partitions
                .iter()
                .find(|p| p.topic == "short")
                .unwrap()
                .clone();
            if p.log_start_offset > 0 {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(d.committed_offset, Some(0));
    assert_eq!(d.lag, Some(d.log_end_offset - d.log_start_offset));

    // Members show up with their partitions, and the group is described with them.
    let views = Views::default();
    let m = Member::join(&b, &views, "m", Spec::new("live", &["t"])).await;
    let d = settle(&b, &views, "live", |d| stable_and_agreed(d, &views, &[&m])).await;
    assert_eq!(d.members[0].topics, ["t"]);
    assert_eq!(d.members[0].session_timeout_ms, 1_000);
    assert!(
        d.partitions
            .iter()
            .all(|p| p.owner == m.id() && p.lag.is_none())
    );
    m.leave().await;
    let err = b
        .groups()
        .describe_group(pb::DescribeGroupRequest {
            group: "live".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::UnknownGroup, "live");
}

async fn reset(
    b: &TestBroker,
    topics: Vec<pb::TopicPartitions>,
    target: Target,
    dry_run: bool,
    force: bool,
) -> Result<pb::ResetOffsetsResponse, tonic::Status> {
    b.groups()
        .reset_offsets(pb::ResetOffsetsRequest {
            group: "g".into(),
            all_topics: topics.is_empty(),
            topics,
            target: Some(target),
            dry_run,
            force,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn committed(b: &TestBroker, group: &str) -> BTreeMap<u32, Option<u64>> {
    b.groups()
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: group.into(),
            partitions: vec![pb::TopicPartitions {
                topic: "t".into(),
                partitions: vec![],
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect()
}

#[tokio::test]
async fn reset_offsets_plans_dry_runs_and_applies_and_respects_members() {
    let b = group_broker().await;
    create_topic(&b, "t", 2).await;
    produce(&b, "t", 0, vec![batch(10, 1_000)]).await;
    produce(&b, "t", 0, vec![batch(10, 5_000)]).await;
    produce(&b, "t", 1, vec![batch(4, 1_000)]).await;
    commit(&b, "g", "", 0, &[("t", 0, 12)]).await.unwrap();
    let all_t = || {
        vec![pb::TopicPartitions {
            topic: "t".into(),
            partitions: vec![],
        }]
    };

    // A dry run returns the plan and changes nothing.
    let plan = reset(
        &b,
        all_t(),
        Target::Boundary(pb::OffsetBoundary::Earliest as i32),
        true,
        false,
    )
    .await
    .unwrap();
    assert!(plan.dry_run);
    let rows: Vec<(u32, Option<u64>, u64)> = plan
        .resets
        .iter()
        .map(|r| (r.partition, r.previous_offset, r.new_offset))
        .collect();
    assert_eq!(rows, [(0, Some(12), 0), (1, None, 0)]);
    assert_eq!(
        committed(&b, "g").await,
        BTreeMap::from([(0, Some(12)), (1, None)])
    );

    let cases = [
        (Target::Boundary(pb::OffsetBoundary::Latest as i32), [20, 4]),
        (Target::Offset(15), [15, 4]),
        (Target::ShiftBy(-7), [8, 0]),
        (Target::ShiftBy(100), [20, 4]),
        (Target::TimestampMs(5_000), [10, 4]),
        (
            Target::Boundary(pb::OffsetBoundary::Earliest as i32),
            [0, 0],
        ),
    ];
    for (target, want) in cases {
        let r = reset(&b, all_t(), target, false, false).await.unwrap();
        assert!(!r.dry_run);
        let got = committed(&b, "g").await;
        assert_eq!(
            got,
            BTreeMap::from([(0, Some(want[0])), (1, Some(want[1]))]),
            "{target:?}"
        );
    }
    // all_topics moves what the group has committed.
    let r = reset(&b, vec![], Target::Offset(3), false, false)
        .await
        .unwrap();
    assert_eq!(r.resets.len(), 2);

    let err = reset(
        &b,
        vec![pb::TopicPartitions {
            topic: "t".into(),
            partitions: vec![7],
        }],
        Target::Offset(0),
        true,
        false,
    )
    .await
    .unwrap_err();
    assert_status(&err, ErrorCode::UnknownPartition, "partition 7");

    // With a member: refused unless forced, dry run included; delete is refused too.
    let views = Views::default();
    let m = Member::join(&b, &views, "m", Spec::new("g", &["t"])).await;
    for dry_run in [true, false] {
        let err = reset(&b, all_t(), Target::Offset(1), dry_run, false)
            .await
            .unwrap_err();
        assert_status(&err, ErrorCode::GroupNotEmpty, "force");
    }
    reset(&b, all_t(), Target::Offset(1), false, true)
        .await
        .unwrap();
    assert_eq!(
        committed(&b, "g").await,
        BTreeMap::from([(0, Some(1)), (1, Some(1))])
    );
    let err = b
        .groups()
        .delete_group(pb::DeleteGroupRequest { group: "g".into() })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::GroupNotEmpty, "left");
    m.leave().await;
    b.groups()
        .delete_group(pb::DeleteGroupRequest { group: "g".into() })
        .await
        .unwrap();
    assert_eq!(
        committed(&b, "g").await,
        BTreeMap::from([(0, None), (1, None)])
    );
    let err = b
        .groups()
        .delete_group(pb::DeleteGroupRequest { group: "g".into() })
        .await
        .unwrap_err();
    assert_status(&err, ErrorCode::UnknownGroup, "\"g\"");
}

#[tokio::test]
async fn new_partitions_are_picked_up_and_offsets_survive_a_restart() {
    let b = group_broker().await;
    create_topic(&b, "t", 2).await;
    let views = Views::default();
    let a = Member::join(&b, &views, "a", Spec::new("g", &["t", "later"])).await;
    let m2 = Member::join(&b, &views, "b", Spec::new("g", &["t", "later"])).await;
    settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a, &m2])
    })
    .await;
    assert_eq!(views.of("a").len() + views.of("b").len(), 2);
    b.admin()
        .create_partitions(pb::CreatePartitionsRequest {
            topic: "t".into(),
            partition_count: 6,
        })
        .await
        .unwrap();
    create_topic(&b, "later", 2).await;
    settle(&b, &views, "g", |d| {
        stable_and_agreed(d, &views, &[&a, &m2])
            && views.of("a").len() == 4
            && views.of("b").len() == 4
    })
    .await;
    produce(&b, "t", 0, vec![batch(42, 0)]).await;
    let owner_of_0 = if views.of("a").contains(&("t".to_owned(), 0)) {
        &a
    } else {
        &m2
    };
    let r = commit(
        &b,
        "g",
        &owner_of_0.id(),
        owner_of_0.state().epoch,
        &[("t", 0, 42)],
    )
    .await
    .unwrap();
    assert!(r.results[0].error.is_none(), "{r:?}");
    a.leave().await;
    m2.leave().await;

    let b = b.restart().await;
    assert_eq!(committed(&b, "g").await[&0], Some(42));
    let d = describe(&b, "g").await;
    assert_eq!(d.state, pb::GroupState::Empty as i32);
}

#[tokio::test]
async fn invalid_membership_requests_end_the_stream_with_the_reason() {
    let b = group_broker().await;
    create_topic(&b, "t", 1).await;
    let views = Views::default();
    let base = || Spec::new("g", &["t"]);
    let cases = [
        (
            "bad group",
            Spec {
                group: "a/b",
                ..base()
            },
            ErrorCode::InvalidGroupId,
            "join.group",
        ),
        (
            "bad instance",
            Spec {
                instance_id: Some(""),
                ..base()
            },
            ErrorCode::InvalidGroupId,
            "instance_id",
        ),
        (
            "short session",
            Spec {
                session_ms: 10,
                ..base()
            },
            ErrorCode::InvalidRequest,
            "session_timeout_ms 10",
        ),
        (
            "assignor",
            Spec {
                assignor: "fancy",
                ..base()
            },
            ErrorCode::InvalidRequest,
            "fancy",
        ),
    ];
    for (what, spec, code, needle) in cases {
        let m = Member::attempt(&b, &views, what, spec).await;
        let status = m.state().ended.expect(what);
        assert_status(&status, code, needle);
    }

    // The first request must be a join.
    let (tx, rx) = mpsc::channel(1);
    tx.send(request(Said::Heartbeat(pb::Heartbeat {})))
        .await
        .unwrap();
    let mut stream = b
        .groups()
        .membership(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = within(stream.message()).await.unwrap_err();
    assert_status(&err, ErrorCode::InvalidRequest, "must be join");

    // A member asking for another assignor than the group's is refused.
    let a = Member::join(
        &b,
        &views,
        "a",
        Spec {
            assignor: "range",
            ..Spec::new("g", &["t"])
        },
    )
    .await;
    let other = Member::attempt(
        &b,
        &views,
        "b",
        Spec {
            assignor: "roundrobin",
            ..Spec::new("g", &["t"])
        },
    )
    .await;
    let status = other.state().ended.expect("refused");
    assert_status(&status, ErrorCode::InvalidRequest, "uses \"range\"");
    a.leave().await;
}
