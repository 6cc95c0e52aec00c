//! Tiered storage over object_store's in-memory store and real logs: uploads, reads that
//! match the local log byte for byte, total retention, fencing, uploads cut short, restore.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use runnel_storage::batch::BatchBuilder;
use runnel_storage::{Durability, Log, LogConfig};

use super::*;
use crate::config::RemoteStorageSettings;

fn settings() -> RemoteStorageSettings {
    RemoteStorageSettings {
        bucket: "test".into(),
        prefix: "cluster-a".into(),
        cache_bytes: 1 << 20,
        chunk_bytes: 64 << 10,
        ..RemoteStorageSettings::default()
    }
}

fn tiered(store: &Arc<InMemory>, broker: &str) -> Arc<Tiered> {
    let store: Arc<dyn ObjectStore> = store.clone();
    Tiered::with_store(store, settings(), broker.into()).unwrap()
}

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 10,
        max_batch_bytes: 8 << 10,
        index_interval_bytes: 512,
        durability: Durability::Never,
        retention_age: None,
        ..LogConfig::default()
    }
}

/// Batches `from..to` of an idempotent producer, 3 records each, timestamps 1000 + 10 * i.
fn fill(log: &Log, from: i32, to: i32) {
    for i in from..to {
        let mut b = BatchBuilder::new();
        b.producer(11, 0, i * 3);
        for r in 0..3 {
            let key = format!("k{i}-{r}");
            b.push(
                Some(key.as_bytes()),
                Some(&[b'v'; 200]),
                &[],
                1000 + i64::from(i) * 10,
            );
        }
        log.append(b.build()).unwrap();
    }
}

fn upload(
    remote: &Arc<RemoteLog>,
    log: &Arc<Log>,
    retention: Retention,
) -> Result<UploadOutcome, RemoteError> {
    let (r, l) = (remote.clone(), log.clone());
    remote
        .tiered()
        .run(async move { r.upload(l, retention).await })
        .unwrap()
}

fn read(remote: &Arc<RemoteLog>, from: u64, max: usize) -> Option<RemoteRead> {
    let r = remote.clone();
    remote
        .tiered()
        .run(async move { r.read(from, max).await })
        .unwrap()
        .unwrap()
}

fn keys_in(store: &Arc<InMemory>) -> Vec<String> {
    let store = store.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect::<Vec<_>>()
            .await
    })
}

#[test]
fn copies_read_back_exactly_what_the_local_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small()).unwrap());
    fill(&log, 0, 120);
    let store = Arc::new(InMemory::new());
    let remote = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    let out = upload(&remote, &log, Retention::default()).unwrap();
    let sealed = log.sealed_segments();
    assert!(sealed.len() >= 4, "{} sealed", sealed.len());
    assert_eq!(out.uploaded, sealed.len());
    let m = remote.manifest();
    assert_eq!(m.end_offset(), sealed.last().unwrap().next_offset);
    assert_eq!((m.start_offset(), m.writer.as_str()), (0, "broker-a"));
    // Nothing more to copy until the next roll.
    assert_eq!(
        upload(&remote, &log, Retention::default())
            .unwrap()
            .uploaded,
        0
    );

    for from in 0..m.end_offset() {
        let local = log.read(from, 1000).unwrap();
        let copied = read(&remote, from, 1000).unwrap();
        assert_eq!(copied.batches, local.batches, "from {from}");
        assert_eq!(copied.next_offset, local.next_offset);
        assert_eq!(copied.records, local.records);
    }
    assert!(read(&remote, m.end_offset(), 1000).is_none());

    // Time: the same batch as the local lookup, for times inside the copies.
    for ts in [0, 1005, 1010, 1500, 1000 + 10 * 40] {
        let r = remote.clone();
        let found = remote
            .tiered()
            .run(async move { r.offset_for_time(ts).await })
            .unwrap()
            .unwrap();
        let local = log.offset_for_timestamp(ts).unwrap().unwrap();
        let (offset, _) = found.unwrap();
        let batch_base = log.read(local, 1).unwrap().batches[0].clone();
        let header = runnel_storage::batch::BatchHeader::decode(&batch_base).unwrap();
        assert_eq!(offset, header.base_offset, "ts {ts}");
    }

    // Every object is one of the segments' four, plus the manifest.
    let keys = keys_in(&store);
    assert_eq!(keys.len(), 4 * m.segments.len() + 1, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("cluster-a/topics/orders/id1/0/"))
    );
}

#[test]
fn local_retention_and_total_retention_each_go_by_the_copies() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small()).unwrap());
    fill(&log, 0, 120);
    let store = Arc::new(InMemory::new());
    let remote = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    // Before anything is copied, local retention deletes nothing.
    log.set_config(LogConfig {
        retention_bytes: Some(0),
        ..small()
    })
    .unwrap();
    assert_eq!(
        log.enforce_retention_below(remote.copied_end())
            .unwrap()
            .segments_deleted,
        0
    );
    upload(&remote, &log, Retention::default()).unwrap();
    let out = log.enforce_retention_below(remote.copied_end()).unwrap();
    assert_eq!(out.log_start_offset, remote.copied_end());
    // Total retention by age: records up to 1000 + 10 * 60 are old.
    let segments = remote.manifest().segments.len();
    let now = crate::clock::now_ms();
    let age = u64::try_from(now - (1000 + 10 * 60)).unwrap();
    let out = upload(
        &remote,
        &log,
        Retention {
            age_ms: Some(age),
            bytes: None,
        },
    )
    .unwrap();
    assert!(
        out.deleted > 0 && out.deleted < segments,
        "{out:?} of {segments}"
    );
    let m = remote.manifest();
    assert_eq!(m.start_offset(), m.segments[0].base_offset);
    assert!(read(&remote, 0, 100).is_none(), "deleted offsets are gone");
    assert_eq!(
        keys_in(&store).len(),
        4 * m.segments.len() + 1,
        "their objects too"
    );
}

