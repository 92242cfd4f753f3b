//! Layer 10's machinery: quotas per principal (a user, or the client IP of
//! an anonymous request) and tier. In process through `governor`; shared by
//! every replica through an atomic GCRA script in Redis when Redis is
//! configured. Every Redis call has its own deadline (100 ms by default); a
//! late or failed call is answered by the in-process limiter, and the
//! circuit breaker keeps answering there until a probe finds Redis back.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use serde::{Deserialize, Serialize};

pub use super::anomaly::AnomalyConfig;
use super::principal::Principal;
use super::redis_gcra;
pub use super::tiers::TierLookup;
use crate::{
    error::AuthzError,
    store::Store,
    support::{
        duration::HumanDuration,
        metrics::Metrics,
        redis_conn::{RedisConn, RedisEndpoint},
        saturation::Saturation,
    },
};

/// One tier's quota: a sustained rate and the burst allowed above it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    pub per_second: u32,
    pub burst: u32,
}

/// `[rate_limit]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// The tier of users without one (`users.tier` is NULL or unknown) and
    /// of anonymous clients.
    pub default_tier: String,
    pub tiers: Vec<Tier>,
    /// Share limits between replicas through Redis (needs `redis_url` or
    /// `redis_cluster_urls`).
    pub distributed: bool,
    /// Deadline of every rate-limit call to Redis.
    pub redis_timeout: HumanDuration,
    /// How long a user's tier is remembered before it is read again.
    pub tier_ttl: HumanDuration,
    pub anomaly: AnomalyConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let tier = |name: &str, per_second, burst| Tier {
            name: name.to_owned(),
            per_second,
            burst,
        };
        RateLimitConfig {
            enabled: false,
            default_tier: "free".to_owned(),
            tiers: vec![
                tier("free", 50, 100),
                tier("pro", 500, 1_000),
                tier("enterprise", 5_000, 10_000),
            ],
            distributed: true,
            redis_timeout: HumanDuration(Duration::from_millis(100)),
            tier_ttl: HumanDuration(Duration::from_secs(60)),
            anomaly: AnomalyConfig::default(),
        }
    }
}

/// One tier's limiters: the normal quota and the tightened one.
struct TierLimits {
    normal: DefaultKeyedRateLimiter<Principal>,
    tightened: DefaultKeyedRateLimiter<Principal>,
    /// GCRA parameters for Redis: emission interval (µs) and burst.
    gcra: (u64, u32),
    tight_gcra: (u64, u32),
}

fn quota(per_second: u32, burst: u32) -> Result<Quota, String> {
    let per_second = NonZeroU32::new(per_second).ok_or("per_second must be at least 1")?;
    let burst = NonZeroU32::new(burst).ok_or("burst must be at least 1")?;
    Ok(Quota::per_second(per_second).allow_burst(burst))
}

fn gcra(per_second: u32, burst: u32) -> (u64, u32) {
    (1_000_000 / u64::from(per_second.max(1)), burst.max(1))
}

/// A refusal: which limiter refused and when to retry.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub limiter: &'static str,
    pub retry_after: Duration,
}

pub struct Limiter {
    tiers: HashMap<String, TierLimits>,
    default_tier: String,
    redis: Option<(RedisConn, String)>,
    lookup: TierLookup,
    metrics: Arc<Metrics>,
}

impl Limiter {
    pub fn new(
        config: &RateLimitConfig,
        store: Arc<dyn Store>,
        redis: Option<(&RedisEndpoint, &str, Arc<Saturation>)>,
        metrics: Arc<Metrics>,
    ) -> Result<Limiter, String> {
        let factor = config.anomaly.tighten_factor.max(1);
        let mut tiers = HashMap::new();
        for t in &config.tiers {
            let tight_rate = (t.per_second / factor).max(1);
            let tight_burst = (t.burst / factor).max(1);
            let (q, tq) = (
                quota(t.per_second, t.burst).map_err(|e| format!("tier {}: {e}", t.name))?,
                quota(tight_rate, tight_burst).map_err(|e| format!("tier {}: {e}", t.name))?,
            );
            tiers.insert(
                t.name.clone(),
                TierLimits {
                    normal: RateLimiter::keyed(q),
                    tightened: RateLimiter::keyed(tq),
                    gcra: gcra(t.per_second, t.burst),
                    tight_gcra: gcra(tight_rate, tight_burst),
                },
            );
        }
        if !tiers.contains_key(&config.default_tier) {
            return Err(format!(
                "rate_limit.default_tier {:?} is not one of the tiers",
                config.default_tier
            ));
        }
        let redis = match redis {
            Some((endpoint, prefix, saturation)) if config.distributed => Some((
                RedisConn::new(
                    endpoint,
                    config.redis_timeout.0,
                    "redis_rate_limit",
                    metrics.clone(),
                    saturation,
                )
                .map_err(|e| e.to_string())?,
                format!("{prefix}rl:"),
            )),
            _ => None,
        };
        Ok(Limiter {
            tiers,
            default_tier: config.default_tier.clone(),
            redis,
            lookup: TierLookup::new(store, config.tier_ttl.0),
            metrics,
        })
    }

