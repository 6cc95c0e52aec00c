//! `runnel.v1.ShareService`: share groups, over the operations of [`crate::broker::share`].

use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, share_service_server::ShareService};
use tonic::{Request, Response, Status};

use super::access::{authorized, read_topics};
use super::caller::caller;
use super::finish;
use crate::auth::acl::{Operation, Resource};
use crate::broker::Broker;

/// The share service.
#[derive(Debug, Clone)]
pub struct Share {
    broker: Arc<Broker>,
}

impl Share {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Share { broker }
    }
}

#[tonic::async_trait]
impl ShareService for Share {
    async fn share_fetch(
        &self,
        request: Request<pb::ShareFetchRequest>,
    ) -> Result<Response<pb::ShareFetchResponse>, Status> {
        let started = Instant::now();
        let caller = caller(request.extensions(), &self.broker.quotas);
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.share_fetch(req, &caller).await,
            Err(e) => Err(e),
        };
        finish("ShareFetch", started, result)
    }

    async fn share_acknowledge(
        &self,
        request: Request<pb::ShareAcknowledgeRequest>,
    ) -> Result<Response<pb::ShareAcknowledgeResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.share_acknowledge(req).await,
            Err(e) => Err(e),
        };
        finish("ShareAcknowledge", started, result)
    }

    async fn leave_share_group(
        &self,
        request: Request<pb::LeaveShareGroupRequest>,
    ) -> Result<Response<pb::LeaveShareGroupResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.leave_share_group(&req).await,
            Err(e) => Err(e),
        };
        finish("LeaveShareGroup", started, result)
    }

    async fn alter_share_group(
        &self,
        request: Request<pb::AlterShareGroupRequest>,
    ) -> Result<Response<pb::AlterShareGroupResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.alter_share_group(req).await,
            Err(e) => Err(e),
        };
        finish("AlterShareGroup", started, result)
    }

    async fn describe_share_group(
        &self,
        request: Request<pb::DescribeShareGroupRequest>,
    ) -> Result<Response<pb::DescribeShareGroupResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).and_then(|(access, req)| {
            let mut described = self.broker.describe_share_group(&req.group_id)?;
            described
                .partitions
                .retain(|p| access.may(Resource::Topic(&p.topic), Operation::Describe));
            Ok(described)
        });
        finish("DescribeShareGroup", started, result)
    }

    async fn list_share_groups(
        &self,
        request: Request<pb::ListShareGroupsRequest>,
    ) -> Result<Response<pb::ListShareGroupsResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|(access, _)| {
            let mut listed = self.broker.list_share_groups();
            listed
                .group_ids
                .retain(|g| access.may(Resource::Group(g), Operation::Describe));
            listed
        });
        finish("ListShareGroups", started, result)
    }

    async fn reset_share_group_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            if req.all_topics {
                let read = self.broker.shares.get(&req.group).map(|g| g.starts());
                let topics = read.unwrap_or_default();
                read_topics(&access, topics.keys().map(|(t, _)| t.as_str()))?;
            }
            self.broker.reset_share_group_offsets(req).await
        }
        .await;
        finish("ResetShareGroupOffsets", started, result)
    }

    async fn delete_share_group(
        &self,
        request: Request<pb::DeleteShareGroupRequest>,
    ) -> Result<Response<pb::DeleteShareGroupResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.delete_share_group(&req).await,
            Err(e) => Err(e),
        };
        finish("DeleteShareGroup", started, result)
    }
}
