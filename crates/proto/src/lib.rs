//! Runnel's gRPC contract in Rust: the code generated from `proto/runnel/v1/*.proto`, the
//! encoded descriptor set for gRPC reflection, and the key partitioner that the broker and
//! every client must agree on, and [`framing`], which writes messages without copying their
//! record batches.
//!
//! The protocol itself is specified in `docs/protocol.md`; this crate only makes it usable.
//! Generated messages use [`bytes::Bytes`] for every `bytes` field, so record batches are
//! sliced out of the received buffer rather than copied.

use std::num::NonZeroU32;

pub mod framing;

/// The generated code, kept private and re-exported through [`pb`].
mod generated {
    // The `.proto` comments become doc comments, but the generated clients' and servers'
    // helper items have none; the code is not ours to lint.
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("runnel.v1");
}

/// Messages, enums, clients (`*_service_client`) and servers (`*_service_server`) of the
/// `runnel.v1` package, generated from `proto/runnel/v1`.
pub mod pb {
    pub use crate::generated::*;
}

/// The `runnel.v1` file descriptor set, encoded: what the broker's gRPC reflection service
/// serves, so that `grpcurl` and similar tools work without the `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/runnel_descriptor.bin"));

/// The gRPC metadata key (a trailer) that carries a failed RPC's [`pb::ErrorCode`], as the
/// code's number in ASCII decimal, next to the gRPC status.
pub const ERROR_CODE_METADATA_KEY: &str = "runnel-error-code";

/// The gRPC metadata key (a request header) that names a call's client id, by which the
/// broker applies quotas; a call without it has the client id `""`.
pub const CLIENT_ID_METADATA_KEY: &str = "runnel-client-id";

/// The longest client id, in bytes: in [`CLIENT_ID_METADATA_KEY`], and a group member's.
pub const MAX_CLIENT_ID_BYTES: usize = 255;

/// Checks a client id: printable ASCII (what an HTTP/2 header carries as it is), at most
/// [`MAX_CLIENT_ID_BYTES`].
///
/// # Errors
/// What is wrong with it, to follow the name of where it came from ("is 300 bytes, more
/// than 255").
pub fn check_client_id(id: &[u8]) -> Result<&str, String> {
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Err(format!(
            "is {} bytes, more than {MAX_CLIENT_ID_BYTES}",
            id.len()
        ));
    }
    if !id.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err("must be printable ASCII".into());
    }
    // Printable ASCII is UTF-8.
    Ok(std::str::from_utf8(id).unwrap_or_default())
}

