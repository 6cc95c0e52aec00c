//! Share groups (queues over topics): the [`ShareConsumer`], the share groups' administration
//! on [`Admin`](crate::Admin), and dead letters ([`DeadLetter`]).
//!
//! In a share group every member reads every partition of the topics; the broker hands each
//! record to one member at a time under an acquisition lock, and the member acknowledges each
//! record on its own: **accept** (done), **release** (deliver it again, at once, after a
//! delay, or after the group's backoff), **reject** (copy it to the group's dead-letter topic)
//! or **renew** (extend the lock). A record whose lock expires is delivered again; past the
//! group's `max_deliveries` it is dead-lettered. Unlike a consumer group, there is no
//! partition assignment and no offset to commit: add members to go faster, whatever the
//! partition count.
//!
//! [`ShareConsumer::poll`] sends the acknowledgements queued since the previous poll on the
//! same `ShareFetch` that acquires the next records (one round trip), reads them as the
//! stored batches and decodes them here, keeping only the records acquired. With
//! [`AckMode::Auto`], every record of a poll that the application did not acknowledge by the
//! next poll (or [`ShareConsumer::commit`], or [`ShareConsumer::close`]) is accepted, as
//! Kafka's implicit acknowledgement does; with [`AckMode::Manual`], a record left
//! unacknowledged stays the member's until its lock expires.
//!
//! An acknowledgement the broker refuses (the record's lock expired and another member holds
//! it, it was acknowledged already...) is never dropped silently: the call that carried it
//! fails with [`ClientError::Acknowledgement`], one [`AckFailure`] per refused record, and a
//! poll whose acknowledgements failed keeps the records it acquired for the next poll.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use runnel_client::{AckMode, Client, ShareConsumerConfig};
//!
//! # async fn work(value: Option<&str>) -> Result<(), String> { Ok(()) }
//! # async fn example() -> Result<(), runnel_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7171").await?;
//! let mut jobs = client.share_consumer(ShareConsumerConfig {
//!     ack_mode: AckMode::Manual,
//!     ..ShareConsumerConfig::new("workers", ["jobs"])
//! })?;
//! loop {
//!     // Sends the acknowledgements below with the next acquisition.
//!     let records = jobs.poll().await?;
//!     for record in &records {
//!         match work(record.value_str()).await {
//!             Ok(()) => jobs.accept(record),
//!             // Try again in a minute; after max_deliveries it is dead-lettered.
//!             Err(_) if record.delivery_count < 3 => {
//!                 jobs.release_after(record, Duration::from_secs(60))
//!             }
//!             Err(why) => jobs.reject(record, why),
//!         }
//!     }
//!     if records.is_empty() {
//!         break;
//!     }
//! }
//! // Sends what is queued, then gives back anything still held.
//! jobs.close().await?;
//! # Ok(()) }
//! ```

mod acks;
mod dead_letter;
mod groups;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use runnel_proto::pb::{self, share_service_client::ShareServiceClient};

use crate::connection::{Connection, Transport, framed_call, one_message};
use crate::consumer::{TopicPartition, decode_batches};
use crate::error::{ClientError, ErrorCode, Result};
use crate::record::ConsumerRecord;
use acks::{AckRange, Delivered, PendingAcks};

pub use acks::{AckFailure, AckKind};
pub use dead_letter::{
    DeadLetter, dead_letter, dead_letter_headers, dead_letter_record, read_dead_letters,
    replay_dead_letters,
};
pub use groups::{
    AlterShareGroup, ShareGroupDescription, ShareGroupSettings, SharePartitionState, ShareStart,
};

/// The HTTP/2 path of `runnel.v1.ShareService/ShareFetch`.
const SHARE_FETCH: &str = "/runnel.v1.ShareService/ShareFetch";

/// The longest member id the broker accepts, in bytes.
const MAX_MEMBER_ID_BYTES: usize = 255;

/// How often a poll without acknowledgements is tried again after a transport error (it only
/// acquires, so trying again is safe).
const POLL_RETRIES: u32 = 3;

