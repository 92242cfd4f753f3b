//! What the operational layers keep in the database: the audit log (layer 8)
//! and the kill switches (layer 9). Ids are text on both dialects: an audit
//! subject may be a client IP, and rows must outlive what they mention.

use futures::{StreamExt, future::BoxFuture};

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

/// One insert's parameters stay below this many bytes: a message longer
/// than one TLS record (16 KiB) is written as several small segments, and
/// without TCP_NODELAY (sqlx 0.9.0 does not set it, transact-rs/sqlx#4335)
/// the last one waits for the server's delayed ACK, about 40 ms per insert.
const INSERT_BYTES: usize = 12 * 1024;
/// Inserts of one batch in flight at once (the audit pool has 4 connections
/// by default).
const INSERTS_AT_ONCE: usize = 4;

/// About what one event adds to an insert's parameters.
fn encoded_len(e: &AuditEvent) -> usize {
    let texts = [
        e.kind.len(),
        e.subject.len(),
        e.action.len(),
        e.resource_type.len(),
        e.resource_id.len(),
        e.decision.len(),
        e.layer.len(),
        e.reason.len(),
        e.message.len(),
        e.cache_tier.len(),
        e.request_id.len(),
        e.client_ip.len(),
        e.session_id.len(),
        e.flags.len(),
        e.user_agent.len(),
        e.trace_id.len(),
    ];
    // An id's 36 characters, two int8 values, and a length word per value.
    36 + 16 + 19 * 4 + texts.iter().sum::<usize>()
}

/// PostgreSQL: one statement whatever the batch's size, a column per
/// array, so it is prepared once per connection and binds 19 values instead
/// of 19 a row; batches are cut to stay within one TLS record.
pub(crate) async fn insert_audit_postgres(
    store: &super::PgStore,
    events: &[AuditEvent],
) -> Result<u64, AuthzError> {
    let pool = store.pool();
    let mut chunks = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let mut bytes = 0;
        let take = rest
            .iter()
            .take_while(|e| {
                bytes += encoded_len(e);
                bytes <= INSERT_BYTES
            })
            .count()
            .max(1);
        let (chunk, after) = rest.split_at(take);
        chunks.push(chunk);
        rest = after;
    }
    // Several at once, on the pool's connections: each is a round trip.
    let inserts: Vec<BoxFuture<'_, Result<u64, AuthzError>>> = chunks
        .into_iter()
        .map(|chunk| Box::pin(insert_unnest(pool, chunk)) as BoxFuture<'_, _>)
        .collect();
    let mut inserts = futures::stream::iter(inserts).buffer_unordered(INSERTS_AT_ONCE);
    let mut written = 0;
    while let Some(rows) = inserts.next().await {
        written += rows?;
    }
    Ok(written)
}

async fn insert_unnest(pool: &sqlx::PgPool, events: &[AuditEvent]) -> Result<u64, AuthzError> {
    let text = |f: fn(&AuditEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let at_ms: Vec<i64> = events.iter().map(|e| e.at_ms).collect();
    let latency_us: Vec<i64> = events.iter().map(|e| e.latency_us).collect();
    let written = sqlx::query(
        "INSERT INTO audit_log (id, at_ms, kind, subject, action, resource_type, resource_id, \
         decision, layer, reason, message, cache_tier, latency_us, request_id, client_ip, \
         session_id, flags, user_agent, trace_id) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::int8[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], \
         $19::text[]) ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(at_ms)
    .bind(text(|e| &e.kind))
    .bind(text(|e| &e.subject))
    .bind(text(|e| &e.action))
    .bind(text(|e| &e.resource_type))
    .bind(text(|e| &e.resource_id))
    .bind(text(|e| &e.decision))
    .bind(text(|e| &e.layer))
    .bind(text(|e| &e.reason))
    .bind(text(|e| &e.message))
    .bind(text(|e| &e.cache_tier))
    .bind(latency_us)
    .bind(text(|e| &e.request_id))
    .bind(text(|e| &e.client_ip))
    .bind(text(|e| &e.session_id))
    .bind(text(|e| &e.flags))
    .bind(text(|e| &e.user_agent))
    .bind(text(|e| &e.trace_id))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(written)
}

/// Stamps `ControlStore` for one backend (the SQL is shared but for the
/// audit insert, `$insert_audit`).
macro_rules! control_store {
    ($name:ident, $db:ty, $bind_id:expr, $insert_audit:path) => {
        #[tonic::async_trait]
        impl $crate::store::control::ControlStore for $name {
            async fn insert_audit(
                &self,
                events: &[$crate::store::audit_event::AuditEvent],
            ) -> Result<u64, $crate::error::AuthzError> {
                $insert_audit(self, events).await
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
