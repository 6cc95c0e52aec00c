//! Share groups over the wire's plain values: acquiring records (`ShareFetch`), acknowledging
//! them, leaving, and the group's administration, over [`crate::shares`].
//!
//! An acquisition runs in three steps per partition, so that no lock is held across a read:
//! under the group's lock, *plan* (expire locks, list the ranges available now and where fresh
//! records start); without it, *read* the batches holding them; under the lock again,
//! *acquire* the records of what was read that are still available (another member may have
//! taken some meanwhile). Partitions are visited from a rotating start, so members reading
//! many partitions spread over them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::pb::{self, AckType, ShareStart};
use runnel_storage::batch::BatchHeader;
use tokio::sync::watch;

use super::consume::{Format, any_changed, storage_error};
use super::{Broker, capped};
use crate::clock::now_ms;
use crate::error::RpcError;
use crate::groups::{reset, validate_group_id};
use crate::partition::Partition;
use crate::quotas::{Caller, Quota};
use crate::shares::state::{Ack, Acquired};
use crate::shares::store::{MAX_REASON_BYTES, Reset, Settings, truncated};
use crate::shares::{AckEntry, Alter, ShareGroup};
use crate::tasks::blocking;

/// Longest member id, bytes.
const MAX_MEMBER_ID_BYTES: usize = 255;

/// Batch bytes read at a time while acquiring: at least one batch is read, and a read stops
/// once the records wanted are in it.
const READ_BYTES: usize = 256 << 10;

/// The shortest wait of a long poll for a lock or delay to run out, ms.
const MIN_WAKE_MS: u64 = 5;

/// Where partition visits start, advanced by every acquisition.
static ROTATION: AtomicUsize = AtomicUsize::new(0);

/// What one acquisition asks for.
struct Want {
    records: u64,
    /// Acquire at most `records`, splitting a batch if need be (else whole batches).
    record_limit: bool,
    bytes: usize,
    format: Format,
    decode_limit: usize,
}

/// What one partition gave an acquisition.
struct Taken {
    acquired: Vec<Acquired>,
    batches: Vec<Bytes>,
}

