//! Asking a broker's gRPC reflection services what they serve, as `grpcurl` does.

use tokio_stream::StreamExt as _;

use crate::{Connection, within};

/// Every service a broker serves and its reflection services list, sorted by name.
pub const SERVICES: [&str; 9] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "runnel.v1.AdminService",
    "runnel.v1.ConsumeService",
    "runnel.v1.GroupService",
    "runnel.v1.ProduceService",
    "runnel.v1.SecurityService",
    "runnel.v1.ShareService",
];

/// What a reflection service answered in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reflected {
    /// The services it lists, sorted by name.
    pub services: Vec<String>,
    /// For each symbol asked about, in order: the encoded `FileDescriptorProto`s of the file
    /// that defines it, with its dependencies.
    pub files: Vec<Vec<Vec<u8>>>,
}

/// Defines a function that asks one version of the reflection service; the versions differ
/// only in their generated types.
macro_rules! reflect {
    ($(#[$doc:meta])* $name:ident, $version:ident) => {
        $(#[$doc])*
        ///
        /// # Panics
        ///
        /// If the call fails, an answer is missing or of the wrong kind, or the stream takes
        /// longer than [`crate::PATIENCE`].
        pub async fn $name(b: &Connection, symbols: &[&str]) -> Reflected {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let ask = |m| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            };
            let mut requests = vec![ask(MessageRequest::ListServices(String::new()))];
            for s in symbols {
                requests.push(ask(MessageRequest::FileContainingSymbol((*s).to_owned())));
            }
            let mut client = ServerReflectionClient::new(b.channel());
            let call = client.server_reflection_info(tokio_stream::iter(requests));
            let mut responses = within(call).await.expect("reflection call").into_inner();
            let mut next = async || {
                let answer = within(responses.next()).await.expect("an answer");
                answer.expect("a reflection answer").message_response
            };
            let Some(MessageResponse::ListServicesResponse(list)) = next().await else {
                panic!("expected the service list");
            };
            let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            services.sort();
            let mut files = Vec::new();
            for s in symbols {
                match next().await {
                    Some(MessageResponse::FileDescriptorResponse(r)) => {
                        files.push(r.file_descriptor_proto)
                    }
                    other => panic!("expected file descriptors for {s}, got {other:?}"),
                }
            }
            Reflected { services, files }
        }
    };
}

reflect!(
    /// Asks `grpc.reflection.v1.ServerReflection` for its service list, then for the file
    /// containing each of `symbols`.
    reflect_v1,
    v1
);

reflect!(
    /// Asks `grpc.reflection.v1alpha.ServerReflection` for its service list, then for the
    /// file containing each of `symbols`.
    reflect_v1alpha,
    v1alpha
);
