//! `runnel user|token|acl …`: users, bearer tokens and access control lists of a broker with
//! authentication (`docs/security.md`). New passwords are read from stdin, never from the
//! command line, so that they stay out of the shell history and the process list.

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use runnel_client::{Acl, AclFilter, AclOperation, AclPermission, AclResource, Pattern};
use serde_json::json;

use crate::Ctx;
use crate::error::usage;
use crate::output::{self, Output, Table};
use crate::parse::{format_time_ms, parse_duration};

/// `runnel user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; its password is read from stdin (the first line)
    #[command(after_help = "Examples:
  printf '%s\\n' \"$PASSWORD\" | runnel user create alice
  runnel user create alice < alice.password")]
    Create {
        /// The user's name (1 to 64 of A-Z a-z 0-9 . _ - @); its principal is User:<name>
        name: String,
    },
    /// Replace a user's password with one read from stdin (the first line)
    #[command(after_help = "Examples:
  printf '%s\\n' \"$NEW_PASSWORD\" | runnel user set-password alice")]
    SetPassword {
        /// The user's name
        name: String,
    },
    /// Delete a user and its tokens
    #[command(after_help = "Examples:
  runnel user delete alice")]
    Delete {
        /// The user's name
        name: String,
    },
    /// List the users
    #[command(after_help = "Examples:
  runnel user list
  runnel user list --output json")]
    List,
}

/// `runnel token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token for a user and print it (the only time it is shown)
    #[command(after_help = "Examples:
  runnel token create billing --expires 90d --description 'billing service' > billing.token
  RUNNEL_TOKEN=$(cat billing.token) runnel topic list")]
    Create {
        /// The user it authenticates as
        #[arg(value_name = "USER")]
        owner: String,
        /// How long it is valid (30d, 12h, …); without it, until deleted
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<Duration>,
        /// What it is for, shown by `token list`
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets)
    #[command(after_help = "Examples:
  runnel token list
  runnel token list billing")]
    List {
        /// Only this user's tokens
        #[arg(value_name = "USER")]
        owner: Option<String>,
    },
    /// Delete a token: it is refused from the next call on
    #[command(after_help = "Examples:
  runnel token delete 3f9a0c1b2d4e")]
    Delete {
        /// The token's id (from `token list`, or the part after rnl_)
        id: String,
    },
}

/// `runnel acl …`
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) a principal operations on a resource
    #[command(after_help = "Examples:
  runnel acl create --principal User:billing --topic orders --operation read,write
  runnel acl create --principal User:billing --group billing --operation read
  runnel acl create --principal User:etl --topic raw. --prefixed --operation read
  runnel acl create --principal User:ops --cluster --operation describe
  runnel acl create --principal User:intern --topic payroll --operation all --deny")]
    Create(CreateArgs),
    /// List ACLs, all or those matching the filters
    #[command(after_help = "Examples:
  runnel acl list
  runnel acl list --principal User:billing --output json")]
    List(FilterArgs),
    /// Delete the ACLs matching the filters (at least one, or --all)
    #[command(after_help = "Examples:
  runnel acl delete --principal User:billing --topic orders
  runnel acl delete --all")]
    Delete {
        #[command(flatten)]
        filter: FilterArgs,
        /// Delete every ACL
        #[arg(long)]
        all: bool,
    },
}

/// The resource flags of an ACL.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ResourceArgs {
    /// A topic (`*`: every topic)
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
    /// A consumer group (`*`: every group)
    #[arg(long, value_name = "ID")]
    group: Option<String>,
    /// The broker as a whole
    #[arg(long)]
    cluster: bool,
}

/// `runnel acl create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Whom it is about: User:<name>, or User:* for every authenticated caller
    #[arg(long, value_name = "PRINCIPAL")]
    principal: String,
    #[command(flatten)]
    resource: ResourceArgs,
    /// The name is a prefix: every topic or group starting with it
    #[arg(long)]
    prefixed: bool,
    /// The operations, comma-separated
    #[arg(long, value_name = "OPS", value_delimiter = ',', required = true)]
    operation: Vec<Op>,
    /// Deny instead of allow (a deny wins over any allow)
    #[arg(long)]
    deny: bool,
}

/// The filters of `acl list` and `acl delete`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only ACLs of this principal
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
    #[command(flatten)]
    resource: ResourceArgs,
    /// With --topic or --group: the ACL's name is a prefix
    #[arg(long)]
    prefixed: bool,
    /// Only ACLs of this operation
    #[arg(long, value_name = "OP")]
    operation: Option<Op>,
    /// Only deny ACLs
    #[arg(long, conflicts_with = "allow")]
    deny: bool,
    /// Only allow ACLs
    #[arg(long)]
    allow: bool,
}

/// An operation on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Op {
    /// Every operation
    All,
    /// Read records, join groups, commit offsets
    Read,
    /// Write records
    Write,
    /// Create topics
    Create,
    /// Delete topics and groups
    Delete,
    /// Change configs and partitions; on the cluster, quotas and security
    Alter,
    /// See and describe
    Describe,
}

