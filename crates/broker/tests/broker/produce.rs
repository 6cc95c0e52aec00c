//! ProduceService: Produce and ProduceStream.

use std::num::NonZeroU32;

use bytes::{Bytes, BytesMut};
use runnel_proto::pb::{self, ErrorCode};
use tokio_stream::StreamExt as _;

use runnel_test_support::prelude::*;

#[tokio::test]
async fn produced_batches_come_back_byte_for_byte_with_offsets() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    let sent = vec![batch(3, 1_000), batch(2, 2_000)];
    let resp = b
        .produce()
        .produce(pb::ProduceRequest {
            request_id: 7,
            ..produce_request(
                "t",
                pb::Acks::Durable,
                vec![entry(1, sent.clone()), entry(1, vec![batch(1, 3_000)])],
            )
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.request_id, 7);
    assert_eq!(resp.results.len(), 2);
    let offsets: Vec<u64> = resp.results[0]
        .batches
        .iter()
        .map(|r| r.base_offset)
        .collect();
    assert_eq!(offsets, [0, 3]);
    assert_eq!(resp.results[1].batches[0].base_offset, 5);
    assert!(resp.results[0].batches[0].append_time_ms > 1_600_000_000_000);
    assert!(!resp.results[0].batches[0].duplicate);

    let got = fetch_all(&b, "t", 1, 0).await;
    assert_eq!(got.len(), 3);
    for (stored, original) in got.iter().zip(&sent) {
        // Only base_offset and append_time (bytes 0 to 19, outside the CRC) differ.
        assert_eq!(stored[20..], original[20..]);
        assert_eq!(stored[8..12], original[8..12]);
    }
    assert_eq!(u64::from_le_bytes(got[1][0..8].try_into().unwrap()), 3);
}

#[tokio::test]
async fn keys_hash_to_partitions_and_keyless_entries_spread() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 6).await;
    let keyed = |key: &str| pb::ProducePartition {
        partition: None,
        partition_key: Some(Bytes::from(key.to_owned())),
        batches: vec![batch(1, 1_000)],
        ..Default::default()
    };
    let resp = b
        .produce()
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![keyed("user-1"), keyed("alice"), keyed("")],
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<u32> = resp.results.iter().map(|r| r.partition).collect();
    // The protocol's table: 6 partitions.
    assert_eq!(got, [2, 3, 3]);
    let six = NonZeroU32::new(6).unwrap();
    assert_eq!(got[0], runnel_proto::partition_for_key(b"user-1", six));

    let keyless = || pb::ProducePartition {
        partition: None,
        partition_key: None,
        batches: vec![batch(1, 1_000)],
        ..Default::default()
    };
    let resp = b
        .produce()
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            (0..12).map(|_| keyless()).collect(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut counts = [0; 6];
    for r in &resp.results {
        assert!(r.error.is_none());
        counts[r.partition as usize] += 1;
    }
    assert_eq!(counts, [2; 6], "round-robin spreads evenly");
}

#[tokio::test]
async fn entry_errors_are_inline_and_do_not_affect_other_entries() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 4).await;
    let good = batch(2, 1_000);
    let mut corrupt = BytesMut::from(&batch(2, 1_000)[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut version = BytesMut::from(&batch(1, 1_000)[..]);
    version[24] = 2;
    let short = Bytes::from_static(b"not a batch");
    let both = pb::ProducePartition {
        partition: Some(0),
        partition_key: Some(Bytes::from_static(b"k")),
        batches: vec![good.clone()],
        ..Default::default()
    };
    let resp = b
        .produce()
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![
                entry(0, vec![good.clone()]),
                entry(7, vec![good.clone()]),
                both,
                entry(1, vec![good.clone(), corrupt.freeze()]),
                entry(2, vec![version.freeze()]),
                entry(3, vec![short]),
                entry(0, vec![good.clone()]),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let r = &resp.results;
    assert!(r[0].error.is_none());
    assert_inline(
        r[1].error.as_ref(),
        ErrorCode::UnknownPartition,
        "partitions[1]: partition 7 of topic \"t\" does not exist: the topic has partitions 0 to 3",
    );
    assert_inline(
        r[2].error.as_ref(),
        ErrorCode::InvalidRequest,
        "partitions[2]: partition and partition_key are both set; set one",
    );
    assert_inline(
        r[3].error.as_ref(),
        ErrorCode::CorruptBatch,
        "partitions[3].batches[1]: batch CRC mismatch",
    );
    assert_inline(
        r[4].error.as_ref(),
        ErrorCode::UnsupportedBatchVersion,
        "partitions[4].batches[0]: unsupported batch format version 2",
    );
    assert_inline(
        r[5].error.as_ref(),
        ErrorCode::CorruptBatch,
        "partitions[5].batches[0]",
    );
    assert_eq!(
        r[6].batches[0].base_offset, 2,
        "entries to one partition keep request order"
    );
    // The failed entries stored nothing: the good batch of entry 3 was not appended either.
    assert!(fetch_all(&b, "t", 1, 0).await.is_empty());
    assert!(fetch_all(&b, "t", 2, 0).await.is_empty());
}

#[tokio::test]
async fn request_errors_fail_the_whole_rpc() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let mut p = b.produce();
    let e = p
        .produce(produce_request(
            "nope",
            pb::Acks::Written,
            vec![entry(0, vec![batch(1, 0)])],
        ))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::UnknownTopic, "topic \"nope\" does not exist");
    let e = p
        .produce(produce_request(
            "bad/name",
            pb::Acks::Written,
            vec![entry(0, vec![batch(1, 0)])],
        ))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::InvalidTopicName, "'/'");
    let e = p
        .produce(produce_request("t", pb::Acks::Written, vec![]))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "partitions: at least one entry is required",
    );
    let e = p
        .produce(produce_request(
            "t",
            pb::Acks::Written,
            vec![entry(0, vec![batch(1, 0)]), entry(0, vec![])],
        ))
        .await
        .unwrap_err();
    assert_status(
        &e,
        ErrorCode::InvalidRequest,
        "partitions[1]: at least one batch or record is required",
    );
    let mut req = produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(1, 0)])]);
    req.acks = 9;
    let e = p.produce(req).await.unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "acks 9");
    assert!(fetch_all(&b, "t", 0, 0).await.is_empty());
}

