//! Envoy ext_authz through a real gRPC client built from `envoy-types`:
//! allow with identity headers, each deny status, path attacks, forged
//! headers, bad credentials, and a store outage answered as a 503 deny.

use std::{collections::HashMap, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse,
        attribute_context::{HttpRequest, Peer, Request},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};
use uuid::Uuid;
use velro_authz::support::duration::HumanDuration;

use crate::common::{
    Db,
    login::{AuthWorld, auth_server},
    proxy::Proxy,
};

/// The HTTP status, the headers added (and removed) of an answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    added: HashMap<String, String>,
    removed: Vec<String>,
    body: String,
}

impl Answer {
    /// A header the answer adds upstream (or to the denial).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.added.get(name).map(String::as_str)
    }
}

fn read(response: CheckResponse) -> Answer {
    let header_map = |h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        h.iter()
            .filter_map(|o| o.header.as_ref())
            .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    let grpc_ok = response.status.as_ref().map_or(0, |s| s.code) == 0;
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert!(grpc_ok, "an allow carries status OK");
            Answer {
                status: 200,
                added: header_map(&ok.headers),
                removed: ok.headers_to_remove,
                body: String::new(),
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert!(!grpc_ok, "a deny never carries status OK");
            Answer {
                status: denied.status.map_or(403, |s| s.code as u16),
                added: header_map(&denied.headers),
                removed: Vec::new(),
                body: denied.body,
            }
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

pub(crate) fn check(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let socket = SocketAddress {
        address: "198.51.100.7".into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(socket)),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.velro.test".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

pub(crate) async fn ask(w: &AuthWorld, request: CheckRequest) -> Answer {
    let mut client = AuthorizationClient::new(w.server.channel.clone());
    let response = client
        .check(request)
        .await
        .unwrap_or_else(|e| panic!("ext_authz must answer, not fail: {e}"));
    read(response.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_checks_through_the_stack() {
    let w = auth_server(Db::Postgres, |_| {}).await;
    let world = &w.world;
    let token = w.tokens(world.viewer).await.access_token;
    let bearer = format!("Bearer {token}");
    let auth = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, String)> = vec![("authorization", bearer.clone())];
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        h
    };
    let with = |h: &[(&str, String)]| -> Vec<(String, String)> {
        h.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    let req = |method: &str, path: String, headers: Vec<(String, String)>| {
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        check(method, &path, &refs)
    };
    let team_gen = world.team.generation;

    // Allowed: a viewer reads a team generation; identity headers are set,
    // forged incoming copies removed.
    let a = ask(
        &w,
        req(
            "GET",
            format!("/v1/generations/{team_gen}"),
            with(&auth(&[("x-velro-user-id", "forged")])),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.added.get("x-velro-user-id"),
        Some(&world.viewer.to_string())
    );
    assert!(Uuid::parse_str(&a.added["x-velro-decision-id"]).is_ok());
    assert!(a.removed.contains(&"x-velro-user-id".to_string()));
    assert!(a.removed.contains(&"x-velro-decision-id".to_string()));

    // Denied by the stack: a viewer deletes it -> 403 with the reason.
    let d = ask(
        &w,
        req(
            "DELETE",
            format!("/v1/generations/{team_gen}"),
            with(&auth(&[])),
        ),
    )
    .await;
    assert_eq!(d.status, 403, "{d:?}");
    assert!(d.body.contains("ACTION_NOT_PERMITTED"), "{d:?}");

    // No credentials on a private resource -> 401 with a challenge; a public
    // project is readable anonymously.
    let n = ask(
        &w,
        req(
            "GET",
            format!("/v1/projects/{}", world.private.project),
            vec![],
        ),
    )
    .await;
    assert_eq!(n.status, 401, "{n:?}");
    assert!(n.added["www-authenticate"].starts_with("Bearer"));
    let p = ask(
        &w,
        req(
            "GET",
            format!("/v1/projects/{}", world.public.project),
            vec![],
        ),
    )
    .await;
    assert_eq!(p.status, 200, "{p:?}");
    assert!(!p.added.contains_key("x-velro-user-id"));

    // Malformed and bad Authorization headers -> 401.
    for value in ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer not-a-jwt", "token"] {
        let h = vec![("authorization".to_string(), value.to_string())];
        let r = ask(&w, req("GET", format!("/v1/generations/{team_gen}"), h)).await;
        assert_eq!(r.status, 401, "{value}: {r:?}");
        assert!(r.added.contains_key("www-authenticate"));
    }

    // Unmatched route -> denied by default.
    let u = ask(&w, req("GET", "/v1/admin/users".into(), with(&auth(&[])))).await;
    assert_eq!(u.status, 403, "{u:?}");
    assert!(u.body.contains("NO_ROUTE"));

    // Path normalisation: tricks land on the rule they really address.
    let private = world.private.project;
    for path in [
        format!("/v1/generations/../projects/{private}"),
        format!("/v1/generations/%2e%2e/projects/{private}"),
        format!("//v1//projects//{private}"),
        format!("/v1/./projects/{private}?x=1"),
    ] {
        let r = ask(&w, req("GET", path.clone(), with(&auth(&[])))).await;
        assert_eq!(
            r.status, 403,
            "{path} reaches the private project's rule: {r:?}"
        );
    }
    for path in [
        format!("/v1/generations/x%2F..%2F..%2Fprojects%2F{private}"),
        "/../v1/projects".into(),
        format!("/v1/projects/{private}%00"),
        "/v1/projects/not-a-uuid".into(),
    ] {
        let r = ask(&w, req("GET", path.clone(), with(&auth(&[])))).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_503_deny_not_an_error() {
    let proxy = Proxy::postgres().await;
    let w = auth_server(Db::Postgres, |s| {
        s.database_url = proxy.route(&s.database_url);
        s.db_acquire_timeout = HumanDuration(Duration::from_millis(500));
    })
    .await;
    let token = w.tokens(w.world.admin).await.access_token;
    let headers = [("authorization", format!("Bearer {token}"))];
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    proxy.cut();
    let r = ask(
        &w,
        check(
            "DELETE",
            &format!("/v1/projects/{}", w.world.private.project),
            &refs,
        ),
    )
    .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.added.contains_key("retry-after"));
    proxy.restore();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_envoy_service() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let w = auth_server(Db::Sqlite, |_| {}).await;
    let mut client = ServerReflectionClient::new(w.server.channel.clone());
    let request = ServerReflectionRequest {
        message_request: Some(MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization".to_string()),
        "{names:?}"
    );
    w.server.stop().await;
}
