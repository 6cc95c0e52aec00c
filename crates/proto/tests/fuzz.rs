//! Fuzzing the decoding of every request message (proptest): random protobuf-shaped input
//! (fields of every wire type, nested messages, numbers that collide with real fields) and
//! arbitrary bytes, decoded as each `runnel.v1` request type. Decoding never panics, and a
//! message that decodes encodes to bytes that decode to the same message (what the broker
//! logs or forwards is what it read). A test checks that the list covers the input type of
//! every RPC in the descriptor set, so a new RPC's request joins the fuzzing.
//!
//! CI runs a few thousand cases; long runs:
//! `docs/reliability.md`, "Fuzz targets" (CI's cases come from a fixed seed).

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use runnel_fuzz_support::config;
use runnel_proto::pb;

/// Decodes `bytes` as `M`; if it decodes, its encoding decodes to the same message.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
        assert_eq!(m, again, "{}", std::any::type_name::<M>());
    }
}

macro_rules! requests {
    ($($name:ident),* $(,)?) => {
        /// The request types fuzzed, by name.
        const REQUESTS: &[&str] = &[$(stringify!($name)),*];

        /// Decodes `bytes` as every request type.
        fn decode_as_every_request(bytes: &[u8]) {
            $(round_trip::<pb::$name>(bytes);)*
        }
    };
}

requests!(
    AlterShareGroupRequest,
    AlterTopicConfigRequest,
    BrokerInfoRequest,
    CommitOffsetsRequest,
    CreateAclsRequest,
    CreatePartitionsRequest,
    CreateTokenRequest,
    CreateTopicRequest,
    CreateUserRequest,
    DeleteAclsRequest,
    DeleteGroupRequest,
    DeleteQuotaRequest,
    DeleteShareGroupRequest,
    DeleteTokenRequest,
    DeleteTopicRequest,
    DeleteUserRequest,
    DescribeGroupRequest,
    DescribeShareGroupRequest,
    DescribeTopicRequest,
    FetchOffsetsRequest,
    FetchRequest,
    GroupConsumeRequest,
    InitProducerRequest,
    LeaveShareGroupRequest,
    ListAclsRequest,
    ListGroupsRequest,
    ListOffsetsRequest,
    ListQuotasRequest,
    ListShareGroupsRequest,
    ListTokensRequest,
    ListTopicsRequest,
    ListUsersRequest,
    MembershipRequest,
    ProduceRequest,
    ResetOffsetsRequest,
    SetPasswordRequest,
    SetQuotaRequest,
    ShareAcknowledgeRequest,
    ShareFetchRequest,
    SubscribeRequest,
);

#[test]
fn every_rpc_request_type_is_fuzzed() {
    let set = prost_types::FileDescriptorSet::decode(runnel_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut inputs: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "runnel.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .map(|m| {
            m.input_type()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    inputs.sort();
    inputs.dedup();
    let mut listed: Vec<&str> = REQUESTS.to_vec();
    listed.sort_unstable();
    assert_eq!(inputs, listed, "add the new request types to requests!()");
}

/// A protobuf field of any wire type; nested messages hold fields of their own.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Nested(u32, Vec<Field>),
}

fn number() -> impl Strategy<Value = u32> {
    // Mostly the numbers real fields use, sometimes any.
    prop_oneof![9 => 1u32..12, 1 => 1u32..(1 << 29)]
}

fn field() -> impl Strategy<Value = Field> {
    let varint = prop_oneof![0u64..300, any::<u64>(), Just(u64::MAX)];
    let leaf = prop_oneof![
        (number(), varint).prop_map(|(n, v)| Field::Varint(n, v)),
        (number(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (number(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        (number(), vec(any::<u8>(), 0..40)).prop_map(|(n, v)| Field::Bytes(n, v)),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        (number(), vec(inner, 0..6)).prop_map(|(n, fields)| Field::Nested(n, fields))
    })
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        match f {
            Field::Varint(n, v) => {
                encode_key(*n, WireType::Varint, out);
                encode_varint(*v, out);
            }
            Field::Fixed64(n, v) => {
                encode_key(*n, WireType::SixtyFourBit, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed32(n, v) => {
                encode_key(*n, WireType::ThirtyTwoBit, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(n, v) => {
                encode_key(*n, WireType::LengthDelimited, out);
                encode_varint(v.len() as u64, out);
                out.extend_from_slice(v);
            }
            Field::Nested(n, inner) => {
                let mut body = Vec::new();
                encode(inner, &mut body);
                encode_key(*n, WireType::LengthDelimited, out);
                encode_varint(body.len() as u64, out);
                out.extend_from_slice(&body);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(3_000, "tests/fuzz.proptest-regressions"))]

    #[test]
    fn protobuf_shaped_input_decodes_or_fails_never_a_panic(
        fields in vec(field(), 0..12),
        cut in any::<prop::sample::Index>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        decode_as_every_request(&bytes);
        if !bytes.is_empty() {
            for (at, b) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            decode_as_every_request(&bytes);
            bytes.truncate(cut.index(bytes.len()));
            decode_as_every_request(&bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_decode_or_fail_never_a_panic(bytes in vec(any::<u8>(), 0..300)) {
        decode_as_every_request(&bytes);
    }
}
