//! Envoy `ext_authz` v3 (`envoy.service.auth.v3.Authorization/Check`) on the
//! gRPC port: an HTTP request becomes an authorization query through the
//! route table and goes through the same engine (layer stack and cache) as
//! `Authorize`. Every failure is an explicit deny in the response, never a
//! gRPC error, so a gateway with `failure_mode_allow` still fails closed.

mod dry_run;
pub mod routes;

use std::{net::IpAddr, sync::Arc, time::Instant};

use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    api::{
        authenticate::client_of,
        status::{WireStatus, retry_after_seconds, wire_status},
        transport::{admission::Admission, callers::CallerRefused},
        validate,
    },
    audit::AuditLog,
    auth::Authenticator,
    engine::Engine,
    error::AuthzError,
    model::{Consistency, Query, RequestFacts},
    support::metrics::{Metrics, ShadowLabels},
    support::telemetry,
};
use routes::{Match, Route, RouteTable};

/// What happens to a request no route matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    Deny,
    Allow,
}

/// The `[ext_authz]` TOML section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtAuthzConfig {
    /// Unmatched routes: `deny` (default) or `allow`.
    pub unmatched: Unmatched,
    /// Trusted proxies in front of Envoy: the client IP is that many hops
    /// from the right of `x-forwarded-for` (0: the connection's source address).
    pub trusted_hops: usize,
    /// Header carrying the verified user id upstream.
    pub user_header: String,
    /// Header carrying the decision id upstream.
    pub decision_header: String,
    pub routes: Vec<Route>,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        ExtAuthzConfig {
            unmatched: Unmatched::Deny,
            trusted_hops: 0,
            user_header: "x-velro-user-id".into(),
            decision_header: "x-velro-decision-id".into(),
            routes: routes::default_routes(),
        }
    }
}

