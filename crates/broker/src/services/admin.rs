//! `runnel.v1.AdminService`: topics and broker information.

use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{blocking, finish};
use crate::error::RpcError;
use crate::server::Broker;
use crate::topics::{self, remove_deleted};

/// The admin service.
#[derive(Debug, Clone)]
pub struct Admin {
    broker: Arc<Broker>,
}

impl Admin {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Admin { broker }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let b = self.broker.clone();
        let result = async {
            b.check_running()?;
            let topics = b.topics.clone();
            blocking(move || {
                let t = topics.create(&req.topic, req.partition_count, req.config.as_ref())?;
                Ok(topics.describe(&t))
            })
            .await
        }
        .await
        .map(|d| pb::CreateTopicResponse { topic: Some(d) });
        finish("CreateTopic", started, result)
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let b = self.broker.clone();
        let result = async {
            b.check_running()?;
            let topics = b.topics.clone();
            let trash = blocking(move || topics.delete(&req.topic)).await?;
            // The files go in the background; a restart finishes the job if this does not.
            tokio::task::spawn_blocking(move || remove_deleted(&trash));
            Ok(pb::DeleteTopicResponse {})
        }
        .await;
        finish("DeleteTopic", started, result)
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let started = Instant::now();
        let topics = self
            .broker
            .topics
            .list()
            .iter()
            .map(|t| pb::TopicListing {
                topic: t.name.to_string(),
                partition_count: t.partition_count(),
            })
            .collect();
        finish("ListTopics", started, Ok(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = self
            .broker
            .topics
            .get(&req.topic)
            .map(|t| pb::DescribeTopicResponse {
                topic: Some(self.broker.topics.describe(&t)),
            });
        finish("DescribeTopic", started, result)
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let b = self.broker.clone();
        let result = async {
            b.check_running()?;
            let topics = b.topics.clone();
            blocking(move || {
                let (_, overrides) = topics.alter(&req.topic, req.set.as_ref(), &req.reset)?;
                Ok(pb::AlterTopicConfigResponse {
                    config: Some(topics::to_pb(&overrides.effective(topics.defaults()))),
                    config_overrides: overrides.names(),
                })
            })
            .await
        }
        .await;
        finish("AlterTopicConfig", started, result)
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let b = self.broker.clone();
        let result = async {
            b.check_running()?;
            let topics = b.topics.clone();
            let count =
                blocking(move || topics.create_partitions(&req.topic, req.partition_count)).await?;
            Ok(pb::CreatePartitionsResponse {
                partition_count: count,
            })
        }
        .await;
        finish("CreatePartitions", started, result)
    }

    async fn broker_info(
        &self,
        _request: Request<pb::BrokerInfoRequest>,
    ) -> Result<Response<pb::BrokerInfoResponse>, Status> {
        let started = Instant::now();
        let b = self.broker.clone();
        let dir = b.config.data_dir.clone();
        let result = blocking(move || {
            rustix::fs::statvfs(&dir)
                .map_err(|e| RpcError::internal(format!("statvfs {}: {e}", dir.display())))
        })
        .await
        .map(|st| pb::BrokerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            start_time_ms: b.start_time_ms,
            uptime_ms: u64::try_from(b.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            data_dir: b.config.data_dir.display().to_string(),
            disk_free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            disk_total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        });
        finish("BrokerInfo", started, result)
    }
}
