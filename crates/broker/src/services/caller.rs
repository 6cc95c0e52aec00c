//! The one door every `runnel.v1` call passes: who is calling, authenticated from the
//! `authorization` header or the client certificate ([`Access`], refused with
//! `UNAUTHENTICATED` here while auth is on), which client it is ([`Caller`], from the
//! `runnel-client-id` header), and the request quota, paid by delaying the call before it is
//! served. Both go on in the request's extensions, where each service finds them: the access
//! to authorize the request ([`super::access::authorized`]), the caller to pay its byte
//! quotas ([`caller`]).
//!
//! Health checks and reflection are not `runnel.v1` calls: they pass untouched.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};

use super::access::Access;
use crate::auth::{Auth, Presented};
use crate::error::RpcError;
use runnel_proto::{CLIENT_ID_METADATA_KEY, check_client_id};

use crate::quotas::{Caller, Quota, Quotas};

/// The prefix of the paths of the broker's own services.
const RUNNEL_PATHS: &str = "/runnel.v1.";

/// The layer that puts [`CallerService`] around the routes.
#[derive(Debug, Clone)]
pub struct CallerLayer {
    quotas: Arc<Quotas>,
    auth: Arc<Auth>,
}

impl CallerLayer {
    /// The layer over `quotas` and `auth`.
    pub(crate) fn new(quotas: Arc<Quotas>, auth: Arc<Auth>) -> Self {
        CallerLayer { quotas, auth }
    }
}

impl<S> tower_layer::Layer<S> for CallerLayer {
    type Service = CallerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerService {
            inner,
            quotas: self.quotas.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// A service that identifies the caller of each `runnel.v1` call and paces it by its request
/// quota ([`CallerLayer`]).
#[derive(Debug, Clone)]
pub struct CallerService<S> {
    inner: S,
    quotas: Arc<Quotas>,
    auth: Arc<Auth>,
}

impl<S, B> Service<http::Request<B>> for CallerService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !req.uri().path().starts_with(RUNNEL_PATHS) {
            return Box::pin(self.inner.call(req));
        }
        let client_id: Arc<str> = match client_id(req.headers()) {
            Ok(id) => Arc::from(id),
            Err(e) => return Box::pin(async move { Ok(e.status().into_http()) }),
        };
        // The ready service is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (quotas, auth) = (self.quotas.clone(), self.auth.clone());
        Box::pin(async move {
            let presented = presented(&auth, &req);
            let access = match authenticate(&auth, presented).await {
                Ok(access) => access,
                Err(e) => return Ok(e.status().into_http()),
            };
            // Quotas are paid by the principal when it has its own, else by the client id.
            let caller = quotas.caller(access.principal().as_str(), &client_id);
            let delay = quotas.charge(&caller, Quota::Requests, 1);
            req.extensions_mut().insert(caller);
            req.extensions_mut().insert(access);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            inner.call(req).await
        })
    }
}

/// What the call `req` presents: credentials (none while auth is off), its address, and the
/// RPC's name.
fn presented<B>(auth: &Auth, req: &http::Request<B>) -> (Presented, Option<IpAddr>, String) {
    let conn = ConnInfo::of(req.extensions());
    let addr = conn.and_then(ConnInfo::remote).map(|a| a.ip());
    let call = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !auth.enabled() {
        return (Presented::Nothing, addr, call);
    }
    let presented = match req.headers().get(http::header::AUTHORIZATION) {
        Some(value) => Presented::authorization(value.as_bytes()),
        None => match conn.and_then(|c| c.certificate.clone()) {
            Some(name) => Presented::Certificate(name),
            None => Presented::Nothing,
        },
    };
    (presented, addr, call)
}

/// Who presents `presented`, checked by `auth`.
///
/// # Errors
/// `UNAUTHENTICATED` for refused credentials.
async fn authenticate(
    auth: &Arc<Auth>,
    (presented, addr, call): (Presented, Option<IpAddr>, String),
) -> Result<Access, RpcError> {
    let caller = auth.authenticate(presented.as_credentials(), addr).await?;
    Ok(Access::new(auth.clone(), caller, addr, call))
}

/// What every request on a connection knows of it, in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The addresses.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The name in the client's verified certificate, with mutual TLS.
    pub certificate: Option<Arc<str>>,
}

impl ConnInfo {
    /// The info of the connection a request came on, if it came on one.
    pub(crate) fn of(extensions: &http::Extensions) -> Option<&ConnInfo> {
        extensions.get::<ConnInfo>()
    }

    /// The client's address.
    pub(crate) fn remote(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }
}

/// The client id a call names, `""` without the header.
///
/// # Errors
/// `INVALID_REQUEST` if it is not printable ASCII or too long ([`check_client_id`]).
fn client_id(headers: &http::HeaderMap) -> Result<&str, RpcError> {
    let Some(value) = headers.get(CLIENT_ID_METADATA_KEY) else {
        return Ok("");
    };
    check_client_id(value.as_bytes())
        .map_err(|why| RpcError::invalid(format!("the {CLIENT_ID_METADATA_KEY} header {why}")))
}

/// The caller of a call that passed [`CallerLayer`]; the anonymous caller otherwise (a
/// service called without the layer).
pub(crate) fn caller(extensions: &http::Extensions, quotas: &Quotas) -> Caller {
    extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| quotas.caller(crate::auth::ANONYMOUS, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            CLIENT_ID_METADATA_KEY,
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        h
    }

    #[test]
    fn client_ids_are_printable_ascii_of_bounded_length() {
        assert_eq!(client_id(&http::HeaderMap::new()).unwrap(), "");
        assert_eq!(client_id(&headers(b"billing v2")).unwrap(), "billing v2");
        let long = client_id(&headers(&[b'a'; 256])).unwrap_err();
        assert!(
            long.message
                .contains("runnel-client-id header is 256 bytes, more than 255"),
            "{}",
            long.message
        );
        let bad = client_id(&headers(b"caf\xc3\xa9")).unwrap_err();
        assert!(bad.message.contains("printable ASCII"), "{}", bad.message);
    }
}
