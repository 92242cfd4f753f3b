//! Layer 10: rate limiting, first in the stack so an abusive principal costs
//! nothing further. Each query takes one cell of its principal's quota (a
//! batch item counts as one query); over the quota the request fails with
//! RESOURCE_EXHAUSTED and the time to retry. The anomaly model watches
//! every principal's rate and denial ratio and tightens the quota of one
//! that bursts far above its baseline, with an alert in the audit stream.

pub mod anomaly;
pub mod limiter;
pub mod principal;
mod redis_gcra;
mod tiers;

use std::sync::Arc;

use crate::{
    audit::AuditLog,
    engine::layer::{Check, Context, Layer, LayerId, Outcome, Step},
};
use anomaly::{Anomalies, Standing};
use limiter::{Limiter, exhausted};
use principal::Principal;

pub struct RateLimit {
    limiter: Arc<Limiter>,
    anomalies: Anomalies,
    audit: Arc<AuditLog>,
}

impl RateLimit {
    pub fn new(limiter: Arc<Limiter>, anomalies: Anomalies, audit: Arc<AuditLog>) -> Self {
        RateLimit {
            limiter,
            anomalies,
            audit,
        }
    }
}

impl Layer for RateLimit {
    fn id(&self) -> LayerId {
        LayerId {
            position: 10,
            name: "rate_limit",
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        let who = Principal::of(ctx.query.subject, ctx.request.ip);
        let tightened = self.standing(who);
        let refused = move |tier: &str, refusal| Err(exhausted(who, tier, &refusal));
        // In process with the tier known: answered at once, no future.
        if !self.limiter.distributed()
            && let Some(tier) = self.limiter.cached_tier(who)
        {
            return Check::Ready(match self.limiter.check_in_process(who, tier, tightened) {
                Ok(()) => Ok(Step::Pass),
                Err(refusal) => refused(tier, refusal),
            });
        }
        Check::Later(Box::pin(async move {
            let tier = self.limiter.tier_of(who).await;
            match self.limiter.check(who, tier, tightened).await {
                Ok(()) => Ok(Step::Pass),
                Err(refusal) => refused(tier, refusal),
            }
        }))
    }

    fn after(&self, ctx: &Context<'_>, outcome: &Outcome<'_>) {
        if let Outcome::Decided(d) = outcome
            && !d.verdict.allow
        {
            self.anomalies
                .denied(Principal::of(ctx.query.subject, ctx.request.ip));
        }
    }
}

impl RateLimit {
    /// Counts the request in the principal's baseline; true while its quota
    /// is tightened (alerting once when an anomaly starts).
    fn standing(&self, who: Principal) -> bool {
        match self.anomalies.request(who) {
            Standing::Normal => false,
            Standing::Tightened => true,
            Standing::NewAnomaly => {
                self.audit.alert(
                    "rate_anomaly",
                    &who.to_string(),
                    format!("{who} is far above its request or denial baseline: quota tightened"),
                );
                true
            }
        }
    }
}
