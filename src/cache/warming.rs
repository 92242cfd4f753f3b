//! Predictive warming: after a login or a token check, the permission sets a
//! user most likely needs next (their teams' and own projects, their latest
//! generations) are computed into the cache tiers in the background, so the
//! first requests after login hit. Bounded: a few warm-ups at a time, a
//! limited number of sets each. Warming yields: it starts a little after
//! the login it follows (whose answer goes first), computes nothing while
//! any password login is in progress (it waits, and gives up after a
//! while), and it stops, or never starts, while the runtime lags
//! (decisions and logins come first).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    cache::PermissionCache,
    engine::Engine,
    model::{PermissionKey, ResourceKind, ResourceRef},
    support::{foreground::Foreground, metrics::Metrics, saturation::Saturation},
};

/// Sets of each kind prefetched per user.
const PER_KIND: i64 = 32;
/// Warm-ups running at once on a replica.
const AT_ONCE: usize = 2;
/// How long after the login a warm-up starts.
const DEFER: std::time::Duration = std::time::Duration::from_millis(50);
/// A runtime lagging more than this is busy: warming stops.
const BUSY: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a warm-up waits for the logins in progress before it gives up
/// (a login wave: the sets are computed on first use instead).
const LOGINS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Warmer {
    engine: Arc<Engine>,
    cache: Arc<PermissionCache>,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    saturation: Arc<Saturation>,
    logins: Arc<Foreground>,
}

impl Warmer {
    pub fn new(
        engine: Arc<Engine>,
        cache: Arc<PermissionCache>,
        metrics: Arc<Metrics>,
        (saturation, logins): (Arc<Saturation>, Arc<Foreground>),
    ) -> Warmer {
        Warmer {
            engine,
            cache,
            metrics,
            slots: Arc::new(Semaphore::new(AT_ONCE)),
            saturation,
            logins,
        }
    }

    /// Starts warming `user` in the background, unless enough already runs.
    pub fn warm(self: &Arc<Self>, user: Uuid) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.record_tier("warming", "skipped");
            return;
        };
        let warmer = self.clone();
        let span = tracing::debug_span!(parent: None, "cache.warm", %user);
        let work = async move {
            let _slot = slot;
            tokio::time::sleep(DEFER).await;
            if !warmer.logins.idle(LOGINS_PATIENCE).await {
                warmer.metrics.record_tier("warming", "skipped");
                return;
            }
            let targets = match warmer.engine.store().warm_targets(user, PER_KIND).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("warming {user}: {e}");
                    return;
                }
            };
            for (kind, id) in targets {
                if warmer.saturation.lag() > BUSY || !warmer.logins.idle(LOGINS_PATIENCE).await {
                    warmer.metrics.record_tier("warming", "skipped");
                    return;
                }
                let (Some(kind), Ok(id)) = (ResourceKind::parse(&kind), Uuid::parse_str(&id))
                else {
                    continue;
                };
                let key = PermissionKey {
                    subject: user,
                    resource: ResourceRef { kind, id },
                };
                if warmer
                    .cache
                    .get_or_compute(key, warmer.engine.resolver())
                    .await
                    .is_ok()
                {
                    warmer.metrics.record_tier("warming", "warmed");
                }
            }
        };
        tokio::spawn(work.instrument(span));
    }
}
