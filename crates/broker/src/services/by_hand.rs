//! A generated service with some of its methods answered by hand, at the HTTP/2 level, so
//! that batches skip tonic's copies: `Subscribe` and `Fetch` its encoder (`consume_http`),
//! `ProduceStream` its decoder (`produce_http`). Every other method is the generated
//! service's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::broker::Broker;

/// The answer of a method served by hand.
pub(crate) type Answer = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

/// A method served by hand: the broker, the request, and `limits.max_request_bytes`.
pub(crate) type Method = fn(Arc<Broker>, http::Request<Body>, usize) -> Answer;

/// The generated service `G`, with the methods whose paths `by_hand` knows answered by them.
#[derive(Clone)]
pub struct ByHand<G> {
    generated: G,
    by_hand: fn(&str) -> Option<Method>,
    broker: Arc<Broker>,
    max_request_bytes: usize,
}

impl<G> ByHand<G> {
    pub(crate) fn new(
        generated: G,
        by_hand: fn(&str) -> Option<Method>,
        broker: Arc<Broker>,
        max_request_bytes: usize,
    ) -> Self {
        ByHand {
            generated,
            by_hand,
            broker,
            max_request_bytes,
        }
    }
}

impl<G: NamedService> NamedService for ByHand<G> {
    const NAME: &'static str = G::NAME;
}

impl<G> Service<http::Request<Body>> for ByHand<G>
where
    G: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    G::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match (self.by_hand)(req.uri().path()) {
            Some(method) => {
                let answer = method(self.broker.clone(), req, self.max_request_bytes);
                Box::pin(async move { Ok(answer.await) })
            }
            None => Box::pin(self.generated.call(req)),
        }
    }
}
