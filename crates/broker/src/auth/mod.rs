//! Authentication and authorization: who is calling ([`Auth::authenticate`]) and whether
//! they may ([`Auth::check`], the one point every front end's calls pass), over the users,
//! tokens and ACLs kept in `security.toml` ([`store`]), which the admin operations here
//! change (`docs/security.md`).
//!
//! Passwords are verified against argon2id hashes off the async threads; a verified password
//! is then remembered as a keyed digest (never the password), so that a client sending it
//! with every call pays the hash once, until the password changes. Failed attempts slow the
//! next ones of the same principal and address ([`failures`]). Every refusal and every change
//! is one line on the `runnel::audit` log target, and no line or error holds a secret.

pub mod acl;
pub mod failures;
pub mod secrets;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use runnel_proto::pb::{self, ErrorCode};
use tracing::info;

use self::acl::{Acl, Filter, Operation, Resource, ResourceType};
use self::failures::Failures;
use self::secrets::Remembering;
use self::store::{Stored, StoredToken, StoredUser};
use crate::clock::now_ms;
use crate::config::AuthSettings;
use crate::error::{Error, RpcError};
use crate::metrics;
use crate::tasks::blocking;

/// The log target of audit lines.
pub const AUDIT: &str = "runnel::audit";
/// The principal of every caller while authentication is off.
pub const ANONYMOUS: &str = "User:ANONYMOUS";
/// Password length bounds, bytes.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;
/// The longest user name.
const MAX_USER: usize = 64;
/// The longest token description.
const MAX_DESCRIPTION: usize = 256;

/// Who a call is from: `User:<name>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// The principal of user `name`.
    pub fn user(name: &str) -> Self {
        Principal(Arc::from(format!("User:{name}")))
    }

    /// The principal of calls while authentication is off (one shared value: no allocation
    /// per call).
    pub fn anonymous() -> Self {
        static ANONYMOUS_PRINCIPAL: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
        ANONYMOUS_PRINCIPAL
            .get_or_init(|| Principal(Arc::from(ANONYMOUS)))
            .clone()
    }

    /// `User:<name>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a caller proved who it is, kept to check again while its streams last.
#[derive(Debug, Clone)]
pub enum Proof {
    /// Nothing: authentication is off.
    Anonymous,
    /// A client certificate (valid for the connection's life).
    Certificate,
    /// A password, matched against this hash of the user's.
    Password {
        /// The user.
        user: String,
        /// The hash the password matched.
        hash: Arc<str>,
    },
    /// A token.
    Token {
        /// Its id.
        id: String,
        /// Its expiry, ms since the epoch; 0 never.
        expires_ms: i64,
    },
}

/// A caller that [`Auth::authenticate`] accepted.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who it is.
    pub principal: Principal,
    /// How it proved it.
    pub proof: Proof,
}

impl Authenticated {
    /// The caller while authentication is off.
    pub fn anonymous() -> Self {
        Authenticated {
            principal: Principal::anonymous(),
            proof: Proof::Anonymous,
        }
    }
}

