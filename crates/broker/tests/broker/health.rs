//! The standard health service and server reflection (v1 and v1alpha), as a stock gRPC
//! tool uses them.

use runnel_test_support::prelude::*;
use runnel_test_support::reflection::{SERVICES, reflect_v1, reflect_v1alpha};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

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
    let b = TestBroker::start().await;
    let symbols = [
        "runnel.v1.ProduceService",
        "grpc.health.v1.Health",
        "runnel.v1.FetchRequest",
    ];
    let r = reflect_v1(&b, &symbols).await;
    assert_eq!(r.services, SERVICES);
    assert_eq!(r.files.len(), 3);
    for files in r.files {
        assert!(!files.is_empty());
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services_too() {
    let b = TestBroker::start().await;
    let names = reflect_v1alpha(&b, &[]).await.services;
    assert!(
        names.iter().any(|n| n == "runnel.v1.ConsumeService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}
