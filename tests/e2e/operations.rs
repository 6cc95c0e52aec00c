//! Running runneld: configuration errors and exit codes, signals, logs and metrics.

use std::process::Output;

use runnel_proto::pb;

use crate::harness::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = runneld_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run runneld")
}

/// Flags, environment variables, and what stderr must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_configuration_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runneld.toml");
    std::fs::write(&file, "[limits]\nmax_topic = 3\n").unwrap();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "listen = [\n").unwrap();
    let file = file.to_str().unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let cases: [Case<'_>; 6] = [
        (&["--set", "limits.max_topics=0"], &[], "limits.max_topics"),
        (&["--listen", "nowhere"], &[], "listen"),
        (
            &[],
            &[("RUNNEL_TOPIC_DEFAULTS_SEGMENT_BYTES", "12")],
            "RUNNEL_TOPIC_DEFAULTS_SEGMENT_BYTES",
        ),
        (&["--config", file], &[], "limits.max_topic"),
        (&["--config", bad_file], &[], "not valid TOML"),
        (&["--log-format", "xml"], &[], "log.format"),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    }
}

#[test]
fn print_config_shows_the_effective_layers() {
    let out = run(
        &["--print-config", "--set", "limits.max_topics=7"],
        &[("RUNNEL_LISTEN", "127.0.0.1:9999")],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("max_topics = 7"), "{text}");
    assert!(text.contains("data_dir = \"./data\""), "{text}");
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused() {
    let b = Broker::start().await;
    let out = run(
        &[
            "--data-dir",
            b.data_dir.to_str().unwrap(),
            "--listen",
            &free_addr().to_string(),
            "--set",
            "metrics.enabled=false",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another runneld"));
}

#[tokio::test]
async fn sigint_shuts_down_cleanly_and_json_logs_record_the_life_of_the_broker() {
    let mut b = Broker::start_with(&["--log-format", "json"]).await;
    create_topic(&b, "t", 1).await;
    b.admin()
        .delete_topic(pb::DeleteTopicRequest { topic: "t".into() })
        .await
        .unwrap();
    b.signal("INT");
    let status = b.wait_exit();
    assert!(status.success(), "{status}");
    let log = b.log_text();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "not JSON: {l}");
    }
    for message in [
        "runneld started",
        "created topic",
        "deleted topic",
        "received shutdown signal",
        "runneld stopped",
    ] {
        let n = lines
            .iter()
            .filter(|l| l.contains(&format!("\"message\":\"{message}\"")))
            .count();
        assert_eq!(n, 1, "one {message:?} line in:\n{log}");
    }
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let b = Broker::start().await;
    create_topic(&b, "t", 2).await;
    produce_acked(&b, "t", 1, pb::Acks::Durable, vec![batch_of("m", 0, 10)]).await;
    fetch_all(&b, "t", 1, 0).await;
    let text = b.scrape_metrics();
    for needle in [
        "runnel_records_in_total{topic=\"t\"} 10",
        "runnel_bytes_in_total{topic=\"t\"}",
        "runnel_records_out_total{topic=\"t\"} 10",
        "runnel_bytes_out_total{topic=\"t\"}",
        "runnel_rpc_requests_total{rpc=\"Produce\",code=\"OK\"} 1",
        "runnel_rpc_duration_seconds_bucket{rpc=\"Produce\",code=\"OK\",le=\"0.005\"}",
        "runnel_fsync_duration_seconds_count",
        "runnel_partition_log_end_offset{topic=\"t\",partition=\"1\"} 10",
        "runnel_partition_size_bytes{topic=\"t\",partition=\"1\"}",
        "runnel_connections_active",
        "runnel_topics 1",
        "runnel_partitions 2",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_threads ",
        "runnel_disk_free_bytes ",
        "runnel_build_info{version=\"",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
}

#[test]
fn systemd_is_told_ready_once_serving_and_stopping_at_shutdown() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(runnel_test_support::PATIENCE))
        .expect("timeout");
    let (grpc, metrics) = free_addr_pair();
    let mut child = runneld_command()
        .args(["--data-dir", &dir.path().join("data").display().to_string()])
        .args(["--listen", &grpc.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn runneld");
    let mut message = [0u8; 256];
    let n = socket
        .recv(&mut message)
        .expect("READY within the patience");
    assert_eq!(&message[..n], b"READY=1\n");
    // Ready means serving: a call is answered, not refused as starting.
    let out = runnel_command()
        .args(["--broker", &grpc.to_string(), "broker", "info"])
        .output()
        .expect("run runnel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let n = socket
        .recv(&mut message)
        .expect("STOPPING within the patience");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(wait_bounded(&mut child).success());
}
