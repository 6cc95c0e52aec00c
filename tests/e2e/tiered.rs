//! Tiered storage with the real `runneld` and a real S3-compatible store (SeaweedFS,
//! `runnel_test_support::s3`): the broker killed with `kill -9` again and again while it
//! copies segments, and then every acknowledged record read back from the bucket and the
//! local tail, each segment named once by the manifest and nothing else left; `runnel topic describe` showing the
//! local and remote offsets and sizes.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use runnel_proto::pb;
use runnel_test_support::s3;
use serde_json::Value;

use crate::harness::{Broker, runnel_command};
use runnel_test_support::prelude::*;

/// The `--set` flags that point a broker at `bucket`.
fn remote_flags(bucket: &s3::Bucket) -> Vec<String> {
    let s = bucket.settings();
    [
        format!("remote_storage.bucket={}", s.bucket),
        format!("remote_storage.endpoint={}", s.endpoint),
        format!("remote_storage.access_key_id={}", s.access_key_id),
        format!("remote_storage.secret_access_key={}", s.secret_access_key),
        "remote_storage.upload_interval_ms=20".into(),
        "remote_storage.retry_min_ms=50".into(),
        "storage.retention_check_interval_ms=100".into(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_owned(), kv])
    .collect()
}

fn store(bucket: &s3::Bucket) -> Arc<dyn ObjectStore> {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = bucket.settings();
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_endpoint(&s.endpoint)
            .with_allow_http(true)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(&s.secret_access_key)
            .build()
            .expect("an S3 client"),
    )
}

/// Every key in the bucket.
async fn keys(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    use futures_util::StreamExt;
    store
        .list(None)
        .map(|m| m.expect("listing").location.to_string())
        .collect()
        .await
}

#[tokio::test]
async fn copies_survive_kill_9_during_uploads_and_name_each_segment_once() {
    let bucket = tokio::task::spawn_blocking(s3::bucket)
        .await
        .expect("bucket");
    let flags = remote_flags(&bucket);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut b = Broker::start_with(&flags).await;
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "logs".into(),
            partition_count: 1,
            config: Some(s3::tiered_topic_config()),
        })
        .await
        .expect("create topic");

    // Rounds of 60 acknowledged batches, each ended by kill -9 a moment into the copies.
    let mut next = 0u64;
    for round in 0..8u64 {
        for _ in 0..60 {
            let r = produce(&b, "logs", 0, vec![batch_of("l", next, 20)]).await;
            assert!(r.error.is_none(), "{:?}", r.error);
            next += 20;
        }
        tokio::time::sleep(Duration::from_millis(5 + 13 * round)).await;
        b.kill9();
        b = b.start_again().await;
    }

    // Everything copied; local disk holds only the active segment.
    let d = within(async {
        loop {
            let d = describe_topic(&b, "logs").await.partitions.remove(0);
            if d.upload_lag_segments == 0
                && d.remote_log_end_offset > 0
                && d.local_log_start_offset == d.remote_log_end_offset
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!((d.log_start_offset, d.log_end_offset), (0, next));
    let all = fetch_all(&b, "logs", 0, 0).await;
    let expected: Vec<String> = (0..next).map(|i| format!("l-{i}")).collect();
    assert_eq!(
        values(&all, 0),
        expected,
        "every acknowledged record, once, in order"
    );

    // The manifest names each segment once, contiguously; what uploads cut short left is
    // named by nothing.
    let store = store(&bucket);
    let all_keys = keys(&store).await;
    let manifest_key = all_keys
        .iter()
        .find(|k| k.ends_with("/0/manifest.json"))
        .expect("a manifest");
    let manifest: Value = serde_json::from_slice(
        &store
            .get(&Key::from(manifest_key.as_str()))
            .await
            .expect("get the manifest")
            .bytes()
            .await
            .expect("manifest bytes"),
    )
    .expect("JSON");
    let segments = manifest["segments"].as_array().expect("segments");
    assert_eq!(segments.len() as u32, d.remote_segment_count);
    let mut expected_base = 0;
    for s in segments {
        assert_eq!(s["base_offset"].as_u64(), Some(expected_base), "{manifest}");
        expected_base = s["next_offset"].as_u64().expect("next_offset");
        let named = format!(
            "{:020}-{}.log",
            s["base_offset"].as_u64().expect("base"),
            s["upload_id"].as_str().expect("upload id")
        );
        assert!(
            all_keys.iter().any(|k| k.ends_with(&named)),
            "{named} is in the bucket"
        );
    }
    assert_eq!(expected_base, d.remote_log_end_offset);
    // Objects of uploads a kill cut short are deleted at the next start: every segment
    // object left is one the manifest names.
    let named: Vec<&str> = segments
        .iter()
        .map(|s| s["upload_id"].as_str().expect("upload id"))
        .collect();
    for key in all_keys
        .iter()
        .filter(|k| k.contains("/0/") && !k.ends_with("manifest.json"))
    {
        assert!(
            named.iter().any(|id| key.contains(&format!("-{id}."))),
            "{key} is named by the manifest"
        );
    }

    // The CLI shows the copies next to the local log.
    let out = runnel_command()
        .args(["--broker", &b.grpc.to_string(), "topic", "describe", "logs"])
        .output()
        .expect("runnel topic describe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("REMOTE") && text.contains("remote-storage"),
        "{text}"
    );
    assert!(
        text.contains(&format!("0..{}", d.remote_log_end_offset)),
        "the remote range: {text}"
    );
    let metrics = b.scrape_metrics();
    assert!(
        metrics.contains("runnel_remote_upload_lag_bytes{topic=\"logs\",partition=\"0\"} 0\n"),
        "{metrics}"
    );
    let size = format!(
        "runnel_remote_size_bytes{{topic=\"logs\",partition=\"0\"}} {}\n",
        d.remote_size_bytes
    );
    assert!(metrics.contains(&size), "{metrics}");
}
