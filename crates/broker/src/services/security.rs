//! `runnel.v1.SecurityService`: users, tokens and ACLs, over [`crate::auth::Auth`].

use std::sync::Arc;
use std::time::Instant;

use runnel_proto::pb::{self, security_service_server::SecurityService};
use tonic::{Request, Response, Status};

use super::access::authorized;
use super::finish;
use crate::auth::Auth;
use crate::auth::acl::{Acl, Filter};
use crate::error::RpcError;

/// The security service.
#[derive(Debug, Clone)]
pub struct Security {
    auth: Arc<Auth>,
}

impl Security {
    pub(crate) fn new(auth: Arc<Auth>) -> Self {
        Security { auth }
    }
}

#[tonic::async_trait]
impl SecurityService for Security {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            let user = self
                .auth
                .create_user(access.principal(), req.name, req.password)
                .await?;
            Ok(pb::CreateUserResponse { user: Some(user) })
        }
        .await;
        finish("CreateUser", started, result)
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            self.auth
                .set_password(access.principal(), req.name, req.password)
                .await?;
            Ok(pb::SetPasswordResponse {})
        }
        .await;
        finish("SetPassword", started, result)
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            let tokens_deleted = self.auth.delete_user(access.principal(), req.name).await?;
            Ok(pb::DeleteUserResponse { tokens_deleted })
        }
        .await;
        finish("DeleteUser", started, result)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|_| pb::ListUsersResponse {
            users: self.auth.list_users(),
        });
        finish("ListUsers", started, result)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            let (token, secret) = self
                .auth
                .create_token(access.principal(), req.user, req.ttl_ms, req.description)
                .await?;
            Ok(pb::CreateTokenResponse {
                token: Some(token),
                secret,
            })
        }
        .await;
        finish("CreateToken", started, result)
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            self.auth.delete_token(access.principal(), req.id).await?;
            Ok(pb::DeleteTokenResponse {})
        }
        .await;
        finish("DeleteToken", started, result)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|(_, req)| pb::ListTokensResponse {
            tokens: self.auth.list_tokens(&req.user),
        });
        finish("ListTokens", started, result)
    }

    async fn create_acls(
        &self,
        request: Request<pb::CreateAclsRequest>,
    ) -> Result<Response<pb::CreateAclsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            let acls = req
                .acls
                .iter()
                .enumerate()
                .map(|(i, a)| Acl::from_pb(a, &format!("acls[{i}]")))
                .collect::<Result<Vec<_>, RpcError>>()?;
            let created = self.auth.create_acls(access.principal(), acls).await?;
            Ok(pb::CreateAclsResponse { created })
        }
        .await;
        finish("CreateAcls", started, result)
    }

    async fn delete_acls(
        &self,
        request: Request<pb::DeleteAclsRequest>,
    ) -> Result<Response<pb::DeleteAclsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let (access, req) = authorized(request)?;
            let filter = Filter::from_pb(req.filter.as_ref());
            let deleted = self.auth.delete_acls(access.principal(), filter).await?;
            Ok(pb::DeleteAclsResponse {
                deleted: deleted.iter().map(Acl::to_pb).collect(),
            })
        }
        .await;
        finish("DeleteAcls", started, result)
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        let started = Instant::now();
        let result = authorized(request).map(|(_, req)| {
            let filter = Filter::from_pb(req.filter.as_ref());
            pb::ListAclsResponse {
                acls: self
                    .auth
                    .list_acls(&filter)
                    .iter()
                    .map(Acl::to_pb)
                    .collect(),
            }
        });
        finish("ListAcls", started, result)
    }
}
