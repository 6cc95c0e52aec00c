//! The connection to the broker: one HTTP/2 channel shared by the producer, consumers and
//! admin of a [`Client`](crate::Client), a connect timeout, and [`Backoff`] (exponential with
//! jitter) for every reconnect and retry.
//!
//! tonic's `Channel` re-establishes a broken connection by itself on the next call; what it
//! does not do is wait between attempts or tell "broker down" from "broker slow", so the
//! client's retry loops use [`Backoff`], and a connection failure reads as
//! "broker unreachable at ADDR".

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel_proto::framing::{self, FramedBody, Unframed};
use tonic::body::Body;
use tonic::codegen::{Service as _, http};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use tonic::{Code, Status};

use crate::error::{ClientError, Result};

/// The largest HTTP/2 frame the client accepts, in bytes: HTTP/2's largest, so that a batch
/// the broker sends as one chunk arrives as one frame and is decoded without a copy.
const MAX_FRAME_BYTES: u32 = (1 << 24) - 1;

/// The default HTTP/2 receive window per stream, in bytes: room for several batches in
/// flight, so that the broker seldom splits one at the window's edge.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;

/// The smallest receive window: HTTP/2's initial one.
const MIN_WINDOW_BYTES: u32 = 65_535;

/// The broker's port when an address names none.
pub const DEFAULT_PORT: u16 = 7171;

/// How the client connects to the broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker's gRPC address, `host:port` or a URL (`http://host:port`); without a port,
    /// [`DEFAULT_PORT`].
    pub address: String,
    /// The longest a TCP connect may take.
    pub connect_timeout: Duration,
    /// How many times [`Client::connect`](crate::Client::connect) tries before it reports the
    /// broker unreachable (waiting [`ClientConfig::backoff`] in between). At least 1.
    pub connect_attempts: u32,
    /// The wait between reconnects and retries.
    pub backoff: Backoff,
    /// The largest gRPC message the client accepts, in bytes. Reads return whole batches, so
    /// this must exceed the largest `max_batch_bytes` of the topics read (plus 64 KiB).
    pub max_message_bytes: usize,
    /// The interval of HTTP/2 keep-alive pings, which detect a dead connection that TCP has
    /// not noticed.
    pub keep_alive_interval: Duration,
    /// The HTTP/2 receive window per stream, in bytes (the connection's is twice this): how
    /// much of a subscription's data the broker may send ahead of what the consumer has
    /// taken. Smaller bounds what a consumer that stops reading holds, on both sides, at some
    /// cost in throughput. 65,535 to 1 GiB.
    pub receive_window_bytes: u32,
    /// The client id sent with every call (`runnel-client-id`): the broker applies its
    /// quotas per client id. Printable ASCII, at most 255 bytes; `None` sends none (the
    /// broker's `""`).
    pub client_id: Option<String>,
    /// TLS to the broker; `None` connects in plaintext unless the address is an `https://`
    /// URL (then TLS with the system's CA certificates).
    pub tls: Option<ClientTls>,
    /// Who the client is, for a broker with authentication on: sent with every call in the
    /// `authorization` header. `None` sends none (a client certificate may still identify
    /// the client).
    pub credentials: Option<Credentials>,
}

/// What the client proves its identity with. Never shown: its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (`Basic`); use over TLS, or on loopback only.
    Password {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A bearer token made by the broker (`rnl_…`).
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The `authorization` header value, marked sensitive (HTTP/2 never indexes it).
    fn header(&self) -> Result<http::HeaderValue> {
        use base64::Engine as _;
        let value = match self {
            Credentials::Password { user, password } => {
                if user.contains(':') {
                    return Err(ClientError::Config(format!(
                        "credentials: user {user:?} must not contain ':'"
                    )));
                }
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {pair}")
            }
            Credentials::Token(token) => format!("Bearer {token}"),
        };
        let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
            ClientError::Config("credentials: the token holds characters a header cannot".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// How the client checks the broker's certificate, and the certificate it presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM) that sign the broker's certificate; `None` trusts the system's.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain (PEM), for a broker that requires mutual TLS; with
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry; `None` takes the address's host.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// tonic's TLS config: the CA, the identity, the server name, HTTP/2 by ALPN.
    fn tonic_config(&self) -> Result<ClientTlsConfig> {
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| ClientError::Config(format!("tls {what} {}: {e}", path.display())))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_file {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("ca_file", ca)?)),
            None => config.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(read("cert_file", cert)?, read("key_file", key)?);
                config = config.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Config(
                    "tls: a client certificate needs both cert_file and key_file".into(),
                ));
            }
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            address: format!("127.0.0.1:{DEFAULT_PORT}"),
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 3,
            backoff: Backoff::default(),
            max_message_bytes: 64 << 20,
            keep_alive_interval: Duration::from_secs(10),
            receive_window_bytes: STREAM_WINDOW_BYTES,
            client_id: None,
            tls: None,
            credentials: None,
        }
    }
}

