//! Idempotent producers against the real broker, across restarts and crashes.

use runnel_proto::pb;

use crate::harness::*;

#[tokio::test]
async fn a_retried_batch_returns_its_original_offsets_and_is_stored_once() {
    let mut b = Broker::start().await;
    create_topic(&b, "t", 1).await;
    let init = b
        .produce()
        .init_producer(pb::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let id = init.producer_id;
    let mut originals = Vec::new();
    for seq in 0..5 {
        let r = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, seq * 4)]).await;
        originals.push(r.batches[0]);
    }
    // A retry in the same broker life.
    let r = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, 8)]).await;
    assert_eq!(
        r.batches[0],
        pb::BatchResult {
            duplicate: true,
            ..originals[2]
        }
    );

    // After a crash the state is rebuilt from the log.
    b.kill9();
    let b = b.start_again().await;
    for seq in 0..5 {
        let r = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, seq * 4)]).await;
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(
            r.batches[0],
            pb::BatchResult {
                duplicate: true,
                ..originals[seq as usize]
            }
        );
    }
    // And after a clean restart too.
    let b = b.restart().await;
    let r = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, 16)]).await;
    assert_eq!(
        r.batches[0],
        pb::BatchResult {
            duplicate: true,
            ..originals[4]
        }
    );
    let next = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, 20)]).await;
    assert_eq!(
        (next.batches[0].base_offset, next.batches[0].duplicate),
        (20, false)
    );

    // Each batch is stored once.
    let got = values(&fetch_all(&b, "t", 0, 0).await, 0);
    assert_eq!(got.len(), 24);
}
