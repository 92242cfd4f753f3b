//! Layer 4: security context validation. A guard: it can deny, never
//! grant. It looks at where a request comes from (client IP, country, user
//! agent) and, when the request names a session, at that session (live,
//! the subject's own, same network and user agent as when it started, no
//! impossible travel). Every denial names the rule that fired.
//!
//! Nothing here costs a database round trip on a hit: rules live in memory,
//! sessions are cached and dropped through the change log, and a team's
//! network rules read the resource's team from the permission set the
//! cache layer would load anyway (this layer loads it early, through the
//! same tiers, only when team rules exist).

mod network;
mod sessions;

use std::{collections::HashMap, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use regex::RegexSet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use network::{Geo, IpRefusal, check_country, same_network};
pub use network::{GeoEntry, IpRules};
use sessions::Sessions;

use crate::{
    cache::PermissionCache,
    cache::freshness::Freshness,
    engine::layer::{Check, Context, Layer, LayerId, Step, Verdict},
    error::AuthzError,
    layers::cache::load_permissions,
    store::Store,
    support::clock::now_unix,
    support::duration::HumanDuration,
};

/// What to do when a session is used from another network or user agent
/// than the one it started with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangePolicy {
    Allow,
    Deny,
    /// Allow, and flag the decision (reported, counted, audited).
    #[default]
    Flag,
}

/// `[security_context]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityContextConfig {
    /// Global CIDR lists (`ip_allow`, `ip_deny`).
    #[serde(flatten)]
    pub ip: IpRules,
    /// Per team: `[[security_context.teams]] team = "<uuid>"` with its own
    /// `ip_allow` / `ip_deny`, applied to the team's projects.
    pub teams: Vec<TeamRules>,
    /// When non-empty, only clients from these countries pass.
    pub country_allow: Vec<String>,
    pub country_deny: Vec<String>,
    /// A MaxMind-format country (or city) database; wins over `geo_table`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_database: Option<PathBuf>,
    /// `[[security_context.geo_table]] cidr = "…", country = "DE"`.
    pub geo_table: Vec<GeoEntry>,
    /// Regular expressions (`(?i)` for case-insensitive); a match denies.
    pub user_agent_deny: Vec<String>,
    pub deny_empty_user_agent: bool,
    pub session_network_change: ChangePolicy,
    pub session_user_agent_change: ChangePolicy,
    /// Prefix lengths that make "the same network".
    pub network_prefix_v4: u8,
    pub network_prefix_v6: u8,
    /// A session seen in another country sooner than this after its last
    /// request (or its start) is denied; `0s` turns the rule off.
    pub impossible_travel: HumanDuration,
}

