//! [`Security`]: users, tokens and ACLs of a broker with authentication
//! (`docs/security.md`). Lists are retried on transport errors; changes are not.

use std::sync::Arc;
use std::time::Duration;

use runnel_proto::pb::{self, security_service_client::SecurityServiceClient};

use crate::connection::{Connection, Transport};
use crate::error::{ClientError, Result};

const READ_RETRIES: u32 = 3;

/// A user that logs in with a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name; its principal is `User:<name>`.
    pub name: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: i64,
    /// When its password was last set, ms since the Unix epoch.
    pub password_set_ms: i64,
}

/// A bearer token, as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its id, which names it for [`Security::delete_token`].
    pub id: String,
    /// The user it authenticates as.
    pub user: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: i64,
    /// When it expires, ms since the Unix epoch; `None` never.
    pub expires_ms: Option<i64>,
    /// What it is for.
    pub description: String,
}

/// A token just created, with the secret that only this answer holds. Its `Debug` hides the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The token.
    pub token: Token,
    /// The bearer string to give clients ([`crate::Credentials::Token`]).
    pub secret: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The resource an ACL is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclResource {
    /// Topics: a name, `*` (every topic) or a prefix.
    Topic(Pattern),
    /// Consumer groups: an id, `*` or a prefix.
    Group(Pattern),
    /// The broker as a whole.
    Cluster,
}

/// How an ACL names resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// This name (`*`: every name).
    Literal(String),
    /// Every name that starts with this.
    Prefixed(String),
}

/// What an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOperation {
    /// Every operation.
    All,
    /// Read records, join groups, commit offsets.
    Read,
    /// Write records.
    Write,
    /// Create topics.
    Create,
    /// Delete topics and groups.
    Delete,
    /// Change configs and partitions; on the cluster, quotas and security.
    Alter,
    /// See and describe (implied by read, write, delete and alter).
    Describe,
}

/// Allow or deny; a matching deny wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPermission {
    /// Allows.
    Allow,
    /// Denies.
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// `User:<name>`, or `User:*` for every authenticated principal.
    pub principal: String,
    /// The resources.
    pub resource: AclResource,
    /// The operation.
    pub operation: AclOperation,
    /// Allow or deny.
    pub permission: AclPermission,
}

/// Which ACLs to list or delete: `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    /// The principal.
    pub principal: Option<String>,
    /// The resource, exactly as in the ACL.
    pub resource: Option<AclResource>,
    /// The operation.
    pub operation: Option<AclOperation>,
    /// Allow or deny.
    pub permission: Option<AclPermission>,
}

impl AclOperation {
    fn to_pb(self) -> pb::Operation {
        match self {
            Self::All => pb::Operation::All,
            Self::Read => pb::Operation::Read,
            Self::Write => pb::Operation::Write,
            Self::Create => pb::Operation::Create,
            Self::Delete => pb::Operation::Delete,
            Self::Alter => pb::Operation::Alter,
            Self::Describe => pb::Operation::Describe,
        }
    }

    fn from_pb(o: i32) -> Result<Self> {
        Ok(match pb::Operation::try_from(o) {
            Ok(pb::Operation::All) => Self::All,
            Ok(pb::Operation::Read) => Self::Read,
            Ok(pb::Operation::Write) => Self::Write,
            Ok(pb::Operation::Create) => Self::Create,
            Ok(pb::Operation::Delete) => Self::Delete,
            Ok(pb::Operation::Alter) => Self::Alter,
            Ok(pb::Operation::Describe) => Self::Describe,
            _ => return Err(unknown("operation", o)),
        })
    }
}

impl AclPermission {
    fn to_pb(self) -> pb::Permission {
        match self {
            Self::Allow => pb::Permission::Allow,
            Self::Deny => pb::Permission::Deny,
        }
    }
}

