//! One group's membership state machine, without I/O or locks: members, the target
//! assignment, and the cooperative moves towards it.
//!
//! Ownership: each member owns a set of partitions (`owned`); a subset of them is being
//! revoked (`revoking`). A partition is in at most one member's `owned` at any time.
//!
//! Every change of membership, subscriptions or partition counts raises the group
//! `generation` and recomputes the `target` assignment with the group's assignor
//! ([`Group::rebalance`]). [`Group::reconcile`] then moves ownership towards the target in the
//! cooperative, incremental way:
//!
//! 1. a partition a member owns but is no longer its target is added to its `revoking` set and
//!    sent to it in its next assignment (`revoke`); it stays owned by it;
//! 2. the member stops using it, commits, and acknowledges; only then is it removed from
//!    `owned` (or when the member is removed: left, session or rebalance timeout);
//! 3. a partition whose target member does not own it is assigned to it once no member owns
//!    it.
//!
//! A revocation is never cancelled: a partition being revoked is released first, then
//! assigned again if the target says so. Every change of a member's partitions raises its
//! `epoch` and publishes its full assignment through a `watch` channel, which its Membership
//! stream forwards; skipping an intermediate state is harmless because each one is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb;
use tokio::sync::watch;

use super::assignor::{self, Assignor, MemberSpec, Tp};
use crate::error::RpcError;

/// What a member's Membership stream is told: its current assignment, or that it was removed.
#[derive(Debug, Clone)]
pub enum View {
    /// The member's complete assignment.
    Assignment(pb::Assignment),
    /// The member is gone; the stream ends with this error.
    Removed(RpcError),
}

/// What a polled member gives up.
#[derive(Debug, Clone)]
pub enum Release {
    /// Nothing.
    Nothing,
    /// Every partition being revoked from it.
    AllRevoking,
    /// Every partition being revoked from it but these, which it still owns.
    Except(Vec<Tp>),
}

impl Release {
    /// The partitions of `revoking` given up.
    pub fn released(&self, revoking: &BTreeSet<Tp>) -> Vec<Tp> {
        match self {
            Release::Nothing => Vec::new(),
            Release::AllRevoking => revoking.iter().cloned().collect(),
            Release::Except(kept) => revoking
                .iter()
                .filter(|tp| !kept.contains(tp))
                .cloned()
                .collect(),
        }
    }
}

/// What the broker keeps of a member that joined by Kafka's classic group protocol.
#[derive(Debug, Clone)]
pub struct Classic {
    /// The generation id the member last joined at.
    pub generation: i32,
    /// The protocol (assignor name) it was answered with.
    pub protocol: String,
    /// Its subscription, as sent: the group leader's assignor reads it.
    pub metadata: Bytes,
    /// The member epoch whose partitions its last SyncGroup handed out.
    pub synced_epoch: Option<u32>,
    /// What the client holds between its join and its sync, which a partition revoked in
    /// between is released against at the sync: nothing for an eager client (it gave up
    /// everything to rejoin), what it listed as owned for a cooperative one.
    pub held: Release,
}

/// A member of a group.
#[derive(Debug)]
pub struct Member {
    /// The member id.
    pub id: String,
    /// The static instance id.
    pub instance_id: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The peer address.
    pub host: String,
    /// The subscribed topics.
    pub topics: BTreeSet<String>,
    /// The session timeout.
    pub session_timeout: Duration,
    /// When the member was last heard from.
    pub last_seen: Instant,
    /// False once the stream of a static member ended.
    pub connected: bool,
    /// The member epoch.
    pub epoch: u32,
    /// Owned partitions, each with the member epoch since which the member owns it.
    pub owned: BTreeMap<Tp, u32>,
    /// Owned partitions the member was asked to release.
    pub revoking: BTreeSet<Tp>,
    /// When the member is removed if it has not released `revoking` by then.
    pub revoke_deadline: Option<Instant>,
    /// Where the member's assignment is published.
    pub view: watch::Sender<View>,
    /// The state of a member that joined by Kafka's classic group protocol.
    pub classic: Option<Classic>,
}

impl Member {
    /// A new member with nothing owned, epoch 0, and a view channel (whose receiver the caller
    /// takes with `view.subscribe()`).
    pub fn new(
        id: String,
        instance_id: Option<String>,
        client_id: String,
        host: String,
        topics: BTreeSet<String>,
        session_timeout: Duration,
        now: Instant,
    ) -> Self {
        let (view, _) = watch::channel(View::Assignment(pb::Assignment::default()));
        Member {
            id,
            instance_id,
            client_id,
            host,
            topics,
            session_timeout,
            last_seen: now,
            connected: true,
            epoch: 0,
            owned: BTreeMap::new(),
            revoking: BTreeSet::new(),
            revoke_deadline: None,
            view,
            classic: None,
        }
    }

