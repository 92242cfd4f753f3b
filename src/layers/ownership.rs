//! Layer 1: owners and creators hold every permission.
//!
//! The owner of a project, the creator of a generation and the creator of a
//! media object's generation may do anything to it.

use crate::{
    engine::layer::{Layer, LayerId},
    model::Permissions,
    store::Facts,
};

pub struct Ownership;

impl Layer for Ownership {
    fn id(&self) -> LayerId {
        LayerId {
            position: 1,
            name: "ownership",
        }
    }

    fn grant_reason(&self) -> &'static str {
        "OWNER"
    }

    fn grants(&self, facts: &Facts) -> Permissions {
        if facts.is_project_owner || facts.is_creator {
            Permissions::ALL
        } else {
            Permissions::NONE
        }
    }
}
