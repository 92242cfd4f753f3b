//! What authentication keeps in the database: password hashes, sessions and
//! single-use refresh tokens. Ids come back as text (`CAST(… AS TEXT)`) so
//! the SQL is the same on both dialects.

use uuid::Uuid;

use crate::error::AuthzError;

/// A user as a login sees them.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user_id: Uuid,
    pub email: String,
    pub password_hash: Option<String>,
    pub disabled: bool,
}

/// A session's standing, with its user's.
#[derive(Clone, Debug)]
pub struct SessionState {
    pub user_id: Uuid,
    pub email: String,
    pub user_disabled: bool,
    pub revoked: bool,
    /// Where the session started (unix seconds, client IP, user agent as
    /// given at login; empty when unknown).
    pub created_at: i64,
    pub client_ip: String,
    pub user_agent: String,
}

/// A new session and its first refresh token.
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_ip: &'a str,
    pub user_agent: &'a str,
    pub now: i64,
    pub refresh_hash: &'a str,
    pub refresh_expires_at: i64,
}

/// One presentation of a refresh token.
pub struct Rotate<'a> {
    pub old_hash: &'a str,
    pub new_hash: &'a str,
    pub now_ms: i64,
    /// A second use this soon after the first is a race, not a theft.
    pub grace_ms: i64,
    pub new_expires_at: i64,
}

/// What presenting a refresh token did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is now used, and `new_hash` replaces it.
    Rotated { session_id: Uuid, user_id: Uuid },
    /// The token had been used before: the session is now revoked.
    Reused { session_id: Uuid },
    /// Another request used the token within the grace period (a client's
    /// concurrent refresh): refused, but the session stays.
    Raced,
    /// The token is past its expiry.
    Expired,
    /// The session was revoked or its user disabled.
    SessionEnded,
    /// No such token.
    Unknown,
}

