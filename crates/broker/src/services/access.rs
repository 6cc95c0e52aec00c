//! Authorization of `runnel.v1` requests: what each request needs ([`Protected`], one
//! implementation per request message, the table `docs/security.md` prints), checked by
//! the one authorization point ([`Auth::check`]) for the caller the door authenticated
//! ([`Access`], put in the request's extensions by `caller.rs`).
//!
//! A service takes its request's message only through [`authorized`], so a message is never
//! used before it is authorized; a stream checks each message it receives the same way. A
//! stream that outlives its check ([`Rechecked`]) checks again, before each answer, once
//! users, tokens or ACLs have changed or its token has expired: revoking a caller ends its
//! open streams too.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use runnel_proto::pb::{self, group_consume_request, membership_request};
use tokio_stream::Stream;
use tonic::Request;

pub(crate) use crate::auth::Access;
use crate::auth::acl::{Operation, Resource, ResourceType};
use crate::error::RpcError;

/// The access the door put in `extensions`.
///
/// # Errors
/// `INTERNAL` if there is none: the call did not pass the door, and is refused rather than
/// served unchecked.
pub(crate) fn access(extensions: &tonic::Extensions) -> Result<Access, RpcError> {
    extensions
        .get::<Access>()
        .cloned()
        .ok_or_else(|| RpcError::internal("the call did not pass authentication"))
}

/// The request's message, once its caller may make it; and the caller's access.
///
/// # Errors
/// `PERMISSION_DENIED`, or `INTERNAL` for a call that did not pass the door.
pub(crate) fn authorized<T: Protected>(request: Request<T>) -> Result<(Access, T), RpcError> {
    let access = access(request.extensions())?;
    let message = request.into_inner();
    message.authorize(&access)?;
    Ok((access, message))
}

/// A request message that says what its caller needs.
pub trait Protected {
    /// `Ok` if `access` allows this request.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for the first need not met.
    fn authorize(&self, access: &Access) -> Result<(), RpcError>;
}

use Operation::{Alter, Create, Delete, Describe, Read, Write};

/// Requests that need one operation on the cluster.
macro_rules! on_cluster {
    ($($message:ty => $op:expr),* $(,)?) => {$(
        impl Protected for $message {
            fn authorize(&self, access: &Access) -> Result<(), RpcError> {
                access.check(Resource::Cluster, $op)
            }
        }
    )*};
}

on_cluster! {
    pb::BrokerInfoRequest => Describe,
    pb::SetQuotaRequest => Alter,
    pb::DeleteQuotaRequest => Alter,
    pb::ListQuotasRequest => Describe,
    pb::CreateUserRequest => Alter,
    pb::SetPasswordRequest => Alter,
    pb::DeleteUserRequest => Alter,
    pb::ListUsersRequest => Describe,
    pb::CreateTokenRequest => Alter,
    pb::DeleteTokenRequest => Alter,
    pb::ListTokensRequest => Describe,
    pb::CreateAclsRequest => Alter,
    pb::DeleteAclsRequest => Alter,
    pb::ListAclsRequest => Describe,
}

impl Protected for pb::CreateTopicRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        // CREATE on the topic's name, or on the cluster (`Auth::allows`).
        access.check(Resource::Topic(&self.topic), Create)
    }
}

impl Protected for pb::DeleteTopicRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Topic(&self.topic), Delete)
    }
}

impl Protected for pb::ListTopicsRequest {
    /// The answer lists only the topics the caller may describe.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check_some(ResourceType::Topic, Describe)
    }
}

impl Protected for pb::DescribeTopicRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Topic(&self.topic), Describe)
    }
}

impl Protected for pb::AlterTopicConfigRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Topic(&self.topic), Alter)
    }
}

impl Protected for pb::CreatePartitionsRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Topic(&self.topic), Alter)
    }
}

impl Protected for pb::ProduceRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Topic(&self.topic), Write)
    }
}

impl Protected for pb::InitProducerRequest {
    /// A producer id is of use only to a caller that may write somewhere (as Kafka's
    /// `InitProducerId` since KIP-679).
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check_some(ResourceType::Topic, Write)
    }
}

impl Protected for pb::FetchRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.topics(self.partitions.iter().map(|p| p.topic.as_str()), Read)
    }
}

impl Protected for pb::SubscribeRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        let named = (!self.topic.is_empty()).then_some(self.topic.as_str());
        let listed = self.partitions.iter().map(|p| p.topic.as_str());
        access.topics(named.into_iter().chain(listed), Read)
    }
}

impl Protected for pb::ListOffsetsRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.topics(self.queries.iter().map(|q| q.topic.as_str()), Describe)
    }
}

impl Protected for pb::JoinGroup {
    /// READ on the group, DESCRIBE on its topics (as Kafka's `JoinGroup` and `Metadata`).
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Read)?;
        access.topics(self.topics.iter().map(String::as_str), Describe)
    }
}

impl Protected for pb::MembershipRequest {
    /// The join is checked; the rest of the stream belongs to the member it made.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        match &self.request {
            Some(membership_request::Request::Join(join)) => join.authorize(access),
            _ => Ok(()),
        }
    }
}

