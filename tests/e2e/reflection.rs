//! What a stock gRPC tool (grpcurl) sees: server reflection v1 and v1alpha list every
//! service, describe every method of the Runnel services and the health service, and the
//! health check answers.

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::harness::*;
use runnel_test_support::reflection::{SERVICES, reflect_v1, reflect_v1alpha};

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
    let b = Broker::start().await;
    let services = [
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
        "runnel.v1.ShareService",
        "runnel.v1.SecurityService",
        "grpc.health.v1.Health",
    ];
    let r = reflect_v1(&b, &services).await;
    assert_eq!(r.services, SERVICES);

    let described: Vec<FileDescriptorProto> = r
        .files
        .iter()
        .flatten()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
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
    assert_eq!(expected.len(), 42, "{expected:?}");

    // The comments travel too, so `grpcurl describe` documents the protocol.
    let produce = described
        .iter()
        .find(|f| f.service.iter().any(|s| s.name() == "ProduceService"))
        .unwrap();
    assert!(produce.source_code_info.is_some());
}

#[tokio::test]
async fn reflection_v1alpha_serves_the_same_services() {
    let b = Broker::start().await;
    let r = reflect_v1alpha(&b, &["runnel.v1.ConsumeService.Subscribe"]).await;
    for s in [
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.ConsumeService",
        "runnel.v1.GroupService",
        "grpc.health.v1.Health",
    ] {
        let listed = &r.services;
        assert!(listed.iter().any(|l| l == s), "{s} not in {listed:?}");
    }
    assert!(!r.files[0].is_empty());
}
