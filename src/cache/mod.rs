//! The permission-set cache under `user:resource`: the in-process tier
//! (moka, bounded in entries and time) over the optional shared tiers
//! (Redis, the database table) over the computation. Concurrent misses for
//! one key make one trip down per replica; every entry is checked against
//! the change log (`freshness`) before it is used.

pub mod database;
pub mod freshness;
pub mod redis;
pub mod warming;

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use crate::{
    engine::{
        permissions::{PermissionSet, PermissionSource},
        resolver::Resolver,
    },
    error::AuthzError,
    model::PermissionKey,
    support::metrics::Metrics,
};
use database::DatabaseTier;
use freshness::Freshness;
use redis::RedisTier;

/// A set, the revision it was computed at, and the tier that filled it.
#[derive(Clone, Debug)]
struct Stamped {
    set: PermissionSet,
    revision: i64,
    origin: PermissionSource,
}

/// How long an AT_LEAST_AS_FRESH request waits for the change log before
/// it bypasses the caches instead.
const AT_LEAST_AS_FRESH_WAIT: Duration = Duration::from_millis(50);

pub struct PermissionCache {
    sets: Cache<PermissionKey, Stamped>,
    freshness: Arc<Freshness>,
    redis: Option<Arc<RedisTier>>,
    database: Option<DatabaseTier>,
    metrics: Arc<Metrics>,
}

impl PermissionCache {
    pub fn new(
        capacity: u64,
        ttl: Duration,
        freshness: Arc<Freshness>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sets = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        PermissionCache {
            sets,
            freshness,
            redis: None,
            database: None,
            metrics,
        }
    }

    /// Adds the database tier below Redis.
    pub fn with_database(mut self, tier: DatabaseTier) -> Self {
        self.database = Some(tier);
        self
    }

    /// Adds the shared Redis tier below the in-process one.
    pub fn with_redis(mut self, redis: Arc<RedisTier>) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Below the in-process tier: Redis when configured and in time, else
    /// computed (and then offered to Redis). Runs once per key however many
    /// callers miss together.
    async fn fill(
        &self,
        key: PermissionKey,
        revision: i64,
        resolver: &Resolver,
    ) -> Result<Stamped, AuthzError> {
        if let Some(redis) = &self.redis
            && let Some((set, stamped_at)) = redis.get(&key, resolver).await
            && self.freshness.valid(&key, set.deps(), stamped_at)
        {
            return Ok(Stamped {
                set,
                revision: stamped_at,
                origin: PermissionSource::RedisCache,
            });
        }
        if let Some(database) = &self.database
            && let Some((set, stamped_at)) = database.get(&key, resolver, &self.metrics).await
            && self.freshness.valid(&key, set.deps(), stamped_at)
        {
            if let Some(redis) = &self.redis {
                redis.put(&key, &set, stamped_at);
            }
            return Ok(Stamped {
                set,
                revision: stamped_at,
                origin: PermissionSource::DatabaseCache,
            });
        }
        let set = resolver.compute_at(key, revision).await?;
        if let Some(redis) = &self.redis {
            redis.put(&key, &set, revision);
        }
        if let Some(database) = &self.database {
            database.put(&key, &set, revision);
        }
        Ok(Stamped {
            set,
            revision,
            origin: PermissionSource::Computed,
        })
    }

    /// A cached set only counts while the replica follows the change log
    /// and nothing it depends on changed since it was computed.
    fn usable(&self, key: &PermissionKey, stamped: &Stamped) -> bool {
        self.freshness.trusted()
            && self
                .freshness
                .valid(key, stamped.set.deps(), stamped.revision)
    }

    /// The cached set, or the one `resolver` computes (once per key however
    /// many callers miss at the same time). Errors are not cached. A hit
    /// never builds the computation or moka's insert future: both are large,
    /// and moving them was the hot path's biggest cost.
    pub async fn get_or_compute(
        &self,
        key: PermissionKey,
        resolver: &Resolver,
    ) -> Result<(PermissionSet, PermissionSource), AuthzError> {
        if let Some(stamped) = self.sets.get(&key).await {
            if self.usable(&key, &stamped) {
                self.metrics.record_cache_lookup("in_process", true);
                return Ok((stamped.set, PermissionSource::InProcessCache));
            }
            self.sets.invalidate(&key).await;
        }
        // The miss path is boxed: its future (shared tiers, computation,
        // moka's insert) is large, and inline it would be built and moved
        // on every hit too.
        Box::pin(self.miss(key, resolver)).await
    }

    async fn miss(
        &self,
        key: PermissionKey,
        resolver: &Resolver,
    ) -> Result<(PermissionSet, PermissionSource), AuthzError> {
        if !self.freshness.trusted() {
            // Out of touch with the change log: nothing cached is trusted,
            // and nothing computed now is kept.
            self.metrics.record_cache_lookup("in_process", false);
            return Ok((resolver.compute(key).await?, PermissionSource::Computed));
        }
        let revision = self.freshness.applied();
        let entry = self
            .sets
            .entry(key)
            .or_try_insert_with(self.fill(key, revision, resolver))
            .await
            .map_err(|shared| (*shared).clone())?;
        let hit = !entry.is_fresh();
        self.metrics.record_cache_lookup("in_process", hit);
        let stamped = entry.into_value();
        let source = if hit {
            PermissionSource::InProcessCache
        } else {
            stamped.origin
        };
        Ok((stamped.set, source))
    }

    /// Whether this replica has applied `revision`, waiting briefly for it.
    pub async fn reached(&self, revision: i64) -> bool {
        self.freshness.trusted()
            && self
                .freshness
                .reached(revision, AT_LEAST_AS_FRESH_WAIT)
                .await
    }
}
