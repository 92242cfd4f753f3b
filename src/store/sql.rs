//! The two SQL backends. The SQL is shared (`$n` placeholders work on both);
//! only how a UUID is bound differs (native `uuid` on PostgreSQL, canonical
//! text on SQLite), so both are stamped from one macro.

use sqlx::{FromRow, QueryBuilder};
use uuid::Uuid;

use super::{Backend, Chain, Facts, Store};
use crate::{
    error::AuthzError,
    model::workload::Dataset,
    model::{ResourceKind, ResourceRef, TeamRole, Visibility},
};

/// Columns every facts query returns; `$1` is the subject, `$2` the
/// resource, `$3` (generations and media) the parent-chain depth limit.
macro_rules! facts_query {
    ($with:expr, $chain:expr, $from:literal, $where:literal) => {
        concat!(
            $with,
            "SELECT p.owner_id = $1 AS is_project_owner, ",
            "COALESCE(g.created_by = $1, p.owner_id = $1) AS is_creator, ",
            "p.visibility AS visibility, m.role AS team_role, ",
            "u.id IS NOT NULL AS subject_known, COALESCE(u.disabled, FALSE) AS subject_disabled, ",
            "CAST(p.id AS TEXT) AS project_id, CAST(p.team_id AS TEXT) AS team_id, ",
            $chain,
            $from,
            " LEFT JOIN team_members m ON m.team_id = p.team_id AND m.user_id = $1",
            " LEFT JOIN users u ON u.id = $1 WHERE ",
            $where
        )
    };
}

/// The parent chain of the generation `$start`, within its project, down to
/// one link past the limit (so an over-deep chain shows) and bounded even
/// when the data holds a cycle.
macro_rules! chain_cte {
    ($start:literal) => {
        concat!(
            "WITH RECURSIVE chain (id, parent_id, project_id, created_by, depth) AS (",
            " SELECT id, parent_id, project_id, created_by, 0 FROM generations WHERE id = ",
            $start,
            " UNION ALL",
            " SELECT a.id, a.parent_id, a.project_id, a.created_by, c.depth + 1 FROM chain c",
            " JOIN generations a ON a.id = c.parent_id AND a.project_id = c.project_id",
            " WHERE c.depth <= $3) "
        )
    };
}

/// What the chain says: whether the subject made an ancestor, repeated ids
/// (a cycle) and the deepest link found.
macro_rules! chain_columns {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM chain WHERE depth BETWEEN 1 AND $3 AND created_by = $1) ",
            "AS created_an_ancestor, ",
            "CAST((SELECT COUNT(*) - COUNT(DISTINCT id) FROM chain) AS BIGINT) AS chain_repeats, ",
            "CAST((SELECT COALESCE(MAX(depth), 0) FROM chain) AS BIGINT) AS chain_depth, "
        )
    };
}

/// One round trip per kind: the resource, its project, the subject's team
/// role on it, the subject's status and the parent chain, all by key.
fn facts_sql(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Project => facts_query!(
            "",
            concat!(
                "FALSE AS created_an_ancestor, CAST(0 AS BIGINT) AS chain_repeats, ",
                "CAST(0 AS BIGINT) AS chain_depth, NULL AS object_key "
            ),
            // Never matches, through the primary key: `ON FALSE` made SQLite scan.
            "FROM projects p LEFT JOIN generations g ON g.id = p.id AND 1 = 0",
            "p.id = $2"
        ),
        ResourceKind::Generation => facts_query!(
            chain_cte!("$2"),
            concat!(chain_columns!(), "NULL AS object_key "),
            "FROM generations g JOIN projects p ON p.id = g.project_id",
            "g.id = $2"
        ),
        ResourceKind::Media => facts_query!(
            chain_cte!("(SELECT generation_id FROM media WHERE id = $2)"),
            concat!(chain_columns!(), "md.object_key AS object_key "),
            "FROM media md JOIN generations g ON g.id = md.generation_id JOIN projects p ON p.id = g.project_id",
            "md.id = $2"
        ),
    }
}