/// How records a poll returned are acknowledged when the application says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Implicit: every record a poll returned that the application did not acknowledge by
    /// the next poll, [`ShareConsumer::commit`] or [`ShareConsumer::close`] is accepted
    /// (processing a poll's records and polling again means they are done, as in a Kafka
    /// share consumer without explicit acknowledgement).
    #[default]
    Auto,
    /// Explicit: only what the application acknowledges is; a record it leaves alone stays
    /// the member's until its lock expires (or [`ShareConsumer::close`]), then is delivered
    /// again.
    Manual,
}

/// The share consumer's settings.
#[derive(Debug, Clone)]
pub struct ShareConsumerConfig {
    /// The share group (topic naming rules). It exists from its first member's poll.
    pub group: String,
    /// The topics to read: every partition of each.
    pub topics: Vec<String>,
    /// The member id, unique within the group; `None` picks a random one (32 hex digits).
    pub member_id: Option<String>,
    /// The most records one poll acquires (at most the broker's `shares.max_fetch_records`).
    pub max_records: u32,
    /// The most batch bytes one poll returns; 0 for the broker's `fetch_max_bytes`.
    pub max_bytes: u32,
    /// The longest a poll waits for records (a long poll; at most the broker's
    /// `fetch_max_wait_ms`). Zero answers at once.
    pub max_wait: Duration,
    /// Implicit or explicit acknowledgement.
    pub ack_mode: AckMode,
    /// The largest decompressed records section accepted, in bytes.
    pub max_decompressed_bytes: usize,
}

impl ShareConsumerConfig {
    /// The default settings for a member of `group` reading `topics`: 500 records and 500 ms
    /// at most per poll, [`AckMode::Auto`].
    pub fn new<T: Into<String>>(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        Self {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            member_id: None,
            max_records: 500,
            max_bytes: 0,
            max_wait: Duration::from_millis(500),
            ack_mode: AckMode::Auto,
            max_decompressed_bytes: 64 << 20,
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(ClientError::Config(why));
        if self.group.is_empty() {
            return bad("group must not be empty".into());
        }
        if self.topics.is_empty() {
            return bad("topics: name at least one topic".into());
        }
        if self.max_records == 0 {
            return bad("max_records must be at least 1".into());
        }
        if u32::try_from(self.max_wait.as_millis()).is_err() {
            return bad(format!("max_wait {:?} is too long", self.max_wait));
        }
        if let Some(id) = &self.member_id
            && (id.is_empty() || id.len() > MAX_MEMBER_ID_BYTES)
        {
            return bad(format!(
                "member_id must be 1 to {MAX_MEMBER_ID_BYTES} bytes, not {}",
                id.len()
            ));
        }
        Ok(())
    }
}

/// A record acquired by a [`ShareConsumer`]: the record, and how many times it was delivered.
/// Dereferences to the [`ConsumerRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    /// The record.
    pub record: ConsumerRecord,
    /// How many times it was delivered, this time included (1 the first time).
    pub delivery_count: u32,
    /// When its lock expires (unless renewed), ms since the Unix epoch: acknowledge it
    /// before then, or it is delivered again and the acknowledgement refused.
    pub lock_expires_ms: i64,
}

impl Deref for ShareRecord {
    type Target = ConsumerRecord;

    fn deref(&self) -> &ConsumerRecord {
        &self.record
    }
}

impl ShareRecord {
    fn tp(&self) -> TopicPartition {
        TopicPartition {
            topic: self.record.topic.clone(),
            partition: self.record.partition,
        }
    }
}

/// A member of a share group: acquires records with [`ShareConsumer::poll`] and acknowledges
/// them one by one. See the [module documentation](self) for an example.
///
/// Dropping it without [`ShareConsumer::close`] sends nothing: what it holds returns to the
/// group when the locks expire, and queued acknowledgements are lost.
#[derive(Debug)]
pub struct ShareConsumer {
    conn: Arc<Connection>,
    client: ShareServiceClient<Transport>,
    config: ShareConsumerConfig,
    member_id: String,
    pending: PendingAcks,
    /// Under [`AckMode::Auto`], the records of the last poll.
    delivered: Delivered,
    /// Records acquired by a poll that failed because acknowledgements it carried were
    /// refused: the next poll returns them.
    held_back: Vec<ShareRecord>,
}

