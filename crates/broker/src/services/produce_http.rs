//! `ProduceStream` read from the HTTP/2 frames its requests arrived in, so that a batch that
//! came in one frame is stored as a slice of that frame: tonic's decoder copies every data
//! frame into one buffer before it decodes a message, a second user-space copy of every
//! batch after the socket's (docs/benchmarks.md, "Broker produce path"). The requests are
//! decoded with tonic's checks, statuses and messages ([`Unframed::request`]), the answers
//! go out framed as tonic would frame them, and the call is the generated service's code
//! ([`produce_stream`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use runnel_proto::framing::{Framed, FramedBody, Unframed, framed};
use runnel_proto::pb::{self, produce_service_server::ProduceServiceServer};
use tokio_stream::StreamExt as _;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use super::grpc_response;
use super::produce::{Produce, produce_stream};
use crate::broker::Broker;

/// The HTTP/2 path of `runnel.v1.ProduceService/ProduceStream`.
pub(crate) const PRODUCE_STREAM_PATH: &str = "/runnel.v1.ProduceService/ProduceStream";

/// `runnel.v1.ProduceService`: the generated service, with `ProduceStream` answered here.
#[derive(Clone)]
pub struct ProduceRoutes {
    generated: ProduceServiceServer<Produce>,
    broker: Arc<Broker>,
    max_request_bytes: usize,
}

impl ProduceRoutes {
    pub(crate) fn new(broker: Arc<Broker>, max_request_bytes: usize) -> Self {
        ProduceRoutes {
            generated: ProduceServiceServer::new(Produce::new(broker.clone()))
                .max_decoding_message_size(max_request_bytes),
            broker,
            max_request_bytes,
        }
    }
}

impl NamedService for ProduceRoutes {
    const NAME: &'static str = <ProduceServiceServer<Produce> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for ProduceRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != PRODUCE_STREAM_PATH {
            return Box::pin(self.generated.call(req));
        }
        let response = serve_stream(self.broker.clone(), req, self.max_request_bytes);
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// Serves one `ProduceStream` call.
fn serve_stream(
    broker: Arc<Broker>,
    req: http::Request<Body>,
    max_request_bytes: usize,
) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    let requests = Unframed::<Body, pb::ProduceRequest>::request(body, max_request_bytes);
    match produce_stream(broker, &parts.extensions, requests) {
        Ok(answers) => grpc_response(FramedBody::response(
            Framed::new(),
            Some(answers.map(|answer| answer.map(|a| framed(&a)))),
        )),
        Err(status) => status.into_http(),
    }
}
