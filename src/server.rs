//! Assembles the service once at start-up (store, migrations, cache, engine,
//! gRPC and ops listeners) and runs it until asked to drain and stop.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    audit::AuditLog,
    auth,
    breaker::Breaker,
    cache::{DatabaseTier, PermissionCache},
    config::Settings,
    demo,
    emergency::{self, KillSwitches},
    engine::{
        Engine,
        stack::{StackParts, layer_stack},
    },
    error::AuthzError,
    ext_authz::ExtAuthzService,
    freshness::{self, Freshness},
    layers::rate_limit::RateLimit,
    layers::security_context::SecurityContext,
    media_url::UrlSigner,
    metrics::Metrics,
    ops::{self, Readiness},
    proto::{self, authorization_service_server::AuthorizationServiceServer},
    rate_limit::{Limiter, anomaly::Anomalies},
    redis_tier::RedisTier,
    service::AuthzService,
    store::Store,
    store::{self, Backend},
    transport::GuardLayer,
    warming::Warmer,
};

const SERVICE_NAME: &str = "velro.authz.v1.AuthorizationService";
/// Change-log entries a starting replica reads to judge shared-tier entries.
const RECENT_CHANGES: i64 = 100_000;
/// How long the database breaker stays open before a request probes.
const DATABASE_COOL_OFF: std::time::Duration = std::time::Duration::from_secs(1);
/// How often idle principals are dropped from the in-process limiters.
const LIMITER_HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(60);

/// A started server. Dropping it also starts a drain.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    drain: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AuthzError>>,
}

impl RunningServer {
    /// Reports NOT_SERVING, waits the drain delay, lets in-flight requests
    /// finish and closes the listeners and pools.
    pub async fn shutdown(mut self) -> Result<(), AuthzError> {
        if let Some(drain) = self.drain.take() {
            let _ = drain.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| AuthzError::Internal(format!("server task failed: {e}")))?
    }
}

