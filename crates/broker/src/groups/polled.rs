//! Members without a stream: Kafka clients. They join, then learn their assignment from the
//! answers to their heartbeats (Kafka's consumer protocol, ConsumerGroupHeartbeat) or from a
//! join and sync round each time it changes (Kafka's classic protocol: JoinGroup, SyncGroup,
//! Heartbeat). They are members of the same groups as gRPC members, under the same
//! coordinator: the broker assigns, and a partition moves only after its owner released it.
//!
//! A polled member releases a partition being revoked from it by no longer reporting it as
//! owned ([`Release::Except`]), or, under the classic protocol's eager assignors, by rejoining
//! at all ([`Release::AllRevoking`]): an eager client gives up every partition before it
//! rejoins. A classic member is told to rejoin (Heartbeat answers `REBALANCE_IN_PROGRESS`)
//! whenever its partitions changed since its last SyncGroup: its assignment only reaches it in
//! a join and sync round. Its join is answered once the partitions it is to get are free (or
//! after its rebalance timeout), and a partition revoked between its join and its sync is one
//! it never held: the sync releases it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::pb::{self, ErrorCode};
use tracing::info;

use super::assignor::Tp;
pub use super::coordinator::Release;
use super::coordinator::{Classic, Group, Member};
use super::{Groups, State};
use crate::error::RpcError;
use crate::topics;

/// A join by a member without a stream.
#[derive(Debug, Clone, Default)]
pub struct PolledJoin {
    /// The group id.
    pub group: String,
    /// The member id the client chose, or `None` for one the broker makes.
    pub member_id: Option<String>,
    /// The static instance id.
    pub instance_id: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The peer address.
    pub host: String,
    /// The subscribed topics.
    pub topics: Vec<String>,
    /// The session timeout; 0 for the broker's default.
    pub session_timeout_ms: u64,
    /// The assignor: `""` for the group's (sticky for a new group), else as
    /// [`pb::JoinGroup::assignor`].
    pub assignor: String,
}

/// A polled member's state after a join or heartbeat.
#[derive(Debug, Clone)]
pub struct Polled {
    /// The member id.
    pub member_id: String,
    /// The member epoch.
    pub epoch: u32,
    /// The partitions it owns and keeps.
    pub assigned: Vec<Tp>,
    /// How often it should heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// The answer to a classic join.
#[derive(Debug, Clone)]
pub struct ClassicJoined {
    /// The member id.
    pub member_id: String,
    /// The generation id to sync, heartbeat and commit with.
    pub generation: i32,
    /// The member Kafka calls the leader: the classic member with the smallest id.
    pub leader: String,
    /// For the leader only: every classic member's id, instance id and subscription.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// A classic join: the member's subscription, and what it gives up by rejoining.
#[derive(Debug, Clone)]
pub struct ClassicJoin {
    /// The join; `member_id` names an existing member (`None` for a new one).
    pub join: PolledJoin,
    /// The protocol chosen for it.
    pub protocol: String,
    /// Its subscription, as sent.
    pub metadata: Bytes,
    /// What an existing member gives up.
    pub release: Release,
}

impl Groups {
    /// Joins a member without a stream (its view channel has no receiver).
    ///
    /// # Errors
    /// As [`Groups::join`].
    pub fn join_polled(&self, join: PolledJoin) -> Result<Polled, RpcError> {
        let group = join.group.clone();
        let req = pb::JoinGroup {
            group: join.group,
            topics: join.topics,
            client_id: join.client_id,
            instance_id: join.instance_id,
            session_timeout_ms: join.session_timeout_ms,
            assignor: join.assignor,
        };
        let joined = self.join_as(req, join.host, join.member_id)?;
        self.poll(&group, &joined.member_id, None, Release::Nothing)
    }