#[tonic::async_trait]
pub trait AuthStore: Send + Sync {
    async fn credentials(&self, email: &str) -> Result<Option<Credentials>, AuthzError>;
    async fn set_password_hash(&self, user: Uuid, hash: &str) -> Result<(), AuthzError>;
    /// Adds a user; an email already taken is an INVALID_ARGUMENT.
    async fn add_user(&self, id: Uuid, email: &str, hash: &str) -> Result<(), AuthzError>;
    /// Sets the disabled flag (a trigger ends the sessions); the user's id.
    async fn set_disabled(&self, email: &str, disabled: bool) -> Result<Option<Uuid>, AuthzError>;
    async fn create_session(&self, session: NewSession<'_>) -> Result<(), AuthzError>;
    /// Uses `old_hash` once; on success stores `new_hash` for the same session.
    async fn rotate_refresh(&self, rotate: Rotate<'_>) -> Result<Rotation, AuthzError>;
    async fn session_state(&self, session: Uuid) -> Result<Option<SessionState>, AuthzError>;
    /// Email and disabled flag of a user.
    async fn user_state(&self, user: Uuid) -> Result<Option<(String, bool)>, AuthzError>;
    /// (team id, role) of every membership of a user.
    async fn memberships(&self, user: Uuid) -> Result<Vec<(Uuid, String)>, AuthzError>;
    async fn touch_session(&self, session: Uuid, now: i64) -> Result<(), AuthzError>;
    /// Revokes one session; false when it was unknown or already revoked.
    async fn revoke_session(
        &self,
        session: Uuid,
        now: i64,
        reason: &str,
    ) -> Result<bool, AuthzError>;
    /// Revokes every live session of a user; the ids revoked.
    async fn revoke_user_sessions(
        &self,
        user: Uuid,
        now: i64,
        reason: &str,
    ) -> Result<Vec<Uuid>, AuthzError>;
}

/// Parses an id the database returned as text.
pub(crate) fn parse_id(text: &str) -> Result<Uuid, AuthzError> {
    Uuid::parse_str(text).map_err(|e| AuthzError::Internal(format!("stored id {text:?}: {e}")))
}

macro_rules! auth_store {
    // `$one_statement`: whether the database writes a session and its
    // refresh token in one statement (a data-modifying CTE), or needs a
    // transaction of two (SQLite, where a round trip is in-process).
    ($name:ident, $bind_id:expr, $one_statement:expr) => {
        #[tonic::async_trait]
        impl $crate::store::auth::AuthStore for $name {
            async fn credentials(
                &self,
                email: &str,
            ) -> Result<Option<$crate::store::auth::Credentials>, AuthzError> {
                let row: Option<(String, String, Option<String>, bool)> = sqlx::query_as(
                    "SELECT CAST(id AS TEXT), email, password_hash, disabled FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(id, email, password_hash, disabled)| {
                    Ok($crate::store::auth::Credentials {
                        user_id: $crate::store::auth::parse_id(&id)?,
                        email,
                        password_hash,
                        disabled,
                    })
                })
                .transpose()
            }

            async fn set_password_hash(&self, user: Uuid, hash: &str) -> Result<(), AuthzError> {
                sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(($bind_id)(user))
                    .bind(hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_user(&self, id: Uuid, email: &str, hash: &str) -> Result<(), AuthzError> {
                let inserted =
                    sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
                        .bind(($bind_id)(id))
                        .bind(email)
                        .bind(hash)
                        .execute(&self.pool)
                        .await;
                match inserted {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(
                        AuthzError::invalid(format!("a user with email {email:?} already exists")),
                    ),
                    Err(e) => Err(e.into()),
                }
            }

            async fn set_disabled(
                &self,
                email: &str,
                disabled: bool,
            ) -> Result<Option<Uuid>, AuthzError> {
                let row: Option<(String,)> = sqlx::query_as(
                    "UPDATE users SET disabled = $2 WHERE email = $1 RETURNING CAST(id AS TEXT)",
                )
                .bind(email)
                .bind(disabled)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(id,)| $crate::store::auth::parse_id(&id)).transpose()
            }

            async fn create_session(
                &self,
                s: $crate::store::auth::NewSession<'_>,
            ) -> Result<(), AuthzError> {
                if $one_statement {
                    // One round trip: the session and its refresh token in
                    // one statement (PostgreSQL's data-modifying CTE).
                    sqlx::query(
                        "WITH s AS (INSERT INTO sessions \
                         (id, user_id, created_at, client_ip, user_agent, last_seen_at) \
                         VALUES ($1, $2, $3, $4, $5, $3) RETURNING id) \
                         INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                         SELECT $6, id, $3, $7 FROM s",
                    )
                    .bind(($bind_id)(s.id))
                    .bind(($bind_id)(s.user_id))
                    .bind(s.now)
                    .bind(s.client_ip)
                    .bind(s.user_agent)
                    .bind(s.refresh_hash)
                    .bind(s.refresh_expires_at)
                    .execute(&self.pool)
                    .await?;
                    return Ok(());
                }
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, created_at, client_ip, user_agent, last_seen_at) \
                     VALUES ($1, $2, $3, $4, $5, $3)",
                )
                .bind(($bind_id)(s.id))
                .bind(($bind_id)(s.user_id))
                .bind(s.now)
                .bind(s.client_ip)
                .bind(s.user_agent)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(s.refresh_hash)
                .bind(($bind_id)(s.id))
                .bind(s.now)
                .bind(s.refresh_expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_refresh(
                &self,
                r: $crate::store::auth::Rotate<'_>,
            ) -> Result<$crate::store::auth::Rotation, AuthzError> {
                use $crate::store::auth::{Rotation, parse_id};
                let now = r.now_ms / 1000;
                // One UPDATE marks the token used: of two concurrent callers
                // exactly one gets the row back.
                let won: Option<(String, i64)> = sqlx::query_as(
                    "UPDATE refresh_tokens SET used_at_ms = $2 WHERE token_hash = $1 AND used_at_ms IS NULL \
                     RETURNING CAST(session_id AS TEXT), expires_at",
                )
                .bind(r.old_hash)
                .bind(r.now_ms)
                .fetch_optional(&self.pool)
                .await?;
                let Some((session, expires_at)) = won else {
                    let seen: Option<(String, Option<i64>)> = sqlx::query_as(
                        "SELECT CAST(session_id AS TEXT), used_at_ms FROM refresh_tokens WHERE token_hash = $1",
                    )
                    .bind(r.old_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                    return match seen {
                        Some((_, Some(used))) if r.now_ms - used <= r.grace_ms => Ok(Rotation::Raced),
                        Some((session, _)) => {
                            let session_id = parse_id(&session)?;
                            self.revoke_session(session_id, now, "refresh token reuse").await?;
                            Ok(Rotation::Reused { session_id })
                        }
                        None => Ok(Rotation::Unknown),
                    };
                };
                let session_id = parse_id(&session)?;
                if expires_at <= now {
                    return Ok(Rotation::Expired);
                }
                let Some(state) = self.session_state(session_id).await? else {
                    return Ok(Rotation::SessionEnded);
                };
                if state.revoked || state.user_disabled {
                    return Ok(Rotation::SessionEnded);
                }
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(r.new_hash)
                .bind(($bind_id)(session_id))
                .bind(now)
                .bind(r.new_expires_at)
                .execute(&self.pool)
                .await?;
                self.touch_session(session_id, now).await?;
                Ok(Rotation::Rotated {
                    session_id,
                    user_id: state.user_id,
                })
            }

            async fn session_state(
                &self,
                session: Uuid,
            ) -> Result<Option<$crate::store::auth::SessionState>, AuthzError> {
                type Row = (String, String, bool, bool, i64, String, String);
                let row: Option<Row> = sqlx::query_as(
                    "SELECT CAST(s.user_id AS TEXT), u.email, u.disabled, s.revoked_at IS NOT NULL, \
                     s.created_at, s.client_ip, s.user_agent \
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
                )
                .bind(($bind_id)(session))
                .fetch_optional(&self.pool)
                .await?;
                row.map(
                    |(user, email, user_disabled, revoked, created_at, client_ip, user_agent)| {
                        Ok($crate::store::auth::SessionState {
                            user_id: $crate::store::auth::parse_id(&user)?,
                            email,
                            user_disabled,
                            revoked,
                            created_at,
                            client_ip,
                            user_agent,
                        })
                    },
                )
                .transpose()
            }

            async fn user_state(&self, user: Uuid) -> Result<Option<(String, bool)>, AuthzError> {
                Ok(sqlx::query_as("SELECT email, disabled FROM users WHERE id = $1")
                    .bind(($bind_id)(user))
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn memberships(&self, user: Uuid) -> Result<Vec<(Uuid, String)>, AuthzError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT CAST(team_id AS TEXT), role FROM team_members WHERE user_id = $1 ORDER BY 1",
                )
                .bind(($bind_id)(user))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(team, role)| Ok(($crate::store::auth::parse_id(&team)?, role)))
                    .collect()
            }

            async fn touch_session(&self, session: Uuid, now: i64) -> Result<(), AuthzError> {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1")
                    .bind(($bind_id)(session))
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn revoke_session(
                &self,
                session: Uuid,
                now: i64,
                reason: &str,
            ) -> Result<bool, AuthzError> {
                let done = sqlx::query(
                    "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                     WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(($bind_id)(session))
                .bind(now)
                .bind(reason)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn revoke_user_sessions(
                &self,
                user: Uuid,
                now: i64,
                reason: &str,
            ) -> Result<Vec<Uuid>, AuthzError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                     WHERE user_id = $1 AND revoked_at IS NULL RETURNING CAST(id AS TEXT)",
                )
                .bind(($bind_id)(user))
                .bind(now)
                .bind(reason)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|(id,)| $crate::store::auth::parse_id(id))
                    .collect()
            }
        }
    };
}
pub(crate) use auth_store;
