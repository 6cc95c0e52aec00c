//! Authentication on the Kafka listener: SASL/PLAIN (RFC 4616) with Runnel's users and
//! tokens, or the name in a verified client certificate (mutual TLS), through the same
//! [`Auth::authenticate`](crate::auth::Auth::authenticate) as every gRPC call.
//!
//! While authentication is on, a connection may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate until it has authenticated (a client certificate authenticates it at
//! once); anything else closes it, as Kafka closes a SASL listener's connection. A refused
//! SaslAuthenticate is answered with `SASL_AUTHENTICATION_FAILED`, then the connection
//! closes. Before each request the caller is checked again once users, tokens or ACLs
//! changed (`Access::revalidate`): a deleted user, a changed password or an expired token
//! closes the connection. Passwords travel in clear inside SASL/PLAIN: serve the listener
//! with TLS (`[tls]`) wherever the network is not trusted.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::context::{Context, Session};
use crate::auth::{Access, Authenticated, Credentials, Proof};
use crate::clock::now_ms;

/// The only mechanism served.
const PLAIN: &str = "PLAIN";

/// What the access of a Kafka connection's calls is named in audit lines.
const CALL: &str = "kafka";

/// A new connection's session: authenticated from the start while authentication is off, or
/// by its verified client certificate.
pub(super) async fn open(
    cx: &Context,
    addr: Option<SocketAddr>,
    certificate: Option<Arc<str>>,
) -> Session {
    let ip = addr.map(|a| a.ip());
    let caller = if !cx.auth.enabled() {
        Some(Authenticated::anonymous())
    } else if let Some(name) = &certificate {
        cx.auth
            .authenticate(Credentials::Certificate(name), ip)
            .await
            .ok()
    } else {
        None
    };
    let access = caller.map(|c| {
        let access = Access::new(cx.auth.clone(), c, ip, CALL);
        let seen = access.revision();
        (access, seen)
    });
    Session {
        addr,
        access,
        handshaken: false,
        closing: None,
    }
}

/// The caller of a request of `api`, once the session may make it.
///
/// # Errors
/// Why the connection closes: a request other than ApiVersions and SASL's before
/// authentication, a SaslAuthenticate before a handshake, credentials that no longer hold.
pub(super) fn gate(session: &mut Session, api: ApiKey) -> Result<Option<Access>, String> {
    match api {
        ApiKey::ApiVersions | ApiKey::SaslHandshake => return Ok(None),
        ApiKey::SaslAuthenticate if session.handshaken => return Ok(None),
        ApiKey::SaslAuthenticate => return Err("SaslAuthenticate before SaslHandshake".into()),
        _ => {}
    }
    let Some((access, seen)) = session.access.as_mut() else {
        return Err(format!(
            "{api:?} before SASL authentication: this listener requires SASL/PLAIN"
        ));
    };
    access
        .revalidate(seen)
        .map_err(|e| format!("credentials no longer valid: {}", e.message))?;
    Ok(Some(access.clone()))
}

pub(super) fn handshake(
    cx: &Context,
    session: &mut Session,
    r: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut response = SaslHandshakeResponse::default();
    if !cx.auth.enabled() {
        response.error_code = K::UnsupportedSaslMechanism.code();
        return response;
    }
    response.mechanisms = vec![StrBytes::from_static_str(PLAIN)];
    if r.mechanism.as_str() == PLAIN {
        session.handshaken = true;
    } else {
        response.error_code = K::UnsupportedSaslMechanism.code();
    }
    response
}

/// SaslAuthenticate with PLAIN's message; `Err` with the answer to send before closing the
/// connection when it is refused.
pub(super) async fn authenticate(
    cx: &Context,
    session: &mut Session,
    r: SaslAuthenticateRequest,
) -> Result<SaslAuthenticateResponse, SaslAuthenticateResponse> {
    let refused = |message: String| {
        let mut response = SaslAuthenticateResponse::default();
        response.error_code = K::SaslAuthenticationFailed.code();
        response.error_message = Some(StrBytes::from_string(message));
        response
    };
    let Some((authzid, user, password)) = plain(&r.auth_bytes) else {
        return Err(refused(
            "a SASL/PLAIN message is [authzid] NUL user NUL password, in UTF-8".into(),
        ));
    };
    if !authzid.is_empty() && authzid != user {
        return Err(refused(
            "acting for another user (an authorization id) is not supported".into(),
        ));
    }
    // A token is sent as the password, with its user's name.
    let credentials = if crate::auth::secrets::split_token(password).is_some() {
        Credentials::Token(password)
    } else {
        Credentials::Password { user, password }
    };
    let ip = session.addr.map(|a| a.ip());
    let caller = cx
        .auth
        .authenticate(credentials, ip)
        .await
        .map_err(|e| refused(e.message))?;
    if caller.principal != crate::auth::Principal::user(user) {
        return Err(refused(
            "the user name or password is wrong: a token is sent with its user's name".into(),
        ));
    }
    let mut response = SaslAuthenticateResponse::default();
    if let Proof::Token { expires_ms, .. } = &caller.proof
        && *expires_ms != 0
    {
        response.session_lifetime_ms = (*expires_ms - now_ms()).max(1);
    }
    let access = Access::new(cx.auth.clone(), caller, ip, CALL);
    let seen = access.revision();
    session.access = Some((access, seen));
    Ok(response)
}

/// PLAIN's message: authorization id, user, password.
fn plain(bytes: &[u8]) -> Option<(&str, &str, &str)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split('\0');
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((authzid, user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_split_into_three_parts() {
        assert_eq!(plain(b"\0alice\0secret"), Some(("", "alice", "secret")));
        assert_eq!(plain(b"alice\0alice\0s"), Some(("alice", "alice", "s")));
        assert_eq!(plain(b"alice\0secret"), None);
        assert_eq!(plain(b"\0\0secret"), None);
        assert_eq!(plain(b"\0a\0b\0c"), None);
        assert_eq!(plain(b"\0a\0\xff"), None);
    }
}