impl Protected for pb::GroupConsumeRequest {
    /// The start: READ on the group and on its topics; the rest of the stream belongs to the
    /// member it made.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        match &self.request {
            Some(group_consume_request::Request::Start(start)) => {
                let Some(join) = &start.join else {
                    return Ok(());
                };
                access.check(Resource::Group(&join.group), Read)?;
                access.topics(join.topics.iter().map(String::as_str), Read)
            }
            _ => Ok(()),
        }
    }
}

impl Protected for pb::CommitOffsetsRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Read)?;
        access.topics(self.offsets.iter().map(|o| o.topic.as_str()), Read)
    }
}

impl Protected for pb::FetchOffsetsRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Describe)?;
        access.topics(self.partitions.iter().map(|p| p.topic.as_str()), Describe)
    }
}

impl Protected for pb::ListGroupsRequest {
    /// The answer lists only the groups the caller may describe.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check_some(ResourceType::Group, Describe)
    }
}

impl Protected for pb::DescribeGroupRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Describe)
    }
}

impl Protected for pb::DeleteGroupRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Delete)
    }
}

impl Protected for pb::ResetOffsetsRequest {
    /// READ on the group and on the topics named; with `all_topics`, the service checks each
    /// topic the group has offsets for.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group), Read)?;
        access.topics(self.topics.iter().map(|t| t.topic.as_str()), Read)
    }
}

impl Protected for pb::ShareFetchRequest {
    /// READ on the group and on the topics read and acknowledged (as Kafka's `ShareFetch`).
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Read)?;
        let acked = self.acknowledgements.iter().map(|a| a.topic.as_str());
        access.topics(self.topics.iter().map(String::as_str).chain(acked), Read)
    }
}

impl Protected for pb::ShareAcknowledgeRequest {
    /// READ on the group and on the topics acknowledged.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Read)?;
        access.topics(self.acknowledgements.iter().map(|a| a.topic.as_str()), Read)
    }
}

impl Protected for pb::LeaveShareGroupRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Read)
    }
}

impl Protected for pb::AlterShareGroupRequest {
    /// ALTER on the group, and WRITE on a dead-letter topic it names: the broker writes dead
    /// letters there on the group's behalf.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Alter)?;
        let dead_letter = self
            .settings
            .as_ref()
            .and_then(|s| s.dead_letter_topic.as_deref());
        access.topics(dead_letter, Write)
    }
}

impl Protected for pb::DescribeShareGroupRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Describe)
    }
}

impl Protected for pb::ListShareGroupsRequest {
    /// The answer lists only the groups the caller may describe.
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check_some(ResourceType::Group, Describe)
    }
}

impl Protected for pb::DeleteShareGroupRequest {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        access.check(Resource::Group(&self.group_id), Delete)
    }
}

/// `Ok` if the caller may READ every topic of `topics` (the topics a reset of every topic
/// turned out to touch).
///
/// # Errors
/// `PERMISSION_DENIED` for the first it may not.
pub(crate) fn read_topics<'a>(
    access: &Access,
    topics: impl IntoIterator<Item = &'a str>,
) -> Result<(), RpcError> {
    access.topics(topics, Read)
}

/// A request checked once it has arrived: the first message of a stream of requests, which
/// the stream's later answers are re-checked against.
impl<M: Protected> Protected for Arc<OnceLock<M>> {
    fn authorize(&self, access: &Access) -> Result<(), RpcError> {
        self.get().map_or(Ok(()), |m| m.authorize(access))
    }
}

/// A stream's caller and request, checked again once users, tokens or ACLs have changed or
/// its token has expired.
pub struct Recheck<R> {
    access: Access,
    request: R,
    seen: u64,
}

impl<R: Protected> Recheck<R> {
    /// `access`'s caller, as `request` allowed it when the security state was `seen`
    /// ([`Access::revision`], read before the check).
    pub(crate) fn new(access: Access, request: R, seen: u64) -> Self {
        Recheck {
            access,
            request,
            seen,
        }
    }

    /// `Ok` while the caller may still have the stream's answers.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for credentials gone or expired, `PERMISSION_DENIED` for an ACL
    /// revoked.
    pub(crate) fn check(&mut self) -> Result<(), RpcError> {
        if self.access.revalidate(&mut self.seen)? {
            self.request.authorize(&self.access)?;
        }
        Ok(())
    }
}

/// The answers of a stream, each passed only while its caller still may have them
/// ([`Recheck`]); a refusal ends the stream with its error.
pub struct Rechecked<S, R> {
    inner: S,
    recheck: Recheck<R>,
    ended: bool,
}

impl<S, R> Rechecked<S, R> {
    /// `inner`'s answers, passed while `recheck` holds.
    pub(crate) fn new(inner: S, recheck: Recheck<R>) -> Self {
        Rechecked {
            inner,
            recheck,
            ended: false,
        }
    }
}

impl<S, R, T> Stream for Rechecked<S, R>
where
    S: Stream<Item = Result<T, RpcError>> + Unpin,
    R: Protected + Unpin,
{
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(answer))) => match self.recheck.check() {
                Ok(()) => Poll::Ready(Some(Ok(answer))),
                Err(e) => {
                    self.ended = true;
                    Poll::Ready(Some(Err(e)))
                }
            },
            other => other,
        }
    }
}
