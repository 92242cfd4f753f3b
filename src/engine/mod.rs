//! The decision engine: runs the ordered layer stack for each query and
//! records which layer decided and why.

pub mod batch;
pub mod layer;
pub mod permissions;
pub mod replica;
pub mod resolver;
pub mod rollout;

use std::sync::Arc;

use futures::StreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    error::AuthzError,
    model::{Consistency, Permissions, Query, RequestFacts},
    store::Store,
    support::metrics::{Metrics, ShadowLabels},
};
use batch::BatchMemo;
use layer::{Check, Context, DEFAULT_DENY, Layer, LayerId, Obligation, Outcome, Step, Verdict};
use permissions::{Absence, PermissionSource};
use resolver::Resolver;
use rollout::Rollout;

/// The outcome of one query, with its explanation.
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub decided_by: LayerId,
    pub permissions: Permissions,
    pub source: PermissionSource,
    pub decision_id: Uuid,
    /// Raised by guards that let the request through (e.g. a session seen
    /// from a new network under the `flag` policy).
    pub flags: Vec<&'static str>,
    /// What the caller must do with an allow (e.g. use a signed media URL).
    pub obligations: Vec<Obligation>,
}

/// The flag a guard's unenforced denial raises; `None` for layers that are
/// never shadowed (relationships, cache, audit).
fn would_deny_flag(layer: &str) -> Option<&'static str> {
    match layer {
        "security_context" => Some("would_deny:security_context"),
        "emergency" => Some("would_deny:emergency"),
        "rate_limit" => Some("would_deny:rate_limit"),
        _ => None,
    }
}

/// How many items of one batch are evaluated at once.
const BATCH_CONCURRENCY: usize = 32;

pub struct Engine {
    layers: Vec<Arc<dyn Layer>>,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    /// Which guards' denials are enforced, for whom.
    rollout: Arc<Rollout>,
}

impl Engine {
    /// Computes permission sets on misses (for warming the cache).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The store the engine computes from.
    pub fn store(&self) -> &dyn Store {
        self.resolver.store()
    }

    /// Builds the engine over an ordered stack; the relationship layers of
    /// that stack also make up the resolver used on cache misses.
    pub fn new(
        layers: Vec<Arc<dyn Layer>>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_chain_depth: u32,
        database: Arc<crate::support::breaker::Breaker>,
        saturation: Arc<crate::support::saturation::Saturation>,
    ) -> Self {
        let resolver = Resolver::new(
            store,
            layers.clone(),
            metrics.clone(),
            max_chain_depth,
            database,
            saturation,
        );
        Engine {
            layers,
            resolver,
            metrics,
            rollout: Arc::default(),
        }
    }

    /// Applies guards' denials as `rollout` says (shadow, a share of
    /// subjects); without it every denial is enforced.
    pub fn with_rollout(mut self, rollout: Arc<Rollout>) -> Self {
        self.rollout = rollout;
        self
    }

    pub fn rollout(&self) -> &Arc<Rollout> {
        &self.rollout
    }

    /// Fills the cache from a read replica where it has caught up.
    pub fn with_replica(mut self, replica: Arc<replica::ReplicaReads>) -> Self {
        self.resolver = self.resolver.with_replica(replica);
        self
    }

    pub fn layers(&self) -> &[Arc<dyn Layer>] {
        &self.layers
    }

    pub async fn decide(
        &self,
        query: Query,
        consistency: Consistency,
        request: &RequestFacts,
    ) -> Result<Decision, AuthzError> {
        let span = tracing::debug_span!(
            "decide",
            subject = %query.subject,
            action = %query.action,
            resource = %query.resource
        );
        self.run(query, consistency, request, None)
            .instrument(span)
            .await
    }

    /// Decides every item, in order; an invalid item keeps its own error.
    pub async fn decide_batch(
        &self,
        items: Vec<Result<Query, AuthzError>>,
        consistency: Consistency,
        request: &RequestFacts,
    ) -> Vec<Result<Decision, AuthzError>> {
        let span = tracing::debug_span!("decide_batch", items = items.len());
        let memo = BatchMemo::default();
        let memo = &memo;
        futures::stream::iter(items)
            .map(|item| async move {
                match item {
                    Ok(query) => self.run(query, consistency, request, Some(memo)).await,
                    Err(error) => Err(error),
                }
            })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .instrument(span)
            .await
    }

