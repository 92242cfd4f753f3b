//! The two SQL backends. The SQL is shared (`$n` placeholders work on both);
//! only how a UUID is bound differs (native `uuid` on PostgreSQL, canonical
//! text on SQLite), so both are stamped from one macro.

use sqlx::{FromRow, QueryBuilder};
use uuid::Uuid;

use super::{Backend, Facts, Store};
use crate::{
    error::AuthzError,
    model::{ResourceKind, ResourceRef, TeamRole, Visibility},
    workload::Dataset,
};

/// Columns every facts query returns; `$1` is the subject, `$2` the resource.
macro_rules! facts_query {
    ($from:literal, $where:literal) => {
        concat!(
            "SELECT p.owner_id = $1 AS is_project_owner, ",
            "COALESCE(g.created_by = $1, p.owner_id = $1) AS is_creator, ",
            "p.visibility AS visibility, m.role AS team_role, ",
            "u.id IS NOT NULL AS subject_known, COALESCE(u.disabled, FALSE) AS subject_disabled, ",
            "CAST(p.id AS TEXT) AS project_id, CAST(p.team_id AS TEXT) AS team_id ",
            $from,
            " LEFT JOIN team_members m ON m.team_id = p.team_id AND m.user_id = $1",
            " LEFT JOIN users u ON u.id = $1 WHERE ",
            $where
        )
    };
}

/// One round trip per kind: the resource, its project, the subject's team
/// role on it and the subject's status, all by primary key.
fn facts_sql(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Project => facts_query!(
            // Never matches, through the primary key: `ON FALSE` made SQLite scan.
            "FROM projects p LEFT JOIN generations g ON g.id = p.id AND 1 = 0",
            "p.id = $2"
        ),
        ResourceKind::Generation => facts_query!(
            "FROM generations g JOIN projects p ON p.id = g.project_id",
            "g.id = $2"
        ),
        ResourceKind::Media => facts_query!(
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
}

impl FactsRow {
    fn into_facts(self) -> Result<Facts, AuthzError> {
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
        })
    }
}

/// Rows per INSERT statement: well under both dialects' bind limits.
const INSERT_CHUNK: usize = 1_000;

macro_rules! sql_store {
    ($name:ident, $db:ty, $backend:expr, $migrations:literal, $bind_id:expr) => {
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            pub fn new(pool: sqlx::Pool<$db>) -> Self {
                $name { pool }
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
                sqlx::migrate!($migrations)
                    .run(&self.pool)
                    .await
                    .map_err(|e| AuthzError::Unavailable(format!("migrations failed: {e}")))
            }

            async fn permission_facts(
                &self,
                subject: Uuid,
                resource: ResourceRef,
            ) -> Result<Option<Facts>, AuthzError> {
                let bind_id = $bind_id;
                let row: Option<FactsRow> = sqlx::query_as(facts_sql(resource.kind))
                    .bind(bind_id(subject))
                    .bind(bind_id(resource.id))
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(FactsRow::into_facts).transpose()
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
        }
    };
}

super::auth::auth_store!(PgStore, |id: Uuid| id);
super::auth::auth_store!(SqliteStore, |id: Uuid| id.hyphenated().to_string());

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
