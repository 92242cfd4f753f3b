//! Layer 9: emergency and recovery. Kill switches deny at once on every
//! replica: a global lockdown (break-glass users excepted), a team's
//! resources, a user. The degradation half of the layer lives where the
//! dependencies are called: the database breaker in the resolver, the
//! bounded staleness of cached answers in the cache, readiness on the ops
//! port.

pub mod switches;

use std::sync::Arc;

use crate::{
    cache::PermissionCache,
    engine::layer::{Check, Context, Layer, LayerId, Step, Verdict},
    layers::cache::load_permissions,
    layers::emergency::switches::KillSwitches,
    store::control::KillSwitch,
};

pub struct Emergency {
    switches: Arc<KillSwitches>,
    cache: Arc<PermissionCache>,
}

impl Emergency {
    pub fn new(switches: Arc<KillSwitches>, cache: Arc<PermissionCache>) -> Self {
        Emergency { switches, cache }
    }
}

fn deny(reason: &'static str, what: &str, switch: &KillSwitch) -> Step {
    let why = match switch.reason.as_str() {
        "" => String::new(),
        given => format!(": {given}"),
    };
    Step::Decide(Verdict {
        allow: false,
        reason,
        message: format!(
            "{what} is locked down by a kill switch set by {}{why}",
            if switch.set_by.is_empty() {
                "an operator"
            } else {
                &switch.set_by
            }
        ),
    })
}

impl Layer for Emergency {
    fn id(&self) -> LayerId {
        LayerId {
            position: 9,
            name: "emergency",
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        let Some(switches) = self.switches.current() else {
            return Check::Ready(Ok(Step::Pass));
        };
        let subject = ctx.query.subject;
        if let Some(switch) = &switches.global
            && !self.switches.break_glass.contains(&subject)
        {
            return Check::Ready(Ok(deny("LOCKDOWN_GLOBAL", "the service", switch)));
        }
        if let Some(switch) = switches.users.get(&subject) {
            return Check::Ready(Ok(deny(
                "LOCKDOWN_USER",
                &format!("user {subject}"),
                switch,
            )));
        }
        if switches.teams.is_empty() {
            return Check::Ready(Ok(Step::Pass));
        }
        // A team lockdown covers the team's projects: the resource's team
        // comes with its permission set.
        Check::Later(Box::pin(async move {
            if ctx.permissions.is_none() {
                load_permissions(&self.cache, ctx).await?;
            }
            let team = ctx.permissions.as_ref().and_then(|p| p.deps().team);
            Ok(
                match team.and_then(|t| switches.teams.get(&t).map(|s| (t, s))) {
                    Some((team, switch)) => deny("LOCKDOWN_TEAM", &format!("team {team}"), switch),
                    None => Step::Pass,
                },
            )
        }))
    }
}