impl Drop for ShareConsumer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::warn!(group = %self.config.group, member = %self.member_id,
                "share consumer dropped without close: its queued acknowledgements are lost, and its records return to the group when their locks expire");
        }
    }
}

impl ShareConsumer {
    pub(crate) fn new(conn: Arc<Connection>, config: ShareConsumerConfig) -> Result<Self> {
        config.validate()?;
        let member_id = config
            .member_id
            .clone()
            .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
        let client = ShareServiceClient::new(conn.channel.clone())
            .max_decoding_message_size(conn.config.max_message_bytes);
        Ok(Self {
            conn,
            client,
            config,
            member_id,
            pending: PendingAcks::default(),
            delivered: Delivered::default(),
            held_back: Vec::new(),
        })
    }

    /// The member id this consumer acquires records as.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The settings.
    pub fn config(&self) -> &ShareConsumerConfig {
        &self.config
    }

    /// Acquires about `max_records` records, as [`ShareConsumer::poll_at_most`] does, but
    /// without splitting a stored batch: the records up to the end of the batch holding the
    /// last record allowed come too, so members do not read the same batch twice (Kafka's
    /// `batch_optimized` acquisition). The fast way to consume.
    ///
    /// # Errors
    /// As [`ShareConsumer::poll_at_most`].
    pub async fn poll(&mut self) -> Result<Vec<ShareRecord>> {
        self.poll_records(self.config.max_records, false).await
    }

    /// Sends the acknowledgements queued (under [`AckMode::Auto`], accepting first what the
    /// last poll returned and the application left alone), then acquires up to `max_records`
    /// records, waiting up to `max_wait` for some; returns them in offset order per
    /// partition, possibly none.
    ///
    /// # Errors
    /// - [`ClientError::Acknowledgement`] when the broker refused acknowledgements the poll
    ///   carried (the others were applied); the records it acquired are returned by the next
    ///   poll;
    /// - [`ClientError::Config`] for `max_records` 0;
    /// - the broker's errors (`UNKNOWN_TOPIC`, `INVALID_GROUP_ID`, `INVALID_REQUEST` for a
    ///   dead-letter topic of the group among the topics...);
    /// - transport errors: a poll without acknowledgements is tried again a few times; one
    ///   with acknowledgements is not, and their outcome is unknown (a record whose
    ///   acknowledgement was lost is delivered again once its lock expires);
    /// - [`ClientError::CorruptData`] for a batch that fails its check.
    pub async fn poll_at_most(&mut self, max_records: u32) -> Result<Vec<ShareRecord>> {
        self.poll_records(max_records, true).await
    }

    /// A poll of at most `max_records`, or of whole batches beyond it unless `record_limit`.
    async fn poll_records(
        &mut self,
        max_records: u32,
        record_limit: bool,
    ) -> Result<Vec<ShareRecord>> {
        if max_records == 0 {
            return Err(ClientError::Config("max_records must be at least 1".into()));
        }
        if !self.held_back.is_empty() {
            let records = std::mem::take(&mut self.held_back);
            self.track(&records);
            return Ok(records);
        }
        self.accept_implicitly();
        let acks = self.pending.take();
        let response = self.share_fetch(&acks, max_records, record_limit).await?;
        let refused = refusals(&acks, &response.acknowledgements)?;
        let decoded = self.decode(&response);
        let failures = self.narrow(refused).await?;
        match (decoded, failures.is_empty()) {
            (Ok(records), true) => {
                self.track(&records);
                Ok(records)
            }
            (Ok(records), false) => {
                self.held_back = records;
                Err(ClientError::Acknowledgement { failures })
            }
            (Err(e), true) => Err(e),
            (Err(e), false) => {
                tracing::warn!(error = %e, "share fetch: records acquired could not be decoded");
                Err(ClientError::Acknowledgement { failures })
            }
        }
    }

    /// Queues an accept of `record`: processed, never delivered again. Sent with the next
    /// poll, or by [`ShareConsumer::commit`].
    pub fn accept(&mut self, record: &ShareRecord) {
        self.queue(record, AckKind::Accept);
    }