impl Broker {
    /// `ShareFetch`: applies the acknowledgements, then acquires records for the member,
    /// waiting up to `max_wait_ms` for some.
    ///
    /// # Errors
    /// `INVALID_REQUEST` / `INVALID_GROUP_ID` naming the field; `UNKNOWN_TOPIC`;
    /// `LIMIT_EXCEEDED`; a read's storage error.
    pub(crate) async fn share_fetch(
        &self,
        req: pb::ShareFetchRequest,
        caller: &Caller,
    ) -> Result<pb::ShareFetchResponse, RpcError> {
        self.check_running()?;
        let settings = self.shares.settings();
        validate_group_id("group_id", &req.group_id)?;
        check_member(&req.member_id)?;
        let format = Format::from_pb(req.format, "format")?;
        if req.max_records > settings.max_fetch_records {
            return Err(RpcError::limit(format!(
                "max_records {} exceeds shares.max_fetch_records ({})",
                req.max_records, settings.max_fetch_records
            )));
        }
        let limits = &self.config.limits;
        if req.max_wait_ms > limits.fetch_max_wait_ms {
            return Err(RpcError::invalid(format!(
                "max_wait_ms {} exceeds fetch_max_wait_ms ({})",
                req.max_wait_ms, limits.fetch_max_wait_ms
            )));
        }
        if req.max_records > 0 && req.topics.is_empty() {
            return Err(RpcError::invalid(
                "topics: at least one topic is required to acquire records (max_records > 0)",
            ));
        }
        let acks = acks(&req.acknowledgements, settings.max_acknowledgements)?;
        let group = self.shares.get_or_create(&req.group_id)?;
        let member = group.touch(&req.member_id, now_ms(), self.shares.max_members())?;
        let acknowledgements = self.apply_acks(&group, &member, &acks).await?;
        let mut response = pb::ShareFetchResponse {
            acknowledgements,
            ..pb::ShareFetchResponse::default()
        };
        if req.max_records == 0 {
            return Ok(response);
        }
        let partitions = self.share_partitions(&group, &req.topics)?;
        let want = Want {
            records: u64::from(req.max_records),
            record_limit: req.record_limit,
            bytes: capped(req.max_bytes, self.config.limits.fetch_max_bytes),
            format,
            decode_limit: self.config.limits.fetch_max_bytes as usize,
        };
        let max_wait = req.max_wait_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(max_wait.into());
        let mut watches: Vec<watch::Receiver<u64>> =
            partitions.iter().map(|p| p.watch_end()).collect();
        loop {
            for w in &mut watches {
                w.borrow_and_update();
            }
            // Registered before looking, so a release between the look and the wait wakes it.
            let changed = group.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (parts, lock_expires_ms, bytes) =
                self.acquire(&group, &member, &partitions, &want).await?;
            let done = !parts.is_empty()
                || max_wait == 0
                || tokio::time::Instant::now() >= deadline
                || self.shutdown.is_triggered();
            if done {
                self.quotas
                    .pace(caller, Quota::FetchBytes, bytes as u64)
                    .await;
                response.partitions = parts;
                response.lock_expires_ms = lock_expires_ms;
                return Ok(response);
            }
            // A deadline just past (a partition this member does not read, which the tick
            // has yet to visit) waits a little rather than spinning.
            let wake = group.next_deadline().map_or(deadline, |at| {
                let wait = u64::try_from(at - now_ms()).unwrap_or(0).max(MIN_WAKE_MS);
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(wait))
            });
            tokio::select! {
                () = &mut changed => {}
                () = any_changed(&mut watches) => {}
                () = tokio::time::sleep_until(wake) => {}
                () = self.shutdown.wait() => {}
            }
        }
    }

    /// `ShareAcknowledge`.
    ///
    /// # Errors
    /// `INVALID_REQUEST` naming the field; `UNKNOWN_GROUP`; the write's error. A record the
    /// member does not hold is reported in its acknowledgement's result.
    pub(crate) async fn share_acknowledge(
        &self,
        req: pb::ShareAcknowledgeRequest,
    ) -> Result<pb::ShareAcknowledgeResponse, RpcError> {
        self.check_running()?;
        validate_group_id("group_id", &req.group_id)?;
        check_member(&req.member_id)?;
        if req.acknowledgements.is_empty() {
            return Err(RpcError::invalid(
                "acknowledgements: at least one is required",
            ));
        }
        let acks = acks(
            &req.acknowledgements,
            self.shares.settings().max_acknowledgements,
        )?;
        let group = self.shares.get(&req.group_id)?;
        let member = group.touch(&req.member_id, now_ms(), self.shares.max_members())?;
        let results = self.apply_acks(&group, &member, &acks).await?;
        Ok(pb::ShareAcknowledgeResponse { results })
    }

    /// `LeaveShareGroup`.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`; the write's error.
    pub(crate) async fn leave_share_group(
        &self,
        req: &pb::LeaveShareGroupRequest,
    ) -> Result<pb::LeaveShareGroupResponse, RpcError> {
        validate_group_id("group_id", &req.group_id)?;
        check_member(&req.member_id)?;
        let group = self.shares.get(&req.group_id)?;
        let (released, written) = group.leave(&req.member_id, now_ms());
        written.wait().await?;
        Ok(pb::LeaveShareGroupResponse { released })
    }

    /// `AlterShareGroup`.
    ///
    /// # Errors
    /// `INVALID_CONFIG` naming the field and the limit; `UNKNOWN_TOPIC` for a dead-letter
    /// topic that does not exist; the write's error.
    pub(crate) async fn alter_share_group(
        &self,
        req: pb::AlterShareGroupRequest,
    ) -> Result<pb::AlterShareGroupResponse, RpcError> {
        self.check_running()?;
        validate_group_id("group_id", &req.group_id)?;
        let s = req.settings.unwrap_or_default();
        let alter = Alter {
            lock_ms: s.lock_ms,
            max_deliveries: s
                .max_deliveries
                .map(|d| u16::try_from(d).unwrap_or(u16::MAX)),
            backoff_ms: (req.set_backoff || !s.backoff_ms.is_empty()).then_some(s.backoff_ms),
            dead_letter_topic: s.dead_letter_topic,
            clear_dead_letter_topic: req.clear_dead_letter_topic,
            reset: match ShareStart::try_from(s.start) {
                Ok(ShareStart::Unspecified) => None,
                Ok(ShareStart::Earliest) => Some(Reset::Earliest),
                Ok(ShareStart::Latest) => Some(Reset::Latest),
                Err(_) => {
                    return Err(RpcError::invalid(format!(
                        "settings.start {} is not a known value (1 SHARE_START_EARLIEST, 2 SHARE_START_LATEST)",
                        s.start
                    )));
                }
            },
        };
        let own = self
            .shares
            .alter(&req.group_id, alter, |t| self.topics.get(t).is_ok())
            .await?;
        Ok(pb::AlterShareGroupResponse {
            settings: Some(settings_pb(&own)),
        })
    }

    /// `DescribeShareGroup`.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`.
    pub(crate) fn describe_share_group(
        &self,
        id: &str,
    ) -> Result<pb::DescribeShareGroupResponse, RpcError> {
        validate_group_id("group_id", id)?;
        let group = self.shares.get(id)?;
        let e = group.effective();
        let (parts, members) = group.describe(now_ms());
        let partitions = parts
            .into_iter()
            .map(|v| {
                let end = self
                    .topics
                    .get(&v.tp.0)
                    .and_then(|t| t.partition(v.tp.1))
                    .map_or(v.next, |p| p.end_offset());
                pb::SharePartitionState {
                    topic: v.tp.0,
                    partition: v.tp.1,
                    start_offset: v.start,
                    next_offset: v.next,
                    acquired: v.counts.acquired,
                    available: v.counts.available,
                    dead_lettering: v.counts.dead_lettering,
                    lag: end.saturating_sub(v.next),
                }
            })
            .collect();
        Ok(pb::DescribeShareGroupResponse {
            group_id: id.to_owned(),
            settings: Some(settings_pb(&group.own())),
            effective: Some(pb::ShareGroupSettings {
                lock_ms: Some(e.rules.lock_ms),
                max_deliveries: Some(u32::from(e.rules.max_deliveries)),
                backoff_ms: e.rules.backoff_ms.clone(),
                dead_letter_topic: e.dead_letter_topic.clone(),
                start: start_pb(e.reset).into(),
            }),
            members,
            partitions,
        })
    }

    /// `ListShareGroups`: every share group id, sorted.
    pub(crate) fn list_share_groups(&self) -> pb::ListShareGroupsResponse {
        pb::ListShareGroupsResponse {
            group_ids: self.shares.list(),
        }
    }

    /// `DeleteShareGroup`.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`; `GROUP_NOT_EMPTY`; the write's error.
    pub(crate) async fn delete_share_group(
        &self,
        req: &pb::DeleteShareGroupRequest,
    ) -> Result<pb::DeleteShareGroupResponse, RpcError> {
        self.check_running()?;
        validate_group_id("group_id", &req.group_id)?;
        self.shares
            .delete(&req.group_id, req.force, now_ms())
            .await?;
        Ok(pb::DeleteShareGroupResponse {})
    }

    /// `ResetShareGroupOffsets`: moves share-partition start offsets (creating the group).
    ///
    /// # Errors
    /// As consumer groups' `ResetOffsets`: `INVALID_GROUP_ID`, `INVALID_REQUEST`,
    /// `UNKNOWN_TOPIC`, `UNKNOWN_PARTITION`, `GROUP_NOT_EMPTY` (members hold records, without
    /// `force`), a storage error reading a timestamp, the write's error.
    pub(crate) async fn reset_share_group_offsets(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<pb::ResetOffsetsResponse, RpcError> {
        self.check_running()?;
        validate_group_id("group", &req.group)?;
        let target = reset::target(req.target)?;
        let group = self.shares.get_or_create(&req.group)?;
        let starts = group.starts();
        let selected = reset::partitions(&self.topics, &req.topics, req.all_topics, starts.keys())?;
        let plan =
            blocking(move || reset::plan(selected, target, |tp| starts.get(tp).copied())).await?;
        if !req.dry_run && !plan.is_empty() {
            let moves: Vec<(crate::groups::assignor::Tp, u64)> =
                plan.iter().map(|m| (m.tp.clone(), m.new)).collect();
            group.reset(&moves, req.force)?.wait().await?;
            tracing::info!(group = %req.group, force = req.force, "reset share group offsets");
        }
        Ok(pb::ResetOffsetsResponse {
            resets: reset::resets(&plan),
            dry_run: req.dry_run,
        })
    }

    /// Applies acknowledgements and waits until they are durable; counts them.
    async fn apply_acks(
        &self,
        group: &ShareGroup,
        member: &str,
        acks: &[AckEntry],
    ) -> Result<Vec<pb::AcknowledgementResult>, RpcError> {
        if acks.is_empty() {
            return Ok(Vec::new());
        }
        let (results, written) = group.acknowledge(member, acks, now_ms());
        written.wait().await?;
        Ok(results
            .into_iter()
            .zip(acks)
            .map(|(r, a)| {
                if r.is_ok() {
                    crate::metrics::share_acknowledged(
                        &group.id,
                        &a.tp.0,
                        ack_kind(&a.ack),
                        a.last - a.first + 1,
                    );
                }
                pb::AcknowledgementResult {
                    error: r.err().map(|e| e.to_pb()),
                }
            })
            .collect())
    }

    /// Every partition of the topics named, checking that none is the group's dead-letter
    /// topic.
    fn share_partitions(
        &self,
        group: &ShareGroup,
        topics: &[String],
    ) -> Result<Vec<Arc<Partition>>, RpcError> {
        let mut out = Vec::new();
        for (i, name) in topics.iter().enumerate() {
            if topics[..i].contains(name) {
                return Err(RpcError::invalid(format!(
                    "topics[{i}]: {name:?} is listed twice"
                )));
            }
            group.check_reads(name)?;
            let topic = self.topics.get(name)?;
            out.extend(topic.partitions().iter().cloned());
        }
        Ok(out)
    }

    /// One pass over the partitions: acquires what is available now. Returns the records
    /// per partition, when their locks expire, and the batch bytes taken.
    async fn acquire(
        &self,
        group: &Arc<ShareGroup>,
        member: &Arc<str>,
        partitions: &[Arc<Partition>],
        want: &Want,
    ) -> Result<(Vec<pb::SharePartitionRecords>, i64, usize), RpcError> {
        let max_in_flight = u64::from(self.shares.settings().max_in_flight_records);
        let first = ROTATION.fetch_add(1, Ordering::Relaxed);
        let mut records_left = want.records;
        let mut bytes_left = want.bytes;
        let mut out = Vec::new();
        let mut until = 0;
        for i in 0..partitions.len() {
            if records_left == 0 || bytes_left == 0 {
                break;
            }
            let p = &partitions[(first + i) % partitions.len()];
            let tp = (p.topic.to_string(), p.index);
            let now = now_ms();
            let plan = group.plan(
                &tp,
                |reset| match reset {
                    Reset::Earliest => p.start_offset(),
                    Reset::Latest => p.end_offset(),
                },
                p.start_offset(),
                p.end_offset(),
                now,
                max_in_flight,
            );
            let positions = plan
                .ready
                .into_iter()
                .chain(plan.fresh.map(|next| (next, u64::MAX)));
            let mut taken = Taken {
                acquired: Vec::new(),
                batches: Vec::new(),
            };
            for (from, to) in positions {
                let mut at = from;
                // A read returns at least one whole batch: once something is taken, read on
                // only while a largest batch still fits, so the answer stays within max_bytes.
                let fits = |left: usize, taken: bool| !taken || left >= p.max_batch_bytes();
                while at <= to
                    && records_left > 0
                    && bytes_left > 0
                    && fits(bytes_left, records_left < want.records)
                {
                    let reader = p.clone();
                    let room = bytes_left.min(READ_BYTES);
                    let read = blocking(move || {
                        reader
                            .read(at, room)
                            .map_err(|e| storage_error(&e, &reader))
                    })
                    .await?;
                    if read.batches.is_empty() {
                        break;
                    }
                    let (upto, max) = limit(&read.batches, at, to, records_left, want.record_limit);
                    let (got, lock_until) =
                        group.acquire(member, &tp, (at, upto), max, now_ms(), max_in_flight);
                    until = lock_until;
                    at = read.next_offset;
                    for batch in read.batches {
                        if overlaps(&batch, &got) {
                            bytes_left = bytes_left.saturating_sub(batch.len());
                            taken.batches.push(batch);
                        }
                    }
                    let count: u64 = got.iter().map(|a| a.last - a.first + 1).sum();
                    records_left = records_left.saturating_sub(count);
                    taken.acquired.extend(got);
                }
            }
            if !taken.acquired.is_empty() {
                let redelivered = taken
                    .acquired
                    .iter()
                    .filter(|a| a.deliveries > 1)
                    .map(|a| a.last - a.first + 1)
                    .sum();
                let count = taken.acquired.iter().map(|a| a.last - a.first + 1).sum();
                crate::metrics::share_acquired(&group.id, &tp.0, count, redelivered);
                out.push(self.share_records(p, taken, want)?);
            }
        }
        Ok((out, until, want.bytes - bytes_left))
    }

    /// One partition's part of the answer, in the format asked for.
    fn share_records(
        &self,
        p: &Partition,
        mut taken: Taken,
        want: &Want,
    ) -> Result<pb::SharePartitionRecords, RpcError> {
        taken.acquired.sort_by_key(|a| a.first);
        let acquired: Vec<pb::AcquiredRange> = taken
            .acquired
            .iter()
            .map(|a| pb::AcquiredRange {
                first_offset: a.first,
                last_offset: a.last,
                delivery_count: u32::from(a.deliveries),
            })
            .collect();
        let mut out = pb::SharePartitionRecords {
            topic: p.topic.to_string(),
            partition: p.index,
            acquired,
            ..pb::SharePartitionRecords::default()
        };
        match want.format {
            Format::Batches => {
                taken.batches.sort_by_key(base_offset);
                taken.batches.dedup_by_key(|b| base_offset(b));
                out.batches = taken.batches;
            }
            Format::Records => {
                for batch in &taken.batches {
                    let records = super::records::decode(
                        std::slice::from_ref(batch),
                        0,
                        want.decode_limit,
                        (&p.topic, p.index),
                    )?;
                    for r in records {
                        if let Some(a) = taken
                            .acquired
                            .iter()
                            .find(|a| (a.first..=a.last).contains(&r.offset))
                        {
                            out.delivery_counts.push(u32::from(a.deliveries));
                            out.records.push(r);
                        }
                    }
                }
                let mut paired: Vec<(pb::Record, u32)> = std::mem::take(&mut out.records)
                    .into_iter()
                    .zip(std::mem::take(&mut out.delivery_counts))
                    .collect();
                paired.sort_by_key(|(r, _)| r.offset);
                paired.dedup_by_key(|(r, _)| r.offset);
                (out.records, out.delivery_counts) = paired.into_iter().unzip();
            }
        }
        Ok(out)
    }
}

