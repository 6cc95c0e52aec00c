//! `runnel.v1.ConsumeService`: `Fetch` (a long poll), `Subscribe` (a pushed stream with a
//! bounded queue) and `ListOffsets`, over the consume operations of
//! [`crate::broker::consume`].
//!
//! The running broker answers `Fetch` and `Subscribe` through [`super::consume_http`], which
//! frames their responses by hand; the generated service here answers `ListOffsets`.

use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, consume_service_server::ConsumeService};
use tokio_stream::StreamExt;
use tokio_stream::adapters::Map;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::access::{Recheck, Rechecked, access, authorized};
use super::caller::caller;
use super::status::grpc_code;
use super::{finish, rpc_done};
use crate::broker::Broker;
use crate::broker::consume::{Delivery, Pushed, SubscribeItem, SubscriptionEnd};

/// The consume service.
#[derive(Debug, Clone)]
pub struct Consume {
    broker: Arc<Broker>,
}

impl Consume {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        Consume { broker }
    }
}

/// A subscription's queue item as a gRPC stream item.
fn subscribe_item(item: SubscribeItem) -> Result<pb::SubscribeResponse, Status> {
    item.and_then(Pushed::whole).map_err(|e| e.status())
}

/// Counts a `Subscribe` call once its stream ends.
pub(crate) fn subscribe_done(started: Instant) -> impl FnOnce(SubscriptionEnd) + Send + 'static {
    move |end| {
        let code = match end {
            SubscriptionEnd::ClientLeft => Code::Cancelled,
            SubscriptionEnd::Failed(code) => grpc_code(code),
        };
        rpc_done("Subscribe", code, started);
    }
}

type SubscribeStream = Map<
    Rechecked<ReceiverStream<SubscribeItem>, pb::SubscribeRequest>,
    fn(SubscribeItem) -> Result<pb::SubscribeResponse, Status>,
>;

#[tonic::async_trait]
impl ConsumeService for Consume {
    // Served by `consume_http` in the running broker; kept for the trait.
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let started = Instant::now();
        let caller = caller(request.extensions(), &self.broker.quotas);
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.fetch(req, &caller).await,
            Err(e) => Err(e),
        };
        finish("Fetch", started, result)
    }

    type SubscribeStream = SubscribeStream;

    // Served by `consume_http` in the running broker; kept for the trait.
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let caller = caller(request.extensions(), &self.broker.quotas);
        let seen = match access(request.extensions()) {
            Ok(access) => access.revision(),
            Err(e) => return finish("Subscribe", started, Err(e)),
        };
        let (access, req) = match authorized(request) {
            Ok(authorized) => authorized,
            Err(e) => return finish("Subscribe", started, Err(e)),
        };
        let recheck = Recheck::new(access, req.clone(), seen);
        let opened = self
            .broker
            .subscribe(req, caller, Delivery::Whole, subscribe_done(started))
            .await;
        match opened {
            Ok(stream) => Ok(Response::new(Rechecked::new(stream, recheck).map(
                subscribe_item as fn(SubscribeItem) -> Result<pb::SubscribeResponse, Status>,
            ))),
            Err(e) => finish("Subscribe", started, Err(e)),
        }
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = match authorized(request) {
            Ok((_, req)) => self.broker.list_offsets(req).await,
            Err(e) => Err(e),
        };
        finish("ListOffsets", started, result)
    }
}