    async fn run(
        &self,
        query: Query,
        consistency: Consistency,
        request: &RequestFacts,
        batch: Option<&BatchMemo>,
    ) -> Result<Decision, AuthzError> {
        let mut ctx = Context {
            query,
            consistency,
            request,
            resolver: &self.resolver,
            batch,
            permissions: None,
            source: PermissionSource::None,
            flags: Vec::new(),
            started: std::time::Instant::now(),
        };
        for layer in &self.layers {
            let step = match layer.check(&mut ctx) {
                Check::Ready(step) => step,
                // Only a layer that waits (I/O) can outlast the deadline: an
                // expired request is not let into one.
                Check::Later(step) => match crate::support::deadline::check() {
                    Ok(()) => step.await,
                    Err(expired) => Err(expired),
                },
            };
            match step {
                Ok(Step::Pass) => {}
                Ok(Step::Decide(verdict))
                    if !verdict.allow && self.shadowed(&mut ctx, layer.id(), verdict.reason) => {}
                Ok(Step::Decide(verdict)) => {
                    let decided_by = layer.id();
                    return Ok(self.finish(ctx, decided_by, verdict));
                }
                Err(_) if self.shadowed(&mut ctx, layer.id(), "ERROR") => {}
                Err(error) => {
                    let outcome = Outcome::Failed {
                        layer: layer.id(),
                        error: &error,
                    };
                    for layer in &self.layers {
                        layer.after(&ctx, &outcome);
                    }
                    return Err(error);
                }
            }
        }
        let verdict = default_deny(&ctx);
        Ok(self.finish(ctx, DEFAULT_DENY, verdict))
    }

    /// A guard's denial (or failure) that its rollout does not enforce for
    /// this subject: recorded in the metric, the response's and the audit
    /// event's flags, and the request goes on to the next layer.
    fn shadowed(&self, ctx: &mut Context<'_>, layer: LayerId, reason: &'static str) -> bool {
        let Some(flag) = would_deny_flag(layer.name) else {
            return false;
        };
        let subject = ctx.query.subject.to_string();
        if self.rollout.enforces(layer.name, reason, &subject) {
            return false;
        }
        self.metrics
            .ops
            .shadow_denials
            .get_or_create(&ShadowLabels {
                layer: layer.name,
                reason,
            })
            .inc();
        ctx.flags.push(flag);
        true
    }

    fn finish(&self, ctx: Context<'_>, decided_by: LayerId, verdict: Verdict) -> Decision {
        self.metrics
            .record_decision(verdict.allow, decided_by.name, verdict.reason);
        let obligations = if verdict.allow {
            self.layers
                .iter()
                .filter_map(|layer| layer.obligation(&ctx))
                .collect()
        } else {
            Vec::new()
        };
        for flag in &ctx.flags {
            self.metrics.record_flag(flag);
        }
        let decision = Decision {
            verdict,
            decided_by,
            permissions: ctx
                .permissions
                .as_ref()
                .map(|p| p.permissions())
                .unwrap_or_default(),
            source: ctx.source,
            decision_id: Uuid::now_v7(),
            flags: ctx.flags.clone(),
            obligations,
        };
        let outcome = Outcome::Decided(&decision);
        for layer in &self.layers {
            layer.after(&ctx, &outcome);
        }
        decision
    }
}

/// The deny when no layer allowed, saying as precisely as possible why.
fn default_deny(ctx: &Context<'_>) -> Verdict {
    let Query {
        subject,
        action,
        resource,
    } = ctx.query;
    let deny = |reason, message| Verdict {
        allow: false,
        reason,
        message,
    };
    let Some(set) = &ctx.permissions else {
        return deny(
            "NO_RELATIONSHIP",
            format!("no layer granted {action} on {resource} to {subject}"),
        );
    };
    match set.absence() {
        Some(Absence::ResourceNotFound) => {
            deny("RESOURCE_NOT_FOUND", format!("{resource} does not exist"))
        }
        Some(Absence::SubjectDisabled) => deny(
            "SUBJECT_DISABLED",
            format!("user {subject} is disabled and holds no permissions"),
        ),
        // Decided by the inheritance layer; reached only without it.
        Some(Absence::ChainCycle | Absence::ChainTooDeep) => deny(
            "DATA_INTEGRITY_FAULT",
            format!("{resource} has a broken parent chain"),
        ),
        None if set.permissions().is_empty() => deny(
            "NO_RELATIONSHIP",
            format!("user {subject} has no relationship with {resource}"),
        ),
        None => deny(
            "ACTION_NOT_PERMITTED",
            format!(
                "user {subject} may {} on {resource}, not {action}",
                set.permissions()
            ),
        ),
    }
}