/// What a call presents to prove who it is.
pub enum Credentials<'a> {
    /// Nothing.
    None,
    /// A user name and password.
    Password {
        /// The user.
        user: &'a str,
        /// The password.
        password: &'a str,
    },
    /// A bearer token.
    Token(&'a str),
    /// The name of a client certificate the TLS handshake verified.
    Certificate(&'a str),
    /// An `authorization` header of neither form.
    Malformed,
}

/// A password once verified: its digest, and the hash it was verified against (a new
/// password has a new hash, which makes this stale).
struct Verified {
    digest: ring::hmac::Tag,
    hash: Arc<str>,
}

/// The broker's security: settings, state and the decisions over them.
pub struct Auth {
    enabled: bool,
    super_users: Vec<String>,
    path: PathBuf,
    state: RwLock<Arc<Stored>>,
    /// Serializes changes with the writes of the file.
    changes: Mutex<()>,
    remembering: Remembering,
    verified: Mutex<HashMap<String, Verified>>,
    /// A hash of no one's password, verified against for names no user has.
    dummy_hash: Arc<str>,
    /// Changes so far ([`Auth::revision`]).
    revision: std::sync::atomic::AtomicU64,
    failures: Failures,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The security of the broker with data in `data_dir`: the stored state, and on a first
    /// start with auth on, the bootstrap administrator. Blocking (may hash and fsync).
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Metadata`] for an unusable `security.toml`;
    /// [`Error::Config`] when auth is on, no user exists and nothing would let anyone in.
    pub fn open(data_dir: &Path, settings: &AuthSettings) -> Result<Arc<Self>, Error> {
        let (mut stored, path) = Stored::read(data_dir)?;
        let mut super_users = settings.super_users.clone();
        if !settings.bootstrap_user.is_empty() {
            super_users.push(format!("User:{}", settings.bootstrap_user));
        }
        if settings.enabled && stored.users.is_empty() {
            bootstrap(&mut stored, &path, settings)?;
        }
        let unusable = |e: RpcError| Error::Config {
            key: "auth".into(),
            reason: e.message,
        };
        let remembering = Remembering::new().map_err(unusable)?;
        let dummy_hash = if settings.enabled {
            secrets::unguessable_hash().map_err(unusable)?
        } else {
            String::new()
        };
        Ok(Arc::new(Auth {
            enabled: settings.enabled,
            super_users,
            path,
            state: RwLock::new(Arc::new(stored)),
            changes: Mutex::new(()),
            remembering,
            verified: Mutex::new(HashMap::new()),
            dummy_hash: Arc::from(dummy_hash),
            revision: std::sync::atomic::AtomicU64::new(0),
            failures: Failures::new(
                Duration::from_millis(settings.failure_delay_ms),
                Duration::from_millis(settings.max_failure_delay_ms),
            ),
        }))
    }

    /// Whether calls must authenticate and pass ACLs.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn state(&self) -> Arc<Stored> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Who presents `credentials` from `addr`: the anonymous principal while auth is off.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for missing or refused credentials (one audit line each); the
    /// message never says which part was wrong.
    pub async fn authenticate(
        self: &Arc<Self>,
        credentials: Credentials<'_>,
        addr: Option<IpAddr>,
    ) -> Result<Authenticated, RpcError> {
        if !self.enabled {
            return Ok(Authenticated::anonymous());
        }
        match credentials {
            Credentials::None => Err(refused(
                "none",
                "",
                addr,
                "no credentials: send a user and password or a token \
                 (authorization: Basic … or Bearer …), or a client certificate",
            )),
            Credentials::Certificate(name) => Ok(Authenticated {
                principal: Principal::user(name),
                proof: Proof::Certificate,
            }),
            Credentials::Malformed => Err(refused(
                "malformed",
                "",
                addr,
                "the authorization header is malformed: send \"Basic base64(user:password)\" \
                 or \"Bearer <token>\"",
            )),
            Credentials::Password { user, password } => {
                // A name no user can have is refused at once, and not remembered: the table
                // of failures holds only names of bounded length.
                if check_user_name(user).is_err() {
                    return Err(refused(
                        "password",
                        "",
                        addr,
                        "the user name or password is wrong",
                    ));
                }
                self.slow_down(user, addr).await;
                if let Some(hash) = self.password_ok(user, password).await {
                    self.failures.succeeded(user, addr);
                    Ok(Authenticated {
                        principal: Principal::user(user),
                        proof: Proof::Password {
                            user: user.to_owned(),
                            hash,
                        },
                    })
                } else {
                    self.failures.failed(user, addr);
                    Err(refused(
                        "password",
                        user,
                        addr,
                        "the user name or password is wrong",
                    ))
                }
            }
            Credentials::Token(bearer) => {
                let Some((id, secret)) = secrets::split_token(bearer) else {
                    return Err(refused(
                        "token",
                        "",
                        addr,
                        "the token is not a Runnel token (rnl_…)",
                    ));
                };
                self.slow_down(id, addr).await;
                match self.token_user(id, secret) {
                    Ok((user, expires_ms)) => {
                        self.failures.succeeded(id, addr);
                        Ok(Authenticated {
                            principal: Principal::user(&user),
                            proof: Proof::Token {
                                id: id.to_owned(),
                                expires_ms,
                            },
                        })
                    }
                    Err(why) => {
                        self.failures.failed(id, addr);
                        Err(refused("token", id, addr, why))
                    }
                }
            }
        }
    }

    async fn slow_down(&self, who: &str, addr: Option<IpAddr>) {
        let wait = self.failures.wait(who, addr);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The hash `password` matched if it is `user`'s: from the remembered digest, or by the
    /// hash.
    async fn password_ok(self: &Arc<Self>, user: &str, password: &str) -> Option<Arc<str>> {
        let Some(hash) = self
            .state()
            .user(user)
            .map(|u| Arc::<str>::from(u.password_hash.as_str()))
        else {
            // As long as a wrong password of a real user, so that the time of the answer does
            // not tell whether the user exists.
            let (pw, dummy) = (password.to_owned(), self.dummy_hash.clone());
            let _ = blocking(move || Ok(secrets::verify_password(&pw, &dummy))).await;
            return None;
        };
        {
            let verified = lock(&self.verified);
            if let Some(v) = verified.get(user)
                && v.hash == hash
                && self.remembering.is_digest(&v.digest, user, password)
            {
                return Some(hash);
            }
        }
        let (pw, h) = (password.to_owned(), hash.clone());
        let ok = blocking(move || Ok(secrets::verify_password(&pw, &h)))
            .await
            .unwrap_or(false);
        if !ok {
            return None;
        }
        let digest = self.remembering.digest(user, password);
        let verified = Verified {
            digest,
            hash: hash.clone(),
        };
        lock(&self.verified).insert(user.to_owned(), verified);
        Some(hash)
    }

    /// The user and expiry of the token `id` if `secret` is its secret and it has not expired.
    fn token_user(&self, id: &str, secret: &str) -> Result<(String, i64), &'static str> {
        let state = self.state();
        let Some(token) = state.tokens.iter().find(|t| t.id == id) else {
            return Err("the token is unknown or was deleted");
        };
        if !secrets::token_matches(secret, &token.secret_sha256) {
            return Err("the token is unknown or was deleted");
        }
        if token.expires_ms != 0 && token.expires_ms <= now_ms() {
            return Err("the token has expired");
        }
        Ok((token.user.clone(), token.expires_ms))
    }

    /// The number of changes to users, tokens and ACLs so far: a stream that saw this number
    /// needs no new check until it changes.
    pub fn revision(&self) -> u64 {
        self.revision.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `proof` still proves who it proved: its user not deleted and its password
    /// unchanged, its token not deleted and not expired.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` saying which, with an audit line.
    fn still_valid(&self, proof: &Proof, addr: Option<IpAddr>) -> Result<(), RpcError> {
        match proof {
            Proof::Anonymous | Proof::Certificate => Ok(()),
            Proof::Password { user, hash } => {
                let state = self.state();
                match state.user(user) {
                    Some(u) if *u.password_hash == **hash => Ok(()),
                    Some(_) => Err(refused("password", user, addr, "the password was changed")),
                    None => Err(refused("password", user, addr, "the user was deleted")),
                }
            }
            Proof::Token { id, expires_ms } => {
                if *expires_ms != 0 && *expires_ms <= now_ms() {
                    return Err(refused("token", id, addr, "the token has expired"));
                }
                if self.state().tokens.iter().any(|t| t.id == *id) {
                    Ok(())
                } else {
                    Err(refused("token", id, addr, "the token was deleted"))
                }
            }
        }
    }

    /// Whether `who` may do `op` on `resource`: always while auth is off and for super users.
    pub fn allows(&self, who: &Principal, resource: Resource<'_>, op: Operation) -> bool {
        !self.enabled
            || self.is_super(who)
            || acl::allows(&self.state().acls, who.as_str(), resource, op)
            || (op == Operation::Create
                && matches!(resource, Resource::Topic(_))
                && acl::allows(&self.state().acls, who.as_str(), Resource::Cluster, op))
    }

    /// Whether `who` may do `op` on at least some resource of `resource_type`.
    pub fn allows_some(&self, who: &Principal, resource_type: ResourceType, op: Operation) -> bool {
        !self.enabled
            || self.is_super(who)
            || acl::allows_some(&self.state().acls, who.as_str(), resource_type, op)
            || acl::allows(&self.state().acls, who.as_str(), Resource::Cluster, op)
    }

    fn is_super(&self, who: &Principal) -> bool {
        self.super_users.iter().any(|s| s == who.as_str())
    }

    /// The one authorization point: `Ok` if `who` (calling `call` from `addr`) may do `op`
    /// on `resource`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`, with one audit line and a count by operation.
    pub fn check(
        &self,
        who: &Principal,
        addr: Option<IpAddr>,
        call: &str,
        resource: Resource<'_>,
        op: Operation,
    ) -> Result<(), RpcError> {
        if self.allows(who, resource, op) {
            return Ok(());
        }
        Err(self.denied(who, addr, call, &resource.to_string(), op))
    }

    /// As [`Auth::check`], for a call that needs `op` on some resource of `resource_type`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`, with one audit line and a count by operation.
    pub fn check_some(
        &self,
        who: &Principal,
        addr: Option<IpAddr>,
        call: &str,
        resource_type: ResourceType,
        op: Operation,
    ) -> Result<(), RpcError> {
        if self.allows_some(who, resource_type, op) {
            return Ok(());
        }
        let what = match resource_type {
            ResourceType::Topic => "any topic",
            ResourceType::Group => "any group",
            ResourceType::Cluster => "the cluster",
        };
        Err(self.denied(who, addr, call, what, op))
    }

    fn denied(
        &self,
        who: &Principal,
        addr: Option<IpAddr>,
        call: &str,
        resource: &str,
        op: Operation,
    ) -> RpcError {
        metrics::auth_denied(op.name());
        info!(
            target: AUDIT,
            event = "denied",
            principal = %who,
            addr = ?addr,
            call,
            operation = op.name(),
            resource,
            "call denied"
        );
        RpcError::new(
            ErrorCode::PermissionDenied,
            format!("{who} may not {} {resource}", op.name()),
        )
    }

    /// Applies `change` to a copy of the state, writes it and swaps it in, all under the
    /// change lock; nothing changes if `change` or the write fails. Blocking (an fsync).
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Stored) -> Result<T, RpcError>,
    ) -> Result<T, RpcError> {
        let _changes = lock(&self.changes);
        let mut next = (*self.state()).clone();
        let out = change(&mut next)?;
        next.sort();
        next.write(&self.path)?;
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        self.revision
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(out)
    }

    /// Creates user `name` with `password`.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a name or password out of bounds, `USER_EXISTS`, or the write's.
    pub async fn create_user(
        self: &Arc<Self>,
        by: &Principal,
        name: String,
        password: String,
    ) -> Result<pb::User, RpcError> {
        check_user_name(&name)?;
        check_password(&password)?;
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let hash = secrets::hash_password(&password)?;
            let now = now_ms();
            let user = StoredUser {
                name: name.clone(),
                password_hash: hash,
                created_ms: now,
                password_set_ms: now,
            };
            auth.change(|s| {
                if s.user(&name).is_some() {
                    return Err(RpcError::new(
                        ErrorCode::UserExists,
                        format!("user {name:?} exists already"),
                    ));
                }
                s.users.push(user.clone());
                Ok(())
            })?;
            info!(target: AUDIT, event = "user_created", user = %name, by = %by, "user created");
            Ok(user_pb(&user))
        })
        .await
    }

    /// Replaces the password of user `name`.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a password out of bounds, `UNKNOWN_USER`, or the write's.
    pub async fn set_password(
        self: &Arc<Self>,
        by: &Principal,
        name: String,
        password: String,
    ) -> Result<(), RpcError> {
        check_password(&password)?;
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let hash = secrets::hash_password(&password)?;
            auth.change(|s| {
                let user = s
                    .users
                    .iter_mut()
                    .find(|u| u.name == name)
                    .ok_or_else(|| unknown_user(&name))?;
                user.password_hash = hash;
                user.password_set_ms = now_ms();
                Ok(())
            })?;
            lock(&auth.verified).remove(&name);
            info!(target: AUDIT, event = "password_set", user = %name, by = %by, "password set");
            Ok(())
        })
        .await
    }

    /// Deletes user `name` and its tokens; answers how many tokens went with it.
    ///
    /// # Errors
    /// `UNKNOWN_USER`, or the write's.
    pub async fn delete_user(
        self: &Arc<Self>,
        by: &Principal,
        name: String,
    ) -> Result<u32, RpcError> {
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let tokens = auth.change(|s| {
                let before = s.users.len();
                s.users.retain(|u| u.name != name);
                if s.users.len() == before {
                    return Err(unknown_user(&name));
                }
                let tokens = s.tokens.len();
                s.tokens.retain(|t| t.user != name);
                Ok(u32::try_from(tokens - s.tokens.len()).unwrap_or(u32::MAX))
            })?;
            lock(&auth.verified).remove(&name);
            info!(target: AUDIT, event = "user_deleted", user = %name, tokens, by = %by, "user deleted");
            Ok(tokens)
        })
        .await
    }

    /// Every user.
    pub fn list_users(&self) -> Vec<pb::User> {
        self.state().users.iter().map(user_pb).collect()
    }

    /// Creates a token for `user`, valid for `ttl_ms` (0: until deleted); answers it and its
    /// bearer string, which is not kept.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a description too long, `UNKNOWN_USER`, or the write's.
    pub async fn create_token(
        self: &Arc<Self>,
        by: &Principal,
        user: String,
        ttl_ms: u64,
        description: String,
    ) -> Result<(pb::Token, String), RpcError> {
        if description.len() > MAX_DESCRIPTION {
            return Err(RpcError::invalid(format!(
                "description is {} bytes, more than {MAX_DESCRIPTION}",
                description.len()
            )));
        }
        let now = now_ms();
        let expires_ms = if ttl_ms == 0 {
            0
        } else {
            now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
        };
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let new = secrets::new_token()?;
            let token = StoredToken {
                id: new.id,
                user,
                secret_sha256: new.hash,
                created_ms: now,
                expires_ms,
                description,
            };
            auth.change(|s| {
                if s.user(&token.user).is_none() {
                    return Err(unknown_user(&token.user));
                }
                s.tokens.push(token.clone());
                Ok(())
            })?;
            info!(
                target: AUDIT,
                event = "token_created",
                token = %token.id,
                user = %token.user,
                expires_ms,
                by = %by,
                "token created"
            );
            Ok((token_pb(&token), new.bearer))
        })
        .await
    }

    /// Deletes token `id`.
    ///
    /// # Errors
    /// `UNKNOWN_TOKEN`, or the write's.
    pub async fn delete_token(
        self: &Arc<Self>,
        by: &Principal,
        id: String,
    ) -> Result<(), RpcError> {
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            auth.change(|s| {
                let before = s.tokens.len();
                s.tokens.retain(|t| t.id != id);
                if s.tokens.len() == before {
                    return Err(RpcError::new(
                        ErrorCode::UnknownToken,
                        format!("no token has id {id:?}"),
                    ));
                }
                Ok(())
            })?;
            info!(target: AUDIT, event = "token_deleted", token = %id, by = %by, "token deleted");
            Ok(())
        })
        .await
    }

    /// The tokens of `user` (every token for `""`), without their secrets.
    pub fn list_tokens(&self, user: &str) -> Vec<pb::Token> {
        self.state()
            .tokens
            .iter()
            .filter(|t| user.is_empty() || t.user == user)
            .map(token_pb)
            .collect()
    }

    /// Adds `acls`; answers how many were new.
    ///
    /// # Errors
    /// The write's.
    pub async fn create_acls(
        self: &Arc<Self>,
        by: &Principal,
        acls: Vec<Acl>,
    ) -> Result<u32, RpcError> {
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let added = auth.change(|s| {
                let new: Vec<Acl> = acls.into_iter().filter(|a| !s.acls.contains(a)).collect();
                s.acls.extend(new.iter().cloned());
                Ok(new)
            })?;
            for a in &added {
                info!(target: AUDIT, event = "acl_created", acl = ?a, by = %by, "ACL created");
            }
            Ok(u32::try_from(added.len()).unwrap_or(u32::MAX))
        })
        .await
    }

    /// Deletes the ACLs `filter` matches, and answers them.
    ///
    /// # Errors
    /// The write's.
    pub async fn delete_acls(
        self: &Arc<Self>,
        by: &Principal,
        filter: Filter,
    ) -> Result<Vec<Acl>, RpcError> {
        let (auth, by) = (self.clone(), by.clone());
        blocking(move || {
            let deleted = auth.change(|s| {
                let (gone, kept) = std::mem::take(&mut s.acls)
                    .into_iter()
                    .partition(|a| filter.matches(a));
                s.acls = kept;
                Ok(gone)
            })?;
            for a in &deleted {
                info!(target: AUDIT, event = "acl_deleted", acl = ?a, by = %by, "ACL deleted");
            }
            Ok(deleted)
        })
        .await
    }

    /// The ACLs `filter` matches.
    pub fn list_acls(&self, filter: &Filter) -> Vec<Acl> {
        self.state()
            .acls
            .iter()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect()
    }
}

