//! Authentication and authorization from outside: `runneld` with `[auth]` on, administered
//! with the `runnel` CLI (users, tokens, ACLs; credentials from flags, the environment and a
//! profile), used by `runnel-client`, scraped over HTTP, and identified by client
//! certificates; the refusal to serve a network address without authentication; and the
//! audit log, which says who was refused and what changed, and never holds a secret.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Output, Stdio};

use base64::Engine as _;
use runnel_client::{Client, ClientConfig, ClientError, Credentials, ErrorCode};

use crate::harness::*;

const ADMIN_PASSWORD: &str = "bootstrap-Pa55word";
const ALICE_PASSWORD: &str = "alice-Pa55word";

async fn secured() -> Broker {
    Broker::start_with(&[
        "--set",
        "auth.enabled=true",
        "--set",
        &format!("auth.bootstrap_password={ADMIN_PASSWORD}"),
    ])
    .await
}

/// Runs `runnel --broker B args…` with `env` and `stdin`.
fn cli(b: &Broker, env: &[(&str, &str)], stdin: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = runnel_command();
    cmd.args(["--broker", &b.grpc.to_string()]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Some(input) = stdin else {
        return cmd.output().expect("run runnel");
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("runnel output")
}

const ADMIN: [(&str, &str); 2] = [
    ("RUNNEL_USER", "admin"),
    ("RUNNEL_PASSWORD", ADMIN_PASSWORD),
];

/// Asserts success and gives stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a refusal: exit code 5 and one line on stderr holding `needle`.
fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} in {stderr}");
}

/// `runnel acl create --principal PRINCIPAL rest…` as the administrator, which must succeed.
fn grant(b: &Broker, principal: &str, rest: &str) {
    let mut args = vec!["acl", "create", "--principal", principal];
    args.extend(rest.split_whitespace());
    ok(&cli(b, &ADMIN, None, &args));
}

async fn client_as(b: &Broker, credentials: Credentials) -> Client {
    Client::connect_with(ClientConfig {
        credentials: Some(credentials),
        ..ClientConfig::new(b.grpc.to_string())
    })
    .await
    .expect("connect")
}

