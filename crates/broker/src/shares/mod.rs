//! Share groups: queues over topics (`docs/protocol.md`, "Share groups").
//!
//! - [`state`]: one share partition's records in flight, as a pure state machine.
//! - [`store`]: the internal log that keeps every group's settings and state.
//!
//! [`ShareGroups`] holds every group; a [`ShareGroup`] holds its settings, members and share
//! partitions under one `std::sync::Mutex`, taken for short in-memory steps only. A change
//! that must survive a restart is queued into the store under that lock and waited for
//! without it. Lock expiries and delayed records are handled by [`ShareGroups::tick`], which
//! the server calls every [`TICK`]; readers waiting for records are woken by
//! [`ShareGroup::changed`] and by the partitions' log ends.

pub mod state;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use runnel_proto::pb::ErrorCode;
use runnel_storage::LogEnv;
use tokio::sync::Notify;
use tracing::info;

use crate::config::{MAX_BACKOFF_STEPS, ShareSettings, ShareStartSetting};
use crate::error::{Error, RpcError};
use crate::groups::assignor::Tp;
use crate::metrics;
use state::{Ack, Acquired, Copy, Counts, DeadLetters, Rules, SharePartition};
use store::{Entry, Reset, Settings, Store, Written};

/// How often [`ShareGroups::tick`] runs: locks expire and delayed records become available
/// this much late at most.
pub const TICK: Duration = Duration::from_millis(50);

/// One acknowledgement, as the domain takes it.
#[derive(Debug, Clone)]
pub struct AckEntry {
    /// The partition.
    pub tp: Tp,
    /// First offset.
    pub first: u64,
    /// Last offset (inclusive).
    pub last: u64,
    /// What to do.
    pub ack: Ack,
}

/// A change of a group's settings.
#[derive(Debug, Clone, Default)]
pub struct Alter {
    /// New lock duration.
    pub lock_ms: Option<u64>,
    /// New delivery limit.
    pub max_deliveries: Option<u16>,
    /// New backoff schedule (an empty one removes the backoff).
    pub backoff_ms: Option<Vec<u64>>,
    /// New dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Remove the dead-letter topic.
    pub clear_dead_letter_topic: bool,
    /// New start.
    pub reset: Option<Reset>,
}

/// The settings in force for a group: its own, defaults filled in.
#[derive(Debug, Clone)]
pub struct Effective {
    /// What acknowledgements and expiries follow.
    pub rules: Rules,
    /// Where a new partition starts.
    pub reset: Reset,
    /// The dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

/// A share partition as described.
#[derive(Debug, Clone)]
pub struct PartitionView {
    /// Topic and partition.
    pub tp: Tp,
    /// The share-partition start offset.
    pub start: u64,
    /// The first offset never acquired.
    pub next: u64,
    /// Records by state.
    pub counts: Counts,
}

/// What to read to acquire records of one partition: the ranges available now, and where
/// fresh records start when the window has room.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Ranges of records available now, in offset order.
    pub ready: Vec<(u64, u64)>,
    /// The next offset, when fresh records may be acquired.
    pub fresh: Option<u64>,
}

/// Every share group.
#[derive(Debug)]
pub struct ShareGroups {
    settings: ShareSettings,
    max_members: u32,
    store: Arc<Store>,
    groups: RwLock<BTreeMap<String, Arc<ShareGroup>>>,
    stop: Notify,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Notified when records wait for a dead-letter topic.
    pub dead_letters: Arc<Notify>,
}

/// One share group.
#[derive(Debug)]
pub struct ShareGroup {
    /// The group id.
    pub id: String,
    state: Mutex<GroupState>,
    store: Arc<Store>,
    /// Notified when records become available again (released, expired, a delay passed).
    pub changed: Notify,
    dead_letters: Arc<Notify>,
}

#[derive(Debug, Default)]
struct GroupState {
    own: Settings,
    effective: Option<Effective>,
    partitions: BTreeMap<Tp, SharePartition>,
    /// Members and when each was last heard from (ms since the Unix epoch).
    members: HashMap<Arc<str>, i64>,
    deleted: bool,
}