/// A deny: its wire status (from the one table), the reason in its body,
/// the message and extra headers.
struct Deny {
    wire: WireStatus,
    reason: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl Deny {
    /// A deny for `error` under a reason of its own (`BAD_PATH`, a
    /// decision's reason, …).
    fn because(reason: &'static str, error: AuthzError) -> Deny {
        let mut deny = Deny::from_error(&error);
        deny.reason = reason;
        deny
    }

    /// A 401 with a bearer challenge naming the problem (RFC 6750).
    fn unauthenticated(error: &str, message: impl Into<String>) -> Deny {
        let mut deny = Deny::plain(&AuthzError::unauthenticated(message));
        let challenge = match error {
            "" => r#"Bearer realm="velro""#.to_owned(),
            e => format!(r#"Bearer realm="velro", error="{e}""#),
        };
        deny.headers.push(("www-authenticate", challenge));
        deny
    }

    fn from_error(error: &AuthzError) -> Deny {
        match error {
            AuthzError::Unauthenticated(m) => Deny::unauthenticated("invalid_token", m.as_str()),
            _ => Deny::plain(error),
        }
    }

    /// The table's answer for `error`, with `retry-after` when it has one.
    fn plain(error: &AuthzError) -> Deny {
        let wire = wire_status(error);
        let message = if wire.detail_shown {
            error.to_string()
        } else {
            // Details stay in the server log; the client learns only that it may retry.
            tracing::warn!("ext_authz dependency failure: {error}");
            "authorization is temporarily unavailable; retry shortly".to_owned()
        };
        let mut deny = Deny {
            wire,
            reason: wire.http_reason,
            message,
            headers: Vec::new(),
        };
        if let Some(after) = wire.retry_after {
            deny.headers
                .push(("retry-after", retry_after_seconds(after)));
        }
        deny
    }

    fn http_status(&self) -> HttpStatusCode {
        HttpStatusCode::try_from(i32::from(self.wire.http.as_u16()))
            .unwrap_or(HttpStatusCode::ServiceUnavailable)
    }
}

pub struct ExtAuthzService {
    engine: Arc<Engine>,
    /// Where dry-run allows are recorded.
    audit: Arc<AuditLog>,
    admission: Arc<Admission>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    table: RouteTable,
    config: ExtAuthzConfig,
}

impl ExtAuthzService {
    pub fn new(
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        config: ExtAuthzConfig,
        admission: Arc<Admission>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, AuthzError> {
        let table = RouteTable::new(&config.routes)
            .map_err(|e| AuthzError::invalid(format!("ext_authz: {e}")))?;
        Ok(ExtAuthzService {
            engine,
            audit,
            admission,
            auth,
            metrics,
            table,
            config,
        })
    }

    /// The client address: the source peer, or a trusted hop of x-forwarded-for.
    fn client_ip(&self, request: &CheckRequest) -> Option<IpAddr> {
        if self.config.trusted_hops > 0 {
            let forwarded = request.get_client_headers()?.get("x-forwarded-for")?;
            let hops: Vec<&str> = forwarded.split(',').map(str::trim).collect();
            let index = hops.len().checked_sub(self.config.trusted_hops)?;
            return hops.get(index)?.parse().ok();
        }
        request.get_client_address()?.parse().ok()
    }

    async fn decide(&self, request: &CheckRequest) -> Result<(Option<Uuid>, Uuid), Deny> {
        // Shed like any request beyond capacity, but as an explicit deny.
        let _admitted = self.admission.admit().map_err(|e| Deny::from_error(&e))?;
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| {
                Deny::from_error(&AuthzError::invalid("the check carries no HTTP request"))
            })?;
        let segments = routes::normalise(&http.path).map_err(|e| {
            Deny::because(
                "BAD_PATH",
                AuthzError::invalid(format!("the path is refused: {}", e.0)),
            )
        })?;
        let target = match self.table.find(&http.method, &http.host, &segments) {
            Match::Found(target) => target,
            Match::BadId => {
                return Err(Deny::because(
                    "BAD_ID",
                    AuthzError::invalid("the resource id in the path must be a UUID"),
                ));
            }
            Match::NoRoute => {
                return match self.config.unmatched {
                    Unmatched::Allow => Ok((None, Uuid::now_v7())),
                    Unmatched::Deny => Err(Deny::because(
                        "NO_ROUTE",
                        AuthzError::PermissionDenied(
                            "no authorization rule covers this request".into(),
                        ),
                    )),
                };
            }
        };
        let header = |name: &str| http.headers.get(name).map(String::as_str);
        // Headers that reach the audit log are checked like any stored text.
        let stored = |name: &str, max: usize| {
            let value = header(name).unwrap_or_default();
            validate::text(name, value, max)
                .map(str::to_owned)
                .map_err(|e| Deny::because("BAD_HEADER", e))
        };
        let facts = RequestFacts {
            ip: self.client_ip(request),
            user_agent: stored("user-agent", 1024)?,
            session_id: String::new(),
            request_id: stored("x-request-id", validate::MAX_ID_BYTES)?,
            // Gateways present signed media URLs in a later step.
            signed_url: String::new(),
        };
        let subject = match header("authorization") {
            None => None,
            Some(value) => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        Deny::unauthenticated(
                            "invalid_request",
                            "the Authorization header must be `Bearer <token>`",
                        )
                    })?;
                let client = client_of(&facts);
                Some(
                    self.auth
                        .verify_presented(token, &client)
                        .await
                        .map_err(|e| Deny::from_error(&e))?
                        .user_id,
                )
            }
        };
        let query = Query {
            // No credentials: decided as an anonymous subject (public read only).
            subject: subject.unwrap_or(Uuid::nil()),
            action: target.action,
            resource: target.resource,
        };
        let decision = self
            .engine
            .decide(query, Consistency::MinimizeLatency, &facts)
            .await
            .map_err(|e| Deny::from_error(&e))?;
        if decision.verdict.allow {
            return Ok((subject, decision.decision_id));
        }
        let message = decision.verdict.message;
        Err(match subject {
            None => Deny::unauthenticated("", format!("log in to do this: {message}")),
            Some(_) => Deny::because(
                decision.verdict.reason,
                AuthzError::PermissionDenied(message),
            ),
        })
    }

    fn answer(&self, outcome: Result<(Option<Uuid>, Uuid), Deny>) -> (u16, CheckResponse) {
        match outcome {
            Ok((user, decision_id)) => {
                let mut ok = OkHttpResponseBuilder::new();
                let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
                // Incoming copies are removed so a client cannot forge them.
                ok.remove_header(&self.config.user_header)
                    .remove_header(&self.config.decision_header)
                    .add_header(
                        &self.config.decision_header,
                        decision_id.to_string(),
                        overwrite,
                        false,
                    );
                if let Some(user) = user {
                    ok.add_header(&self.config.user_header, user.to_string(), overwrite, false);
                }
                let mut response = CheckResponse::with_status(Status::ok("allowed"));
                response.set_http_response(ok.build());
                (200, response)
            }
            Err(deny) => {
                let code = deny.wire.http.as_u16();
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(deny.http_status());
                denied.add_header("content-type", "application/json", None, false);
                for (name, value) in &deny.headers {
                    denied.add_header(*name, value.clone(), None, false);
                }
                let body = serde_json::json!({"reason": deny.reason, "message": deny.message});
                denied.set_body(body.to_string());
                let status = Status::new(deny.wire.grpc, deny.message.clone());
                let mut response = CheckResponse::with_status(status);
                response.set_http_response(denied.build());
                (code, response)
            }
        }
    }
}

