//! Envoy `ext_authz` v3 (`envoy.service.auth.v3.Authorization/Check`) on the
//! gRPC port: an HTTP request becomes an authorization query through the
//! route table and goes through the same engine (layer stack and cache) as
//! `Authorize`. Every failure is an explicit deny in the response, never a
//! gRPC error, so a gateway with `failure_mode_allow` still fails closed.

pub mod routes;

use std::{net::IpAddr, sync::Arc, time::Instant};

use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    auth::Authenticator,
    engine::Engine,
    error::AuthzError,
    metrics::Metrics,
    model::{Consistency, Query, RequestFacts},
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

/// A deny with its HTTP status and why.
struct Deny {
    status: HttpStatusCode,
    reason: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl Deny {
    fn new(status: HttpStatusCode, reason: &'static str, message: impl Into<String>) -> Deny {
        Deny {
            status,
            reason,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn unauthenticated(error: &str, message: impl Into<String>) -> Deny {
        let mut deny = Deny::new(HttpStatusCode::Unauthorized, "UNAUTHENTICATED", message);
        let challenge = match error {
            "" => r#"Bearer realm="velro""#.to_owned(),
            e => format!(r#"Bearer realm="velro", error="{e}""#),
        };
        deny.headers.push(("www-authenticate", challenge));
        deny
    }

    fn from_error(error: &AuthzError) -> Deny {
        match error {
            AuthzError::InvalidArgument(m) => {
                Deny::new(HttpStatusCode::BadRequest, "BAD_REQUEST", m)
            }
            AuthzError::Unauthenticated(m) => Deny::unauthenticated("invalid_token", m),
            AuthzError::PermissionDenied(m) => Deny::new(HttpStatusCode::Forbidden, "FORBIDDEN", m),
            AuthzError::ResourceExhausted(m) => {
                let mut deny = Deny::new(HttpStatusCode::TooManyRequests, "RATE_LIMITED", m);
                deny.headers.push(("retry-after", "1".into()));
                deny
            }
            AuthzError::RateLimited {
                message,
                retry_after,
            } => {
                let mut deny = Deny::new(HttpStatusCode::TooManyRequests, "RATE_LIMITED", message);
                // Whole seconds, rounded up (RFC 9110).
                let seconds = retry_after.as_millis().div_ceil(1000).max(1);
                deny.headers.push(("retry-after", seconds.to_string()));
                deny
            }
            AuthzError::Unavailable(_)
            | AuthzError::DeadlineExceeded(_)
            | AuthzError::Internal(_) => {
                // Details stay in the server log; the client learns only that it may retry.
                tracing::warn!("ext_authz dependency failure: {error}");
                let mut deny = Deny::new(
                    HttpStatusCode::ServiceUnavailable,
                    "UNAVAILABLE",
                    "authorization is temporarily unavailable; retry shortly",
                );
                deny.headers.push(("retry-after", "1".into()));
                deny
            }
        }
    }
}

pub struct ExtAuthzService {
    engine: Arc<Engine>,
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
    ) -> Result<Self, AuthzError> {
        let table = RouteTable::new(&config.routes)
            .map_err(|e| AuthzError::invalid(format!("ext_authz: {e}")))?;
        Ok(ExtAuthzService {
            engine,
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
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| {
                Deny::new(
                    HttpStatusCode::BadRequest,
                    "BAD_REQUEST",
                    "the check carries no HTTP request",
                )
            })?;
        let segments = routes::normalise(&http.path).map_err(|e| {
            Deny::new(
                HttpStatusCode::BadRequest,
                "BAD_PATH",
                format!("the path is refused: {}", e.0),
            )
        })?;
        let target = match self.table.find(&http.method, &http.host, &segments) {
            Match::Found(target) => target,
            Match::BadId => {
                return Err(Deny::new(
                    HttpStatusCode::BadRequest,
                    "BAD_ID",
                    "the resource id in the path must be a UUID",
                ));
            }
            Match::NoRoute => {
                return match self.config.unmatched {
                    Unmatched::Allow => Ok((None, Uuid::now_v7())),
                    Unmatched::Deny => Err(Deny::new(
                        HttpStatusCode::Forbidden,
                        "NO_ROUTE",
                        "no authorization rule covers this request",
                    )),
                };
            }
        };
        let header = |name: &str| http.headers.get(name).map(String::as_str);
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
                Some(
                    self.auth
                        .verify(token)
                        .await
                        .map_err(|e| Deny::from_error(&e))?
                        .user_id,
                )
            }
        };
        let facts = RequestFacts {
            ip: self.client_ip(request),
            user_agent: header("user-agent")
                .unwrap_or_default()
                .chars()
                .take(1024)
                .collect(),
            session_id: String::new(),
            request_id: header("x-request-id")
                .unwrap_or_default()
                .chars()
                .take(128)
                .collect(),
            // Gateways present signed media URLs in a later step.
            signed_url: String::new(),
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
            Some(_) => Deny::new(HttpStatusCode::Forbidden, decision.verdict.reason, message),
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
                let code = deny.status as i32 as u16;
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(deny.status);
                denied.add_header("content-type", "application/json", None, false);
                for (name, value) in &deny.headers {
                    denied.add_header(*name, value.clone(), None, false);
                }
                let body = serde_json::json!({"reason": deny.reason, "message": deny.message});
                denied.set_body(body.to_string());
                let status = match code {
                    401 => Status::unauthenticated(deny.message.clone()),
                    503 => Status::unavailable(deny.message.clone()),
                    _ => Status::permission_denied(deny.message.clone()),
                };
                let mut response = CheckResponse::with_status(status);
                response.set_http_response(denied.build());
                (code, response)
            }
        }
    }
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
        let outcome = self.decide(request.get_ref()).await;
        let (code, response) = self.answer(outcome);
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
            assert_eq!(deny.status as i32, status, "{error:?}");
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
