//! Access control lists: principal × resource × operation → allow or deny, and the decision
//! over a set of them (`docs/security.md`, "Authorization").
//!
//! The rules are Kafka's: an ACL matches a call when its principal is the caller's (or
//! `User:*`), its resource type is the resource's, and its name is the resource's name
//! (`LITERAL`), `*` (`LITERAL`, every name) or a prefix of it (`PREFIXED`). A matching deny of
//! the operation (or of `ALL`) wins; otherwise a matching allow of the operation (or of `ALL`)
//! allows it; otherwise the call is denied. `READ`, `WRITE`, `DELETE` and `ALTER` imply
//! `DESCRIBE`.

use std::fmt;

use runnel_proto::pb;
use serde::{Deserialize, Serialize};

use crate::error::RpcError;

/// The principal of every authenticated caller, in an ACL.
pub const ANY_PRINCIPAL: &str = "User:*";
/// The literal name that matches every resource name.
pub const ANY_NAME: &str = "*";
/// The longest resource name an ACL may hold.
const MAX_NAME_BYTES: usize = 255;

/// The kind of resource an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The broker as a whole.
    Cluster,
}

/// How an ACL's name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    /// The name itself (`*`: every name).
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// An operation on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Every operation (in ACLs only).
    All,
    /// Read records, join groups, commit offsets.
    Read,
    /// Write records.
    Write,
    /// Create topics.
    Create,
    /// Delete topics and groups.
    Delete,
    /// Change configs, partitions, quotas and security.
    Alter,
    /// See and describe.
    Describe,
}

