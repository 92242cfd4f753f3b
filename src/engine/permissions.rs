//! Permission sets: what a subject holds on a resource, which layer granted
//! each action, and their text form for the shared cache tiers.

use std::sync::Arc;

use uuid::Uuid;

use crate::{
    engine::layer::LayerId,
    model::{Action, Permissions},
};

/// Where a permission set came from, as reported to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermissionSource {
    /// No permission set was needed (a guard decided first).
    None,
    InProcessCache,
    RedisCache,
    DatabaseCache,
    Computed,
}

impl PermissionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionSource::None => "none",
            PermissionSource::InProcessCache => "in_process",
            PermissionSource::RedisCache => "redis",
            PermissionSource::DatabaseCache => "database",
            PermissionSource::Computed => "computed",
        }
    }
}

/// Why a permission set is empty before any layer looked at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Absence {
    ResourceNotFound,
    SubjectDisabled,
    /// The generation's parent chain loops: a data-integrity fault.
    ChainCycle,
    /// The parent chain is longer than the depth limit: a data-integrity fault.
    ChainTooDeep,
}

impl Absence {
    const CODES: [(Absence, &'static str); 4] = [
        (Absence::ResourceNotFound, "nf"),
        (Absence::SubjectDisabled, "sd"),
        (Absence::ChainCycle, "cy"),
        (Absence::ChainTooDeep, "td"),
    ];

    fn code(self) -> &'static str {
        Absence::CODES
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("-", |(_, c)| c)
    }

    fn from_code(code: &str) -> Option<Absence> {
        Absence::CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(a, _)| *a)
    }
}

/// What a cached answer depends on besides its key (checked against the
/// change log before a cached set is used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Deps {
    pub project: Option<Uuid>,
    pub team: Option<Uuid>,
}

/// Which layer granted an action, and the reason code an allow carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub layer: LayerId,
    pub reason: &'static str,
}

/// A computed permission set, as cached under `user:resource`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PermissionSet {
    /// For each action (by `Action::index`), the first layer that granted it.
    pub(super) granted: [Option<Grant>; 4],
    pub(super) absence: Option<Absence>,
    /// The project and team the answer was drawn from (for invalidation).
    pub(super) deps: Deps,
    /// A media object's storage key (for the signed URL of an allowed read).
    pub(super) object_key: Option<Arc<str>>,
}

impl PermissionSet {
    pub fn absent(why: Absence) -> Self {
        PermissionSet {
            granted: [None; 4],
            absence: Some(why),
            deps: Deps::default(),
            object_key: None,
        }
    }

    pub fn object_key(&self) -> Option<&str> {
        self.object_key.as_deref()
    }

    pub fn deps(&self) -> Deps {
        self.deps
    }

    pub fn permissions(&self) -> Permissions {
        let held: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| self.granted[a.index()].is_some())
            .collect();
        Permissions::of(&held)
    }

    pub fn granted_by(&self, action: Action) -> Option<LayerId> {
        self.granted[action.index()].map(|g| g.layer)
    }

    pub fn absence(&self) -> Option<Absence> {
        self.absence
    }

    /// A compact text form for shared cache tiers:
    /// `granting layer positions (0: none) | absence | project | team |
    /// object key` (the key last: it may hold `|`).
    pub fn encode(&self) -> String {
        let layers: Vec<String> = self
            .granted
            .iter()
            .map(|g| g.map_or(0, |g| g.layer.position).to_string())
            .collect();
        let absence = self.absence.map_or("-", Absence::code);
        let id = |u: Option<Uuid>| u.map_or_else(|| "-".to_owned(), |u| u.to_string());
        // An object key is stored with a leading `=` so that "none" (`-`)
        // and a key spelled `-` stay apart.
        let object_key = self
            .object_key
            .as_deref()
            .map_or_else(|| "-".to_owned(), |k| format!("={k}"));
        format!(
            "{}|{absence}|{}|{}|{object_key}",
            layers.join(","),
            id(self.deps.project),
            id(self.deps.team)
        )
    }

    /// The inverse of `encode`, given the grants of the stack's layers by
    /// position (`Resolver::decode`); `None` for anything malformed or for a
    /// layer this stack does not have (a cache entry that cannot be read is
    /// a miss, never an answer).
    pub(super) fn decode(text: &str, grants: &[Grant]) -> Option<PermissionSet> {
        let mut parts = text.splitn(5, '|');
        let layers = parts.next()?;
        let absence = match parts.next()? {
            "-" => None,
            code => Some(Absence::from_code(code)?),
        };
        let id = |t: &str| match t {
            "-" => Some(None),
            t => Uuid::parse_str(t).ok().map(Some),
        };
        let deps = Deps {
            project: id(parts.next()?)?,
            team: id(parts.next()?)?,
        };
        let object_key = match parts.next()? {
            "-" => None,
            key => Some(Arc::from(key.strip_prefix('=')?)),
        };
        let mut granted = [None; 4];
        let positions: Vec<&str> = layers.split(',').collect();
        if positions.len() != 4 {
            return None;
        }
        for (slot, position) in granted.iter_mut().zip(positions) {
            let position: u8 = position.parse().ok()?;
            if position != 0 {
                *slot = Some(*grants.iter().find(|g| g.layer.position == position)?);
            }
        }
        Some(PermissionSet {
            granted,
            absence,
            deps,
            object_key,
        })
    }

    /// The reason code an allow carries, as the granting layer names it.
    pub fn grant_reason(&self, action: Action) -> &'static str {
        self.granted[action.index()].map_or("GRANTED", |g| g.reason)
    }
}
