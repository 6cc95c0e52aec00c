//! `proto/grpc/health/v1/health.proto`, shipped for clients generated from `proto/` alone,
//! says exactly what the health service runneld serves (tonic-health's descriptor) says: the
//! same package, messages, enum and methods, with the same names, numbers and types.

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

fn health_file(set: &FileDescriptorSet) -> FileDescriptorProto {
    let mut file = set
        .file
        .iter()
        .find(|f| f.package() == "grpc.health.v1")
        .cloned()
        .expect("a grpc.health.v1 file");
    // Comments and language options are not part of the wire contract.
    file.source_code_info = None;
    file.options = None;
    file.name = None;
    file
}

#[test]
fn the_shipped_health_proto_matches_the_served_one() {
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let ours = protox::compile(["grpc/health/v1/health.proto"], [&proto])
        .expect("proto/grpc/health/v1/health.proto compiles");
    let served = FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .expect("tonic-health's descriptor decodes");
    let (ours, served) = (health_file(&ours), health_file(&served));
    assert_eq!(ours.message_type, served.message_type);
    assert_eq!(ours.service, served.service);
    assert_eq!(ours.enum_type, served.enum_type);
    assert_eq!(ours.syntax, served.syntax);
}
