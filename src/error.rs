//! The one error type of the service. What each variant looks like on the
//! wire (gRPC code, HTTP status, retry) is one table: `api::status`.

/// When a shed request may try again, unless the shedder knows better.
pub const OVERLOAD_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthzError {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing, malformed, expired or revoked credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials are fine but the caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was hit (queue full, too much at once).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit was hit: retry after the given time.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// This replica is beyond its capacity (its own queues are full): the
    /// request was shed at once; retry after the given time, or elsewhere.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A dependency (the database) cannot answer; the decision fails closed.
    #[error("{0}")]
    Unavailable(String),
    /// The request ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or corrupted data; never a reason to allow.
    #[error("{0}")]
    Internal(String),
}

impl AuthzError {
    pub fn invalid(message: impl Into<String>) -> Self {
        AuthzError::InvalidArgument(message.into())
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        AuthzError::Unauthenticated(message.into())
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        AuthzError::Overloaded {
            message: message.into(),
            retry_after: OVERLOAD_RETRY,
        }
    }

    /// A short name for metrics labels.
    pub fn code_name(&self) -> &'static str {
        match self {
            AuthzError::InvalidArgument(_) => "invalid_argument",
            AuthzError::Unauthenticated(_) => "unauthenticated",
            AuthzError::PermissionDenied(_) => "permission_denied",
            AuthzError::ResourceExhausted(_)
            | AuthzError::RateLimited { .. }
            | AuthzError::Overloaded { .. } => "resource_exhausted",
            AuthzError::Unavailable(_) => "unavailable",
            AuthzError::DeadlineExceeded(_) => "deadline_exceeded",
            AuthzError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for AuthzError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            // Every connection was busy with our own work: a queue of ours,
            // not a failure of the database (see `Store::pool_busy`).
            sqlx::Error::PoolTimedOut => {
                AuthzError::overloaded("the database connection pool is busy; retry shortly")
            }
            // The database's own words stay in the log, under an id the
            // client gets instead (they may quote data or the schema).
            // A connection that broke, or one whose peer spoke garbage while
            // it opened (a proxy or load balancer with no database behind).
            sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => {
                let incident = incident_id();
                tracing::warn!(%incident, "the database is unreachable: {error}");
                AuthzError::Unavailable(format!(
                    "the database is unreachable (incident {incident} in the server log)"
                ))
            }
            other => {
                let incident = incident_id();
                tracing::error!(%incident, "database error: {other}");
                AuthzError::Internal(format!(
                    "internal error (incident {incident} in the server log)"
                ))
            }
        }
    }
}

/// A short id that ties a client's error to the server log line.
fn incident_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
