//! Thin gRPC handlers: validate, ask the engine, translate the answer.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use crate::{
    api::{
        admin, authenticate,
        status::wire_status,
        transport::{callers::Caller, connections::ConnInfo, pushback::Pushback},
        validate,
    },
    audit::AuditLog,
    auth::Authenticator,
    engine::{Decision, Engine, layer::Obligation, permissions::PermissionSource},
    error::AuthzError,
    proto::{self, authorization_service_server::AuthorizationService},
    store::Store,
    support::metrics::Metrics,
};

pub struct AuthzService {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    max_batch_items: usize,
    admin_token: Option<String>,
    audit: Arc<AuditLog>,
    /// Admin RPCs use a pool of their own.
    admin_store: Arc<dyn Store>,
    /// An Authenticate refusal with a retry time (a shed login), asked
    /// again too early on its connection, is answered at that time.
    pushback: Pushback,
}

impl AuthzService {
    pub fn new(
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        max_batch_items: usize,
        admin_token: Option<String>,
        audit: Arc<AuditLog>,
        admin_store: Arc<dyn Store>,
    ) -> Self {
        let pushback = Pushback::new(
            auth.hashing().max_wait(),
            metrics.transport.early_retries_held.clone(),
        );
        AuthzService {
            pushback,
            engine,
            auth,
            metrics,
            max_batch_items,
            admin_token,
            audit,
            admin_store,
        }
    }

    /// Admits an admin RPC (`verb` names it in the audit log); a refusal is
    /// an audit event too.
    fn admin_check<T>(&self, request: &Request<T>, verb: &'static str) -> Result<(), AuthzError> {
        // A caller the [[callers]] table lets call this RPC (an operator's
        // certificate or key) needs no admin token.
        if request.extensions().get::<Caller>().is_some() {
            return Ok(());
        }
        let presented = request
            .metadata()
            .get("x-velro-admin-token")
            .and_then(|v| v.to_str().ok());
        let checked = authenticate::admin_check(self.admin_token.as_deref(), presented);
        if let Err(e) = &checked {
            self.audit.record(admin::admin_event(
                "admin_refused",
                verb,
                "admin_rpc",
                &e.to_string(),
            ));
        }
        checked
    }

    /// Counts the call and turns the result into the gRPC answer.
    fn answer<T>(
        &self,
        rpc: &'static str,
        started: Instant,
        result: Result<T, AuthzError>,
    ) -> Result<Response<T>, Status> {
        let outcome = result.as_ref().map_or_else(|e| e.code_name(), |_| "ok");
        self.metrics.record_rpc(rpc, outcome, started.elapsed());
        Ok(Response::new(result?))
    }

    async fn switches(&self, changed: bool) -> Result<proto::KillSwitchesResponse, AuthzError> {
        Ok(proto::KillSwitchesResponse {
            switches: admin::list_switches(self.admin_store.as_ref()).await?,
            changed,
        })
    }

