//! Fuzzing the record batch format (proptest): arbitrary bytes, and valid batches of every
//! codec damaged anywhere, go through validation, decompression and record decoding as the
//! broker and the client run them. Nothing may panic, decompression never exceeds its limit,
//! and a decoder never returns more records than the header counts. Damaged batches get
//! their length and CRC fixed up half of the time, so that the checks behind the CRC (the
//! record walk, the codecs, the record decoder) see the damage too.
//!
//! CI runs a few thousand cases per target; long runs:
//! `docs/reliability.md`, "Fuzz targets" (CI's cases come from a fixed seed).
//! A failing case is written to `tests/fuzz.proptest-regressions` and replayed first on every
//! later run (commit it with the fix).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use runnel_format::compression::{self, CodecError};
use runnel_format::{
    BatchBuilder, Batches, CRC_START, Compression, LENGTH_PREFIX_LEN, RecordBatch, validate,
};
use runnel_fuzz_support::{apply, config, edit};

/// The batch size limit the checks run with.
const MAX_BATCH: usize = 1 << 20;
/// The decompression limit.
const LIMIT: usize = 64 << 10;

type Headers = Vec<(Vec<u8>, Option<Vec<u8>>)>;
type TestRecord = (Option<Vec<u8>>, Option<Vec<u8>>, Headers);

fn record() -> impl Strategy<Value = TestRecord> {
    (
        option::of(vec(any::<u8>(), 0..24)),
        option::of(vec(any::<u8>(), 0..200)),
        vec(
            (vec(any::<u8>(), 0..8), option::of(vec(any::<u8>(), 0..16))),
            0..3,
        ),
    )
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
        Just(Compression::Gzip),
        Just(Compression::Snappy)
    ]
}

/// A batch of `records` compressed with `codec`, as the client builds it.
fn build(records: &[TestRecord], codec: Compression) -> Bytes {
    let mut b = BatchBuilder::new();
    for (i, (key, value, headers)) in records.iter().enumerate() {
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_deref()))
            .collect();
        b.push(key.as_deref(), value.as_deref(), &headers, 1_000 + i as i64);
    }
    match codec {
        Compression::None => b.build(),
        c => {
            let section = compression::compress(c, b.records_section(), 1).expect("compress");
            b.build_with(c, &section)
        }
    }
}

/// Makes the length field and the CRC agree with the bytes again, as a producer that builds
/// a wrong batch correctly framed would.
fn fix_up(bytes: &mut [u8]) {
    if bytes.len() >= LENGTH_PREFIX_LEN {
        let length = (bytes.len() - LENGTH_PREFIX_LEN) as u32;
        bytes[8..12].copy_from_slice(&length.to_le_bytes());
    }
    if bytes.len() >= CRC_START {
        let crc = crc32fast::hash(&bytes[CRC_START..]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Everything the broker and the client do with received bytes; panics only on a broken
/// invariant.
fn exercise(bytes: &[u8]) {
    let owned = Bytes::copy_from_slice(bytes);
    // As storage reads a segment: batch after batch until the first bad one.
    for batch in Batches::new(owned.clone()) {
        if batch.is_err() {
            break;
        }
    }
    let Ok(header) = validate(bytes, MAX_BATCH) else {
        return;
    };
    let batch = RecordBatch::new(owned, MAX_BATCH).expect("validate passed, so new must");
    match compression::records(&batch, LIMIT) {
        Ok(records) => {
            let mut decoded = 0u64;
            for r in records {
                if r.is_err() {
                    break;
                }
                decoded += 1;
            }
            assert!(decoded <= u64::from(header.record_count));
        }
        Err(CodecError::TooLarge { limit, .. }) => assert_eq!(limit, LIMIT),
        Err(_) => {}
    }
    if let Some(codec) = header.compression()
        && let Ok(out) = compression::decompress(codec, &batch.records_section(), LIMIT)
    {
        assert!(out.len() <= LIMIT || codec == Compression::None);
    }
}

proptest! {
    #![proptest_config(config(2_000, "tests/fuzz.proptest-regressions"))]

    #[test]
    fn valid_batches_decode_to_what_was_built(records in vec(record(), 1..20), codec in codec()) {
        let bytes = build(&records, codec);
        let header = validate(&bytes, MAX_BATCH).expect("a built batch is valid");
        prop_assert_eq!(header.record_count as usize, records.len());
        let batch = RecordBatch::new(bytes, MAX_BATCH).unwrap();
        let decoded: Vec<_> = compression::records(&batch, usize::MAX)
            .expect("decompressed")
            .collect::<Result<_, _>>()
            .expect("decoded");
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (r, (key, value, headers))) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(r.offset, i as u64);
            prop_assert_eq!(r.timestamp, 1_000 + i as i64);
            prop_assert_eq!(r.key.as_deref(), key.as_deref());
            prop_assert_eq!(r.value.as_deref(), value.as_deref());
            prop_assert_eq!(r.headers.len(), headers.len());
            for (h, (name, v)) in r.headers.iter().zip(headers) {
                prop_assert_eq!(h.name.as_ref(), name.as_slice());
                prop_assert_eq!(h.value.as_deref(), v.as_deref());
            }
        }
    }

    #[test]
    fn damaged_batches_are_refused_or_decoded_never_a_panic(
        records in vec(record(), 1..12),
        codec in codec(),
        edits in vec(edit(), 1..6),
        fix in any::<bool>(),
    ) {
        let mut bytes = build(&records, codec).to_vec();
        apply(&mut bytes, &edits);
        if fix {
            fix_up(&mut bytes);
        }
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600), fix in any::<bool>()) {
        let mut bytes = bytes;
        if fix {
            fix_up(&mut bytes);
        }
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_compressed_sections_respect_the_limit(data in vec(any::<u8>(), 0..400), codec in codec()) {
        match compression::decompress(codec, &data, 512) {
            Ok(out) => prop_assert!(out.len() <= 512 || codec == Compression::None),
            Err(CodecError::TooLarge { limit, .. }) => prop_assert_eq!(limit, 512),
            Err(_) => {}
        }
    }

    /// Kafka batches (the Kafka listener's input), valid ones damaged: translated or refused,
    /// never a panic; what translates is a valid Runnel batch whose records decode as far as
    /// they go.
    #[test]
    fn damaged_kafka_batches_translate_or_are_refused(
        records in vec(record(), 1..10),
        codec in codec(),
        edits in vec(edit(), 0..4),
        fix_crc in any::<bool>(),
    ) {
        let mut kafka = bytes::BytesMut::new();
        runnel_format::kafka::to_kafka(&build(&records, codec), &mut kafka).expect("a valid batch");
        let mut bytes = kafka.to_vec();
        apply(&mut bytes, &edits);
        if fix_crc && bytes.len() >= 61 {
            let crc = crc32c_of(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        let _ = runnel_format::kafka::kafka_batches(&Bytes::copy_from_slice(&bytes));
        if let Ok(runnel) = runnel_format::kafka::from_kafka(&bytes) {
            exercise(&runnel);
        }
    }

    #[test]
    fn arbitrary_bytes_as_kafka_records_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        if let Ok(batches) = runnel_format::kafka::kafka_batches(&Bytes::from(bytes)) {
            for b in batches {
                if let Ok(runnel) = runnel_format::kafka::from_kafka(&b) {
                    exercise(&runnel);
                }
            }
        }
    }
}

/// CRC-32C (Castagnoli), bit by bit: the fuzz target's own, so that a damaged batch can be
/// given a matching CRC without trusting the code under test.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
