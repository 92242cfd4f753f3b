//! What the security context layer knows about sessions: who owns one,
//! whether it is live, and where it started, cached in process and dropped
//! through the change log when a session is revoked (by any replica, the
//! CLI or plain SQL); plus where each session was last seen, for the
//! impossible-travel rule (per replica, in memory).

use std::{net::IpAddr, sync::Arc, time::Duration};

use moka::sync::Cache;
use uuid::Uuid;

use crate::{cache::freshness::Freshness, error::AuthzError, store::Store};

/// A session as the guard needs it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub user_id: Uuid,
    /// Revoked, or its user disabled.
    pub ended: bool,
    pub started_at: i64,
    pub client_ip: Option<IpAddr>,
    pub user_agent: String,
    /// The change-log revision applied when it was read.
    revision: i64,
}

/// Sessions remembered per replica.
const CAPACITY: u64 = 100_000;
/// Re-read at least this often even without a change.
const MAX_AGE: Duration = Duration::from_secs(300);

pub struct Sessions {
    store: Arc<dyn Store>,
    freshness: Arc<Freshness>,
    known: Cache<Uuid, Arc<SessionInfo>>,
    /// Session -> (country, unix seconds) of its last allowed request.
    last_seen: Cache<Uuid, (String, i64)>,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, freshness: Arc<Freshness>, travel_window: Duration) -> Self {
        Sessions {
            store,
            freshness,
            known: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(MAX_AGE)
                .build(),
            last_seen: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(travel_window.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// The cached session if it is still good, without waiting.
    pub fn cached(&self, id: Uuid) -> Option<Arc<SessionInfo>> {
        let info = self.known.get(&id)?;
        (self.freshness.trusted() && self.freshness.record_valid(info.user_id, id, info.revision))
            .then_some(info)
    }

    /// The session, from the cache or the database (`None`: no such session).
    pub async fn get(&self, id: Uuid) -> Result<Option<Arc<SessionInfo>>, AuthzError> {
        if let Some(info) = self.cached(id) {
            return Ok(Some(info));
        }
        // Stamp before reading, so a change racing the read outdates it.
        let revision = self.freshness.applied();
        let Some(state) = self.store.session_state(id).await? else {
            return Ok(None);
        };
        let info = Arc::new(SessionInfo {
            user_id: state.user_id,
            ended: state.revoked || state.user_disabled,
            started_at: state.created_at,
            client_ip: state.client_ip.parse().ok(),
            user_agent: state.user_agent,
            revision,
        });
        self.known.insert(id, info.clone());
        Ok(Some(info))
    }

    pub fn last_seen(&self, id: Uuid) -> Option<(String, i64)> {
        self.last_seen.get(&id)
    }

    pub fn seen(&self, id: Uuid, country: String, at: i64) {
        self.last_seen.insert(id, (country, at));
    }
}
