//! `ProduceStream` read from the HTTP/2 frames its requests arrived in, so that a batch that
//! came in one frame is stored as a slice of that frame: tonic's decoder copies every data
//! frame into one buffer before it decodes a message, a second user-space copy of every
//! batch after the socket's (docs/benchmarks.md, "Broker produce path"). The requests are
//! decoded with tonic's checks, statuses and messages ([`Unframed::request`]), the answers
//! go out framed as tonic would frame them, and the call is the generated service's code
//! ([`produce_stream`]).

use std::sync::Arc;

use runnel_proto::framing::{Framed, FramedBody, Unframed, framed};
use runnel_proto::pb::{self, produce_service_server::ProduceServiceServer};
use tokio_stream::StreamExt as _;
use tonic::body::Body;
use tonic::codegen::http;

use super::by_hand::{Answer, ByHand, Method};
use super::grpc_response;
use super::produce::{Produce, produce_stream};
use crate::broker::Broker;

/// The HTTP/2 path of `runnel.v1.ProduceService/ProduceStream`.
pub(crate) const PRODUCE_STREAM_PATH: &str = "/runnel.v1.ProduceService/ProduceStream";

/// `runnel.v1.ProduceService`: the generated service, with `ProduceStream` answered here.
pub type ProduceRoutes = ByHand<ProduceServiceServer<Produce>>;

/// The produce service for `broker`.
pub(crate) fn routes(broker: Arc<Broker>, max_request_bytes: usize) -> ProduceRoutes {
    let generated = ProduceServiceServer::new(Produce::new(broker.clone()))
        .max_decoding_message_size(max_request_bytes);
    ByHand::new(generated, by_hand, broker, max_request_bytes)
}

/// The methods answered here.
fn by_hand(path: &str) -> Option<Method> {
    (path == PRODUCE_STREAM_PATH).then_some(|broker, req, max| {
        Box::pin(std::future::ready(serve_stream(broker, req, max))) as Answer
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intercepted_path_is_the_generated_service_s() {
        let name = <ProduceServiceServer<Produce> as tonic::server::NamedService>::NAME;
        assert_eq!(PRODUCE_STREAM_PATH, format!("/{name}/ProduceStream"));
    }
}
