//! A data directory written by the previous release, with committed offsets in
//! `groups/offsets.log` and producer ids in `producers.log`, is migrated into the internal
//! logs on first start (`docs/operations.md`, "Upgrading").

use std::collections::BTreeMap;

use runnel_proto::pb::{self, ErrorCode};

use runnel_test_support::prelude::*;

/// The previous release's offsets journal (`docs/storage-format.md`, "Previous release"):
/// one commit record of group `g`: `t`/0 at 5 ("five") and `t`/1 at 9.
fn legacy_offsets_journal() -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend(1_700_000_000_000i64.to_le_bytes());
    body.extend(1u16.to_le_bytes());
    body.extend(b"g");
    body.extend(2u32.to_le_bytes());
    for (partition, offset, metadata) in [(0u32, 5u64, "five"), (1, 9, "")] {
        body.extend(1u16.to_le_bytes());
        body.extend(b"t");
        body.extend(partition.to_le_bytes());
        body.extend(offset.to_le_bytes());
        body.extend((metadata.len() as u32).to_le_bytes());
        body.extend(metadata.as_bytes());
    }
    let mut file = b"RNGO".to_vec();
    file.extend(1u32.to_le_bytes());
    file.extend((body.len() as u32).to_le_bytes());
    file.extend(crc32fast::hash(&body).to_le_bytes());
    file.extend(body);
    file
}

async fn init(
    b: &TestBroker,
    id: Option<i64>,
    epoch: Option<i32>,
) -> Result<(i64, i32), tonic::Status> {
    b.produce()
        .init_producer(pb::InitProducerRequest {
            producer_id: id,
            producer_epoch: epoch,
        })
        .await
        .map(|r| (r.get_ref().producer_id, r.get_ref().producer_epoch))
}

#[tokio::test]
async fn a_previous_release_data_directory_is_migrated_on_first_start() {
    let b = TestBroker::start_with(|c| {
        let groups = c.data_dir.join("groups");
        std::fs::create_dir_all(&groups).expect("groups dir");
        std::fs::write(groups.join("offsets.log"), legacy_offsets_journal()).expect("journal");
        std::fs::write(c.data_dir.join("producers.log"), "# ids\n0 3\n4 0\n").expect("ids");
    })
    .await;
    let dir = b.data_dir();
    assert!(!dir.join("groups").exists() && !dir.join("producers.log").exists());
    assert!(dir.join("internal/consumer_offsets").is_dir());
    assert!(dir.join("internal/producer_ids").is_dir());

    let want: BTreeMap<u32, (u64, String)> =
        [(0, (5, "five".to_owned())), (1, (9, String::new()))].into();
    assert_eq!(committed_offsets(&b, "g").await, want);
    let fenced = init(&b, Some(0), Some(2)).await.unwrap_err();
    assert_status(&fenced, ErrorCode::ProducerFenced, "current epoch is 3");
    assert_eq!(init(&b, Some(0), Some(3)).await.unwrap(), (0, 4));
    assert_eq!(
        init(&b, None, None).await.unwrap(),
        (5, 0),
        "ids are never reissued"
    );

    // The migrated state, and what was added to it, survive a restart.
    let b = b.restart().await;
    assert_eq!(committed_offsets(&b, "g").await, want);
    assert_eq!(init(&b, Some(0), Some(4)).await.unwrap(), (0, 5));
    assert_eq!(init(&b, None, None).await.unwrap(), (6, 0));
}
