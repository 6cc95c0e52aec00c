//! The broker's services while its partitions open: each one is served from the start, but
//! answers `UNAVAILABLE` / `BROKER_STARTING` until the broker over the opened state exists.
//! One server, one set of connections: a client that connects early keeps its connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::error::RpcError;

/// A service `S` that exists once [`Gated::open`] is called; before, every call is answered
/// with `BROKER_STARTING`.
#[derive(Debug)]
pub(crate) struct Gated<S> {
    inner: Arc<OnceLock<S>>,
}

impl<S> Clone for Gated<S> {
    fn clone(&self) -> Self {
        Gated {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Gated<S> {
    /// A service with nothing behind it yet.
    pub(crate) fn closed() -> Self {
        Gated {
            inner: Arc::new(OnceLock::new()),
        }
    }

    /// Puts `service` behind the gate; later calls reach it. A second call changes nothing.
    pub(crate) fn open(&self, service: S) {
        let _ = self.inner.set(service);
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The services behind the gate (tonic's generated servers) are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.inner.get() {
            Some(service) => {
                let mut service = service.clone();
                Box::pin(async move { service.call(req).await })
            }
            None => Box::pin(async { Ok(RpcError::starting().status().into_http()) }),
        }
    }
}
