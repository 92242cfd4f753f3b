//! Layer 2: a team role on the resource's project grants per role.
//!
//! viewer: read; editor: read, write; admin: everything. A `private`
//! project is closed to its team except to the team's admins.

use crate::{
    engine::layer::{Layer, LayerId},
    model::{Permissions, TeamRole, Visibility},
    store::Facts,
};

pub struct TeamAccess;

impl Layer for TeamAccess {
    fn id(&self) -> LayerId {
        LayerId {
            position: 2,
            name: "team",
        }
    }

    fn grant_reason(&self) -> &'static str {
        "TEAM_ROLE"
    }

    fn grants(&self, facts: &Facts) -> Permissions {
        match (facts.team_role, facts.visibility) {
            (None, _) => Permissions::NONE,
            (Some(role), Visibility::Private) if role != TeamRole::Admin => Permissions::NONE,
            (Some(role), _) => role.permissions(),
        }
    }
}