    /// The partitions owned and kept.
    pub fn assigned(&self) -> Vec<Tp> {
        self.owned
            .keys()
            .filter(|tp| !self.revoking.contains(*tp))
            .cloned()
            .collect()
    }

    /// Publishes the member's assignment as of `generation`.
    pub fn publish(&self, generation: u64) {
        self.view.send_replace(View::Assignment(pb::Assignment {
            member_epoch: self.epoch,
            generation,
            assigned: to_pb(self.assigned().iter()),
            revoke: to_pb(self.revoking.iter()),
        }));
    }

    /// Ends the member's stream with `why`.
    pub fn remove(&self, why: RpcError) {
        self.view.send_replace(View::Removed(why));
    }

    fn sort_key(&self) -> &str {
        self.instance_id.as_deref().unwrap_or(&self.id)
    }
}

/// Groups topic-partitions by topic, partitions ascending, topics sorted.
pub fn to_pb<'a>(tps: impl Iterator<Item = &'a Tp>) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (topic, p) in tps {
        by_topic.entry(topic).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            pb::TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

/// A consumer group's membership.
#[derive(Debug)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// Raised on every membership, subscription or partition-count change.
    pub generation: u64,
    /// The assignment strategy (meaningful while the group has members).
    pub assignor: Assignor,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// The target assignment.
    pub target: BTreeMap<Tp, String>,
    /// The partition counts of the subscribed topics the target was computed for.
    pub counts: BTreeMap<String, u32>,
}

