//! Malformed and hostile requests get the right status and a message a
//! person can act on, and the server keeps serving.

use tonic::Code;
use velro_authz::proto::{self, Decision};

use crate::common::{Db, fixture::authorize, world_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_and_the_server_keeps_serving() {
    let (_db, w, mut server) = world_server(Db::Sqlite, |s| {
        s.max_message_bytes = 64 * 1024;
    })
    .await;
    let good = authorize(w.owner, "read", "project", w.team.project);

    let mut cases: Vec<(&str, proto::AuthorizeRequest, Code, &str)> = Vec::new();
    let mut with = |name, change: &dyn Fn(&mut proto::AuthorizeRequest), code, needle| {
        let mut r = good.clone();
        change(&mut r);
        cases.push((name, r, code, needle));
    };
    with(
        "empty user",
        &|r| r.user_id.clear(),
        Code::InvalidArgument,
        "user_id is required",
    );
    with(
        "oversize user",
        &|r| r.user_id = "7".repeat(300),
        Code::InvalidArgument,
        "at most 256",
    );
    with(
        "not a uuid",
        &|r| r.user_id = "alice".into(),
        Code::InvalidArgument,
        "user_id must be a UUID",
    );
    with(
        "sql-shaped id",
        &|r| r.user_id = "'; DROP TABLE users; --".into(),
        Code::InvalidArgument,
        "must be a UUID",
    );
    with(
        "sql-shaped resource",
        &|r| {
            r.resource
                .as_mut()
                .map(|x| x.id = "1 OR 1=1".into())
                .unwrap_or(())
        },
        Code::InvalidArgument,
        "resource.id must be a UUID",
    );
    with(
        "unknown action",
        &|r| r.action = "publish".into(),
        Code::InvalidArgument,
        "not an action",
    );
    with(
        "empty action",
        &|r| r.action.clear(),
        Code::InvalidArgument,
        "not an action",
    );
    with(
        "unknown type",
        &|r| {
            r.resource
                .as_mut()
                .map(|x| x.r#type = "volcano".into())
                .unwrap_or(())
        },
        Code::InvalidArgument,
        "not a resource type",
    );
    with(
        "no resource",
        &|r| r.resource = None,
        Code::InvalidArgument,
        "resource is required",
    );
    with(
        "bad consistency",
        &|r| r.consistency = 99,
        Code::InvalidArgument,
        "consistency 99",
    );
    with(
        "bad ip",
        &|r| {
            r.context = Some(proto::RequestContext {
                ip: "999.1.1.1".into(),
                ..Default::default()
            })
        },
        Code::InvalidArgument,
        "context.ip",
    );
    with(
        "oversize message",
        &|r| {
            r.context = Some(proto::RequestContext {
                user_agent: "x".repeat(100 * 1024),
                ..Default::default()
            })
        },
        Code::ResourceExhausted,
        "max_message_bytes",
    );
    for (name, request, code, needle) in cases {
        let status = server
            .client
            .authorize(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: must be rejected"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {:?}",
            status.message()
        );
        // And the server is still there for a good request.
        let ok = server
            .client
            .authorize(good.clone())
            .await
            .unwrap_or_else(|e| panic!("after {name}: {e}"));
        assert_eq!(ok.into_inner().decision(), Decision::Allow);
    }
    let (_, metrics) = server.ops_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"velro_authz_rpc_requests_total{rpc="Authorize",outcome="invalid_argument"} 11"#
        ),
        "{metrics}"
    );
    server.stop().await;
}
