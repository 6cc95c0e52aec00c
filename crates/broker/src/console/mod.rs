//! The web console: one page served at `/` of the metrics port (`console.html`, embedded in
//! the binary, no script or style from elsewhere), and the JSON API it calls under `/api/`.
//!
//! The API is a front end like the gRPC services: every call goes through the same
//! [`Broker`] methods (topics, fetch, produce, groups), with the client id `runnel-console`
//! for quotas. Errors are JSON, `{"error": message, "code": "UNKNOWN_TOPIC"}`, with the HTTP
//! status of their kind (`docs/operations.md`, "Web console").
//!
//! Unless `console.allow_remote` is set, the console answers only requests whose `Host` is
//! `localhost` or an IP address: a page of another site that rebinds its own name to this
//! address (DNS rebinding) would otherwise reach the API from the user's browser as if it
//! were the console's own page.
//!
//! Keys, values and header values are JSON `{"text": ...}` when they are UTF-8 and
//! `{"base64": ...}` otherwise; `null` for a null key or value. The page shows binary as
//! escaped text and pretty-prints JSON.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use runnel_proto::pb::{self, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::acl::{Operation, Resource, ResourceType};
use crate::auth::{Access, Auth, Authenticated, Presented};
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::RpcError;
use crate::groups::lag;

/// The page, with its script and style inline.
const PAGE: &str = include_str!("console.html");
/// The client id of the console's reads and writes, for quotas.
pub const CLIENT_ID: &str = "runnel-console";
/// Records a message browser request returns at most.
const MAX_MESSAGES: u32 = 500;
/// Bytes one message browser request reads at most.
const MAX_READ_BYTES: u32 = 4 << 20;

/// The console's door to the broker, which exists once the partitions are open.
#[derive(Debug, Default)]
pub struct Console {
    broker: OnceLock<Arc<Broker>>,
    /// Answer requests for any `Host` (`console.allow_remote`).
    any_host: bool,
}

impl Console {
    /// A console waiting for its broker; `any_host` answers requests for any `Host`, else
    /// only for `localhost` and IP addresses.
    pub fn new(any_host: bool) -> Arc<Self> {
        Arc::new(Console {
            broker: OnceLock::new(),
            any_host,
        })
    }

    /// Gives the console its broker; until then the API answers 503.
    pub fn open(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(broker.clone());
    }

    fn broker(&self) -> Result<Arc<Broker>, ApiError> {
        self.broker
            .get()
            .cloned()
            .ok_or_else(|| ApiError(RpcError::starting()))
    }
}

/// The page and the API, over `console`.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/broker", get(broker_info))
        .route("/api/topics", get(list_topics).post(create_topic))
        .route(
            "/api/topics/{topic}",
            get(describe_topic).delete(delete_topic),
        )
        .route(
            "/api/topics/{topic}/messages",
            get(read_messages).post(produce_message),
        )
        .route("/api/groups", get(list_groups))
        .route("/api/groups/{group}", get(describe_group))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            check_host,
        ))
        .with_state(console)
}

/// Refuses a request whose `Host` is a name other than `localhost` (module docs).
async fn check_host(
    State(c): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if c.any_host || local_host(host) {
        return next.run(request).await;
    }
    let message = format!(
        "the console answers requests for localhost or an IP address only, not Host {host:?} \
         (a page of another site may have pointed that name here); set console.allow_remote \
         to serve other names"
    );
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": message, "code": "INVALID_REQUEST" })),
    )
        .into_response()
}

/// The HTTP port's door, around every route of it (metrics, page, API): while auth is on, a
/// request must authenticate with the same credentials as a gRPC call, sent as HTTP
/// authentication (`Basic` or `Bearer`); a browser is asked for a user and password. The
/// metrics need DESCRIBE on the cluster (none with `auth.anonymous_metrics`); the page only
/// authentication; each API call checks its own need in its handler, through the [`Access`]
/// this puts in the request.
/// `with_page`: the console's page is at `/` (else `/` shows the metrics too).
pub fn guard(router: Router, auth: Arc<Auth>, anonymous_metrics: bool, with_page: bool) -> Router {
    let door = Door {
        auth,
        anonymous_metrics,
        with_page,
    };
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(door),
        http_door,
    ))
}

/// What the HTTP port's door knows.
struct Door {
    auth: Arc<Auth>,
    anonymous_metrics: bool,
    with_page: bool,
}

