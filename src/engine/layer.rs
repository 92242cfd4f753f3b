//! The one small trait every authorization layer implements.
//!
//! A layer sees the request context and answers allow, deny or pass. Guard
//! layers (rate limits, security context) decide before any permission set is
//! needed; the cache layer makes the subject's permission set available; the
//! relationship layers say what they grant from the stored facts, and allow
//! when the action was granted by them.

use crate::{
    engine::{
        permissions::{PermissionSet, PermissionSource},
        resolver::Resolver,
    },
    error::AuthzError,
    model::{Consistency, Permissions, Query, RequestFacts},
    store::Facts,
    support::futures::BoxFuture,
};

/// A layer's identity: its position in the finished ten-layer design, and
/// its name as reported in `decided_by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerId {
    pub position: u8,
    pub name: &'static str,
}

/// Reported when no layer granted the action.
pub const DEFAULT_DENY: LayerId = LayerId {
    position: 0,
    name: "default_deny",
};

/// A layer's final word on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// Machine-readable, UPPER_SNAKE_CASE.
    pub reason: &'static str,
    pub message: String,
}

/// What a layer answers: decide now, or let the next layer look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Pass,
    Decide(Verdict),
}

/// A layer's answer, ready now for synchronous layers (no allocation on the
/// hot path) or later for layers that wait on I/O.
pub enum Check<'a> {
    Ready(Result<Step, AuthzError>),
    Later(BoxFuture<'a, Result<Step, AuthzError>>),
}

/// Something the caller must do with an allow (XACML's and Cedar's
/// obligations): attached by a layer after the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obligation {
    /// Fetch the media object through this signed URL.
    SignedMediaUrl {
        url: String,
        expires_at: i64,
        key_id: String,
    },
}

/// Everything a layer may look at while one query is evaluated.
pub struct Context<'a> {
    pub query: Query,
    pub consistency: Consistency,
    pub request: &'a RequestFacts,
    /// Computes permission sets on a cache miss.
    pub resolver: &'a Resolver,
    /// Shares permission sets between the items of one batch.
    pub batch: Option<&'a crate::engine::batch::BatchMemo>,
    /// Set by the cache layer; read by the relationship layers.
    pub permissions: Option<PermissionSet>,
    pub source: PermissionSource,
    /// Raised by guards that let a request through but want it noticed
    /// (reported with the decision and audited).
    pub flags: Vec<&'static str>,
    /// When the engine started on this query (audit latency).
    pub started: std::time::Instant,
}

/// How a query ended, shown to every layer afterwards (audit, anomaly
/// baselines).
pub enum Outcome<'a> {
    Decided(&'a crate::engine::Decision),
    /// A layer failed (store down, rate limited, deadline): no decision.
    Failed {
        layer: LayerId,
        error: &'a AuthzError,
    },
}

pub trait Layer: Send + Sync {
    fn id(&self) -> LayerId;

    /// What this layer grants, from the stored relationship facts. Pure: it
    /// runs on a cache miss, and its result is what the cache holds.
    fn grants(&self, _facts: &Facts) -> Permissions {
        Permissions::NONE
    }

    /// The reason code an allow granted by this layer carries.
    fn grant_reason(&self) -> &'static str {
        "GRANTED"
    }

    /// The layer's answer for one query. By default a relationship layer
    /// allows exactly when the permission set says it granted the action.
    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        self.grant_check(ctx)
    }

    /// What the layer asks of the caller when the request was allowed (by
    /// any layer). Runs once per allow; most layers ask nothing.
    fn obligation(&self, _ctx: &Context<'_>) -> Option<Obligation> {
        None
    }

    /// Sees how every query ended, whoever decided (audit, baselines).
    /// Must not block: it runs on the decision path.
    fn after(&self, _ctx: &Context<'_>, _outcome: &Outcome<'_>) {}

    /// The relationship check: allow when this layer granted the action.
    fn grant_check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        let me = self.id();
        let step = match &ctx.permissions {
            Some(set) if set.granted_by(ctx.query.action) == Some(me) => Step::Decide(Verdict {
                allow: true,
                reason: set.grant_reason(ctx.query.action),
                message: format!(
                    "{} may {} {}: granted by the {} layer",
                    ctx.query.subject, ctx.query.action, ctx.query.resource, me.name
                ),
            }),
            _ => Step::Pass,
        };
        Check::Ready(Ok(step))
    }
}