    /// Queues a release of `record`: it is delivered again (to any member) after the group's
    /// backoff, or at once without one.
    pub fn release(&mut self, record: &ShareRecord) {
        self.queue(record, AckKind::Release { delay: None });
    }

    /// Queues a release of `record` to be delivered again no earlier than `delay` from when
    /// the broker applies it (at most the broker's `shares.max_delay_ms`).
    pub fn release_after(&mut self, record: &ShareRecord, delay: Duration) {
        self.queue(record, AckKind::Release { delay: Some(delay) });
    }

    /// Queues a reject of `record`: it cannot be processed; the broker copies it to the
    /// group's dead-letter topic with `error` as its `runnel.dlq.error` header (or archives
    /// it when the group has none), and never delivers it again.
    pub fn reject(&mut self, record: &ShareRecord, error: impl Into<String>) {
        self.queue(
            record,
            AckKind::Reject {
                error: error.into(),
            },
        );
    }

    /// Extends the lock of `record` by the group's lock duration from now, at once (a
    /// renewal waits for no poll). The record stays to be acknowledged.
    ///
    /// # Errors
    /// The broker's refusal as [`ClientError::Broker`] (`INVALID_RECORD_STATE` if the member
    /// no longer holds it: its lock expired already); transport errors.
    pub async fn renew(&mut self, record: &ShareRecord) -> Result<()> {
        let range = AckRange {
            tp: record.tp(),
            first: record.offset,
            last: record.offset,
            kind: AckKind::Renew,
        };
        let results = self.acknowledge(std::slice::from_ref(&range)).await?;
        match results.into_iter().next().flatten() {
            Some(e) => Err(ClientError::from_inline(&e)),
            None => Ok(()),
        }
    }

