//! BatchAuthorize: order, per-item errors, the size limit, and duplicates
//! computed once.

use tonic::Code;
use velro_authz::proto::{self, Decision, batch_result::Outcome};

use crate::{
    common::{Db, fixture::item, world_server},
    on_both_databases,
};

fn batch(
    items: Vec<proto::BatchItem>,
    consistency: proto::Consistency,
) -> proto::BatchAuthorizeRequest {
    proto::BatchAuthorizeRequest {
        items,
        consistency: consistency as i32,
        ..Default::default()
    }
}

async fn batch_semantics(db: Db) {
    let (_db, w, mut server) = world_server(db, |s| {
        s.max_batch_items = 20;
    })
    .await;

    // Order kept, an invalid item fails alone.
    let mut bad = item(w.viewer, "read", "project", w.team.project);
    bad.user_id = "not-a-uuid".into();
    let items = vec![
        item(w.owner, "delete", "project", w.private.project),
        bad,
        item(w.viewer, "write", "project", w.team.project),
        item(w.viewer, "read", "volcano", w.team.project),
        item(w.outsider, "read", "media", w.public.media),
    ];
    let results = server
        .client
        .batch_authorize(batch(items, proto::Consistency::MinimizeLatency))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .results;
    assert_eq!(results.len(), 5);
    let decision = |i: usize| match &results[i].outcome {
        Some(Outcome::Response(r)) => (r.decision(), r.decided_by.clone()),
        other => panic!("item {i}: {other:?}"),
    };
    let error = |i: usize| match &results[i].outcome {
        Some(Outcome::Error(e)) => e.clone(),
        other => panic!("item {i} should fail: {other:?}"),
    };
    assert_eq!(decision(0), (Decision::Allow, "ownership".into()));
    assert_eq!(error(1).code, Code::InvalidArgument as i32);
    assert!(
        error(1).message.contains("items[1].user_id"),
        "{:?}",
        error(1)
    );
    assert_eq!(decision(2), (Decision::Deny, "default_deny".into()));
    assert_eq!(error(3).code, Code::InvalidArgument as i32);
    assert!(
        error(3).message.contains("items[3].resource.type"),
        "{:?}",
        error(3)
    );
    assert_eq!(decision(4), (Decision::Allow, "visibility".into()));

    // Over the limit: rejected whole.
    let too_many: Vec<_> = (0..21)
        .map(|_| item(w.owner, "read", "project", w.team.project))
        .collect();
    let status = server
        .client
        .batch_authorize(batch(too_many, proto::Consistency::MinimizeLatency))
        .await
        .err()
        .unwrap_or_else(|| panic!("21 items must be rejected"));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("at most 20"),
        "{}",
        status.message()
    );

    // Duplicates are computed once, even when every cache is bypassed.
    let pairs = [
        (w.viewer, w.team.project),
        (w.editor, w.team.project),
        (w.viewer, w.public.project),
    ];
    let mut items = Vec::new();
    for round in 0..6 {
        for (user, project) in pairs {
            items.push(item(
                user,
                ["read", "write", "delete"][round % 3],
                "project",
                project,
            ));
        }
    }
    let before = server
        .metric("velro_authz_permission_computations_total")
        .await;
    let results = server
        .client
        .batch_authorize(batch(items.clone(), proto::Consistency::FullyConsistent))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .results;
    let after = server
        .metric("velro_authz_permission_computations_total")
        .await;
    assert_eq!(results.len(), 18);
    assert_eq!(
        after - before,
        3.0,
        "18 items over 3 distinct user:resource pairs"
    );
    for (request, result) in items.iter().zip(&results) {
        let Some(Outcome::Response(r)) = &result.outcome else {
            panic!("{result:?}")
        };
        let holds = r.permissions.contains(&request.action);
        assert_eq!(
            r.decision() == Decision::Allow,
            holds,
            "{request:?} -> {r:?}"
        );
    }

    // An empty batch is answered with no results.
    let empty = server
        .client
        .batch_authorize(batch(Vec::new(), proto::Consistency::MinimizeLatency))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.into_inner().results.is_empty());
    server.stop().await;
}
on_both_databases!(batch_authorize, batch_semantics);
