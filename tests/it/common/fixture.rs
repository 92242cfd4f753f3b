//! A small hand-made world with one actor per rule, and request helpers.

use uuid::Uuid;
use velro_authz::{
    audit::AuditEvent,
    model::workload::{Dataset, Generation, Media, Member, Project, Team, User},
    model::{TeamRole, Visibility},
    proto,
};

pub struct World {
    pub data: Dataset,
    pub owner: Uuid,
    /// An editor of the team who created the generations.
    pub creator: Uuid,
    pub viewer: Uuid,
    pub editor: Uuid,
    pub admin: Uuid,
    /// Admin of another team.
    pub outsider: Uuid,
    /// A viewer of the team whose account is disabled.
    pub disabled: Uuid,
    /// Projects of the team by visibility, each with one generation and its media.
    pub private: Site,
    pub team: Site,
    pub public: Site,
}

#[derive(Clone, Copy)]
pub struct Site {
    pub project: Uuid,
    pub generation: Uuid,
    pub media: Uuid,
}

impl World {
    pub fn new() -> World {
        let id = Uuid::new_v4;
        let (owner, creator, viewer, editor, admin, outsider, disabled) =
            (id(), id(), id(), id(), id(), id(), id());
        let (team_a, team_b) = (id(), id());
        let user = |uid: Uuid, name: &str, disabled: bool| User {
            id: uid,
            email: format!("{name}-{uid}@velro.test"),
            disabled,
        };
        let member = |team_id, user_id, role| Member {
            team_id,
            user_id,
            role,
        };
        let mut data = Dataset {
            users: vec![
                user(owner, "owner", false),
                user(creator, "creator", false),
                user(viewer, "viewer", false),
                user(editor, "editor", false),
                user(admin, "admin", false),
                user(outsider, "outsider", false),
                user(disabled, "disabled", true),
            ],
            teams: vec![
                Team {
                    id: team_a,
                    name: "a".into(),
                },
                Team {
                    id: team_b,
                    name: "b".into(),
                },
            ],
            members: vec![
                member(team_a, creator, TeamRole::Editor),
                member(team_a, viewer, TeamRole::Viewer),
                member(team_a, editor, TeamRole::Editor),
                member(team_a, admin, TeamRole::Admin),
                member(team_a, disabled, TeamRole::Viewer),
                member(team_b, outsider, TeamRole::Admin),
            ],
            ..Dataset::default()
        };
        let mut site = |visibility: Visibility| {
            let s = Site {
                project: id(),
                generation: id(),
                media: id(),
            };
            data.projects.push(Project {
                id: s.project,
                owner_id: owner,
                team_id: Some(team_a),
                visibility,
                name: visibility.as_str().into(),
            });
            data.generations.push(Generation {
                id: s.generation,
                project_id: s.project,
                created_by: creator,
                parent_id: None,
            });
            data.media.push(Media {
                id: s.media,
                generation_id: s.generation,
                object_key: format!("media/{}.png", s.generation),
                kind: "image",
            });
            s
        };
        let (private, team, public) = (
            site(Visibility::Private),
            site(Visibility::Team),
            site(Visibility::Public),
        );
        World {
            data,
            owner,
            creator,
            viewer,
            editor,
            admin,
            outsider,
            disabled,
            private,
            team,
            public,
        }
    }
}

pub fn authorize(user: Uuid, action: &str, kind: &str, id: Uuid) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        user_id: user.to_string(),
        action: action.into(),
        resource: Some(proto::Resource {
            r#type: kind.into(),
            id: id.to_string(),
        }),
        ..Default::default()
    }
}

pub fn item(user: Uuid, action: &str, kind: &str, id: Uuid) -> proto::BatchItem {
    let r = authorize(user, action, kind, id);
    proto::BatchItem {
        user_id: r.user_id,
        action: r.action,
        resource: r.resource,
        ..Default::default()
    }
}

/// An allowed decision's audit event for `subject`, as the writer gets it.
pub fn audit_event(subject: &str, request_id: &str) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at_ms: velro_authz::support::clock::now_ms(),
        kind: "decision".into(),
        subject: subject.to_owned(),
        action: "read".into(),
        resource_type: "project".into(),
        resource_id: Uuid::new_v4().to_string(),
        decision: "allow".into(),
        layer: "team".into(),
        reason: "TEAM_ROLE".into(),
        request_id: request_id.to_owned(),
        ..AuditEvent::default()
    }
}