async fn http_door(
    State(door): State<Arc<Door>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let addr = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let path = request.uri().path();
    let call = format!("HTTP {} {path}", request.method());
    let metrics = path == "/metrics" || (path == "/" && !door.with_page);
    let auth = &door.auth;
    if !auth.enabled() || (metrics && door.anonymous_metrics) {
        let access = Access::new(auth.clone(), Authenticated::anonymous(), addr, call);
        request.extensions_mut().insert(access);
        return next.run(request).await;
    }
    let presented = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => Presented::authorization(value.as_bytes()),
        None => Presented::Nothing,
    };
    let access = match auth.authenticate(presented.as_credentials(), addr).await {
        Ok(p) => Access::new(auth.clone(), p, addr, call),
        Err(e) => {
            let mut response = ApiError(e).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"runnel\", charset=\"UTF-8\""),
            );
            return response;
        }
    };
    if metrics && let Err(e) = access.check(Resource::Cluster, Operation::Describe) {
        return ApiError(e).into_response();
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// Whether a `Host` header names `localhost` or an IP address (with or without a port).
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// An error of the API: the broker's error, answered as JSON with its HTTP status.
#[derive(Debug)]
pub struct ApiError(RpcError);

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        ApiError(RpcError::invalid(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::UnknownGroup => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::TopicExists => StatusCode::CONFLICT,
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidTopicName
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidGroupId
            | ErrorCode::OffsetOutOfRange
            | ErrorCode::LimitExceeded
            | ErrorCode::BatchTooLarge => StatusCode::BAD_REQUEST,
            ErrorCode::BrokerStarting | ErrorCode::BrokerShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = self.0.code.as_str_name().trim_start_matches("ERROR_CODE_");
        (
            status,
            Json(json!({ "error": self.0.message, "code": code })),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A one-entry request's per-entry error, as the API's error.
fn inline(e: pb::Error) -> ApiError {
    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
    ApiError(RpcError::new(code, e.message))
}

/// The one result of a one-entry request (`call` names it).
fn only<T>(results: Vec<T>, call: &str) -> Result<T, ApiError> {
    results
        .into_iter()
        .next()
        .ok_or_else(|| ApiError(RpcError::internal(format!("{call} returned no result"))))
}

async fn broker_info(State(c): State<Arc<Console>>, Extension(a): Extension<Access>) -> ApiResult {
    a.check(Resource::Cluster, Operation::Describe)?;
    let b = c.broker()?;
    let info = b.broker_info().await?;
    Ok(Json(json!({
        "version": info.version,
        "start_time_ms": info.start_time_ms,
        "uptime_ms": info.uptime_ms,
        "data_dir": info.data_dir,
        "disk_free_bytes": info.disk_free_bytes,
        "disk_total_bytes": info.disk_total_bytes,
        "listen": b.config.listen.to_string(),
        "topics": b.topics.list().len(),
        "groups": b.list_groups().groups.len(),
    })))
}

async fn list_topics(State(c): State<Arc<Console>>, Extension(a): Extension<Access>) -> ApiResult {
    a.check_some(ResourceType::Topic, Operation::Describe)?;
    let b = c.broker()?;
    let mut topics = Vec::new();
    let listed = b.list_topics();
    for t in listed
        .iter()
        .filter(|t| a.may(Resource::Topic(&t.topic), Operation::Describe))
    {
        // A topic deleted meanwhile is left out.
        if let Ok(d) = b.describe_topic(&t.topic) {
            let sum = |f: fn(&pb::PartitionDescription) -> u64| -> u64 {
                d.partitions.iter().map(f).sum()
            };
            topics.push(json!({
                "topic": d.topic,
                "partitions": d.partition_count,
                "records": sum(|p| p.log_end_offset - p.log_start_offset.min(p.log_end_offset)),
                "size_bytes": sum(|p| p.size_bytes),
            }));
        }
    }
    Ok(Json(json!({ "topics": topics })))
}

/// `POST /api/topics`.
#[derive(Debug, Deserialize)]
struct NewTopic {
    topic: String,
    partitions: u32,
}

async fn create_topic(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Json(new): Json<NewTopic>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    a.check(Resource::Topic(&new.topic), Operation::Create)?;
    let b = c.broker()?;
    let created = b.create_topic(new.topic, new.partitions, None).await?;
    Ok((StatusCode::CREATED, Json(describe(&created))))
}

async fn describe_topic(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Path(topic): Path<String>,
) -> ApiResult {
    a.check(Resource::Topic(&topic), Operation::Describe)?;
    let b = c.broker()?;
    Ok(Json(describe(&b.describe_topic(&topic)?)))
}

fn describe(d: &pb::TopicDescription) -> Value {
    let partitions: Vec<Value> = d
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.log_end_offset,
                "size_bytes": p.size_bytes,
                "segments": p.segment_count,
                "error": p.error.as_ref().map(|e| e.message.clone()),
            })
        })
        .collect();
    json!({
        "topic": d.topic,
        "partition_count": d.partition_count,
        "config": d.config.as_ref().map(config_json),
        "config_overrides": d.config_overrides,
        "partitions": partitions,
    })
}

