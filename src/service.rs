//! Thin gRPC handlers: validate, ask the engine, translate the answer.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use crate::{
    engine::{Decision, Engine, permissions::PermissionSource},
    error::AuthzError,
    metrics::Metrics,
    proto::{self, authorization_service_server::AuthorizationService},
    validate,
};

pub struct AuthzService {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    max_batch_items: usize,
}

impl AuthzService {
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>, max_batch_items: usize) -> Self {
        AuthzService {
            engine,
            metrics,
            max_batch_items,
        }
    }

    async fn authorize_request(
        &self,
        req: &proto::AuthorizeRequest,
    ) -> Result<Decision, AuthzError> {
        let query = validate::query("", &req.user_id, &req.action, req.resource.as_ref())?;
        let consistency = validate::consistency(req.consistency)?;
        let request = validate::context(req.context.as_ref())?;
        self.engine.decide(query, consistency, &request).await
    }

    async fn batch_request(
        &self,
        req: &proto::BatchAuthorizeRequest,
    ) -> Result<Vec<proto::BatchResult>, AuthzError> {
        if req.items.len() > self.max_batch_items {
            return Err(AuthzError::invalid(format!(
                "the batch has {} items; at most {} are allowed (setting max_batch_items): split it",
                req.items.len(),
                self.max_batch_items
            )));
        }
        let consistency = validate::consistency(req.consistency)?;
        let request = validate::context(req.context.as_ref())?;
        let items = req
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                validate::query(
                    &format!("items[{i}]."),
                    &item.user_id,
                    &item.action,
                    item.resource.as_ref(),
                )
            })
            .collect();
        let decisions = self.engine.decide_batch(items, consistency, &request).await;
        Ok(decisions
            .into_iter()
            .map(|outcome| proto::BatchResult {
                outcome: Some(match outcome {
                    Ok(decision) => proto::batch_result::Outcome::Response(decision.into()),
                    Err(error) => proto::batch_result::Outcome::Error(proto::ItemError {
                        code: error.code() as i32,
                        message: error.to_string(),
                    }),
                }),
            })
            .collect())
    }
}

#[tonic::async_trait]
impl AuthorizationService for AuthzService {
    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        let started = Instant::now();
        let result = self.authorize_request(request.get_ref()).await;
        let outcome = match &result {
            Ok(d) if d.verdict.allow => "allow",
            Ok(_) => "deny",
            Err(e) => code_name(e),
        };
        self.metrics
            .record_rpc("Authorize", outcome, started.elapsed());
        Ok(Response::new(result?.into()))
    }

    async fn batch_authorize(
        &self,
        request: Request<proto::BatchAuthorizeRequest>,
    ) -> Result<Response<proto::BatchAuthorizeResponse>, Status> {
        let started = Instant::now();
        let result = self.batch_request(request.get_ref()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => code_name(e),
        };
        self.metrics
            .record_rpc("BatchAuthorize", outcome, started.elapsed());
        Ok(Response::new(proto::BatchAuthorizeResponse {
            results: result?,
        }))
    }
}

fn code_name(error: &AuthzError) -> &'static str {
    match error {
        AuthzError::InvalidArgument(_) => "invalid_argument",
        AuthzError::ResourceExhausted(_) => "resource_exhausted",
        AuthzError::Unavailable(_) => "unavailable",
        AuthzError::DeadlineExceeded(_) => "deadline_exceeded",
        AuthzError::Internal(_) => "internal",
    }
}

impl From<Decision> for proto::AuthorizeResponse {
    fn from(d: Decision) -> Self {
        let decision = if d.verdict.allow {
            proto::Decision::Allow
        } else {
            proto::Decision::Deny
        };
        let source = match d.source {
            PermissionSource::None => proto::PermissionSource::None,
            PermissionSource::InProcessCache => proto::PermissionSource::InProcessCache,
            PermissionSource::Computed => proto::PermissionSource::Computed,
        };
        proto::AuthorizeResponse {
            decision: decision as i32,
            reason: d.verdict.reason.to_owned(),
            message: d.verdict.message,
            decided_by: d.decided_by.name.to_owned(),
            decided_by_layer: u32::from(d.decided_by.position),
            permissions: d.permissions.names(),
            source: source as i32,
            decision_id: d.decision_id.to_string(),
        }
    }
}
