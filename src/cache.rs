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
        if let Some(set) = self.sets.get(&key).await {
            self.metrics.record_cache_lookup("in_process", true);
            return Ok((set, PermissionSource::InProcessCache));
        }
        let entry = self
            .sets
            .entry(key)
            .or_try_insert_with(compute())
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
