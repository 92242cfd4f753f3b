//! Layer 5: generations inherit what the subject holds on their ancestors,
//! within the project and the depth limit; cycles and over-deep chains are
//! denied as data-integrity faults.

use std::time::Duration;

use uuid::Uuid;
use velro_authz::proto::{self, Consistency, Decision};

use crate::{
    common::{Db, TestDb, TestServer, eventually, fixture::authorize, world_server},
    on_both_databases,
};

const MAX_DEPTH: u32 = 3;

/// Inserts a generation (with one media object) by plain SQL.
async fn generation(db: &TestDb, project: Uuid, creator: Uuid, parent: Option<Uuid>) -> Uuid {
    let id = Uuid::new_v4();
    let parent = parent.map_or_else(|| "NULL".to_owned(), |p| format!("'{p}'"));
    db.execute(&format!(
        "INSERT INTO generations (id, project_id, created_by, parent_id) \
         VALUES ('{id}', '{project}', '{creator}', {parent})"
    ))
    .await;
    id
}

async fn ask(
    server: &TestServer,
    user: Uuid,
    action: &str,
    kind: &str,
    id: Uuid,
) -> proto::AuthorizeResponse {
    let mut request = authorize(user, action, kind, id);
    request.consistency = Consistency::FullyConsistent as i32;
    server.decide(request).await
}

async fn chains_within_a_project(kind: Db) {
    let (db, w, server) = world_server(kind, |s| s.max_chain_depth = MAX_DEPTH).await;
    // In the private project the team's editors and viewers hold nothing, so
    // whatever they get on these generations comes from inheritance.
    let project = w.private.project;
    let g0 = w.private.generation; // made by `creator`
    let g1 = generation(&db, project, w.viewer, Some(g0)).await;
    let g2 = generation(&db, project, w.editor, Some(g1)).await;
    let g3 = generation(&db, project, w.outsider, Some(g2)).await;

    let r = ask(&server, w.creator, "delete", "generation", g1).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.decided_by, "generation_inheritance");
    assert_eq!(r.decided_by_layer, 5);
    assert_eq!(r.reason, "INHERITED_FROM_ANCESTOR");
    assert_eq!(r.permissions, ["read", "write", "delete", "share"]);
    // Further down, and from the nearer ancestor's creator too.
    let r = ask(&server, w.viewer, "write", "generation", g3).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    // At the limit: g3's third ancestor is g0.
    let r = ask(&server, w.creator, "read", "generation", g3).await;
    assert_eq!(r.decision(), Decision::Allow, "at the depth limit: {r:?}");
    // Nothing flows upwards: a descendant's creator holds nothing on g1.
    let r = ask(&server, w.editor, "read", "generation", g1).await;
    assert_eq!(r.decision(), Decision::Deny, "{r:?}");
    assert_eq!(r.reason, "NO_RELATIONSHIP");
    // Media inherit through their generation.
    let media = Uuid::new_v4();
    db.execute(&format!(
        "INSERT INTO media (id, generation_id, object_key, kind) VALUES ('{media}', '{g2}', 'm/{media}.png', 'image')"
    ))
    .await;
    let r = ask(&server, w.creator, "read", "media", media).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.decided_by, "generation_inheritance");

    // One link past the limit: a data-integrity fault, even for the owner.
    let g4 = generation(&db, project, w.viewer, Some(g3)).await;
    let alerts = "velro_authz_security_alerts_total{kind=\"generation_chain_too_deep\"}";
    let before = server.metric(alerts).await;
    for user in [w.creator, w.owner] {
        let r = ask(&server, user, "read", "generation", g4).await;
        assert_eq!(r.decision(), Decision::Deny, "{r:?}");
        assert_eq!(r.reason, "GENERATION_CHAIN_TOO_DEEP");
        assert_eq!(r.decided_by, "generation_inheritance");
        assert!(r.message.contains("data-integrity"), "{}", r.message);
    }
    assert!(server.metric(alerts).await >= before + 2.0);
    server.stop().await;
}
on_both_databases!(
    inheritance_walks_the_chain_within_the_project,
    chains_within_a_project
);

async fn boundaries_and_cycles(kind: Db) {
    let (db, w, server) = world_server(kind, |s| s.max_chain_depth = MAX_DEPTH).await;
    // A remix in the public project of the viewer's private generation: the
    // viewer gets what the public project gives a team viewer, nothing more.
    let root = generation(&db, w.private.project, w.viewer, None).await;
    let remix = generation(&db, w.public.project, w.outsider, Some(root)).await;
    let r = ask(&server, w.viewer, "write", "generation", remix).await;
    assert_eq!(r.decision(), Decision::Deny, "{r:?}");
    assert_eq!(r.permissions, ["read"]);
    let r = ask(&server, w.outsider, "delete", "generation", remix).await;
    assert_eq!(r.decision(), Decision::Allow, "its own creator: {r:?}");
    assert_eq!(r.decided_by, "ownership");

    // Cycles written with plain SQL: two generations, and one its own parent.
    let a = generation(&db, w.team.project, w.creator, None).await;
    let b = generation(&db, w.team.project, w.creator, Some(a)).await;
    let own = generation(&db, w.team.project, w.creator, None).await;
    db.execute(&format!(
        "UPDATE generations SET parent_id = '{b}' WHERE id = '{a}'; \
         UPDATE generations SET parent_id = '{own}' WHERE id = '{own}'"
    ))
    .await;
    let alerts = "velro_authz_security_alerts_total{kind=\"generation_chain_cycle\"}";
    for id in [a, b, own] {
        let r = ask(&server, w.owner, "read", "generation", id).await;
        assert_eq!(r.decision(), Decision::Deny, "{r:?}");
        assert_eq!(r.reason, "GENERATION_CHAIN_CYCLE");
        assert!(r.message.contains("loops"), "{}", r.message);
    }
    assert!(server.metric(alerts).await >= 3.0);
    server.stop().await;
}
on_both_databases!(
    inheritance_stops_at_projects_and_refuses_cycles,
    boundaries_and_cycles
);

async fn parent_link_changes(kind: Db) {
    let (db, w, server) = world_server(kind, |s| s.max_chain_depth = MAX_DEPTH).await;
    let child = generation(&db, w.private.project, w.viewer, Some(w.private.generation)).await;
    let cached = || {
        let request = authorize(w.creator, "write", "generation", child);
        server.decide(request)
    };
    assert_eq!(cached().await.decision(), Decision::Allow);
    // Warm: soon the answer comes from the in-process tier (once the
    // replica has read the insert of `child` from the change log).
    eventually(Duration::from_secs(5), "in-process hit", || async {
        match cached().await.source() {
            proto::PermissionSource::InProcessCache => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    db.execute(&format!(
        "UPDATE generations SET parent_id = NULL WHERE id = '{child}'"
    ))
    .await;
    let r = eventually(Duration::from_secs(5), "denied once unlinked", || async {
        let r = cached().await;
        match r.decision() {
            Decision::Deny => Ok(r),
            _ => Err(format!("{r:?}")),
        }
    })
    .await;
    assert_eq!(r.reason, "NO_RELATIONSHIP", "{r:?}");
    server.stop().await;
}
on_both_databases!(
    a_changed_parent_link_invalidates_inherited_grants,
    parent_link_changes
);