impl ShareGroups {
    /// Opens (recovering) and replays the share groups' log under `data_dir`. Blocking. The
    /// writer starts with [`ShareGroups::start`].
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open(
        data_dir: &Path,
        settings: ShareSettings,
        max_members: u32,
        env: &LogEnv,
    ) -> Result<Self, Error> {
        let mut loaded: BTreeMap<String, GroupState> = BTreeMap::new();
        let store = Store::open(data_dir, settings.compact_bytes, env, |group, entry| {
            if matches!(entry, Entry::Delete) {
                loaded.remove(&group);
                return;
            }
            loaded.entry(group).or_default().load(entry);
        })?;
        let store = Arc::new(store);
        let dead_letters = Arc::new(Notify::new());
        let partitions: usize = loaded.values().map(|g| g.partitions.len()).sum();
        info!(groups = loaded.len(), partitions, "loaded share groups");
        let groups = loaded
            .into_iter()
            .map(|(id, mut state)| {
                state.effective = Some(effective(&settings, &state.own));
                let g = Arc::new(ShareGroup {
                    id: id.clone(),
                    state: Mutex::new(state),
                    store: store.clone(),
                    changed: Notify::new(),
                    dead_letters: dead_letters.clone(),
                });
                (id, g)
            })
            .collect();
        Ok(ShareGroups {
            settings,
            max_members,
            store,
            groups: RwLock::new(groups),
            stop: Notify::new(),
            writer: Mutex::new(None),
            dead_letters,
        })
    }

    /// Starts the writer task on the current runtime. Idempotent.
    pub fn start(self: &Arc<Self>) {
        let mut writer = lock(&self.writer);
        if writer.is_none() {
            let me = self.clone();
            *writer = Some(tokio::spawn(async move {
                me.store.run(me.stop.notified(), || me.snapshot()).await;
            }));
        }
    }

    /// Writes what is queued, stops the writer and closes the log.
    pub async fn close(&self) {
        let task = lock(&self.writer).take();
        if let Some(task) = task {
            self.stop.notify_one();
            let _ = task.await;
        }
        self.store.close().await;
    }

    /// The broker-wide settings.
    pub fn settings(&self) -> &ShareSettings {
        &self.settings
    }

