//! The gRPC front end: the services of `runnel.v1`, each a thin adapter from protobuf
//! requests to calls of the domain ([`crate::broker::Broker`]) and from its results and
//! errors back to protobuf responses and statuses ([`status`], the one place errors become
//! statuses).

pub mod access;
pub mod admin;
mod by_hand;
pub mod caller;
pub mod consume;
pub mod consume_http;
mod gate;
pub mod groups;
pub mod produce;
pub mod produce_http;
pub mod router;
pub mod security;
pub mod share;
pub mod status;

use std::time::Instant;

use runnel_proto::framing::FramedBody;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Response, Status};

use crate::error::RpcError;
use crate::metrics;

/// A `200` gRPC response with `body`, for the calls answered without tonic's encoder
/// (`consume_http`, `produce_http`).
pub(crate) fn grpc_response<S>(body: FramedBody<S>) -> http::Response<Body>
where
    FramedBody<S>: http_body::Body<Data = bytes::Bytes, Error = Status> + Send + 'static,
{
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Ends a unary RPC: counts it and turns an error into its status.
pub(crate) fn finish<T>(
    rpc: &'static str,
    started: Instant,
    result: Result<T, RpcError>,
) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(e) => e.grpc_code(),
    };
    rpc_done(rpc, code, started);
    result.map(Response::new).map_err(|e| e.status())
}

/// Counts one answered RPC, labelled with its status code, and its latency.
pub(crate) fn rpc_done(rpc: &'static str, code: Code, started: Instant) {
    metrics::rpc_done(rpc, status::code_name(code), started);
}
