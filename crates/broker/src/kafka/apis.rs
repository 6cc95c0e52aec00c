//! The APIs the listener serves, with the versions it serves of each (what ApiVersions
//! advertises), and the decoding, dispatch and encoding of one request.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::context::{Context, Session};
use crate::auth::Access;

/// Every API served, with the lowest and highest version served.
pub(crate) const SERVED: [(ApiKey, i16, i16); 22] = [
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
];

fn served(key: ApiKey) -> Option<(i16, i16)> {
    SERVED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

/// A request frame, decoded.
pub(super) enum Decoded {
    /// A request served.
    Request {
        /// Its API.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// Its header.
        header: RequestHeader,
        /// Its body (boxed: some requests are large structs).
        request: Box<RequestKind>,
    },
    /// ApiVersions at a version not served: answered at version 0 with `UNSUPPORTED_VERSION`
    /// and the versions served, as Kafka does, so that the client can retry.
    UnsupportedApiVersions {
        /// The request's correlation id.
        correlation_id: i32,
    },
}

/// Decodes a request frame (header and body).
///
/// # Errors
/// Why the connection must close: a frame shorter than a header, an unknown API key, a
/// version not served (but for ApiVersions), a header or body that does not decode, bytes
/// after the body.
pub(super) fn decode(mut frame: Bytes) -> Result<Decoded, String> {
    if frame.len() < 8 {
        return Err(format!("a request of {} bytes has no header", frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("unknown API key {key}"))?;
    if served(api).is_none_or(|(min, max)| !(min..=max).contains(&version)) {
        if api == ApiKey::ApiVersions {
            return Ok(Decoded::UnsupportedApiVersions { correlation_id });
        }
        return Err(format!("{api:?} version {version} is not served"));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| format!("{api:?} v{version}: header: {e}"))?;
    let request = RequestKind::decode(api, &mut frame, version)
        .map_err(|e| format!("{api:?} v{version}: {e}"))?;
    if frame.has_remaining() {
        return Err(format!(
            "{api:?} v{version}: {} bytes after the request",
            frame.remaining()
        ));
    }
    Ok(Decoded::Request {
        api,
        version,
        header,
        request: Box::new(request),
    })
}

/// Answers one request frame (header and body); `None` when it takes no answer (a produce
/// with acks 0).
///
/// # Errors
/// Why the connection must close: as [`decode`].
pub(super) async fn handle(
    cx: &Context,
    session: &mut Session,
    frame: Bytes,
) -> Result<Option<Bytes>, String> {
    let (api, version, header, request) = match decode(frame)? {
        Decoded::Request {
            api,
            version,
            header,
            request,
        } => (api, version, header, *request),
        Decoded::UnsupportedApiVersions { correlation_id } => {
            let mut response = api_versions();
            response.error_code = ResponseError::UnsupportedVersion.code();
            let response = ResponseKind::ApiVersions(response);
            return encode(ApiKey::ApiVersions, 0, correlation_id, &response).map(Some);
        }
    };
    let access = super::sasl::gate(session, api)?;
    let response = match (request, access) {
        (RequestKind::ApiVersions(_), _) => Some(ResponseKind::ApiVersions(api_versions())),
        (RequestKind::SaslHandshake(r), _) => Some(ResponseKind::SaslHandshake(
            super::sasl::handshake(cx, session, r),
        )),
        (RequestKind::SaslAuthenticate(r), _) => {
            let answer = match super::sasl::authenticate(cx, session, r).await {
                Ok(answer) => answer,
                Err(refusal) => {
                    session.closing = Some("SASL authentication failed".into());
                    refusal
                }
            };
            Some(ResponseKind::SaslAuthenticate(answer))
        }
        (request, Some(access)) => {
            let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
            call(cx, session, &access, client_id, request, version).await?
        }
        (_, None) => return Err(format!("{api:?} without a caller")),
    };
    match response {
        Some(r) => encode(api, version, header.correlation_id, &r).map(Some),
        None => Ok(None),
    }
}

/// Answers a request of an authenticated caller.
async fn call(
    cx: &Context,
    session: &Session,
    access: &Access,
    client_id: &str,
    request: RequestKind,
    version: i16,
) -> Result<Option<ResponseKind>, String> {
    use super::{consumer, fetch, groups, metadata, offsets, produce, topics};
    let caller = cx
        .broker
        .quotas
        .caller(access.principal().as_str(), client_id);
    let peer = session.peer();
    Ok(match request {
        RequestKind::Metadata(r) => Some(ResponseKind::Metadata(
            metadata::metadata(cx, access, r).await,
        )),
        RequestKind::Produce(r) => produce::produce(cx, access, r, &caller)
            .await
            .map(ResponseKind::Produce),
        RequestKind::Fetch(r) => Some(ResponseKind::Fetch(
            fetch::fetch(cx, access, r, &caller).await,
        )),
        RequestKind::ListOffsets(r) => Some(ResponseKind::ListOffsets(
            fetch::list_offsets(cx, access, r).await,
        )),
        RequestKind::InitProducerId(r) => Some(ResponseKind::InitProducerId(
            produce::init_producer_id(cx, access, r).await,
        )),
        RequestKind::CreateTopics(r) => Some(ResponseKind::CreateTopics(
            topics::create_topics(cx, access, r).await,
        )),
        RequestKind::CreatePartitions(r) => Some(ResponseKind::CreatePartitions(
            topics::create_partitions(cx, access, r).await,
        )),
        RequestKind::DescribeConfigs(r) => Some(ResponseKind::DescribeConfigs(
            topics::describe_configs(cx, access, r).await,
        )),
        RequestKind::DeleteTopics(r) => Some(ResponseKind::DeleteTopics(
            topics::delete_topics(cx, access, r, version).await,
        )),
        RequestKind::FindCoordinator(r) => Some(ResponseKind::FindCoordinator(
            groups::find_coordinator(cx, access, r, version),
        )),
        RequestKind::JoinGroup(r) => Some(ResponseKind::JoinGroup(
            groups::join_group(cx, access, &peer, client_id, r).await,
        )),
        RequestKind::SyncGroup(r) => {
            Some(ResponseKind::SyncGroup(groups::sync_group(cx, access, r)))
        }
        RequestKind::Heartbeat(r) => {
            Some(ResponseKind::Heartbeat(groups::heartbeat(cx, access, r)))
        }
        RequestKind::LeaveGroup(r) => Some(ResponseKind::LeaveGroup(groups::leave_group(
            cx, access, r, version,
        ))),
        RequestKind::ListGroups(r) => {
            Some(ResponseKind::ListGroups(groups::list_groups(cx, access, r)))
        }
        RequestKind::DescribeGroups(r) => Some(ResponseKind::DescribeGroups(
            groups::describe_groups(cx, access, r),
        )),
        RequestKind::ConsumerGroupHeartbeat(r) => Some(ResponseKind::ConsumerGroupHeartbeat(
            consumer::heartbeat(cx, access, &peer, client_id, r),
        )),
        RequestKind::OffsetCommit(r) => Some(ResponseKind::OffsetCommit(
            offsets::offset_commit(cx, access, r).await,
        )),
        RequestKind::OffsetFetch(r) => Some(ResponseKind::OffsetFetch(offsets::offset_fetch(
            cx, access, r, version,
        ))),
        other => return Err(format!("{:?} is not served", other)),
    })
}

/// The ApiVersions answer: the APIs served and their versions.
fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = SERVED
        .iter()
        .map(|(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *min;
            v.max_version = *max;
            v
        })
        .collect();
    r
}

/// A response: its header (the request's correlation id) and body, at `version`.
fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut out, api.response_header_version(version))
        .map_err(|e| format!("{api:?} v{version}: response header: {e}"))?;
    response
        .encode(&mut out, version)
        .map_err(|e| format!("{api:?} v{version}: response: {e}"))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// A frame that starts with a served API key and version, then anything.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (0..SERVED.len(), any::<u8>(), vec(any::<u8>(), 0..600)).prop_map(|(i, pick, rest)| {
            let (api, min, max) = SERVED[i];
            let version = min + i16::from(pick) % (max - min + 1);
            let mut f = Vec::with_capacity(rest.len() + 4);
            f.extend_from_slice(&(api as i16).to_be_bytes());
            f.extend_from_slice(&version.to_be_bytes());
            f.extend_from_slice(&rest);
            f
        })
    }

    proptest! {
        #![proptest_config(runnel_fuzz_support::config(
            3_000,
            "src/kafka/apis.proptest-regressions"
        ))]

        /// The request decoder's fuzz target: any bytes after a served API key and version
        /// decode or are refused with a reason, never a panic.
        #[test]
        fn any_request_frame_decodes_or_is_refused(f in frame()) {
            let _ = decode(Bytes::from(f));
        }

        /// The same after a well-formed header: the body decoders see the arbitrary bytes.
        #[test]
        fn any_body_after_a_well_formed_header_decodes_or_is_refused(
            i in 0..SERVED.len(),
            pick in any::<u8>(),
            body in vec(any::<u8>(), 0..600),
        ) {
            let (api, min, max) = SERVED[i];
            let version = min + i16::from(pick) % (max - min + 1);
            let mut header = RequestHeader::default();
            header.request_api_key = api as i16;
            header.request_api_version = version;
            let mut f = bytes::BytesMut::new();
            header.encode(&mut f, api.request_header_version(version)).expect("a header");
            f.extend_from_slice(&body);
            let _ = decode(f.freeze());
        }

        #[test]
        fn any_bytes_decode_or_are_refused(f in vec(any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(f));
        }
    }

    #[test]
    fn what_is_served_is_what_the_codec_knows() {
        for (api, min, max) in SERVED {
            let known = api.valid_versions();
            assert!(known.min <= min && max <= known.max, "{api:?} {min}-{max}");
        }
    }
}