/// The caller of one call, as the door authenticated it, and its checks.
#[derive(Clone)]
pub struct Access {
    auth: Arc<Auth>,
    principal: Principal,
    proof: Proof,
    addr: Option<IpAddr>,
    call: Arc<str>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("principal", &self.principal)
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// `principal`'s access, calling `call` from `addr`.
    pub fn new(
        auth: Arc<Auth>,
        caller: Authenticated,
        addr: Option<IpAddr>,
        call: impl Into<Arc<str>>,
    ) -> Self {
        Access {
            auth,
            principal: caller.principal,
            proof: caller.proof,
            addr,
            call: call.into(),
        }
    }

    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// For a stream that outlives its first check: whether anything changed since `seen` (a
    /// revision of [`Auth::revision`], updated here). `Ok(false)`: nothing did; `Ok(true)`:
    /// the credentials still hold, but the stream must authorize its request again, since
    /// users, tokens or ACLs changed.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` once the token expired, or the user, token or password it proved
    /// itself with was deleted or changed.
    pub fn revalidate(&self, seen: &mut u64) -> Result<bool, RpcError> {
        if !self.auth.enabled() {
            return Ok(false);
        }
        if let Proof::Token { expires_ms, .. } = &self.proof
            && *expires_ms != 0
            && *expires_ms <= now_ms()
        {
            self.auth.still_valid(&self.proof, self.addr)?;
        }
        let revision = self.auth.revision();
        if revision == *seen {
            return Ok(false);
        }
        self.auth.still_valid(&self.proof, self.addr)?;
        *seen = revision;
        Ok(true)
    }

