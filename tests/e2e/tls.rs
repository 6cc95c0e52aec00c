//! TLS on the gRPC listener, with `runnel-client` as the client: a broker serves clients that
//! trust its CA and no others, refuses plaintext, takes a new certificate on SIGHUP while open
//! connections go on, keeps its certificate when the new files are bad, and with a client CA
//! admits only clients with a certificate it signed. Certificates come from `rcgen`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use runnel_client::{Client, ClientConfig, ClientTls};

use crate::harness::*;

/// A certificate authority for the tests.
pub(crate) struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Ca(CertifiedIssuer::self_signed(params, key).expect("CA certificate"))
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    pub(crate) fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_to(None, names)
    }

    /// As [`Ca::issue`], with the subject's common name `cn`.
    fn issue_to(&self, cn: Option<&str>, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA's certificate to `path`.
    pub(crate) fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.0.pem()).expect("write CA");
        path.to_path_buf()
    }
}

/// `runneld` with TLS on, spawned directly: the harness's readiness check speaks plaintext.
pub(crate) struct TlsBroker {
    child: Child,
    dir: tempfile::TempDir,
    grpc: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
}

impl TlsBroker {
    fn start(dir: tempfile::TempDir, settings: &[(&str, &Path)]) -> Self {
        Self::start_with(dir, settings, &[])
    }

