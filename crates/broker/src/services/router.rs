//! The gRPC server as a whole: the router of every `runnel.v1` service with health and
//! reflection, the HTTP/2 settings of `[server]`, and the health statuses it reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel_proto::pb::{
    admin_service_server::AdminServiceServer, group_service_server::GroupServiceServer,
    security_service_server::SecurityServiceServer, share_service_server::ShareServiceServer,
};
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower_layer::{Identity, Stack};

/// The layers around every route: [`status::ErrorCodeLayer`] outside, [`CallerLayer`] inside.
pub(crate) type Layers = Stack<CallerLayer, Stack<status::ErrorCodeLayer, Identity>>;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::admin::Admin;
use super::caller::CallerLayer;
use super::consume_http::{self, ConsumeRoutes};
use super::gate::Gated;
use super::groups::Groups;
use super::produce_http::{self, ProduceRoutes};
use super::security::Security;
use super::share::Share;
use super::status;
use crate::auth::Auth;
use crate::broker::Broker;
use crate::config::Config;
use crate::error::Error;
use crate::quotas::Quotas;

/// The gRPC service names whose health is reported, besides the overall `""`.
pub const SERVICE_NAMES: [&str; 6] = [
    "runnel.v1.AdminService",
    "runnel.v1.ProduceService",
    "runnel.v1.ConsumeService",
    "runnel.v1.GroupService",
    "runnel.v1.ShareService",
    "runnel.v1.SecurityService",
];

/// The health statuses the server reports (`grpc.health.v1`).
pub(crate) struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// The statuses while the broker opens its partitions: the server as a whole and every
    /// service `NOT_SERVING`.
    pub(crate) async fn starting() -> Self {
        let health = Health {
            reporter: HealthReporter::new(),
        };
        health.not_serving().await;
        health
    }

    /// A health service answering with these statuses.
    fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Every service, and the server as a whole, `SERVING`.
    pub(crate) async fn serving(&self) {
        self.set_all(ServingStatus::Serving).await;
    }

    /// Every service, and the server as a whole, `NOT_SERVING`.
    pub(crate) async fn not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Clears every status, which ends the `Watch` streams: they have been told
    /// `NOT_SERVING`, and would otherwise hold the drain until the deadline.
    pub(crate) async fn clear(mut self) {
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            self.reporter.clear_service_status(name).await;
        }
    }
}

/// The broker's services behind their gates ([`Gated`]): served from the start, reached once
/// [`Services::open`] puts the broker behind them.
pub(crate) struct Services {
    admin: Gated<AdminServiceServer<Admin>>,
    produce: Gated<ProduceRoutes>,
    consume: Gated<ConsumeRoutes>,
    groups: Gated<GroupServiceServer<Groups>>,
    share: Gated<ShareServiceServer<Share>>,
}

impl Services {
    /// Opens the gates: every service now calls `broker`.
    pub(crate) fn open(&self, broker: &Arc<Broker>) {
        let max_request =
            usize::try_from(broker.config.limits.max_request_bytes).unwrap_or(usize::MAX);
        self.admin.open(
            AdminServiceServer::new(Admin::new(broker.clone()))
                .max_decoding_message_size(max_request),
        );
        // The generated services, but `ProduceStream` skips tonic's decoder, and `Subscribe`
        // and `Fetch` its encoder (one copy less each).
        self.produce
            .open(produce_http::routes(broker.clone(), max_request));
        self.consume
            .open(consume_http::routes(broker.clone(), max_request));
        self.groups.open(
            GroupServiceServer::new(Groups::new(broker.clone()))
                .max_decoding_message_size(max_request),
        );
        self.share.open(
            ShareServiceServer::new(Share::new(broker.clone()))
                .max_decoding_message_size(max_request),
        );
    }
}

/// The router of the broker's gRPC services, with health (the statuses of `health`) and
/// reflection (v1 and v1alpha), configured from `[server]` and `[limits]`, every `runnel.v1`
/// call authenticated by `auth` and paced by `quotas` ([`CallerLayer`]). The `runnel.v1`
/// services answer `BROKER_STARTING` until [`Services::open`], but for the security service,
/// which needs no partition.
///
/// # Errors
/// [`Error::Metadata`] if the services' descriptors cannot be read.
pub(crate) fn router(
    config: &Config,
    health: &Health,
    quotas: Arc<Quotas>,
    auth: &Arc<Auth>,
) -> Result<(Router<Layers>, Services), Error> {
    let (v1, v1alpha) = reflection()?;
    let services = Services {
        admin: Gated::closed(),
        produce: Gated::closed(),
        consume: Gated::closed(),
        groups: Gated::closed(),
        share: Gated::closed(),
    };
    let max_request = usize::try_from(config.limits.max_request_bytes).unwrap_or(usize::MAX);
    let security = SecurityServiceServer::new(Security::new(auth.clone()))
        .max_decoding_message_size(max_request);
    let router = server(config, quotas, auth.clone())
        .add_service(health.service())
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(services.admin.clone())
        .add_service(services.produce.clone())
        .add_service(services.consume.clone())
        .add_service(services.groups.clone())
        .add_service(services.share.clone())
        .add_service(security);
    Ok((router, services))
}

/// A server configured from `[server]` and `[limits]`.
fn server(config: &Config, quotas: Arc<Quotas>, auth: Arc<Auth>) -> Server<Layers> {
    let keepalive = config.server.http2_keepalive_interval_ms;
    Server::builder()
        .layer(status::ErrorCodeLayer)
        .layer(CallerLayer::new(quotas, auth))
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams))
        .tcp_nodelay(true)
        // Larger than HTTP/2's defaults (1 MiB windows, 16 KiB frames), so that a producer
        // keeps several 1 MiB batches moving and each arrives in a few frames
        // (docs/benchmarks.md, "Broker").
        .initial_stream_window_size(Some(config.server.http2_stream_window_bytes))
        .initial_connection_window_size(Some(config.server.http2_connection_window_bytes))
        .max_frame_size(Some(config.server.http2_max_frame_bytes))
        .http2_keepalive_interval((keepalive > 0).then(|| Duration::from_millis(keepalive)))
        .http2_keepalive_timeout(Some(Duration::from_millis(
            config.server.http2_keepalive_timeout_ms,
        )))
}

type Reflection<S> = tonic_reflection::server::v1::ServerReflectionServer<S>;
type ReflectionAlpha<S> = tonic_reflection::server::v1alpha::ServerReflectionServer<S>;

/// Server reflection, v1 and v1alpha. Each also describes the other version, so a tool using
/// either one lists (and can describe) every service the broker serves.
fn reflection() -> Result<
    (
        Reflection<impl tonic_reflection::server::v1::ServerReflection>,
        ReflectionAlpha<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ),
    Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let descriptor_error = |e: tonic_reflection::server::Error| Error::Metadata {
        path: PathBuf::from("runnel_proto::FILE_DESCRIPTOR_SET"),
        reason: e.to_string(),
    };
    let v1 = builder().build_v1().map_err(descriptor_error)?;
    let v1alpha = builder().build_v1alpha().map_err(descriptor_error)?;
    Ok((v1, v1alpha))
}
