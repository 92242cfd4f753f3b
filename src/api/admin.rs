//! Kill switches and audit queries, shared by the admin RPCs and the CLI.
//! Every change of a switch is itself an audit event (kind `admin`).

use uuid::Uuid;

use crate::{
    api::validate,
    audit::{AuditEvent, AuditFilter},
    error::AuthzError,
    layers::emergency::switches::SwitchScope,
    proto,
    store::{Store, control::KillSwitch},
    support::clock::now_ms,
};

/// Longest kill-switch reason.
const MAX_REASON_BYTES: usize = 1024;

/// Most events one query returns.
pub const MAX_AUDIT_LIMIT: u32 = 1_000;

/// Sets a switch; returns the audit event that records it.
pub async fn set_switch(
    store: &dyn Store,
    scope: &str,
    reason: &str,
    set_by: &str,
) -> Result<AuditEvent, AuthzError> {
    validate::text("reason", reason, MAX_REASON_BYTES)?;
    validate::text("set_by", set_by, validate::MAX_ID_BYTES)?;
    let (column, target) = SwitchScope::parse(scope)?.columns();
    store
        .set_kill_switch(&KillSwitch {
            scope: column.to_owned(),
            target,
            reason: reason.to_owned(),
            set_by: set_by.to_owned(),
            set_at_ms: now_ms(),
        })
        .await?;
    tracing::warn!(scope, reason, set_by, "kill switch set");
    Ok(admin_event("kill_switch_set", scope, set_by, reason))
}

/// Lifts a switch; the event, or `None` when it was not set.
pub async fn clear_switch(
    store: &dyn Store,
    scope: &str,
    set_by: &str,
) -> Result<Option<AuditEvent>, AuthzError> {
    validate::text("set_by", set_by, validate::MAX_ID_BYTES)?;
    let (column, target) = SwitchScope::parse(scope)?.columns();
    if !store.clear_kill_switch(column, &target).await? {
        return Ok(None);
    }
    tracing::warn!(scope, set_by, "kill switch lifted");
    Ok(Some(admin_event("kill_switch_cleared", scope, set_by, "")))
}

/// An administrative action as an audit event.
pub fn admin_event(verb: &str, target: &str, by: &str, reason: &str) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at_ms: now_ms(),
        kind: "admin".into(),
        subject: by.to_owned(),
        resource_type: "admin".into(),
        resource_id: target.to_owned(),
        decision: verb.to_owned().into(),
        layer: "emergency".into(),
        reason: verb.to_ascii_uppercase().into(),
        message: reason.to_owned(),
        ..AuditEvent::default()
    }
}

/// The switches stored (what every replica enforces once it has read them).
pub async fn list_switches(store: &dyn Store) -> Result<Vec<proto::KillSwitch>, AuthzError> {
    Ok(store
        .kill_switches()
        .await?
        .into_iter()
        .map(|s| proto::KillSwitch {
            scope: match s.scope.as_str() {
                "global" => "global".to_owned(),
                other => format!("{other}:{}", s.target),
            },
            reason: s.reason,
            set_by: s.set_by,
            set_at_ms: s.set_at_ms,
        })
        .collect())
}

/// What a query asks for: a subject or a resource (required), since when,
/// how many (100 by default, at most `MAX_AUDIT_LIMIT`).
pub fn audit_filter(req: &proto::QueryAuditRequest) -> Result<AuditFilter, AuthzError> {
    let mut filter = AuditFilter {
        since_ms: req.since_ms,
        limit: i64::from(match req.limit {
            0 => 100,
            n => n.min(MAX_AUDIT_LIMIT),
        }),
        ..AuditFilter::default()
    };
    match &req.target {
        Some(proto::query_audit_request::Target::Subject(s)) if !s.is_empty() => {
            filter.subject = Some(validate::text("subject", s, validate::MAX_ID_BYTES)?.to_owned());
        }
        Some(proto::query_audit_request::Target::Resource(r)) if !r.id.is_empty() => {
            let kind = validate::text("resource.type", &r.r#type, validate::MAX_ID_BYTES)?;
            let id = validate::text("resource.id", &r.id, validate::MAX_ID_BYTES)?;
            filter.resource = Some((kind.to_owned(), id.to_owned()));
        }
        _ => {
            return Err(AuthzError::invalid(
                "give subject (a user id or ip:<address>) or resource {type, id}",
            ));
        }
    }
    Ok(filter)
}

/// Recent events of a subject or a resource, newest first.
pub async fn query_audit(
    store: &dyn Store,
    req: &proto::QueryAuditRequest,
) -> Result<Vec<proto::AuditEvent>, AuthzError> {
    let filter = audit_filter(req)?;
    Ok(store
        .audit_events(&filter)
        .await?
        .into_iter()
        .map(|e| proto::AuditEvent {
            id: e.id.to_string(),
            at_ms: e.at_ms,
            kind: e.kind.into_owned(),
            subject: e.subject,
            action: e.action.into_owned(),
            resource: Some(proto::Resource {
                r#type: e.resource_type.into_owned(),
                id: e.resource_id,
            }),
            decision: e.decision.into_owned(),
            layer: e.layer.into_owned(),
            reason: e.reason.into_owned(),
            message: e.message,
            cache_tier: e.cache_tier.into_owned(),
            latency_us: e.latency_us,
            request_id: e.request_id,
            client_ip: e.client_ip,
            session_id: e.session_id,
            flags: e.flags,
            user_agent: e.user_agent,
            trace_id: e.trace_id,
        })
        .collect())
}
