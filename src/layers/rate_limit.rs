//! Layer 10: rate limiting, first in the stack so an abusive principal costs
//! nothing further. Each query takes one cell of its principal's quota (a
//! batch item counts as one query); over the quota the request fails with
//! RESOURCE_EXHAUSTED and the time to retry. The anomaly model watches
//! every principal's rate and denial ratio and tightens the quota of one
//! that bursts far above its baseline, with an alert in the audit stream.

use std::sync::Arc;

use crate::{
    audit::AuditLog,
    engine::layer::{Check, Context, Layer, LayerId, Outcome, Step},
    rate_limit::{
        Limiter,
        anomaly::{Anomalies, Standing},
        exhausted, principal,
    },
};

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
        Check::Later(Box::pin(async move {
            let who = principal(ctx.query.subject, ctx.request.ip);
            let tightened = match self.anomalies.request(&who) {
                Standing::Normal => false,
                Standing::Tightened => true,
                Standing::NewAnomaly => {
                    self.audit.alert(
                        "rate_anomaly",
                        &who,
                        format!(
                            "{who} is far above its request or denial baseline: quota tightened"
                        ),
                    );
                    true
                }
            };
            let tier = self.limiter.tier_of(ctx.query.subject).await;
            match self.limiter.check(&who, tier, tightened).await {
                Ok(()) => Ok(Step::Pass),
                Err(refusal) => Err(exhausted(&who, tier, &refusal)),
            }
        }))
    }

    fn after(&self, ctx: &Context<'_>, outcome: &Outcome<'_>) {
        if let Outcome::Decided(d) = outcome
            && !d.verdict.allow
        {
            self.anomalies
                .denied(&principal(ctx.query.subject, ctx.request.ip));
        }
    }
}
