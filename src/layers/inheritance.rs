//! Layer 5: a generation made from a parent generation inherits what the
//! subject holds on its ancestors, walking the parent chain within the same
//! project (a remix of another project's generation grants nothing across
//! the boundary) up to the configured depth.
//!
//! Project-wide grants (team role, visibility, project owner) are the same
//! on every generation of a project, so what an ancestor adds is its
//! creator's standing: the creator of an ancestor holds on the descendant
//! what layer 1 gives a creator. The walk is part of the one permission-set
//! query (a recursive CTE) and is invalidated with the project, so a hit
//! costs nothing here. A cycle or an over-deep chain is a data-integrity
//! fault: every request on the resource is denied, naming the fault.

use crate::{
    engine::{
        layer::{Check, Context, Layer, LayerId, Step, Verdict},
        permissions::Absence,
    },
    model::Permissions,
    store::Facts,
};

/// The walk's default depth limit (parent links).
pub const DEFAULT_MAX_DEPTH: u32 = 16;

pub struct GenerationInheritance;

const ID: LayerId = LayerId {
    position: 5,
    name: "generation_inheritance",
};

impl Layer for GenerationInheritance {
    fn id(&self) -> LayerId {
        ID
    }

    fn grant_reason(&self) -> &'static str {
        "INHERITED_FROM_ANCESTOR"
    }

    fn grants(&self, facts: &Facts) -> Permissions {
        if facts.created_an_ancestor {
            Permissions::ALL
        } else {
            Permissions::NONE
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        let fault = ctx.permissions.as_ref().and_then(|set| set.absence());
        let (reason, what) = match fault {
            Some(Absence::ChainCycle) => (
                "GENERATION_CHAIN_CYCLE",
                "its parent chain loops (a generation is its own ancestor)",
            ),
            Some(Absence::ChainTooDeep) => (
                "GENERATION_CHAIN_TOO_DEEP",
                "its parent chain is longer than the configured depth limit",
            ),
            _ => return self.grant_check(ctx),
        };
        Check::Ready(Ok(Step::Decide(Verdict {
            allow: false,
            reason,
            message: format!(
                "{} is denied on {}: data-integrity fault, {what}; repair the parent links",
                ctx.query.subject, ctx.query.resource
            ),
        })))
    }
}
