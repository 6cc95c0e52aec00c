//! The share groups' administration on [`Admin`]: settings (lock, delivery limit, backoff,
//! dead-letter topic, where to start), descriptions, listing and deletion
//! (`runnel.v1.ShareService`).
//!
//! As for the rest of the admin API, reads are retried on transport errors and changes are
//! not.

use std::time::Duration;

use runnel_proto::pb::{self, share_service_client::ShareServiceClient};

use crate::admin::{Admin, READ_RETRIES};
use crate::connection::Transport;
use crate::error::Result;

/// Where a share group starts reading a partition it has not read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareStart {
    /// The log start: every stored record.
    Earliest,
    /// The log end: records produced from then on.
    Latest,
}

impl ShareStart {
    fn to_pb(self) -> pb::ShareStart {
        match self {
            ShareStart::Earliest => pb::ShareStart::Earliest,
            ShareStart::Latest => pb::ShareStart::Latest,
        }
    }

    fn from_pb(v: i32) -> Option<Self> {
        match pb::ShareStart::try_from(v).ok()? {
            pb::ShareStart::Earliest => Some(ShareStart::Earliest),
            pb::ShareStart::Latest => Some(ShareStart::Latest),
            pb::ShareStart::Unspecified => None,
        }
    }
}

/// A share group's settings. In a group's own settings an unset field follows the broker's
/// default (`[shares]`); in the settings in force every field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareGroupSettings {
    /// How long an acquisition lock lasts.
    pub lock: Option<Duration>,
    /// Deliveries after which a released or expired record is dead-lettered (or archived).
    pub max_deliveries: Option<u32>,
    /// Redelivery delays: the first after the first delivery, and so on, the last one for
    /// every later delivery. Empty: none of its own (in a group's own settings, the broker's
    /// default applies).
    pub backoff: Vec<Duration>,
    /// The dead-letter topic, if any.
    pub dead_letter_topic: Option<String>,
    /// Where the group starts reading a partition it has not read before.
    pub start: Option<ShareStart>,
}

impl ShareGroupSettings {
    fn from_pb(s: Option<pb::ShareGroupSettings>) -> Self {
        let s = s.unwrap_or_default();
        Self {
            lock: s.lock_ms.map(Duration::from_millis),
            max_deliveries: s.max_deliveries,
            backoff: s
                .backoff_ms
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            dead_letter_topic: s.dead_letter_topic,
            start: ShareStart::from_pb(s.start),
        }
    }
}

/// A change of a share group's settings ([`Admin::alter_share_group`]): the fields set are
/// changed, the others left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlterShareGroup {
    /// How long an acquisition lock lasts (whole milliseconds).
    pub lock: Option<Duration>,
    /// Deliveries after which a released or expired record is dead-lettered (or archived).
    pub max_deliveries: Option<u32>,
    /// The redelivery delays (whole milliseconds); `Some(vec![])` removes the backoff.
    pub backoff: Option<Vec<Duration>>,
    /// The dead-letter topic: an existing topic the group does not read.
    pub dead_letter_topic: Option<String>,
    /// Remove the dead-letter topic (rejected and exhausted records are then archived).
    pub clear_dead_letter_topic: bool,
    /// Where the group starts reading partitions it has not read before.
    pub start: Option<ShareStart>,
}

impl AlterShareGroup {
    fn to_pb(&self, group: &str) -> pb::AlterShareGroupRequest {
        pb::AlterShareGroupRequest {
            group_id: group.to_owned(),
            settings: Some(pb::ShareGroupSettings {
                lock_ms: self.lock.map(millis),
                max_deliveries: self.max_deliveries,
                backoff_ms: self.backoff.iter().flatten().copied().map(millis).collect(),
                dead_letter_topic: self.dead_letter_topic.clone(),
                start: self
                    .start
                    .map_or(pb::ShareStart::Unspecified, ShareStart::to_pb)
                    .into(),
            }),
            set_backoff: self.backoff.is_some(),
            clear_dead_letter_topic: self.clear_dead_letter_topic,
        }
    }
}

/// A share group's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroupDescription {
    /// The group id.
    pub group: String,
    /// The group's own settings (unset fields follow the broker's defaults).
    pub settings: ShareGroupSettings,
    /// The settings in force, defaults filled in.
    pub effective: ShareGroupSettings,
    /// The members seen within the lock duration, sorted.
    pub members: Vec<String>,
    /// Every partition the group has read.
    pub partitions: Vec<SharePartitionState>,
}

/// Where a share group is in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartitionState {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Every record below it is done (accepted, rejected or dead-lettered).
    pub start_offset: u64,
    /// The first record never delivered.
    pub next_offset: u64,
    /// Records acquired now.
    pub acquired: u64,
    /// Records waiting to be delivered again (at once or after a delay).
    pub available: u64,
    /// Records waiting to be copied to the dead-letter topic.
    pub dead_lettering: u64,
    /// Records not delivered yet: the log end offset minus `next_offset`.
    pub lag: u64,
}

impl Admin {
    /// Changes a share group's settings, creating the group if needed; returns the group's
    /// own settings now.
    ///
    /// # Errors
    /// `INVALID_CONFIG` naming the field and its limit (a dead-letter topic the group reads,
    /// a lock too short...), `UNKNOWN_TOPIC` for a dead-letter topic that does not exist,
    /// `INVALID_GROUP_ID`; transport errors.
    pub async fn alter_share_group(
        &self,
        group: &str,
        change: &AlterShareGroup,
    ) -> Result<ShareGroupSettings> {
        let r = self
            .shares()
            .alter_share_group(change.to_pb(group))
            .await
            .map_err(|s| self.conn().error(s))?
            .into_inner();
        Ok(ShareGroupSettings::from_pb(r.settings))
    }