    /// The tier a principal's quota comes from, when known without I/O.
    pub fn cached_tier(&self, principal: Principal) -> Option<&str> {
        match principal {
            Principal::User(user) => self.lookup.cached(user).map(|name| self.known(name)),
            _ => Some(&self.default_tier),
        }
    }

    /// The tier a principal's quota comes from (a known tier name).
    pub async fn tier_of(&self, principal: Principal) -> &str {
        match principal {
            Principal::User(user) => self.known(self.lookup.tier(user).await),
            _ => &self.default_tier,
        }
    }

    /// The tier by that name, or the default one.
    fn known(&self, name: Option<Arc<str>>) -> &str {
        name.and_then(|name| self.tiers.get_key_value(name.as_ref()))
            .map_or(&self.default_tier, |(known, _)| known)
    }

    /// Whether checks go to Redis (so they cannot be answered at once).
    pub fn distributed(&self) -> bool {
        self.redis.is_some()
    }

    /// Takes one cell of the principal's quota, or says when to retry:
    /// through Redis when configured, else (or when Redis fails) in process.
    pub async fn check(
        &self,
        principal: Principal,
        tier: &str,
        tightened: bool,
    ) -> Result<(), Refusal> {
        match self.check_redis(principal, tier, tightened).await {
            Some(answer) => answer,
            None => self.check_in_process(principal, tier, tightened),
        }
    }

    /// The shared quota's answer; `None` without Redis or when Redis was
    /// skipped or failed.
    async fn check_redis(
        &self,
        principal: Principal,
        tier: &str,
        tightened: bool,
    ) -> Option<Result<(), Refusal>> {
        let (redis, prefix) = self.redis.as_ref()?;
        let limits = self.tiers.get(tier)?;
        let (name, params, mark) = match tightened {
            true => ("tightened", limits.tight_gcra, "t:"),
            false => ("redis", limits.gcra, ""),
        };
        // The principal is the key's hash tag: one slot in a cluster.
        let key = format!("{prefix}{tier}:{mark}{{{principal}}}");
        match redis_gcra::take(redis, key, params).await {
            Ok(None) => Some(Ok(())),
            Ok(Some(retry_after)) => Some(Err(self.refused(tier, name, retry_after))),
            Err(_) => {
                self.metrics.ops.rate_limit_fallbacks.inc();
                None
            }
        }
    }

    /// Takes one cell from the in-process limiter.
    pub fn check_in_process(
        &self,
        principal: Principal,
        tier: &str,
        tightened: bool,
    ) -> Result<(), Refusal> {
        let Some(limits) = self.tiers.get(tier) else {
            return Ok(());
        };
        let (limiter, name) = match tightened {
            true => (&limits.tightened, "tightened"),
            false => (&limits.normal, "in_process"),
        };
        limiter.check_key(&principal).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.refused(tier, name, wait)
        })
    }

    fn refused(&self, tier: &str, limiter: &'static str, retry_after: Duration) -> Refusal {
        self.metrics
            .ops
            .rate_limited
            .get_or_create(&crate::support::metrics::LimitLabels {
                tier: tier.to_owned(),
                limiter,
            })
            .inc();
        Refusal {
            limiter,
            retry_after,
        }
    }

    /// Forgets idle principals (bounded memory); run periodically.
    pub fn housekeeping(&self) {
        for limits in self.tiers.values() {
            limits.normal.retain_recent();
            limits.tightened.retain_recent();
        }
    }
}

/// The error a refused request gets: RESOURCE_EXHAUSTED with when to retry.
pub fn exhausted(principal: Principal, tier: &str, refusal: &Refusal) -> AuthzError {
    AuthzError::RateLimited {
        message: format!(
            "rate limit of tier {tier} exceeded for {principal} ({} limiter); retry in {} ms",
            refusal.limiter,
            refusal.retry_after.as_millis().max(1)
        ),
        retry_after: refusal.retry_after,
    }
}