impl ExtAuthzService {
    /// Allows what would have been denied, saying so upstream, in the audit
    /// log and in `velro_authz_shadow_denials_total{layer="ext_authz"}`.
    fn dry_run(&self, deny: Deny, request: &CheckRequest) -> (u16, CheckResponse) {
        let status = deny.wire.http.as_u16();
        self.audit
            .record(dry_run::event(status, deny.reason, &deny.message, request));
        self.metrics
            .ops
            .shadow_denials
            .get_or_create(&ShadowLabels {
                layer: "ext_authz",
                reason: deny.reason,
            })
            .inc();
        let mut ok = OkHttpResponseBuilder::new();
        ok.remove_header(&self.config.user_header)
            .remove_header(&self.config.decision_header)
            .add_header(
                dry_run::HEADER,
                dry_run::verdict(status, deny.reason),
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        let mut response = CheckResponse::with_status(Status::ok("allowed (dry run)"));
        response.set_http_response(ok.build());
        (200, response)
    }
}

/// The check's span: Envoy's trace continues from the `traceparent` of
/// the HTTP request it asks about.
fn check_span(request: &CheckRequest) -> tracing::Span {
    let span = tracing::debug_span!("ext_authz.check", otel.kind = "server");
    if telemetry::enabled()
        && let Some(http) = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
    {
        let parent = telemetry::remote_parent(|key| http.headers.get(key).map(String::as_str));
        use opentelemetry::trace::TraceContextExt;
        if parent.span().span_context().is_valid() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(parent);
        }
    }
    span
}

fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        429 => "429",
        503 => "503",
        _ => "other",
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let (code, response) = match request.extensions().get::<CallerRefused>() {
            // A caller not allowed to ask is refused, dry run or not.
            Some(CallerRefused(refused)) => self.answer(Err(Deny::from_error(refused))),
            None => match self
                .decide(request.get_ref())
                .instrument(check_span(request.get_ref()))
                .await
            {
                Err(deny) if self.engine.rollout().ext_authz_dry_run() => {
                    self.dry_run(deny, request.get_ref())
                }
                outcome => self.answer(outcome),
            },
        };
        self.metrics
            .record_rpc("ext_authz.Check", status_label(code), started.elapsed());
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_becomes_an_explicit_deny_status() {
        let cases = [
            (AuthzError::invalid("x"), 400, None),
            (
                AuthzError::unauthenticated("x"),
                401,
                Some("www-authenticate"),
            ),
            (AuthzError::PermissionDenied("x".into()), 403, None),
            (
                AuthzError::ResourceExhausted("x".into()),
                429,
                Some("retry-after"),
            ),
            (
                AuthzError::Unavailable("db down".into()),
                503,
                Some("retry-after"),
            ),
            (
                AuthzError::DeadlineExceeded("slow".into()),
                503,
                Some("retry-after"),
            ),
            (AuthzError::Internal("bug".into()), 503, Some("retry-after")),
        ];
        for (error, status, header) in cases {
            let deny = Deny::from_error(&error);
            assert_eq!(deny.http_status() as i32, status, "{error:?}");
            if let Some(header) = header {
                assert!(deny.headers.iter().any(|(h, _)| *h == header), "{error:?}");
            }
            assert!(
                !deny.message.contains("db down"),
                "no internals leak to clients"
            );
        }
    }
}