fn config_json(c: &pb::TopicConfig) -> Value {
    json!({
        "retention_ms": c.retention_ms,
        "retention_bytes": c.retention_bytes,
        "segment_bytes": c.segment_bytes,
        "max_batch_bytes": c.max_batch_bytes,
        "segment_ms": c.segment_ms,
        "durability": c
            .durability
            .and_then(|d| pb::DurabilityPolicy::try_from(d).ok())
            .map(|d| d.as_str_name().trim_start_matches("DURABILITY_POLICY_").to_lowercase()),
        "flush_interval_ms": c.flush_interval_ms,
    })
}

async fn delete_topic(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    a.check(Resource::Topic(&topic), Operation::Delete)?;
    let b = c.broker()?;
    b.delete_topic(topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/topics/{topic}/messages`: from `offset`, or from the first batch at or after
/// `time_ms`, or the last `limit` records without either.
#[derive(Debug, Deserialize)]
struct Browse {
    #[serde(default)]
    partition: u32,
    offset: Option<u64>,
    time_ms: Option<i64>,
    limit: Option<u32>,
}

async fn read_messages(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Path(topic): Path<String>,
    Query(q): Query<Browse>,
) -> ApiResult {
    a.check(Resource::Topic(&topic), Operation::Read)?;
    let b = c.broker()?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_MESSAGES {
        return Err(ApiError::invalid(format!(
            "limit is {limit}; it must be 1 to {MAX_MESSAGES}"
        )));
    }
    let p = b.topics.get(&topic)?.partition(q.partition)?;
    let (start, end) = (p.start_offset(), p.end_offset());
    let from = match (q.offset, q.time_ms) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("set offset or time_ms, not both")),
        (Some(o), None) => o,
        (None, Some(t)) => offset_at(&b, &topic, q.partition, t).await?,
        (None, None) => end.saturating_sub(u64::from(limit)).max(start),
    };
    let req = pb::FetchRequest {
        partitions: vec![pb::FetchPartition {
            topic: topic.clone(),
            partition: q.partition,
            offset: from,
            max_bytes: 0,
        }],
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: MAX_READ_BYTES,
        format: pb::RecordFormat::Records as i32,
    };
    let caller = b.quotas.caller(a.principal().as_str(), CLIENT_ID);
    let fetched = b.fetch(req, &caller).await?;
    let r = only(fetched.results, "fetch")?;
    if let Some(e) = r.error {
        return Err(inline(e));
    }
    let records: Vec<Value> = r
        .records
        .iter()
        .take(limit as usize)
        .map(|rec| {
            let headers: Vec<Value> = rec
                .headers
                .iter()
                .map(|h| json!({ "name": h.key, "value": shown(h.value.as_ref()) }))
                .collect();
            json!({
                "offset": rec.offset,
                "timestamp_ms": rec.timestamp_ms,
                "key": shown(rec.key.as_ref()),
                "value": shown(rec.value.as_ref()),
                "headers": headers,
            })
        })
        .collect();
    Ok(Json(json!({
        "topic": topic,
        "partition": q.partition,
        "from": from,
        "log_start_offset": r.log_start_offset,
        "log_end_offset": r.log_end_offset,
        "records": records,
    })))
}

/// The offset of the first batch at or after `time_ms`.
async fn offset_at(b: &Broker, topic: &str, partition: u32, time_ms: i64) -> Result<u64, ApiError> {
    let req = pb::ListOffsetsRequest {
        queries: vec![pb::OffsetQuery {
            topic: topic.to_owned(),
            partition,
            query: Some(pb::offset_query::Query::TimestampMs(time_ms)),
        }],
    };
    let r = only(b.list_offsets(req).await?.results, "list_offsets")?;
    match r.error {
        Some(e) => Err(inline(e)),
        None => Ok(r.offset),
    }
}

/// Bytes as JSON: `{"text": ...}` for UTF-8, `{"base64": ...}` otherwise, `null` for none.
fn shown(bytes: Option<&Bytes>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => json!({ "text": text }),
            Err(_) => json!({ "base64": BASE64.encode(b) }),
        },
    }
}

/// `POST /api/topics/{topic}/messages`: one record, as text.
#[derive(Debug, Deserialize)]
struct NewMessage {
    /// The partition; without it, the broker picks one by the key (or partition 0).
    partition: Option<u32>,
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: Vec<NewHeader>,
}

#[derive(Debug, Deserialize)]
struct NewHeader {
    name: String,
    value: Option<String>,
}

async fn produce_message(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Path(topic): Path<String>,
    Json(m): Json<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    a.check(Resource::Topic(&topic), Operation::Write)?;
    let b = c.broker()?;
    let key = m.key.map(Bytes::from);
    let partition = match (m.partition, &key) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(0),
    };
    let record = pb::Record {
        offset: 0,
        timestamp_ms: now_ms(),
        key: key.clone(),
        value: m.value.map(Bytes::from),
        headers: m
            .headers
            .into_iter()
            .map(|h| pb::RecordHeader {
                key: h.name,
                value: h.value.map(Bytes::from),
            })
            .collect(),
    };
    let req = pb::ProduceRequest {
        request_id: 0,
        topic: topic.clone(),
        acks: pb::Acks::Written as i32,
        partitions: vec![pb::ProducePartition {
            partition,
            partition_key: if partition.is_none() { key } else { None },
            batches: Vec::new(),
            records: vec![record],
            producer: None,
        }],
    };
    let written = b.produce_write(req).await?;
    let response = b.produce_finish(written).await;
    let result = only(response.results, "produce")?;
    if let Some(e) = result.error {
        return Err(inline(e));
    }
    let offset = result.batches.first().map(|a| a.base_offset);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "topic": topic, "partition": result.partition, "offset": offset })),
    ))
}

async fn list_groups(State(c): State<Arc<Console>>, Extension(a): Extension<Access>) -> ApiResult {
    a.check_some(ResourceType::Group, Operation::Describe)?;
    let b = c.broker()?;
    let groups: Vec<Value> = b
        .list_groups()
        .groups
        .iter()
        .filter(|g| a.may(Resource::Group(&g.group), Operation::Describe))
        .map(|g| {
            json!({
                "group": g.group,
                "state": state_name(g.state),
                "members": g.member_count,
            })
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

fn state_name(state: i32) -> String {
    pb::GroupState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("GROUP_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// A group, with the lag of each partition in records and in seconds (the age of the oldest
/// record not consumed yet).
async fn describe_group(
    State(c): State<Arc<Console>>,
    Extension(a): Extension<Access>,
    Path(group): Path<String>,
) -> ApiResult {
    a.check(Resource::Group(&group), Operation::Describe)?;
    let b = c.broker()?;
    let d = b.describe_group(&group)?;
    let topics = b.topics.clone();
    let parts = d.partitions.clone();
    let ages = crate::tasks::blocking(move || {
        let now = now_ms();
        Ok(parts
            .iter()
            .map(|gp| {
                let lagging = gp.lag.is_some_and(|l| l > 0);
                let p = topics
                    .get(&gp.topic)
                    .and_then(|t| t.partition(gp.partition));
                match (lagging, p, gp.committed_offset) {
                    (true, Ok(p), Some(committed)) => {
                        let position = committed.max(p.start_offset());
                        lag::oldest_timestamp(&p, position)
                            .map(|ts| (now - ts).max(0) as f64 / 1000.0)
                    }
                    (false, _, Some(_)) => Some(0.0),
                    _ => None,
                }
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let partitions: Vec<Value> = d
        .partitions
        .iter()
        .zip(ages)
        .map(|(p, age)| {
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "log_end_offset": p.log_end_offset,
                "lag": p.lag,
                "lag_seconds": age,
                "owner": p.owner,
            })
        })
        .collect();
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.host,
                "topics": m.topics,
            })
        })
        .collect();
    Ok(Json(json!({
        "group": d.group,
        "state": state_name(d.state),
        "generation": d.generation,
        "assignor": d.assignor,
        "members": members,
        "partitions": partitions,
    })))
}

#[cfg(test)]
mod tests {
    use super::local_host;

    #[test]
    fn only_localhost_and_ip_addresses_are_local_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:7172",
            "127.0.0.1:7172",
            "10.0.0.5",
            "[::1]:7172",
            "[::1]",
        ] {
            assert!(local_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:7172",
            "localhost.evil.example",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!local_host(host), "{host}");
        }
    }
}