impl From<Op> for AclOperation {
    fn from(op: Op) -> Self {
        match op {
            Op::All => AclOperation::All,
            Op::Read => AclOperation::Read,
            Op::Write => AclOperation::Write,
            Op::Create => AclOperation::Create,
            Op::Delete => AclOperation::Delete,
            Op::Alter => AclOperation::Alter,
            Op::Describe => AclOperation::Describe,
        }
    }
}

impl ResourceArgs {
    /// The resource named, if any.
    fn resource(&self, prefixed: bool) -> Option<AclResource> {
        let pattern = |name: &String| {
            if prefixed {
                Pattern::Prefixed(name.clone())
            } else {
                Pattern::Literal(name.clone())
            }
        };
        if let Some(t) = &self.topic {
            Some(AclResource::Topic(pattern(t)))
        } else if let Some(g) = &self.group {
            Some(AclResource::Group(pattern(g)))
        } else {
            self.cluster.then_some(AclResource::Cluster)
        }
    }
}

impl FilterArgs {
    fn filter(&self) -> AclFilter {
        AclFilter {
            principal: self.principal.clone(),
            resource: self.resource.resource(self.prefixed),
            operation: self.operation.map(AclOperation::from),
            permission: if self.deny {
                Some(AclPermission::Deny)
            } else {
                self.allow.then_some(AclPermission::Allow)
            },
        }
    }
}

/// Reads a new password: the first line of stdin, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(usage(
            "no password on stdin: give it as the first line (printf '%s\\n' \"$PASSWORD\" | runnel user …)",
        ));
    }
    Ok(password)
}

/// Says that something was done, as text or JSON.
fn done(ctx: &Ctx, text: &str, value: serde_json::Value) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => output::print_json(&value)?,
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "{text}")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Runs a `user` command.
///
/// # Errors
/// Connection, credential and broker errors.
pub async fn user(ctx: &Ctx, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { name } => {
            let password = read_password()?;
            let security = ctx.client().await?.security();
            security
                .create_user(&name, &password)
                .await
                .with_context(|| format!("cannot create user {name:?}"))?;
            done(
                ctx,
                &format!("user {name:?} created"),
                json!({ "user": name, "created": true }),
            )
        }
        UserCommand::SetPassword { name } => {
            let password = read_password()?;
            let security = ctx.client().await?.security();
            security
                .set_password(&name, &password)
                .await
                .with_context(|| format!("cannot set the password of user {name:?}"))?;
            done(
                ctx,
                &format!("password of user {name:?} set"),
                json!({ "user": name, "password_set": true }),
            )
        }
        UserCommand::Delete { name } => {
            let security = ctx.client().await?.security();
            let tokens = security
                .delete_user(&name)
                .await
                .with_context(|| format!("cannot delete user {name:?}"))?;
            done(
                ctx,
                &format!("user {name:?} deleted, with {tokens} token(s)"),
                json!({ "user": name, "deleted": true, "tokens_deleted": tokens }),
            )
        }
        UserCommand::List => {
            let users = ctx
                .client()
                .await?
                .security()
                .list_users()
                .await
                .context("cannot list users")?;
            match ctx.output {
                Output::Json => output::print_json(
                    &users
                        .iter()
                        .map(|u| json!({ "name": u.name, "created_ms": u.created_ms, "password_set_ms": u.password_set_ms }))
                        .collect::<Vec<_>>(),
                )?,
                Output::Table => {
                    let mut table = Table::new(&["USER", "CREATED", "PASSWORD SET"]);
                    for u in &users {
                        table.row(vec![
                            u.name.clone(),
                            format_time_ms(u.created_ms),
                            format_time_ms(u.password_set_ms),
                        ]);
                    }
                    let mut out = output::stdout();
                    table.write(&mut out)?;
                    out.flush()?;
                }
            }
            Ok(())
        }
    }
}