impl Group {
    /// An empty group.
    pub fn new(id: String, assignor: Assignor) -> Self {
        Group {
            id,
            generation: 0,
            assignor,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Every topic some member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Raises the generation and recomputes the target for the given partition counts of the
    /// subscribed topics.
    pub fn rebalance(&mut self, counts: BTreeMap<String, u32>) {
        self.generation += 1;
        self.counts = counts;
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec {
                id: &m.id,
                sort_key: m.sort_key(),
                topics: &m.topics,
            })
            .collect();
        self.target = assignor::assign(self.assignor, &specs, &self.counts, &self.target);
    }

    /// Moves ownership towards the target (see the module documentation) and publishes the
    /// assignment of every member whose partitions changed. A member whose revocations grow
    /// gets until `now + rebalance_timeout` to release them.
    pub fn reconcile(&mut self, now: Instant, rebalance_timeout: Duration) {
        let mut owner: BTreeMap<Tp, String> = BTreeMap::new();
        for m in self.members.values() {
            for tp in m.owned.keys() {
                owner.insert(tp.clone(), m.id.clone());
            }
        }
        let mut desired: BTreeMap<&str, BTreeSet<&Tp>> = BTreeMap::new();
        for (tp, id) in &self.target {
            desired.entry(id.as_str()).or_default().insert(tp);
        }
        let generation = self.generation;
        let empty = BTreeSet::new();
        for m in self.members.values_mut() {
            let wanted = desired.get(m.id.as_str()).unwrap_or(&empty);
            let revoke: Vec<Tp> = m
                .owned
                .keys()
                .filter(|tp| !wanted.contains(tp) && !m.revoking.contains(*tp))
                .cloned()
                .collect();
            let next_epoch = m.epoch + 1;
            let mut assign = Vec::new();
            for tp in wanted {
                if !m.owned.contains_key(*tp) && !owner.contains_key(*tp) {
                    owner.insert((*tp).clone(), m.id.clone());
                    assign.push((*tp).clone());
                }
            }
            if revoke.is_empty() && assign.is_empty() {
                continue;
            }
            if !revoke.is_empty() {
                m.revoke_deadline = Some(now + rebalance_timeout);
            }
            m.revoking.extend(revoke);
            for tp in assign {
                m.owned.insert(tp, next_epoch);
            }
            m.epoch = next_epoch;
            m.publish(generation);
        }
    }

    /// Releases partitions a member was asked to revoke. Returns true if any was released.
    pub fn release(&mut self, member: &str, released: &[Tp]) -> bool {
        let Some(m) = self.members.get_mut(member) else {
            return false;
        };
        let mut any = false;
        for tp in released {
            if m.revoking.remove(tp) {
                m.owned.remove(tp);
                any = true;
            }
        }
        if m.revoking.is_empty() {
            m.revoke_deadline = None;
        }
        if any {
            m.epoch += 1;
            m.publish(self.generation);
        }
        any
    }

    /// The group's protocol state.
    pub fn state(&self) -> pb::GroupState {
        if self.members.is_empty() {
            return pb::GroupState::Empty;
        }
        let moving = self.members.values().any(|m| !m.revoking.is_empty())
            || self.target.iter().any(|(tp, id)| {
                self.members
                    .get(id)
                    .is_none_or(|m| !m.owned.contains_key(tp))
            });
        if moving {
            pb::GroupState::Reconciling
        } else {
            pb::GroupState::Stable
        }
    }

    /// The partitions the target gives `member` that it does not own yet.
    pub fn pending(&self, member: &Member) -> Vec<Tp> {
        self.target
            .iter()
            .filter(|(tp, id)| **id == member.id && !member.owned.contains_key(*tp))
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Checks that no partition is owned twice (a debug aid for tests).
    #[cfg(test)]
    fn owned_once(&self) -> bool {
        let mut seen = BTreeSet::new();
        self.members
            .values()
            .flat_map(|m| m.owned.keys())
            .all(|tp| seen.insert(tp.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn add(g: &mut Group, id: &str, now: Instant) {
        let topics = ["t".to_owned()].into();
        g.members.insert(
            id.into(),
            Member::new(
                id.into(),
                None,
                "c".into(),
                "h".into(),
                topics,
                TIMEOUT,
                now,
            ),
        );
    }

    fn counts(n: u32) -> BTreeMap<String, u32> {
        [("t".to_owned(), n)].into()
    }

    fn owned(g: &Group, id: &str) -> usize {
        g.members[id].owned.len()
    }

    #[test]
    fn partitions_move_only_after_the_old_owner_releases_them() {
        let now = Instant::now();
        let mut g = Group::new("g".into(), Assignor::Sticky);
        add(&mut g, "a", now);
        g.rebalance(counts(6));
        g.reconcile(now, TIMEOUT);
        assert_eq!(owned(&g, "a"), 6);
        assert_eq!(g.state(), pb::GroupState::Stable);

        add(&mut g, "b", now);
        g.rebalance(counts(6));
        g.reconcile(now, TIMEOUT);
        // b's share is being revoked from a; b gets nothing yet.
        assert_eq!(g.members["a"].revoking.len(), 3);
        assert_eq!(owned(&g, "a"), 6);
        assert_eq!(owned(&g, "b"), 0);
        assert_eq!(g.pending(&g.members["b"]).len(), 3);
        assert_eq!(g.state(), pb::GroupState::Reconciling);
        assert!(g.owned_once());
        let epoch_a = g.members["a"].epoch;

        // a releases one: b gets exactly that one.
        let first = g.members["a"].revoking.iter().next().cloned().unwrap();
        assert!(g.release("a", std::slice::from_ref(&first)));
        g.reconcile(now, TIMEOUT);
        assert_eq!(owned(&g, "b"), 1);
        assert!(g.members["b"].owned.contains_key(&first));
        assert!(g.members["a"].epoch > epoch_a);
        assert!(g.owned_once());

        // Releasing something not being revoked does nothing.
        let kept = g.members["a"].assigned()[0].clone();
        assert!(!g.release("a", &[kept]));

        let rest: Vec<Tp> = g.members["a"].revoking.iter().cloned().collect();
        g.release("a", &rest);
        g.reconcile(now, TIMEOUT);
        assert_eq!((owned(&g, "a"), owned(&g, "b")), (3, 3));
        assert_eq!(g.state(), pb::GroupState::Stable);
        assert!(g.members["a"].revoke_deadline.is_none());
    }

    #[test]
    fn a_removed_owner_frees_its_partitions_at_once() {
        let now = Instant::now();
        let mut g = Group::new("g".into(), Assignor::Sticky);
        for id in ["a", "b", "c"] {
            add(&mut g, id, now);
        }
        g.rebalance(counts(12));
        g.reconcile(now, TIMEOUT);
        let before: BTreeMap<String, BTreeSet<Tp>> = g
            .members
            .values()
            .map(|m| (m.id.clone(), m.owned.keys().cloned().collect()))
            .collect();
        g.members.remove("b");
        g.rebalance(counts(12));
        g.reconcile(now, TIMEOUT);
        for id in ["a", "c"] {
            let now_owned: BTreeSet<Tp> = g.members[id].owned.keys().cloned().collect();
            assert!(
                now_owned.is_superset(&before[id]),
                "{id} kept its partitions"
            );
            assert_eq!(now_owned.len(), 6);
            assert!(g.members[id].revoking.is_empty());
        }
        assert!(g.owned_once());
    }

    #[test]
    fn the_view_carries_the_full_assignment() {
        let now = Instant::now();
        let mut g = Group::new("g".into(), Assignor::Range);
        add(&mut g, "a", now);
        let rx = g.members["a"].view.subscribe();
        g.rebalance(counts(3));
        g.reconcile(now, TIMEOUT);
        let View::Assignment(a) = rx.borrow().clone() else {
            panic!("assignment");
        };
        assert_eq!(a.member_epoch, 1);
        assert_eq!(a.generation, 1);
        assert_eq!(
            a.assigned,
            [pb::TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 1, 2]
            }]
        );
        assert!(a.revoke.is_empty());
    }
}