impl Operation {
    /// The name in log lines, metric labels and messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
        }
    }

    /// Whether an ACL of operation `self` covers `wanted`, for an allow (`implied`: with the
    /// operations that imply `DESCRIBE`) or a deny (without).
    fn covers(self, wanted: Operation, implied: bool) -> bool {
        self == Operation::All
            || self == wanted
            || (implied
                && wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Allows.
    Allow,
    /// Denies, whatever allows.
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    /// `User:<name>` or `User:*`.
    pub principal: String,
    /// The kind of resource.
    pub resource_type: ResourceType,
    /// The name (empty for the cluster).
    pub name: String,
    /// How the name matches.
    pub pattern_type: PatternType,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

/// A resource a call touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A topic by name.
    Topic(&'a str),
    /// A group by id.
    Group(&'a str),
    /// The broker.
    Cluster,
}

impl Resource<'_> {
    /// Its type.
    pub fn resource_type(self) -> ResourceType {
        match self {
            Resource::Topic(_) => ResourceType::Topic,
            Resource::Group(_) => ResourceType::Group,
            Resource::Cluster => ResourceType::Cluster,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resource::Topic(_) => "topic",
            Resource::Group(_) => "group",
            Resource::Cluster => "the cluster",
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(n) | Resource::Group(n) => write!(f, "{} {n:?}", self.name()),
            Resource::Cluster => f.write_str(self.name()),
        }
    }
}

impl Acl {
    /// Whether this ACL is about `principal` and `resource`.
    fn matches(&self, principal: &str, resource: Resource<'_>) -> bool {
        if self.principal != principal && self.principal != ANY_PRINCIPAL {
            return false;
        }
        if self.resource_type != resource.resource_type() {
            return false;
        }
        let name = match resource {
            Resource::Topic(n) | Resource::Group(n) => n,
            Resource::Cluster => return true,
        };
        match self.pattern_type {
            PatternType::Literal => self.name == name || self.name == ANY_NAME,
            PatternType::Prefixed => name.starts_with(&self.name),
        }
    }

    /// Checks an ACL from a request; `field` names it in the error.
    ///
    /// # Errors
    /// `INVALID_REQUEST` naming the field at fault.
    pub fn from_pb(acl: &pb::Acl, field: &str) -> Result<Acl, RpcError> {
        let invalid = |what: &str| RpcError::invalid(format!("{field}.{what}"));
        let resource_type = resource_type(acl.resource_type())
            .ok_or_else(|| invalid("resource_type: must be TOPIC, GROUP or CLUSTER"))?;
        let pattern_type = pattern_type(acl.pattern_type())
            .ok_or_else(|| invalid("pattern_type: must be LITERAL or PREFIXED"))?;
        let operation = operation(acl.operation())
            .ok_or_else(|| invalid("operation: must be set (ALL, READ, WRITE, …)"))?;
        let permission = permission(acl.permission())
            .ok_or_else(|| invalid("permission: must be ALLOW or DENY"))?;
        check_principal(&acl.principal).map_err(|why| invalid(&format!("principal: {why}")))?;
        let name = &acl.resource_name;
        match resource_type {
            ResourceType::Cluster if !name.is_empty() => {
                return Err(invalid("resource_name: must be empty for the cluster"));
            }
            ResourceType::Topic | ResourceType::Group if name.is_empty() => {
                return Err(invalid(
                    "resource_name: must not be empty (\"*\" is every name)",
                ));
            }
            _ => {}
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(invalid(&format!(
                "resource_name: is {} bytes, more than {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        Ok(Acl {
            principal: acl.principal.clone(),
            resource_type,
            name: name.clone(),
            pattern_type,
            operation,
            permission,
        })
    }

    /// The ACL as the protocol's message.
    pub fn to_pb(&self) -> pb::Acl {
        pb::Acl {
            principal: self.principal.clone(),
            resource_type: match self.resource_type {
                ResourceType::Topic => pb::ResourceType::Topic,
                ResourceType::Group => pb::ResourceType::Group,
                ResourceType::Cluster => pb::ResourceType::Cluster,
            } as i32,
            resource_name: self.name.clone(),
            pattern_type: match self.pattern_type {
                PatternType::Literal => pb::PatternType::Literal,
                PatternType::Prefixed => pb::PatternType::Prefixed,
            } as i32,
            operation: match self.operation {
                Operation::All => pb::Operation::All,
                Operation::Read => pb::Operation::Read,
                Operation::Write => pb::Operation::Write,
                Operation::Create => pb::Operation::Create,
                Operation::Delete => pb::Operation::Delete,
                Operation::Alter => pb::Operation::Alter,
                Operation::Describe => pb::Operation::Describe,
            } as i32,
            permission: match self.permission {
                Permission::Allow => pb::Permission::Allow,
                Permission::Deny => pb::Permission::Deny,
            } as i32,
        }
    }
}

/// Matches ACLs; `None` fields match any value.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    principal: Option<String>,
    resource_type: Option<ResourceType>,
    name: Option<String>,
    pattern_type: Option<PatternType>,
    operation: Option<Operation>,
    permission: Option<Permission>,
}

impl Filter {
    /// The filter of a request; a missing one matches every ACL.
    pub fn from_pb(filter: Option<&pb::AclFilter>) -> Filter {
        let Some(f) = filter else {
            return Filter::default();
        };
        Filter {
            principal: f.principal.clone(),
            resource_type: resource_type(f.resource_type()),
            name: f.resource_name.clone(),
            pattern_type: pattern_type(f.pattern_type()),
            operation: operation(f.operation()),
            permission: permission(f.permission()),
        }
    }

    /// Whether `acl` passes.
    pub fn matches(&self, acl: &Acl) -> bool {
        fn eq<T: PartialEq>(want: Option<&T>, have: &T) -> bool {
            want.is_none_or(|w| w == have)
        }
        eq(self.principal.as_ref(), &acl.principal)
            && eq(self.resource_type.as_ref(), &acl.resource_type)
            && eq(self.name.as_ref(), &acl.name)
            && eq(self.pattern_type.as_ref(), &acl.pattern_type)
            && eq(self.operation.as_ref(), &acl.operation)
            && eq(self.permission.as_ref(), &acl.permission)
    }
}

/// Whether `acls` let `principal` do `op` on `resource`: no matching deny, and a matching
/// allow.
pub fn allows(acls: &[Acl], principal: &str, resource: Resource<'_>, op: Operation) -> bool {
    let mut allowed = false;
    for acl in acls.iter().filter(|a| a.matches(principal, resource)) {
        match acl.permission {
            Permission::Deny if acl.operation.covers(op, false) => return false,
            Permission::Allow if acl.operation.covers(op, true) => allowed = true,
            _ => {}
        }
    }
    allowed
}

/// Whether `acls` allow `principal` `op` on some resource of `resource_type` (a list, or a
/// call that needs the right on any one of them).
pub fn allows_some(
    acls: &[Acl],
    principal: &str,
    resource_type: ResourceType,
    op: Operation,
) -> bool {
    acls.iter().any(|a| {
        (a.principal == principal || a.principal == ANY_PRINCIPAL)
            && a.resource_type == resource_type
            && a.permission == Permission::Allow
            && a.operation.covers(op, true)
    })
}

/// Checks a principal's form: `User:` and a name of printable ASCII (or `*`).
///
/// # Errors
/// What is wrong.
pub fn check_principal(principal: &str) -> Result<(), String> {
    let Some(name) = principal.strip_prefix("User:") else {
        return Err(format!(
            "{principal:?} must be of the form User:<name> (or User:*)"
        ));
    };
    let printable = name.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !printable {
        return Err(format!(
            "{principal:?}: the name must be 1 to {MAX_NAME_BYTES} printable ASCII characters"
        ));
    }
    Ok(())
}

fn resource_type(t: pb::ResourceType) -> Option<ResourceType> {
    match t {
        pb::ResourceType::Unspecified => None,
        pb::ResourceType::Topic => Some(ResourceType::Topic),
        pb::ResourceType::Group => Some(ResourceType::Group),
        pb::ResourceType::Cluster => Some(ResourceType::Cluster),
    }
}

fn pattern_type(t: pb::PatternType) -> Option<PatternType> {
    match t {
        pb::PatternType::Unspecified => None,
        pb::PatternType::Literal => Some(PatternType::Literal),
        pb::PatternType::Prefixed => Some(PatternType::Prefixed),
    }
}

fn operation(o: pb::Operation) -> Option<Operation> {
    match o {
        pb::Operation::Unspecified => None,
        pb::Operation::All => Some(Operation::All),
        pb::Operation::Read => Some(Operation::Read),
        pb::Operation::Write => Some(Operation::Write),
        pb::Operation::Create => Some(Operation::Create),
        pb::Operation::Delete => Some(Operation::Delete),
        pb::Operation::Alter => Some(Operation::Alter),
        pb::Operation::Describe => Some(Operation::Describe),
    }
}

fn permission(p: pb::Permission) -> Option<Permission> {
    match p {
        pb::Permission::Unspecified => None,
        pb::Permission::Allow => Some(Permission::Allow),
        pb::Permission::Deny => Some(Permission::Deny),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        t: ResourceType,
        name: &str,
        p: PatternType,
        op: Operation,
        perm: Permission,
    ) -> Acl {
        Acl {
            principal: principal.into(),
            resource_type: t,
            name: name.into(),
            pattern_type: p,
            operation: op,
            permission: perm,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn nothing_is_allowed_without_an_acl() {
        assert!(!allows(&[], "User:a", Resource::Topic("t"), Read));
        assert!(!allows(&[], "User:a", Resource::Cluster, Describe));
    }

    #[test]
    fn literal_prefixed_and_wildcard_names_match_as_in_kafka() {
        let acls = [
            acl("User:a", Topic, "orders", Literal, Read, Allow),
            acl("User:a", Topic, "pay.", Prefixed, Write, Allow),
            acl("User:*", Group, "*", Literal, Read, Allow),
        ];
        assert!(allows(&acls, "User:a", Resource::Topic("orders"), Read));
        assert!(!allows(&acls, "User:a", Resource::Topic("orders2"), Read));
        assert!(!allows(&acls, "User:a", Resource::Topic("orders"), Write));
        assert!(allows(&acls, "User:a", Resource::Topic("pay.eu"), Write));
        assert!(!allows(&acls, "User:a", Resource::Topic("pay"), Write));
        assert!(allows(&acls, "User:b", Resource::Group("any"), Read));
        assert!(!allows(&acls, "User:b", Resource::Topic("orders"), Read));
    }

    #[test]
    fn deny_wins_and_only_allows_imply_describe() {
        let acls = [
            acl("User:*", Topic, "*", Literal, All, Allow),
            acl("User:a", Topic, "secret", Literal, Read, Deny),
        ];
        assert!(!allows(&acls, "User:a", Resource::Topic("secret"), Read));
        assert!(allows(&acls, "User:a", Resource::Topic("secret"), Describe));
        assert!(allows(&acls, "User:a", Resource::Topic("secret"), Write));
        let read_only = [acl("User:a", Topic, "t", Literal, Read, Allow)];
        assert!(allows(&read_only, "User:a", Resource::Topic("t"), Describe));
        assert!(!allows(&read_only, "User:a", Resource::Topic("t"), Delete));
        let deny_all = [
            acl("User:a", Topic, "t", Literal, Read, Allow),
            acl("User:a", Topic, "t", Literal, All, Deny),
        ];
        assert!(!allows(&deny_all, "User:a", Resource::Topic("t"), Describe));
    }

    #[test]
    fn some_resource_of_a_type_is_any_allow_of_it() {
        let acls = [acl("User:a", Topic, "t", Literal, Write, Allow)];
        assert!(allows_some(&acls, "User:a", Topic, Write));
        assert!(allows_some(&acls, "User:a", Topic, Describe));
        assert!(!allows_some(&acls, "User:a", Group, Describe));
        assert!(!allows_some(&acls, "User:b", Topic, Write));
    }

    #[test]
    fn acls_from_requests_are_checked_field_by_field() {
        let good = acl("User:a", Topic, "t", Literal, Read, Allow).to_pb();
        assert_eq!(
            Acl::from_pb(&good, "acls[0]").unwrap(),
            acl("User:a", Topic, "t", Literal, Read, Allow)
        );
        let mut bad = good.clone();
        bad.principal = "alice".into();
        let e = Acl::from_pb(&bad, "acls[0]").unwrap_err();
        assert!(e.message.starts_with("acls[0].principal"), "{}", e.message);
        let mut bad = good.clone();
        bad.resource_type = pb::ResourceType::Cluster as i32;
        let e = Acl::from_pb(&bad, "acls[1]").unwrap_err();
        assert!(e.message.contains("empty for the cluster"), "{}", e.message);
        let mut bad = good;
        bad.operation = 0;
        assert!(Acl::from_pb(&bad, "acls[2]").is_err());
    }
}
