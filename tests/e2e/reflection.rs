//! What a stock gRPC tool (grpcurl) sees: server reflection v1 and v1alpha list every
//! service, describe every method of the Runnel services and the health service, and the
//! health check answers.

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tokio_stream::StreamExt as _;
use tonic_reflection::pb::{v1, v1alpha};

use crate::harness::*;

/// Every `package.Service/Method` of a descriptor set.
fn methods(files: &[FileDescriptorProto]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        for s in &f.service {
            for m in &s.method {
                out.push(format!("{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn reflection_lists_and_describes_every_method() {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    let b = Broker::start().await;
    let mut client = ServerReflectionClient::new(b.channel());
    let ask = |m| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let services = [
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
        "grpc.health.v1.Health",
    ];
    let mut requests = vec![ask(MessageRequest::ListServices(String::new()))];
    requests.extend(
        services
            .iter()
            .map(|s| ask(MessageRequest::FileContainingSymbol((*s).into()))),
    );
    let mut responses = within(client.server_reflection_info(tokio_stream::iter(requests)))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = within(responses.next())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected the service list");
    };
    let mut listed: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "runnel.v1.AdminService",
            "runnel.v1.ConsumeService",
            "runnel.v1.GroupService",
            "runnel.v1.ProduceService",
        ]
    );

    let mut described = Vec::new();
    for service in services {
        let Some(MessageResponse::FileDescriptorResponse(r)) = within(responses.next())
            .await
            .unwrap()
            .unwrap()
            .message_response
        else {
            panic!("expected descriptors for {service}");
        };
        for bytes in r.file_descriptor_proto {
            described.push(FileDescriptorProto::decode(bytes.as_slice()).unwrap());
        }
    }
    let got = methods(&described);
    let expected = methods(
        &FileDescriptorSet::decode(runnel_proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .file,
    );
    for m in &expected {
        assert!(got.contains(m), "reflection does not describe {m}");
    }
    assert!(
        got.contains(&"grpc.health.v1.Health/Check".to_owned()),
        "{got:?}"
    );
    assert_eq!(expected.len(), 20, "{expected:?}");

    // The comments travel too, so `grpcurl describe` documents the protocol.
    let produce = described
        .iter()
        .find(|f| f.service.iter().any(|s| s.name() == "ProduceService"))
        .unwrap();
    assert!(produce.source_code_info.is_some());
}

#[tokio::test]
async fn reflection_v1alpha_serves_the_same_services() {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;

    let b = Broker::start().await;
    let mut client = ServerReflectionClient::new(b.channel());
    let requests = vec![
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "runnel.v1.ConsumeService.Subscribe".into(),
            )),
        },
    ];
    let mut responses = within(client.server_reflection_info(tokio_stream::iter(requests)))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = within(responses.next())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected the service list");
    };
    let listed: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.iter().any(|l| l == s), "{s} not in {listed:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(r)) = within(responses.next())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected descriptors");
    };
    assert!(!r.file_descriptor_proto.is_empty());
}
