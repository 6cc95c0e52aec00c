//! Authentication and authorization over gRPC: every RPC of every `runnel.v1` service refuses
//! an unauthenticated call, denies an authenticated one without ACLs, and serves one with
//! exactly the ACLs `docs/security.md` lists for it. An RPC missing from the table fails the
//! test, so a new RPC cannot ship unprotected. Then tokens, password changes and the
//! slowing of wrong passwords.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use prost::Message;
use runnel_proto::pb::{self, ErrorCode};
use tonic::Code;

use runnel_test_support::errors::trailer_code;
use runnel_test_support::prelude::*;

pub(crate) const ADMIN_PASSWORD: &str = "admin-password";

async fn secured() -> TestBroker {
    TestBroker::start_with(|c| {
        c.auth.enabled = true;
        c.auth.bootstrap_password = ADMIN_PASSWORD.into();
        c.auth.failure_delay_ms = 1;
        c.auth.max_failure_delay_ms = 1;
    })
    .await
}

fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

/// Calls `path` with `message` as `authorization` (none for `None`).
async fn call(
    b: &TestBroker,
    path: &'static str,
    kind: CallKind,
    message: &impl Message,
    authorization: Option<&str>,
) -> Result<Option<Bytes>, tonic::Status> {
    let headers: Vec<(&'static str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let body = Bytes::from(message.encode_to_vec());
    within(raw_call(b, path, kind, body, &headers)).await
}

/// Calls as the bootstrap administrator, which must succeed.
pub(crate) async fn as_admin(
    b: &TestBroker,
    path: &'static str,
    kind: CallKind,
    message: &impl Message,
) -> Bytes {
    call(
        b,
        path,
        kind,
        message,
        Some(&basic("admin", ADMIN_PASSWORD)),
    )
    .await
    .unwrap_or_else(|s| panic!("{path} as admin: {s:?}"))
    .unwrap_or_default()
}

/// Creates user `name` as the administrator.
pub(crate) async fn add_user(b: &TestBroker, name: &str, password: &str) {
    let create = pb::CreateUserRequest {
        name: name.into(),
        password: password.into(),
    };
    as_admin(
        b,
        "/runnel.v1.SecurityService/CreateUser",
        CallKind::Unary,
        &create,
    )
    .await;
}

/// Creates `acls` as the administrator.
pub(crate) async fn allow(b: &TestBroker, acls: Vec<pb::Acl>) {
    let create = pb::CreateAclsRequest { acls };
    as_admin(
        b,
        "/runnel.v1.SecurityService/CreateAcls",
        CallKind::Unary,
        &create,
    )
    .await;
}

pub(crate) fn acl(principal: &str, t: pb::ResourceType, name: &str, op: pb::Operation) -> pb::Acl {
    pb::Acl {
        principal: principal.into(),
        resource_type: t as i32,
        resource_name: name.into(),
        pattern_type: pb::PatternType::Literal as i32,
        operation: op as i32,
        permission: pb::Permission::Allow as i32,
    }
}

/// The resource of one needed ACL.
#[derive(Clone, Copy)]
enum On {
    Topic(&'static str),
    Group(&'static str),
    Cluster,
}

/// One RPC: how to call it, and the ACLs it needs.
struct Row {
    path: &'static str,
    kind: CallKind,
    request: Box<dyn Fn() -> Bytes>,
    needs: Vec<(On, pb::Operation)>,
}

fn row<M: Message + 'static>(
    path: &'static str,
    kind: CallKind,
    request: impl Fn() -> M + 'static,
    needs: &[(On, pb::Operation)],
) -> Row {
    Row {
        path,
        kind,
        request: Box::new(move || Bytes::from(request().encode_to_vec())),
        needs: needs.to_vec(),
    }
}

struct Raw(Bytes);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// The methods of the `runnel.v1` services, from the descriptor set the broker serves.
fn every_method() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(runnel_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths.sort();
    paths
}

/// Every RPC with the ACLs it needs. Resources: topic `t` (with records), group `g` (with
/// committed offsets), and the ones each row's setup made.
fn table() -> Vec<Row> {
    use CallKind::{Bidirectional, ServerStreaming, Unary};
    use On::{Cluster, Group, Topic};
    use pb::Operation::{Alter, Create, Delete, Describe, Read, Write};
    let t = |name: &str| pb::TopicPartitions {
        topic: name.into(),
        partitions: vec![],
    };
    let join = |group: &str| pb::JoinGroup {
        group: group.into(),
        topics: vec!["t".into()],
        client_id: "c".into(),
        session_timeout_ms: 30_000,
        ..Default::default()
    };
    let earliest = Some(pb::StartPosition {
        position: Some(pb::start_position::Position::Boundary(
            pb::OffsetBoundary::Earliest as i32,
        )),
    });
    vec![
        row(
            "/runnel.v1.AdminService/CreateTopic",
            Unary,
            || pb::CreateTopicRequest {
                topic: "created".into(),
                partition_count: 1,
                config: None,
            },
            &[(Topic("created"), Create)],
        ),
        row(
            "/runnel.v1.AdminService/DeleteTopic",
            Unary,
            || pb::DeleteTopicRequest {
                topic: "doomed".into(),
            },
            &[(Topic("doomed"), Delete)],
        ),
        row(
            "/runnel.v1.AdminService/ListTopics",
            Unary,
            || pb::ListTopicsRequest {},
            &[(Topic("t"), Describe)],
        ),
        row(
            "/runnel.v1.AdminService/DescribeTopic",
            Unary,
            || pb::DescribeTopicRequest { topic: "t".into() },
            &[(Topic("t"), Describe)],
        ),
        row(
            "/runnel.v1.AdminService/AlterTopicConfig",
            Unary,
            || pb::AlterTopicConfigRequest {
                topic: "t".into(),
                set: Some(pb::TopicConfig {
                    retention_ms: Some(86_400_000),
                    ..Default::default()
                }),
                reset: vec![],
            },
            &[(Topic("t"), Alter)],
        ),
        row(
            "/runnel.v1.AdminService/CreatePartitions",
            Unary,
            || pb::CreatePartitionsRequest {
                topic: "grow".into(),
                partition_count: 2,
            },
            &[(Topic("grow"), Alter)],
        ),
        row(
            "/runnel.v1.AdminService/BrokerInfo",
            Unary,
            || pb::BrokerInfoRequest {},
            &[(Cluster, Describe)],
        ),
        row(
            "/runnel.v1.AdminService/SetQuota",
            Unary,
            || pb::SetQuotaRequest {
                client_id: "c".into(),
                rates: Some(pb::QuotaRates::default()),
                ..Default::default()
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.AdminService/DeleteQuota",
            Unary,
            || pb::DeleteQuotaRequest {
                client_id: "limited".into(),
                ..Default::default()
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.AdminService/ListQuotas",
            Unary,
            || pb::ListQuotasRequest {},
            &[(Cluster, Describe)],
        ),
        row(
            "/runnel.v1.ProduceService/Produce",
            Unary,
            || produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(1, 0)])]),
            &[(Topic("t"), Write)],
        ),
        row(
            "/runnel.v1.ProduceService/ProduceStream",
            Bidirectional,
            || produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(1, 0)])]),
            &[(Topic("t"), Write)],
        ),
        row(
            "/runnel.v1.ProduceService/InitProducer",
            Unary,
            pb::InitProducerRequest::default,
            &[(Topic("t"), Write)],
        ),
        row(
            "/runnel.v1.ConsumeService/Fetch",
            Unary,
            || pb::FetchRequest {
                partitions: vec![fetch_partition("t", 0, 0)],
                ..Default::default()
            },
            &[(Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.ConsumeService/Subscribe",
            ServerStreaming,
            move || pb::SubscribeRequest {
                topic: "t".into(),
                partition: 0,
                start: earliest,
                ..Default::default()
            },
            &[(Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.ConsumeService/ListOffsets",
            Unary,
            || pb::ListOffsetsRequest {
                queries: vec![pb::OffsetQuery {
                    topic: "t".into(),
                    partition: 0,
                    query: Some(pb::offset_query::Query::Boundary(
                        pb::OffsetBoundary::Latest as i32,
                    )),
                }],
            },
            &[(Topic("t"), Describe)],
        ),
        row(
            "/runnel.v1.GroupService/Membership",
            Bidirectional,
            move || pb::MembershipRequest {
                request: Some(pb::membership_request::Request::Join(join("gm"))),
            },
            &[(Group("gm"), Read), (Topic("t"), Describe)],
        ),
        row(
            "/runnel.v1.GroupService/Consume",
            Bidirectional,
            move || pb::GroupConsumeRequest {
                request: Some(pb::group_consume_request::Request::Start(
                    pb::GroupConsumeStart {
                        join: Some(join("gc")),
                        reset: pb::OffsetBoundary::Earliest as i32,
                        ..Default::default()
                    },
                )),
            },
            &[(Group("gc"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.GroupService/CommitOffsets",
            Unary,
            || pb::CommitOffsetsRequest {
                group: "g".into(),
                offsets: vec![pb::OffsetCommit {
                    topic: "t".into(),
                    partition: 0,
                    offset: 1,
                    metadata: String::new(),
                }],
                ..Default::default()
            },
            &[(Group("g"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.GroupService/FetchOffsets",
            Unary,
            move || pb::FetchOffsetsRequest {
                group: "g".into(),
                partitions: vec![t("t")],
            },
            &[(Group("g"), Describe), (Topic("t"), Describe)],
        ),
        row(
            "/runnel.v1.GroupService/ListGroups",
            Unary,
            || pb::ListGroupsRequest {},
            &[(Group("g"), Describe)],
        ),
        row(
            "/runnel.v1.GroupService/DescribeGroup",
            Unary,
            || pb::DescribeGroupRequest { group: "g".into() },
            &[(Group("g"), Describe)],
        ),
        row(
            "/runnel.v1.GroupService/DeleteGroup",
            Unary,
            || pb::DeleteGroupRequest {
                group: "gone".into(),
            },
            &[(Group("gone"), Delete)],
        ),
        row(
            "/runnel.v1.GroupService/ResetOffsets",
            Unary,
            move || pb::ResetOffsetsRequest {
                group: "g".into(),
                topics: vec![t("t")],
                target: Some(pb::reset_offsets_request::Target::Boundary(
                    pb::OffsetBoundary::Earliest as i32,
                )),
                dry_run: true,
                ..Default::default()
            },
            &[(Group("g"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.ShareService/ShareFetch",
            Unary,
            || pb::ShareFetchRequest {
                group_id: "sg".into(),
                member_id: "m".into(),
                topics: vec!["t".into()],
                max_records: 10,
                ..Default::default()
            },
            &[(Group("sg"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.ShareService/ShareAcknowledge",
            Unary,
            || pb::ShareAcknowledgeRequest {
                group_id: "sg".into(),
                member_id: "m".into(),
                acknowledgements: vec![pb::Acknowledgement {
                    topic: "t".into(),
                    partition: 0,
                    first_offset: 0,
                    last_offset: 0,
                    r#type: pb::AckType::Accept.into(),
                    ..Default::default()
                }],
            },
            &[(Group("sg"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.ShareService/LeaveShareGroup",
            Unary,
            || pb::LeaveShareGroupRequest {
                group_id: "sg".into(),
                member_id: "m".into(),
            },
            &[(Group("sg"), Read)],
        ),
        row(
            "/runnel.v1.ShareService/AlterShareGroup",
            Unary,
            || pb::AlterShareGroupRequest {
                group_id: "sg".into(),
                settings: Some(pb::ShareGroupSettings {
                    dead_letter_topic: Some("dlq".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &[(Group("sg"), Alter), (Topic("dlq"), Write)],
        ),
        row(
            "/runnel.v1.ShareService/DescribeShareGroup",
            Unary,
            || pb::DescribeShareGroupRequest {
                group_id: "sg".into(),
            },
            &[(Group("sg"), Describe)],
        ),
        row(
            "/runnel.v1.ShareService/ListShareGroups",
            Unary,
            || pb::ListShareGroupsRequest {},
            &[(Group("sg"), Describe)],
        ),
        row(
            "/runnel.v1.ShareService/DeleteShareGroup",
            Unary,
            || pb::DeleteShareGroupRequest {
                group_id: "sgone".into(),
                force: false,
            },
            &[(Group("sgone"), Delete)],
        ),
        row(
            "/runnel.v1.ShareService/ResetShareGroupOffsets",
            Unary,
            move || pb::ResetOffsetsRequest {
                group: "sg".into(),
                topics: vec![t("t")],
                target: Some(pb::reset_offsets_request::Target::Boundary(
                    pb::OffsetBoundary::Earliest as i32,
                )),
                dry_run: true,
                ..Default::default()
            },
            &[(Group("sg"), Read), (Topic("t"), Read)],
        ),
        row(
            "/runnel.v1.SecurityService/CreateUser",
            Unary,
            || pb::CreateUserRequest {
                name: "made".into(),
                password: "made-password".into(),
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/SetPassword",
            Unary,
            || pb::SetPasswordRequest {
                name: "other".into(),
                password: "new-password".into(),
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/DeleteUser",
            Unary,
            || pb::DeleteUserRequest { name: "bye".into() },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/ListUsers",
            Unary,
            || pb::ListUsersRequest {},
            &[(Cluster, Describe)],
        ),
        row(
            "/runnel.v1.SecurityService/CreateToken",
            Unary,
            || pb::CreateTokenRequest {
                user: "other".into(),
                ..Default::default()
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/DeleteToken",
            Unary,
            || pb::DeleteTokenRequest {
                id: DOOMED_TOKEN.with(|t| t.borrow().clone()),
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/ListTokens",
            Unary,
            pb::ListTokensRequest::default,
            &[(Cluster, Describe)],
        ),
        row(
            "/runnel.v1.SecurityService/CreateAcls",
            Unary,
            || pb::CreateAclsRequest {
                acls: vec![acl(
                    "User:x",
                    pb::ResourceType::Topic,
                    "x",
                    pb::Operation::Read,
                )],
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/DeleteAcls",
            Unary,
            || pb::DeleteAclsRequest {
                filter: Some(pb::AclFilter {
                    principal: Some("User:x".into()),
                    ..Default::default()
                }),
            },
            &[(Cluster, Alter)],
        ),
        row(
            "/runnel.v1.SecurityService/ListAcls",
            Unary,
            pb::ListAclsRequest::default,
            &[(Cluster, Describe)],
        ),
    ]
}

thread_local! {
    /// The id of the token the `DeleteToken` row deletes, made by the setup.
    static DOOMED_TOKEN: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What the rows act on: topics `t` (with records), `doomed`, `grow`; group `g` and `gone`
/// with committed offsets; a quota for `limited`; users `other` and `bye`; a token.
async fn set_up(b: &TestBroker) {
    use CallKind::Unary;
    for (topic, partitions) in [("t", 1), ("doomed", 1), ("grow", 1), ("dlq", 1)] {
        as_admin(
            b,
            "/runnel.v1.AdminService/CreateTopic",
            Unary,
            &pb::CreateTopicRequest {
                topic: topic.into(),
                partition_count: partitions,
                config: None,
            },
        )
        .await;
    }
    let records = produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(3, 0)])]);
    as_admin(b, "/runnel.v1.ProduceService/Produce", Unary, &records).await;
    for group in ["g", "gone"] {
        let commit = pb::CommitOffsetsRequest {
            group: group.into(),
            offsets: vec![pb::OffsetCommit {
                topic: "t".into(),
                partition: 0,
                offset: 2,
                metadata: String::new(),
            }],
            ..Default::default()
        };
        let answer = as_admin(b, "/runnel.v1.GroupService/CommitOffsets", Unary, &commit).await;
        let answer = pb::CommitOffsetsResponse::decode(answer).expect("a commit answer");
        assert!(
            answer.results.iter().all(|r| r.error.is_none()),
            "{answer:?}"
        );
    }
    for group in ["sg", "sgone"] {
        let alter = pb::AlterShareGroupRequest {
            group_id: group.into(),
            settings: Some(pb::ShareGroupSettings::default()),
            ..Default::default()
        };
        as_admin(b, "/runnel.v1.ShareService/AlterShareGroup", Unary, &alter).await;
    }
    let quota = pb::SetQuotaRequest {
        client_id: "limited".into(),
        rates: Some(pb::QuotaRates::default()),
        ..Default::default()
    };
    as_admin(b, "/runnel.v1.AdminService/SetQuota", Unary, &quota).await;
    for user in ["other", "bye"] {
        let create = pb::CreateUserRequest {
            name: user.into(),
            password: format!("{user}-password"),
        };
        as_admin(b, "/runnel.v1.SecurityService/CreateUser", Unary, &create).await;
    }
    let token = pb::CreateTokenRequest {
        user: "other".into(),
        ..Default::default()
    };
    let made = as_admin(b, "/runnel.v1.SecurityService/CreateToken", Unary, &token).await;
    let made = pb::CreateTokenResponse::decode(made).expect("a token");
    DOOMED_TOKEN.with(|t| *t.borrow_mut() = made.token.expect("the token").id);
}

/// Whether an answer refuses with PERMISSION_DENIED: as the call's status, or (for a
/// `ProduceStream`, which answers each request on its own) inline.
fn denied(path: &str, result: &Result<Option<Bytes>, tonic::Status>) -> bool {
    match result {
        Err(s) => {
            s.code() == Code::PermissionDenied
                && trailer_code(s) == Some(ErrorCode::PermissionDenied as i32)
        }
        Ok(Some(bytes)) if path.ends_with("/ProduceStream") => {
            let r = pb::ProduceResponse::decode(bytes.clone()).expect("a produce answer");
            r.error
                .is_some_and(|e| e.code == ErrorCode::PermissionDenied as i32)
        }
        Ok(_) => false,
    }
}

/// Whether an answer is a success, with no error inline either.
fn served(path: &str, result: &Result<Option<Bytes>, tonic::Status>) -> bool {
    let Ok(Some(bytes)) = result else {
        return false;
    };
    if path.contains("/Produce") && !path.ends_with("InitProducer") {
        let r = pb::ProduceResponse::decode(bytes.clone()).expect("a produce answer");
        return r.error.is_none() && r.results.iter().all(|p| p.error.is_none());
    }
    true
}

#[tokio::test]
async fn every_rpc_refuses_the_unauthenticated_denies_the_unauthorized_and_serves_the_allowed() {
    let b = secured().await;
    set_up(&b).await;
    let rows = table();
    let listed: Vec<String> = {
        let mut l: Vec<String> = rows.iter().map(|r| r.path.to_owned()).collect();
        l.sort();
        l
    };
    assert_eq!(
        listed,
        every_method(),
        "every RPC of runnel.v1 must have a row in this table, and only those"
    );
    for (i, row) in rows.iter().enumerate() {
        let path = row.path;
        let message = Raw((row.request)());
        let body = message.0.clone();
        let b = &b;
        let send = |auth: Option<String>| {
            let body = body.clone();
            async move {
                let headers: Vec<(&'static str, &str)> = auth
                    .as_deref()
                    .map(|a| ("authorization", a))
                    .into_iter()
                    .collect();
                within(raw_call(b, path, row.kind, body, &headers)).await
            }
        };

        // (a) No credentials, and a wrong password.
        for auth in [None, Some(basic("admin", "wrong-password"))] {
            let e = send(auth).await.expect_err(path);
            assert_status(&e, ErrorCode::Unauthenticated, "authentication failed");
        }

        // (b) Authenticated, no ACL.
        let (user, password) = (format!("u{i}"), format!("password-{i}"));
        add_user(b, &user, &password).await;
        let result = send(Some(basic(&user, &password))).await;
        assert!(denied(path, &result), "{path} without ACLs: {result:?}");

        // (c) Exactly the needed ACLs.
        let principal = format!("User:{user}");
        let acls = row
            .needs
            .iter()
            .map(|(on, op)| match on {
                On::Topic(n) => acl(&principal, pb::ResourceType::Topic, n, *op),
                On::Group(n) => acl(&principal, pb::ResourceType::Group, n, *op),
                On::Cluster => acl(&principal, pb::ResourceType::Cluster, "", *op),
            })
            .collect();
        allow(b, acls).await;
        let result = send(Some(basic(&user, &password))).await;
        assert!(
            served(path, &result),
            "{path} with {:?}: {result:?}",
            message
        );
    }
}

#[tokio::test]
async fn lists_show_only_what_the_caller_may_describe() {
    let b = secured().await;
    set_up(&b).await;
    add_user(&b, "reader", "reader-password").await;
    let acls = vec![
        acl(
            "User:reader",
            pb::ResourceType::Topic,
            "t",
            pb::Operation::Read,
        ),
        acl(
            "User:reader",
            pb::ResourceType::Group,
            "g",
            pb::Operation::Read,
        ),
    ];
    allow(&b, acls).await;
    let reader = basic("reader", "reader-password");
    let topics = call(
        &b,
        "/runnel.v1.AdminService/ListTopics",
        CallKind::Unary,
        &pb::ListTopicsRequest {},
        Some(&reader),
    )
    .await
    .expect("READ implies DESCRIBE")
    .unwrap_or_default();
    let topics = pb::ListTopicsResponse::decode(topics).unwrap();
    let names: Vec<&str> = topics.topics.iter().map(|t| t.topic.as_str()).collect();
    assert_eq!(names, ["t"]);
    let groups = call(
        &b,
        "/runnel.v1.GroupService/ListGroups",
        CallKind::Unary,
        &pb::ListGroupsRequest {},
        Some(&reader),
    )
    .await
    .expect("READ implies DESCRIBE")
    .unwrap_or_default();
    let groups = pb::ListGroupsResponse::decode(groups).unwrap();
    let ids: Vec<&str> = groups.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(ids, ["g"]);
}

#[tokio::test]
async fn tokens_authenticate_until_they_expire_or_are_deleted() {
    let b = secured().await;
    let make = |ttl_ms| pb::CreateTokenRequest {
        user: "admin".into(),
        ttl_ms,
        description: "ci".into(),
    };
    let info = pb::BrokerInfoRequest {};
    let path = "/runnel.v1.AdminService/BrokerInfo";
    let lasting = as_admin(
        &b,
        "/runnel.v1.SecurityService/CreateToken",
        CallKind::Unary,
        &make(0),
    )
    .await;
    let lasting = pb::CreateTokenResponse::decode(lasting).unwrap();
    let bearer = format!("Bearer {}", lasting.secret);
    call(&b, path, CallKind::Unary, &info, Some(&bearer))
        .await
        .expect("a valid token");

    // A token with a wrong secret, an expired token, a deleted token.
    let forged = format!("Bearer {}x", lasting.secret);
    let e = call(&b, path, CallKind::Unary, &info, Some(&forged))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "unknown or was deleted");
    let brief = as_admin(
        &b,
        "/runnel.v1.SecurityService/CreateToken",
        CallKind::Unary,
        &make(1),
    )
    .await;
    let brief = pb::CreateTokenResponse::decode(brief).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = call(
        &b,
        path,
        CallKind::Unary,
        &info,
        Some(&format!("Bearer {}", brief.secret)),
    )
    .await
    .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "expired");
    let id = lasting.token.unwrap().id;
    as_admin(
        &b,
        "/runnel.v1.SecurityService/DeleteToken",
        CallKind::Unary,
        &pb::DeleteTokenRequest { id },
    )
    .await;
    let e = call(&b, path, CallKind::Unary, &info, Some(&bearer))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "unknown or was deleted");

    // The list never shows a secret.
    let listed = as_admin(
        &b,
        "/runnel.v1.SecurityService/ListTokens",
        CallKind::Unary,
        &pb::ListTokensRequest::default(),
    )
    .await;
    assert!(
        !listed
            .windows(16)
            .any(|w| brief.secret.as_bytes().windows(16).any(|s| s == w))
    );
}

#[tokio::test]
async fn a_changed_password_is_refused_at_once_and_users_survive_a_restart() {
    let b = secured().await;
    add_user(&b, "alice", "first-password").await;
    allow(
        &b,
        vec![acl(
            "User:alice",
            pb::ResourceType::Cluster,
            "",
            pb::Operation::Describe,
        )],
    )
    .await;
    let path = "/runnel.v1.AdminService/BrokerInfo";
    let info = pb::BrokerInfoRequest {};
    let first = basic("alice", "first-password");
    call(&b, path, CallKind::Unary, &info, Some(&first))
        .await
        .expect("the password");
    let change = pb::SetPasswordRequest {
        name: "alice".into(),
        password: "second-password".into(),
    };
    as_admin(
        &b,
        "/runnel.v1.SecurityService/SetPassword",
        CallKind::Unary,
        &change,
    )
    .await;
    let e = call(&b, path, CallKind::Unary, &info, Some(&first))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "wrong");

    let b = b.restart().await;
    let second = basic("alice", "second-password");
    call(&b, path, CallKind::Unary, &info, Some(&second))
        .await
        .expect("kept across a restart");
    let e = call(&b, path, CallKind::Unary, &info, Some(&first))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "wrong");
    let stored = std::fs::read_to_string(b.data_dir().join("security.toml")).unwrap();
    assert!(!stored.contains("second-password") && stored.contains("$argon2id$"));
}

#[tokio::test]
async fn repeated_wrong_passwords_are_slowed_then_a_right_one_frees_the_user() {
    let b = TestBroker::start_with(|c| {
        c.auth.enabled = true;
        c.auth.bootstrap_password = ADMIN_PASSWORD.into();
        c.auth.failure_delay_ms = 200;
        c.auth.max_failure_delay_ms = 10_000;
    })
    .await;
    let path = "/runnel.v1.AdminService/BrokerInfo";
    let info = pb::BrokerInfoRequest {};
    let wrong = basic("admin", "not-the-password");
    for _ in 0..3 {
        let _ = call(&b, path, CallKind::Unary, &info, Some(&wrong)).await;
    }
    // Three failures: the next attempt waits for its slot, 200 ms × 2² after the last one.
    let started = Instant::now();
    let e = call(&b, path, CallKind::Unary, &info, Some(&wrong))
        .await
        .unwrap_err();
    assert_status(&e, ErrorCode::Unauthenticated, "wrong");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    as_admin_after_wait(&b).await;
}

/// The right password still succeeds (after its wait), and frees the pair.
async fn as_admin_after_wait(b: &TestBroker) {
    let path = "/runnel.v1.AdminService/BrokerInfo";
    let right = basic("admin", ADMIN_PASSWORD);
    call(
        b,
        path,
        CallKind::Unary,
        &pb::BrokerInfoRequest {},
        Some(&right),
    )
    .await
    .expect("the right password");
    let started = Instant::now();
    call(
        b,
        path,
        CallKind::Unary,
        &pb::BrokerInfoRequest {},
        Some(&right),
    )
    .await
    .expect("the right password");
    // Freed: still slowed, it would wait for a slot 3.2 s after the last.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_auth_off_every_call_is_allowed_and_credentials_are_ignored() {
    let b = TestBroker::start().await;
    create_topic(&b, "t", 1).await;
    let wrong = basic("nobody", "nothing-at-all");
    call(
        &b,
        "/runnel.v1.AdminService/DescribeTopic",
        CallKind::Unary,
        &pb::DescribeTopicRequest { topic: "t".into() },
        Some(&wrong),
    )
    .await
    .expect("auth is off");
}

/// A `Subscribe` stream of `topic` from the start, as `authorization`.
async fn subscribe_as(
    b: &TestBroker,
    topic: &str,
    authorization: &str,
) -> tonic::Streaming<pb::SubscribeResponse> {
    let mut request = tonic::Request::new(pb::SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        start: Some(pb::StartPosition {
            position: Some(pb::start_position::Position::Boundary(
                pb::OffsetBoundary::Earliest as i32,
            )),
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", authorization.parse().unwrap());
    within(b.consume().subscribe(request))
        .await
        .expect("subscribed")
        .into_inner()
}

/// Reads `stream` until it ends with an error, writing a batch to `t` whenever it waits.
async fn until_refused(
    b: &TestBroker,
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> tonic::Status {
    for _ in 0..100 {
        let more = produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(1, 0)])]);
        as_admin(
            b,
            "/runnel.v1.ProduceService/Produce",
            CallKind::Unary,
            &more,
        )
        .await;
        match within(stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
    panic!("the stream went on after 100 batches");
}

#[tokio::test]
async fn revoking_an_acl_or_deleting_a_token_ends_the_open_streams_it_allowed() {
    let b = secured().await;
    set_up(&b).await;
    add_user(&b, "alice", "alice-password").await;
    allow(
        &b,
        vec![acl(
            "User:alice",
            pb::ResourceType::Topic,
            "t",
            pb::Operation::Read,
        )],
    )
    .await;
    let token = pb::CreateTokenRequest {
        user: "alice".into(),
        ..Default::default()
    };
    let token = as_admin(
        &b,
        "/runnel.v1.SecurityService/CreateToken",
        CallKind::Unary,
        &token,
    )
    .await;
    let token = pb::CreateTokenResponse::decode(token).unwrap();

    // A stream by password: reads, until the ACL goes.
    let mut by_password = subscribe_as(&b, "t", &basic("alice", "alice-password")).await;
    let first = within(by_password.message()).await.expect("records");
    assert!(first.is_some());
    // An unrelated change costs a stream nothing but a check.
    let other = pb::CreateAclsRequest {
        acls: vec![acl(
            "User:x",
            pb::ResourceType::Topic,
            "x",
            pb::Operation::Read,
        )],
    };
    as_admin(
        &b,
        "/runnel.v1.SecurityService/CreateAcls",
        CallKind::Unary,
        &other,
    )
    .await;
    let more = produce_request("t", pb::Acks::Written, vec![entry(0, vec![batch(1, 0)])]);
    as_admin(
        &b,
        "/runnel.v1.ProduceService/Produce",
        CallKind::Unary,
        &more,
    )
    .await;
    within(by_password.message()).await.expect("still allowed");

    // A stream by token: ends once the token is deleted.
    let mut by_token = subscribe_as(&b, "t", &format!("Bearer {}", token.secret)).await;
    within(by_token.message()).await.expect("records");
    let id = token.token.unwrap().id;
    as_admin(
        &b,
        "/runnel.v1.SecurityService/DeleteToken",
        CallKind::Unary,
        &pb::DeleteTokenRequest { id },
    )
    .await;
    let e = until_refused(&b, &mut by_token).await;
    assert_status(&e, ErrorCode::Unauthenticated, "the token was deleted");

    let revoke = pb::DeleteAclsRequest {
        filter: Some(pb::AclFilter {
            principal: Some("User:alice".into()),
            ..Default::default()
        }),
    };
    as_admin(
        &b,
        "/runnel.v1.SecurityService/DeleteAcls",
        CallKind::Unary,
        &revoke,
    )
    .await;
    let e = until_refused(&b, &mut by_password).await;
    assert_status(
        &e,
        ErrorCode::PermissionDenied,
        "User:alice may not READ topic \"t\"",
    );
}