    /// A group.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`.
    pub fn get(&self, id: &str) -> Result<Arc<ShareGroup>, RpcError> {
        read(&self.groups)
            .get(id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }

    /// A group, created with the broker's defaults if it does not exist.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` past `shares.max_groups`.
    pub fn get_or_create(&self, id: &str) -> Result<Arc<ShareGroup>, RpcError> {
        if let Some(g) = read(&self.groups).get(id) {
            return Ok(g.clone());
        }
        let mut groups = write(&self.groups);
        if let Some(g) = groups.get(id) {
            return Ok(g.clone());
        }
        if groups.len() >= self.settings.max_groups as usize {
            metrics::limit_rejected("shares.max_groups");
            return Err(RpcError::limit(format!(
                "group_id {id:?}: the broker has shares.max_groups ({}) share groups",
                self.settings.max_groups
            )));
        }
        let g = Arc::new(ShareGroup {
            id: id.to_owned(),
            state: Mutex::new(GroupState {
                effective: Some(effective(&self.settings, &Settings::default())),
                ..GroupState::default()
            }),
            store: self.store.clone(),
            changed: Notify::new(),
            dead_letters: self.dead_letters.clone(),
        });
        groups.insert(id.to_owned(), g.clone());
        Ok(g)
    }

    /// Every group id, sorted.
    pub fn list(&self) -> Vec<String> {
        read(&self.groups).keys().cloned().collect()
    }

    /// Every group.
    pub fn all(&self) -> Vec<Arc<ShareGroup>> {
        read(&self.groups).values().cloned().collect()
    }

    /// Checks and applies a change of a group's settings (creating the group), durably.
    /// `reads` tells whether the group reads a topic (for the dead-letter loop check);
    /// `exists` whether a topic exists.
    ///
    /// # Errors
    /// `INVALID_CONFIG` naming the field and the limit; `UNKNOWN_TOPIC` for a dead-letter
    /// topic that does not exist; the write's error.
    pub async fn alter(
        &self,
        id: &str,
        alter: Alter,
        exists: impl Fn(&str) -> bool,
    ) -> Result<Settings, RpcError> {
        self.check_alter(&alter)?;
        if let Some(t) = &alter.dead_letter_topic
            && !exists(t)
        {
            return Err(RpcError::new(
                ErrorCode::UnknownTopic,
                format!("settings.dead_letter_topic {t:?} does not exist; create it first"),
            ));
        }
        let group = self.get_or_create(id)?;
        let (own, written) = {
            let mut s = group.lock();
            if s.deleted {
                return Err(unknown(id));
            }
            if let Some(t) = &alter.dead_letter_topic
                && s.partitions.keys().any(|(topic, _)| topic == t)
            {
                return Err(RpcError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "settings.dead_letter_topic {t:?} is a topic the group reads: its dead letters would be delivered to it again"
                    ),
                ));
            }
            let mut own = s.own.clone();
            alter.apply(&mut own);
            let written = self.store.queue(id, &Entry::Settings(own.clone()));
            s.effective = Some(effective(&self.settings, &own));
            s.own = own.clone();
            (own, written)
        };
        written.wait().await?;
        group.changed.notify_waiters();
        Ok(own)
    }

    fn check_alter(&self, a: &Alter) -> Result<(), RpcError> {
        let max = self.settings.max_delay_ms;
        let bad = |field: &str, why: String| {
            Err(RpcError::new(
                ErrorCode::InvalidConfig,
                format!("settings.{field} {why}"),
            ))
        };
        if let Some(l) = a.lock_ms
            && !(100..=max).contains(&l)
        {
            return bad(
                "lock_ms",
                format!("{l} is out of range 100 to {max} (shares.max_delay_ms)"),
            );
        }
        if let Some(d) = a.max_deliveries
            && !(1..=1000).contains(&d)
        {
            return bad("max_deliveries", format!("{d} is out of range 1 to 1000"));
        }
        if let Some(steps) = &a.backoff_ms {
            if steps.len() > MAX_BACKOFF_STEPS {
                return bad(
                    "backoff_ms",
                    format!("has {} steps, more than {MAX_BACKOFF_STEPS}", steps.len()),
                );
            }
            if let Some(d) = steps.iter().find(|d| **d > max) {
                return bad(
                    "backoff_ms",
                    format!("step {d} is longer than shares.max_delay_ms ({max})"),
                );
            }
        }
        if let Some(t) = &a.dead_letter_topic {
            crate::topics::validate_name(t).map_err(|e| e.at("settings.dead_letter_topic"))?;
        }
        Ok(())
    }

    /// Deletes a group and its state, durably.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`; `GROUP_NOT_EMPTY` while members hold records and not `force`.
    pub async fn delete(&self, id: &str, force: bool, now_ms: i64) -> Result<(), RpcError> {
        let group = self.get(id)?;
        let written = {
            let mut s = group.lock();
            if s.deleted {
                return Err(unknown(id));
            }
            let held: u64 = s.partitions.values().map(|p| p.counts().acquired).sum();
            let live = s.live_members(now_ms, s.rules().lock_ms);
            if !force && held > 0 {
                return Err(RpcError::new(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "share group {id:?} has {live} members holding {held} records; wait for them to leave, or force"
                    ),
                ));
            }
            s.deleted = true;
            self.store.queue(id, &Entry::Delete)
        };
        write(&self.groups).remove(id);
        group.changed.notify_waiters();
        written.wait().await
    }

    /// Expires the locks that ran out and notices delayed records that became available, in
    /// every group; forgets members not heard from for a lock duration. Returns the groups
    /// whose records changed.
    pub fn tick(&self, now_ms: i64) {
        let groups: Vec<Arc<ShareGroup>> = read(&self.groups).values().cloned().collect();
        for g in groups {
            let wake = {
                let mut s = g.lock();
                let rules = s.rules();
                let mut wake = false;
                let mut changes = Vec::new();
                for (tp, p) in &mut s.partitions {
                    let expired = p.expire(now_ms, &rules);
                    if expired > 0 {
                        metrics::share_lock_expiries(&g.id, &tp.0, expired);
                        wake = true;
                    }
                    if p.ready_ranges(now_ms).next().is_some() {
                        wake = true;
                    }
                    if let Some(e) = take_entry(tp, p) {
                        changes.push(e);
                    }
                }
                for e in &changes {
                    // The tick does not wait: the next tick's changes queue behind these.
                    drop(g.store.queue(&g.id, e));
                }
                let lock_ms = rules.lock_ms;
                s.members.retain(|_, seen| now_ms - *seen < lock_ms as i64);
                s.notice_dead_letters(&g.dead_letters);
                wake
            };
            if wake {
                g.changed.notify_waiters();
            }
        }
    }

    /// Every group's whole state as record values: a snapshot for compaction.
    fn snapshot(&self) -> Vec<Vec<u8>> {
        let groups: Vec<Arc<ShareGroup>> = read(&self.groups).values().cloned().collect();
        let mut out = Vec::new();
        for g in groups {
            let s = g.lock();
            if s.deleted {
                continue;
            }
            out.push(store::encode(&g.id, &Entry::Settings(s.own.clone())));
            for (tp, p) in &s.partitions {
                out.push(store::encode(
                    &g.id,
                    &Entry::Partition {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        start: p.start(),
                        ranges: p.durable_runs(),
                    },
                ));
            }
        }
        out
    }

    /// What every group has in flight and not yet delivered per partition, for the gauges;
    /// `end` gives a partition's log end offset.
    pub fn samples(&self, end: impl Fn(&Tp) -> Option<u64>) -> Vec<metrics::ShareSample> {
        let mut out = Vec::new();
        for g in self.all() {
            let s = g.lock();
            for (tp, p) in &s.partitions {
                let Some(end) = end(tp) else { continue };
                out.push(metrics::ShareSample {
                    group: g.id.clone(),
                    topic: tp.0.clone(),
                    partition: tp.1,
                    in_flight: p.counts().in_flight(),
                    lag: end.saturating_sub(p.next()),
                });
            }
        }
        out
    }

    /// Members allowed per group.
    pub fn max_members(&self) -> u32 {
        self.max_members
    }
}