fn bind_error(what: &str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> AuthzError {
    let what = what.to_owned();
    move |e| AuthzError::Unavailable(format!("cannot listen for {what} on {addr}: {e}"))
}

pub async fn start(settings: &Settings) -> Result<RunningServer, AuthzError> {
    let store = store::connect(&settings.database_url, &settings.pool()).await?;
    if settings.migrate_on_start {
        store.migrate().await?;
    }
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let Assembled {
        engine,
        cache,
        freshness,
        database,
        background,
        audit_writer,
        audit,
    } = assemble(settings, store.clone(), metrics.clone(), stop_rx.clone()).await?;

    let auth = auth::setup::authenticator(settings, store.clone()).await?;
    auth.set_warmer(Arc::new(Warmer::new(
        engine.clone(),
        cache.clone(),
        metrics.clone(),
    )));
    let jwks = Arc::new(auth.tokens().keys().jwks());

    let grpc_listener = TcpListener::bind(settings.listen)
        .await
        .map_err(bind_error("gRPC", settings.listen))?;
    let ops_listener = TcpListener::bind(settings.ops_listen)
        .await
        .map_err(bind_error("ops HTTP", settings.ops_listen))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(bind_error("gRPC", settings.listen))?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(bind_error("ops HTTP", settings.ops_listen))?;

    if settings.demo_data && store.backend() == Backend::Sqlite {
        demo::ensure(store.as_ref(), &engine, &auth, grpc_addr.port()).await?;
    }

    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        match proto::ENVOY_FILE_DESCRIPTOR_SET.is_empty() {
            true => builder,
            false => builder.register_encoded_file_descriptor_set(proto::ENVOY_FILE_DESCRIPTOR_SET),
        }
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| AuthzError::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let ext_authz = AuthorizationServer::new(ExtAuthzService::new(
        engine.clone(),
        auth.clone(),
        metrics.clone(),
        settings.ext_authz.clone(),
    )?)
    .max_decoding_message_size(settings.max_message_bytes);
    let authz = AuthorizationServiceServer::new(AuthzService::new(
        engine,
        auth,
        metrics.clone(),
        settings.max_batch_items,
        settings.admin_token.clone(),
        audit,
    ))
    .max_decoding_message_size(settings.max_message_bytes);

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Arc::new(Readiness::default());
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    readiness.set(true);

    let grpc = Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .layer(GuardLayer {
            server_timeout: settings.request_timeout.0,
            max_message_bytes: settings.max_message_bytes,
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(authz)
        .add_service(ext_authz)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let health_checks = ops::Dependencies {
        database,
        freshness,
    };
    let ops = axum::serve(
        ops_listener,
        ops::router(metrics, readiness.clone(), health_checks, jwks),
    )
    .with_graceful_shutdown(stopped(stop_rx));

    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let drain_delay = settings.drain_delay.0;
    let drainer = async move {
        let _ = drain_rx.await;
        readiness.set(false);
        for name in ["", SERVICE_NAME] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(?drain_delay, "draining: reporting NOT_SERVING");
        tokio::time::sleep(drain_delay).await;
        let _ = stop_tx.send(true);
    };
    let task = tokio::spawn(async move {
        let (grpc, ops, ()) = tokio::join!(grpc, ops, drainer);
        for task in background {
            task.abort();
        }
        // The audit writer has seen the stop: it writes what is queued.
        let _ = audit_writer.await;
        store.close().await;
        grpc.map_err(|e| AuthzError::Internal(format!("gRPC server failed: {e}")))?;
        ops.map_err(|e| AuthzError::Internal(format!("ops server failed: {e}")))?;
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(%grpc_addr, %ops_addr, database = %store::redact(&settings.database_url), "serving");
    Ok(RunningServer {
        grpc_addr,
        ops_addr,
        drain: Some(drain_tx),
        task,
    })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What `start` serves, built once from the settings.
pub struct Assembled {
    pub engine: Arc<Engine>,
    pub cache: Arc<PermissionCache>,
    pub freshness: Arc<Freshness>,
    pub database: Arc<Breaker>,
    pub audit: Arc<AuditLog>,
    /// Followers and housekeeping: aborted at shutdown.
    pub background: Vec<JoinHandle<()>>,
    /// Ends by itself after `stop`, once the queued events are written.
    pub audit_writer: JoinHandle<()>,
}

/// Builds the ten-layer engine and what keeps it current (change-log and
/// kill-switch followers, the audit writer, limiter housekeeping).
pub async fn assemble(
    settings: &Settings,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<Assembled, AuthzError> {
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
    freshness.sync(store.as_ref()).await?;
    let database = Arc::new(Breaker::new("database", DATABASE_COOL_OFF, metrics.clone()));
    let listen_url = (store.backend() == Backend::Postgres).then(|| settings.database_url.clone());
    let mut background = vec![tokio::spawn(freshness::follow(
        freshness.clone(),
        store.clone(),
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
    if let Some(url) = &settings.redis_url {
        cache = cache.with_redis(Arc::new(RedisTier::new(
            url,
            &settings.redis_prefix,
            settings.redis_timeout.0,
            settings.redis_ttl.0,
            metrics.clone(),
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
    let kill_switches =
        Arc::new(KillSwitches::load(store.as_ref(), &settings.emergency, metrics.clone()).await?);
    background.push(tokio::spawn(emergency::follow(
        kill_switches.clone(),
        freshness.clone(),
        store.clone(),
        settings.change_poll.0,
    )));
    let (audit, audit_writer) =
        AuditLog::start(&settings.audit, store.clone(), metrics.clone(), stop)
            .map_err(AuthzError::invalid)?;
    let rate_limit = match settings.rate_limit.enabled {
        false => None,
        true => {
            let redis = settings
                .redis_url
                .as_deref()
                .map(|url| (url, settings.redis_prefix.as_str()));
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
    let engine = Arc::new(Engine::new(
        layer_stack(StackParts {
            rate_limit,
            kill_switches,
            security: Arc::new(security),
            cache: cache.clone(),
            media_urls: Arc::new(media_urls),
            audit: audit.clone(),
        }),
        store,
        metrics,
        settings.max_chain_depth,
        database.clone(),
    ));
    Ok(Assembled {
        engine,
        cache,
        freshness,
        database,
        audit,
        background,
        audit_writer,
    })
}
