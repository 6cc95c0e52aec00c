//! Consumer groups as every front end reaches them: the group operations of
//! [`crate::groups::Groups`], behind the checks every call passes.
//!
//! A member's session (join, heartbeats, acknowledgements, leave) is driven by the front end's
//! stream through [`Broker::join_group`] and the [`Groups`] methods it returns to.

use runnel_proto::pb;

use super::Broker;
use crate::error::RpcError;
use crate::groups::Groups;
pub(crate) use crate::groups::Joined;
pub(crate) use crate::groups::coordinator::View;

impl Broker {
    /// The group coordinator, for a member's session once joined.
    pub(crate) fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Joins a member to its group (`host` is the client's address, for descriptions). The
    /// front end checks [`Broker::check_running`] when the member's session opens.
    ///
    /// # Errors
    /// The errors of [`Groups::join`].
    pub(crate) fn join_group(&self, join: pb::JoinGroup, host: String) -> Result<Joined, RpcError> {
        self.groups.join(join, host)
    }

    /// Commits offsets for a group's member (or for a group with no members).
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`Groups::commit`].
    pub(crate) async fn commit_offsets(
        &self,
        req: pb::CommitOffsetsRequest,
    ) -> Result<pb::CommitOffsetsResponse, RpcError> {
        self.check_running()?;
        self.groups.commit(req).await
    }

    /// A group's committed offsets.
    ///
    /// # Errors
    /// The errors of [`Groups::fetch_offsets`].
    pub(crate) fn fetch_offsets(
        &self,
        req: &pb::FetchOffsetsRequest,
    ) -> Result<pb::FetchOffsetsResponse, RpcError> {
        self.groups.fetch_offsets(req)
    }

    /// Every group.
    pub(crate) fn list_groups(&self) -> pb::ListGroupsResponse {
        self.groups.list()
    }

    /// A group's members, assignments, committed offsets and lag.
    ///
    /// # Errors
    /// The errors of [`Groups::describe`].
    pub(crate) fn describe_group(
        &self,
        group: &str,
    ) -> Result<pb::DescribeGroupResponse, RpcError> {
        self.groups.describe(group)
    }

    /// Deletes a group with no members, and its committed offsets.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`Groups::delete`].
    pub(crate) async fn delete_group(&self, group: &str) -> Result<(), RpcError> {
        self.check_running()?;
        self.groups.delete(group).await
    }

    /// Moves a group's committed offsets.
    ///
    /// # Errors
    /// `BROKER_SHUTTING_DOWN`, and the errors of [`Groups::reset`].
    pub(crate) async fn reset_offsets(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<pb::ResetOffsetsResponse, RpcError> {
        self.check_running()?;
        self.groups.reset(req).await
    }
}
