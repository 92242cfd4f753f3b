//! Settings from defaults, a TOML file, environment variables and flags, in
//! rising precedence. One struct serves clap and serde, so `--help` and the
//! TOML keys can never drift apart. `file` layers a TOML file under the
//! flags; `derived` turns settings into what each subsystem is built from.
//!
//! `Settings` is one long declaration on purpose: its TOML keys are flat
//! and unknown keys are refused (`deny_unknown_fields`), which serde does
//! not support together with `flatten`, so groups of settings cannot move
//! into structs of their own without nesting the TOML keys (every
//! existing config file would break) or accepting misspelt keys.

mod derived;
mod file;

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::support::duration::HumanDuration;

pub use derived::KEEP_CHANGES;

/// Every setting of the service. TOML keys are the field names.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with settings (keys as the long flags, with `_` for `-`).
    #[arg(long, env = "VELRO_CONFIG", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,

    /// gRPC listen address (Authorize, BatchAuthorize, health, reflection).
    #[arg(
        long,
        env = "VELRO_LISTEN",
        default_value = "0.0.0.0:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Ops HTTP listen address (/metrics, /health, /ready).
    #[arg(
        long,
        env = "VELRO_OPS_LISTEN",
        default_value = "0.0.0.0:9090",
        global = true
    )]
    pub ops_listen: SocketAddr,

    /// Database URL: sqlite://FILE (embedded, created if missing) or postgres://….
    #[arg(
        hide_env_values = true,
        long,
        env = "VELRO_DATABASE_URL",
        default_value = "sqlite://velro-authz.db",
        global = true
    )]
    pub database_url: String,

    /// Most database connections in the pool.
    #[arg(
        long,
        env = "VELRO_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// Decision-pool connections opened at start-up and kept open (at most
    /// `db_max_connections`): a miss after a start or a quiet spell does
    /// not wait for a new connection (and a new PostgreSQL backend).
    #[arg(
        long,
        env = "VELRO_DB_MIN_CONNECTIONS",
        default_value_t = 4,
        global = true
    )]
    pub db_min_connections: u32,

    /// How long a query waits for a pooled connection before failing (UNAVAILABLE).
    #[arg(
        long,
        env = "VELRO_DB_ACQUIRE_TIMEOUT",
        default_value = "2s",
        global = true
    )]
    pub db_acquire_timeout: HumanDuration,

    /// Run migrations when `serve` starts.
    #[arg(long, env = "VELRO_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate_on_start: bool,

    /// Seed a small demo data set into an empty embedded (SQLite) database.
    #[arg(long, env = "VELRO_DEMO_DATA", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub demo_data: bool,

    /// Most permission sets held by the in-process cache tier.
    #[arg(
        long,
        env = "VELRO_CACHE_CAPACITY",
        default_value_t = 200_000,
        global = true
    )]
    pub cache_capacity: u64,

    /// How long the in-process tier keeps a permission set (bounds memory;
    /// freshness comes from the change log).
    #[arg(long, env = "VELRO_CACHE_TTL", default_value = "30s", global = true)]
    pub cache_ttl: HumanDuration,

    /// Redis URL for the shared cache tier (e.g. redis://127.0.0.1:6379);
    /// none: in-process tier only.
    #[arg(hide_env_values = true, long, env = "VELRO_REDIS_URL", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster for the shared cache tier and the
    /// distributed rate limiter, comma-separated (instead of `redis_url`).
    #[arg(
        hide_env_values = true,
        long,
        env = "VELRO_REDIS_CLUSTER_URLS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_cluster_urls: Vec<String>,

    /// PEM CA that signed the Redis server's certificate (`rediss://` URLs),
    /// when it is not in the system's trust store.
    #[arg(long, env = "VELRO_REDIS_CA_FILE", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,

    /// Prefix of every Redis key this service writes.
    #[arg(
        long,
        env = "VELRO_REDIS_PREFIX",
        default_value = "velro-authz:",
        global = true
    )]
    pub redis_prefix: String,

    /// Deadline of every Redis call; a slower Redis is skipped.
    #[arg(
        long,
        env = "VELRO_REDIS_TIMEOUT",
        default_value = "100ms",
        global = true
    )]
    pub redis_timeout: HumanDuration,

    /// Lifetime of a permission set in Redis.
    #[arg(long, env = "VELRO_REDIS_TTL", default_value = "5m", global = true)]
    pub redis_ttl: HumanDuration,

    /// Use the database cache tier (table `permission_cache`) below Redis.
    #[arg(long, env = "VELRO_DB_CACHE", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub db_cache: bool,

    /// Lifetime of a permission set in the database tier.
    #[arg(long, env = "VELRO_DB_CACHE_TTL", default_value = "10m", global = true)]
    pub db_cache_ttl: HumanDuration,

    /// How often the change log is read besides notifications (the
    /// invalidation bound when notifications are lost, and on SQLite).
    #[arg(
        long,
        env = "VELRO_CHANGE_POLL",
        default_value = "250ms",
        global = true
    )]
    pub change_poll: HumanDuration,

    /// With no successful read of the change log for this long, cached
    /// answers are not used (fail closed rather than stale).
    #[arg(long, env = "VELRO_CACHE_MAX_LAG", default_value = "5s", global = true)]
    pub cache_max_lag: HumanDuration,

    /// Most items in one BatchAuthorize call.
    #[arg(
        long,
        env = "VELRO_MAX_BATCH_ITEMS",
        default_value_t = 1_000,
        global = true
    )]
    pub max_batch_items: usize,

    /// Largest accepted gRPC message, in bytes.
    #[arg(long, env = "VELRO_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_message_bytes: usize,

    /// Server-side deadline of every RPC (a shorter client deadline wins).
    #[arg(
        long,
        env = "VELRO_REQUEST_TIMEOUT",
        default_value = "5s",
        global = true
    )]
    pub request_timeout: HumanDuration,

    /// Most concurrent HTTP/2 streams per connection.
    #[arg(
        long,
        env = "VELRO_MAX_CONCURRENT_STREAMS",
        default_value_t = 256,
        global = true
    )]
    pub max_concurrent_streams: u32,

    /// Most open connections on the gRPC port (0: the open-file limit less
    /// 1,000 kept for the ops port, the pools and files). A full port closes
    /// a connection that never spoke, else the longest idle, to admit a new
    /// one; when every connection is busy the new one is refused.
    #[arg(
        long,
        env = "VELRO_MAX_CONNECTIONS",
        default_value_t = 0,
        global = true
    )]
    pub max_connections: usize,

    /// A connection that sends nothing (no HTTP/2 preface, no HTTP request)
    /// within this time after it was accepted is closed (both ports).
    #[arg(
        long,
        env = "VELRO_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub handshake_timeout: HumanDuration,

    /// A gRPC connection without open requests for this long is closed
    /// (keepalive pings do not count as use).
    #[arg(long, env = "VELRO_IDLE_TIMEOUT", default_value = "2m", global = true)]
    pub idle_timeout: HumanDuration,

    /// A gRPC connection with open requests that completes none for this
    /// long (a client that stopped reading its responses) is closed, and
    /// what it held is freed.
    #[arg(
        long,
        env = "VELRO_STUCK_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub stuck_timeout: HumanDuration,

    /// Response bytes one gRPC connection may hold for a client that has not
    /// read them; beyond it, new requests on it get RESOURCE_EXHAUSTED.
    #[arg(long, env = "VELRO_MAX_PENDING_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_pending_response_bytes: usize,

    /// Close gRPC connections after this age (with a GOAWAY and a grace of
    /// `request_timeout`), so clients rebalance across replicas; unset: never.
    #[arg(long, env = "VELRO_MAX_CONNECTION_AGE", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<HumanDuration>,

    /// Most open connections on the ops port; idle ones close after 30 s.
    #[arg(
        long,
        env = "VELRO_OPS_MAX_CONNECTIONS",
        default_value_t = 256,
        global = true
    )]
    pub ops_max_connections: usize,

    /// Requests admitted at once (AuthorizationService); more are shed
    /// RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "VELRO_MAX_IN_FLIGHT",
        default_value_t = 10_000,
        global = true
    )]
    pub max_in_flight: usize,

    /// New requests are shed while the async runtime's scheduling lag (how
    /// late a ready task runs: a saturated CPU) is above this.
    #[arg(
        long,
        env = "VELRO_MAX_RUNTIME_LAG",
        default_value = "50ms",
        global = true
    )]
    pub max_runtime_lag: HumanDuration,

    /// PEM certificate (chain) for TLS on the gRPC port; with `tls_key`.
    /// Unset: plaintext (the embedded default, or behind a mesh that
    /// terminates TLS). Reloaded when the file changes.
    #[arg(long, env = "VELRO_TLS_CERT", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `tls_cert`.
    #[arg(long, env = "VELRO_TLS_KEY", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: set, every client must present a certificate it
    /// signed (mutual TLS), and the certificate names the caller.
    #[arg(long, env = "VELRO_TLS_CLIENT_CA", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,

    /// On SIGTERM/SIGINT: how long to report NOT_SERVING before closing listeners.
    #[arg(long, env = "VELRO_DRAIN_DELAY", default_value = "0s", global = true)]
    pub drain_delay: HumanDuration,

    /// `iss` of the access tokens this service issues.
    #[arg(
        long,
        env = "VELRO_TOKEN_ISSUER",
        default_value = "velro-authz",
        global = true
    )]
    pub token_issuer: String,

    /// `aud` of the access tokens this service issues (and requires).
    #[arg(
        long,
        env = "VELRO_TOKEN_AUDIENCE",
        default_value = "velro",
        global = true
    )]
    pub token_audience: String,

    /// Lifetime of an access token.
    #[arg(
        long,
        env = "VELRO_ACCESS_TOKEN_TTL",
        default_value = "15m",
        global = true
    )]
    pub access_token_ttl: HumanDuration,

    /// Lifetime of a refresh token (each use replaces it).
    #[arg(
        long,
        env = "VELRO_REFRESH_TOKEN_TTL",
        default_value = "720h",
        global = true
    )]
    pub refresh_token_ttl: HumanDuration,

    /// A second use of a refresh token this soon after the first is taken for
    /// a client's concurrent refresh and refused without revoking the
    /// session; any later reuse revokes it (theft detection).
    #[arg(
        long,
        env = "VELRO_REFRESH_REUSE_GRACE",
        default_value = "2s",
        global = true
    )]
    pub refresh_reuse_grace: HumanDuration,

    /// Clock skew tolerated on `exp` and `nbf` of our tokens.
    #[arg(long, env = "VELRO_TOKEN_LEEWAY", default_value = "30s", global = true)]
    pub token_leeway: HumanDuration,

    /// Ed25519 PEM key files (`velro-authz keys generate`); the last one signs,
    /// all verify. None: a throw-away key per process (tokens die with it).
    #[arg(
        long = "signing-key",
        env = "VELRO_SIGNING_KEYS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub signing_keys: Vec<PathBuf>,

    /// Ed25519 PEM key files that verify tokens but never sign: how a new
    /// key reaches every replica before any of them signs with it.
    #[arg(
        long = "verify-key",
        env = "VELRO_VERIFY_KEYS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub verify_keys: Vec<PathBuf>,

    /// argon2id memory cost in KiB (OWASP: 19456).
    #[arg(
        long,
        env = "VELRO_ARGON2_MEMORY_KIB",
        default_value_t = 19_456,
        global = true
    )]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (OWASP: 2).
    #[arg(
        long,
        env = "VELRO_ARGON2_ITERATIONS",
        default_value_t = 2,
        global = true
    )]
    pub argon2_iterations: u32,

    /// argon2id lanes (OWASP: 1).
    #[arg(
        long,
        env = "VELRO_ARGON2_PARALLELISM",
        default_value_t = 1,
        global = true
    )]
    pub argon2_parallelism: u32,

    /// Threads hashing passwords at once (0: one less than the CPUs, at least one).
    #[arg(
        long,
        env = "VELRO_PASSWORD_WORKERS",
        default_value_t = 0,
        global = true
    )]
    pub password_workers: usize,

    /// Logins that may wait for a hashing thread; more get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "VELRO_PASSWORD_QUEUE",
        default_value_t = 64,
        global = true
    )]
    pub password_queue: usize,

    /// A password login is admitted only if its hash can start within this
    /// (judged from the measured hash time, padded by its variation, and
    /// the logins ahead); others get RESOURCE_EXHAUSTED at once with the
    /// expected wait as RetryInfo, and a queued one whose wait still
    /// passes this is refused when its turn comes.
    #[arg(
        long,
        env = "VELRO_PASSWORD_MAX_WAIT",
        default_value = "200ms",
        global = true
    )]
    pub password_max_wait: HumanDuration,

    /// The hashing threads' nice value, 0 to 19 (0: the process's own).
    /// Above 0, a contended CPU runs the decisions first and a hash gets
    /// what is left: a login can wait 20 ms, an authorization should not.
    #[arg(
        long,
        env = "VELRO_PASSWORD_NICE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u8).range(0..=19),
        global = true
    )]
    pub password_nice: u8,

    /// Failed logins per account before delays start.
    #[arg(
        long,
        env = "VELRO_LOGIN_FREE_FAILURES",
        default_value_t = 5,
        global = true
    )]
    pub login_free_failures: u32,

    /// Failed logins per client IP before delays start.
    #[arg(
        long,
        env = "VELRO_LOGIN_IP_FREE_FAILURES",
        default_value_t = 20,
        global = true
    )]
    pub login_ip_free_failures: u32,

    /// First delay after the free failures; doubles with each further failure.
    #[arg(
        long,
        env = "VELRO_LOGIN_BASE_DELAY",
        default_value = "1s",
        global = true
    )]
    pub login_base_delay: HumanDuration,

    /// Longest delay between attempts.
    #[arg(
        long,
        env = "VELRO_LOGIN_MAX_DELAY",
        default_value = "15m",
        global = true
    )]
    pub login_max_delay: HumanDuration,

    /// How often a replica prunes the change log, old audit events, ended
    /// sessions and expired cache rows (one replica at a time); 0s: never
    /// (`velro-authz prune` does it by hand).
    #[arg(long, env = "VELRO_PRUNE_EVERY", default_value = "1h", global = true)]
    pub prune_every: HumanDuration,

    /// Audit events older than this are pruned; 0s keeps them forever.
    #[arg(
        long,
        env = "VELRO_AUDIT_RETENTION",
        default_value = "90d",
        global = true
    )]
    pub audit_retention: HumanDuration,

    /// Verified tokens kept in memory.
    #[arg(
        long,
        env = "VELRO_TOKEN_CACHE_CAPACITY",
        default_value_t = 100_000,
        global = true
    )]
    pub token_cache_capacity: u64,

    /// How long a verified token is trusted without looking at its session
    /// again: the bound for revocations made by another replica or the CLI.
    #[arg(
        long,
        env = "VELRO_TOKEN_CACHE_TTL",
        default_value = "10s",
        global = true
    )]
    pub token_cache_ttl: HumanDuration,

    /// Secret the admin RPCs require in `x-velro-admin-token`; unset disables them.
    #[arg(hide_env_values = true, long, env = "VELRO_ADMIN_TOKEN", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,

    /// Envoy ext_authz: route table and headers (TOML only: `[ext_authz]`).
    #[arg(skip)]
    #[serde(default)]
    pub ext_authz: crate::api::ext_authz::ExtAuthzConfig,

    /// Who may call which RPCs, by certificate identity or preshared key
    /// (TOML only: `[[callers]]`); empty: every caller may call everything.
    #[arg(skip)]
    #[serde(default)]
    pub callers: Vec<crate::api::transport::callers::CallerConfig>,

    /// Layer 4 rules: networks, countries, user agents, sessions (TOML only:
    /// `[security_context]`).
    #[arg(skip)]
    #[serde(default)]
    pub security_context: crate::layers::security_context::SecurityContextConfig,

    /// Layer 6: signed media URL keys and lifetime (TOML only: `[media_urls]`).
    #[arg(skip)]
    #[serde(default)]
    pub media_urls: crate::layers::media_access::signer::MediaUrlConfig,

    /// Layer 10: tiers, quotas, Redis sharing, anomaly model (TOML only:
    /// `[rate_limit]`).
    #[arg(skip)]
    #[serde(default)]
    pub rate_limit: crate::layers::rate_limit::limiter::RateLimitConfig,

    /// Layer 9: break-glass users (TOML only: `[emergency]`).
    #[arg(skip)]
    #[serde(default)]
    pub emergency: crate::layers::emergency::switches::EmergencyConfig,

    /// Shadow mode and gradual rollout of the guards (layers 4, 9, 10) and
    /// ext_authz's dry run; reloaded without a restart (TOML only:
    /// `[rollout]`).
    #[arg(skip)]
    #[serde(default)]
    pub rollout: crate::engine::rollout::RolloutConfig,

    /// Pools besides the decisions pool (audit writer, followers, logins,
    /// admin) and an optional read replica (TOML only: `[db_pools]`).
    #[arg(skip)]
    #[serde(default)]
    pub db_pools: crate::store::pools::PoolsConfig,

    /// Layer 8: queue, spill file, JSON lines, denial bursts (TOML only:
    /// `[audit]`).
    #[arg(skip)]
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,

    /// External token issuers (TOML only: `[[external_issuers]]`).
    #[arg(skip)]
    #[serde(default)]
    pub external_issuers: Vec<crate::auth::jwt::ExternalIssuer>,

    /// Parent links layer 5 walks for generation inheritance; a longer
    /// chain is a data-integrity fault (denied, alerted).
    #[arg(
        long,
        env = "VELRO_MAX_CHAIN_DEPTH",
        default_value_t = crate::layers::inheritance::DEFAULT_MAX_DEPTH,
        global = true
    )]
    pub max_chain_depth: u32,

    /// OTLP/gRPC collector for traces (e.g. http://otel-collector:4317);
    /// unset: no spans are exported and no exporter runs.
    #[arg(long, env = "VELRO_OTLP_ENDPOINT", global = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,

    /// Share of new traces sampled (0.0 to 1.0); a request whose caller
    /// sampled its trace is always traced.
    #[arg(
        long,
        env = "VELRO_TRACE_SAMPLING",
        default_value_t = 1.0,
        global = true
    )]
    pub trace_sampling: f64,

    /// Log filter (tracing `EnvFilter` syntax; RUST_LOG wins when set).
    #[arg(long, env = "VELRO_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_parse() {
        let s = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.listen.port(), 50051);
        assert_eq!(s.request_timeout, HumanDuration(Duration::from_secs(5)));
    }
}
