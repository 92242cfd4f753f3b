//! Layer 8: audit and security logging. It never decides; after every query
//! (whoever decided, batch items included, errors too) it hands one event
//! to the audit log's queue, which costs no I/O on the decision path.

use std::sync::Arc;

use crate::{
    audit::{AuditEvent, AuditLog},
    engine::layer::{Check, Context, Layer, LayerId, Outcome, Step},
    support::{clock::now_ms, telemetry},
};

pub struct Audit {
    log: Arc<AuditLog>,
}

impl Audit {
    pub fn new(log: Arc<AuditLog>) -> Self {
        Audit { log }
    }
}

impl Layer for Audit {
    fn id(&self) -> LayerId {
        LayerId {
            position: 8,
            name: "audit",
        }
    }

    fn check<'a>(&'a self, _ctx: &'a mut Context<'_>) -> Check<'a> {
        Check::Ready(Ok(Step::Pass))
    }

    fn after(&self, ctx: &Context<'_>, outcome: &Outcome<'_>) {
        let (id, kind, decision, layer, reason, message) = match outcome {
            Outcome::Decided(d) => (
                d.decision_id,
                "decision",
                if d.verdict.allow { "allow" } else { "deny" },
                d.decided_by.name,
                d.verdict.reason.into(),
                d.verdict.message.clone(),
            ),
            Outcome::Failed { layer, error } => (
                uuid::Uuid::now_v7(),
                "error",
                error.code_name(),
                layer.name,
                error.code_name().to_ascii_uppercase().into(),
                error.to_string(),
            ),
        };
        let request = ctx.request;
        self.log.record(AuditEvent {
            id,
            at_ms: now_ms(),
            kind: kind.into(),
            subject: ctx.query.subject.to_string(),
            action: ctx.query.action.as_str().into(),
            resource_type: ctx.query.resource.kind.as_str().into(),
            resource_id: ctx.query.resource.id.to_string(),
            decision: decision.into(),
            layer: layer.into(),
            reason,
            message,
            cache_tier: ctx.source.as_str().into(),
            latency_us: ctx.started.elapsed().as_micros() as i64,
            request_id: request.request_id.clone(),
            client_ip: request.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            session_id: request.session_id.clone(),
            flags: ctx.flags.join(","),
            trace_id: telemetry::current_trace_id().unwrap_or_default(),
            ..AuditEvent::default()
        });
    }
}