    /// A polled member's heartbeat: it is alive, maybe subscribes to other `topics`, and
    /// releases what `release` says.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER` if the member was removed; `INVALID_TOPIC_NAME` or `INVALID_REQUEST`
    /// for a bad subscription.
    pub fn poll(
        &self,
        group: &str,
        member: &str,
        topics: Option<Vec<String>>,
        release: Release,
    ) -> Result<Polled, RpcError> {
        let topics = topics.map(subscription).transpose()?;
        let now = Instant::now();
        let mut state = self.lock();
        let g = member_group(&mut state, group, member)?;
        let m = member_of(g, group, member)?;
        m.last_seen = now;
        let resubscribed = topics.filter(|t| *t != m.topics).map(|t| m.topics = t);
        let released = release.released(&m.revoking);
        if resubscribed.is_some() {
            info!(group, member, "member changed its subscription");
            g.release(member, &released);
            self.rebalance(g, now);
        } else if g.release(member, &released) {
            g.reconcile(now, self.rebalance_timeout());
        }
        let m = g
            .members
            .get(member)
            .ok_or_else(|| RpcError::internal("member vanished under the lock"))?;
        Ok(self.polled(m))
    }

    fn polled(&self, m: &Member) -> Polled {
        let session_ms = m.session_timeout.as_millis() as u64;
        Polled {
            member_id: m.id.clone(),
            epoch: m.epoch,
            assigned: m.assigned(),
            heartbeat_interval_ms: self
                .settings
                .heartbeat_interval_ms
                .min(session_ms / 3)
                .max(1),
        }
    }

