//! The permission-set cache under `user:resource`: the in-process tier
//! (moka, bounded in entries and time) over the optional shared tiers
//! (Redis, the database table) over the computation. Concurrent misses for
//! one key make one trip down per replica; every entry is checked against
//! the change log (`freshness`) before it is used.

use std::{future::Future, sync::Arc, time::Duration};

use moka::future::Cache;

use crate::{
    auth::now_unix,
    engine::permissions::{PermissionSet, PermissionSource},
    error::AuthzError,
    freshness::Freshness,
    metrics::Metrics,
    model::PermissionKey,
    redis_tier::RedisTier,
    store::Store,
};

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

/// The database tier: the `permission_cache` table (UNLOGGED on PostgreSQL).
#[derive(Clone)]
pub struct DatabaseTier {
    pub store: Arc<dyn Store>,
    pub ttl: Duration,
}

impl DatabaseTier {
    async fn get(&self, key: &PermissionKey, metrics: &Metrics) -> Option<(PermissionSet, i64)> {
        let found = self
            .store
            .cached_set(&key.to_string(), now_unix() as i64)
            .await;
        let decoded = match found {
            Ok(row) => row
                .and_then(|(payload, revision)| Some((PermissionSet::decode(&payload)?, revision))),
            Err(e) => {
                tracing::debug!("database cache tier: {e}");
                metrics.record_tier("database", "error");
                return None;
            }
        };
        metrics.record_tier("database", if decoded.is_some() { "hit" } else { "miss" });
        decoded
    }

    fn put(&self, key: &PermissionKey, set: &PermissionSet, revision: i64) {
        let (tier, key, payload) = (self.clone(), key.to_string(), set.encode());
        let expires = (now_unix() + self.ttl.as_secs()) as i64;
        tokio::spawn(async move {
            if let Err(e) = tier
                .store
                .store_set(&key, &payload, revision, expires)
                .await
            {
                tracing::debug!("database cache tier write: {e}");
            }
        });
    }
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
    async fn fill<F>(
        &self,
        key: PermissionKey,
        revision: i64,
        compute: F,
    ) -> Result<Stamped, AuthzError>
    where
        F: Future<Output = Result<PermissionSet, AuthzError>>,
    {
        if let Some(redis) = &self.redis
            && let Some((set, stamped_at)) = redis.get(&key).await
            && self.freshness.valid(&key, set.deps(), stamped_at)
        {
            return Ok(Stamped {
                set,
                revision: stamped_at,
                origin: PermissionSource::RedisCache,
            });
        }
        if let Some(database) = &self.database
            && let Some((set, stamped_at)) = database.get(&key, &self.metrics).await
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
        let set = compute.await?;
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

    /// The cached set, or the result of `compute` (run once per key however
    /// many callers miss at the same time). Errors are not cached. A hit
    /// never builds the computation or moka's insert future: both are large,
    /// and moving them was the hot path's biggest cost.
    pub async fn get_or_compute<C, F>(
        &self,
        key: PermissionKey,
        compute: C,
    ) -> Result<(PermissionSet, PermissionSource), AuthzError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<PermissionSet, AuthzError>>,
    {
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
        Box::pin(self.miss(key, compute)).await
    }

    async fn miss<C, F>(
        &self,
        key: PermissionKey,
        compute: C,
    ) -> Result<(PermissionSet, PermissionSource), AuthzError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<PermissionSet, AuthzError>>,
    {
        if !self.freshness.trusted() {
            // Out of touch with the change log: nothing cached is trusted,
            // and nothing computed now is kept.
            self.metrics.record_cache_lookup("in_process", false);
            return Ok((compute().await?, PermissionSource::Computed));
        }
        let revision = self.freshness.applied();
        let entry = self
            .sets
            .entry(key)
            .or_try_insert_with(self.fill(key, revision, compute()))
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
