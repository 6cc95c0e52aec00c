//! What `deploy/` and the `Dockerfile` ship is checked against a real broker: every metric the
//! alert rules and the Grafana dashboard use is one the broker exports, and the image's
//! entrypoint, config, health check and stop work as the image would run them.

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
    // refused topic, a consumer group with lag, a topic copied to an object store.
    let bucket = tokio::task::spawn_blocking(runnel_test_support::s3::bucket)
        .await
        .expect("a bucket");
    let remote = bucket.settings();
    let flags = [
        "groups.lag_refresh_interval_ms=100".to_owned(),
        "quotas.produce_bytes_per_sec=1000".into(),
        "quotas.burst_ms=1".into(),
        "quotas.max_throttle_ms=20".into(),
        "limits.max_topics=2".into(),
        format!("remote_storage.bucket={}", remote.bucket),
        format!("remote_storage.endpoint={}", remote.endpoint),
        format!("remote_storage.access_key_id={}", remote.access_key_id),
        format!(
            "remote_storage.secret_access_key={}",
            remote.secret_access_key
        ),
        "remote_storage.upload_interval_ms=50".into(),
    ];
    let args: Vec<&str> = flags.iter().flat_map(|kv| ["--set", kv.as_str()]).collect();
    let b = Broker::start_with(&args).await;
    create_topic(&b, "t", 1).await;
    b.admin()
        .create_topic(pb::CreateTopicRequest {
            topic: "copied".into(),
            partition_count: 1,
            config: Some(pb::TopicConfig {
                remote_storage: Some(true),
                ..Default::default()
            }),
        })
        .await
        .expect("a topic with tiered storage");
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
    assert!(refused.is_err(), "max_topics is 2");
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
            if text.contains("runnel_group_lag_records{")
                && text.contains("runnel_remote_upload_lag_segments{")
            {
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

/// What the `Dockerfile`'s final stage says: its `ENV` variables, user, entrypoint and health
/// check command, and the files it copies (`src dst`).
struct Image {
    env: Vec<(String, String)>,
    user: String,
    entrypoint: Vec<String>,
    healthcheck: Vec<String>,
    copies: Vec<String>,
}

impl Image {
    fn read() -> Self {
        let text =
            std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
        let joined = text.replace("\\\n", " ");
        let stage = joined
            .rsplit_once("\nFROM ")
            .map_or(joined.as_str(), |(_, last)| last);
        let mut image = Image {
            env: Vec::new(),
            user: String::new(),
            entrypoint: Vec::new(),
            healthcheck: Vec::new(),
            copies: Vec::new(),
        };
        let json_array = |s: &str| -> Vec<String> {
            serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("exec form {s:?}: {e}"))
        };
        for line in stage.lines().map(str::trim) {
            if let Some(vars) = line.strip_prefix("ENV ") {
                for pair in vars.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    image.env.push((k.to_owned(), v.to_owned()));
                }
            } else if let Some(user) = line.strip_prefix("USER ") {
                user.trim().clone_into(&mut image.user);
            } else if let Some(args) = line.strip_prefix("ENTRYPOINT ") {
                image.entrypoint = json_array(args);
            } else if let Some(check) = line.strip_prefix("HEALTHCHECK ") {
                let (_, cmd) = check
                    .split_once(" CMD ")
                    .expect("HEALTHCHECK ... CMD [...]");
                image.healthcheck = json_array(cmd);
            } else if let Some(copy) = line.strip_prefix("COPY ") {
                image.copies.push(copy.trim().to_owned());
            }
        }
        image
    }

    fn env(&self, key: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| panic!("the image sets no {key}"), |(_, v)| v.as_str())
    }
}

/// The image cannot be built on this machine (no Docker daemon, no registry for its base
/// images), so what it runs is run here as it would run there: the entrypoint with the config
/// file the image copies and the variables it sets (the addresses and data directory moved to
/// free local ones), the health check command against it, and `docker stop`'s SIGTERM.
#[test]
fn the_image_runs_its_config_as_a_user_its_health_check_passes_and_it_stops_in_time() {
    let image = Image::read();
    assert!(
        !image.user.is_empty() && !image.user.starts_with("root") && !image.user.starts_with('0'),
        "the image runs as {:?}",
        image.user
    );
    let deadline: u64 = image
        .env("RUNNEL_SHUTDOWN_DEADLINE_MS")
        .parse()
        .expect("ms");
    assert!(
        deadline + 1000 < 10_000,
        "a shutdown deadline of {deadline} ms does not fit docker stop's 10 s"
    );
    let config_in_image = "/etc/runnel/runneld.toml";
    assert!(
        image
            .copies
            .contains(&format!("config/runneld.toml {config_in_image}")),
        "{:?}",
        image.copies
    );
    assert_eq!(
        image.entrypoint,
        ["/usr/local/bin/runneld", "--config", config_in_image]
    );
    assert_eq!(image.healthcheck[0], "/usr/local/bin/runnel");

    let dir = tempfile::tempdir().expect("temp dir");
    let (grpc, metrics) = free_addr_pair();
    let mut cmd = runneld_command();
    for (k, v) in &image.env {
        cmd.env(k, v);
    }
    // `docker run -e RUNNEL_AUTH_BOOTSTRAP_PASSWORD=…`, which an image with auth on needs.
    assert_eq!(image.env("RUNNEL_AUTH_ENABLED"), "true");
    cmd.env("RUNNEL_AUTH_BOOTSTRAP_PASSWORD", "first-start-password")
        .env("RUNNEL_DATA_DIR", dir.path().join("data"))
        .env("RUNNEL_LISTEN", grpc.to_string())
        .env("RUNNEL_METRICS_LISTEN", metrics.to_string())
        .args(["--config"])
        .arg(workspace_root().join("config/runneld.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log"));
    let mut child = cmd.spawn().expect("spawn runneld");
    let health = || {
        let mut check = runnel_command();
        for arg in &image.healthcheck[1..] {
            let arg = if arg == "127.0.0.1:7171" {
                grpc.to_string()
            } else {
                arg.clone()
            };
            check.arg(arg);
        }
        check.output().expect("run the health check")
    };
    let started = std::time::Instant::now();
    while !health().status.success() {
        assert!(started.elapsed() < PATIENCE, "never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_bounded(&mut child);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("runneld stopped"), "{log}");
    assert!(log.contains("bootstrap administrator created"), "{log}");
    assert!(!log.contains("first-start-password"), "{log}");
    let after = health();
    assert!(!after.status.success(), "healthy after it stopped");
}