impl AclResource {
    /// The protocol's resource type, name and pattern type.
    fn to_pb(&self) -> (pb::ResourceType, String, pb::PatternType) {
        let pattern = |p: &Pattern| match p {
            Pattern::Literal(n) => (n.clone(), pb::PatternType::Literal),
            Pattern::Prefixed(n) => (n.clone(), pb::PatternType::Prefixed),
        };
        match self {
            Self::Topic(p) => {
                let (n, t) = pattern(p);
                (pb::ResourceType::Topic, n, t)
            }
            Self::Group(p) => {
                let (n, t) = pattern(p);
                (pb::ResourceType::Group, n, t)
            }
            Self::Cluster => (
                pb::ResourceType::Cluster,
                String::new(),
                pb::PatternType::Literal,
            ),
        }
    }
}

impl Acl {
    fn to_pb(&self) -> pb::Acl {
        let (t, name, pattern) = self.resource.to_pb();
        pb::Acl {
            principal: self.principal.clone(),
            resource_type: t as i32,
            resource_name: name,
            pattern_type: pattern as i32,
            operation: self.operation.to_pb() as i32,
            permission: self.permission.to_pb() as i32,
        }
    }

    fn from_pb(a: pb::Acl) -> Result<Self> {
        let pattern = match pb::PatternType::try_from(a.pattern_type) {
            Ok(pb::PatternType::Literal) => Pattern::Literal(a.resource_name),
            Ok(pb::PatternType::Prefixed) => Pattern::Prefixed(a.resource_name),
            _ => return Err(unknown("pattern type", a.pattern_type)),
        };
        let resource = match pb::ResourceType::try_from(a.resource_type) {
            Ok(pb::ResourceType::Topic) => AclResource::Topic(pattern),
            Ok(pb::ResourceType::Group) => AclResource::Group(pattern),
            Ok(pb::ResourceType::Cluster) => AclResource::Cluster,
            _ => return Err(unknown("resource type", a.resource_type)),
        };
        let permission = match pb::Permission::try_from(a.permission) {
            Ok(pb::Permission::Allow) => AclPermission::Allow,
            Ok(pb::Permission::Deny) => AclPermission::Deny,
            _ => return Err(unknown("permission", a.permission)),
        };
        Ok(Acl {
            principal: a.principal,
            resource,
            operation: AclOperation::from_pb(a.operation)?,
            permission,
        })
    }
}

impl AclFilter {
    fn to_pb(&self) -> pb::AclFilter {
        let resource = self.resource.as_ref().map(AclResource::to_pb);
        pb::AclFilter {
            principal: self.principal.clone(),
            resource_type: resource.as_ref().map_or(0, |r| r.0 as i32),
            resource_name: resource.as_ref().map(|r| r.1.clone()),
            pattern_type: resource.as_ref().map_or(0, |r| r.2 as i32),
            operation: self.operation.map_or(0, |o| o.to_pb() as i32),
            permission: self.permission.map_or(0, |p| p.to_pb() as i32),
        }
    }
}

fn unknown(what: &str, value: i32) -> ClientError {
    ClientError::Protocol(format!("the broker sent an unknown ACL {what} ({value})"))
}

fn user_from_pb(u: pb::User) -> User {
    User {
        name: u.name,
        created_ms: u.created_ms,
        password_set_ms: u.password_set_ms,
    }
}

fn token_from_pb(t: pb::Token) -> Token {
    Token {
        id: t.id,
        user: t.user,
        created_ms: t.created_ms,
        expires_ms: (t.expires_ms != 0).then_some(t.expires_ms),
        description: t.description,
    }
}

/// The security API: users, tokens and ACLs. Cheap to clone. Every call needs ALTER (changes)
/// or DESCRIBE (lists) on the cluster.
#[derive(Debug, Clone)]
pub struct Security {
    conn: Arc<Connection>,
    client: SecurityServiceClient<Transport>,
}

impl Security {
    pub(crate) fn new(conn: Arc<Connection>) -> Self {
        let client = SecurityServiceClient::new(conn.channel.clone())
            .max_decoding_message_size(conn.config.max_message_bytes);
        Self { conn, client }
    }

