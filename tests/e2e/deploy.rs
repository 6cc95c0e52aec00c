//! What `deploy/` ships is checked against a real broker: every metric the alert rules and the
//! Grafana dashboard use is one the broker exports.

use std::collections::BTreeSet;
use std::time::Duration;

use runnel_proto::pb;

use crate::harness::*;

/// The metric names in `text`: `runnel_*` and `process_*`, a histogram's series by its name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("runnel_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..len];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        i += len;
    }
    names
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let root = workspace_root();
    let mut used = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/runnel-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let names = metric_names(&text);
        assert!(names.len() > 5, "{file}: {names:?}");
        used.extend(names);
    }

    // A broker that has done a bit of everything: durable appends, a throttled client, a
    // refused topic, a consumer group with lag.
    let b = Broker::start_with(&[
        "--set",
        "groups.lag_refresh_interval_ms=100",
        "--set",
        "quotas.produce_bytes_per_sec=1000",
        "--set",
        "quotas.burst_ms=1",
        "--set",
        "quotas.max_throttle_ms=20",
        "--set",
        "limits.max_topics=1",
    ])
    .await;
    create_topic(&b, "t", 1).await;
    for _ in 0..3 {
        produce_acked(&b, "t", 0, pb::Acks::Durable, vec![batch_of("m", 0, 10)]).await;
    }
    let refused = b
        .admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "u".into(),
            partition_count: 1,
            config: None,
        })
        .await;
    assert!(refused.is_err(), "max_topics is 1");
    let out = runnel_command()
        .args([
            "--broker",
            &b.grpc.to_string(),
            "consume",
            "t",
            "--group",
            "g",
        ])
        .args(["--count", "10"])
        .output()
        .expect("run runnel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let exported = within(async {
        loop {
            let text = b.scrape_metrics();
            if text.contains("runnel_group_lag_records{") {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let missing: Vec<_> = used
        .iter()
        .filter(|name| !exported.contains(&format!("# TYPE {name} ")))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{exported}");
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(runnel_rpc_duration_seconds_bucket{rpc="Produce"}[5m]))) / process_max_fds"#,
    );
    let names: Vec<_> = names.into_iter().collect();
    assert_eq!(names, ["process_max_fds", "runnel_rpc_duration_seconds"]);
}
