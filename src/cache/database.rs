//! The database tier: permission sets in the `permission_cache` table
//! (UNLOGGED on PostgreSQL), below Redis, shared by every replica.

use std::{sync::Arc, time::Duration};

use crate::{
    engine::{permissions::PermissionSet, resolver::Resolver},
    model::PermissionKey,
    store::Store,
    support::{clock::now_unix, metrics::Metrics},
};

#[derive(Clone)]
pub struct DatabaseTier {
    pub store: Arc<dyn Store>,
    pub ttl: Duration,
}

impl DatabaseTier {
    pub(super) async fn get(
        &self,
        key: &PermissionKey,
        resolver: &Resolver,
        metrics: &Metrics,
    ) -> Option<(PermissionSet, i64)> {
        let found = self
            .store
            .cached_set(&key.to_string(), now_unix() as i64)
            .await;
        let decoded = match found {
            Ok(row) => {
                row.and_then(|(payload, revision)| Some((resolver.decode(&payload)?, revision)))
            }
            Err(e) => {
                tracing::debug!("database cache tier: {e}");
                metrics.record_tier("database", "error");
                return None;
            }
        };
        metrics.record_tier("database", if decoded.is_some() { "hit" } else { "miss" });
        decoded
    }

    pub(super) fn put(&self, key: &PermissionKey, set: &PermissionSet, revision: i64) {
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
