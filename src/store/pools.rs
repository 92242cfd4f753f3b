//! One pool per kind of work, so that a login storm or an audit backlog
//! cannot take the connections decisions need (and so that each kind can be
//! sized and timed out for what it does).

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{PoolConfig, Store, connect};
use crate::{error::AuthzError, support::duration::HumanDuration};

/// The kinds of database work, each with a pool of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Permission facts, the database cache tier, sessions, quotas: the
    /// decision path (`db_max_connections`, `db_acquire_timeout`).
    Decisions,
    /// The change-log and kill-switch followers: one query at a time.
    Follower,
    /// The audit writer's batches.
    Audit,
    /// Logins, token refresh and revocation.
    Auth,
    /// Admin RPCs, heartbeats, pruning, demo data.
    Admin,
}

impl Work {
    pub const ALL: [Work; 5] = [
        Work::Decisions,
        Work::Follower,
        Work::Audit,
        Work::Auth,
        Work::Admin,
    ];

    /// The `pool` label of the pool metrics.
    pub fn label(self) -> &'static str {
        match self {
            Work::Decisions => "decisions",
            Work::Follower => "follower",
            Work::Audit => "audit",
            Work::Auth => "auth",
            Work::Admin => "admin",
        }
    }
}

/// One pool's size and how long its work waits for a connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSize {
    pub max_connections: u32,
    pub acquire_timeout: HumanDuration,
}

impl PoolSize {
    fn new(max_connections: u32, acquire_timeout: Duration) -> Self {
        PoolSize {
            max_connections,
            acquire_timeout: HumanDuration(acquire_timeout),
        }
    }

    fn config(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.max_connections.max(1),
            min_connections: 0,
            acquire_timeout: self.acquire_timeout.0,
        }
    }
}

/// `[db_pools]`: the pools besides the decisions pool, and an optional read
/// replica for decision reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolsConfig {
    /// Batches of audit events; a backlog waits here, spilling to disk.
    pub audit: PoolSize,
    /// The change-log and kill-switch followers.
    pub follower: PoolSize,
    /// Logins and token refresh: short waits, a login storm is shed early.
    pub auth: PoolSize,
    /// Admin RPCs and housekeeping.
    pub admin: PoolSize,
    /// A read replica for decision reads with MINIMIZE_LATENCY; stricter
    /// consistency modes read the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_url: Option<String>,
}

impl Default for PoolsConfig {
    fn default() -> Self {
        PoolsConfig {
            audit: PoolSize::new(4, Duration::from_secs(5)),
            follower: PoolSize::new(2, Duration::from_secs(5)),
            auth: PoolSize::new(4, Duration::from_secs(2)),
            admin: PoolSize::new(2, Duration::from_secs(5)),
            replica_url: None,
        }
    }
}

/// The stores of one replica, one pool each.
#[derive(Clone)]
pub struct Stores {
    pub decisions: Arc<dyn Store>,
    /// Decision reads at MINIMIZE_LATENCY, when a read replica is set.
    pub replica: Option<Arc<dyn Store>>,
    pub follower: Arc<dyn Store>,
    pub audit: Arc<dyn Store>,
    pub auth: Arc<dyn Store>,
    pub admin: Arc<dyn Store>,
}

impl Stores {
    /// Opens every pool against `url` (the replica's against its own URL).
    pub async fn connect(
        url: &str,
        decisions: &PoolConfig,
        pools: &PoolsConfig,
    ) -> Result<Stores, AuthzError> {
        let replica = match &pools.replica_url {
            None => None,
            Some(replica_url) => Some(connect(replica_url, decisions).await?),
        };
        Ok(Stores {
            decisions: connect(url, decisions).await?,
            replica,
            follower: connect(url, &pools.follower.config()).await?,
            audit: connect(url, &pools.audit.config()).await?,
            auth: connect(url, &pools.auth.config()).await?,
            admin: connect(url, &pools.admin.config()).await?,
        })
    }

    /// Every store on one pool (for commands that do one kind of work).
    pub fn single(store: Arc<dyn Store>) -> Stores {
        Stores {
            decisions: store.clone(),
            replica: None,
            follower: store.clone(),
            audit: store.clone(),
            auth: store.clone(),
            admin: store,
        }
    }

    /// The store that serves `work`.
    pub fn get(&self, work: Work) -> &Arc<dyn Store> {
        match work {
            Work::Decisions => &self.decisions,
            Work::Follower => &self.follower,
            Work::Audit => &self.audit,
            Work::Auth => &self.auth,
            Work::Admin => &self.admin,
        }
    }

    /// Each pool with its label, the replica's as `replica`.
    pub fn labelled(&self) -> Vec<(&'static str, &Arc<dyn Store>)> {
        let mut all: Vec<_> = Work::ALL
            .iter()
            .map(|w| (w.label(), self.get(*w)))
            .collect();
        if let Some(replica) = &self.replica {
            all.push(("replica", replica));
        }
        all
    }

    /// Closes every pool (once each, even where they are shared).
    pub async fn close(&self) {
        let mut closed: Vec<&Arc<dyn Store>> = Vec::new();
        for (_, store) in self.labelled() {
            if !closed.iter().any(|done| Arc::ptr_eq(done, store)) {
                closed.push(store);
                store.close().await;
            }
        }
    }
}
