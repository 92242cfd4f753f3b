//! Assembles the service once at start-up (store, migrations, cache, engine,
//! gRPC and ops listeners) and runs it until asked to drain and stop.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic::transport::Server;
use tonic_health::ServingStatus;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    api::{
        ext_authz::ExtAuthzService,
        ops::{self, Readiness},
        service::AuthzService,
        transport::{
            self,
            admission::Admission,
            callers::Callers,
            deadline::Deadline,
            tls::TlsServer,
            {connections::Connections, listener::BoundedListener},
        },
    },
    app::{
        assemble::{Assembled, assemble},
        auth_setup,
        config::Settings,
        demo, reload,
    },
    cache::warming::Warmer,
    error::AuthzError,
    proto::{self, authorization_service_server::AuthorizationServiceServer},
    store::{self, Backend, pools::Stores},
    support::metrics::Metrics,
};

const SERVICE_NAME: &str = "velro.authz.v1.AuthorizationService";
/// HTTP/2 keepalive: a ping after this much silence, and how long its
/// answer may take before the connection is closed.
const KEEPALIVE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(10),
);

/// The largest response message: a full batch fits many times over.
fn max_response_bytes(settings: &Settings) -> usize {
    settings.max_message_bytes.saturating_mul(4)
}

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
    // One crypto provider for every TLS user (gRPC, PostgreSQL, Redis).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let tls = match settings.tls_files().map_err(AuthzError::invalid)? {
        Some(files) => Some(TlsServer::load(files)?),
        None => None,
    };
    let stores =
        Stores::connect(&settings.database_url, &settings.pool(), &settings.db_pools).await?;
    if settings.migrate_on_start {
        stores.admin.migrate().await?;
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
        saturation,
        rollout,
        logins,
    } = assemble(settings, &stores, metrics.clone(), stop_rx.clone()).await?;

    // Predictive warming after each login or first use of a token; it waits
    // while password logins are in progress.
    let warmer = Arc::new(Warmer::new(
        engine.clone(),
        cache.clone(),
        metrics.clone(),
        (saturation.clone(), logins.clone()),
    ));
    let after_login = Arc::new(move |user| warmer.warm(user));
    let auth = auth_setup::authenticator(
        settings,
        stores.auth.clone(),
        (Some(after_login), logins),
        Some(audit.clone()),
        Some(&metrics),
    )
    .await?;
    let keys = auth.tokens().keys().clone();
    let auth_for_ops = auth.clone();

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

    if settings.demo_data && stores.admin.backend() == Backend::Sqlite {
        demo::ensure(stores.admin.as_ref(), &engine, &auth, grpc_addr.port()).await?;
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
    let admission = Admission::new(
        settings.max_in_flight,
        settings.max_runtime_lag.0,
        saturation.clone(),
        metrics.clone(),
    );
    let ext_authz = AuthorizationServer::new(ExtAuthzService::new(
        engine.clone(),
        auth.clone(),
        metrics.clone(),
        settings.ext_authz.clone(),
        admission.clone(),
        audit.clone(),
    )?)
    .max_decoding_message_size(settings.max_message_bytes)
    .max_encoding_message_size(max_response_bytes(settings));
    let authz = AuthorizationServiceServer::new(AuthzService::new(
        engine,
        auth,
        metrics.clone(),
        settings.max_batch_items,
        settings.admin_token.clone(),
        audit.clone(),
        stores.admin.clone(),
    ))
    .max_decoding_message_size(settings.max_message_bytes)
    .max_encoding_message_size(max_response_bytes(settings));

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Arc::new(Readiness::default());
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    readiness.set(true);

    let callers = Callers::new(&settings.callers, Some(audit.clone()), metrics.clone())
        .map_err(AuthzError::invalid)?;
    let grpc_connections = Connections::new("grpc", settings.grpc_connections(), metrics.clone());
    let ops_connections = Connections::new("ops", settings.ops_connections(), metrics.clone());
    tracing::info!(
        max_connections = grpc_connections.limits().max_connections,
        max_in_flight = settings.max_in_flight,
        "gRPC port bounds"
    );
    let mut builder = Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(KEEPALIVE.0))
        .http2_keepalive_timeout(Some(KEEPALIVE.1));
    if let Some(age) = settings.max_connection_age {
        builder = builder
            .max_connection_age(age.0)
            .max_connection_age_grace(settings.request_timeout.0);
    }
    let grpc = builder
        .layer(transport::stack(
            grpc_connections.clone(),
            callers,
            admission,
            Deadline {
                server_timeout: settings.request_timeout.0,
                max_message_bytes: settings.max_message_bytes,
            },
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(authz)
        .add_service(ext_authz)
        .serve_with_incoming_shutdown(
            BoundedListener::new(grpc_listener, grpc_connections.clone(), true)
                .into_stream(tls.clone()),
            stopped(stop_rx.clone()),
        );
    let health_checks = ops::Dependencies {
        database,
        freshness,
        saturation,
        stores: stores.clone(),
        audit: audit.clone(),
        auth: auth_for_ops,
    };
    // Connections still open a request deadline after the stop are cut off.
    let grace = settings.request_timeout.0;
    let cut_off = {
        let (stop, ports) = (stop_rx.clone(), [grpc_connections, ops_connections.clone()]);
        async move {
            stopped(stop).await;
            tokio::time::sleep(grace).await;
            for port in ports {
                port.close_all();
            }
        }
    };
    let ops = axum::serve(
        BoundedListener::new(ops_listener, ops_connections, false),
        ops::router(metrics, readiness.clone(), health_checks, keys.clone()),
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
    let rollout_file = settings
        .config
        .clone()
        .map(|path| reload::RolloutFile::new(path, rollout));
    let key_watch = tokio::spawn(reload::watch(keys, tls.clone(), rollout_file));
    let audit_at_stop = audit.clone();
    let task = tokio::spawn(async move {
        let cut_off = tokio::spawn(cut_off);
        let (grpc, ops, ()) = tokio::join!(grpc, ops, drainer);
        cut_off.abort();
        key_watch.abort();
        for task in background {
            task.abort();
        }
        // The audit writer has seen the stop: it writes what is queued.
        let _ = audit_writer.await;
        audit_at_stop.flushed().await;
        stores.close().await;
        grpc.map_err(|e| AuthzError::Internal(format!("gRPC server failed: {e}")))?;
        ops.map_err(|e| AuthzError::Internal(format!("ops server failed: {e}")))?;
        tracing::info!("stopped");
        Ok(())
    });
    let wire = match &tls {
        None => {
            "plaintext (no tls_cert: for the embedded default or behind a mesh that terminates TLS)"
        }
        Some(tls) if tls.mutual() => "mutual TLS",
        Some(_) => "TLS",
    };
    tracing::info!(%grpc_addr, %ops_addr, database = %store::redact(&settings.database_url), wire, "serving");
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

/// Runs the service until SIGTERM or Ctrl-C, then drains and stops.
pub async fn serve(settings: &Settings) -> Result<(), AuthzError> {
    // Each client connection holds a descriptor: take what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let running = start(settings).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received");
    running.shutdown().await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}; only Ctrl-C stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
