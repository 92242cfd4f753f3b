//! Builds the ten-layer engine once from the settings, with what keeps it
//! current: the change-log and kill-switch followers, the audit writer and
//! the limiter's housekeeping.

use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    app::{
        config::Settings,
        stack::{StackParts, layer_stack},
    },
    audit::AuditLog,
    cache::{
        PermissionCache,
        database::DatabaseTier,
        freshness::{self, Freshness},
        redis::RedisTier,
    },
    engine::{Engine, replica::ReplicaReads, rollout::Rollout},
    error::AuthzError,
    layers::{
        emergency::switches::{self, KillSwitches},
        media_access::signer::UrlSigner,
        rate_limit::{RateLimit, anomaly::Anomalies, limiter::Limiter},
        security_context::SecurityContext,
    },
    store::{Backend, Store, pools::Stores},
    support::{breaker::Breaker, foreground::Foreground, metrics::Metrics, saturation::Saturation},
};

/// Change-log entries a starting replica reads to judge shared-tier entries.
const RECENT_CHANGES: i64 = crate::app::config::KEEP_CHANGES;
/// How often a replica reports how far it has read the change log.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the database breaker stays open before a request probes.
const DATABASE_COOL_OFF: std::time::Duration = std::time::Duration::from_secs(1);
/// How often idle principals are dropped from the in-process limiters.
const LIMITER_HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(60);

/// What `start` serves, built once from the settings.
pub struct Assembled {
    pub engine: Arc<Engine>,
    pub cache: Arc<PermissionCache>,
    pub freshness: Arc<Freshness>,
    pub database: Arc<Breaker>,
    pub audit: Arc<AuditLog>,
    /// The runtime's scheduling lag (admission and breakers read it).
    pub saturation: Arc<Saturation>,
    /// The guards' rollout modes (reloaded with the config file).
    pub rollout: Arc<Rollout>,
    /// Password logins in progress: background work (the audit writer,
    /// predictive warming) gives way to them.
    pub logins: Arc<Foreground>,
    /// Followers and housekeeping: aborted at shutdown.
    pub background: Vec<JoinHandle<()>>,
    /// Ends by itself after `stop`, once the queued events are written.
    pub audit_writer: JoinHandle<()>,
}

