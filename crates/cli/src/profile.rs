//! Which broker to talk to: `--broker`, `--profile`, the environment, and named profiles in
//! a config file.
//!
//! The file is TOML, by default `$XDG_CONFIG_HOME/runnel/config.toml` (else
//! `~/.config/runnel/config.toml`), or the path of `--config` / `RUNNEL_CLI_CONFIG`:
//!
//! ```toml
//! default_profile = "local"
//!
//! [profiles.local]
//! broker = "127.0.0.1:7171"
//!
//! [profiles.staging]
//! broker = "staging-runnel.internal:7171"
//! tls_ca = "staging-ca.pem"          # TLS: the CA of the broker's certificate
//! tls_cert = "me.pem"                # mutual TLS: this client's certificate and key
//! tls_key = "me-key.pem"
//! user = "alice"                     # authentication: a user and password,
//! password = "…"
//! # token = "rnl_…"                  # or a token
//! ```
//!
//! Relative TLS paths are relative to the config file's directory. `--tls-ca`, `--tls-cert`
//! and `--tls-key` (and their variables) override a profile's; so do `--user`,
//! `--password-file`, `--token-file` and their variables its credentials. A file holding a
//! password or token should be readable by its owner only.
//!
//! Precedence, first found wins: `--broker`, `--profile`, `RUNNEL_BROKER`, `RUNNEL_PROFILE`,
//! `default_profile`, then `127.0.0.1:7171`. A flag beats the environment, so a shell with
//! `RUNNEL_BROKER` set can still pick a profile with `--profile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{not_found, usage};

/// The broker address when nothing names one.
pub const DEFAULT_BROKER: &str = "127.0.0.1:7171";

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when neither a broker nor a profile is given.
    pub default_profile: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// A named profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The broker's address, `host:port`.
    pub broker: String,
    /// TLS: the CA certificates (PEM) of the broker's certificate.
    pub tls_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The user to authenticate as, with `password`.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// A bearer token, when no user is given.
    pub token: Option<Secret>,
}

/// A password or token: never shown (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the commands go: the broker, and the TLS files of the profile that named it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The broker's address.
    pub broker: String,
    /// The profile's `tls_ca`, resolved against the config file's directory.
    pub tls_ca: Option<PathBuf>,
    /// The profile's `tls_cert`, likewise.
    pub tls_cert: Option<PathBuf>,
    /// The profile's `tls_key`, likewise.
    pub tls_key: Option<PathBuf>,
    /// The profile's `user`.
    pub user: Option<String>,
    /// The profile's `password`.
    pub password: Option<Secret>,
    /// The profile's `token`.
    pub token: Option<Secret>,
}

impl Target {
    fn address(broker: impl Into<String>) -> Self {
        Target {
            broker: broker.into(),
            ..Target::default()
        }
    }
}

/// A value and whether it came from the command line (else from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The value.
    pub value: String,
    /// True for a flag, false for an environment variable.
    pub flag: bool,
}

/// The default config file path, if a home or config directory is known.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("runnel").join("config.toml"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| {
            PathBuf::from(home)
                .join(".config")
                .join("runnel")
                .join("config.toml")
        })
}

/// Reads the config file; a missing file is an empty config.
///
/// # Errors
/// A usage error for a file that cannot be read or parsed, naming the path and line.
pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(usage(format!("cannot read {}: {e}", path.display()))),
    };
    parse(&text).map_err(|e| usage(format!("config file {}: {e}", path.display())))
}

/// Parses a config file's text; the error is one line with the line number.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| {
            1 + text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
        });
        let message = e.message().replace('\n', " ");
        match line {
            Some(l) => format!("line {l}: {message}"),
            None => message,
        }
    })
}

/// Resolves the broker address (and a profile's TLS files) by the precedence in the module
/// docs.
///
/// # Errors
/// A usage error for a bad config file; not found for a profile the file does not have.
pub fn resolve(
    broker: Option<Given>,
    profile: Option<Given>,
    config_path: Option<&Path>,
) -> anyhow::Result<Target> {
    let from_flag = |g: &Option<Given>| g.as_ref().filter(|g| g.flag).map(|g| g.value.clone());
    let from_env = |g: &Option<Given>| g.as_ref().filter(|g| !g.flag).map(|g| g.value.clone());
    if let Some(b) = from_flag(&broker) {
        return Ok(Target::address(b));
    }
    if let Some(p) = from_flag(&profile) {
        return lookup(&p, config_path);
    }
    if let Some(b) = from_env(&broker) {
        return Ok(Target::address(b));
    }
    if let Some(p) = from_env(&profile) {
        return lookup(&p, config_path);
    }
    let Some(path) = config_path else {
        return Ok(Target::address(DEFAULT_BROKER));
    };
    let config = load(path)?;
    match config.default_profile {
        Some(p) => find(&config.profiles, &p, path),
        None => Ok(Target::address(DEFAULT_BROKER)),
    }
}