impl GroupState {
    fn load(&mut self, entry: Entry) {
        match entry {
            Entry::Settings(s) => self.own = s,
            Entry::Changes {
                topic,
                partition,
                start,
                ranges,
            } => {
                let p = self
                    .partitions
                    .entry((topic, partition))
                    .or_insert_with(|| SharePartition::new(start.unwrap_or(0)));
                if let Some(start) = start {
                    p.load_start(start);
                }
                for r in &ranges {
                    p.load(r);
                }
            }
            Entry::Partition {
                topic,
                partition,
                start,
                ranges,
            } => {
                let mut p = SharePartition::new(start);
                for r in &ranges {
                    p.load(r);
                }
                self.partitions.insert((topic, partition), p);
            }
            Entry::Delete => {}
        }
    }

    fn rules(&self) -> Rules {
        self.effective
            .as_ref()
            .map(|e| e.rules.clone())
            .unwrap_or(Rules {
                lock_ms: 30_000,
                max_deliveries: 5,
                backoff_ms: Vec::new(),
                dead_letter: false,
            })
    }

    /// Wakes the dead-letter copier if records wait for it.
    fn notice_dead_letters(&self, copier: &Notify) {
        if self
            .partitions
            .values()
            .any(|p| p.counts().dead_lettering > 0)
        {
            copier.notify_one();
        }
    }

    fn live_members(&self, now_ms: i64, lock_ms: u64) -> usize {
        self.members
            .values()
            .filter(|seen| now_ms - **seen < lock_ms as i64)
            .count()
    }
}

