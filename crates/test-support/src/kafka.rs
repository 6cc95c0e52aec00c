//! A minimal Kafka protocol client for the tests of the Kafka listener: requests encoded and
//! responses decoded by `kafka-protocol`, one at a time on one connection, and raw frames for
//! the tests of bad input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to a Kafka listener.
#[derive(Debug)]
pub struct KafkaConn {
    socket: TcpStream,
    next_id: i32,
}

impl KafkaConn {
    /// Connects to `addr`.
    ///
    /// # Panics
    ///
    /// If it cannot connect.
    pub async fn connect(addr: SocketAddr) -> Self {
        let socket = TcpStream::connect(addr)
            .await
            .expect("connect to the Kafka listener");
        socket.set_nodelay(true).expect("nodelay");
        KafkaConn { socket, next_id: 1 }
    }

    /// Sends `request` as `api` version `version` and returns the response.
    ///
    /// # Panics
    ///
    /// If the connection closes or the response does not decode.
    pub async fn call(&mut self, api: ApiKey, version: i16, request: RequestKind) -> ResponseKind {
        let frame = self.frame(api, version, &request);
        let response = self
            .raw(&frame)
            .await
            .expect("a response, not a closed connection");
        decode_response(api, version, response)
    }

    /// Sends `request` as `api` version `version`: the response, or `None` if the broker
    /// closed the connection instead.
    ///
    /// # Panics
    ///
    /// If the response does not decode.
    pub async fn try_call(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Option<ResponseKind> {
        let frame = self.frame(api, version, &request);
        let response = self.raw(&frame).await?;
        Some(decode_response(api, version, response))
    }

    /// Authenticates with SASL/PLAIN (SaslHandshake v1, SaslAuthenticate v2): the
    /// authentication's error code, or `None` if the broker closed the connection.
    pub async fn sasl_plain(&mut self, user: &str, password: &str) -> Option<i16> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str("PLAIN");
        match self
            .try_call(
                ApiKey::SaslHandshake,
                1,
                RequestKind::SaslHandshake(handshake),
            )
            .await?
        {
            ResponseKind::SaslHandshake(r) if r.error_code != 0 => return Some(r.error_code),
            ResponseKind::SaslHandshake(_) => {}
            other => panic!("{other:?}"),
        }
        let mut auth = SaslAuthenticateRequest::default();
        auth.auth_bytes = Bytes::from(format!("\0{user}\0{password}"));
        match self
            .try_call(
                ApiKey::SaslAuthenticate,
                2,
                RequestKind::SaslAuthenticate(auth),
            )
            .await?
        {
            ResponseKind::SaslAuthenticate(r) => Some(r.error_code),
            other => panic!("{other:?}"),
        }
    }

    /// Sends `request` and expects no response (a produce with acks 0): a later call is
    /// answered first.
    pub async fn send_only(&mut self, api: ApiKey, version: i16, request: RequestKind) {
        let frame = self.frame(api, version, &request);
        self.socket.write_all(&frame).await.expect("write");
    }

    fn frame(&mut self, api: ApiKey, version: i16, request: &RequestKind) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = self.next_id;
        header.client_id = Some(StrBytes::from_static_str("runnel-tests"));
        self.next_id += 1;
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .expect("encode the header");
        request
            .encode(&mut body, version)
            .expect("encode the request");
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        frame.freeze()
    }

    /// Writes `bytes` as they are and reads one size-prefixed response: `None` if the broker
    /// closed the connection instead.
    pub async fn raw(&mut self, bytes: &[u8]) -> Option<Bytes> {
        if self.socket.write_all(bytes).await.is_err() {
            return None;
        }
        let read = async {
            let mut size = [0u8; 4];
            self.socket.read_exact(&mut size).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
            self.socket.read_exact(&mut body).await.ok()?;
            Some(Bytes::from(body))
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("an answer or a close within 30 s")
    }
}

/// Decodes a response frame (header and body) of `api` at `version`.
///
/// # Panics
///
/// If it does not decode.
pub fn decode_response(api: ApiKey, version: i16, mut frame: Bytes) -> ResponseKind {
    ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .expect("a response header");
    let r = ResponseKind::decode(api, &mut frame, version).expect("a response body");
    assert!(!frame.has_remaining(), "{api:?}: bytes after the response");
    r
}