/// Kafka's 32-bit murmur2 hash of `data`, as computed by Kafka's `Utils.murmur2`.
///
/// This is MurmurHash2 with seed `0x9747b28c`, reading the input as little-endian 4-byte
/// words. Kafka returns the same 32 bits as a Java `int`; `murmur2(data) as i32` is Kafka's
/// value. It is part of the wire contract: see [`partition_for_key`].
#[must_use]
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Kafka mixes the length in as a Java `int`; keys longer than 4 GiB cannot occur in a
    // batch (a batch length is a u32), so the truncation never changes the result in practice
    // and matches Kafka's own wrap-around if it did.
    let mut h = SEED ^ (data.len() as u32);

    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = words.remainder();
    if !tail.is_empty() {
        if let Some(&b) = tail.get(2) {
            h ^= u32::from(b) << 16;
        }
        if let Some(&b) = tail.get(1) {
            h ^= u32::from(b) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a keyed batch goes to when the producer names no partition: Kafka's default
/// partitioner, `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// The broker applies it to `ProducePartition.partition_key`; a client may apply it itself to
/// group records by partition. Using Kafka's function keeps every key on the partition it had
/// in Kafka for the same partition count. Taking a [`NonZeroU32`] makes a topic without
/// partitions unrepresentable here rather than a division by zero.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: NonZeroU32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Kafka's `UtilsTest.testMurmur2` vectors, plus the empty key, as Java `int`s.
    const KAFKA_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
        (b"", 275_646_681),
    ];

    #[test]
    fn murmur2_matches_kafka() {
        for (key, expected) in KAFKA_VECTORS {
            // Reinterpreting the bits as a Java int is exactly what the cast does.
            let got = murmur2(key) as i32;
            assert_eq!(
                got,
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// The table in docs/protocol.md, "Choosing a partition"; computed independently with a
    /// Python port of Kafka's `Utils.murmur2` checked against the vectors above.
    #[test]
    fn partition_for_key_matches_the_documented_table() {
        let table: &[(&[u8], u32, [u32; 3])] = &[
            (b"", 275_646_681, [0, 3, 9]),
            (b"order-42", 501_153_024, [0, 0, 0]),
            (b"user-1", 1_404_122_828, [2, 2, 8]),
            (b"alice", 1_951_417_749, [0, 3, 9]),
            (b"foobar", 1_357_151_166, [0, 0, 6]),
        ];
        for (key, positive, partitions) in table {
            assert_eq!(murmur2(key) & 0x7fff_ffff, *positive);
            for (count, expected) in [3, 6, 12].into_iter().zip(partitions) {
                let count = NonZeroU32::new(count).expect("literal is non-zero");
                assert_eq!(
                    partition_for_key(key, count),
                    *expected,
                    "{count} partitions"
                );
            }
        }
    }

    #[test]
    fn partition_for_key_stays_in_range() {
        for n in 1..=64 {
            let count = NonZeroU32::new(n).expect("range starts at 1");
            for key in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"abcde", &[0xff; 9]] {
                assert!(partition_for_key(key, count) < n);
            }
        }
    }

    #[test]
    fn descriptor_set_decodes_and_holds_the_services() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("the build script encodes a valid FileDescriptorSet");
        let runnel: Vec<_> = fds
            .file
            .iter()
            .filter(|f| f.package() == "runnel.v1")
            .collect();
        let mut files: Vec<_> = runnel.iter().map(|f| f.name()).collect();
        files.sort_unstable();
        assert_eq!(
            files,
            [
                "runnel/v1/admin.proto",
                "runnel/v1/common.proto",
                "runnel/v1/consume.proto",
                "runnel/v1/groups.proto",
                "runnel/v1/produce.proto",
                "runnel/v1/security.proto",
                "runnel/v1/share.proto",
            ]
        );

        let methods = |service: &str| -> Vec<String> {
            let found: Vec<_> = runnel
                .iter()
                .flat_map(|f| &f.service)
                .filter(|s| s.name() == service)
                .collect();
            assert_eq!(found.len(), 1, "service runnel.v1.{service}");
            found[0]
                .method
                .iter()
                .map(|m| m.name().to_owned())
                .collect()
        };
        assert_eq!(
            methods("AdminService"),
            [
                "CreateTopic",
                "DeleteTopic",
                "ListTopics",
                "DescribeTopic",
                "AlterTopicConfig",
                "CreatePartitions",
                "BrokerInfo",
                "SetQuota",
                "DeleteQuota",
                "ListQuotas",
            ]
        );
        assert_eq!(
            methods("ProduceService"),
            ["Produce", "ProduceStream", "InitProducer"]
        );
        assert_eq!(
            methods("ConsumeService"),
            ["Fetch", "Subscribe", "ListOffsets"]
        );
        assert_eq!(
            methods("GroupService"),
            [
                "Membership",
                "Consume",
                "CommitOffsets",
                "FetchOffsets",
                "ListGroups",
                "DescribeGroup",
                "DeleteGroup",
                "ResetOffsets",
            ]
        );
        assert_eq!(
            methods("ShareService"),
            [
                "ShareFetch",
                "ShareAcknowledge",
                "LeaveShareGroup",
                "AlterShareGroup",
                "DescribeShareGroup",
                "ListShareGroups",
                "DeleteShareGroup",
                "ResetShareGroupOffsets",
            ]
        );
        assert_eq!(
            methods("SecurityService"),
            [
                "CreateUser",
                "SetPassword",
                "DeleteUser",
                "ListUsers",
                "CreateToken",
                "DeleteToken",
                "ListTokens",
                "CreateAcls",
                "DeleteAcls",
                "ListAcls",
            ]
        );
    }

    #[test]
    fn generated_service_names_are_the_documented_ones() {
        assert_eq!(
            pb::admin_service_server::SERVICE_NAME,
            "runnel.v1.AdminService"
        );
        assert_eq!(
            pb::produce_service_server::SERVICE_NAME,
            "runnel.v1.ProduceService"
        );
        assert_eq!(
            pb::consume_service_server::SERVICE_NAME,
            "runnel.v1.ConsumeService"
        );
        assert_eq!(
            pb::group_service_server::SERVICE_NAME,
            "runnel.v1.GroupService"
        );
        assert_eq!(
            pb::share_service_server::SERVICE_NAME,
            "runnel.v1.ShareService"
        );
        assert_eq!(
            pb::security_service_server::SERVICE_NAME,
            "runnel.v1.SecurityService"
        );
    }

    #[test]
    fn batches_are_bytes_and_survive_a_round_trip() {
        let batch = bytes::Bytes::from_static(b"not a real batch, just bytes");
        let request = pb::ProduceRequest {
            request_id: 7,
            topic: "orders".to_owned(),
            acks: pb::Acks::Durable.into(),
            partitions: vec![pb::ProducePartition {
                partition: None,
                partition_key: Some(bytes::Bytes::from_static(b"order-42")),
                batches: vec![batch.clone()],
                ..Default::default()
            }],
        };
        let decoded = pb::ProduceRequest::decode(request.encode_to_vec().as_slice())
            .expect("a message we just encoded decodes");
        assert_eq!(decoded, request);
        let first: &bytes::Bytes = &decoded.partitions[0].batches[0];
        assert_eq!(first, &batch);
    }
}
