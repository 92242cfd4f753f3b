//! What each subsystem is built from, derived from the settings in one
//! place: hashing, connection bounds, Redis, TLS, traces, retention, pools.

use super::Settings;
use crate::{
    api::transport::{connections::ConnectionLimits, tls::TlsFiles},
    support::redis_conn::{RedisEndpoint, RedisNodes},
};

/// A replica silent this long no longer holds the change log back.
const REPLICA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The newest change-log entries never pruned: what a starting replica
/// reads to judge shared-tier entries.
pub const KEEP_CHANGES: i64 = 100_000;
/// Revoked sessions stay this long for investigations.
const ENDED_SESSION_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// File descriptors kept out of the gRPC port's connection bound.
const FILES_KEPT: usize = 1_000;
/// An ops connection (HTTP/1 keep-alive) idle this long is closed.
const OPS_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

impl Settings {
    /// Hashing threads: as configured, or one less than the CPUs.
    pub fn password_threads(&self) -> usize {
        match self.password_workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }

    /// The gRPC port's connection bounds (`max_connections` resolved
    /// against the open-file limit).
    pub fn grpc_connections(&self) -> ConnectionLimits {
        let max_connections = match self.max_connections {
            0 => rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map_or(10_000, |(soft, _)| soft as usize)
                .saturating_sub(FILES_KEPT)
                .max(64),
            n => n,
        };
        ConnectionLimits {
            max_connections,
            handshake_timeout: self.handshake_timeout.0,
            idle_timeout: self.idle_timeout.0,
            stuck_timeout: self.stuck_timeout.0,
            max_pending_bytes: self.max_pending_response_bytes,
        }
    }

    /// Where Redis is (one server or a cluster's seed nodes, with the CA
    /// for `rediss://`), if it is configured.
    pub fn redis_endpoint(&self) -> Result<Option<RedisEndpoint>, String> {
        let nodes = match (&self.redis_url, self.redis_cluster_urls.is_empty()) {
            (None, true) => return Ok(None),
            (Some(url), true) => RedisNodes::Single(url.clone()),
            (None, false) => RedisNodes::Cluster(self.redis_cluster_urls.clone()),
            (Some(_), false) => {
                return Err(
                    "set redis_url (one server) or redis_cluster_urls (a cluster), not both".into(),
                );
            }
        };
        let ca_pem = match &self.redis_ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("redis_ca_file {}: {e}", path.display()))?,
            ),
        };
        Ok(Some(RedisEndpoint { nodes, ca_pem }))
    }

    /// The gRPC port's TLS files, if TLS is on.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            _ => Err("TLS needs both tls_cert and tls_key (tls_client_ca adds mutual TLS)".into()),
        }
    }

    /// Where traces go, if anywhere.
    pub fn trace_settings(&self) -> Option<crate::support::telemetry::TraceSettings> {
        let endpoint = self.otlp_endpoint.clone()?;
        let instance = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Some(crate::support::telemetry::TraceSettings {
            endpoint,
            sampling: self.trace_sampling,
            service_name: "velro-authz".into(),
            instance,
        })
    }

    /// The ops port's connection bounds (HTTP/1: idle means no bytes).
    pub fn ops_connections(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.ops_max_connections,
            handshake_timeout: self.handshake_timeout.0,
            idle_timeout: OPS_IDLE,
            stuck_timeout: OPS_IDLE,
            max_pending_bytes: usize::MAX,
        }
    }

    /// What a prune keeps, as of `now_ms`.
    pub fn prune_limits(&self, now_ms: i64) -> crate::store::retention::PruneLimits {
        crate::store::retention::PruneLimits {
            now_ms,
            audit_retention_ms: self.audit_retention.0.as_millis() as i64,
            replica_timeout_ms: REPLICA_TIMEOUT.as_millis() as i64,
            keep_changes: KEEP_CHANGES,
            ended_session_grace_s: ENDED_SESSION_GRACE.as_secs() as i64,
        }
    }

    /// The decisions pool of a serving replica.
    pub fn pool(&self) -> crate::store::PoolConfig {
        crate::store::PoolConfig {
            max_connections: self.db_max_connections,
            min_connections: self.db_min_connections,
            acquire_timeout: self.db_acquire_timeout.0,
        }
    }

    /// A one-shot command's pool: it opens only the connections it uses
    /// (keeping `db_min_connections` open serves no later request).
    pub fn command_pool(&self) -> crate::store::PoolConfig {
        crate::store::PoolConfig {
            min_connections: 0,
            ..self.pool()
        }
    }
}