impl ShareGroup {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }

    /// The settings in force.
    pub fn effective(&self) -> Effective {
        let s = self.lock();
        s.effective.clone().unwrap_or(Effective {
            rules: s.rules(),
            reset: Reset::Latest,
            dead_letter_topic: None,
        })
    }

    /// The group's own settings.
    pub fn own(&self) -> Settings {
        self.lock().own.clone()
    }

    /// Records `member` as heard from at `now_ms`, returning its interned id.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP` once the group is deleted; `LIMIT_EXCEEDED` past `max_members` members.
    pub fn touch(&self, member: &str, now_ms: i64, max_members: u32) -> Result<Arc<str>, RpcError> {
        let mut s = self.lock();
        if s.deleted {
            return Err(unknown(&self.id));
        }
        if let Some((id, seen)) = s
            .members
            .get_key_value(member)
            .map(|(k, v)| (k.clone(), *v))
        {
            if seen < now_ms {
                s.members.insert(id.clone(), now_ms);
            }
            return Ok(id);
        }
        if s.members.len() >= max_members as usize {
            metrics::limit_rejected("groups.max_members_per_group");
            return Err(RpcError::limit(format!(
                "member_id {member:?}: share group {:?} has groups.max_members_per_group ({max_members}) members",
                self.id
            )));
        }
        let id: Arc<str> = member.into();
        s.members.insert(id.clone(), now_ms);
        Ok(id)
    }

    /// What to read to acquire records of `tp`, starting the share partition at `initial()`
    /// the first time, skipping what retention deleted (`log_start`), and expiring locks.
    pub fn plan(
        &self,
        tp: &Tp,
        initial: impl FnOnce(Reset) -> u64,
        log_start: u64,
        log_end: u64,
        now_ms: i64,
        max_in_flight: u64,
    ) -> Plan {
        let mut s = self.lock();
        if s.deleted {
            return Plan::default();
        }
        let rules = s.rules();
        let reset = s.effective.as_ref().map_or(Reset::Latest, |e| e.reset);
        // A partition read for the first time starts where the group's start says; so does
        // one whose log is shorter than what the group has done (the topic was deleted and
        // created again: its records are new ones). Its first record replaces what the log
        // knew of it.
        let known = s.partitions.get(tp).map(|p| p.start() <= log_end);
        if known != Some(true) {
            let start = initial(reset);
            let mut fresh = SharePartition::new(start);
            fresh.take_changes();
            let entry = Entry::Partition {
                topic: tp.0.clone(),
                partition: tp.1,
                start,
                ranges: Vec::new(),
            };
            drop(self.store.queue(&self.id, &entry));
            s.partitions.insert(tp.clone(), fresh);
        }
        let Some(p) = s.partitions.get_mut(tp) else {
            return Plan::default();
        };
        p.skip_to(log_start);
        p.expire(now_ms, &rules);
        let plan = Plan {
            ready: p.ready_ranges(now_ms).collect(),
            fresh: (p.next() < log_end && p.fresh_room(max_in_flight) > 0).then_some(p.next()),
        };
        if let Some(e) = take_entry(tp, p) {
            drop(self.store.queue(&self.id, &e));
        }
        plan
    }

    /// Acquires for `member` at most `max` records of `[first, last]` of `tp` (which a read
    /// returned), locked for the group's lock duration from `now_ms`.
    pub fn acquire(
        &self,
        member: &Arc<str>,
        tp: &Tp,
        range: (u64, u64),
        max: u64,
        now_ms: i64,
        max_in_flight: u64,
    ) -> (Vec<Acquired>, i64) {
        let mut s = self.lock();
        let until_ms = now_ms.saturating_add(i64::try_from(s.rules().lock_ms).unwrap_or(i64::MAX));
        if s.deleted {
            return (Vec::new(), until_ms);
        }
        let Some(p) = s.partitions.get_mut(tp) else {
            return (Vec::new(), until_ms);
        };
        let got = p.acquire(
            member,
            range.0,
            range.1,
            max,
            now_ms,
            until_ms,
            max_in_flight,
        );
        (got, until_ms)
    }

    /// Applies acknowledgements of `member`, each on its own; returns each one's outcome and
    /// the wait for the durable write of them all.
    pub fn acknowledge(
        &self,
        member: &str,
        acks: &[AckEntry],
        now_ms: i64,
    ) -> (Vec<Result<(), RpcError>>, Written) {
        let mut s = self.lock();
        if s.deleted {
            return (
                acks.iter().map(|_| Err(unknown(&self.id))).collect(),
                Written::none(),
            );
        }
        let rules = s.rules();
        let mut touched: Vec<Tp> = Vec::new();
        let mut results = Vec::with_capacity(acks.len());
        let mut released = false;
        for a in acks {
            let outcome = match s.partitions.get_mut(&a.tp) {
                None => Err(state::NotHeld {
                    offset: a.first,
                    reason: "it was never acquired (the group has not read this partition)".into(),
                }),
                Some(p) => p.acknowledge(member, a.first, a.last, &a.ack, now_ms, &rules),
            };
            results.push(outcome.map_err(|e| not_held(&a.tp, &e)).map(|()| {
                if !touched.contains(&a.tp) {
                    touched.push(a.tp.clone());
                }
                released |= matches!(a.ack, Ack::Release { .. });
            }));
        }
        let mut written = Written::none();
        for tp in touched {
            if let Some(e) = s.partitions.get_mut(&tp).and_then(|p| take_entry(&tp, p)) {
                written = written.and(self.store.queue(&self.id, &e));
            }
        }
        s.notice_dead_letters(&self.dead_letters);
        drop(s);
        if released {
            self.changed.notify_waiters();
        }
        (results, written)
    }

    /// Gives back every record `member` holds and forgets it; returns how many, and the wait
    /// for the durable write.
    pub fn leave(&self, member: &str, now_ms: i64) -> (u64, Written) {
        let mut s = self.lock();
        let rules = s.rules();
        s.members.remove(member);
        let mut count = 0;
        let mut written = Written::none();
        let mut entries = Vec::new();
        for (tp, p) in &mut s.partitions {
            count += p.release_member(member, now_ms, &rules);
            if let Some(e) = take_entry(tp, p) {
                entries.push(e);
            }
        }
        for e in &entries {
            written = written.and(self.store.queue(&self.id, e));
        }
        s.notice_dead_letters(&self.dead_letters);
        drop(s);
        if count > 0 {
            self.changed.notify_waiters();
        }
        (count, written)
    }

    /// Work for the dead-letter copier: the group's dead-letter topic, and per partition the
    /// ranges waiting for it (about `max` records each). A group without a dead-letter topic
    /// (it was removed) archives them instead, and has none.
    pub fn dead_letter_work(
        &self,
        max: u64,
    ) -> (Option<String>, Vec<(Tp, Vec<DeadLetters>)>, Written) {
        let mut s = self.lock();
        let topic = s
            .effective
            .as_ref()
            .and_then(|e| e.dead_letter_topic.clone());
        let mut work = Vec::new();
        let mut written = Written::none();
        let mut entries = Vec::new();
        for (tp, p) in &mut s.partitions {
            if p.counts().dead_lettering == 0 {
                continue;
            }
            let ranges = p.dead_lettering(max);
            if topic.is_some() {
                work.push((tp.clone(), ranges));
                continue;
            }
            for r in &ranges {
                p.dead_lettered(r.first, r.last);
            }
            entries.extend(take_entry(tp, p));
        }
        for e in &entries {
            written = written.and(self.store.queue(&self.id, e));
        }
        (topic, work, written)
    }

    /// Notes where a copy of dead letters starts, before it is written.
    pub fn copying(&self, tp: &Tp, ranges: &[(u64, u64)], copy: Copy) -> Written {
        let mut s = self.lock();
        let Some(p) = s.partitions.get_mut(tp) else {
            return Written::none();
        };
        for (first, last) in ranges {
            p.copying(*first, *last, copy);
        }
        match take_entry(tp, p) {
            Some(e) => self.store.queue(&self.id, &e),
            None => Written::none(),
        }
    }

    /// Marks dead letters done (copied, or gone from the log); returns how many.
    pub fn dead_lettered(&self, tp: &Tp, ranges: &[(u64, u64)]) -> (u64, Written) {
        let mut s = self.lock();
        let Some(p) = s.partitions.get_mut(tp) else {
            return (0, Written::none());
        };
        let count = ranges.iter().map(|(a, b)| p.dead_lettered(*a, *b)).sum();
        let written = match take_entry(tp, p) {
            Some(e) => self.store.queue(&self.id, &e),
            None => Written::none(),
        };
        (count, written)
    }

    /// The share-partition start offset of every partition the group has read.
    pub fn starts(&self) -> BTreeMap<Tp, u64> {
        self.lock()
            .partitions
            .iter()
            .map(|(tp, p)| (tp.clone(), p.start()))
            .collect()
    }

    /// Moves partitions to new start offsets, forgetting what was in flight there: the
    /// records from the new start on are delivered as new. Returns the wait for the durable
    /// write.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP` once deleted; `GROUP_NOT_EMPTY` while members hold records, unless
    /// `force`.
    pub fn reset(&self, moves: &[(Tp, u64)], force: bool) -> Result<Written, RpcError> {
        let mut s = self.lock();
        if s.deleted {
            return Err(unknown(&self.id));
        }
        let held: u64 = s.partitions.values().map(|p| p.counts().acquired).sum();
        if held > 0 && !force {
            return Err(RpcError::new(
                ErrorCode::GroupNotEmpty,
                format!(
                    "share group {:?} has members holding {held} records; stop them first, or set force",
                    self.id
                ),
            ));
        }
        let mut written = Written::none();
        for (tp, start) in moves {
            let mut fresh = SharePartition::new(*start);
            fresh.take_changes();
            let entry = Entry::Partition {
                topic: tp.0.clone(),
                partition: tp.1,
                start: *start,
                ranges: Vec::new(),
            };
            written = written.and(self.store.queue(&self.id, &entry));
            s.partitions.insert(tp.clone(), fresh);
        }
        drop(s);
        self.changed.notify_waiters();
        Ok(written)
    }

    /// The earliest time a lock expires or a delayed record becomes available, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let s = self.lock();
        s.partitions
            .values()
            .filter_map(SharePartition::next_deadline)
            .min()
    }

    /// Every share partition's state, and the members heard from within a lock duration.
    pub fn describe(&self, now_ms: i64) -> (Vec<PartitionView>, Vec<String>) {
        let s = self.lock();
        let lock_ms = s.rules().lock_ms as i64;
        let mut members: Vec<String> = s
            .members
            .iter()
            .filter(|(_, seen)| now_ms - **seen < lock_ms)
            .map(|(m, _)| m.to_string())
            .collect();
        members.sort();
        let parts = s
            .partitions
            .iter()
            .map(|(tp, p)| PartitionView {
                tp: tp.clone(),
                start: p.start(),
                next: p.next(),
                counts: p.counts(),
            })
            .collect();
        (parts, members)
    }

    /// The topic of the dead-letter topic check when a member reads `topic`.
    ///
    /// # Errors
    /// `INVALID_REQUEST` when `topic` is the group's dead-letter topic.
    pub fn check_reads(&self, topic: &str) -> Result<(), RpcError> {
        let s = self.lock();
        if s.effective
            .as_ref()
            .and_then(|e| e.dead_letter_topic.as_deref())
            == Some(topic)
        {
            return Err(RpcError::invalid(format!(
                "topics: {topic:?} is the dead-letter topic of share group {:?}; a group does not read its own dead letters",
                self.id
            )));
        }
        Ok(())
    }
}