    /// Sends the acknowledgements queued now (under [`AckMode::Auto`], accepting first what
    /// the last poll returned and the application left alone), and waits until the broker
    /// has stored them.
    ///
    /// # Errors
    /// [`ClientError::Acknowledgement`] with one [`AckFailure`] per record refused (the
    /// others were applied); the broker's error for the call (`UNKNOWN_GROUP` once the group
    /// was deleted); transport errors (the acknowledgements' outcome is then unknown).
    pub async fn commit(&mut self) -> Result<()> {
        self.accept_implicitly();
        let acks = self.pending.take();
        if acks.is_empty() {
            return Ok(());
        }
        let results = self.acknowledge(&acks).await?;
        let refused = acks
            .into_iter()
            .zip(results)
            .filter_map(|(range, error)| Some((range, ClientError::from_inline(&error?))))
            .collect();
        let failures = self.narrow(refused).await?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ClientError::Acknowledgement { failures })
        }
    }

    /// Sends the acknowledgements queued (as [`ShareConsumer::commit`]), then leaves the
    /// group: every record the member still holds is given back at once (as if its lock
    /// expired), to be delivered to another member.
    ///
    /// # Errors
    /// The commit's error, else the leave's (the member is gone either way once its locks
    /// expire).
    pub async fn close(mut self) -> Result<()> {
        let committed = self.commit().await;
        let left = self.leave().await;
        committed.and(left)
    }

    /// `LeaveShareGroup`; a group deleted meanwhile holds nothing to give back.
    async fn leave(&mut self) -> Result<()> {
        self.held_back.clear();
        self.delivered.clear();
        let request = pb::LeaveShareGroupRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
        };
        match self.client.clone().leave_share_group(request).await {
            Ok(r) => {
                let released = r.into_inner().released;
                tracing::debug!(group = %self.config.group, member = %self.member_id, released, "left the share group");
                Ok(())
            }
            Err(status) => match self.conn.error(status) {
                e if e.code() == Some(ErrorCode::UnknownGroup) => Ok(()),
                e => Err(e),
            },
        }
    }

    fn queue(&mut self, record: &ShareRecord, kind: AckKind) {
        let tp = record.tp();
        if self.config.ack_mode == AckMode::Auto {
            self.delivered.settle(&tp, record.offset);
        }
        self.pending.push(&tp, record.offset, kind);
    }

    /// Under [`AckMode::Auto`], queues an accept for what the last poll returned and the
    /// application did not acknowledge.
    fn accept_implicitly(&mut self) {
        if self.config.ack_mode == AckMode::Auto {
            self.delivered.accept_unsettled(&mut self.pending);
        }
    }

    /// Under [`AckMode::Auto`], remembers the records handed to the application.
    fn track(&mut self, records: &[ShareRecord]) {
        if self.config.ack_mode != AckMode::Auto {
            return;
        }
        self.delivered.clear();
        for r in records {
            self.delivered.add(&r.tp(), r.offset);
        }
        self.delivered.sort();
    }

    /// `ShareFetch` with `acks`, its batches read from the HTTP/2 frames they arrived in.
    async fn share_fetch(
        &self,
        acks: &[AckRange],
        max_records: u32,
        record_limit: bool,
    ) -> Result<pb::ShareFetchResponse> {
        let request = pb::ShareFetchRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            topics: self.config.topics.clone(),
            acknowledgements: acks.iter().map(AckRange::to_pb).collect(),
            max_records,
            max_bytes: self.config.max_bytes,
            max_wait_ms: u32::try_from(self.config.max_wait.as_millis()).unwrap_or(u32::MAX),
            format: pb::RecordFormat::Batches.into(),
            record_limit,
        };
        let retries = if acks.is_empty() { POLL_RETRIES } else { 0 };
        let max = self.conn.config.max_message_bytes;
        self.conn
            .retry(retries, || {
                let mut channel = self.conn.channel.clone();
                let body = one_message(&request);
                async move {
                    let mut answers =
                        framed_call::<pb::ShareFetchResponse>(&mut channel, SHARE_FETCH, body, max)
                            .await?;
                    let response = match answers.next().await {
                        Some(answer) => answer?,
                        None => {
                            return Err(tonic::Status::internal(
                                "ShareFetch ended without a response",
                            ));
                        }
                    };
                    // The trailers follow the one message: OK ends the stream.
                    match answers.next().await {
                        Some(Err(status)) => Err(status),
                        _ => Ok(response),
                    }
                }
            })
            .await
    }

    /// `ShareAcknowledge` of `acks`: each one's inline error, in order.
    async fn acknowledge(&self, acks: &[AckRange]) -> Result<Vec<Option<pb::Error>>> {
        let request = pb::ShareAcknowledgeRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            acknowledgements: acks.iter().map(AckRange::to_pb).collect(),
        };
        let results = self
            .client
            .clone()
            .share_acknowledge(request)
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner()
            .results;
        if results.len() != acks.len() {
            return Err(ClientError::Protocol(format!(
                "ShareAcknowledge answered {} results for {} acknowledgements",
                results.len(),
                acks.len()
            )));
        }
        Ok(results.into_iter().map(|r| r.error).collect())
    }

    /// The failures of refused acknowledgements, each record on its own: a range refused
    /// because a record of it is not held had none of it applied, so its records are sent
    /// again one by one, and only those really not held fail.
    async fn narrow(&self, refused: Vec<(AckRange, ClientError)>) -> Result<Vec<AckFailure>> {
        let mut failures = Vec::new();
        let mut singles = Vec::new();
        for (range, error) in refused {
            if range.first < range.last && error.code() == Some(ErrorCode::InvalidRecordState) {
                singles.extend(range.singles());
            } else {
                failures.push(range.failed(error));
            }
        }
        if singles.is_empty() {
            return Ok(failures);
        }
        let results = self.acknowledge(&singles).await?;
        for (single, error) in singles.iter().zip(results) {
            if let Some(e) = error {
                failures.push(single.failed(ClientError::from_inline(&e)));
            }
        }
        Ok(failures)
    }

    /// The records of a `ShareFetch` answer that the member acquired.
    fn decode(&self, response: &pb::ShareFetchResponse) -> Result<Vec<ShareRecord>> {
        let mut out = Vec::new();
        for p in &response.partitions {
            let tp = TopicPartition::new(&p.topic, p.partition);
            let ranges = &p.acquired;
            let first = ranges.first().map_or(0, |r| r.first_offset);
            decode_batches(
                &tp,
                &p.batches,
                first,
                self.config.max_decompressed_bytes,
                |from, to| acquired_range(ranges, from, to).is_some(),
                |record| {
                    let delivery_count = acquired_range(ranges, record.offset, record.offset)
                        .map_or(1, |r| r.delivery_count);
                    out.push(ShareRecord {
                        record,
                        delivery_count,
                        lock_expires_ms: response.lock_expires_ms,
                    });
                },
            )?;
        }
        Ok(out)
    }
}