impl Default for SecurityContextConfig {
    fn default() -> Self {
        SecurityContextConfig {
            ip: IpRules::default(),
            teams: Vec::new(),
            country_allow: Vec::new(),
            country_deny: Vec::new(),
            geoip_database: None,
            geo_table: Vec::new(),
            user_agent_deny: Vec::new(),
            deny_empty_user_agent: false,
            session_network_change: ChangePolicy::Flag,
            session_user_agent_change: ChangePolicy::Flag,
            network_prefix_v4: 24,
            network_prefix_v6: 64,
            impossible_travel: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamRules {
    pub team: Uuid,
    #[serde(flatten)]
    pub ip: IpRules,
}

pub struct SecurityContext {
    ip: IpRules,
    teams: HashMap<Uuid, IpRules>,
    country_allow: Vec<String>,
    country_deny: Vec<String>,
    geo: Geo,
    user_agent_deny: (Vec<String>, RegexSet),
    deny_empty_user_agent: bool,
    network_change: ChangePolicy,
    user_agent_change: ChangePolicy,
    prefixes: (u8, u8),
    travel_window: i64,
    sessions: Sessions,
    cache: Arc<PermissionCache>,
}

fn deny(reason: &'static str, message: String) -> Step {
    Step::Decide(Verdict {
        allow: false,
        reason,
        message,
    })
}

impl SecurityContext {
    /// Checks the configuration (patterns, country codes, the geo file).
    pub fn new(
        config: &SecurityContextConfig,
        store: Arc<dyn Store>,
        freshness: Arc<Freshness>,
        cache: Arc<PermissionCache>,
    ) -> Result<SecurityContext, String> {
        for code in config.country_allow.iter().chain(&config.country_deny) {
            check_country(code)?;
        }
        let patterns = RegexSet::new(&config.user_agent_deny)
            .map_err(|e| format!("security_context.user_agent_deny: {e}"))?;
        if config.network_prefix_v4 > 32 || config.network_prefix_v6 > 128 {
            return Err("security_context.network_prefix_v4/v6: at most 32 and 128".to_owned());
        }
        let mut teams = HashMap::new();
        for rules in &config.teams {
            if teams.insert(rules.team, rules.ip.clone()).is_some() {
                return Err(format!(
                    "security_context.teams lists team {} twice",
                    rules.team
                ));
            }
        }
        Ok(SecurityContext {
            ip: config.ip.clone(),
            teams,
            country_allow: config.country_allow.clone(),
            country_deny: config.country_deny.clone(),
            geo: Geo::load(config.geoip_database.as_deref(), &config.geo_table)?,
            user_agent_deny: (config.user_agent_deny.clone(), patterns),
            deny_empty_user_agent: config.deny_empty_user_agent,
            network_change: config.session_network_change,
            user_agent_change: config.session_user_agent_change,
            prefixes: (config.network_prefix_v4, config.network_prefix_v6),
            travel_window: config.impossible_travel.0.as_secs() as i64,
            sessions: Sessions::new(store, freshness, config.impossible_travel.0),
            cache,
        })
    }

    /// The rules that need nothing but the request.
    fn request_rules(&self, ctx: &Context<'_>) -> Option<Step> {
        let facts = ctx.request;
        let agent = facts.user_agent.as_str();
        if agent.is_empty() && self.deny_empty_user_agent {
            return Some(deny(
                "USER_AGENT_EMPTY",
                "the request carries no user agent (rule deny_empty_user_agent)".to_owned(),
            ));
        }
        if let Some(i) = self.user_agent_deny.1.matches(agent).iter().next() {
            return Some(deny(
                "USER_AGENT_DENIED",
                format!(
                    "the user agent matches user_agent_deny pattern {:?}",
                    self.user_agent_deny.0[i]
                ),
            ));
        }
        if let Err(refusal) = self.ip.judge(facts.ip) {
            return Some(ip_denial(refusal, facts.ip, None));
        }
        let country = facts.ip.and_then(|ip| self.geo.country(ip));
        match &country {
            Some(c) if self.country_deny.contains(c) => Some(deny(
                "COUNTRY_DENIED",
                format!("requests from {c} are refused (rule country_deny)"),
            )),
            Some(c) if !self.country_allow.is_empty() && !self.country_allow.contains(c) => {
                Some(deny(
                    "COUNTRY_NOT_ALLOWED",
                    format!("{c} is not in country_allow"),
                ))
            }
            None if !self.country_allow.is_empty() => Some(deny(
                "COUNTRY_UNKNOWN",
                "the client's country is unknown and country_allow is set".to_owned(),
            )),
            _ => None,
        }
    }

    /// The session named by the request: live, the subject's, consistent
    /// with where it started.
    async fn session_rules(&self, ctx: &mut Context<'_>) -> Result<Option<Step>, AuthzError> {
        let Ok(id) = Uuid::parse_str(&ctx.request.session_id) else {
            return Ok(Some(deny(
                "SESSION_UNKNOWN",
                "context.session_id is not a session id".to_owned(),
            )));
        };
        let Some(session) = self.sessions.get(id).await? else {
            return Ok(Some(deny(
                "SESSION_UNKNOWN",
                format!("session {id} does not exist"),
            )));
        };
        if session.ended {
            return Ok(Some(deny(
                "SESSION_REVOKED",
                format!("session {id} has ended (revoked or its user disabled)"),
            )));
        }
        if session.user_id != ctx.query.subject {
            return Ok(Some(deny(
                "SESSION_FOREIGN",
                format!("session {id} belongs to another user"),
            )));
        }
        let ip = ctx.request.ip;
        let (v4, v6) = self.prefixes;
        if let (Some(now), Some(then)) = (ip, session.client_ip)
            && !same_network(now, then, v4, v6)
        {
            let message = format!("session {id} started from {then}, now used from {now}");
            if let Some(step) = apply_policy(
                self.network_change,
                ctx,
                "SESSION_NETWORK_CHANGED",
                "session_network_changed",
                message,
            ) {
                return Ok(Some(step));
            }
        }
        let agent = ctx.request.user_agent.as_str();
        if !agent.is_empty() && !session.user_agent.is_empty() && agent != session.user_agent {
            let message = format!("session {id} started with another user agent");
            if let Some(step) = apply_policy(
                self.user_agent_change,
                ctx,
                "SESSION_USER_AGENT_CHANGED",
                "session_user_agent_changed",
                message,
            ) {
                return Ok(Some(step));
            }
        }
        Ok(self.travel(id, ip, session.client_ip, session.started_at))
    }

    /// Denies a country change faster than the travel window.
    fn travel(
        &self,
        id: Uuid,
        ip: Option<IpAddr>,
        start_ip: Option<IpAddr>,
        started_at: i64,
    ) -> Option<Step> {
        if self.travel_window == 0 {
            return None;
        }
        let country = self.geo.country(ip?)?;
        let now = now_unix() as i64;
        let before = self.sessions.last_seen(id).or_else(|| {
            start_ip
                .and_then(|ip| self.geo.country(ip))
                .map(|c| (c, started_at))
        });
        if let Some((was, at)) = before
            && was != country
            && now - at < self.travel_window
        {
            return Some(deny(
                "IMPOSSIBLE_TRAVEL",
                format!(
                    "session {id} was in {was} {}s ago and is now in {country} \
                     (rule impossible_travel: {}s)",
                    now - at,
                    self.travel_window
                ),
            ));
        }
        self.sessions.seen(id, country, now);
        None
    }

    /// The network rules of the resource's team, if it has any.
    async fn team_rules(&self, ctx: &mut Context<'_>) -> Result<Option<Step>, AuthzError> {
        if ctx.permissions.is_none() {
            load_permissions(&self.cache, ctx).await?;
        }
        let team = ctx.permissions.as_ref().and_then(|set| set.deps().team);
        let Some((team, rules)) = team.and_then(|t| Some((t, self.teams.get(&t)?))) else {
            return Ok(None);
        };
        Ok(rules
            .judge(ctx.request.ip)
            .err()
            .map(|refusal| ip_denial(refusal, ctx.request.ip, Some(team))))
    }
}

/// Applies a change policy: deny, or flag and go on, or nothing.
fn apply_policy(
    policy: ChangePolicy,
    ctx: &mut Context<'_>,
    reason: &'static str,
    flag: &'static str,
    message: String,
) -> Option<Step> {
    match policy {
        ChangePolicy::Allow => None,
        ChangePolicy::Flag => {
            ctx.flags.push(flag);
            None
        }
        ChangePolicy::Deny => Some(deny(reason, message)),
    }
}

fn ip_denial(refusal: IpRefusal, ip: Option<IpAddr>, team: Option<Uuid>) -> Step {
    let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let (whose, [unknown, denied, not_allowed]) = match team {
        None => (String::new(), ["IP_UNKNOWN", "IP_DENIED", "IP_NOT_ALLOWED"]),
        Some(team) => (
            format!("team {team}'s "),
            ["TEAM_IP_UNKNOWN", "TEAM_IP_DENIED", "TEAM_IP_NOT_ALLOWED"],
        ),
    };
    match refusal {
        IpRefusal::Unknown => deny(
            unknown,
            format!("the request carries no client ip and {whose}ip_allow is set"),
        ),
        IpRefusal::Denied(net) => deny(
            denied,
            format!("client ip {ip} is in {whose}ip_deny range {net}"),
        ),
        IpRefusal::NotAllowed => deny(
            not_allowed,
            format!("client ip {ip} is in no {whose}ip_allow range"),
        ),
    }
}

impl Layer for SecurityContext {
    fn id(&self) -> LayerId {
        LayerId {
            position: 4,
            name: "security_context",
        }
    }

    fn check<'a>(&'a self, ctx: &'a mut Context<'_>) -> Check<'a> {
        if let Some(step) = self.request_rules(ctx) {
            return Check::Ready(Ok(step));
        }
        if ctx.request.session_id.is_empty() && self.teams.is_empty() {
            return Check::Ready(Ok(Step::Pass));
        }
        Check::Later(Box::pin(async move {
            if !ctx.request.session_id.is_empty()
                && let Some(step) = self.session_rules(ctx).await?
            {
                return Ok(step);
            }
            if !self.teams.is_empty()
                && let Some(step) = self.team_rules(ctx).await?
            {
                return Ok(step);
            }
            Ok(Step::Pass)
        }))
    }
}
