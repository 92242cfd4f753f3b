//! The gRPC floor: `AuthorizationService` on bare tonic, answering every
//! Authorize with the same allow (the shape and size of a real one) and
//! nothing else. `ghz_bench/h2load.sh` loads it beside the real service, so
//! the ratio says what a decision costs above tonic itself on this machine.
//!
//!   cargo run --release --example noop_server -- 127.0.0.1:50153

use tonic::{Request, Response, Status, transport::Server};
use velro_authz::proto::{
    self,
    authorization_service_server::{AuthorizationService, AuthorizationServiceServer},
};

struct Noop;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the no-op server answers Authorize only",
    ))
}

#[tonic::async_trait]
impl AuthorizationService for Noop {
    async fn authorize(
        &self,
        _: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        Ok(Response::new(proto::AuthorizeResponse {
            decision: proto::Decision::Allow as i32,
            reason: "permission_granted".to_owned(),
            message: String::new(),
            decided_by: "ownership".to_owned(),
            decided_by_layer: 1,
            permissions: vec!["read".to_owned(), "write".to_owned()],
            source: proto::PermissionSource::InProcessCache as i32,
            decision_id: "0193a1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b".to_owned(),
            signed_url: None,
            flags: Vec::new(),
        }))
    }

    async fn batch_authorize(
        &self,
        _: Request<proto::BatchAuthorizeRequest>,
    ) -> Result<Response<proto::BatchAuthorizeResponse>, Status> {
        unimplemented()
    }

    async fn authenticate(
        &self,
        _: Request<proto::AuthenticateRequest>,
    ) -> Result<Response<proto::AuthenticateResponse>, Status> {
        unimplemented()
    }

    async fn revoke_sessions(
        &self,
        _: Request<proto::RevokeSessionsRequest>,
    ) -> Result<Response<proto::RevokeSessionsResponse>, Status> {
        unimplemented()
    }

    async fn get_revision(
        &self,
        _: Request<proto::GetRevisionRequest>,
    ) -> Result<Response<proto::GetRevisionResponse>, Status> {
        unimplemented()
    }

    async fn set_kill_switch(
        &self,
        _: Request<proto::SetKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        unimplemented()
    }

    async fn clear_kill_switch(
        &self,
        _: Request<proto::ClearKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        unimplemented()
    }

    async fn list_kill_switches(
        &self,
        _: Request<proto::ListKillSwitchesRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        unimplemented()
    }

    async fn query_audit(
        &self,
        _: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<proto::QueryAuditResponse>, Status> {
        unimplemented()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50153".to_owned())
        .parse()?;
    Server::builder()
        .add_service(AuthorizationServiceServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
