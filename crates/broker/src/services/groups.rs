//! `runnel.v1.GroupService`: the `Membership` stream of each group member, committed
//! offsets, and group administration, over the group operations of [`crate::broker::groups`].

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use runnel_proto::pb::{
    self, ErrorCode, group_consume_response::Response as ConsumeTell,
    group_service_server::GroupService, membership_request::Request as Said,
    membership_response::Response as Tell,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};

use super::access::{Access, Protected as _, Recheck, access, authorized, read_topics};
use super::caller::{ConnInfo, caller};
use super::{finish, rpc_done, status};
use crate::auth::acl::{Operation, Resource};
use crate::broker::Broker;
use crate::broker::group_consume::{ConsumeEnd, GroupConsumer, InboundError};
use crate::broker::groups::{Joined, View};
use crate::error::RpcError;

/// Responses queued per Membership stream. Assignments are complete states and heartbeats
/// are answered one by one, so a few suffice; a client that stops reading stops its own
/// stream (and then its heartbeats, which ends its membership).
const MEMBERSHIP_QUEUE: usize = 4;

/// The group service.
#[derive(Debug, Clone)]
pub struct Groups {
    broker: Arc<Broker>,
}

impl Groups {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Groups { broker }
    }
}

type MembershipItem = Result<pb::MembershipResponse, Status>;

/// Sends a response; false if the client left or the broker is shutting down.
async fn send(b: &Broker, tx: &mpsc::Sender<MembershipItem>, response: Tell) -> bool {
    let item = Ok(pb::MembershipResponse {
        response: Some(response),
    });
    tokio::select! {
        biased;
        () = b.shutdown.wait() => false,
        sent = tx.send(item) => sent.is_ok(),
    }
}

/// Ends the stream with an error status (not waiting past the shutdown deadline for a client
/// that does not read); returns its code.
async fn end(b: &Broker, tx: &mpsc::Sender<MembershipItem>, e: RpcError) -> Code {
    let code = e.grpc_code();
    let _ = tokio::time::timeout(b.config.shutdown_deadline(), tx.send(Err(e.status()))).await;
    code
}

/// Ends the stream after reading from the client failed: a message that could not be decoded
/// is answered as a malformed request; anything else means the client went away.
async fn inbound_failed(b: &Broker, tx: &mpsc::Sender<MembershipItem>, status: Status) -> Code {
    let status = status::inbound(status);
    if status.code() != Code::InvalidArgument {
        return Code::Cancelled;
    }
    let _ = tokio::time::timeout(b.config.shutdown_deadline(), tx.send(Err(status))).await;
    Code::InvalidArgument
}