    async fn authorize_request(
        &self,
        req: &proto::AuthorizeRequest,
    ) -> Result<Decision, AuthzError> {
        let mut request = validate::context(req.context.as_ref())?;
        let client = authenticate::client_of(&request);
        let (user_id, token_session) =
            authenticate::subject(&self.auth, "", &req.user_id, &req.subject_token, &client)
                .await?;
        let query = validate::query("", &user_id, &req.action, req.resource.as_ref())?;
        let consistency = validate::consistency(req.consistency, req.at_least_revision)?;
        if let (true, Some(session)) = (request.session_id.is_empty(), token_session) {
            // The token's own session is checked by the security context layer.
            request.session_id = session.to_string();
        }
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
        let consistency = validate::consistency(req.consistency, req.at_least_revision)?;
        let request = validate::context(req.context.as_ref())?;
        let client = authenticate::client_of(&request);
        let mut items = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.iter().enumerate() {
            let prefix = format!("items[{i}].");
            let subject = authenticate::subject(
                &self.auth,
                &prefix,
                &item.user_id,
                &item.subject_token,
                &client,
            )
            .await;
            items.push(subject.and_then(|(user_id, _)| {
                validate::query(&prefix, &user_id, &item.action, item.resource.as_ref())
            }));
        }
        let decisions = self.engine.decide_batch(items, consistency, &request).await;
        Ok(decisions
            .into_iter()
            .map(|outcome| proto::BatchResult {
                outcome: Some(match outcome {
                    Ok(decision) => proto::batch_result::Outcome::Response(decision.into()),
                    Err(error) => proto::batch_result::Outcome::Error(proto::ItemError {
                        code: wire_status(&error).grpc as i32,
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
            Err(e) => e.code_name(),
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
            Err(e) => e.code_name(),
        };
        self.metrics
            .record_rpc("BatchAuthorize", outcome, started.elapsed());
        Ok(Response::new(proto::BatchAuthorizeResponse {
            results: result?,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<proto::AuthenticateRequest>,
    ) -> Result<Response<proto::AuthenticateResponse>, Status> {
        let started = Instant::now();
        let result = authenticate::authenticate(&self.auth, request.get_ref()).await;
        let conn = request.extensions().get::<ConnInfo>();
        let result = self
            .pushback
            .answer(
                conn.map(|c| &c.state.retry),
                tokio::time::Instant::from_std(started),
                result,
            )
            .await;
        self.answer("Authenticate", started, result)
    }

    async fn get_revision(
        &self,
        _request: Request<proto::GetRevisionRequest>,
    ) -> Result<Response<proto::GetRevisionResponse>, Status> {
        let started = Instant::now();
        let result = self.admin_store.as_ref().current_revision().await;
        let result = result.map(|revision| proto::GetRevisionResponse { revision });
        self.answer("GetRevision", started, result)
    }

    async fn revoke_sessions(
        &self,
        request: Request<proto::RevokeSessionsRequest>,
    ) -> Result<Response<proto::RevokeSessionsResponse>, Status> {
        let started = Instant::now();
        let result = match self.admin_check(&request, "RevokeSessions") {
            Ok(()) => authenticate::revoke_sessions(&self.auth, request.get_ref()).await,
            Err(refused) => Err(refused),
        };
        if let Ok(done) = &result {
            let target = format!("{:?}", request.get_ref().target);
            let message = format!("{} session(s) revoked", done.revoked);
            self.audit.record(admin::admin_event(
                "sessions_revoked",
                &target,
                "admin_rpc",
                &message,
            ));
        }
        self.answer("RevokeSessions", started, result)
    }

    async fn set_kill_switch(
        &self,
        request: Request<proto::SetKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.admin_check(&request, "SetKillSwitch")?;
            let r = request.get_ref();
            let event =
                admin::set_switch(self.admin_store.as_ref(), &r.scope, &r.reason, &r.set_by)
                    .await?;
            self.audit.record(event);
            self.switches(true).await
        }
        .await;
        self.answer("SetKillSwitch", started, result)
    }

    async fn clear_kill_switch(
        &self,
        request: Request<proto::ClearKillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.admin_check(&request, "ClearKillSwitch")?;
            let r = request.get_ref();
            let event = admin::clear_switch(self.admin_store.as_ref(), &r.scope, &r.set_by).await?;
            let changed = event.is_some();
            if let Some(event) = event {
                self.audit.record(event);
            }
            self.switches(changed).await
        }
        .await;
        self.answer("ClearKillSwitch", started, result)
    }

    async fn list_kill_switches(
        &self,
        request: Request<proto::ListKillSwitchesRequest>,
    ) -> Result<Response<proto::KillSwitchesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.admin_check(&request, "ListKillSwitches")?;
            self.audit.record(admin::admin_event(
                "kill_switches_listed",
                "kill_switches",
                "admin_rpc",
                "",
            ));
            self.switches(false).await
        }
        .await;
        self.answer("ListKillSwitches", started, result)
    }

    async fn query_audit(
        &self,
        request: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<proto::QueryAuditResponse>, Status> {
        let started = Instant::now();
        let result = async {
            self.admin_check(&request, "QueryAudit")?;
            let events = admin::query_audit(self.admin_store.as_ref(), request.get_ref()).await?;
            let target = format!("{:?}", request.get_ref().target);
            self.audit.record(admin::admin_event(
                "audit_queried",
                &target,
                "admin_rpc",
                &format!("{} events returned", events.len()),
            ));
            Ok(proto::QueryAuditResponse { events })
        }
        .await;
        self.answer("QueryAudit", started, result)
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
            PermissionSource::RedisCache => proto::PermissionSource::RedisCache,
            PermissionSource::DatabaseCache => proto::PermissionSource::DatabaseCache,
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
            // One obligation kind exists: a signed media URL.
            signed_url: d.obligations.into_iter().next().map(|o| match o {
                Obligation::SignedMediaUrl {
                    url,
                    expires_at,
                    key_id,
                } => proto::SignedMediaUrl {
                    url,
                    expires_at,
                    key_id,
                },
            }),
            flags: d.flags.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}
