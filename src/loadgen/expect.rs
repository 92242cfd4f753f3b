//! The expected answer for any request against a generated data set, from
//! the rules as written (owner, creator, team role, visibility), over plain
//! maps and with nothing shared with the engine or its SQL. The load
//! generator checks live answers with it; the tests check the server with it.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{
    model::{Action, Permissions, ResourceKind, TeamRole, Visibility},
    workload::{Dataset, Project},
};

/// Indexes over one data set.
pub struct Expected {
    projects: HashMap<Uuid, Project>,
    /// generation id -> (project id, creator)
    generations: HashMap<Uuid, (Uuid, Uuid)>,
    /// media id -> generation id
    media: HashMap<Uuid, Uuid>,
    roles: HashMap<(Uuid, Uuid), TeamRole>,
    disabled: HashMap<Uuid, bool>,
}

impl Expected {
    pub fn new(data: &Dataset) -> Expected {
        Expected {
            projects: data.projects.iter().map(|p| (p.id, p.clone())).collect(),
            generations: data
                .generations
                .iter()
                .map(|g| (g.id, (g.project_id, g.created_by)))
                .collect(),
            media: data.media.iter().map(|m| (m.id, m.generation_id)).collect(),
            roles: data
                .members
                .iter()
                .map(|m| ((m.team_id, m.user_id), m.role))
                .collect(),
            disabled: data.users.iter().map(|u| (u.id, u.disabled)).collect(),
        }
    }

    /// The project a resource lives in and the user who created it (for
    /// generations and media).
    fn locate(&self, kind: ResourceKind, id: Uuid) -> Option<(&Project, Option<Uuid>)> {
        let (project_id, creator) = match kind {
            ResourceKind::Project => (id, None),
            ResourceKind::Generation => {
                let (project, creator) = self.generations.get(&id)?;
                (*project, Some(*creator))
            }
            ResourceKind::Media => {
                let generation = self.media.get(&id)?;
                let (project, creator) = self.generations.get(generation)?;
                (*project, Some(*creator))
            }
        };
        Some((self.projects.get(&project_id)?, creator))
    }

    /// The permission set `user` holds on `kind:id`.
    pub fn permissions(&self, user: Uuid, kind: ResourceKind, id: Uuid) -> Permissions {
        let Some((project, creator)) = self.locate(kind, id) else {
            return Permissions::NONE;
        };
        if self.disabled.get(&user).copied().unwrap_or(false) {
            return Permissions::NONE;
        }
        if project.owner_id == user || creator == Some(user) {
            return Permissions::ALL;
        }
        let role = project
            .team_id
            .and_then(|team| self.roles.get(&(team, user)).copied());
        let by_role = match (role, project.visibility) {
            (Some(TeamRole::Admin), _) => Permissions::ALL,
            (Some(TeamRole::Editor), Visibility::Team | Visibility::Public) => {
                Permissions::of(&[Action::Read, Action::Write])
            }
            (Some(TeamRole::Viewer), Visibility::Team | Visibility::Public) => {
                Permissions::of(&[Action::Read])
            }
            _ => Permissions::NONE,
        };
        match project.visibility {
            Visibility::Public => by_role.union(Permissions::of(&[Action::Read])),
            _ => by_role,
        }
    }

    /// Whether `user` may do `action` on `kind:id`.
    pub fn allows(&self, user: Uuid, action: Action, kind: ResourceKind, id: Uuid) -> bool {
        self.permissions(user, kind, id).contains(action)
    }
}