impl ClientConfig {
    /// The default configuration for a broker at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.connect_attempts == 0 {
            return Err(ClientError::Config(
                "connect_attempts must be at least 1".into(),
            ));
        }
        if self.max_message_bytes < 1 << 20 {
            return Err(ClientError::Config(format!(
                "max_message_bytes {} is below 1 MiB",
                self.max_message_bytes
            )));
        }
        if !(MIN_WINDOW_BYTES..=1 << 30).contains(&self.receive_window_bytes) {
            return Err(ClientError::Config(format!(
                "receive_window_bytes {} is outside [{MIN_WINDOW_BYTES}, {}]",
                self.receive_window_bytes,
                1 << 30
            )));
        }
        self.headers()?;
        self.backoff.validate()
    }

    /// The headers sent with every call: the client id and the credentials.
    fn headers(&self) -> Result<CallHeaders> {
        let client_id = match &self.client_id {
            None => None,
            Some(id) => {
                runnel_proto::check_client_id(id.as_bytes())
                    .map_err(|why| ClientError::Config(format!("client_id {id:?} {why}")))?;
                Some(
                    http::HeaderValue::from_str(id)
                        .map_err(|e| ClientError::Config(format!("client_id {id:?}: {e}")))?,
                )
            }
        };
        let authorization = self
            .credentials
            .as_ref()
            .map(Credentials::header)
            .transpose()?;
        Ok(CallHeaders {
            client_id,
            authorization,
        })
    }

    fn url(&self) -> String {
        let url = if self.address.contains("://") {
            self.address.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.address)
        } else {
            format!("http://{}", self.address)
        };
        // A URL without a port would mean the scheme's (80), never a broker's.
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.port().is_none() => match (uri.scheme_str(), uri.host()) {
                (Some(scheme), Some(host)) => format!("{scheme}://{host}:{DEFAULT_PORT}"),
                _ => url,
            },
            _ => url,
        }
    }
}

