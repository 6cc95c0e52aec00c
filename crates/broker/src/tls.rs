//! TLS on the gRPC listener: rustls with the ring provider, the certificate and key read from
//! PEM files (`[tls]`), optionally requiring client certificates signed by a CA (mutual TLS).
//!
//! The files are read at start (a problem stops the start, naming the key) and again on
//! SIGHUP: [`Tls::reload`] swaps the server config that new handshakes use, while open
//! connections keep the one they were made with. A reload that fails keeps the previous
//! config and says why. The handshake runs in a task of its own per connection, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the accept loop.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;
use crate::error::Error;

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's TLS: the files it reads and the server config of new handshakes.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Configs>,
}

/// The server configs of one reading of the files.
#[derive(Debug, Clone)]
struct Configs {
    /// The gRPC listener's: HTTP/2 by ALPN.
    grpc: Arc<ServerConfig>,
    /// The HTTP port's (`tls.metrics`): HTTP/1.1 by ALPN.
    http: Arc<ServerConfig>,
}

impl Configs {
    fn read(settings: &TlsSettings) -> Result<Self, Error> {
        let base = server_config(settings)?;
        let mut grpc = base.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        let mut http = base;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Configs {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
        })
    }
}

impl Tls {
    /// Reads the files of `settings`; `None` when TLS is off.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key whose file cannot be read or used.
    pub fn load(settings: &TlsSettings) -> Result<Option<Arc<Self>>, Error> {
        if !settings.enabled() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Tls {
            settings: settings.clone(),
            current: RwLock::new(Configs::read(settings)?),
        })))
    }

    /// Reads the files again; new handshakes use them from now on.
    ///
    /// # Errors
    /// As [`Tls::load`]; the previous config stays in use.
    pub fn reload(&self) -> Result<(), Error> {
        let configs = Configs::read(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
        Ok(())
    }

    /// The acceptor of the gRPC listener's next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs().grpc)
    }

    /// The acceptor of the HTTP port's next handshake.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs().http)
    }

    /// Whether the HTTP port serves TLS too.
    pub fn on_http_port(&self) -> bool {
        self.settings.metrics
    }

    fn configs(&self) -> Configs {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The name a verified client certificate gives its holder (`docs/security.md`, "Client
/// certificates"): the subject's common name (CN), or else its first DNS name. `None` without
/// a client certificate (rustls verified it against the client CA before this).
pub fn client_name(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned));
    let dns = || {
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
    };
    cn.or_else(dns)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .map(Arc::from)
}

/// The server config of `settings`: its certificate chain and key, and the client verifier
/// of its client CA, if any.
fn server_config(settings: &TlsSettings) -> Result<ServerConfig, Error> {
    let invalid = |key: &str, path: &str, why: String| Error::Config {
        key: format!("tls.{key}"),
        reason: format!("{path}: {why}"),
    };
    let chain = certificates(&settings.cert_file)
        .map_err(|e| invalid("cert_file", &settings.cert_file, e))?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| invalid("key_file", &settings.key_file, pem_error(&e)))?;
    // ring builds with a C compiler alone (aws-lc-rs, which rustls now prefers for its
    // post-quantum key exchange, needs more of the build machine).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", &settings.cert_file, e.to_string()))?;
    let builder = if settings.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let path = &settings.client_ca_file;
        let mut roots = RootCertStore::empty();
        for ca in certificates(path).map_err(|e| invalid("client_ca_file", path, e))? {
            roots
                .add(ca)
                .map_err(|e| invalid("client_ca_file", path, e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| invalid("client_ca_file", path, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("key_file", &settings.key_file, e.to_string()))
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&e))?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}