/// Checks a member id: 1 to 255 bytes.
fn check_member(id: &str) -> Result<(), RpcError> {
    if id.is_empty() || id.len() > MAX_MEMBER_ID_BYTES {
        return Err(RpcError::invalid(format!(
            "member_id must be 1 to {MAX_MEMBER_ID_BYTES} bytes, not {}",
            id.len()
        )));
    }
    Ok(())
}

/// The acknowledgements of a request, checked: at most `max`.
fn acks(list: &[pb::Acknowledgement], max: u32) -> Result<Vec<AckEntry>, RpcError> {
    if list.len() > max as usize {
        crate::metrics::limit_rejected("shares.max_acknowledgements");
        return Err(RpcError::limit(format!(
            "acknowledgements: {} entries exceed shares.max_acknowledgements ({max})",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |name: &str| format!("acknowledgements[{i}].{name}");
            if a.last_offset < a.first_offset {
                return Err(RpcError::invalid(format!(
                    "{} {} is before first_offset {}",
                    field("last_offset"),
                    a.last_offset,
                    a.first_offset
                )));
            }
            let ack = match AckType::try_from(a.r#type) {
                Ok(AckType::Accept) => Ack::Accept,
                Ok(AckType::Release) => Ack::Release {
                    delay_ms: a.delay_ms,
                },
                Ok(AckType::Reject) => Ack::Reject {
                    reason: truncated(&a.error, MAX_REASON_BYTES).into(),
                },
                Ok(AckType::Renew) => Ack::Renew,
                Ok(AckType::Unspecified) | Err(_) => {
                    return Err(RpcError::invalid(format!(
                        "{} {} is not a known value (1 ACCEPT, 2 RELEASE, 3 REJECT, 4 RENEW)",
                        field("type"),
                        a.r#type
                    )));
                }
            };
            if a.delay_ms.is_some() && !matches!(ack, Ack::Release { .. }) {
                return Err(RpcError::invalid(format!(
                    "{}: only for ACK_TYPE_RELEASE",
                    field("delay_ms")
                )));
            }
            Ok(AckEntry {
                tp: (a.topic.clone(), a.partition),
                first: a.first_offset,
                last: a.last_offset,
                ack,
            })
        })
        .collect()
}

fn ack_kind(ack: &Ack) -> &'static str {
    match ack {
        Ack::Accept => "accept",
        Ack::Release { .. } => "release",
        Ack::Reject { .. } => "reject",
        Ack::Renew => "renew",
    }
}

fn start_pb(reset: Reset) -> ShareStart {
    match reset {
        Reset::Earliest => ShareStart::Earliest,
        Reset::Latest => ShareStart::Latest,
    }
}

fn settings_pb(s: &Settings) -> pb::ShareGroupSettings {
    pb::ShareGroupSettings {
        lock_ms: s.lock_ms,
        max_deliveries: s.max_deliveries.map(u32::from),
        backoff_ms: s.backoff_ms.clone().unwrap_or_default(),
        dead_letter_topic: s.dead_letter_topic.clone(),
        start: s.reset.map_or(ShareStart::Unspecified, start_pb).into(),
    }
}

fn base_offset(batch: &Bytes) -> u64 {
    BatchHeader::decode(batch).map_or(0, |h| h.base_offset)
}

/// What to acquire of a read from `at` (up to `to`) with `left` records wanted: the last
/// offset and the most records. Unless `record_limit`, batches are not split: the limit
/// extends to the end of the batch holding the last record wanted, as Kafka's
/// `batch_optimized` acquisition does, so that members do not read the same batch twice.
fn limit(batches: &[Bytes], at: u64, to: u64, left: u64, record_limit: bool) -> (u64, u64) {
    let last_read = batches
        .last()
        .and_then(|b| BatchHeader::decode(b).ok())
        .map_or(at, |h| h.base_offset + u64::from(h.last_offset_delta));
    let upto = to.min(last_read);
    if record_limit {
        return (upto, left);
    }
    let cut = at.saturating_add(left.saturating_sub(1));
    let holding = batches.iter().find_map(|b| {
        let h = BatchHeader::decode(b).ok()?;
        let last = h.base_offset + u64::from(h.last_offset_delta);
        (h.base_offset <= cut && cut <= last).then_some(last)
    });
    match holding {
        Some(end) => (upto.min(end), u64::MAX),
        None => (upto, left),
    }
}

/// True if the batch holds a record of one of the ranges.
fn overlaps(batch: &Bytes, ranges: &[Acquired]) -> bool {
    let Ok(h) = BatchHeader::decode(batch) else {
        return false;
    };
    let last = h.base_offset + u64::from(h.last_offset_delta);
    ranges
        .iter()
        .any(|a| a.first <= last && a.last >= h.base_offset)
}