#[derive(FromRow)]
struct FactsRow {
    is_project_owner: bool,
    is_creator: bool,
    visibility: String,
    team_role: Option<String>,
    subject_known: bool,
    subject_disabled: bool,
    project_id: String,
    team_id: Option<String>,
    created_an_ancestor: bool,
    chain_repeats: i64,
    chain_depth: i64,
    object_key: Option<String>,
}

impl FactsRow {
    fn into_facts(self, max_depth: u32) -> Result<Facts, AuthzError> {
        let visibility = Visibility::parse(&self.visibility).ok_or_else(|| {
            AuthzError::Internal(format!(
                "stored visibility {:?} is unknown",
                self.visibility
            ))
        })?;
        let team_role = match self.team_role {
            Some(role) => Some(TeamRole::parse(&role).ok_or_else(|| {
                AuthzError::Internal(format!("stored team role {role:?} is unknown"))
            })?),
            None => None,
        };
        let id = |text: &str| {
            Uuid::parse_str(text)
                .map_err(|e| AuthzError::Internal(format!("stored id {text:?}: {e}")))
        };
        Ok(Facts {
            project_id: id(&self.project_id)?,
            team_id: self.team_id.as_deref().map(id).transpose()?,
            is_project_owner: self.is_project_owner,
            is_creator: self.is_creator,
            visibility,
            team_role,
            subject_known: self.subject_known,
            subject_disabled: self.subject_disabled,
            created_an_ancestor: self.created_an_ancestor,
            chain: if self.chain_repeats > 0 {
                Chain::Cycle
            } else if self.chain_depth > i64::from(max_depth) {
                Chain::TooDeep
            } else {
                Chain::Sound
            },
            object_key: self.object_key,
        })
    }
}

/// Rows per INSERT statement: well under both dialects' bind limits.
const INSERT_CHUNK: usize = 1_000;

