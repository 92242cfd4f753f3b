//! Retention: what grows without end is pruned. The change log below the
//! revision every live replica has read (and never the most recent
//! entries, which a starting replica reads), audit events older than the
//! retention, ended sessions, expired refresh tokens and expired rows of
//! the database cache tier. Deletes run in bounded chunks.

use crate::error::AuthzError;

/// Rows deleted per statement, so no delete holds locks for long.
pub const CHUNK: i64 = 10_000;

/// What to keep.
#[derive(Clone, Debug)]
pub struct PruneLimits {
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// Audit events older than this many milliseconds go (0: keep all).
    pub audit_retention_ms: i64,
    /// Replicas not seen for this long no longer hold the log back.
    pub replica_timeout_ms: i64,
    /// The newest change-log entries always kept.
    pub keep_changes: i64,
    /// Revoked sessions are kept this long (seconds) for investigations.
    pub ended_session_grace_s: i64,
}

/// What a prune deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub changes: u64,
    pub audit_events: u64,
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub cache_rows: u64,
    /// The revision the change log now starts after.
    pub change_floor: i64,
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pruned {} change-log entries (below revision {}), {} audit events, {} ended sessions, \
             {} refresh tokens, {} expired cache rows",
            self.changes,
            self.change_floor,
            self.audit_events,
            self.sessions,
            self.refresh_tokens,
            self.cache_rows
        )
    }
}

#[tonic::async_trait]
pub trait RetentionStore {
    /// Records how far `replica` has read the change log.
    async fn heartbeat(
        &self,
        replica: &str,
        applied_revision: i64,
        now_ms: i64,
    ) -> Result<(), AuthzError>;

    /// Prunes, unless another replica is pruning right now (`None`).
    async fn prune(&self, limits: &PruneLimits) -> Result<Option<PruneReport>, AuthzError>;
}

/// Deletes `sql` (which deletes at most `CHUNK` rows per run, bound `$1`)
/// until nothing is left.
macro_rules! chunked {
    ($conn:expr, $sql:expr, $bind:expr) => {{
        let mut total: u64 = 0;
        loop {
            let done = sqlx::query($sql)
                .bind($bind)
                .bind($crate::store::retention::CHUNK)
                .execute(&mut *$conn)
                .await?
                .rows_affected();
            total += done;
            if done < $crate::store::retention::CHUNK as u64 {
                break total;
            }
        }
    }};
}
pub(crate) use chunked;

/// Stamps `RetentionStore` for one backend; `$lock` and `$unlock` take the
/// cross-replica prune lock on one connection (PostgreSQL advisory lock;
/// SQLite has one writer and needs none).
macro_rules! retention_store {
    ($name:ident, $lock:expr, $unlock:expr) => {
        #[tonic::async_trait]
        impl $crate::store::retention::RetentionStore for $name {
            async fn heartbeat(
                &self,
                replica: &str,
                applied_revision: i64,
                now_ms: i64,
            ) -> Result<(), $crate::error::AuthzError> {
                sqlx::query(
                    "INSERT INTO authz_replicas (replica_id, applied_revision, seen_at_ms) \
                     VALUES ($1, $2, $3) ON CONFLICT (replica_id) DO UPDATE SET \
                     applied_revision = excluded.applied_revision, seen_at_ms = excluded.seen_at_ms",
                )
                .bind(replica)
                .bind(applied_revision)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn prune(
                &self,
                limits: &$crate::store::retention::PruneLimits,
            ) -> Result<
                Option<$crate::store::retention::PruneReport>,
                $crate::error::AuthzError,
            > {
                use $crate::store::retention::{PruneReport, chunked};
                let mut conn = self.pool.acquire().await?;
                let locked: bool = sqlx::query_scalar($lock).fetch_one(&mut *conn).await?;
                if !locked {
                    return Ok(None);
                }
                let outcome = async {
                    let mut report = PruneReport::default();
                    let newest: i64 =
                        sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM authz_changes")
                            .fetch_one(&mut *conn)
                            .await?;
                    let live: Option<i64> = sqlx::query_scalar(
                        "SELECT MIN(applied_revision) FROM authz_replicas WHERE seen_at_ms > $1",
                    )
                    .bind(limits.now_ms - limits.replica_timeout_ms)
                    .fetch_one(&mut *conn)
                    .await?;
                    let floor = (newest - limits.keep_changes).min(live.unwrap_or(newest));
                    report.change_floor = floor.max(0);
                    report.changes = chunked!(
                        conn,
                        "DELETE FROM authz_changes WHERE revision IN (SELECT revision FROM \
                         authz_changes WHERE revision <= $1 LIMIT $2)",
                        floor
                    );
                    sqlx::query("DELETE FROM authz_replicas WHERE seen_at_ms <= $1")
                        .bind(limits.now_ms - limits.replica_timeout_ms)
                        .execute(&mut *conn)
                        .await?;
                    if limits.audit_retention_ms > 0 {
                        report.audit_events = chunked!(
                            conn,
                            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
                             WHERE at_ms < $1 LIMIT $2)",
                            limits.now_ms - limits.audit_retention_ms
                        );
                    }
                    let now_s = limits.now_ms / 1000;
                    report.refresh_tokens = chunked!(
                        conn,
                        "DELETE FROM refresh_tokens WHERE token_hash IN (SELECT token_hash FROM \
                         refresh_tokens WHERE expires_at < $1 LIMIT $2)",
                        now_s
                    );
                    // Ended: revoked past the grace, or with no live refresh
                    // token left (the session can never be used again).
                    report.sessions = chunked!(
                        conn,
                        "DELETE FROM sessions WHERE id IN (SELECT s.id FROM sessions s WHERE \
                         (s.revoked_at IS NOT NULL AND s.revoked_at < $1) OR (s.created_at < $1 \
                         AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id)) \
                         LIMIT $2)",
                        now_s - limits.ended_session_grace_s
                    );
                    report.cache_rows = chunked!(
                        conn,
                        "DELETE FROM permission_cache WHERE cache_key IN (SELECT cache_key FROM \
                         permission_cache WHERE expires_at < $1 LIMIT $2)",
                        now_s
                    );
                    Ok::<_, $crate::error::AuthzError>(report)
                }
                .await;
                let _ = sqlx::query($unlock).execute(&mut *conn).await;
                outcome.map(Some)
            }
        }
    };
}
pub(crate) use retention_store;
