//! Which tier a user is on (`users.tier`), remembered for `tier_ttl` so the
//! hot path reads the database at most once per user per TTL. A user whose
//! tier cannot be read (database down) gets the default tier: the most
//! conservative quota, never an unlimited one.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use crate::store::Store;

/// Users whose tier is remembered.
const CAPACITY: u64 = 1_000_000;

pub struct TierLookup {
    store: Arc<dyn Store>,
    tiers: moka::sync::Cache<Uuid, Option<Arc<str>>>,
}

impl TierLookup {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> TierLookup {
        TierLookup {
            store,
            tiers: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The remembered tier (outer `None`: not remembered).
    pub fn cached(&self, user: Uuid) -> Option<Option<Arc<str>>> {
        self.tiers.get(&user)
    }

    /// The user's tier name, if set (unknown users and read errors: none).
    pub async fn tier(&self, user: Uuid) -> Option<Arc<str>> {
        if let Some(known) = self.tiers.get(&user) {
            return known;
        }
        let budget = crate::support::deadline::budget(Duration::from_millis(500));
        match tokio::time::timeout(budget, self.store.user_tier(user)).await {
            Ok(Ok(tier)) => {
                let tier: Option<Arc<str>> = tier.map(Arc::from);
                self.tiers.insert(user, tier.clone());
                tier
            }
            // Not remembered: read again next time.
            _ => None,
        }
    }
}