fn broker_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Broker { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn an_administrator_grants_a_user_exactly_what_it_needs_and_the_log_tells_who_was_refused() {
    let b = secured().await;

    // Nothing without credentials, or with wrong ones.
    refused(&cli(&b, &[], None, &["topic", "list"]), "no credentials");
    let wrong = [("RUNNEL_USER", "admin"), ("RUNNEL_PASSWORD", "guess-guess")];
    refused(
        &cli(&b, &wrong, None, &["topic", "list"]),
        "user name or password is wrong",
    );

    // The administrator creates a topic and a user, whose password comes on stdin.
    ok(&cli(
        &b,
        &ADMIN,
        None,
        &["topic", "create", "orders", "--partitions", "2"],
    ));
    ok(&cli(&b, &ADMIN, None, &["topic", "create", "payroll"]));
    let alice_stdin = format!("{ALICE_PASSWORD}\n");
    ok(&cli(
        &b,
        &ADMIN,
        Some(&alice_stdin),
        &["user", "create", "alice"],
    ));
    let users = ok(&cli(
        &b,
        &ADMIN,
        None,
        &["user", "list", "--output", "json"],
    ));
    assert!(
        users.contains("\"alice\"") && users.contains("\"admin\""),
        "{users}"
    );

    // Alice, with no ACL, is denied; produce needs WRITE on the topic.
    let alice = Credentials::Password {
        user: "alice".into(),
        password: ALICE_PASSWORD.into(),
    };
    let as_alice = client_as(&b, alice.clone()).await;
    let e = as_alice.admin().describe_topic("orders").await.unwrap_err();
    assert_eq!(broker_code(&e), Some(ErrorCode::PermissionDenied), "{e}");
    let alice_env = [
        ("RUNNEL_USER", "alice"),
        ("RUNNEL_PASSWORD", ALICE_PASSWORD),
    ];
    refused(
        &cli(&b, &alice_env, Some("hello\n"), &["produce", "orders"]),
        "User:alice may not",
    );

    // Granted write and read on orders, and read on her group: she produces and consumes,
    // and lists only that topic.
    grant(&b, "User:alice", "--topic orders --operation read,write");
    grant(
        &b,
        "User:alice",
        "--group alice- --prefixed --operation read",
    );
    ok(&cli(
        &b,
        &alice_env,
        Some("one\ntwo\nthree\n"),
        &["produce", "orders"],
    ));
    let read = ok(&cli(
        &b,
        &alice_env,
        None,
        &[
            "consume",
            "orders",
            "--group",
            "alice-audit",
            "--from",
            "earliest",
            "--count",
            "3",
        ],
    ));
    assert_eq!(
        read.lines().collect::<Vec<_>>(),
        ["one", "two", "three"],
        "{read}"
    );
    let listed = ok(&cli(&b, &alice_env, None, &["topic", "list"]));
    assert!(
        listed.contains("orders") && !listed.contains("payroll"),
        "{listed}"
    );
    refused(
        &cli(&b, &alice_env, None, &["topic", "delete", "orders"]),
        "may not DELETE",
    );
    refused(
        &cli(
            &b,
            &alice_env,
            None,
            &["consume", "orders", "--group", "other", "--count", "1"],
        ),
        "group \"other\"",
    );
    let acls = ok(&cli(
        &b,
        &ADMIN,
        None,
        &["acl", "list", "--principal", "User:alice"],
    ));
    assert_eq!(acls.lines().count(), 4, "a header and three ACLs: {acls}");

    // A deny wins over the allow.
    grant(&b, "User:alice", "--topic orders --operation write --deny");
    refused(
        &cli(&b, &alice_env, Some("x\n"), &["produce", "orders"]),
        "may not WRITE",
    );

    // The log: one audit line per refusal and per change, and no secret anywhere.
    let log = b.log_text();
    for needle in [
        "call denied",
        "authentication refused",
        "user created",
        "ACL created",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(log.contains("runnel::audit"), "{log}");
    for secret in [ADMIN_PASSWORD, ALICE_PASSWORD, "guess-guess"] {
        assert!(!log.contains(secret), "{secret:?} in the log");
    }
    let metrics = scrape_as(&b, Some(("admin", ADMIN_PASSWORD)), "/metrics");
    assert!(
        metrics.contains("runnel_authorization_denials_total{operation=\"WRITE\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_authentication_failures_total{mechanism=\"password\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_from_the_cli_work_from_files_profiles_and_the_environment_until_deleted() {
    let b = secured().await;
    let dir = tempfile::tempdir().expect("temp dir");
    ok(&cli(
        &b,
        &ADMIN,
        Some("service-Pa55word\n"),
        &["user", "create", "billing"],
    ));
    grant(&b, "User:billing", "--cluster --operation describe");
    let made = cli(
        &b,
        &ADMIN,
        None,
        &[
            "token",
            "create",
            "billing",
            "--expires",
            "1d",
            "--description",
            "ci",
        ],
    );
    let token = ok(&made).trim().to_owned();
    assert!(token.starts_with("rnl_"), "{token}");
    assert!(String::from_utf8_lossy(&made.stderr).contains("only time it is shown"));

    // The token from a file, the environment and a profile.
    let file = dir.path().join("billing.token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let info = ["broker", "info"];
    ok(&cli(
        &b,
        &[],
        None,
        &["--token-file", file.to_str().unwrap(), info[0], info[1]],
    ));
    ok(&cli(&b, &[("RUNNEL_TOKEN", &token)], None, &info));
    let profile = dir.path().join("cli.toml");
    std::fs::write(
        &profile,
        format!(
            "[profiles.billing]\nbroker = \"{}\"\ntoken = \"{token}\"\n",
            b.grpc
        ),
    )
    .expect("profile");
    let out = runnel_command()
        .arg("--config")
        .arg(&profile)
        .args(["--profile", "billing", "broker", "info"])
        .output()
        .expect("runnel");
    ok(&out);

    // Listed without its secret; deleted, refused at once.
    let listed = ok(&cli(
        &b,
        &ADMIN,
        None,
        &["token", "list", "--output", "json"],
    ));
    let id = token
        .trim_start_matches("rnl_")
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    assert!(listed.contains(&id) && !listed.contains(&token), "{listed}");
    ok(&cli(&b, &ADMIN, None, &["token", "delete", &id]));
    refused(
        &cli(&b, &[("RUNNEL_TOKEN", &token)], None, &info),
        "unknown or was deleted",
    );
    assert!(!b.log_text().contains(&token), "the token in the log");

    // A user without a password is a usage error, found before any call.
    let out = cli(&b, &[("RUNNEL_USER", "billing")], None, &info);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a password"));
}

/// GET `path` on the HTTP port, as `user` if given; the whole response.
fn scrape_as(b: &Broker, user: Option<(&str, &str)>, path: &str) -> String {
    let mut stream = TcpStream::connect(b.metrics).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let auth = user.map_or(String::new(), |(u, p)| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Authorization: Basic {pair}\r\n")
    });
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[tokio::test]
async fn the_http_port_asks_for_credentials_and_checks_the_same_acls() {
    let b = secured().await;
    let anonymous = scrape_as(&b, None, "/metrics");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(
        anonymous.contains("www-authenticate: Basic realm=\"runnel\""),
        "{anonymous}"
    );
    let admin = scrape_as(&b, Some(("admin", ADMIN_PASSWORD)), "/metrics");
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");

    ok(&cli(
        &b,
        &ADMIN,
        Some(&format!("{ALICE_PASSWORD}\n")),
        &["user", "create", "alice"],
    ));
    ok(&cli(&b, &ADMIN, None, &["topic", "create", "orders"]));
    let alice = Some(("alice", ALICE_PASSWORD));
    assert!(scrape_as(&b, alice, "/metrics").starts_with("HTTP/1.1 403"));
    let denied = scrape_as(&b, alice, "/api/topics/orders");
    assert!(
        denied.starts_with("HTTP/1.1 403") && denied.contains("PERMISSION_DENIED"),
        "{denied}"
    );
    grant(&b, "User:alice", "--topic orders --operation describe");
    let described = scrape_as(&b, alice, "/api/topics/orders");
    assert!(
        described.starts_with("HTTP/1.1 200") && described.contains("\"orders\""),
        "{described}"
    );
}

#[tokio::test]
async fn without_auth_the_broker_serves_only_loopback_unless_told_it_is_insecure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_addr().port();
    let out = runneld_command()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--set", "metrics.enabled=false"])
        .output()
        .expect("runneld");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("listen")
            && stderr.contains("not a loopback address")
            && stderr.contains("--insecure"),
        "{stderr}"
    );

    // Told it is insecure, it serves every address.
    let log = dir.path().join("log");
    let mut child = runneld_command()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("0.0.0.0:{port}"), "--insecure"])
        .args(["--set", "metrics.enabled=false"])
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("runneld");
    let started = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("runneld started") || started.elapsed() > PATIENCE {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("runneld started"), "{text}");
}
