//! The wire secured: TLS on the gRPC port, mutual TLS naming the caller, a
//! `[[callers]]` table saying who may call what, preshared caller keys, and
//! certificates rotated on disk without a restart.

use std::{net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sha2::{Digest, Sha256};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use velro_authz::{
    api::transport::callers::CallerConfig,
    audit::AuditFilter,
    proto::{self, authorization_service_client::AuthorizationServiceClient},
};

use crate::common::{
    Db,
    certs::{Ca, Leaf},
    eventually,
    fixture::authorize,
    world_server,
};
use crate::ext_authz::check;

/// A TLS channel trusting `ca`, presenting `client` if given.
async fn tls_channel(addr: SocketAddr, ca: &str, client: Option<&Leaf>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))
}

fn grpc_addr(server: &crate::common::TestServer) -> SocketAddr {
    server.server.as_ref().unwrap().grpc_addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("velro test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.tls_cert = Some(cert);
        s.tls_key = Some(key);
    })
    .await;
    let addr = grpc_addr(&server);
    let channel = tls_channel(addr, &ca.pem(), None).await.unwrap();
    let r = AuthorizationServiceClient::new(channel)
        .authorize(authorize(w.viewer, "read", "project", w.team.project))
        .await
        .unwrap();
    assert_eq!(r.into_inner().decision(), proto::Decision::Allow);
    // Plaintext to the TLS port fails cleanly and at once.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await;
        match channel {
            Err(e) => Err(format!("{e:?}")),
            Ok(channel) => AuthorizationServiceClient::new(channel)
                .authorize(authorize(w.viewer, "read", "project", w.team.project))
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        }
    })
    .await
    .expect("a plaintext client gets an answer, not a hang");
    assert!(plain.is_err(), "plaintext is not served on a TLS port");
    // A client that trusts another CA refuses the server.
    let other = Ca::new("another CA");
    let refused = match tls_channel(addr, &other.pem(), None).await {
        Err(e) => Err(e),
        Ok(channel) => AuthorizationServiceClient::new(channel)
            .authorize(authorize(w.viewer, "read", "project", w.team.project))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    assert!(refused.is_err());
    server.stop().await;
}

fn callers() -> Vec<CallerConfig> {
    vec![
        CallerConfig {
            name: "gateway".into(),
            identities: vec!["spiffe://velro.test/envoy".into()],
            key_sha256: None,
            rpcs: vec!["envoy.service.auth.v3.Authorization/Check".into()],
        },
        CallerConfig {
            name: "backend".into(),
            identities: vec!["spiffe://velro.test/backend".into()],
            key_sha256: Some(
                Sha256::digest(b"backend-preshared-key")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
            rpcs: vec!["velro.authz.v1.AuthorizationService/*".into()],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_the_caller_and_the_table_says_what_it_may_call() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("velro test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (db, w, server) = world_server(Db::Postgres, |s| {
        s.tls_cert = Some(cert);
        s.tls_key = Some(key);
        s.tls_client_ca = Some(ca_file);
        s.callers = callers();
    })
    .await;
    let addr = grpc_addr(&server);
    let query = || authorize(w.viewer, "read", "project", w.team.project);
    let call = |channel: Result<Channel, String>| async move {
        let channel = channel?;
        AuthorizationServiceClient::new(channel)
            .authorize(authorize(w.viewer, "read", "project", w.team.project))
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("{e:?}"))
    };
    // No certificate, or one from another CA: refused at the handshake.
    assert!(
        call(tls_channel(addr, &ca.pem(), None).await)
            .await
            .is_err()
    );
    let stranger = Ca::new("another CA").client("spiffe://velro.test/backend");
    assert!(
        call(tls_channel(addr, &ca.pem(), Some(&stranger)).await)
            .await
            .is_err()
    );
    // The backend may authorize.
    let backend = ca.client("spiffe://velro.test/backend");
    let channel = tls_channel(addr, &ca.pem(), Some(&backend)).await.unwrap();
    let r = AuthorizationServiceClient::new(channel)
        .authorize(query())
        .await
        .unwrap();
    assert_eq!(r.into_inner().decision(), proto::Decision::Allow);
    // The gateway may only check: Authorize is PERMISSION_DENIED and audited.
    let gateway = ca.client("spiffe://velro.test/envoy");
    let channel = tls_channel(addr, &ca.pem(), Some(&gateway)).await.unwrap();
    let e = AuthorizationServiceClient::new(channel.clone())
        .authorize(query())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("gateway"), "{}", e.message());
    let path = format!("/v1/projects/{}", w.public.project);
    let answer = AuthorizationClient::new(channel)
        .check(check("GET", &path, &[]))
        .await
        .unwrap();
    assert!(
        answer.into_inner().http_response.is_some(),
        "the gateway may check"
    );
    let store = db.store().await;
    eventually(Duration::from_secs(10), "the refusal audited", || async {
        let events = store
            .audit_events(&AuditFilter {
                subject: Some("gateway".into()),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        match events.iter().any(|e| e.decision == "caller_refused") {
            true => Ok(()),
            false => Err(format!("{} events", events.len())),
        }
    })
    .await;
    let counted = server
        .metric("velro_authz_caller_requests_total{caller=\"gateway\",outcome=\"refused\"}")
        .await;
    assert_eq!(counted, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preshared_keys_name_callers_without_certificates() {
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.callers = callers();
    })
    .await;
    let query = || authorize(w.viewer, "read", "project", w.team.project);
    let with_key = |key: &str| {
        let mut request = Request::new(query());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let mut client = server.client.clone();
    let r = client
        .authorize(with_key("backend-preshared-key"))
        .await
        .unwrap();
    assert_eq!(r.into_inner().decision(), proto::Decision::Allow);
    for wrong in ["backend-preshared-kez", "x"] {
        let e = client.authorize(with_key(wrong)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let e = client.authorize(query()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "no credentials: {e:?}");
    // Health checks stay open.
    tonic_health::pb::health_client::HealthClient::new(server.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_on_disk_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = old_ca.server().write(dir.path(), "server");
    let (_db, w, server) = world_server(Db::Sqlite, |s| {
        s.tls_cert = Some(cert);
        s.tls_key = Some(key);
    })
    .await;
    let addr = grpc_addr(&server);
    let query = || authorize(w.viewer, "read", "project", w.team.project);
    let before = tls_channel(addr, &old_ca.pem(), None).await.unwrap();
    let mut before = AuthorizationServiceClient::new(before);
    before.authorize(query()).await.unwrap();
    // cert-manager writes the renewed certificate (here from another CA,
    // so the test can tell which one the server presents).
    new_ca.server().write(dir.path(), "server");
    eventually(
        Duration::from_secs(15),
        "the new certificate served",
        || async {
            match tls_channel(addr, &new_ca.pem(), None).await {
                Ok(channel) => AuthorizationServiceClient::new(channel)
                    .authorize(query())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    // The connection made before the rotation was not dropped.
    before.authorize(query()).await.unwrap();
    server.stop().await;
}
