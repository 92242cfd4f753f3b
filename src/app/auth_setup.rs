//! Builds the authenticator once at start-up from the settings: keys,
//! issuers, the hashing pool (and its dummy hash) and the throttles.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::{
    AfterLogin, AuthConfig, Authenticator,
    events::SecurityEvents,
    jwt::TokenService,
    keys::KeyRing,
    password::{HashWorkers, PasswordHashing},
    throttle::{Throttle, ThrottlePolicy},
};
use crate::support::{foreground::Foreground, metrics::Metrics};
use crate::{app::config::Settings, error::AuthzError, store::Store};

/// `after_login` runs for each newly verified principal (predictive warming);
/// `logins` counts the password logins in progress.
pub async fn authenticator(
    settings: &Settings,
    store: Arc<dyn Store>,
    (after_login, logins): (Option<AfterLogin>, Arc<Foreground>),
    audit: Option<Arc<AuditLog>>,
    metrics: Option<&Metrics>,
) -> Result<Arc<Authenticator>, AuthzError> {
    let keys = Arc::new(KeyRing::load(
        &settings.signing_keys,
        &settings.verify_keys,
    )?);
    if keys.current().ephemeral {
        tracing::warn!(
            "no signing_keys configured: tokens are signed with a throw-away key and die with this \
             process (make one with `velro-authz keys generate`)"
        );
    }
    let tokens = TokenService::new(
        keys,
        &settings.token_issuer,
        &settings.token_audience,
        settings.token_leeway.0.as_secs(),
        settings.access_token_ttl.0.as_secs(),
        &settings.external_issuers,
    )?;
    tokens.start_jwks_refresh().await;
    let hashing = PasswordHashing::new(
        settings.hash_params(),
        HashWorkers {
            threads: settings.password_threads(),
            nice: settings.password_nice,
        },
        settings.password_queue,
        settings.password_max_wait.0,
    )
    .await?;
    let policy = |free| ThrottlePolicy {
        free_failures: free,
        base_delay: settings.login_base_delay.0,
        max_delay: settings.login_max_delay.0,
    };
    let throttles = (
        Throttle::new(policy(settings.login_free_failures), "account"),
        Throttle::new(policy(settings.login_ip_free_failures), "client address"),
    );
    Ok(Arc::new(Authenticator::new(
        store,
        tokens,
        hashing,
        throttles,
        AuthConfig {
            refresh_ttl: settings.refresh_token_ttl.0,
            refresh_reuse_grace: settings.refresh_reuse_grace.0,
            token_cache_capacity: settings.token_cache_capacity,
            token_cache_ttl: settings.token_cache_ttl.0,
            after_login,
            logins,
            events: SecurityEvents::new(audit),
            token_cache_counters: metrics.map(|m| {
                (
                    m.observed.token_cache_hits.clone(),
                    m.observed.token_cache_misses.clone(),
                )
            }),
        },
    )))
}