    /// Creates user `name` with `password` (8 to 1024 bytes).
    ///
    /// # Errors
    /// `USER_EXISTS`, `INVALID_REQUEST`; transport errors.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<User> {
        let r = self
            .client
            .clone()
            .create_user(pb::CreateUserRequest {
                name: name.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        let user = r
            .user
            .ok_or_else(|| ClientError::Protocol("CreateUser answered no user".into()))?;
        Ok(user_from_pb(user))
    }

    /// Replaces the password of user `name`.
    ///
    /// # Errors
    /// `UNKNOWN_USER`, `INVALID_REQUEST`; transport errors.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        self.client
            .clone()
            .set_password(pb::SetPasswordRequest {
                name: name.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// Deletes user `name` and its tokens; answers how many tokens went with it.
    ///
    /// # Errors
    /// `UNKNOWN_USER`; transport errors.
    pub async fn delete_user(&self, name: &str) -> Result<u32> {
        let r = self
            .client
            .clone()
            .delete_user(pb::DeleteUserRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(r.into_inner().tokens_deleted)
    }

    /// Every user, sorted by name.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                async move { c.list_users(pb::ListUsersRequest {}).await }
            })
            .await?;
        Ok(r.into_inner().users.into_iter().map(user_from_pb).collect())
    }

    /// Creates a token for `user`, valid for `ttl` (`None`: until deleted).
    ///
    /// # Errors
    /// `UNKNOWN_USER`, `INVALID_REQUEST`; transport errors.
    pub async fn create_token(
        &self,
        user: &str,
        ttl: Option<Duration>,
        description: &str,
    ) -> Result<NewToken> {
        let ttl_ms = ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let r = self
            .client
            .clone()
            .create_token(pb::CreateTokenRequest {
                user: user.to_owned(),
                ttl_ms,
                description: description.to_owned(),
            })
            .await
            .map_err(|s| self.conn.error(s))?
            .into_inner();
        let token = r
            .token
            .ok_or_else(|| ClientError::Protocol("CreateToken answered no token".into()))?;
        Ok(NewToken {
            token: token_from_pb(token),
            secret: r.secret,
        })
    }

    /// Deletes token `id`.
    ///
    /// # Errors
    /// `UNKNOWN_TOKEN`; transport errors.
    pub async fn delete_token(&self, id: &str) -> Result<()> {
        self.client
            .clone()
            .delete_token(pb::DeleteTokenRequest { id: id.to_owned() })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(())
    }

    /// The tokens of `user`, or every token with `None`.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<Token>> {
        let user = user.unwrap_or_default().to_owned();
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                let user = user.clone();
                async move { c.list_tokens(pb::ListTokensRequest { user }).await }
            })
            .await?;
        Ok(r.into_inner()
            .tokens
            .into_iter()
            .map(token_from_pb)
            .collect())
    }

    /// Adds `acls` (all or none); answers how many were new.
    ///
    /// # Errors
    /// `INVALID_REQUEST` naming the ACL at fault; transport errors.
    pub async fn create_acls(&self, acls: &[Acl]) -> Result<u32> {
        let r = self
            .client
            .clone()
            .create_acls(pb::CreateAclsRequest {
                acls: acls.iter().map(Acl::to_pb).collect(),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        Ok(r.into_inner().created)
    }

    /// Deletes the ACLs `filter` matches, and answers them.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn delete_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        let r = self
            .client
            .clone()
            .delete_acls(pb::DeleteAclsRequest {
                filter: Some(filter.to_pb()),
            })
            .await
            .map_err(|s| self.conn.error(s))?;
        r.into_inner()
            .deleted
            .into_iter()
            .map(Acl::from_pb)
            .collect()
    }

    /// The ACLs `filter` matches.
    ///
    /// # Errors
    /// Transport errors (after retries).
    pub async fn list_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        let filter = filter.to_pb();
        let r = self
            .conn
            .retry(READ_RETRIES, || {
                let mut c = self.client.clone();
                let filter = Some(filter.clone());
                async move { c.list_acls(pb::ListAclsRequest { filter }).await }
            })
            .await?;
        r.into_inner().acls.into_iter().map(Acl::from_pb).collect()
    }
}
