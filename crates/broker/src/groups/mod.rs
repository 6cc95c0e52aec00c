//! Consumer groups: the broker-side group coordinator, committed offsets and lag
//! (`docs/protocol.md`, "Consumer groups").
//!
//! - [`assignor`]: the assignment strategies, as pure functions.
//! - [`coordinator`]: one group's membership state machine (cooperative, incremental moves).
//! - [`offsets`]: committed offsets and their internal log.
//! - [`lag`](mod@lag): the periodic computation of the lag gauges.
//! - [`polled`]: members without a stream (Kafka clients), which learn their assignment from
//!   the answers to their heartbeats.
//!
//! [`Groups`] ties them together. Its state is one `std::sync::Mutex`, held for short,
//! in-memory steps only, never across an `.await` or I/O: a commit takes a slot in the offsets
//! writer's queue first, then validates ownership and queues the change under the lock (so
//! changes reach the log in the order they were validated), then waits for the fsync
//! without the lock. Timeouts are enforced by [`Groups::tick`], which the server calls every
//! [`TICK`].

pub mod assignor;
pub mod coordinator;
pub mod lag;
pub mod offsets;
pub mod polled;
pub mod reset;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runnel_proto::pb::{self, ErrorCode};
use runnel_storage::LogEnv;
use tokio::sync::watch;
use tracing::info;

use crate::clock::now_ms;
use crate::config::GroupSettings;
use crate::error::{Error, RpcError};
use crate::metrics::{self, GroupGauges};
use crate::partition::Partition;
use crate::topics::{self, Topics};
use assignor::{Assignor, Tp};
use coordinator::{Group, Member, View, to_pb};
use offsets::{Change, Committed, OffsetStore, OnDisk};

/// How often [`Groups::tick`] runs: session and rebalance timeouts are enforced, and new
/// partitions noticed, this much late at most.
pub const TICK: Duration = Duration::from_millis(100);

/// Checks a group id (or a static instance id): the topic naming rule.
///
/// # Errors
/// `INVALID_GROUP_ID` saying which rule fails.
pub fn validate_group_id(field: &str, id: &str) -> Result<(), RpcError> {
    topics::validate_name(id).map_err(|e| {
        let why = e
            .message
            .split_once(" is invalid: ")
            .map_or(e.message.as_str(), |(_, why)| why);
        RpcError::new(
            ErrorCode::InvalidGroupId,
            format!("{field} {id:?} is invalid: {why}"),
        )
    })
}

/// What a member learns when it joins.
#[derive(Debug)]
pub struct Joined {
    /// The group id.
    pub group: String,
    /// The new member's id.
    pub member_id: String,
    /// The response to send first.
    pub joined: pb::Joined,
    /// The member's assignment and its changes.
    pub view: watch::Receiver<View>,
}

/// The group coordinator and the committed offsets of every group.
#[derive(Debug)]
pub struct Groups {
    state: Mutex<State>,
    /// The committed offsets.
    pub offsets: OffsetStore,
    topics: Arc<Topics>,
    settings: GroupSettings,
    /// The lag gauges, rendered by the metrics endpoint.
    pub gauges: Arc<GroupGauges>,
    nonce: u64,
}

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<String, Group>,
    next_member: u64,
}

