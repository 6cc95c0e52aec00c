//! `runnel.v1.AdminService`: topics, client quotas and broker information, over the
//! operations of [`crate::broker::admin`].

use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::access::authorized;
use super::finish;
use crate::auth::acl::{Operation, Resource};
use crate::broker::Broker;
use crate::quotas::{Owner, Rates};

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
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker
                .create_topic(req.topic, req.partition_count, req.config)
                .await
                .map(|d| pb::CreateTopicResponse { topic: Some(d) })
        }
        .await;
        finish("CreateTopic", started, result)
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker
                .delete_topic(req.topic)
                .await
                .map(|()| pb::DeleteTopicResponse {})
        }
        .await;
        finish("DeleteTopic", started, result)
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|(access, _)| {
            let mut topics = self.broker.list_topics();
            topics.retain(|t| access.may(Resource::Topic(&t.topic), Operation::Describe));
            pb::ListTopicsResponse { topics }
        });
        finish("ListTopics", started, result)
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).and_then(|(_, req)| {
            self.broker
                .describe_topic(&req.topic)
                .map(|d| pb::DescribeTopicResponse { topic: Some(d) })
        });
        finish("DescribeTopic", started, result)
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker
                .alter_topic_config(req.topic, req.set, req.reset)
                .await
                .map(|c| pb::AlterTopicConfigResponse {
                    config: Some(c.config),
                    config_overrides: c.overrides,
                })
        }
        .await;
        finish("AlterTopicConfig", started, result)
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            self.broker
                .create_partitions(req.topic, req.partition_count)
                .await
                .map(|partition_count| pb::CreatePartitionsResponse { partition_count })
        }
        .await;
        finish("CreatePartitions", started, result)
    }

    async fn broker_info(
        &self,
        request: Request<pb::BrokerInfoRequest>,
    ) -> Result<Response<pb::BrokerInfoResponse>, Status> {
        let started = Instant::now();
        let result = async {
            authorized(request)?;
            self.broker.broker_info().await
        }
        .await
        .map(|i| pb::BrokerInfoResponse {
            version: i.version.to_owned(),
            start_time_ms: i.start_time_ms,
            uptime_ms: i.uptime_ms,
            data_dir: i.data_dir,
            disk_free_bytes: i.disk_free_bytes,
            disk_total_bytes: i.disk_total_bytes,
        });
        finish("BrokerInfo", started, result)
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            let rates = req.rates.map(rates_from_pb).unwrap_or_default();
            let owner = Broker::quota_owner(req.client_id, req.principal)?;
            self.broker.set_quota(owner, rates).await
        }
        .await
        .map(|()| pb::SetQuotaResponse {});
        finish("SetQuota", started, result)
    }

    async fn delete_quota(
        &self,
        request: Request<pb::DeleteQuotaRequest>,
    ) -> Result<Response<pb::DeleteQuotaResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (_, req) = authorized(request)?;
            let owner = Broker::quota_owner(req.client_id, req.principal)?;
            self.broker.delete_quota(owner).await
        }
        .await
        .map(|()| pb::DeleteQuotaResponse {});
        finish("DeleteQuota", started, result)
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let started = Instant::now();
        if let Err(e) = authorized(request) {
            return finish("ListQuotas", started, Err(e));
        }
        let (defaults, clients) = self.broker.list_quotas();
        let response = pb::ListQuotasResponse {
            defaults: Some(rates_to_pb(defaults)),
            clients: clients
                .into_iter()
                .map(|(owner, set, effective)| {
                    let (client_id, principal) = match owner {
                        Owner::Client(c) => (c.to_string(), String::new()),
                        Owner::Principal(p) => (String::new(), p.to_string()),
                    };
                    pb::ClientQuota {
                        client_id,
                        principal,
                        rates: Some(rates_to_pb(set)),
                        effective: Some(rates_to_pb(effective)),
                    }
                })
                .collect(),
        };
        finish("ListQuotas", started, Ok(response))
    }
}

fn rates_from_pb(r: pb::QuotaRates) -> Rates {
    Rates {
        produce_bytes_per_sec: r.produce_bytes_per_sec,
        fetch_bytes_per_sec: r.fetch_bytes_per_sec,
        requests_per_sec: r.requests_per_sec,
    }
}

fn rates_to_pb(r: Rates) -> pb::QuotaRates {
    pb::QuotaRates {
        produce_bytes_per_sec: r.produce_bytes_per_sec,
        fetch_bytes_per_sec: r.fetch_bytes_per_sec,
        requests_per_sec: r.requests_per_sec,
    }
}
