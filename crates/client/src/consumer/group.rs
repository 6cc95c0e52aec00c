//! The consumer's group task: membership in a consumer group over the broker's `Membership`
//! stream (join, heartbeats, assignments, acknowledgements, leave), and every offset commit,
//! one after the other, so that an older commit never overwrites a newer one and a revoked
//! partition's offsets are stored before it is released.
//!
//! The assignment itself is applied by the [`Consumer`](super::Consumer) in the
//! application's task (it owns the partition readers and knows what the application has
//! consumed): the group task forwards each `Assignment` as a [`GroupEvent`], and the consumer
//! answers a revocation with [`GroupCommand::Release`], which the task turns into a commit
//! followed by `AcknowledgeAssignment`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::Transport;
use futures_util::StreamExt as _;
use runnel_proto::pb::{self, group_service_client::GroupServiceClient};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::TopicPartition;
use crate::connection::Connection;
use crate::error::{ClientError, ErrorCode, Result};

/// Membership settings from the consumer config.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub(crate) group: String,
    pub(crate) client_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) session_timeout: Option<Duration>,
    pub(crate) assignor: String,
}

/// What the consumer asks of the group task.
#[derive(Debug)]
pub(crate) enum GroupCommand {
    /// Join (or change the subscription to) these topics.
    Subscribe(Vec<String>),
    /// Commit offsets; answer on `reply` if given.
    Commit {
        offsets: Vec<(TopicPartition, u64)>,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Commit the offsets of revoked partitions, then acknowledge the revocation.
    Release {
        epoch: u32,
        partitions: Vec<TopicPartition>,
        offsets: Vec<(TopicPartition, u64)>,
    },
    /// Commit, leave the group (a static member just closes its stream) and stop.
    Leave {
        offsets: Vec<(TopicPartition, u64)>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What the group task tells the consumer.
#[derive(Debug)]
pub(crate) enum GroupEvent {
    /// The member's complete assignment.
    Assignment {
        epoch: u32,
        assigned: Vec<TopicPartition>,
        revoke: Vec<TopicPartition>,
    },
    /// The member is out of the group (removed, or its stream broke): its partitions are no
    /// longer its own. It joins again.
    Lost(ClientError),
    /// A problem the application must hear of (a fenced instance, an invalid group id).
    Error(ClientError),
}

struct Membership {
    tx: mpsc::Sender<pb::MembershipRequest>,
    rx: tonic::Streaming<pb::MembershipResponse>,
    member_id: String,
    epoch: u32,
    heartbeat: Duration,
    session_timeout: Duration,
    /// When the broker last said anything on the stream.
    last_heard: Instant,
}

pub(crate) struct GroupTask {
    pub(crate) conn: Arc<Connection>,
    pub(crate) settings: GroupSettings,
    pub(crate) commands: mpsc::Receiver<GroupCommand>,
    pub(crate) events: mpsc::Sender<GroupEvent>,
}

enum Wake {
    Command(Option<GroupCommand>),
    Message(Option<std::result::Result<pb::MembershipResponse, tonic::Status>>),
    Heartbeat,
    Rejoin,
}

impl GroupTask {
    pub(crate) async fn run(mut self) {
        let client = GroupServiceClient::new(self.conn.channel.clone())
            .max_decoding_message_size(self.conn.config.max_message_bytes);
        let mut topics: Vec<String> = Vec::new();
        let mut member: Option<Membership> = None;
        let mut rejoin_at: Option<Instant> = None;
        let mut attempt = 0u32;
        let mut next_heartbeat = Instant::now();
        loop {
            if member.is_none()
                && !topics.is_empty()
                && rejoin_at.is_none_or(|t| t <= Instant::now())
            {
                match self.join(&client, &topics).await {
                    Ok(m) => {
                        tracing::debug!(group = %self.settings.group, member = %m.member_id, "joined");
                        next_heartbeat = Instant::now() + m.heartbeat;
                        member = Some(m);
                        rejoin_at = None;
                        attempt = 0;
                    }
                    Err(e) => {
                        // Errors that a retry cannot mend end the subscription.
                        if matches!(
                            e.code(),
                            Some(
                                ErrorCode::InvalidGroupId
                                    | ErrorCode::InvalidRequest
                                    | ErrorCode::Unauthenticated
                                    | ErrorCode::PermissionDenied
                            )
                        ) {
                            let _ = self.events.send(GroupEvent::Error(e)).await;
                            topics.clear();
                            continue;
                        }
                        tracing::debug!(group = %self.settings.group, error = %e, "join failed");
                        rejoin_at = Some(Instant::now() + self.conn.config.backoff.delay(attempt));
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
            let wake = {
                let heartbeat_due = member.as_ref().map(|_| next_heartbeat);
                let want_rejoin = member.is_none() && !topics.is_empty();
                let heartbeat = async {
                    match heartbeat_due {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let rejoin = async {
                    match (rejoin_at, want_rejoin) {
                        (Some(t), true) => tokio::time::sleep_until(t).await,
                        _ => std::future::pending().await,
                    }
                };
                let message = async {
                    match member.as_mut() {
                        Some(m) => m.rx.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    c = self.commands.recv() => Wake::Command(c),
                    m = message => Wake::Message(m),
                    () = heartbeat => Wake::Heartbeat,
                    () = rejoin => Wake::Rejoin,
                }
            };
            match wake {
                Wake::Rejoin => {}
                // The consumer was dropped without closing: a crash, as far as the group
                // knows. Dropping the stream ends the membership.
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => match command {
                    GroupCommand::Subscribe(t) => {
                        topics = t;
                        if let Some(m) = member.take() {
                            // A new subscription: leave and join again with it.
                            let _ = send(&m, leave()).await;
                        }
                        rejoin_at = None;
                    }
                    GroupCommand::Commit { offsets, reply } => {
                        let r = self.commit(&client, member.as_ref(), &offsets).await;
                        match reply {
                            Some(reply) => {
                                let _ = reply.send(r);
                            }
                            None => {
                                // As in Kafka, a failed auto-commit is logged; the next one
                                // (or the commit on revocation) stores the position.
                                if let Err(e) = r {
                                    tracing::warn!(group = %self.settings.group, error = %e, "auto-commit failed");
                                }
                            }
                        }
                    }
                    GroupCommand::Release {
                        epoch,
                        partitions,
                        offsets,
                    } => {
                        if let Err(e) = self.commit(&client, member.as_ref(), &offsets).await {
                            tracing::warn!(group = %self.settings.group, error = %e, "commit before release failed");
                        }
                        if let Some(m) = &member {
                            let ack = pb::MembershipRequest {
                                request: Some(pb::membership_request::Request::Acknowledge(
                                    pb::AcknowledgeAssignment {
                                        member_epoch: epoch,
                                        released: group_by_topic(&partitions),
                                    },
                                )),
                            };
                            if send(m, ack).await.is_err() {
                                member = None;
                            }
                        }
                    }
                    GroupCommand::Leave { offsets, reply } => {
                        let r = self.commit(&client, member.as_ref(), &offsets).await;
                        // A static member closes its stream without `leave`, so that its
                        // next incarnation gets its partitions back without a rebalance
                        // (docs/protocol.md, "Static membership").
                        if self.settings.instance_id.is_some() {
                            let _ = reply.send(r);
                            return;
                        }
                        if let Some(m) = member.take() {
                            let _ = send(&m, leave()).await;
                            // Wait (briefly) for the broker to end the stream with OK.
                            let mut rx = m.rx;
                            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                                while let Some(Ok(_)) = rx.next().await {}
                            })
                            .await;
                        }
                        let _ = reply.send(r);
                        return;
                    }
                },
                Wake::Heartbeat => {
                    // Heard nothing for a session timeout: the broker has removed us (or
                    // the connection is half open). Treat every partition as lost.
                    if let Some(timeout) = member
                        .as_ref()
                        .filter(|m| m.last_heard.elapsed() > m.session_timeout)
                        .map(|m| m.session_timeout)
                    {
                        member = None;
                        rejoin_at = None;
                        self.lost(ClientError::Timeout {
                            what: "hearing from the group coordinator".into(),
                            after: timeout,
                        })
                        .await;
                        continue;
                    }
                    if let Some(m) = &member {
                        next_heartbeat = Instant::now() + m.heartbeat;
                        let hb = pb::MembershipRequest {
                            request: Some(pb::membership_request::Request::Heartbeat(
                                pb::Heartbeat {},
                            )),
                        };
                        if send(m, hb).await.is_err() {
                            member = None;
                            self.lost(ClientError::Transport {
                                status: tonic::Code::Unavailable,
                                message: "the membership stream closed".into(),
                            })
                            .await;
                        }
                    }
                }
                Wake::Message(Some(Ok(response))) => {
                    if let Some(m) = member.as_mut() {
                        m.last_heard = Instant::now();
                        match response.response {
                            Some(pb::membership_response::Response::Assignment(a)) => {
                                m.epoch = m.epoch.max(a.member_epoch);
                                let event = GroupEvent::Assignment {
                                    epoch: a.member_epoch,
                                    assigned: flatten(&a.assigned),
                                    revoke: flatten(&a.revoke),
                                };
                                if self.events.send(event).await.is_err() {
                                    return;
                                }
                            }
                            Some(pb::membership_response::Response::Heartbeat(h)) => {
                                m.epoch = m.epoch.max(h.member_epoch);
                            }
                            Some(pb::membership_response::Response::Joined(_)) | None => {}
                        }
                    }
                }
                Wake::Message(Some(Err(status))) => {
                    let e = self.conn.error(status);
                    member = None;
                    if e.code() == Some(ErrorCode::FencedMember) {
                        // Another instance with our instance id took over: stop.
                        let _ = self.events.send(GroupEvent::Error(e)).await;
                        topics.clear();
                        continue;
                    }
                    rejoin_at = Some(Instant::now() + self.conn.config.backoff.delay(attempt));
                    attempt = attempt.saturating_add(1);
                    self.lost(e).await;
                }
                Wake::Message(None) => {
                    member = None;
                    rejoin_at = Some(Instant::now() + self.conn.config.backoff.delay(attempt));
                    attempt = attempt.saturating_add(1);
                    self.lost(ClientError::Transport {
                        status: tonic::Code::Unavailable,
                        message: "the broker ended the membership stream".into(),
                    })
                    .await;
                }
            }
        }
    }

    async fn lost(&self, error: ClientError) {
        tracing::info!(group = %self.settings.group, %error, "left the group involuntarily; joining again");
        let _ = self.events.send(GroupEvent::Lost(error)).await;
    }

    /// Opens the membership stream and joins; returns once `joined` arrived.
    async fn join(
        &self,
        client: &GroupServiceClient<Transport>,
        topics: &[String],
    ) -> Result<Membership> {
        let (tx, rx) = mpsc::channel(16);
        let join = pb::MembershipRequest {
            request: Some(pb::membership_request::Request::Join(pb::JoinGroup {
                group: self.settings.group.clone(),
                topics: topics.to_vec(),
                client_id: self.settings.client_id.clone(),
                instance_id: self.settings.instance_id.clone(),
                session_timeout_ms: self
                    .settings
                    .session_timeout
                    .map_or(0, |d| d.as_millis() as u64),
                assignor: self.settings.assignor.clone(),
            })),
        };
        tx.send(join)
            .await
            .map_err(|_| ClientError::Closed("membership stream"))?;
        let timeout = self.conn.config.connect_timeout + Duration::from_secs(10);
        let opened =
            tokio::time::timeout(timeout, client.clone().membership(ReceiverStream::new(rx)))
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "joining the group".into(),
                    after: timeout,
                })?;
        let mut stream = opened.map_err(|s| self.conn.error(s))?.into_inner();
        let first = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| ClientError::Timeout {
                what: "joining the group".into(),
                after: timeout,
            })?;
        match first {
            Some(Ok(pb::MembershipResponse {
                response: Some(pb::membership_response::Response::Joined(j)),
            })) => Ok(Membership {
                tx,
                rx: stream,
                member_id: j.member_id,
                epoch: 0,
                heartbeat: Duration::from_millis(j.heartbeat_interval_ms.max(100)),
                session_timeout: Duration::from_millis(j.session_timeout_ms.max(1_000)),
                last_heard: Instant::now(),
            }),
            Some(Ok(other)) => Err(ClientError::Protocol(format!(
                "the first membership response is not `joined`: {other:?}"
            ))),
            Some(Err(status)) => Err(self.conn.error(status)),
            None => Err(ClientError::Transport {
                status: tonic::Code::Unavailable,
                message: "the broker ended the membership stream before joining".into(),
            }),
        }
    }

    /// Commits offsets as the member (or standalone, with an empty member id).
    async fn commit(
        &self,
        client: &GroupServiceClient<Transport>,
        member: Option<&Membership>,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<()> {
        commit_offsets(
            &self.conn,
            client,
            &self.settings.group,
            member.map(|m| (m.member_id.as_str(), m.epoch)),
            offsets,
        )
        .await
    }
}

/// `CommitOffsets`, retried on transport errors; the first partition's error fails it.
pub(crate) async fn commit_offsets(
    conn: &Connection,
    client: &GroupServiceClient<Transport>,
    group: &str,
    member: Option<(&str, u32)>,
    offsets: &[(TopicPartition, u64)],
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let request = pb::CommitOffsetsRequest {
        group: group.to_owned(),
        member_id: member.map_or_else(String::new, |(id, _)| id.to_owned()),
        member_epoch: member.map_or(0, |(_, epoch)| epoch),
        offsets: offsets
            .iter()
            .map(|(tp, offset)| pb::OffsetCommit {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect(),
    };
    let r = conn
        .retry(3, || {
            let mut c = client.clone();
            let req = request.clone();
            async move { c.commit_offsets(req).await }
        })
        .await?
        .into_inner();
    match r.results.iter().find_map(|r| r.error.as_ref()) {
        Some(e) => Err(ClientError::from_inline(e)),
        None => Ok(()),
    }
}

async fn send(m: &Membership, request: pb::MembershipRequest) -> Result<()> {
    m.tx.send(request)
        .await
        .map_err(|_| ClientError::Closed("membership stream"))
}

fn leave() -> pb::MembershipRequest {
    pb::MembershipRequest {
        request: Some(pb::membership_request::Request::Leave(pb::LeaveGroup {})),
    }
}

/// Partitions grouped by topic, as the protocol lists them.
pub(crate) fn group_by_topic(partitions: &[TopicPartition]) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            pb::TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

/// The protocol's per-topic lists as single partitions.
pub(crate) fn flatten(lists: &[pb::TopicPartitions]) -> Vec<TopicPartition> {
    let mut out = Vec::new();
    for list in lists {
        let topic: Arc<str> = list.topic.as_str().into();
        for p in &list.partitions {
            out.push(TopicPartition {
                topic: topic.clone(),
                partition: *p,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_group_by_topic_and_back() {
        let tps = vec![
            TopicPartition::new("b", 2),
            TopicPartition::new("a", 1),
            TopicPartition::new("b", 0),
            TopicPartition::new("b", 2),
        ];
        let grouped = group_by_topic(&tps);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].topic, "a");
        assert_eq!(grouped[1].partitions, [0, 2]);
        let back = flatten(&grouped);
        assert_eq!(
            back,
            [
                TopicPartition::new("a", 1),
                TopicPartition::new("b", 0),
                TopicPartition::new("b", 2)
            ]
        );
    }
}
