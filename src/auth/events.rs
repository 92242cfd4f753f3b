//! Security events: every login (succeeded, failed, throttled, shed,
//! refused), every refresh (and a reused refresh token with the session it
//! revoked) and every bearer token refused, as audit events of kind `auth`
//! (queryable like decisions, and in the JSON lines a SIEM reads).

use std::sync::Arc;

use uuid::Uuid;

use super::Client;
use crate::{
    audit::{AuditEvent, AuditLog},
    error::AuthzError,
    support::clock::now_ms,
};

/// Where security events go; nowhere in tools that run without the log.
#[derive(Clone, Default)]
pub struct SecurityEvents(Option<Arc<AuditLog>>);

/// One event: what happened (`login_succeeded`, …), why, to whom.
pub struct Event<'a> {
    pub decision: &'static str,
    pub reason: String,
    /// A user id, or the email as given when no user is known.
    pub subject: String,
    pub session: Option<Uuid>,
    pub message: String,
    pub client: &'a Client,
}

/// The event name of a failed login, by the error it got.
pub fn login_failure(error: &AuthzError) -> &'static str {
    match error {
        AuthzError::Unauthenticated(_) => "login_failed",
        AuthzError::PermissionDenied(_) => "login_disabled",
        AuthzError::ResourceExhausted(_) | AuthzError::RateLimited { .. } => "login_throttled",
        AuthzError::Overloaded { .. } => "login_shed",
        AuthzError::InvalidArgument(_) => "login_invalid",
        _ => "login_error",
    }
}

impl SecurityEvents {
    pub fn new(audit: Option<Arc<AuditLog>>) -> Self {
        SecurityEvents(audit)
    }

    pub fn record(&self, action: &'static str, event: Event<'_>) {
        let Some(audit) = &self.0 else {
            return;
        };
        let session = event.session.map(|s| s.to_string()).unwrap_or_default();
        audit.record(AuditEvent {
            id: Uuid::now_v7(),
            at_ms: now_ms(),
            kind: "auth".into(),
            subject: event.subject,
            action: action.into(),
            resource_type: "session".into(),
            resource_id: session.clone(),
            decision: event.decision.into(),
            layer: "auth".into(),
            reason: event.reason.into(),
            message: event.message,
            client_ip: event.client.ip.clone(),
            session_id: session,
            user_agent: event.client.user_agent.clone(),
            ..AuditEvent::default()
        });
    }
}