    /// A share group's settings, members and partitions.
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`; transport errors (after retries).
    pub async fn describe_share_group(&self, group: &str) -> Result<ShareGroupDescription> {
        let client = self.shares();
        let r = self
            .conn()
            .retry(READ_RETRIES, || {
                let mut c = client.clone();
                let req = pb::DescribeShareGroupRequest {
                    group_id: group.to_owned(),
                };
                async move { c.describe_share_group(req).await }
            })
            .await?
            .into_inner();
        Ok(ShareGroupDescription {
            group: r.group_id,
            settings: ShareGroupSettings::from_pb(r.settings),
            effective: ShareGroupSettings::from_pb(r.effective),
            members: r.members,
            partitions: r
                .partitions
                .into_iter()
                .map(|p| SharePartitionState {
                    topic: p.topic,
                    partition: p.partition,
                    start_offset: p.start_offset,
                    next_offset: p.next_offset,
                    acquired: p.acquired,
                    available: p.available,
                    dead_lettering: p.dead_lettering,
                    lag: p.lag,
                })
                .collect(),
        })
    }

    /// Every share group the caller may describe, sorted by id.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_share_groups(&self) -> Result<Vec<String>> {
        let client = self.shares();
        let r = self
            .conn()
            .retry(READ_RETRIES, || {
                let mut c = client.clone();
                async move { c.list_share_groups(pb::ListShareGroupsRequest {}).await }
            })
            .await?
            .into_inner();
        Ok(r.group_ids)
    }

    /// Deletes a share group and its state. Refused while members hold records, unless
    /// `force` (they then get `UNKNOWN_GROUP`).
    ///
    /// # Errors
    /// `UNKNOWN_GROUP`, `GROUP_NOT_EMPTY`; transport errors.
    pub async fn delete_share_group(&self, group: &str, force: bool) -> Result<()> {
        self.shares()
            .delete_share_group(pb::DeleteShareGroupRequest {
                group_id: group.to_owned(),
                force,
            })
            .await
            .map_err(|s| self.conn().error(s))?;
        Ok(())
    }

    /// Moves a share group's start offsets, as [`Admin::reset_offsets`] moves a consumer
    /// group's committed offsets (`reset.group` is the share group; `all_topics` means every
    /// partition it has read; `ShiftBy` is relative to the start offset). What was in flight
    /// in a moved partition is forgotten. Returns the plan, applied unless a dry run.
    ///
    /// # Errors
    /// `GROUP_NOT_EMPTY` while members hold records (unless forced), `UNKNOWN_TOPIC`,
    /// `INVALID_REQUEST`; transport errors.
    pub async fn reset_share_group_offsets(
        &self,
        reset: crate::ResetOffsets,
    ) -> Result<Vec<crate::OffsetResetPlan>> {
        let r = self
            .shares()
            .reset_share_group_offsets(reset.into_pb())
            .await
            .map_err(|s| self.conn().error(s))?
            .into_inner();
        Ok(crate::OffsetResetPlan::from_pb(r))
    }

    fn shares(&self) -> ShareServiceClient<Transport> {
        ShareServiceClient::new(self.conn().channel.clone())
            .max_decoding_message_size(self.conn().config.max_message_bytes)
    }
}

/// A duration in whole milliseconds, as the protocol carries it.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_sets_only_what_it_names() {
        let wire = AlterShareGroup::default().to_pb("g");
        assert!(!wire.set_backoff && !wire.clear_dead_letter_topic);
        let s = wire.settings.unwrap();
        assert_eq!(s, pb::ShareGroupSettings::default());

        let wire = AlterShareGroup {
            lock: Some(Duration::from_secs(30)),
            max_deliveries: Some(5),
            backoff: Some(vec![Duration::from_secs(1), Duration::from_secs(600)]),
            dead_letter_topic: Some("jobs.dlq".into()),
            start: Some(ShareStart::Earliest),
            ..AlterShareGroup::default()
        }
        .to_pb("g");
        assert!(wire.set_backoff);
        let s = wire.settings.unwrap();
        assert_eq!(s.lock_ms, Some(30_000));
        assert_eq!(s.max_deliveries, Some(5));
        assert_eq!(s.backoff_ms, vec![1_000, 600_000]);
        assert_eq!(s.dead_letter_topic.as_deref(), Some("jobs.dlq"));
        assert_eq!(s.start, pb::ShareStart::Earliest as i32);

        // No backoff at all, and no dead-letter topic.
        let wire = AlterShareGroup {
            backoff: Some(Vec::new()),
            clear_dead_letter_topic: true,
            ..AlterShareGroup::default()
        }
        .to_pb("g");
        assert!(wire.set_backoff && wire.clear_dead_letter_topic);
        assert!(wire.settings.unwrap().backoff_ms.is_empty());
    }

    #[test]
    fn settings_from_the_wire() {
        let s = ShareGroupSettings::from_pb(Some(pb::ShareGroupSettings {
            lock_ms: Some(15_000),
            max_deliveries: None,
            backoff_ms: vec![500],
            dead_letter_topic: None,
            start: pb::ShareStart::Latest as i32,
        }));
        assert_eq!(s.lock, Some(Duration::from_secs(15)));
        assert_eq!(s.max_deliveries, None);
        assert_eq!(s.backoff, vec![Duration::from_millis(500)]);
        assert_eq!(s.start, Some(ShareStart::Latest));
        assert_eq!(
            ShareGroupSettings::from_pb(None),
            ShareGroupSettings::default()
        );
    }
}