    /// The revision of the security state when this caller was authenticated, or later: the
    /// start of [`Access::revalidate`]'s `seen`.
    pub fn revision(&self) -> u64 {
        self.auth.revision()
    }

    /// `Ok` if the caller may do `op` on `resource`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`.
    pub fn check(&self, resource: Resource<'_>, op: Operation) -> Result<(), RpcError> {
        self.auth
            .check(&self.principal, self.addr, &self.call, resource, op)
    }

    /// `Ok` if the caller may do `op` on some resource of `resource_type`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`.
    pub fn check_some(&self, resource_type: ResourceType, op: Operation) -> Result<(), RpcError> {
        self.auth
            .check_some(&self.principal, self.addr, &self.call, resource_type, op)
    }

    /// Whether the caller may do `op` on `resource` (to filter a list; no audit line).
    pub fn may(&self, resource: Resource<'_>, op: Operation) -> bool {
        self.auth.allows(&self.principal, resource, op)
    }

    /// `Ok` if the caller may do `op` on every topic of `topics`.
    pub fn topics<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        op: Operation,
    ) -> Result<(), RpcError> {
        topics
            .into_iter()
            .try_for_each(|t| self.check(Resource::Topic(t), op))
    }
}

/// The credentials a call presents, taken out of it.
pub enum Presented {
    /// None.
    Nothing,
    /// `Basic base64(user:password)`.
    Password {
        /// The decoded `user:password`.
        pair: String,
        /// Where the colon is in it.
        colon: usize,
    },
    /// `Bearer <token>`.
    Token(String),
    /// The name in a verified client certificate.
    Certificate(Arc<str>),
    /// An `authorization` header of neither form.
    Malformed,
}