/// The first of `ranges` (sorted by offset) that holds an offset of `from..=to`.
fn acquired_range(ranges: &[pb::AcquiredRange], from: u64, to: u64) -> Option<&pb::AcquiredRange> {
    let i = ranges.partition_point(|r| r.last_offset < from);
    ranges.get(i).filter(|r| r.first_offset <= to)
}

/// The acknowledgements of `acks` that `results` (one per acknowledgement, in order) say
/// were refused, with why.
///
/// # Errors
/// [`ClientError::Protocol`] if the counts differ.
fn refusals(
    acks: &[AckRange],
    results: &[pb::AcknowledgementResult],
) -> Result<Vec<(AckRange, ClientError)>> {
    if results.len() != acks.len() {
        return Err(ClientError::Protocol(format!(
            "ShareFetch answered {} acknowledgement results for {} acknowledgements",
            results.len(),
            acks.len()
        )));
    }
    Ok(acks
        .iter()
        .zip(results)
        .filter_map(|(range, r)| {
            r.error
                .as_ref()
                .map(|e| (range.clone(), ClientError::from_inline(e)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64, delivery_count: u32) -> pb::AcquiredRange {
        pb::AcquiredRange {
            first_offset: first,
            last_offset: last,
            delivery_count,
        }
    }

    #[test]
    fn only_acquired_offsets_are_kept_with_their_delivery_count() {
        let ranges = [range(3, 5, 1), range(9, 9, 4), range(20, 30, 2)];
        assert!(acquired_range(&ranges, 0, 2).is_none());
        assert_eq!(
            acquired_range(&ranges, 0, 3).map(|r| r.first_offset),
            Some(3)
        );
        assert_eq!(
            acquired_range(&ranges, 6, 9).map(|r| r.delivery_count),
            Some(4)
        );
        assert!(acquired_range(&ranges, 6, 8).is_none());
        assert!(acquired_range(&ranges, 10, 19).is_none());
        assert_eq!(
            acquired_range(&ranges, 25, 25).map(|r| r.delivery_count),
            Some(2)
        );
        assert!(acquired_range(&ranges, 31, 100).is_none());
        assert!(acquired_range(&[], 0, 100).is_none());
    }

    #[test]
    fn config_validation() {
        let ok = ShareConsumerConfig::new("workers", ["jobs"]);
        assert!(ok.validate().is_ok());
        assert_eq!(ok.max_records, 500);
        assert_eq!(ok.max_wait, Duration::from_millis(500));
        for bad in [
            ShareConsumerConfig::new("", ["jobs"]),
            ShareConsumerConfig::new("workers", Vec::<String>::new()),
            ShareConsumerConfig {
                max_records: 0,
                ..ok.clone()
            },
            ShareConsumerConfig {
                member_id: Some(String::new()),
                ..ok.clone()
            },
            ShareConsumerConfig {
                member_id: Some("m".repeat(256)),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(ClientError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refused_acknowledgements_are_paired_with_their_errors() {
        let acks: Vec<AckRange> = (0..3)
            .map(|i| AckRange {
                tp: TopicPartition::new("t", 0),
                first: i,
                last: i,
                kind: AckKind::Accept,
            })
            .collect();
        let ok = pb::AcknowledgementResult { error: None };
        let refused = pb::AcknowledgementResult {
            error: Some(pb::Error {
                code: pb::ErrorCode::InvalidRecordState as i32,
                message: "t/0 offset 1: already acknowledged".into(),
            }),
        };
        let out = refusals(&acks, &[ok.clone(), refused, ok.clone()]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.first, 1);
        assert_eq!(out[0].1.code(), Some(ErrorCode::InvalidRecordState));
        assert!(matches!(
            refusals(&acks, &[ok]),
            Err(ClientError::Protocol(_))
        ));
    }
}
