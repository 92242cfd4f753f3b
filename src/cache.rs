//! The in-process cache tier: permission sets under `user:resource`, bounded
//! in entries and time. Concurrent misses for one key run one computation.

use std::{future::Future, sync::Arc, time::Duration};

use moka::future::Cache;

use crate::{
    engine::permissions::{PermissionSet, PermissionSource},
    error::AuthzError,
    metrics::Metrics,
    model::PermissionKey,
};

pub struct PermissionCache {
    sets: Cache<PermissionKey, PermissionSet>,
    metrics: Arc<Metrics>,
}

impl PermissionCache {
    pub fn new(capacity: u64, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        let sets = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        PermissionCache { sets, metrics }
    }

    /// The cached set, or the result of `compute` (run once per key however
    /// many callers miss at the same time). Errors are not cached.
    pub async fn get_or_compute<F>(
        &self,
        key: PermissionKey,
        compute: F,
    ) -> Result<(PermissionSet, PermissionSource), AuthzError>
    where
        F: Future<Output = Result<PermissionSet, AuthzError>>,
    {
        let entry = self
            .sets
            .entry(key)
            .or_try_insert_with(compute)
            .await
            .map_err(|shared| (*shared).clone())?;
        let hit = !entry.is_fresh();
        self.metrics.record_cache_lookup("in_process", hit);
        let source = if hit {
            PermissionSource::InProcessCache
        } else {
            PermissionSource::Computed
        };
        Ok((entry.into_value(), source))
    }

    /// Forgets every cached set.
    pub fn clear(&self) {
        self.sets.invalidate_all();
    }
}
