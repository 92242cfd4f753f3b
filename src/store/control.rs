//! What the operational layers keep in the database: the audit log (layer 8)
//! and the kill switches (layer 9). Ids are text on both dialects: an audit
//! subject may be a client IP, and rows must outlive what they mention.

use super::audit_event::{AuditEvent, AuditFilter};
use crate::error::AuthzError;

/// A kill switch: `global` (target empty), `team` or `user` (target id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillSwitch {
    pub scope: String,
    pub target: String,
    pub reason: String,
    pub set_by: String,
    pub set_at_ms: i64,
}

#[tonic::async_trait]
pub trait ControlStore {
    /// Inserts events, ignoring ids already present; returns rows written.
    async fn insert_audit(&self, events: &[AuditEvent]) -> Result<u64, AuthzError>;

    /// The newest events matching the filter, newest first.
    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, AuthzError>;

    async fn kill_switches(&self) -> Result<Vec<KillSwitch>, AuthzError>;

    /// Sets (or replaces) a switch; a trigger records the change so every
    /// replica reloads its switches.
    async fn set_kill_switch(&self, switch: &KillSwitch) -> Result<(), AuthzError>;

    /// Lifts a switch; false when it was not set.
    async fn clear_kill_switch(&self, scope: &str, target: &str) -> Result<bool, AuthzError>;

    /// The user's rate-limit tier (`users.tier`), if set.
    async fn user_tier(&self, user: uuid::Uuid) -> Result<Option<String>, AuthzError>;
}

/// Stamps `ControlStore` for one backend (the SQL is shared).
macro_rules! control_store {
    ($name:ident, $db:ty, $bind_id:expr) => {
        #[tonic::async_trait]
        impl $crate::store::control::ControlStore for $name {
            async fn insert_audit(
                &self,
                events: &[$crate::store::audit_event::AuditEvent],
            ) -> Result<u64, $crate::error::AuthzError> {
                let mut written = 0;
                // 17 binds a row; stay far below either dialect's bind limit.
                for chunk in events.chunks(1_000) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(format!(
                        "INSERT INTO audit_log ({}) ",
                        $crate::store::audit_event::AUDIT_COLUMNS
                    ));
                    query.push_values(chunk, |mut row, e| {
                        row.push_bind(e.id.to_string())
                            .push_bind(e.at_ms)
                            .push_bind(e.kind.to_string())
                            .push_bind(e.subject.clone())
                            .push_bind(e.action.to_string())
                            .push_bind(e.resource_type.to_string())
                            .push_bind(e.resource_id.clone())
                            .push_bind(e.decision.to_string())
                            .push_bind(e.layer.to_string())
                            .push_bind(e.reason.to_string())
                            .push_bind(e.message.clone())
                            .push_bind(e.cache_tier.to_string())
                            .push_bind(e.latency_us)
                            .push_bind(e.request_id.clone())
                            .push_bind(e.client_ip.clone())
                            .push_bind(e.session_id.clone())
                            .push_bind(e.flags.clone())
                            .push_bind(e.user_agent.clone())
                            .push_bind(e.trace_id.clone());
                    });
                    query.push(" ON CONFLICT (id) DO NOTHING");
                    written += query.build().execute(&self.pool).await?.rows_affected();
                }
                Ok(written)
            }

            async fn audit_events(
                &self,
                filter: &$crate::store::audit_event::AuditFilter,
            ) -> Result<Vec<$crate::store::audit_event::AuditEvent>, $crate::error::AuthzError>
            {
                let mut query = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM audit_log WHERE at_ms >= ",
                    $crate::store::audit_event::AUDIT_COLUMNS
                ));
                query.push_bind(filter.since_ms);
                if let Some(subject) = &filter.subject {
                    query.push(" AND subject = ").push_bind(subject.clone());
                }
                if let Some((kind, id)) = &filter.resource {
                    query.push(" AND resource_type = ").push_bind(kind.clone());
                    query.push(" AND resource_id = ").push_bind(id.clone());
                }
                query
                    .push(" ORDER BY at_ms DESC, id DESC LIMIT ")
                    .push_bind(filter.limit);
                let rows: Vec<$crate::store::audit_event::AuditRow> =
                    query.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn kill_switches(
                &self,
            ) -> Result<Vec<$crate::store::control::KillSwitch>, $crate::error::AuthzError> {
                let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                    "SELECT scope, target, reason, set_by, set_at_ms FROM kill_switches \
                     ORDER BY scope, target",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(scope, target, reason, set_by, set_at_ms)| {
                        $crate::store::control::KillSwitch {
                            scope,
                            target,
                            reason,
                            set_by,
                            set_at_ms,
                        }
                    })
                    .collect())
            }

            async fn set_kill_switch(
                &self,
                s: &$crate::store::control::KillSwitch,
            ) -> Result<(), $crate::error::AuthzError> {
                sqlx::query(
                    "INSERT INTO kill_switches (scope, target, reason, set_by, set_at_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, target) DO UPDATE \
                     SET reason = excluded.reason, set_by = excluded.set_by, \
                     set_at_ms = excluded.set_at_ms",
                )
                .bind(&s.scope)
                .bind(&s.target)
                .bind(&s.reason)
                .bind(&s.set_by)
                .bind(s.set_at_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn clear_kill_switch(
                &self,
                scope: &str,
                target: &str,
            ) -> Result<bool, $crate::error::AuthzError> {
                let done =
                    sqlx::query("DELETE FROM kill_switches WHERE scope = $1 AND target = $2")
                        .bind(scope)
                        .bind(target)
                        .execute(&self.pool)
                        .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn user_tier(
                &self,
                user: uuid::Uuid,
            ) -> Result<Option<String>, $crate::error::AuthzError> {
                let bind_id = $bind_id;
                let row: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT tier FROM users WHERE id = $1")
                        .bind(bind_id(user))
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.and_then(|(tier,)| tier))
            }
        }
    };
}
pub(crate) use control_store;