impl Presented {
    /// Decodes an `authorization` header value (gRPC metadata or HTTP): `Basic` (RFC 7617)
    /// or `Bearer` (RFC 6750); anything else is [`Presented::Malformed`].
    pub fn authorization(value: &[u8]) -> Presented {
        use base64::Engine as _;
        let Ok(value) = std::str::from_utf8(value) else {
            return Presented::Malformed;
        };
        let Some((scheme, rest)) = value.split_once(' ') else {
            return Presented::Malformed;
        };
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Presented::Token(rest.to_owned());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Presented::Malformed;
        }
        let pair = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match pair.as_deref().and_then(|p| p.find(':')) {
            Some(colon) => Presented::Password {
                pair: pair.unwrap_or_default(),
                colon,
            },
            None => Presented::Malformed,
        }
    }

    /// The credentials to authenticate.
    pub fn as_credentials(&self) -> Credentials<'_> {
        match self {
            Presented::Nothing => Credentials::None,
            Presented::Password { pair, colon } => Credentials::Password {
                user: &pair[..*colon],
                password: &pair[colon + 1..],
            },
            Presented::Token(t) => Credentials::Token(t),
            Presented::Certificate(name) => Credentials::Certificate(name),
            Presented::Malformed => Credentials::Malformed,
        }
    }
}