impl Alter {
    fn apply(&self, own: &mut Settings) {
        if let Some(l) = self.lock_ms {
            own.lock_ms = Some(l);
        }
        if let Some(d) = self.max_deliveries {
            own.max_deliveries = Some(d);
        }
        if let Some(b) = &self.backoff_ms {
            own.backoff_ms = Some(b.clone());
        }
        if self.clear_dead_letter_topic {
            own.dead_letter_topic = None;
        }
        if let Some(t) = &self.dead_letter_topic {
            own.dead_letter_topic = Some(t.clone());
        }
        if let Some(r) = self.reset {
            own.reset = Some(r);
        }
    }
}

/// A group's settings in force: its own, else the broker's.
pub fn effective(d: &ShareSettings, own: &Settings) -> Effective {
    Effective {
        rules: Rules {
            lock_ms: own.lock_ms.unwrap_or(d.lock_ms),
            max_deliveries: own
                .max_deliveries
                .unwrap_or_else(|| u16::try_from(d.max_deliveries).unwrap_or(u16::MAX)),
            backoff_ms: own
                .backoff_ms
                .clone()
                .unwrap_or_else(|| d.backoff_ms.clone()),
            dead_letter: own.dead_letter_topic.is_some(),
        },
        reset: own.reset.unwrap_or(match d.start {
            ShareStartSetting::Earliest => Reset::Earliest,
            ShareStartSetting::Latest => Reset::Latest,
        }),
        dead_letter_topic: own.dead_letter_topic.clone(),
    }
}

/// The partition's changes since the last call, as a record to write, if there are any.
fn take_entry(tp: &Tp, p: &mut SharePartition) -> Option<Entry> {
    let (ranges, start) = p.take_changes();
    (!ranges.is_empty() || start.is_some()).then(|| Entry::Changes {
        topic: tp.0.clone(),
        partition: tp.1,
        start,
        ranges,
    })
}

fn not_held(tp: &Tp, e: &state::NotHeld) -> RpcError {
    RpcError::new(
        ErrorCode::InvalidRecordState,
        format!(
            "record {}/{} offset {}: not held by this member: {}",
            tp.0, tp.1, e.offset, e.reason
        ),
    )
}

fn unknown(id: &str) -> RpcError {
    RpcError::new(
        ErrorCode::UnknownGroup,
        format!("share group {id:?} does not exist"),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