fn lookup(profile: &str, config_path: Option<&Path>) -> anyhow::Result<Target> {
    let Some(path) = config_path else {
        return Err(not_found(format!(
            "profile {profile:?} not found: no config file (set HOME, XDG_CONFIG_HOME or --config)"
        )));
    };
    if !path.exists() {
        return Err(not_found(format!(
            "profile {profile:?} not found: there is no config file at {}",
            path.display()
        )));
    }
    let config = load(path)?;
    find(&config.profiles, profile, path)
}

fn find(profiles: &BTreeMap<String, Profile>, name: &str, path: &Path) -> anyhow::Result<Target> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let near = |p: &Option<PathBuf>| p.as_ref().map(|p| dir.join(p));
    match profiles.get(name) {
        Some(p) => Ok(Target {
            broker: p.broker.clone(),
            tls_ca: near(&p.tls_ca),
            tls_cert: near(&p.tls_cert),
            tls_key: near(&p.tls_key),
            user: p.user.clone(),
            password: p.password.clone(),
            token: p.token.clone(),
        }),
        None => {
            let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
            Err(not_found(format!(
                "profile {name:?} not found in {} (profiles: {})",
                path.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{NOT_FOUND, USAGE, exit_code};

    const FILE: &str = r#"
default_profile = "local"

[profiles.local]
broker = "127.0.0.1:7171"

[profiles.staging]
broker = "staging:7171"
tls_ca = "ca.pem"
tls_cert = "/etc/me.pem"
tls_key = "/etc/me-key.pem"
"#;

    fn flag(v: &str) -> Option<Given> {
        Some(Given {
            value: v.into(),
            flag: true,
        })
    }

    fn env(v: &str) -> Option<Given> {
        Some(Given {
            value: v.into(),
            flag: false,
        })
    }

    #[test]
    fn precedence() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let path = dir.join("config.toml");
        std::fs::write(&path, FILE).unwrap();
        let p = Some(path.as_path());
        let broker = |t: anyhow::Result<Target>| t.unwrap().broker;
        assert_eq!(broker(resolve(flag("a:1"), flag("staging"), p)), "a:1");
        assert_eq!(
            broker(resolve(env("a:1"), flag("staging"), p)),
            "staging:7171"
        );
        assert_eq!(broker(resolve(env("a:1"), env("staging"), p)), "a:1");
        assert_eq!(broker(resolve(None, env("staging"), p)), "staging:7171");
        assert_eq!(broker(resolve(None, None, p)), "127.0.0.1:7171");
        assert_eq!(broker(resolve(None, None, None)), DEFAULT_BROKER);
        let missing = dir.join("none.toml");
        assert_eq!(
            broker(resolve(None, None, Some(missing.as_path()))),
            DEFAULT_BROKER
        );
        // A profile's TLS files, relative ones next to the config file.
        let staging = resolve(None, flag("staging"), p).unwrap();
        assert_eq!(staging.tls_ca, Some(dir.join("ca.pem")));
        assert_eq!(staging.tls_cert, Some(PathBuf::from("/etc/me.pem")));
        assert_eq!(staging.tls_key, Some(PathBuf::from("/etc/me-key.pem")));
        assert_eq!(resolve(None, flag("local"), p).unwrap().tls_ca, None);
        let e = resolve(None, flag("prod"), p).unwrap_err();
        assert_eq!(exit_code(&e), NOT_FOUND);
        assert!(e.to_string().contains("local, staging"), "{e}");
        let e = resolve(None, flag("prod"), Some(missing.as_path())).unwrap_err();
        assert_eq!(exit_code(&e), NOT_FOUND);
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = parse("[profiles.x]\nbrokr = \"a:1\"\n").unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
        assert!(!e.contains('\n'));
        assert!(parse("[profiles.x]\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "default_profile = 3").unwrap();
        let e = resolve(None, None, Some(path.as_path())).unwrap_err();
        assert_eq!(exit_code(&e), USAGE);
    }
}
