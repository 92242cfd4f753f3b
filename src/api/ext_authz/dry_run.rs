//! ext_authz's dry run (as OPA-Envoy's `dry-run`): every check is allowed,
//! the answer it would have had goes upstream in a header and into the
//! audit log, so a gateway can be put behind the service before it enforces.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use uuid::Uuid;

use crate::{store::audit_event::AuditEvent, support::clock::now_ms};

/// The response header upstream sees: the would-be HTTP status and reason.
pub const HEADER: &str = "x-velro-authz-dry-run";

/// The header's value: `403 NOT_A_MEMBER`.
pub fn verdict(status: u16, reason: &str) -> String {
    format!("{status} {reason}")
}

/// The audit event of a check let through only because of the dry run.
pub fn event(status: u16, reason: &str, message: &str, request: &CheckRequest) -> AuditEvent {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    AuditEvent {
        id: Uuid::now_v7(),
        at_ms: now_ms(),
        kind: "ext_authz_dry_run".into(),
        action: http.map(|h| h.method.clone()).unwrap_or_default().into(),
        resource_type: "http".into(),
        resource_id: http.map(|h| h.path.clone()).unwrap_or_default(),
        decision: "allow".into(),
        layer: "ext_authz".into(),
        reason: reason.to_owned().into(),
        message: format!("dry run: would have answered {status}: {message}"),
        request_id: http.map(|h| h.id.clone()).unwrap_or_default(),
        flags: "dry_run".into(),
        ..AuditEvent::default()
    }
}