/// Runs a `token` command.
///
/// # Errors
/// Connection, credential and broker errors.
pub async fn token(ctx: &Ctx, command: TokenCommand) -> anyhow::Result<()> {
    let security = ctx.client().await?.security();
    match command {
        TokenCommand::Create {
            owner,
            expires,
            description,
        } => {
            let made = security
                .create_token(&owner, expires, &description)
                .await
                .with_context(|| format!("cannot create a token for user {owner:?}"))?;
            match ctx.output {
                Output::Json => output::print_json(&json!({
                    "id": made.token.id,
                    "user": made.token.user,
                    "expires_ms": made.token.expires_ms,
                    "secret": made.secret,
                }))?,
                Output::Table => {
                    // The secret alone on stdout, for `> file` or `$(…)`; the rest on stderr.
                    let expiry = made
                        .token
                        .expires_ms
                        .map_or("never expires".to_owned(), |ms| {
                            format!("expires {}", format_time_ms(ms))
                        });
                    eprintln!(
                        "token {} for user {:?} created; it {expiry}; this is the only time it is shown:",
                        made.token.id, made.token.user
                    );
                    let mut out = output::stdout();
                    writeln!(out, "{}", made.secret)?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        TokenCommand::List { owner } => {
            let tokens = security
                .list_tokens(owner.as_deref())
                .await
                .context("cannot list tokens")?;
            match ctx.output {
                Output::Json => output::print_json(
                    &tokens
                        .iter()
                        .map(|t| {
                            json!({
                                "id": t.id, "user": t.user, "created_ms": t.created_ms,
                                "expires_ms": t.expires_ms, "description": t.description,
                            })
                        })
                        .collect::<Vec<_>>(),
                )?,
                Output::Table => {
                    let mut table =
                        Table::new(&["ID", "USER", "CREATED", "EXPIRES", "DESCRIPTION"]);
                    for t in &tokens {
                        table.row(vec![
                            t.id.clone(),
                            t.user.clone(),
                            format_time_ms(t.created_ms),
                            t.expires_ms.map_or("never".to_owned(), format_time_ms),
                            t.description.clone(),
                        ]);
                    }
                    let mut out = output::stdout();
                    table.write(&mut out)?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        TokenCommand::Delete { id } => {
            security
                .delete_token(&id)
                .await
                .with_context(|| format!("cannot delete token {id:?}"))?;
            done(
                ctx,
                &format!("token {id:?} deleted"),
                json!({ "id": id, "deleted": true }),
            )
        }
    }
}

/// Runs an `acl` command.
///
/// # Errors
/// Usage errors, connection, credential and broker errors.
pub async fn acl(ctx: &Ctx, command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Create(a) => {
            let resource = a
                .resource
                .resource(a.prefixed)
                .ok_or_else(|| usage("name the resource: --topic NAME, --group ID or --cluster"))?;
            if a.prefixed && resource == AclResource::Cluster {
                return Err(usage("--prefixed needs --topic or --group"));
            }
            let permission = if a.deny {
                AclPermission::Deny
            } else {
                AclPermission::Allow
            };
            let acls: Vec<Acl> = a
                .operation
                .iter()
                .map(|op| Acl {
                    principal: a.principal.clone(),
                    resource: resource.clone(),
                    operation: (*op).into(),
                    permission,
                })
                .collect();
            let security = ctx.client().await?.security();
            let created = security
                .create_acls(&acls)
                .await
                .context("cannot create the ACLs")?;
            done(
                ctx,
                &format!(
                    "{created} ACL(s) created ({} already existed)",
                    acls.len() as u32 - created
                ),
                json!({ "created": created }),
            )
        }
        AclCommand::List(f) => {
            let security = ctx.client().await?.security();
            let acls = security
                .list_acls(&f.filter())
                .await
                .context("cannot list ACLs")?;
            print_acls(ctx, &acls)
        }
        AclCommand::Delete { filter, all } => {
            let f = filter.filter();
            if f == AclFilter::default() && !all {
                return Err(usage(
                    "name the ACLs to delete (--principal, --topic, --group, --cluster, --operation, \
                     --allow or --deny), or give --all",
                ));
            }
            let security = ctx.client().await?.security();
            let deleted = security
                .delete_acls(&f)
                .await
                .context("cannot delete ACLs")?;
            if ctx.output == Output::Table {
                eprintln!("{} ACL(s) deleted:", deleted.len());
            }
            print_acls(ctx, &deleted)
        }
    }
}

fn print_acls(ctx: &Ctx, acls: &[Acl]) -> anyhow::Result<()> {
    let cells = |a: &Acl| {
        let (kind, pattern) = match &a.resource {
            AclResource::Topic(p) => ("topic", Some(p)),
            AclResource::Group(p) => ("group", Some(p)),
            AclResource::Cluster => ("cluster", None),
        };
        let (name, pattern) = match pattern {
            Some(Pattern::Literal(n)) => (n.clone(), "literal"),
            Some(Pattern::Prefixed(n)) => (n.clone(), "prefixed"),
            None => (String::new(), "literal"),
        };
        let op = format!("{:?}", a.operation).to_lowercase();
        let permission = format!("{:?}", a.permission).to_lowercase();
        (a.principal.clone(), kind, name, pattern, op, permission)
    };
    match ctx.output {
        Output::Json => output::print_json(
            &acls
                .iter()
                .map(|a| {
                    let (principal, kind, name, pattern, op, permission) = cells(a);
                    json!({
                        "principal": principal, "resource_type": kind, "resource_name": name,
                        "pattern_type": pattern, "operation": op, "permission": permission,
                    })
                })
                .collect::<Vec<_>>(),
        )?,
        Output::Table => {
            let mut table = Table::new(&[
                "PRINCIPAL",
                "RESOURCE",
                "NAME",
                "PATTERN",
                "OPERATION",
                "PERMISSION",
            ]);
            for a in acls {
                let (principal, kind, name, pattern, op, permission) = cells(a);
                table.row(vec![
                    principal,
                    kind.into(),
                    name,
                    pattern.into(),
                    op,
                    permission,
                ]);
            }
            let mut out = output::stdout();
            table.write(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
