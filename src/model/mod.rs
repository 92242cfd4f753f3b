//! The vocabulary of a decision: actions, permission sets, resources and the
//! validated query the engine evaluates.

pub mod workload;

use std::fmt;

use uuid::Uuid;

/// What a subject wants to do. The order is the canonical order of a
/// permission set when listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Write,
    Delete,
    Share,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Read, Action::Write, Action::Delete, Action::Share];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Share => "share",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions, as a bit set: cheap to copy, cache and compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const ALL: Permissions = Permissions(0b1111);

    pub fn of(actions: &[Action]) -> Permissions {
        Permissions(actions.iter().fold(0, |bits, a| bits | a.bit()))
    }

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Canonical names, e.g. `["read", "write"]`.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_owned()).collect()
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let names: Vec<&str> = self.iter().map(Action::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Project,
    Generation,
    Media,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 3] = [
        ResourceKind::Project,
        ResourceKind::Generation,
        ResourceKind::Media,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Project => "project",
            ResourceKind::Generation => "generation",
            ResourceKind::Media => "media",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub id: Uuid,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// The cache key of a permission set: `user:resource`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PermissionKey {
    pub subject: Uuid,
    pub resource: ResourceRef,
}

impl fmt::Display for PermissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.subject, self.resource)
    }
}

/// How fresh an answer must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Any cache tier may answer.
    #[default]
    MinimizeLatency,
    /// Every cache tier is bypassed.
    FullyConsistent,
    /// Caches only once this replica applied the change-log revision.
    AtLeastAsFresh(i64),
}

/// A project's visibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Visibility {
    Private,
    Team,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Team => "team",
            Visibility::Public => "public",
        }
    }

    pub fn parse(text: &str) -> Option<Visibility> {
        [Visibility::Private, Visibility::Team, Visibility::Public]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// A member's role in a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TeamRole {
    Viewer,
    Editor,
    Admin,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Viewer => "viewer",
            TeamRole::Editor => "editor",
            TeamRole::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<TeamRole> {
        [TeamRole::Viewer, TeamRole::Editor, TeamRole::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
    }

    /// What the role grants on a project it can see.
    pub fn permissions(self) -> Permissions {
        match self {
            TeamRole::Viewer => Permissions::of(&[Action::Read]),
            TeamRole::Editor => Permissions::of(&[Action::Read, Action::Write]),
            TeamRole::Admin => Permissions::ALL,
        }
    }
}

/// Optional facts about the caller, carried for guards and the audit trail.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: String,
    pub session_id: String,
    pub request_id: String,
    /// A signed media URL presented as the credential (layer 6).
    pub signed_url: String,
}

/// One validated check.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub subject: Uuid,
    pub action: Action,
    pub resource: ResourceRef,
}

impl Query {
    pub fn key(&self) -> PermissionKey {
        PermissionKey {
            subject: self.subject,
            resource: self.resource,
        }
    }
}