    pub(crate) fn start_with(
        dir: tempfile::TempDir,
        settings: &[(&str, &Path)],
        args: &[&str],
    ) -> Self {
        let (grpc, metrics) = free_addr_pair();
        let mut cmd = runneld_command();
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &grpc.to_string()])
            .args(["--metrics-listen", &metrics.to_string()]);
        for (key, path) in settings {
            cmd.arg("--set")
                .arg(format!("tls.{key}={}", path.display()));
        }
        cmd.args(args);
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn runneld");
        let b = TlsBroker {
            child,
            dir,
            grpc,
            metrics,
        };
        b.wait_log("runneld started");
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let started = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                started.elapsed() < PATIENCE,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sighup(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// A client of the broker trusting `ca`, with a certificate of its own if given.
    async fn client(
        &self,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> runnel_client::Result<Client> {
        Client::connect_with(ClientConfig {
            connect_attempts: 1,
            tls: Some(ClientTls {
                ca_file: Some(ca.to_path_buf()),
                cert_file: identity.map(|(c, _)| c.to_path_buf()),
                key_file: identity.map(|(_, k)| k.to_path_buf()),
                server_name: None,
            }),
            ..ClientConfig::new(format!("localhost:{}", self.grpc.port()))
        })
        .await
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a call through `client` works.
async fn works(client: &runnel_client::Result<Client>) -> bool {
    match client {
        Ok(c) => c.admin().list_topics().await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_takes_a_new_certificate_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (first, second) = (Ca::new("first CA"), Ca::new("second CA"));
    let first_ca = first.write(&dir.path().join("first-ca.pem"));
    let second_ca = second.write(&dir.path().join("second-ca.pem"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |ca: &Ca| {
        let (c, k) = ca.issue(&["localhost"]);
        std::fs::write(&cert, c).expect("cert");
        std::fs::write(&key, k).expect("key");
    };
    install(&first);
    let b = TlsBroker::start(dir, &[("cert_file", &cert), ("key_file", &key)]);
    assert!(b.log().contains("tls=\"on\""), "{}", b.log());

    let kept = b.client(&first_ca, None).await;
    assert!(works(&kept).await, "a client trusting the CA");
    kept.as_ref()
        .expect("client")
        .admin()
        .create_topic("secure", 1, runnel_client::TopicConfig::default())
        .await
        .expect("create a topic over TLS");
    let plaintext = Client::connect_with(ClientConfig {
        connect_attempts: 1,
        ..ClientConfig::new(b.grpc.to_string())
    })
    .await;
    assert!(!works(&plaintext).await, "plaintext is refused");
    assert!(
        !works(&b.client(&second_ca, None).await).await,
        "another CA's client"
    );

    // A new certificate from another CA: new connections get it, the open one goes on.
    install(&second);
    b.sighup();
    b.wait_log("reloaded the TLS certificate");
    assert!(works(&kept).await, "the open connection after the reload");
    assert!(works(&b.client(&second_ca, None).await).await);
    assert!(!works(&b.client(&first_ca, None).await).await);

    // Bad files are refused at the reload; the certificate in use stays.
    std::fs::write(&key, "not a key").expect("garble");
    b.sighup();
    b.wait_log("keeping the previous ones");
    assert!(works(&b.client(&second_ca, None).await).await);

    let metrics = {
        let mut s = std::net::TcpStream::connect(b.metrics).expect("metrics");
        use std::io::{Read as _, Write as _};
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("get");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    };
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("runnel_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "refused handshakes are counted: {metrics}");
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_its_client_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca, other_ca) =
        (Ca::new("server CA"), Ca::new("client CA"), Ca::new("other"));
    let trust = server_ca.write(&dir.path().join("server-ca.pem"));
    let clients = client_ca.write(&dir.path().join("client-ca.pem"));
    let write_pair = |ca: &Ca, name: &str, names: &[&str]| {
        let (c, k) = ca.issue(names);
        let (cp, kp) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}-key.pem")),
        );
        std::fs::write(&cp, c).expect("cert");
        std::fs::write(&kp, k).expect("key");
        (cp, kp)
    };
    let (cert, key) = write_pair(&server_ca, "server", &["localhost"]);
    let (alice, alice_key) = write_pair(&client_ca, "alice", &["alice"]);
    let (mallory, mallory_key) = write_pair(&other_ca, "mallory", &["mallory"]);
    let b = TlsBroker::start(
        dir,
        &[
            ("cert_file", &cert),
            ("key_file", &key),
            ("client_ca_file", &clients),
        ],
    );
    assert!(works(&b.client(&trust, Some((&alice, &alice_key))).await).await);
    // The CLI, with the same files as flags.
    let broker = format!("localhost:{}", b.grpc.port());
    let cli = |args: &[&std::ffi::OsStr]| {
        runnel_command()
            .args(["--broker", &broker])
            .args(args)
            .args(["topic", "create", "from-cli"])
            .output()
            .expect("run runnel")
    };
    let out = cli(&[
        "--tls-ca".as_ref(),
        trust.as_os_str(),
        "--tls-cert".as_ref(),
        alice.as_os_str(),
        "--tls-key".as_ref(),
        alice_key.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["--tls-ca".as_ref(), trust.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "without a client certificate");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // The same from a profile, its files named relative to the config file.
    let dir = trust.parent().expect("dir");
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.secure]\nbroker = \"{broker}\"\ntls_ca = \"server-ca.pem\"\ntls_cert = \"alice.pem\"\ntls_key = \"alice-key.pem\"\n"
        ),
    )
    .expect("profile");
    let out = runnel_command()
        .arg("--config")
        .arg(&config)
        .args(["--profile", "secure", "topic", "list"])
        .output()
        .expect("run runnel");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("from-cli"), "{stdout}");
    assert!(
        !works(&b.client(&trust, None).await).await,
        "no client certificate"
    );
    assert!(
        !works(&b.client(&trust, Some((&mallory, &mallory_key))).await).await,
        "a certificate from another CA"
    );
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |sets: &[String]| {
        let mut cmd = runneld_command();
        cmd.arg("--data-dir").arg(dir.path().join("data"));
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.output().expect("run runneld")
    };
    let missing = dir.path().join("missing.pem");
    let out = run(&[
        format!("tls.cert_file={}", missing.display()),
        format!("tls.key_file={}", missing.display()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.cert_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );

    let out = run(&[format!("tls.cert_file={}", missing.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_file"), "{stderr}");
}

#[tokio::test]
async fn without_tls_a_sighup_changes_nothing_and_the_broker_goes_on() {
    let b = Broker::start().await;
    b.signal("HUP");
    let started = Instant::now();
    while !b.log_text().contains("SIGHUP: nothing to reload") {
        assert!(started.elapsed() < PATIENCE, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.is_serving().await, "{}", b.log_text());
}

/// `GET path` over TLS to `addr`, trusting `ca` for the name `localhost`; the whole response.
fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS");
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    match tls.read_to_string(&mut response) {
        Ok(_) => Ok(response),
        // The server may close without close_notify after Connection: close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

#[tokio::test]
async fn with_tls_metrics_the_http_port_serves_metrics_and_the_console_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("CA");
    let trust = ca.write(&dir.path().join("ca.pem"));
    let (c, k) = ca.issue(&["localhost"]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c).expect("cert");
    std::fs::write(&key, k).expect("key");
    let b = TlsBroker::start_with(
        dir,
        &[("cert_file", &cert), ("key_file", &key)],
        &["--set", "tls.metrics=true"],
    );
    assert!(
        b.log().contains(&format!("console=https://{}/", b.metrics)),
        "{}",
        b.log()
    );
    let metrics = https_get(b.metrics, &trust, "/metrics").expect("metrics over TLS");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("runnel_build_info"), "{metrics}");
    let page = https_get(b.metrics, &trust, "/").expect("console over TLS");
    assert!(page.contains("<title>Runnel console</title>"), "{page}");

    // Plaintext HTTP gets no answer.
    let mut plain = std::net::TcpStream::connect(b.metrics).expect("connect");
    plain.set_read_timeout(Some(PATIENCE)).expect("timeout");
    use std::io::{Read as _, Write as _};
    let _ = write!(
        plain,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut got = String::new();
    let _ = plain.read_to_string(&mut got);
    assert!(!got.contains("runnel_build_info"), "{got}");
}

#[tokio::test]
async fn a_client_certificate_names_the_principal_that_acls_are_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let trust = server_ca.write(&dir.path().join("server-ca.pem"));
    let clients = client_ca.write(&dir.path().join("client-ca.pem"));
    let write = |name: &str, (c, k): (String, String)| {
        let (cp, kp) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}-key.pem")),
        );
        std::fs::write(&cp, c).expect("cert");
        std::fs::write(&kp, k).expect("key");
        (cp, kp)
    };
    let (cert, key) = write("server", server_ca.issue(&["localhost"]));
    // The subject's CN names the principal; without one, the first DNS name does.
    let (alice, alice_key) = write(
        "alice",
        client_ca.issue_to(Some("alice"), &["alice.example"]),
    );
    let (bob, bob_key) = write("bob", client_ca.issue_to(None, &["bob"]));
    let b = TlsBroker::start_with(
        dir,
        &[
            ("cert_file", &cert),
            ("key_file", &key),
            ("client_ca_file", &clients),
        ],
        &[
            "--set",
            "auth.enabled=true",
            "--set",
            "auth.super_users=[\"User:bob\"]",
        ],
    );
    let as_alice = b
        .client(&trust, Some((&alice, &alice_key)))
        .await
        .expect("alice");
    let e = as_alice.admin().list_topics().await.unwrap_err();
    assert!(e.to_string().contains("User:alice may not DESCRIBE"), "{e}");
    // Bob, a super user by his certificate, grants alice what she needs.
    let as_bob = b.client(&trust, Some((&bob, &bob_key))).await.expect("bob");
    as_bob
        .admin()
        .create_topic("orders", 1, Default::default())
        .await
        .expect("bob is a super user");
    let grant = runnel_client::Acl {
        principal: "User:alice".into(),
        resource: runnel_client::AclResource::Topic(runnel_client::Pattern::Literal(
            "orders".into(),
        )),
        operation: runnel_client::AclOperation::Describe,
        permission: runnel_client::AclPermission::Allow,
    };
    as_bob
        .security()
        .create_acls(&[grant])
        .await
        .expect("grant");
    let topics = as_alice
        .admin()
        .list_topics()
        .await
        .expect("alice may describe orders");
    assert_eq!(topics.len(), 1);
    assert!(
        b.log().contains("User:alice"),
        "the denial is in the audit log"
    );
}