/// Builds the ten-layer engine and what keeps it current (change-log and
/// kill-switch followers, the audit writer, limiter housekeeping).
pub async fn assemble(
    settings: &Settings,
    stores: &Stores,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<Assembled, AuthzError> {
    let saturation = Saturation::start();
    let store = stores.decisions.clone();
    store.observe_acquire(metrics.observed.pool_acquire.clone());
    // Start from the recent past of the change log, so that shared-tier
    // entries computed by other replicas since then can be checked and used.
    let start = store
        .current_revision()
        .await?
        .saturating_sub(RECENT_CHANGES)
        .max(0);
    let freshness = Arc::new(Freshness::new(
        start,
        settings.cache_max_lag.0,
        metrics.clone(),
    ));
    freshness.sync(stores.follower.as_ref()).await?;
    let database = Arc::new(Breaker::new("database", DATABASE_COOL_OFF, metrics.clone()));
    let listen_url = (store.backend() == Backend::Postgres).then(|| settings.database_url.clone());
    let mut background = vec![tokio::spawn(freshness::follow(
        freshness.clone(),
        stores.follower.clone(),
        settings.change_poll.0,
        listen_url,
        database.clone(),
    ))];
    let mut cache = PermissionCache::new(
        settings.cache_capacity,
        settings.cache_ttl.0,
        freshness.clone(),
        metrics.clone(),
    );
    let redis = settings.redis_endpoint().map_err(AuthzError::invalid)?;
    if let Some(endpoint) = &redis {
        cache = cache.with_redis(Arc::new(RedisTier::new(
            endpoint,
            &settings.redis_prefix,
            settings.redis_timeout.0,
            settings.redis_ttl.0,
            metrics.clone(),
            saturation.clone(),
        )?));
    }
    if settings.db_cache {
        cache = cache.with_database(DatabaseTier {
            store: store.clone(),
            ttl: settings.db_cache_ttl.0,
        });
    }
    let cache = Arc::new(cache);
    let security = SecurityContext::new(
        &settings.security_context,
        store.clone(),
        freshness.clone(),
        cache.clone(),
    )
    .map_err(AuthzError::invalid)?;
    let media_urls = UrlSigner::new(&settings.media_urls).map_err(AuthzError::invalid)?;
    let kill_switches = Arc::new(
        KillSwitches::load(
            stores.follower.as_ref(),
            &settings.emergency,
            metrics.clone(),
        )
        .await?,
    );
    background.push(tokio::spawn(switches::follow(
        kill_switches.clone(),
        freshness.clone(),
        stores.follower.clone(),
        settings.change_poll.0,
    )));
    background.push(tokio::spawn(housekeeping(
        settings.clone(),
        stores.admin.clone(),
        freshness.clone(),
    )));
    let logins = Foreground::new();
    let (audit, audit_writer) = AuditLog::start(
        &settings.audit,
        stores.audit.clone(),
        (metrics.clone(), logins.clone()),
        stop,
    )
    .await
    .map_err(AuthzError::invalid)?;
    let rate_limit = match settings.rate_limit.enabled {
        false => None,
        true => {
            let redis = redis
                .as_ref()
                .map(|endpoint| (endpoint, settings.redis_prefix.as_str(), saturation.clone()));
            let limiter = Arc::new(
                Limiter::new(&settings.rate_limit, store.clone(), redis, metrics.clone())
                    .map_err(|e| AuthzError::invalid(format!("[rate_limit]: {e}")))?,
            );
            let idle = limiter.clone();
            background.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LIMITER_HOUSEKEEPING).await;
                    idle.housekeeping();
                }
            }));
            Some(Arc::new(RateLimit::new(
                limiter,
                Anomalies::new(&settings.rate_limit.anomaly),
                audit.clone(),
            )))
        }
    };
    let mut engine = Engine::new(
        layer_stack(StackParts {
            rate_limit,
            kill_switches,
            security: Arc::new(security),
            cache: cache.clone(),
            media_urls: Arc::new(media_urls),
            audit: audit.clone(),
        }),
        store,
        metrics.clone(),
        settings.max_chain_depth,
        database.clone(),
        saturation.clone(),
    );
    if let Some(replica) = &stores.replica {
        let reads = ReplicaReads::new(replica.clone(), metrics.observed.replica_revision.clone());
        background.push(tokio::spawn(reads.clone().follow(settings.change_poll.0)));
        engine = engine.with_replica(reads);
    }
    let rollout = Rollout::new(settings.rollout.clone());
    let engine = Arc::new(engine.with_rollout(rollout.clone()));
    Ok(Assembled {
        rollout,
        logins,
        engine,
        cache,
        freshness,
        database,
        audit,
        saturation,
        background,
        audit_writer,
    })
}

/// Reports this replica's place in the change log, and prunes on schedule
/// (one replica at a time; the others find the lock taken and skip).
async fn housekeeping(settings: Settings, store: Arc<dyn Store>, freshness: Arc<Freshness>) {
    let replica = uuid::Uuid::new_v4().to_string();
    let prune_every = settings.prune_every.0;
    let mut next_prune = tokio::time::Instant::now() + prune_every;
    loop {
        let now = crate::support::clock::now_ms();
        if let Err(e) = store.heartbeat(&replica, freshness.applied(), now).await {
            tracing::debug!("replica heartbeat: {e}");
        }
        if !prune_every.is_zero() && tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + prune_every;
            match store.prune(&settings.prune_limits(now)).await {
                Ok(Some(report)) => tracing::info!("{report}"),
                Ok(None) => tracing::debug!("another replica is pruning"),
                Err(e) => tracing::warn!("pruning failed: {e}"),
            }
        }
        tokio::time::sleep(HEARTBEAT.min(prune_every.max(HEARTBEAT))).await;
    }
}