/// Runs one Membership stream: the join, then heartbeats, acknowledgements and leave from
/// the client, and assignments from the coordinator. Returns the status code it ended with.
async fn run_member(
    b: &Broker,
    mut inbound: Streaming<pb::MembershipRequest>,
    host: String,
    access: &Access,
    tx: &mpsc::Sender<MembershipItem>,
) -> Code {
    let groups = b.groups();
    let join_wait = Duration::from_millis(b.config.groups.session_timeout_ms);
    let first = tokio::select! {
        biased;
        () = b.shutdown.wait() => return end(b, tx, RpcError::shutting_down()).await,
        m = tokio::time::timeout(join_wait, inbound.message()) => m,
    };
    let join = match first {
        Err(_) => {
            return end(
                b,
                tx,
                RpcError::invalid(format!(
                    "no join request within {} ms of opening the stream",
                    join_wait.as_millis()
                )),
            )
            .await;
        }
        Ok(Ok(Some(pb::MembershipRequest {
            request: Some(Said::Join(join)),
        }))) => match join.authorize(access) {
            Ok(()) => join,
            Err(e) => return end(b, tx, e).await,
        },
        Ok(Ok(Some(_))) => {
            return end(
                b,
                tx,
                RpcError::invalid("the first request of a Membership stream must be join"),
            )
            .await;
        }
        Ok(Ok(None)) => return Code::Cancelled,
        Ok(Err(status)) => return inbound_failed(b, tx, status).await,
    };
    let Joined {
        group,
        member_id,
        joined,
        mut view,
    } = match b.join_group(join, host) {
        Ok(j) => j,
        Err(e) => return end(b, tx, e).await,
    };
    if !send(b, tx, Tell::Joined(joined)).await {
        groups.disconnected(&group, &member_id);
        return stopped(b, tx).await;
    }
    loop {
        // Forward the latest view; changes made meanwhile are folded into it.
        let current = view.borrow_and_update().clone();
        match current {
            View::Assignment(a) => {
                if !send(b, tx, Tell::Assignment(a)).await {
                    groups.disconnected(&group, &member_id);
                    return stopped(b, tx).await;
                }
            }
            View::Removed(e) => return end(b, tx, e).await,
        }
        loop {
            tokio::select! {
                biased;
                () = b.shutdown.wait() => return end(b, tx, RpcError::shutting_down()).await,
                changed = view.changed() => {
                    if changed.is_err() {
                        return end(b, tx, RpcError::unknown_member(&group, &member_id)).await;
                    }
                    break;
                }
                message = inbound.message() => {
                    let request = match message {
                        Ok(Some(m)) => m.request,
                        Ok(None) => {
                            groups.disconnected(&group, &member_id);
                            return Code::Cancelled;
                        }
                        Err(status) => {
                            groups.disconnected(&group, &member_id);
                            return inbound_failed(b, tx, status).await;
                        }
                    };
                    match request {
                        Some(Said::Heartbeat(_)) => match groups.heartbeat(&group, &member_id) {
                            Ok(member_epoch) => {
                                let ack = Tell::Heartbeat(pb::HeartbeatAck { member_epoch });
                                if !send(b, tx, ack).await {
                                    groups.disconnected(&group, &member_id);
                                    return stopped(b, tx).await;
                                }
                            }
                            Err(e) => return end(b, tx, e).await,
                        },
                        Some(Said::Acknowledge(ack)) => {
                            if let Err(e) = groups.acknowledge(&group, &member_id, &ack) {
                                if e.code != ErrorCode::UnknownMember {
                                    groups.leave(&group, &member_id);
                                }
                                return end(b, tx, e).await;
                            }
                        }
                        Some(Said::Leave(_)) => {
                            groups.leave(&group, &member_id);
                            return Code::Ok;
                        }
                        Some(Said::Join(_)) | None => {
                            groups.leave(&group, &member_id);
                            return end(
                                b,
                                tx,
                                RpcError::invalid(
                                    "after join, send heartbeat, acknowledge or leave; the member was removed",
                                ),
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }
}

/// The end of a stream whose client left or whose broker is shutting down.
async fn stopped(b: &Broker, tx: &mpsc::Sender<MembershipItem>) -> Code {
    if b.shutdown.is_triggered() {
        end(b, tx, RpcError::shutting_down()).await
    } else {
        Code::Cancelled
    }
}

/// A `GroupService.Consume` response stream: the member's control messages first, then its
/// records; the first error ends it.
pub struct ConsumeResponses {
    consumer: GroupConsumer,
    /// The caller and its start, checked again before records once security changes.
    recheck: Recheck<Arc<OnceLock<pb::GroupConsumeRequest>>>,
    done: bool,
}

impl Stream for ConsumeResponses {
    type Item = Result<pb::GroupConsumeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let response = |r| Ok(pb::GroupConsumeResponse { response: Some(r) });
        match this.consumer.control.poll_recv(cx) {
            Poll::Ready(Some(Ok(tell))) => return Poll::Ready(Some(response(tell))),
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                return Poll::Ready(Some(Err(e.status())));
            }
            // The member's session is over (after leave): end with OK.
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match this.consumer.records.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(
                match item.and_then(|r| {
                    this.recheck.check()?;
                    r.whole()
                }) {
                    Ok(records) => response(ConsumeTell::Records(records)),
                    Err(e) => {
                        this.done = true;
                        Err(e.status())
                    }
                },
            )),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Counts a `Consume` call once the member's session ends.
fn consume_done(started: Instant) -> impl FnOnce(ConsumeEnd) + Send + 'static {
    move |end| {
        let code = match end {
            ConsumeEnd::Left => Code::Ok,
            ConsumeEnd::ClientGone => Code::Cancelled,
            ConsumeEnd::Failed(code) => status::grpc_code(code),
        };
        rpc_done("Consume", code, started);
    }
}

#[tonic::async_trait]
impl GroupService for Groups {
    type ConsumeStream = ConsumeResponses;

    async fn consume(
        &self,
        request: Request<Streaming<pb::GroupConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let started = Instant::now();
        let host = ConnInfo::of(request.extensions())
            .and_then(ConnInfo::remote)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let caller = caller(request.extensions(), &self.broker.quotas);
        let access = match access(request.extensions()) {
            Ok(access) => access,
            Err(e) => return finish("Consume", started, Err(e)),
        };
        // The start is authorized as it arrives (a denied one ends the stream with the
        // denial), and kept to check again while records flow.
        let start = Arc::new(OnceLock::new());
        let recheck = Recheck::new(access.clone(), start.clone(), access.revision());
        let inbound = request.into_inner().map(move |m| {
            let m = m.map_err(|status| match status::inbound_error(&status) {
                Some(e) => InboundError::Malformed(e),
                None => InboundError::Gone,
            })?;
            m.authorize(&access).map_err(InboundError::Malformed)?;
            if matches!(
                m.request,
                Some(pb::group_consume_request::Request::Start(_))
            ) {
                let _ = start.set(m.clone());
            }
            Ok(m)
        });
        match self
            .broker
            .group_consume(inbound, host, caller, consume_done(started))
        {
            Ok(consumer) => Ok(Response::new(ConsumeResponses {
                consumer,
                recheck,
                done: false,
            })),
            Err(e) => finish("Consume", started, Err(e)),
        }
    }

    type MembershipStream = ReceiverStream<MembershipItem>;

    async fn membership(
        &self,
        request: Request<Streaming<pb::MembershipRequest>>,
    ) -> Result<Response<Self::MembershipStream>, Status> {
        let started = Instant::now();
        let broker = self.broker.clone();
        if let Err(e) = broker.check_running() {
            return finish("Membership", started, Err(e));
        }
        let host = ConnInfo::of(request.extensions())
            .and_then(ConnInfo::remote)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let access = match access(request.extensions()) {
            Ok(access) => access,
            Err(e) => return finish("Membership", started, Err(e)),
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(MEMBERSHIP_QUEUE);
        tokio::spawn(async move {
            let code = run_member(&broker, inbound, host, &access, &tx).await;
            rpc_done("Membership", code, started);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.commit_offsets(req).await,
            Err(e) => Err(e),
        };
        finish("CommitOffsets", started, result)
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).and_then(|(access, req)| {
            let mut committed = self.broker.fetch_offsets(&req)?;
            // Every topic's offsets, when none is named: those the caller may describe.
            committed
                .offsets
                .retain(|o| access.may(Resource::Topic(&o.topic), Operation::Describe));
            Ok(committed)
        });
        finish("FetchOffsets", started, result)
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|(access, _)| {
            let mut listed = self.broker.list_groups();
            listed
                .groups
                .retain(|g| access.may(Resource::Group(&g.group), Operation::Describe));
            listed
        });
        finish("ListGroups", started, result)
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).and_then(|(access, req)| {
            let mut described = self.broker.describe_group(&req.group)?;
            // Offsets and lag of the topics the caller may describe.
            described
                .partitions
                .retain(|p| access.may(Resource::Topic(&p.topic), Operation::Describe));
            Ok(described)
        });
        finish("DescribeGroup", started, result)
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker.delete_group(&req.group).await
        }
        .await
        .map(|()| pb::DeleteGroupResponse {});
        finish("DeleteGroup", started, result)
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            if req.all_topics {
                let committed = self.broker.fetch_offsets(&pb::FetchOffsetsRequest {
                    group: req.group.clone(),
                    partitions: Vec::new(),
                })?;
                read_topics(&access, committed.offsets.iter().map(|o| o.topic.as_str()))?;
            }
            self.broker.reset_offsets(req).await
        }
        .await;
        finish("ResetOffsets", started, result)
    }
}
