//! Storage behind one trait: PostgreSQL in production, SQLite as the embedded
//! default. Pools are built once at start-up.

pub mod audit_event;
pub mod auth;
pub mod control;
pub mod pools;
pub mod retention;
mod sql;
mod sqlite_audit;
pub mod write_turns;

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use crate::{
    error::AuthzError,
    model::workload::Dataset,
    model::{ResourceRef, TeamRole, Visibility},
};
pub use sql::{PgStore, SqliteStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// What the relationship layers need to know about one subject and one
/// resource, fetched in one round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The resource's project and its team: what a cached answer depends on.
    pub project_id: Uuid,
    pub team_id: Option<Uuid>,
    /// The subject owns the resource's project.
    pub is_project_owner: bool,
    /// The subject created the generation (or the media object's generation).
    pub is_creator: bool,
    pub visibility: Visibility,
    /// The subject's role in the project's team, if any.
    pub team_role: Option<TeamRole>,
    pub subject_known: bool,
    pub subject_disabled: bool,
    /// The subject created an ancestor of the generation (or of the media
    /// object's generation) within the same project and the depth limit.
    pub created_an_ancestor: bool,
    /// What the walk up the parent chain found.
    pub chain: Chain,
    /// The media object's storage key (media only), for signed URLs.
    pub object_key: Option<String>,
}

/// The state of a generation's parent chain (within its project).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chain {
    /// No parent, or ancestors within the depth limit.
    #[default]
    Sound,
    /// A generation is its own ancestor.
    Cycle,
    /// More ancestors than the depth limit allows.
    TooDeep,
}

/// One row of `authz_changes`: revision, scope, subject, team, target.
pub type ChangeRow = (i64, String, Option<String>, Option<String>, Option<String>);

#[tonic::async_trait]
pub trait Store:
    auth::AuthStore + control::ControlStore + retention::RetentionStore + Send + Sync
{
    fn backend(&self) -> Backend;

    /// Applies the migrations of this backend's dialect.
    async fn migrate(&self) -> Result<(), AuthzError>;

    /// The facts for `subject` on `resource`, walking at most `max_depth`
    /// parent links; `None` when the resource does not exist.
    async fn permission_facts(
        &self,
        subject: Uuid,
        resource: ResourceRef,
        max_depth: u32,
    ) -> Result<Option<Facts>, AuthzError>;

    /// Entries of the change log after `after`, oldest first.
    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<ChangeRow>, AuthzError>;

    /// The database cache tier: a set's payload and revision, if unexpired.
    async fn cached_set(&self, key: &str, now: i64) -> Result<Option<(String, i64)>, AuthzError>;

    /// Stores (or replaces) a set in the database cache tier.
    async fn store_set(
        &self,
        key: &str,
        payload: &str,
        revision: i64,
        expires_at: i64,
    ) -> Result<(), AuthzError>;

    /// What a user most likely asks about next: the projects of their teams
    /// and their own, and their latest generations, as (kind, id), at most
    /// `limit` of each.
    async fn warm_targets(
        &self,
        user: Uuid,
        limit: i64,
    ) -> Result<Vec<(String, String)>, AuthzError>;

    /// The newest revision of the change log (0 when empty).
    async fn current_revision(&self) -> Result<i64, AuthzError>;

    /// True when no user exists yet.
    async fn is_empty(&self) -> Result<bool, AuthzError>;

    /// Inserts a generated data set in one transaction.
    async fn insert_dataset(&self, data: &Dataset) -> Result<(), AuthzError>;

    async fn close(&self);

    /// The pool's size and how long a query waits for a connection.
    fn pool_config(&self) -> PoolConfig;

    /// Every connection of the pool is open: a wait for one is a queue of
    /// our own work, not a sign that the database is down.
    fn pool_busy(&self) -> bool;

    /// Open connections and idle ones, now.
    fn pool_state(&self) -> (u32, u32);

    /// Where the decision path reports how long it waited for a connection.
    fn observe_acquire(&self, histogram: prometheus_client::metrics::histogram::Histogram);
}

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_connections: u32,
    /// Connections opened at start-up and kept open (at most
    /// `max_connections`): the first queries after a start or a quiet
    /// spell do not pay for opening one.
    pub min_connections: u32,
    pub acquire_timeout: Duration,
}

/// Opens the store the URL names: `postgres://…` or `sqlite://…` (the file
/// is created if missing).
pub async fn connect(url: &str, pool: &PoolConfig) -> Result<Arc<dyn Store>, AuthzError> {
    let unreachable = |e: sqlx::Error| {
        AuthzError::Unavailable(format!("cannot open database {}: {e}", redact(url)))
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections)
            .min_connections(pool.min_connections.min(pool.max_connections))
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy(url)
            .map_err(unreachable)?;
        open(&pool).await.map_err(unreachable)?;
        Ok(Arc::new(PgStore::new(pool)))
    } else if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| AuthzError::invalid(format!("bad SQLite URL {url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let turns = write_turns::for_file(options.get_filename());
        let pool = SqlitePoolOptions::new()
            .max_connections(pool.max_connections)
            .min_connections(pool.min_connections.min(pool.max_connections))
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options);
        open(&pool).await.map_err(unreachable)?;
        Ok(Arc::new(SqliteStore::new(pool).with_write_turns(turns)))
    } else {
        Err(AuthzError::invalid(format!(
            "unsupported database URL {}: use postgres://… or sqlite://…",
            redact(url)
        )))
    }
}

/// Opens one connection (start-up fails at once on an unreachable
/// database, within the acquire timeout), then the rest of the pool's
/// `min_connections` in the background: a slow database delays them, not
/// the start. sqlx keeps the minimum after that.
async fn open<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Result<(), sqlx::Error> {
    drop(pool.acquire().await?);
    let wanted = pool.options().get_min_connections();
    if wanted > 1 {
        let pool = pool.clone();
        tokio::spawn(async move {
            // Held together, so that each acquire opens a connection of its own.
            let held = futures::future::join_all((0..wanted).map(|_| pool.acquire())).await;
            let opened = held.iter().filter(|c| c.is_ok()).count();
            tracing::debug!(opened, wanted, "the pool's minimum connections");
        });
    }
    Ok(())
}

/// The URL without its secrets, for messages and logs.
pub fn redact(url: &str) -> String {
    crate::support::secrets::redact_url(url)
}