/// Exponential backoff with jitter: attempt `n` (from 0) waits a random time between half and
/// all of `min(max, initial * multiplier^n)`, so that many clients retrying together spread
/// out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry (before jitter).
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The growth factor per attempt, at least 1.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Equal jitter: half fixed, half random, so a retry never comes at once.
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The wait before jitter for retry number `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    fn validate(&self) -> Result<()> {
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(ClientError::Config(format!(
                "backoff.multiplier {} must be a finite number of at least 1",
                self.multiplier
            )));
        }
        if self.max < self.initial {
            return Err(ClientError::Config(format!(
                "backoff.max {:?} is below backoff.initial {:?}",
                self.max, self.initial
            )));
        }
        Ok(())
    }
}

/// The shared connection: the channel and the configuration it was made with.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) config: ClientConfig,
    pub(crate) channel: Transport,
}

/// The headers of every call.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallHeaders {
    /// [`ClientConfig::client_id`].
    client_id: Option<http::HeaderValue>,
    /// [`ClientConfig::credentials`] (its `Debug` shows "Sensitive").
    authorization: Option<http::HeaderValue>,
}

/// The channel to the broker, naming the client id ([`ClientConfig::client_id`]) and the
/// credentials ([`ClientConfig::credentials`]) on every call.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    channel: Channel,
    headers: CallHeaders,
}

impl Transport {
    /// `channel`, sending `headers` with every call.
    pub(crate) fn new(channel: Channel, headers: CallHeaders) -> Self {
        Transport { channel, headers }
    }
}

impl tonic::codegen::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(id) = &self.headers.client_id {
            request
                .headers_mut()
                .insert(runnel_proto::CLIENT_ID_METADATA_KEY, id.clone());
        }
        if let Some(authorization) = &self.headers.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        self.channel.call(request)
    }
}

/// The request body of a call that sends the one message `m` (holding no large `bytes`).
pub(crate) fn one_message(m: &impl prost::Message) -> Body {
    let message = framing::framed(m);
    Body::new(FramedBody::request(tokio_stream::once(Ok::<_, Status>(
        message,
    ))))
}

/// Starts the call of `path` (`/package.Service/Method`) on `channel` with `body`, requests
/// framed by [`runnel_proto::framing`], and reads its answers as they arrived in HTTP/2's
/// frames, each of at most `max_message_bytes`: the calls whose messages carry record
/// batches bypass tonic's codecs, which copy every message once more. The bytes on the wire
/// are those tonic would send and receive.
pub(crate) async fn framed_call<T>(
    channel: &mut Transport,
    path: &'static str,
    body: Body,
    max_message_bytes: usize,
) -> std::result::Result<Unframed<Body, T>, Status> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(http::Uri::from_static(path))
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .map_err(|e| Status::internal(format!("building the request of {path}: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    // A call refused at once answers with its status in the headers (trailers only).
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "{path} answered HTTP status {}",
            response.status()
        )));
    }
    Ok(Unframed::new(response.into_body(), max_message_bytes))
}

impl Connection {
    /// Connects, trying `connect_attempts` times with backoff.
    pub(crate) async fn connect(config: ClientConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let endpoint = Endpoint::from_shared(config.url())
            .map_err(|e| ClientError::Config(format!("address {:?}: {e}", config.address)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(config.receive_window_bytes)
            .initial_connection_window_size(config.receive_window_bytes.saturating_mul(2))
            .http2_keep_alive_interval(config.keep_alive_interval)
            .keep_alive_timeout(config.keep_alive_interval.max(Duration::from_secs(1)))
            .keep_alive_while_idle(true);
        let tls = match &config.tls {
            Some(tls) => Some(tls.tonic_config()?),
            None if config.url().starts_with("https://") => {
                Some(ClientTlsConfig::new().with_native_roots())
            }
            None => None,
        };
        let endpoint = match tls {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::Config(format!("tls: {e}")))?,
            None => endpoint,
        };
        let mut attempt = 0;
        loop {
            match endpoint.connect().await {
                Ok(channel) => {
                    let channel = Transport::new(channel, config.headers()?);
                    return Ok(Arc::new(Self { config, channel }));
                }
                Err(e) => {
                    attempt += 1;
                    if attempt >= config.connect_attempts {
                        return Err(ClientError::Unreachable {
                            addr: config.address.clone(),
                            source: Arc::new(e),
                        });
                    }
                    tracing::debug!(addr = %config.address, error = %e, attempt, "connect failed, retrying");
                    tokio::time::sleep(config.backoff.delay(attempt - 1)).await;
                }
            }
        }
    }

    /// Turns a failed call's status into a [`ClientError`], naming the address when the
    /// connection could not be made.
    pub(crate) fn error(&self, status: tonic::Status) -> ClientError {
        let e = ClientError::from_status(&status);
        match e {
            ClientError::Transport {
                status: tonic::Code::Unavailable,
                ..
            } if looks_like_connect_failure(status.message()) => ClientError::Unreachable {
                addr: self.config.address.clone(),
                source: Arc::new(status),
            },
            e => e,
        }
    }

    /// Runs `call` until it succeeds, fails with an error that is not a transport failure, or
    /// has been tried `1 + retries` times, waiting with backoff in between. For calls that are
    /// safe to repeat.
    pub(crate) async fn retry<T, F, Fut>(&self, retries: u32, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(status) => {
                    let e = self.error(status);
                    let transport = matches!(
                        e,
                        ClientError::Transport { .. } | ClientError::Unreachable { .. }
                    );
                    if !transport || attempt >= retries {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, "call failed, retrying");
                    tokio::time::sleep(self.config.backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

fn looks_like_connect_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("connect") || m.contains("dns") || m.contains("refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_means_the_brokers_default_port() {
        let url = |a: &str| ClientConfig::new(a).url();
        assert_eq!(url("localhost"), "http://localhost:7171");
        assert_eq!(url("10.0.0.5:9000"), "http://10.0.0.5:9000");
        assert_eq!(url("http://broker"), "http://broker:7171");
        assert_eq!(url("https://broker:443"), "https://broker:443");
        assert_eq!(url("[::1]"), "http://[::1]:7171");
        assert_eq!(url("[::1]:7000"), "http://[::1]:7000");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(1000), Duration::from_secs(1));
        for attempt in 0..10 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d <= b.ceiling(attempt));
                assert!(d >= b.ceiling(attempt) / 2);
            }
        }
    }

    #[test]
    fn config_validation() {
        assert!(ClientConfig::default().validate().is_ok());
        let bad = ClientConfig {
            connect_attempts: 0,
            ..ClientConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ClientError::Config(_))));
        let bad = ClientConfig {
            backoff: Backoff {
                multiplier: 0.5,
                ..Backoff::default()
            },
            ..ClientConfig::default()
        };
        assert!(bad.validate().is_err());
        for window in [0, 65_534, (1 << 30) + 1] {
            let bad = ClientConfig {
                receive_window_bytes: window,
                ..ClientConfig::default()
            };
            let e = bad.validate().expect_err("window out of range").to_string();
            assert!(e.contains("receive_window_bytes"), "{e}");
        }
        assert_eq!(ClientConfig::new("h:1").url(), "http://h:1");
        assert_eq!(ClientConfig::new("http://h:1").url(), "http://h:1");
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_named() {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = ClientConfig {
            connect_attempts: 2,
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
                multiplier: 2.0,
            },
            ..ClientConfig::new(addr.to_string())
        };
        let err = Connection::connect(config)
            .await
            .expect_err("nothing listens");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("broker unreachable at {addr}")),
            "{text}"
        );
        assert!(err.is_retriable());
    }
}
