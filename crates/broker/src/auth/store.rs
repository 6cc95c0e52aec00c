//! The security state on disk: users (with password hashes), tokens (with secret hashes)
//! and ACLs in `<data_dir>/security.toml`, readable by the broker's user only, replaced
//! atomically on every change (`files::write_atomic`). No secret is stored in a form that
//! gives it back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::acl::Acl;
use crate::error::{Error, RpcError};
use crate::files::{read_toml, write_toml};

/// The file, in the data directory.
pub const FILE: &str = "security.toml";

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    /// The name.
    pub name: String,
    /// The argon2id hash of the password, a PHC string.
    pub password_hash: String,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// When its password was set, ms since the epoch.
    pub password_set_ms: i64,
}

/// A token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The id.
    pub id: String,
    /// The user it authenticates as.
    pub user: String,
    /// The SHA-256 of its secret, hex.
    pub secret_sha256: String,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// When it expires, ms since the epoch; 0 never.
    pub expires_ms: i64,
    /// What it is for.
    pub description: String,
}

/// Everything in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stored {
    /// Users, sorted by name.
    pub users: Vec<StoredUser>,
    /// Tokens, sorted by user and creation time.
    pub tokens: Vec<StoredToken>,
    /// ACLs, sorted.
    pub acls: Vec<Acl>,
}

impl Stored {
    /// The file's state; empty if it does not exist.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::Metadata`] if it does not parse.
    pub fn read(data_dir: &Path) -> Result<(Stored, PathBuf), Error> {
        let path = data_dir.join(FILE);
        Ok((read_toml(&path)?, path))
    }

    /// Writes the state to `path`, durably and atomically. Blocking (an fsync).
    ///
    /// # Errors
    /// `DISK_FULL` or `INTERNAL` if it cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), RpcError> {
        write_toml(path, self)
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&StoredUser> {
        self.users
            .binary_search_by(|u| u.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.users[i])
    }

    /// Puts the lists back in their order after a change.
    pub fn sort(&mut self) {
        self.users.sort_by(|a, b| a.name.cmp(&b.name));
        self.tokens.sort_by(|a, b| {
            (a.user.as_str(), a.created_ms, a.id.as_str()).cmp(&(
                b.user.as_str(),
                b.created_ms,
                b.id.as_str(),
            ))
        });
        self.acls.sort();
        self.acls.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::{Operation, PatternType, Permission, ResourceType};

    #[test]
    fn the_state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, path) = Stored::read(dir.path()).unwrap();
        assert_eq!(empty, Stored::default());
        let mut s = Stored {
            users: vec![StoredUser {
                name: "alice".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                created_ms: 1,
                password_set_ms: 2,
            }],
            tokens: vec![StoredToken {
                id: "0123456789ab".into(),
                user: "alice".into(),
                secret_sha256: "00".repeat(32),
                created_ms: 3,
                expires_ms: 0,
                description: "ci".into(),
            }],
            acls: vec![Acl {
                principal: "User:alice".into(),
                resource_type: ResourceType::Topic,
                name: "orders".into(),
                pattern_type: PatternType::Prefixed,
                operation: Operation::Read,
                permission: Permission::Allow,
            }],
        };
        s.sort();
        s.write(&path).unwrap();
        assert_eq!(Stored::read(dir.path()).unwrap().0, s);
        assert!(s.user("alice").is_some() && s.user("bob").is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("pattern_type = \"prefixed\""), "{text}");
    }

    #[test]
    fn a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "users = 3").unwrap();
        let e = Stored::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("security.toml"), "{e}");
    }
}