macro_rules! sql_store {
    ($name:ident, $db:ty, $backend:expr, $migrations:literal, $bind_id:expr) => {
        pub struct $name {
            pool: sqlx::Pool<$db>,
            /// How long decisions wait for a connection, once observed.
            acquire_wait: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
            /// Where the hot writes queue for the database's one writer
            /// (SQLite); none where writers run side by side.
            write_turns: Option<super::write_turns::WriteTurns>,
        }

        impl $name {
            pub fn new(pool: sqlx::Pool<$db>) -> Self {
                $name {
                    pool,
                    acquire_wait: std::sync::OnceLock::new(),
                    write_turns: None,
                }
            }

            /// Hot writes take their turn at `turns` (shared by every
            /// store of this process on the same file).
            pub fn with_write_turns(mut self, turns: super::write_turns::WriteTurns) -> Self {
                self.write_turns = Some(turns);
                self
            }

            /// Waits for this store's turn to write, where writes take turns.
            pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
                match &self.write_turns {
                    Some(turns) => Some(turns.lock().await),
                    None => None,
                }
            }

            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }
        }

        #[tonic::async_trait]
        impl Store for $name {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn migrate(&self) -> Result<(), AuthzError> {
                let mut migrator = sqlx::migrate!($migrations);
                // Migrations are written expand-then-contract, so a binary
                // one release behind runs on a schema one release ahead:
                // applied migrations it does not know are tolerated, and said.
                migrator.set_ignore_missing(true);
                let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
                let applied: Vec<i64> =
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&self.pool)
                        .await
                        .unwrap_or_default();
                for version in applied.iter().filter(|v| !known.contains(v)) {
                    tracing::warn!(
                        version,
                        "the database has a migration this build does not know (a newer \
                         release applied it); running on it: migrations only expand the schema \
                         until every replica runs the release that needs the contraction"
                    );
                }
                migrator
                    .run(&self.pool)
                    .await
                    .map_err(|e| AuthzError::Unavailable(format!("migrations failed: {e}")))
            }

            async fn permission_facts(
                &self,
                subject: Uuid,
                resource: ResourceRef,
                max_depth: u32,
            ) -> Result<Option<Facts>, AuthzError> {
                let bind_id = $bind_id;
                let mut query = sqlx::query_as(facts_sql(resource.kind))
                    .bind(bind_id(subject))
                    .bind(bind_id(resource.id));
                if resource.kind != ResourceKind::Project {
                    query = query.bind(i64::from(max_depth));
                }
                let waited = std::time::Instant::now();
                let mut conn = self.pool.acquire().await?;
                if let Some(histogram) = self.acquire_wait.get() {
                    histogram.observe(waited.elapsed().as_secs_f64());
                }
                let row: Option<FactsRow> = query.fetch_optional(&mut *conn).await?;
                row.map(|row| row.into_facts(max_depth)).transpose()
            }

            async fn changes_since(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<super::ChangeRow>, AuthzError> {
                Ok(sqlx::query_as(
                    "SELECT revision, scope, subject_id, team_id, target_id FROM authz_changes \
                     WHERE revision > $1 ORDER BY revision LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn cached_set(
                &self,
                key: &str,
                now: i64,
            ) -> Result<Option<(String, i64)>, AuthzError> {
                Ok(sqlx::query_as(
                    "SELECT payload, revision FROM permission_cache \
                     WHERE cache_key = $1 AND expires_at > $2",
                )
                .bind(key)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn store_set(
                &self,
                key: &str,
                payload: &str,
                revision: i64,
                expires_at: i64,
            ) -> Result<(), AuthzError> {
                sqlx::query(
                    "INSERT INTO permission_cache (cache_key, payload, revision, expires_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (cache_key) DO UPDATE SET \
                     payload = excluded.payload, revision = excluded.revision, \
                     expires_at = excluded.expires_at",
                )
                .bind(key)
                .bind(payload)
                .bind(revision)
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn warm_targets(
                &self,
                user: Uuid,
                limit: i64,
            ) -> Result<Vec<(String, String)>, AuthzError> {
                let bind_id = $bind_id;
                Ok(sqlx::query_as(
                    "SELECT kind, id FROM ( \
                       SELECT 'project' AS kind, CAST(p.id AS TEXT) AS id FROM projects p \
                         JOIN team_members m ON m.team_id = p.team_id WHERE m.user_id = $1 \
                       UNION \
                       SELECT 'project', CAST(id AS TEXT) FROM projects WHERE owner_id = $1 \
                     ) AS mine LIMIT $2",
                )
                .bind(bind_id(user))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .chain(
                    sqlx::query_as::<_, (String, String)>(
                        "SELECT 'generation', CAST(id AS TEXT) FROM generations \
                         WHERE created_by = $1 ORDER BY created_at DESC LIMIT $2",
                    )
                    .bind(bind_id(user))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?,
                )
                .collect())
            }

            async fn current_revision(&self) -> Result<i64, AuthzError> {
                let (revision,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(revision), 0) FROM authz_changes")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(revision)
            }

            async fn is_empty(&self) -> Result<bool, AuthzError> {
                let (users,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM (SELECT 1 FROM users LIMIT 1) AS one")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(users == 0)
            }

            async fn insert_dataset(&self, data: &Dataset) -> Result<(), AuthzError> {
                let bind_id = $bind_id;
                let mut tx = self.pool.begin().await?;
                for chunk in data.users.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new(
                        "INSERT INTO users (id, email, disabled, password_hash) ",
                    )
                    .push_values(chunk, |mut row, u| {
                        row.push_bind(bind_id(u.id))
                            .push_bind(u.email.clone())
                            .push_bind(u.disabled)
                            .push_bind(data.password_hash.clone());
                    })
                    .build()
                    .execute(&mut *tx)
                    .await?;
                }
                for chunk in data.teams.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new("INSERT INTO teams (id, name) ")
                        .push_values(chunk, |mut row, t| {
                            row.push_bind(bind_id(t.id)).push_bind(t.name.clone());
                        })
                        .build()
                        .execute(&mut *tx)
                        .await?;
                }
                for chunk in data.members.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new("INSERT INTO team_members (team_id, user_id, role) ")
                        .push_values(chunk, |mut row, m| {
                            row.push_bind(bind_id(m.team_id))
                                .push_bind(bind_id(m.user_id))
                                .push_bind(m.role.as_str());
                        })
                        .build()
                        .execute(&mut *tx)
                        .await?;
                }
                for chunk in data.projects.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new(
                        "INSERT INTO projects (id, owner_id, team_id, visibility, name) ",
                    )
                    .push_values(chunk, |mut row, p| {
                        row.push_bind(bind_id(p.id))
                            .push_bind(bind_id(p.owner_id))
                            .push_bind(p.team_id.map(bind_id))
                            .push_bind(p.visibility.as_str())
                            .push_bind(p.name.clone());
                    })
                    .build()
                    .execute(&mut *tx)
                    .await?;
                }
                for chunk in data.generations.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new(
                        "INSERT INTO generations (id, project_id, created_by, parent_id) ",
                    )
                    .push_values(chunk, |mut row, g| {
                        row.push_bind(bind_id(g.id))
                            .push_bind(bind_id(g.project_id))
                            .push_bind(bind_id(g.created_by))
                            .push_bind(g.parent_id.map(bind_id));
                    })
                    .build()
                    .execute(&mut *tx)
                    .await?;
                }
                for chunk in data.media.chunks(INSERT_CHUNK) {
                    QueryBuilder::<$db>::new(
                        "INSERT INTO media (id, generation_id, object_key, kind) ",
                    )
                    .push_values(chunk, |mut row, m| {
                        row.push_bind(bind_id(m.id))
                            .push_bind(bind_id(m.generation_id))
                            .push_bind(m.object_key.clone())
                            .push_bind(m.kind);
                    })
                    .build()
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            fn pool_config(&self) -> super::PoolConfig {
                let options = self.pool.options();
                super::PoolConfig {
                    max_connections: options.get_max_connections(),
                    min_connections: options.get_min_connections(),
                    acquire_timeout: options.get_acquire_timeout(),
                }
            }

            fn pool_state(&self) -> (u32, u32) {
                (self.pool.size(), self.pool.num_idle() as u32)
            }

            fn observe_acquire(
                &self,
                histogram: prometheus_client::metrics::histogram::Histogram,
            ) {
                let _ = self.acquire_wait.set(histogram);
            }

            fn pool_busy(&self) -> bool {
                // Every connection open: a wait for one is a wait for our
                // own work. A pool below its size that timed out could not
                // open a connection: the database's failure.
                self.pool.size() >= self.pool.options().get_max_connections()
            }
        }
    };
}

super::auth::auth_store!(PgStore, |id: Uuid| id, true);
super::auth::auth_store!(SqliteStore, |id: Uuid| id.hyphenated().to_string(), false);
super::control::control_store!(
    PgStore,
    sqlx::Postgres,
    |id: Uuid| id,
    super::control::insert_audit_postgres
);
// One prune at a time across replicas: a session-level advisory lock.
super::retention::retention_store!(
    PgStore,
    "SELECT pg_try_advisory_lock(7355608)",
    "SELECT pg_advisory_unlock(7355608)"
);
super::retention::retention_store!(SqliteStore, "SELECT TRUE", "SELECT TRUE");
super::control::control_store!(
    SqliteStore,
    sqlx::Sqlite,
    |id: Uuid| id.hyphenated().to_string(),
    super::sqlite_audit::insert_audit_sqlite
);

sql_store!(
    PgStore,
    sqlx::Postgres,
    Backend::Postgres,
    "migrations/postgres",
    |id: Uuid| id
);
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    Backend::Sqlite,
    "migrations/sqlite",
    |id: Uuid| id.hyphenated().to_string()
);
