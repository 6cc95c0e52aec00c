//! The contract that stock gRPC tools see: the descriptor set the broker serves through
//! reflection holds the `runnel.v1` services, and every element of it carries its `.proto`
//! comment, so `grpcurl describe` documents the whole protocol.

use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

// Field numbers in descriptor.proto, which source-code-info paths are made of.
const FILE_MESSAGE_TYPE: i32 = 4;
const FILE_ENUM_TYPE: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED_TYPE: i32 = 3;
const MESSAGE_ENUM_TYPE: i32 = 4;
const MESSAGE_ONEOF_DECL: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(runnel_proto::FILE_DESCRIPTOR_SET)
        .expect("runnel-proto's build script encodes a valid FileDescriptorSet")
}

#[test]
fn reflection_descriptor_documents_every_element_of_the_protocol() {
    let fds = descriptor_set();
    let mut services = Vec::new();
    let mut undocumented = Vec::new();

    for file in fds.file.iter().filter(|f| f.package() == "runnel.v1") {
        let info = file
            .source_code_info
            .as_ref()
            .expect("protox keeps source info, which carries the comments");
        let documented = |path: &[i32]| {
            info.location
                .iter()
                .any(|loc| loc.path == path && !loc.leading_comments().trim().is_empty())
        };
        let mut check = |path: Vec<i32>, name: String| {
            if !documented(&path) {
                undocumented.push(format!("{}: {name}", file.name()));
            }
        };

        for (i, message) in file.message_type.iter().enumerate() {
            check_message(message, vec![FILE_MESSAGE_TYPE, index(i)], "", &mut check);
        }
        for (i, enumeration) in file.enum_type.iter().enumerate() {
            check_enum(enumeration, vec![FILE_ENUM_TYPE, index(i)], "", &mut check);
        }
        for (i, service) in file.service.iter().enumerate() {
            services.push(service.name().to_owned());
            let path = vec![FILE_SERVICE, index(i)];
            check(path.clone(), service.name().to_owned());
            for (j, method) in service.method.iter().enumerate() {
                let mut method_path = path.clone();
                method_path.extend([SERVICE_METHOD, index(j)]);
                check(method_path, format!("{}.{}", service.name(), method.name()));
            }
        }
    }

    services.sort_unstable();
    assert_eq!(
        services,
        [
            "AdminService",
            "ConsumeService",
            "GroupService",
            "ProduceService",
            "SecurityService",
            "ShareService"
        ]
    );
    assert!(
        undocumented.is_empty(),
        "elements without a comment:\n{}",
        undocumented.join("\n")
    );
}

fn check_message(
    message: &DescriptorProto,
    path: Vec<i32>,
    scope: &str,
    check: &mut impl FnMut(Vec<i32>, String),
) {
    let name = format!("{scope}{}", message.name());
    check(path.clone(), name.clone());
    let child = |kind: i32, i: usize| {
        let mut p = path.clone();
        p.extend([kind, index(i)]);
        p
    };
    for (i, field) in message.field.iter().enumerate() {
        check(child(MESSAGE_FIELD, i), format!("{name}.{}", field.name()));
    }
    for (i, oneof) in message.oneof_decl.iter().enumerate() {
        // proto3 `optional` fields get a synthetic oneof named `_field`; it has no source.
        if !oneof.name().starts_with('_') {
            check(
                child(MESSAGE_ONEOF_DECL, i),
                format!("{name}.{}", oneof.name()),
            );
        }
    }
    for (i, nested) in message.nested_type.iter().enumerate() {
        check_message(
            nested,
            child(MESSAGE_NESTED_TYPE, i),
            &format!("{name}."),
            check,
        );
    }
    for (i, nested) in message.enum_type.iter().enumerate() {
        check_enum(
            nested,
            child(MESSAGE_ENUM_TYPE, i),
            &format!("{name}."),
            check,
        );
    }
}

fn check_enum(
    enumeration: &EnumDescriptorProto,
    path: Vec<i32>,
    scope: &str,
    check: &mut impl FnMut(Vec<i32>, String),
) {
    let name = format!("{scope}{}", enumeration.name());
    check(path.clone(), name.clone());
    for (i, value) in enumeration.value.iter().enumerate() {
        let mut value_path = path.clone();
        value_path.extend([ENUM_VALUE, index(i)]);
        check(value_path, format!("{name}.{}", value.name()));
    }
}

/// A descriptor list index as it appears in a source-code-info path.
fn index(i: usize) -> i32 {
    i32::try_from(i).expect("a .proto file has fewer than 2^31 elements of one kind")
}