#[tokio::test]
async fn produce_stream_answers_pipelined_requests_in_order() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    let n = 200u64;
    let requests: Vec<pb::ProduceRequest> = (0..n)
        .map(|i| {
            let topic = if i == 50 { "missing" } else { "t" };
            pb::ProduceRequest {
                request_id: 1000 + i,
                topic: topic.into(),
                acks: if i % 3 == 0 {
                    pb::Acks::Durable
                } else {
                    pb::Acks::Written
                } as i32,
                partitions: vec![entry((i % 2) as u32, vec![batch(2, 1_000)])],
            }
        })
        .collect();
    let mut responses = b
        .produce()
        .produce_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut next_offset = [0u64; 2];
    let mut seen = 0;
    while let Some(resp) = within(responses.next()).await {
        let resp = resp.unwrap();
        let i = resp.request_id - 1000;
        assert_eq!(i, seen, "responses come in request order");
        seen += 1;
        if i == 50 {
            assert_inline(resp.error.as_ref(), ErrorCode::UnknownTopic, "\"missing\"");
            continue;
        }
        let p = (i % 2) as usize;
        assert_eq!(resp.results[0].batches[0].base_offset, next_offset[p]);
        next_offset[p] += 2;
    }
    assert_eq!(seen, n);
    // Request 50 (partition 0) failed as a whole.
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), 99);
    assert_eq!(fetch_all(&b, "t", 1, 0).await.len(), 100);
}

/// Small requests are written on the runtime's thread unless the log would roll; rolls and
/// large requests go to the blocking pool. Either way the offsets are dense and in order.
#[tokio::test]
async fn small_and_large_requests_across_segment_rolls_keep_offsets_dense() {
    let b = TestBroker::start().await;
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "rolls".into(),
            partition_count: 1,
            config: Some(pb::TopicConfig {
                segment_bytes: Some(128 * 1024),
                max_batch_bytes: Some(100 * 1024),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let value = |len: usize| vec![b'x'; len];
    let build = |records: u32, len: usize| {
        let mut builder = runnel_storage::batch::BatchBuilder::new();
        for _ in 0..records {
            builder.push(None, Some(&value(len)), &[], 5);
        }
        builder.build()
    };
    // Small: 20 records of 1 KiB (about 21 KiB, written inline); large: one of 70 KiB (over
    // the inline limit). The 128 KiB segment rolls every few requests.
    let (small, large) = (build(20, 1024), build(1, 70 * 1024));
    let mut next = 0u64;
    let mut sizes = Vec::new();
    for i in 0..40u32 {
        let acks = if i % 2 == 0 {
            pb::Acks::Written
        } else {
            pb::Acks::Durable
        };
        let (batch, records) = if i % 7 == 3 {
            (large.clone(), 1)
        } else {
            (small.clone(), 20)
        };
        let resp = b
            .produce()
            .produce(produce_request("rolls", acks, vec![entry(0, vec![batch])]))
            .await
            .unwrap()
            .into_inner();
        let r = &resp.results[0];
        assert_eq!(r.error, None, "request {i}");
        assert_eq!(r.batches[0].base_offset, next, "request {i}");
        next += records;
        sizes.push(records);
    }
    let segments = std::fs::read_dir(b.data_dir().join("topics/rolls/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count();
    assert!(
        segments > 5,
        "{segments} segments: the small requests rolled"
    );
    let got = fetch_all(&b, "rolls", 0, 0).await;
    assert_eq!(got.len(), sizes.len());
    let mut expected = 0u64;
    for (stored, records) in got.iter().zip(&sizes) {
        assert_eq!(
            u64::from_le_bytes(stored[0..8].try_into().unwrap()),
            expected
        );
        expected += records;
    }
    assert_eq!(expected, next);
}
