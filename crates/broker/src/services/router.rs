//! The gRPC server as a whole: the router of every `runnel.v1` service with health and
//! reflection, the HTTP/2 settings of `[server]`, and the health statuses it reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel_proto::pb::{
    admin_service_server::AdminServiceServer, group_service_server::GroupServiceServer,
    produce_service_server::ProduceServiceServer,
};
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::admin::Admin;
use super::consume_http::ConsumeRoutes;
use super::groups::Groups;
use super::produce::Produce;
use crate::broker::Broker;
use crate::error::Error;

/// The gRPC service names whose health is reported, besides the overall `""`.
pub const SERVICE_NAMES: [&str; 4] = [
    "runnel.v1.AdminService",
    "runnel.v1.ProduceService",
    "runnel.v1.ConsumeService",
    "runnel.v1.GroupService",
];

/// The health statuses the server reports (`grpc.health.v1`).
pub(crate) struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Every service, and the server as a whole, `NOT_SERVING`.
    pub(crate) async fn not_serving(&self) {
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
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

/// The router of the broker's gRPC services over `broker`, with health (every service
/// `SERVING`) and reflection (v1 and v1alpha), configured from `[server]` and `[limits]`;
/// and the health statuses, to change at shutdown.
///
/// # Errors
/// [`Error::Metadata`] if the services' descriptors cannot be read.
pub(crate) async fn router(broker: &Arc<Broker>) -> Result<(Router, Health), Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        // Each reflection service also describes the other version, so a tool using either
        // one lists (and can describe) every service the broker serves.
        b.register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
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
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(descriptor_error)?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(descriptor_error)?;

    let config = &broker.config;
    let limits = &config.limits;
    let max_request = usize::try_from(limits.max_request_bytes).unwrap_or(usize::MAX);
    let keepalive = config.server.http2_keepalive_interval_ms;
    let router = Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
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
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AdminServiceServer::new(Admin::new(broker.clone()))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            ProduceServiceServer::new(Produce::new(broker.clone()))
                .max_decoding_message_size(max_request),
        )
        // The generated service, but `Subscribe` and `Fetch` skip tonic's encoder (one copy less).
        .add_service(ConsumeRoutes::new(broker.clone(), max_request))
        .add_service(
            GroupServiceServer::new(Groups::new(broker.clone()))
                .max_decoding_message_size(max_request),
        );
    Ok((router, Health { reporter }))
}