/// Creates the bootstrap administrator, or says why no one could ever log in.
fn bootstrap(stored: &mut Stored, path: &Path, settings: &AuthSettings) -> Result<(), Error> {
    let config = |key: &str, reason: String| Error::Config {
        key: key.into(),
        reason,
    };
    if settings.bootstrap_password.is_empty() || settings.bootstrap_user.is_empty() {
        if settings.super_users.is_empty() {
            return Err(config(
                "auth.bootstrap_password",
                "is needed: auth is enabled and no user exists yet, so no one could log in; \
                 set it (or RUNNEL_AUTH_BOOTSTRAP_PASSWORD) to create the administrator \
                 auth.bootstrap_user, or name a client certificate in auth.super_users"
                    .into(),
            ));
        }
        return Ok(());
    }
    check_user_name(&settings.bootstrap_user)
        .map_err(|e| config("auth.bootstrap_user", e.message))?;
    let hash = secrets::hash_password(&settings.bootstrap_password)
        .map_err(|e| config("auth.bootstrap_password", e.message))?;
    let now = now_ms();
    stored.users.push(StoredUser {
        name: settings.bootstrap_user.clone(),
        password_hash: hash,
        created_ms: now,
        password_set_ms: now,
    });
    stored.write(path).map_err(|e| Error::Metadata {
        path: path.to_owned(),
        reason: e.message,
    })?;
    info!(
        target: AUDIT,
        event = "user_created",
        user = %settings.bootstrap_user,
        by = "auth.bootstrap_password",
        "bootstrap administrator created"
    );
    Ok(())
}