#[test]
fn a_second_broker_claims_the_copy_and_the_first_stops_writing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small()).unwrap());
    fill(&log, 0, 60);
    let store = Arc::new(InMemory::new());
    let a = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    upload(&a, &log, Retention::default()).unwrap();
    let b = tiered(&store, "broker-b").remote_log("orders", "id1", 0);
    let bl = b.clone();
    b.tiered()
        .run(async move { bl.load().await })
        .unwrap()
        .unwrap();
    assert_eq!(b.manifest().writer, "broker-b");
    // A roll later, a's write meets b's manifest: refused, and a copies nothing more.
    fill(&log, 60, 100);
    let before = b.manifest();
    let err = upload(&a, &log, Retention::default()).unwrap_err();
    assert!(
        matches!(&err, RemoteError::Fenced { writer, .. } if writer == "broker-b"),
        "{err}"
    );
    assert!(a.is_fenced());
    assert_eq!(upload(&a, &log, Retention::default()).unwrap().uploaded, 0);
    // b's manifest is as b left it; b goes on.
    let b2 = tiered(&store, "broker-b").remote_log("orders", "id1", 0);
    let bl = b2.clone();
    b2.tiered()
        .run(async move { bl.load().await })
        .unwrap()
        .unwrap();
    assert_eq!(*b2.manifest(), *before);
    assert!(upload(&b, &log, Retention::default()).unwrap().uploaded > 0);
}

#[test]
fn an_upload_cut_short_leaves_nothing_named_and_is_done_once_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small()).unwrap());
    fill(&log, 0, 60);
    let store = Arc::new(InMemory::new());
    let t = tiered(&store, "broker-a");
    // The first segment's objects are written, the manifest is not (the broker died).
    let first = log.sealed_segments()[0].clone();
    let cut = t.remote_log("orders", "id1", 0);
    let (c, l) = (cut.clone(), log.clone());
    t.run(async move {
        c.load().await.unwrap();
        c.copy_segment(&l, &first).await
    })
    .unwrap()
    .unwrap();
    let orphans = keys_in(&store).len();
    assert_eq!(orphans, 4);
    // After the restart, the pass deletes the orphans and copies every segment once.
    let remote = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    upload(&remote, &log, Retention::default()).unwrap();
    let m = remote.manifest();
    let bases: Vec<u64> = m.segments.iter().map(|s| s.base_offset).collect();
    let mut unique = bases.clone();
    unique.dedup();
    assert_eq!(bases, unique);
    assert_eq!(bases.len(), log.sealed_segments().len());
    assert_eq!(keys_in(&store).len(), 4 * bases.len() + 1);
}

#[test]
fn a_restored_partition_starts_at_the_end_of_the_copies_with_its_producers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path().join("lost"), small()).unwrap());
    fill(&log, 0, 60);
    let store = Arc::new(InMemory::new());
    let remote = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    upload(&remote, &log, Retention::default()).unwrap();
    let end = remote.manifest().end_offset();

    let t = tiered(&store, "broker-new");
    let record = TopicRecord {
        version: MANIFEST_VERSION,
        topic: "orders".into(),
        topic_id: "id1".into(),
        partition_count: 1,
        config: String::new(),
        created_ms: 1,
    };
    t.put_topic_record(&record).unwrap();
    let (t2, r2) = (t.clone(), record.clone());
    let listed = t
        .run(async move { list_topics(&t2).await })
        .unwrap()
        .unwrap();
    assert_eq!(
        listed,
        vec![RestoredTopic {
            record: record.clone()
        }]
    );
    let restored_dir = dir.path().join("restored");
    let (t2, d2) = (t.clone(), restored_dir.clone());
    let m = t
        .run(async move { restore_partition(&t2, &r2, 0, &d2).await })
        .unwrap()
        .unwrap();
    assert_eq!(m.end_offset(), end);
    let restored = Log::open(&restored_dir, small()).unwrap();
    assert_eq!((restored.start_offset(), restored.end_offset()), (end, end));
    // The producer's last batch before `end` is known: its retry is a duplicate.
    let last_batch = log.read(end - 1, 1).unwrap().batches[0].clone();
    let header = runnel_storage::batch::BatchHeader::decode(&last_batch).unwrap();
    let mut b = BatchBuilder::new();
    b.producer(11, 0, header.base_sequence);
    for r in 0..3 {
        b.push(Some(format!("retry{r}").as_bytes()), Some(b"x"), &[], 5);
    }
    let appended = restored.append(b.build()).unwrap();
    assert_eq!(appended.duplicates, [true]);
    // Older offsets come from the copies, byte for byte.
    let again = t.remote_log("orders", "id1", 0);
    assert_eq!(
        read(&again, 0, 1 << 20).unwrap().batches,
        log.read(0, 1 << 20).unwrap().batches
    );
}

#[test]
fn the_cache_stays_within_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), small()).unwrap());
    fill(&log, 0, 2500);
    let store = Arc::new(InMemory::new());
    let remote = tiered(&store, "broker-a").remote_log("orders", "id1", 0);
    upload(&remote, &log, Retention::default()).unwrap();
    assert!(remote.manifest().size_bytes() > settings().cache_bytes);
    for from in (0..remote.manifest().end_offset()).step_by(7) {
        read(&remote, from, 4096).unwrap();
    }
    assert!(remote.tiered().cache.size_bytes() <= settings().cache_bytes);
}
