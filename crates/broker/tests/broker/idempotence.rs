//! Idempotent producers: InitProducer, retries, sequence errors and fencing.

use runnel_proto::pb::{self, ErrorCode};

use runnel_test_support::prelude::*;

async fn init(
    b: &TestBroker,
    id: Option<i64>,
    epoch: Option<i32>,
) -> Result<(i64, i16), tonic::Status> {
    b.produce()
        .init_producer(pb::InitProducerRequest {
            producer_id: id,
            producer_epoch: epoch,
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.producer_id, r.producer_epoch as i16)
        })
}

#[tokio::test]
async fn a_retried_batch_gets_its_original_offsets_and_is_stored_once() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 2).await;
    let (id, epoch) = init(&b, None, None).await.unwrap();
    assert_eq!(epoch, 0);
    let (id2, _) = init(&b, None, None).await.unwrap();
    assert_ne!(id, id2);

    let first = produce(&b, "t", 0, vec![idempotent_batch(3, id, 0, 0)]).await;
    let second = produce(&b, "t", 0, vec![idempotent_batch(2, id, 0, 3)]).await;
    assert_eq!(second.batches[0].base_offset, 3);
    // The retry of the first batch: same offsets and time, flagged, nothing written.
    let retry = produce(&b, "t", 0, vec![idempotent_batch(3, id, 0, 0)]).await;
    assert!(retry.error.is_none(), "{:?}", retry.error);
    assert_eq!(
        retry.batches[0],
        pb::BatchResult {
            duplicate: true,
            ..first.batches[0]
        }
    );
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), 2);

    // A gap, then the fence.
    let gap = produce(&b, "t", 0, vec![idempotent_batch(1, id, 0, 9)]).await;
    assert_inline(
        gap.error.as_ref(),
        ErrorCode::OutOfOrderSequence,
        &format!(
            "partitions[0].batches[0]: producer {id} epoch 0 on t/0: expected sequence 5, got 9"
        ),
    );
    let unknown = produce(&b, "t", 1, vec![idempotent_batch(1, id, 0, 4)]).await;
    assert_inline(
        unknown.error.as_ref(),
        ErrorCode::UnknownProducer,
        "has no state on t/1",
    );
    let never = produce(&b, "t", 1, vec![idempotent_batch(1, 999, 0, 0)]).await;
    assert_inline(
        never.error.as_ref(),
        ErrorCode::UnknownProducer,
        "never issued",
    );
    let half = produce(&b, "t", 1, vec![idempotent_batch(1, id, -1, 0)]).await;
    assert_inline(
        half.error.as_ref(),
        ErrorCode::InvalidRequest,
        "producer_epoch -1",
    );

    assert_eq!(init(&b, Some(id), Some(0)).await.unwrap(), (id, 1));
    // The old epoch is fenced on every partition, also one it never wrote to.
    for p in [0, 1] {
        let fenced = produce(&b, "t", p, vec![idempotent_batch(1, id, 0, 5)]).await;
        assert_inline(
            fenced.error.as_ref(),
            ErrorCode::ProducerFenced,
            &format!("producer {id} epoch 0 is fenced: the current epoch is 1"),
        );
    }
    let e = init(&b, Some(id), Some(0)).await.unwrap_err();
    assert_status(&e, ErrorCode::ProducerFenced, "epoch 0 is fenced");
    let e = init(&b, Some(id), Some(5)).await.unwrap_err();
    assert_status(&e, ErrorCode::UnknownProducer, "never issued");
    let e = init(&b, Some(id), None).await.unwrap_err();
    assert_status(&e, ErrorCode::InvalidRequest, "producer_epoch");
    let fresh = produce(&b, "t", 0, vec![idempotent_batch(2, id, 1, 0)]).await;
    assert_eq!(fresh.batches[0].base_offset, 5);
}

#[tokio::test]
async fn idempotence_and_fencing_survive_a_restart() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let (id, _) = init(&b, None, None).await.unwrap();
    let first = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, 0)]).await;
    assert_eq!(init(&b, Some(id), Some(0)).await.unwrap(), (id, 1));
    let second = produce(&b, "t", 0, vec![idempotent_batch(4, id, 1, 0)]).await;

    let b = b.restart().await;
    let retry = within(produce(&b, "t", 0, vec![idempotent_batch(4, id, 1, 0)])).await;
    assert_eq!(
        retry.batches[0],
        pb::BatchResult {
            duplicate: true,
            ..second.batches[0]
        }
    );
    let fenced = produce(&b, "t", 0, vec![idempotent_batch(4, id, 0, 0)]).await;
    assert_inline(
        fenced.error.as_ref(),
        ErrorCode::ProducerFenced,
        "current epoch is 1",
    );
    let (next, _) = init(&b, None, None).await.unwrap();
    assert!(next > id, "ids are never reissued");
    assert_eq!(fetch_all(&b, "t", 0, 0).await.len(), 2);
    assert_ne!(first.batches[0].base_offset, second.batches[0].base_offset);
}
