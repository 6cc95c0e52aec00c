//! The standard health service and server reflection (v1 and v1alpha), as a stock gRPC
//! tool uses them.

use tokio_stream::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use runnel_test_support::prelude::*;

#[tokio::test]
async fn health_reports_serving_for_the_broker_and_each_service() {
    let b = TestBroker::start().await;
    let mut health = HealthClient::new(b.channel());
    for service in [
        "",
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
    ] {
        let r = within(health.check(HealthCheckRequest {
            service: service.into(),
        }))
        .await
        .unwrap()
        .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_every_service() {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let b = TestBroker::start().await;
    let mut client = ServerReflectionClient::new(b.channel());
    let ask = |m: MessageRequest| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "runnel.v1.ProduceService".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "grpc.health.v1.Health".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "runnel.v1.FetchRequest".into(),
        )),
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
        panic!("expected a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
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
    for _ in 0..3 {
        match within(responses.next())
            .await
            .unwrap()
            .unwrap()
            .message_response
        {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty());
            }
            other => panic!("expected file descriptors, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services_too() {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let b = TestBroker::start().await;
    let mut client = ServerReflectionClient::new(b.channel());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = within(client.server_reflection_info(tokio_stream::iter(vec![request])))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = within(responses.next())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "runnel.v1.ConsumeService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}
