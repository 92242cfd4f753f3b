//! Layer 3: a `public` project (and its generations and media) may be read by
//! anyone, including subjects the store does not know.

use crate::{
    engine::layer::{Layer, LayerId},
    model::{self, Action, Permissions},
    store::Facts,
};

pub struct Visibility;

impl Layer for Visibility {
    fn id(&self) -> LayerId {
        LayerId {
            position: 3,
            name: "visibility",
        }
    }

    fn grant_reason(&self) -> &'static str {
        "PUBLIC_VISIBILITY"
    }

    fn grants(&self, facts: &Facts) -> Permissions {
        if facts.visibility == model::Visibility::Public {
            Permissions::of(&[Action::Read])
        } else {
            Permissions::NONE
        }
    }
}