/// Counts and logs a refused authentication, and gives its error; `mechanism` is `none`,
/// `malformed`, `password` or `token`.
fn refused(mechanism: &'static str, who: &str, addr: Option<IpAddr>, why: &str) -> RpcError {
    metrics::auth_failed(mechanism);
    info!(
        target: AUDIT,
        event = "unauthenticated",
        mechanism,
        who,
        addr = ?addr,
        reason = why,
        "authentication refused"
    );
    RpcError::new(
        ErrorCode::Unauthenticated,
        format!("authentication failed: {why}"),
    )
}

fn check_user_name(name: &str) -> Result<(), RpcError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid(format!(
            "name {name:?} must be 1 to {MAX_USER} characters of A-Z a-z 0-9 . _ - @"
        )))
    }
}

fn check_password(password: &str) -> Result<(), RpcError> {
    let n = password.len();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        Ok(())
    } else {
        Err(RpcError::invalid(format!(
            "password is {n} bytes; it must be {MIN_PASSWORD} to {MAX_PASSWORD}"
        )))
    }
}

fn unknown_user(name: &str) -> RpcError {
    RpcError::new(
        ErrorCode::UnknownUser,
        format!("no user is called {name:?}"),
    )
}

fn user_pb(u: &StoredUser) -> pb::User {
    pb::User {
        name: u.name.clone(),
        created_ms: u.created_ms,
        password_set_ms: u.password_set_ms,
    }
}

fn token_pb(t: &StoredToken) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        user: t.user.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        description: t.description.clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers_are_basic_or_bearer() {
        let basic = Presented::authorization(b"Basic YWxpY2U6cGE6c3M=");
        let Credentials::Password { user, password } = basic.as_credentials() else {
            panic!("not a password");
        };
        assert_eq!((user, password), ("alice", "pa:ss"));
        let bearer = Presented::authorization(b"bearer rnl_x");
        assert!(matches!(
            bearer.as_credentials(),
            Credentials::Token("rnl_x")
        ));
        for bad in [
            "Basic",
            "Basic !!!",
            "Basic YWxpY2U=",
            "Digest abc",
            "token",
        ] {
            let p = Presented::authorization(bad.as_bytes());
            assert!(
                matches!(p.as_credentials(), Credentials::Malformed),
                "{bad}"
            );
        }
    }
}
