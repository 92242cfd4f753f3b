//! The expected answer for any request against a generated data set, from
//! the rules as written (owner, creator, team role, visibility, creator of
//! an ancestor generation in the same project), over plain maps and with
//! nothing shared with the engine or its SQL. The load
//! generator checks live answers with it; the tests check the server with it.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{
    model::workload::{Dataset, Project},
    model::{Action, Permissions, ResourceKind, TeamRole, Visibility},
};

/// Parent links followed (the service's default `max_chain_depth`; the
/// generated chains are shorter).
const MAX_DEPTH: usize = 16;

/// Indexes over one data set.
pub struct Expected {
    projects: HashMap<Uuid, Project>,
    /// generation id -> (project id, creator)
    generations: HashMap<Uuid, (Uuid, Uuid)>,
    /// generation id -> parent generation id
    parents: HashMap<Uuid, Uuid>,
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
            parents: data
                .generations
                .iter()
                .filter_map(|g| Some((g.id, g.parent_id?)))
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

    /// The project a resource lives in and the users who created it or, in
    /// the same project and within `MAX_DEPTH` parent links, its ancestors
    /// (for generations and media).
    fn locate(&self, kind: ResourceKind, id: Uuid) -> Option<(&Project, Vec<Uuid>)> {
        let generation = match kind {
            ResourceKind::Project => return Some((self.projects.get(&id)?, Vec::new())),
            ResourceKind::Generation => id,
            ResourceKind::Media => *self.media.get(&id)?,
        };
        let (project, creator) = *self.generations.get(&generation)?;
        let mut creators = vec![creator];
        let mut at = generation;
        for _ in 0..MAX_DEPTH {
            let Some(parent) = self.parents.get(&at) else {
                break;
            };
            match self.generations.get(parent) {
                Some((p, c)) if *p == project => creators.push(*c),
                _ => break,
            }
            at = *parent;
        }
        Some((self.projects.get(&project)?, creators))
    }

    /// The permission set `user` holds on `kind:id`.
    pub fn permissions(&self, user: Uuid, kind: ResourceKind, id: Uuid) -> Permissions {
        let Some((project, creators)) = self.locate(kind, id) else {
            return Permissions::NONE;
        };
        if self.disabled.get(&user).copied().unwrap_or(false) {
            return Permissions::NONE;
        }
        if project.owner_id == user || creators.contains(&user) {
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
