//! The audit record as stored in `audit_log` (both dialects): what layer 8,
//! the admin RPCs and the CLI write and read back.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Text that is usually a constant (`"decision"`, `"allow"`, a layer or
/// reason name): borrowed on the decision path, owned when read back.
pub type Text = std::borrow::Cow<'static, str>;

/// One audit record: a decision, an error instead of a decision, a security
/// alert or an administrative action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The decision id for decisions; a fresh UUIDv7 otherwise.
    pub id: Uuid,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `decision`, `error`, `alert` or `admin`.
    pub kind: Text,
    pub subject: String,
    pub action: Text,
    pub resource_type: Text,
    pub resource_id: String,
    /// `allow`, `deny`, an error code name, or the alert/admin verb.
    pub decision: Text,
    pub layer: Text,
    pub reason: Text,
    pub message: String,
    /// Where the permission set came from (`in_process`, `redis`, …).
    pub cache_tier: Text,
    pub latency_us: i64,
    pub request_id: String,
    pub client_ip: String,
    pub session_id: String,
    /// Flags raised by guards, comma-separated.
    pub flags: String,
    /// The client's user agent (security events).
    #[serde(default)]
    pub user_agent: String,
    /// The W3C trace id of the request, when it was traced.
    #[serde(default)]
    pub trace_id: String,
}

/// Which events a query wants.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    /// (type, id)
    pub resource: Option<(String, String)>,
    pub since_ms: i64,
    pub limit: i64,
}

/// Columns of `audit_log`, in insert and select order.
pub(crate) const AUDIT_COLUMNS: &str = "id, at_ms, kind, subject, action, resource_type, resource_id, \
     decision, layer, reason, message, cache_tier, latency_us, request_id, client_ip, \
     session_id, flags, user_agent, trace_id";

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: String,
    at_ms: i64,
    kind: String,
    subject: String,
    action: String,
    resource_type: String,
    resource_id: String,
    decision: String,
    layer: String,
    reason: String,
    message: String,
    cache_tier: String,
    latency_us: i64,
    request_id: String,
    client_ip: String,
    session_id: String,
    flags: String,
    user_agent: String,
    trace_id: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::parse_str(&r.id).unwrap_or_default(),
            at_ms: r.at_ms,
            kind: r.kind.into(),
            subject: r.subject,
            action: r.action.into(),
            resource_type: r.resource_type.into(),
            resource_id: r.resource_id,
            decision: r.decision.into(),
            layer: r.layer.into(),
            reason: r.reason.into(),
            message: r.message,
            cache_tier: r.cache_tier.into(),
            latency_us: r.latency_us,
            request_id: r.request_id,
            client_ip: r.client_ip,
            session_id: r.session_id,
            flags: r.flags,
            user_agent: r.user_agent,
            trace_id: r.trace_id,
        }
    }
}