    /// Kafka's JoinGroup: a new member joins, or an existing one rejoins (and releases what
    /// `join.release` says); both get a new generation id.
    ///
    /// # Errors
    /// As [`Groups::join`] and [`Groups::poll`].
    pub fn classic_join(&self, join: ClassicJoin) -> Result<ClassicJoined, RpcError> {
        let group = join.join.group.clone();
        let polled = match join.join.member_id.clone() {
            Some(id) => self.poll(&group, &id, Some(join.join.topics), join.release.clone())?,
            None => self.join_polled(join.join)?,
        };
        let member = polled.member_id;
        let mut state = self.lock();
        let g = member_group(&mut state, &group, &member)?;
        let generation = i32::try_from(g.generation).unwrap_or(i32::MAX);
        let m = member_of(g, &group, &member)?;
        m.classic = Some(Classic {
            generation,
            protocol: join.protocol,
            metadata: join.metadata,
            synced_epoch: None,
            held: join.release,
        });
        let classic: Vec<&Member> = g.members.values().filter(|m| m.classic.is_some()).collect();
        let leader = classic.first().map_or(member.clone(), |m| m.id.clone());
        let members = if leader == member {
            classic
                .iter()
                .filter_map(|m| {
                    let c = m.classic.as_ref()?;
                    Some((m.id.clone(), m.instance_id.clone(), c.metadata.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(ClassicJoined {
            member_id: member,
            generation,
            leader,
            members,
        })
    }

    /// Waits, after a classic join, until the member owns every partition the target gives
    /// it (other members released them), it left, or `wait` passed: Kafka's JoinGroup answers
    /// once the group's members have rejoined, so a joining member does not sync an
    /// assignment that is about to change.
    /// A member waiting here is alive: its session does not expire meanwhile.
    pub async fn classic_settle(&self, group: &str, member: &str, wait: Duration) {
        // How often a waiting member counts as heard from.
        const ALIVE: Duration = Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait.min(self.rebalance_timeout());
        while tokio::time::Instant::now() < deadline {
            let mut view = {
                let mut state = self.lock();
                let Some(g) = state.groups.get_mut(group) else {
                    return;
                };
                let pending = match g.members.get(member) {
                    Some(m) => !g.pending(m).is_empty(),
                    None => return,
                };
                let Some(m) = g.members.get_mut(member).filter(|_| pending) else {
                    return;
                };
                m.last_seen = Instant::now();
                m.view.subscribe()
            };
            view.mark_unchanged();
            let wake = deadline.min(tokio::time::Instant::now() + ALIVE);
            let _ = tokio::time::timeout_at(wake, view.changed()).await;
        }
    }

    /// Kafka's SyncGroup: the member's partitions now, which it consumes until told to rejoin.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER`; `FENCED_MEMBER` for a generation other than the member's.
    pub fn classic_sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(Vec<Tp>, String), RpcError> {
        let now = Instant::now();
        let timeout = self.rebalance_timeout();
        self.with_classic(group, member, generation, |g| {
            // A partition revoked between the join and this sync is one the client does not
            // hold (but for a cooperative client's owned ones): released now.
            let held = g.members.get(member).and_then(|m| {
                let c = m.classic.as_ref()?;
                Some(c.held.released(&m.revoking))
            });
            if g.release(member, &held.unwrap_or_default()) {
                g.reconcile(now, timeout);
            }
            let m = g.members.get_mut(member)?;
            let epoch = m.epoch;
            let c = m.classic.as_mut()?;
            c.synced_epoch = Some(epoch);
            let protocol = c.protocol.clone();
            Some((m.assigned(), protocol))
        })?
        .ok_or_else(|| RpcError::internal("member vanished under the lock"))
    }

    /// Kafka's Heartbeat: true if the member must rejoin to learn new partitions.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER`; `FENCED_MEMBER` for a generation other than the member's.
    pub fn classic_heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<bool, RpcError> {
        self.with_classic(group, member, generation, |g| {
            g.members
                .get(member)
                .is_none_or(|m| m.classic.as_ref().and_then(|c| c.synced_epoch) != Some(m.epoch))
        })
    }

    /// The member epoch a classic member's commit at `generation` is checked with.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER`; `FENCED_MEMBER` for a generation other than the member's.
    pub fn classic_epoch(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<u32, RpcError> {
        self.with_classic(group, member, generation, |g| {
            g.members.get(member).map_or(0, |m| m.epoch)
        })
    }

    /// The session timeouts a member may ask for: `groups.min_session_timeout_ms` and
    /// `groups.max_session_timeout_ms`.
    pub fn session_range(&self) -> std::ops::RangeInclusive<u64> {
        self.settings.min_session_timeout_ms..=self.settings.max_session_timeout_ms
    }

    /// True if `member` is in `group` and joined by the classic protocol.
    pub fn is_classic(&self, group: &str, member: &str) -> bool {
        let state = self.lock();
        state
            .groups
            .get(group)
            .and_then(|g| g.members.get(member))
            .is_some_and(|m| m.classic.is_some())
    }

    /// Runs `f` on a classic member's group after checking the member's generation; counts
    /// as a heartbeat.
    fn with_classic<T>(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        f: impl FnOnce(&mut Group) -> T,
    ) -> Result<T, RpcError> {
        let mut state = self.lock();
        let g = member_group(&mut state, group, member)?;
        let m = member_of(g, group, member)?;
        let Some(joined_at) = m.classic.as_ref().map(|c| c.generation) else {
            return Err(RpcError::new(
                ErrorCode::FencedMember,
                format!(
                    "member {member:?} of group {group:?} did not join by the classic protocol"
                ),
            ));
        };
        if joined_at != generation {
            return Err(RpcError::new(
                ErrorCode::FencedMember,
                format!(
                    "generation {generation} is not member {member:?}'s generation {joined_at} in group {group:?}"
                ),
            ));
        }
        m.last_seen = Instant::now();
        Ok(f(g))
    }
}

/// The group `member` belongs to.
fn member_group<'a>(
    state: &'a mut State,
    group: &str,
    member: &str,
) -> Result<&'a mut Group, RpcError> {
    state
        .groups
        .get_mut(group)
        .filter(|g| g.members.contains_key(member))
        .ok_or_else(|| RpcError::unknown_member(group, member))
}

/// Member `member` of `g`.
fn member_of<'a>(g: &'a mut Group, group: &str, member: &str) -> Result<&'a mut Member, RpcError> {
    g.members
        .get_mut(member)
        .ok_or_else(|| RpcError::unknown_member(group, member))
}

/// A subscription, checked: at least one topic, each a valid name.
fn subscription(topics: Vec<String>) -> Result<BTreeSet<String>, RpcError> {
    if topics.is_empty() {
        return Err(RpcError::invalid(
            "subscription: at least one topic is required",
        ));
    }
    for t in &topics {
        topics::validate_name(t).map_err(|e| e.at("subscription"))?;
    }
    Ok(topics.into_iter().collect())
}