fn tps_of(list: &[pb::TopicPartitions]) -> Vec<Tp> {
    list.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

impl Groups {
    /// Loads the committed offsets under `data_dir` (their internal log opened with `env`).
    /// Blocking. Call [`Groups::start`] on the runtime before use.
    ///
    /// # Errors
    /// As [`OffsetStore::open`].
    pub fn open(
        data_dir: &Path,
        settings: GroupSettings,
        topics: Arc<Topics>,
        gauges: Arc<GroupGauges>,
        env: &LogEnv,
    ) -> Result<Self, Error> {
        let offsets = OffsetStore::open(data_dir, settings.offsets_compact_bytes, env)?;
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Groups {
            state: Mutex::new(State::default()),
            offsets,
            topics,
            settings,
            gauges,
            nonce,
        })
    }

    /// Starts the offsets writer.
    pub fn start(&self) {
        self.offsets.start();
    }

    /// Ends every member's stream (`BROKER_SHUTTING_DOWN` is sent by the streams themselves),
    /// stops the offsets writer after the commits already queued and closes its log.
    pub async fn close(&self) {
        self.offsets.close().await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition counts of `topics` now (0 for a topic that does not exist).
    fn counts(&self, topics: &BTreeSet<String>) -> BTreeMap<String, u32> {
        topics
            .iter()
            .map(|t| {
                let n = self.topics.get(t).map_or(0, |t| t.partition_count());
                (t.clone(), n)
            })
            .collect()
    }

    fn rebalance(&self, g: &mut Group, now: Instant) {
        let counts = self.counts(&g.subscribed_topics());
        g.rebalance(counts);
        crate::metrics::group_rebalanced();
        g.reconcile(now, self.rebalance_timeout());
    }

    fn rebalance_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.rebalance_timeout_ms)
    }

    /// True if a group id is new and the broker already has `max_groups`.
    fn over_group_limit(&self, state: &State, group: &str) -> bool {
        if state.groups.contains_key(group) || self.offsets.has_group(group) {
            return false;
        }
        let mut all: BTreeSet<String> = self.offsets.groups().into_iter().collect();
        all.extend(state.groups.keys().cloned());
        all.len() >= self.settings.max_groups as usize
    }

    fn group_limit_error(&self, group: &str) -> RpcError {
        metrics::limit_rejected("max_groups");
        RpcError::limit(format!(
            "cannot create group {group:?}: max_groups ({}) reached",
            self.settings.max_groups
        ))
    }

    /// Joins a member (the first request of a Membership stream).
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `INVALID_TOPIC_NAME`, `INVALID_REQUEST` (no topics, a session
    /// timeout out of range, an unknown or conflicting assignor, a long client id),
    /// `LIMIT_EXCEEDED` (`max_groups`, `max_members_per_group`).
    pub fn join(&self, req: pb::JoinGroup, host: String) -> Result<Joined, RpcError> {
        self.join_as(req, host, None)
    }

    /// [`Groups::join`] with the member id the client chose (Kafka's ConsumerGroupHeartbeat
    /// v1), or one the broker makes for `None`. A member already in the group under that id is
    /// replaced: the client lost its state and starts over.
    fn join_as(
        &self,
        req: pb::JoinGroup,
        host: String,
        chosen: Option<String>,
    ) -> Result<Joined, RpcError> {
        validate_group_id("join.group", &req.group)?;
        if let Some(id) = &req.instance_id {
            validate_group_id("join.instance_id", id)?;
        }
        if req.topics.is_empty() {
            return Err(RpcError::invalid(
                "join.topics: at least one topic is required",
            ));
        }
        for t in &req.topics {
            topics::validate_name(t).map_err(|e| e.at("join.topics"))?;
        }
        if req.client_id.len() > runnel_proto::MAX_CLIENT_ID_BYTES {
            return Err(RpcError::invalid(format!(
                "join.client_id is {} bytes, more than {}",
                req.client_id.len(),
                runnel_proto::MAX_CLIENT_ID_BYTES
            )));
        }
        let s = &self.settings;
        let session_ms = if req.session_timeout_ms == 0 {
            s.session_timeout_ms
        } else {
            req.session_timeout_ms
        };
        if session_ms < s.min_session_timeout_ms || session_ms > s.max_session_timeout_ms {
            return Err(RpcError::invalid(format!(
                "join.session_timeout_ms {session_ms} is outside [{}, {}] (groups.min_session_timeout_ms, groups.max_session_timeout_ms)",
                s.min_session_timeout_ms, s.max_session_timeout_ms
            )));
        }
        let assignor = Assignor::parse(&req.assignor).ok_or_else(|| {
            RpcError::invalid(format!(
                "join.assignor {:?} is not one of \"sticky\", \"range\", \"roundrobin\"",
                req.assignor
            ))
        })?;
        let topics: BTreeSet<String> = req.topics.into_iter().collect();
        let session_timeout = Duration::from_millis(session_ms);
        let heartbeat_ms = s.heartbeat_interval_ms.min(session_ms / 3).max(1);
        let now = Instant::now();

        let mut state = self.lock();
        if !state.groups.contains_key(&req.group) && self.over_group_limit(&state, &req.group) {
            return Err(self.group_limit_error(&req.group));
        }
        state.next_member += 1;
        let member_id = chosen.unwrap_or_else(|| {
            format!(
                "m-{:012x}-{:08}",
                self.nonce & 0xffff_ffff_ffff,
                state.next_member
            )
        });
        let group = state
            .groups
            .entry(req.group.clone())
            .or_insert_with(|| Group::new(req.group.clone(), assignor));
        if let Some(old) = group.members.remove(&member_id) {
            old.remove(RpcError::unknown_member(&req.group, &member_id));
        }
        if group.members.is_empty() {
            group.assignor = assignor;
        } else if group.assignor != assignor && !req.assignor.is_empty() {
            return Err(RpcError::invalid(format!(
                "join.assignor {:?}: group {:?} uses {:?}; all members must use the same assignor",
                assignor.name(),
                req.group,
                group.assignor.name()
            )));
        }
        let replaced = req.instance_id.as_ref().and_then(|iid| {
            group
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(iid))
                .map(|m| m.id.clone())
        });
        if replaced.is_none() && group.members.len() >= s.max_members_per_group as usize {
            metrics::limit_rejected("max_members_per_group");
            return Err(RpcError::limit(format!(
                "group {:?} has max_members_per_group ({}) members",
                req.group, s.max_members_per_group
            )));
        }
        let mut member = Member::new(
            member_id.clone(),
            req.instance_id.clone(),
            req.client_id,
            host,
            topics,
            session_timeout,
            now,
        );
        let view = member.view.subscribe();
        match replaced {
            Some(old_id) => {
                // Static membership: the new stream takes over the old member's partitions,
                // revocations and place in the target; the old one is fenced.
                let Some(old) = group.members.remove(&old_id) else {
                    // Found just above under the same lock.
                    return Err(RpcError::internal("static member vanished"));
                };
                old.remove(RpcError::new(
                    ErrorCode::FencedMember,
                    format!(
                        "member {old_id:?} was replaced by member {member_id:?} with the same instance id {:?}",
                        req.instance_id.as_deref().unwrap_or_default()
                    ),
                ));
                member.epoch = old.epoch + 1;
                member.owned = old.owned;
                member.revoking = old.revoking;
                member.revoke_deadline = old.revoke_deadline;
                let same_topics = member.topics == old.topics;
                for owner in group.target.values_mut() {
                    if *owner == old_id {
                        owner.clone_from(&member_id);
                    }
                }
                group.members.insert(member_id.clone(), member);
                if same_topics {
                    group.reconcile(now, self.rebalance_timeout());
                } else {
                    self.rebalance(group, now);
                }
                info!(group = %group.id, member = %member_id, replaced = %old_id,
                    instance_id = req.instance_id.as_deref().unwrap_or_default(),
                    generation = group.generation, rebalance = !same_topics,
                    "static member rejoined");
            }
            None => {
                group.members.insert(member_id.clone(), member);
                self.rebalance(group, now);
                info!(group = %group.id, member = %member_id,
                    instance_id = req.instance_id.as_deref().unwrap_or_default(),
                    generation = group.generation, members = group.members.len(),
                    "member joined group");
            }
        }
        // The joining member always gets an assignment, even an empty one, to learn its epoch.
        let generation = group.generation;
        if let Some(m) = group.members.get_mut(&member_id) {
            m.epoch = m.epoch.max(1);
            m.publish(generation);
        }
        let joined = pb::Joined {
            member_id: member_id.clone(),
            session_timeout_ms: session_ms,
            heartbeat_interval_ms: heartbeat_ms,
            assignor: group.assignor.name().to_owned(),
            rebalance_timeout_ms: s.rebalance_timeout_ms,
        };
        Ok(Joined {
            group: req.group,
            member_id,
            joined,
            view,
        })
    }

    /// Records a heartbeat; returns the member's epoch.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER` if the member was removed.
    pub fn heartbeat(&self, group: &str, member: &str) -> Result<u32, RpcError> {
        let mut state = self.lock();
        let m = state
            .groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(member))
            .ok_or_else(|| RpcError::unknown_member(group, member))?;
        m.last_seen = Instant::now();
        Ok(m.epoch)
    }

    /// Applies a member's acknowledgement: releases the revoked partitions it lists and
    /// assigns them to their new owners.
    ///
    /// # Errors
    /// `UNKNOWN_MEMBER` if the member was removed; `INVALID_REQUEST` for an epoch the member
    /// never had.
    pub fn acknowledge(
        &self,
        group: &str,
        member: &str,
        ack: &pb::AcknowledgeAssignment,
    ) -> Result<(), RpcError> {
        let now = Instant::now();
        let mut state = self.lock();
        let g = state
            .groups
            .get_mut(group)
            .ok_or_else(|| RpcError::unknown_member(group, member))?;
        let m = g
            .members
            .get_mut(member)
            .ok_or_else(|| RpcError::unknown_member(group, member))?;
        m.last_seen = now;
        if ack.member_epoch > m.epoch {
            return Err(RpcError::invalid(format!(
                "acknowledge.member_epoch {} is newer than the member's epoch {}",
                ack.member_epoch, m.epoch
            )));
        }
        if g.release(member, &tps_of(&ack.released)) {
            g.reconcile(now, self.rebalance_timeout());
        }
        Ok(())
    }

    /// Removes a member that left; its partitions go to the others at once.
    pub fn leave(&self, group: &str, member: &str) {
        let mut state = self.lock();
        if let Some(g) = state.groups.get_mut(group)
            && g.members.remove(member).is_some()
        {
            self.rebalance(g, Instant::now());
            info!(
                group,
                member,
                generation = g.generation,
                members = g.members.len(),
                "member left group"
            );
        }
        self.drop_if_idle(&mut state, group);
    }

    /// A member's stream ended without `leave`: a dynamic member is removed at once (its id
    /// dies with the stream); a static member keeps its partitions until its session timeout,
    /// so that it can come back.
    pub fn disconnected(&self, group: &str, member: &str) {
        let mut state = self.lock();
        let Some(g) = state.groups.get_mut(group) else {
            return;
        };
        let Some(m) = g.members.get_mut(member) else {
            return;
        };
        if m.instance_id.is_some() {
            m.connected = false;
            info!(
                group,
                member,
                instance_id = m.instance_id.as_deref().unwrap_or_default(),
                "static member disconnected; it keeps its partitions until its session timeout"
            );
            return;
        }
        g.members.remove(member);
        self.rebalance(g, Instant::now());
        info!(
            group,
            member,
            generation = g.generation,
            members = g.members.len(),
            "member lost its stream; removed"
        );
        self.drop_if_idle(&mut state, group);
    }

    /// Forgets a group without members and without committed offsets.
    fn drop_if_idle(&self, state: &mut State, group: &str) {
        let idle = state
            .groups
            .get(group)
            .is_some_and(|g| g.members.is_empty());
        if idle && !self.offsets.has_group(group) {
            state.groups.remove(group);
        }
    }

    /// Enforces session and rebalance timeouts and picks up partition count changes of
    /// subscribed topics (new partitions, created or deleted topics).
    pub fn tick(&self, now: Instant) {
        let mut state = self.lock();
        let ids: Vec<String> = state.groups.keys().cloned().collect();
        for id in ids {
            let Some(g) = state.groups.get_mut(&id) else {
                continue;
            };
            let mut changed = false;
            let expired: Vec<(String, RpcError)> = g
                .members
                .values()
                .filter_map(|m| {
                    if now.saturating_duration_since(m.last_seen) > m.session_timeout {
                        Some((
                            m.id.clone(),
                            RpcError::new(
                                ErrorCode::UnknownMember,
                                format!(
                                    "member {:?} was removed from group {id:?}: no heartbeat within its session timeout ({} ms)",
                                    m.id,
                                    m.session_timeout.as_millis()
                                ),
                            ),
                        ))
                    } else if m.revoke_deadline.is_some_and(|d| now >= d) {
                        Some((
                            m.id.clone(),
                            RpcError::new(
                                ErrorCode::UnknownMember,
                                format!(
                                    "member {:?} was removed from group {id:?}: it did not release revoked partitions within groups.rebalance_timeout_ms ({} ms)",
                                    m.id, self.settings.rebalance_timeout_ms
                                ),
                            ),
                        ))
                    } else {
                        None
                    }
                })
                .collect();
            for (member, why) in expired {
                if let Some(m) = g.members.remove(&member) {
                    info!(group = %id, member = %member, reason = %why.message, "member removed");
                    m.remove(why);
                    changed = true;
                }
            }
            if !changed && !g.members.is_empty() {
                changed = self.counts(&g.subscribed_topics()) != g.counts;
                if changed {
                    info!(group = %id, "partitions of subscribed topics changed; rebalancing");
                }
            }
            if changed {
                self.rebalance(g, now);
            }
            self.drop_if_idle(&mut state, &id);
        }
    }

    /// Stores committed offsets.
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `INVALID_REQUEST`, `UNKNOWN_MEMBER`, `GROUP_NOT_EMPTY` (a
    /// standalone commit to a group with members), `LIMIT_EXCEEDED` (`max_groups`), or the
    /// offsets log's error (`DISK_FULL`, `LOG_FAILED`). Per-partition problems are inline.
    pub async fn commit(
        &self,
        req: pb::CommitOffsetsRequest,
    ) -> Result<pb::CommitOffsetsResponse, RpcError> {
        validate_group_id("group", &req.group)?;
        if req.offsets.is_empty() {
            return Err(RpcError::invalid("offsets: at least one entry is required"));
        }
        let mut seen = BTreeMap::new();
        for (i, o) in req.offsets.iter().enumerate() {
            if let Some(first) = seen.insert((o.topic.as_str(), o.partition), i) {
                return Err(RpcError::invalid(format!(
                    "offsets[{i}]: topic {:?} partition {} is listed twice (also offsets[{first}])",
                    o.topic, o.partition
                )));
            }
        }
        let max_meta = self.settings.offset_metadata_max_bytes as usize;
        let mut on_disk = Vec::with_capacity(req.offsets.len());
        let mut results: Vec<pb::OffsetCommitResult> = req
            .offsets
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let checked = if o.metadata.len() > max_meta {
                    Err(RpcError::invalid(format!(
                        "offsets[{i}].metadata is {} bytes, more than groups.offset_metadata_max_bytes ({max_meta})",
                        o.metadata.len()
                    )))
                } else {
                    self.topics
                        .get(&o.topic)
                        .and_then(|t| t.partition(o.partition))
                        .and_then(|p| on_disk_below(&p, o.offset))
                };
                let error = checked.map(|wait| on_disk.push(wait)).err();
                pb::OffsetCommitResult {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    error: error.map(|e| e.to_pb()),
                }
            })
            .collect();
        let slot = self.offsets.slot().await?;
        let time_ms = now_ms();
        let answer = {
            let state = self.lock();
            let g = state.groups.get(&req.group);
            if req.member_id.is_empty() {
                if let Some(g) = g.filter(|g| !g.members.is_empty()) {
                    return Err(RpcError::group_not_empty(
                        &req.group,
                        g.members.len(),
                        "only its members may commit (with member_id and member_epoch)",
                    ));
                }
            } else {
                let m = g
                    .and_then(|g| g.members.get(&req.member_id))
                    .ok_or_else(|| RpcError::unknown_member(&req.group, &req.member_id))?;
                let epoch = req.member_epoch;
                for (r, o) in results.iter_mut().zip(&req.offsets) {
                    if r.error.is_some() {
                        continue;
                    }
                    let tp = (o.topic.clone(), o.partition);
                    let fenced = match m.owned.get(&tp) {
                        Some(&since) if since <= epoch && epoch <= m.epoch => None,
                        Some(&since) => Some(format!(
                            "member {:?} epoch {epoch} does not own {}/{}: it owns it since epoch {since} and its current epoch is {}",
                            m.id, o.topic, o.partition, m.epoch
                        )),
                        None => Some(format!(
                            "member {:?} epoch {epoch} does not own {}/{} (current member epoch {}): the partition was revoked or never assigned to it",
                            m.id, o.topic, o.partition, m.epoch
                        )),
                    };
                    r.error = fenced.map(|msg| RpcError::new(ErrorCode::FencedMember, msg).to_pb());
                }
            }
            if let Some(refused) = results.iter().position(|r| r.error.is_some()) {
                // All or none: the others are not stored either, and say why.
                let why = format!(
                    "not stored: offsets[{refused}] was refused, and the commits of one request are stored all or none"
                );
                for r in results.iter_mut().filter(|r| r.error.is_none()) {
                    r.error = Some(RpcError::invalid(why.clone()).to_pb());
                }
                return Ok(pb::CommitOffsetsResponse { results });
            }
            let accepted: Vec<(Tp, Committed)> = req
                .offsets
                .iter()
                .map(|o| {
                    (
                        (o.topic.clone(), o.partition),
                        Committed {
                            offset: o.offset,
                            metadata: o.metadata.clone(),
                            commit_time_ms: time_ms,
                        },
                    )
                })
                .collect();
            if self.over_group_limit(&state, &req.group) {
                return Err(self.group_limit_error(&req.group));
            }
            OffsetStore::submit(slot, &req.group, time_ms, Change::Commit(accepted), on_disk)
        };
        OffsetStore::wait(answer).await?;
        Ok(pb::CommitOffsetsResponse { results })
    }

    /// Reads committed offsets.
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`.
    pub fn fetch_offsets(
        &self,
        req: &pb::FetchOffsetsRequest,
    ) -> Result<pb::FetchOffsetsResponse, RpcError> {
        validate_group_id("group", &req.group)?;
        let committed = self.offsets.group(&req.group);
        let wanted: Vec<Tp> = if req.partitions.is_empty() {
            committed.keys().cloned().collect()
        } else {
            let mut set = BTreeSet::new();
            for t in &req.partitions {
                if t.partitions.is_empty() {
                    let count = self.topics.get(&t.topic).map_or(0, |t| t.partition_count());
                    set.extend((0..count).map(|p| (t.topic.clone(), p)));
                    set.extend(
                        committed
                            .keys()
                            .filter(|(topic, _)| *topic == t.topic)
                            .cloned(),
                    );
                } else {
                    set.extend(t.partitions.iter().map(|p| (t.topic.clone(), *p)));
                }
            }
            set.into_iter().collect()
        };
        let offsets = wanted
            .into_iter()
            .map(|tp| {
                let c = committed.get(&tp);
                pb::CommittedOffset {
                    offset: c.map(|c| c.offset),
                    metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                    commit_time_ms: c.map_or(0, |c| c.commit_time_ms),
                    topic: tp.0,
                    partition: tp.1,
                }
            })
            .collect();
        Ok(pb::FetchOffsetsResponse { offsets })
    }

    /// Every group with members or committed offsets.
    pub fn list(&self) -> pb::ListGroupsResponse {
        let mut out: BTreeMap<String, pb::GroupListing> = self
            .offsets
            .groups()
            .into_iter()
            .map(|g| {
                let listing = pb::GroupListing {
                    group: g.clone(),
                    state: pb::GroupState::Empty as i32,
                    member_count: 0,
                };
                (g, listing)
            })
            .collect();
        let state = self.lock();
        for g in state.groups.values() {
            if g.members.is_empty() && !out.contains_key(&g.id) {
                continue;
            }
            out.insert(
                g.id.clone(),
                pb::GroupListing {
                    group: g.id.clone(),
                    state: g.state() as i32,
                    member_count: g.members.len() as u32,
                },
            );
        }
        pb::ListGroupsResponse {
            groups: out.into_values().collect(),
        }
    }

    /// Describes a group.
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `UNKNOWN_GROUP`.
    pub fn describe(&self, group: &str) -> Result<pb::DescribeGroupResponse, RpcError> {
        validate_group_id("group", group)?;
        let committed = self.offsets.group(group);
        let mut response = pb::DescribeGroupResponse {
            group: group.to_owned(),
            state: pb::GroupState::Empty as i32,
            ..Default::default()
        };
        let mut owners: BTreeMap<Tp, String> = BTreeMap::new();
        let mut wanted: BTreeSet<Tp> = committed.keys().cloned().collect();
        {
            let state = self.lock();
            let g = state.groups.get(group).filter(|g| !g.members.is_empty());
            if g.is_none() && committed.is_empty() {
                return Err(RpcError::unknown_group(group));
            }
            if let Some(g) = state.groups.get(group) {
                response.generation = g.generation;
            }
            if let Some(g) = g {
                response.state = g.state() as i32;
                response.assignor = g.assignor.name().to_owned();
                for (topic, count) in &g.counts {
                    wanted.extend((0..*count).map(|p| (topic.clone(), p)));
                }
                for m in g.members.values() {
                    for tp in m.owned.keys() {
                        owners.insert(tp.clone(), m.id.clone());
                    }
                    response.members.push(pb::GroupMember {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        host: m.host.clone(),
                        member_epoch: m.epoch,
                        topics: m.topics.iter().cloned().collect(),
                        assigned: to_pb(m.assigned().iter()),
                        revoking: to_pb(m.revoking.iter()),
                        pending: to_pb(g.pending(m).iter()),
                        session_timeout_ms: m.session_timeout.as_millis() as u64,
                        connected: m.connected,
                    });
                }
            }
        }
        for tp in wanted {
            let (start, end) = self
                .topics
                .get(&tp.0)
                .and_then(|t| t.partition(tp.1))
                .map_or((0, 0), |p| (p.start_offset(), p.end_offset()));
            let c = committed.get(&tp);
            response.partitions.push(pb::GroupPartition {
                committed_offset: c.map(|c| c.offset),
                metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                log_start_offset: start,
                log_end_offset: end,
                lag: c.map(|c| lag(c.offset, start, end)),
                owner: owners.remove(&tp).unwrap_or_default(),
                topic: tp.0,
                partition: tp.1,
            });
        }
        Ok(response)
    }

    /// Deletes a group's committed offsets.
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `UNKNOWN_GROUP`, `GROUP_NOT_EMPTY`, or the offsets log's error.
    pub async fn delete(&self, group: &str) -> Result<(), RpcError> {
        validate_group_id("group", group)?;
        let slot = self.offsets.slot().await?;
        let answer = {
            let mut state = self.lock();
            if let Some(g) = state.groups.get(group)
                && !g.members.is_empty()
            {
                return Err(RpcError::group_not_empty(
                    group,
                    g.members.len(),
                    "delete it once they have left",
                ));
            }
            let known = state.groups.remove(group).is_some();
            if self.offsets.has_group(group) {
                Some(OffsetStore::submit(
                    slot,
                    group,
                    now_ms(),
                    Change::DeleteGroup,
                    Vec::new(),
                ))
            } else if known {
                None
            } else {
                return Err(RpcError::unknown_group(group));
            }
        };
        if let Some(answer) = answer {
            OffsetStore::wait(answer).await?;
        }
        self.gauges.remove_group(group);
        info!(group, "deleted group");
        Ok(())
    }

    /// Resets committed offsets (or plans it, for a dry run).
    ///
    /// # Errors
    /// `INVALID_GROUP_ID`, `INVALID_REQUEST`, `UNKNOWN_TOPIC`, `UNKNOWN_PARTITION`,
    /// `GROUP_NOT_EMPTY`, `LIMIT_EXCEEDED`, a storage error reading a timestamp, or the
    /// offsets log's error.
    pub async fn reset(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<pb::ResetOffsetsResponse, RpcError> {
        validate_group_id("group", &req.group)?;
        let target = reset::target(req.target)?;
        let committed = self.offsets.group(&req.group);
        let selected =
            reset::partitions(&self.topics, &req.topics, req.all_topics, committed.keys())?;
        let plan = crate::tasks::blocking(move || {
            reset::plan(selected, target, |tp| committed.get(tp).map(|c| c.offset))
        })
        .await?;
        let resets = reset::resets(&plan);
        let slot = if req.dry_run || plan.is_empty() {
            None
        } else {
            Some(self.offsets.slot().await?)
        };
        let answer = {
            let state = self.lock();
            if let Some(g) = state.groups.get(&req.group)
                && !g.members.is_empty()
                && !req.force
            {
                return Err(RpcError::group_not_empty(
                    &req.group,
                    g.members.len(),
                    "stop them first, or set force",
                ));
            }
            match slot {
                Some(slot) => {
                    if self.over_group_limit(&state, &req.group) {
                        return Err(self.group_limit_error(&req.group));
                    }
                    let time_ms = now_ms();
                    let on_disk = plan
                        .iter()
                        .map(|m| on_disk_below(&m.partition, m.new))
                        .collect::<Result<Vec<_>, _>>()?;
                    let entries = plan
                        .into_iter()
                        .map(|m| {
                            (
                                m.tp,
                                Committed {
                                    offset: m.new,
                                    metadata: String::new(),
                                    commit_time_ms: time_ms,
                                },
                            )
                        })
                        .collect();
                    Some(OffsetStore::submit(
                        slot,
                        &req.group,
                        time_ms,
                        Change::Commit(entries),
                        on_disk,
                    ))
                }
                None => None,
            }
        };
        if let Some(answer) = answer {
            OffsetStore::wait(answer).await?;
            info!(group = %req.group, force = req.force, "reset committed offsets");
        }
        Ok(pb::ResetOffsetsResponse {
            resets,
            dry_run: req.dry_run,
        })
    }

    /// The member count of every group with members, for the gauges.
    pub fn member_counts(&self) -> Vec<(String, usize)> {
        self.lock()
            .groups
            .values()
            .filter(|g| !g.members.is_empty())
            .map(|g| (g.id.clone(), g.members.len()))
            .collect()
    }

    /// The topic registry.
    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }
}

/// Records left to consume: the log end minus the larger of the committed offset and the log
/// start (records retention deleted cannot be consumed), never negative.
pub fn lag(committed: u64, log_start: u64, log_end: u64) -> u64 {
    log_end.saturating_sub(committed.max(log_start))
}

/// Checks that `offset` is within `p`'s log and starts making the records below it durable:
/// a consumer may read records before they are fsynced, and a committed offset must never
/// point past what a power cut keeps (the log would end below it, and the group's offset
/// would go back when its consumer starts again). The wait registers with the partition's
/// group commit now, so the waits of every partition of a commit run together; the offsets
/// writer awaits them before it writes the commit (usually the records are on disk already).
///
/// # Errors
/// `OFFSET_OUT_OF_RANGE` past the log end (a consumer that read records a power cut then
/// took); the wait fails with `LOG_FAILED` once the partition's log failed.
fn on_disk_below(p: &Arc<Partition>, offset: u64) -> Result<OnDisk, RpcError> {
    let end = p.end_offset();
    if offset > end {
        return Err(RpcError::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "{}/{}: offset {offset} is past the log end {end}; a committed offset is at most the log end",
                p.topic, p.index
            ),
        ));
    }
    let wait = p.want_durable(offset);
    let (topic, partition) = (p.topic.clone(), p.index);
    Ok(Box::pin(async move {
        wait.await.map_err(|e| {
            let at = crate::error::At {
                topic: &topic,
                partition,
                epoch: None,
            };
            RpcError::new(
                ErrorCode::LogFailed,
                format!(
                    "not committed: the records of {topic}/{partition} below offset {offset} are not known to be on disk ({})",
                    RpcError::storage(&e, at).message
                ),
            )
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_clamped() {
        assert_eq!(lag(5, 0, 10), 5);
        assert_eq!(
            lag(2, 6, 10),
            4,
            "retention deleted past the committed offset"
        );
        assert_eq!(lag(12, 0, 10), 0, "committed past the end");
        assert_eq!(lag(0, 0, 0), 0);
    }

    #[test]
    fn group_ids_follow_the_topic_rule() {
        validate_group_id("group", "billing-service.v2").unwrap();
        let e = validate_group_id("group", "a b").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidGroupId);
        assert!(
            e.message
                .starts_with("group \"a b\" is invalid: character ' '"),
            "{}",
            e.message
        );
        assert!(validate_group_id("group", "").is_err());
    }
}
