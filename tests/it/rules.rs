//! Every rule of the relationship layers, on both databases.

use tonic::Request;
use uuid::Uuid;
use velro_authz::proto::{Decision, PermissionSource};

use crate::{
    common::{
        Db,
        fixture::{World, authorize},
        world_server,
    },
    on_both_databases,
};

struct Case {
    who: &'static str,
    subject: Uuid,
    action: &'static str,
    kind: &'static str,
    id: Uuid,
    allow: bool,
    decided_by: &'static str,
    reason: &'static str,
}

fn cases(w: &World) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut case = |who, subject, action, kind, id, allow, decided_by, reason| {
        cases.push(Case {
            who,
            subject,
            action,
            kind,
            id,
            allow,
            decided_by,
            reason,
        })
    };
    let all = ["read", "write", "delete", "share"];
    // Owners hold everything on their projects and what is in them.
    for site in [w.private, w.team, w.public] {
        for action in all {
            case(
                "owner",
                w.owner,
                action,
                "project",
                site.project,
                true,
                "ownership",
                "OWNER",
            );
            case(
                "owner",
                w.owner,
                action,
                "generation",
                site.generation,
                true,
                "ownership",
                "OWNER",
            );
            case(
                "owner",
                w.owner,
                action,
                "media",
                site.media,
                true,
                "ownership",
                "OWNER",
            );
            // Creators hold everything on their generation and its media, even in a private project.
            case(
                "creator",
                w.creator,
                action,
                "generation",
                site.generation,
                true,
                "ownership",
                "OWNER",
            );
            case(
                "creator",
                w.creator,
                action,
                "media",
                site.media,
                true,
                "ownership",
                "OWNER",
            );
            // Team admins hold everything, private projects included.
            case(
                "admin",
                w.admin,
                action,
                "project",
                site.project,
                true,
                "team",
                "TEAM_ROLE",
            );
            case(
                "admin",
                w.admin,
                action,
                "media",
                site.media,
                true,
                "team",
                "TEAM_ROLE",
            );
        }
    }
    // Team visibility: per role.
    let t = w.team;
    case(
        "viewer",
        w.viewer,
        "read",
        "project",
        t.project,
        true,
        "team",
        "TEAM_ROLE",
    );
    case(
        "viewer",
        w.viewer,
        "read",
        "generation",
        t.generation,
        true,
        "team",
        "TEAM_ROLE",
    );
    case(
        "viewer",
        w.viewer,
        "read",
        "media",
        t.media,
        true,
        "team",
        "TEAM_ROLE",
    );
    for action in ["write", "delete", "share"] {
        case(
            "viewer",
            w.viewer,
            action,
            "project",
            t.project,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
        case(
            "viewer",
            w.viewer,
            action,
            "media",
            t.media,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
    }
    for action in ["read", "write"] {
        case(
            "editor",
            w.editor,
            action,
            "project",
            t.project,
            true,
            "team",
            "TEAM_ROLE",
        );
        case(
            "editor",
            w.editor,
            action,
            "generation",
            t.generation,
            true,
            "team",
            "TEAM_ROLE",
        );
        case(
            "editor",
            w.editor,
            action,
            "media",
            t.media,
            true,
            "team",
            "TEAM_ROLE",
        );
    }
    for action in ["delete", "share"] {
        case(
            "editor",
            w.editor,
            action,
            "project",
            t.project,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
        case(
            "editor",
            w.editor,
            action,
            "generation",
            t.generation,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
    }
    // A creator is an editor on the project itself.
    case(
        "creator",
        w.creator,
        "write",
        "project",
        t.project,
        true,
        "team",
        "TEAM_ROLE",
    );
    case(
        "creator",
        w.creator,
        "delete",
        "project",
        t.project,
        false,
        "default_deny",
        "ACTION_NOT_PERMITTED",
    );
    // Private projects are closed to viewers and editors.
    let p = w.private;
    for action in all {
        case(
            "viewer",
            w.viewer,
            action,
            "project",
            p.project,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
        case(
            "editor",
            w.editor,
            action,
            "project",
            p.project,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
        case(
            "editor",
            w.editor,
            action,
            "generation",
            p.generation,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
        case(
            "viewer",
            w.viewer,
            action,
            "media",
            p.media,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
    }
    // Public projects: read for everyone, roles still apply first.
    let u = w.public;
    let unknown = Uuid::new_v4();
    for kind_id in [
        ("project", u.project),
        ("generation", u.generation),
        ("media", u.media),
    ] {
        case(
            "outsider",
            w.outsider,
            "read",
            kind_id.0,
            kind_id.1,
            true,
            "visibility",
            "PUBLIC_VISIBILITY",
        );
        case(
            "unknown",
            unknown,
            "read",
            kind_id.0,
            kind_id.1,
            true,
            "visibility",
            "PUBLIC_VISIBILITY",
        );
        case(
            "viewer",
            w.viewer,
            "read",
            kind_id.0,
            kind_id.1,
            true,
            "team",
            "TEAM_ROLE",
        );
    }
    case(
        "editor",
        w.editor,
        "write",
        "project",
        u.project,
        true,
        "team",
        "TEAM_ROLE",
    );
    for action in ["write", "delete", "share"] {
        case(
            "outsider",
            w.outsider,
            action,
            "project",
            u.project,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
        case(
            "unknown",
            unknown,
            action,
            "media",
            u.media,
            false,
            "default_deny",
            "ACTION_NOT_PERMITTED",
        );
    }
    // Non-members and unknown subjects get nothing from team projects.
    for action in all {
        case(
            "outsider",
            w.outsider,
            action,
            "project",
            t.project,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
        case(
            "unknown",
            unknown,
            action,
            "generation",
            t.generation,
            false,
            "default_deny",
            "NO_RELATIONSHIP",
        );
    }
    // Disabled accounts hold nothing, not even public read.
    case(
        "disabled",
        w.disabled,
        "read",
        "project",
        t.project,
        false,
        "default_deny",
        "SUBJECT_DISABLED",
    );
    case(
        "disabled",
        w.disabled,
        "read",
        "media",
        u.media,
        false,
        "default_deny",
        "SUBJECT_DISABLED",
    );
    // Unknown resources.
    for kind in ["project", "generation", "media"] {
        case(
            "owner",
            w.owner,
            "read",
            kind,
            Uuid::new_v4(),
            false,
            "default_deny",
            "RESOURCE_NOT_FOUND",
        );
    }
    cases
}

async fn every_rule(db: Db) {
    let (_db, world, mut server) = world_server(db, |_| {}).await;
    let cases = cases(&world);
    assert_eq!(cases.len(), 150, "the table covers every rule");
    for c in &cases {
        let response = server
            .client
            .authorize(Request::new(authorize(c.subject, c.action, c.kind, c.id)))
            .await
            .unwrap_or_else(|e| panic!("{} {} {}: {e}", c.who, c.action, c.kind))
            .into_inner();
        let expected = if c.allow {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let what = format!("{} {} {} -> {response:?}", c.who, c.action, c.kind);
        assert_eq!(response.decision(), expected, "{what}");
        assert_eq!(response.decided_by, c.decided_by, "{what}");
        assert_eq!(response.reason, c.reason, "{what}");
        assert!(!response.message.is_empty(), "{what}");
        assert!(Uuid::parse_str(&response.decision_id).is_ok(), "{what}");
        if c.allow {
            assert!(response.permissions.iter().any(|p| p == c.action), "{what}");
        } else {
            assert!(
                !response.permissions.iter().any(|p| p == c.action),
                "{what}"
            );
        }
    }
    server.stop().await;
}
on_both_databases!(every_rule_of_the_relationship_layers, every_rule);

async fn caches_unless_fully_consistent(db: Db) {
    let (db, world, mut server) = world_server(db, |_| {}).await;
    let request = authorize(world.editor, "write", "project", world.team.project);
    let mut sources = Vec::new();
    for _ in 0..3 {
        let r = server
            .client
            .authorize(request.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sources.push(r.into_inner().source());
    }
    assert_eq!(
        sources,
        [
            PermissionSource::Computed,
            PermissionSource::InProcessCache,
            PermissionSource::InProcessCache
        ]
    );
    let before = server
        .metric("velro_authz_permission_computations_total")
        .await;
    let mut consistent = request.clone();
    consistent.consistency = velro_authz::proto::Consistency::FullyConsistent as i32;
    for _ in 0..3 {
        let r = server
            .client
            .authorize(consistent.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.get_ref().source(), PermissionSource::Computed);
        assert_eq!(r.get_ref().decision(), Decision::Allow);
    }
    let after = server
        .metric("velro_authz_permission_computations_total")
        .await;
    assert_eq!(after - before, 3.0, "each fully consistent check computes");

    // A write made behind the cache's back shows at once under FULLY_CONSISTENT.
    db.execute(&format!(
        "DELETE FROM team_members WHERE user_id = '{}'",
        world.editor
    ))
    .await;
    let fresh = server
        .client
        .authorize(consistent)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fresh.get_ref().decision(), Decision::Deny);
    assert_eq!(fresh.get_ref().reason, "NO_RELATIONSHIP");
    server.stop().await;
}
on_both_databases!(
    in_process_cache_and_full_consistency,
    caches_unless_fully_consistent
);
