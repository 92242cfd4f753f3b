//! Gradual rollout of the guard layers (as Envoy's RBAC `shadow_rules` and
//! OPA-Envoy's `dry-run`): a guard, or one of its rules (a deny reason), is
//! enforced, watched in shadow (its would-deny recorded, the request let
//! through), or enforced for a stable share of subjects (10 -> 50 -> 100 %).
//! Reloaded from the config file without a restart.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// How a guard's denials are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    /// Evaluated and recorded, never enforced.
    Shadow,
    /// Enforced for this share of subjects (0 to 100), the same ones always.
    Percent(u8),
}

impl Mode {
    /// Whether a denial of `subject` is enforced.
    pub fn enforces(self, subject: &str) -> bool {
        match self {
            Mode::Enforce => true,
            Mode::Shadow => false,
            Mode::Percent(share) => bucket(subject) < u32::from(share),
        }
    }
}

/// A subject's place in 0..100: a stable hash (SHA-256, the same on every
/// replica and release), so raising a share only adds subjects.
pub fn bucket(subject: &str) -> u32 {
    let digest = Sha256::digest(subject.as_bytes());
    let mut head = [0u8; 4];
    head.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(head) % 100
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "enforce" => Ok(Mode::Enforce),
            "shadow" => Ok(Mode::Shadow),
            other => match other.strip_suffix('%').map(|n| n.trim().parse::<u8>()) {
                Some(Ok(share)) if share <= 100 => Ok(Mode::Percent(share)),
                _ => Err(format!(
                    "rollout mode {other:?}: use \"enforce\", \"shadow\" or a share such as \"10%\""
                )),
            },
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Enforce => f.write_str("enforce"),
            Mode::Shadow => f.write_str("shadow"),
            Mode::Percent(share) => write!(f, "{share}%"),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[rollout]` TOML section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Layer 4.
    pub security_context: Mode,
    /// Layer 9.
    pub emergency: Mode,
    /// Layer 10.
    pub rate_limit: Mode,
    /// One rule of a guard, by the reason its denials carry
    /// (`COUNTRY_DENIED`, `SESSION_NETWORK_CHANGED`, `RATE_LIMITED`, …):
    /// wins over its layer's mode.
    pub rules: BTreeMap<String, Mode>,
    /// Envoy ext_authz: always allow, with the would-be answer in the
    /// `x-velro-authz-dry-run` response header and the audit log.
    pub ext_authz_dry_run: bool,
}

impl RolloutConfig {
    /// Reads `[rollout]` (only) from a settings file's text.
    pub fn from_settings_toml(text: &str) -> Result<RolloutConfig, String> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            rollout: Option<toml::Value>,
        }
        let only: Only = toml::from_str(text).map_err(|e| e.to_string())?;
        match only.rollout {
            None => Ok(RolloutConfig::default()),
            Some(value) => value.try_into().map_err(|e| format!("[rollout]: {e}")),
        }
    }

    /// The mode of a denial by `layer` for `reason`.
    fn mode(&self, layer: &str, reason: &str) -> Mode {
        if let Some(mode) = self.rules.get(reason) {
            return *mode;
        }
        match layer {
            "security_context" => self.security_context,
            "emergency" => self.emergency,
            "rate_limit" => self.rate_limit,
            // Relationship layers and the default deny are never shadowed.
            _ => Mode::Enforce,
        }
    }
}

/// The modes in force, swapped whole on reload.
#[derive(Default)]
pub struct Rollout {
    config: RwLock<Arc<RolloutConfig>>,
}

impl Rollout {
    pub fn new(config: RolloutConfig) -> Arc<Rollout> {
        Arc::new(Rollout {
            config: RwLock::new(Arc::new(config)),
        })
    }

    fn current(&self) -> Arc<RolloutConfig> {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs new modes; says what changed.
    pub fn replace(&self, config: RolloutConfig) {
        let mut slot = match self.config.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **slot != config {
            tracing::warn!(?config, "rollout modes changed");
            *slot = Arc::new(config);
        }
    }

    /// Whether `layer`'s denial of `subject` for `reason` is enforced.
    pub fn enforces(&self, layer: &str, reason: &str, subject: &str) -> bool {
        self.current().mode(layer, reason).enforces(subject)
    }

    pub fn ext_authz_dry_run(&self) -> bool {
        self.current().ext_authz_dry_run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for (text, mode) in [
            ("enforce", Mode::Enforce),
            ("shadow", Mode::Shadow),
            ("10%", Mode::Percent(10)),
            ("100%", Mode::Percent(100)),
        ] {
            assert_eq!(text.parse::<Mode>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        for bad in ["", "enforced", "101%", "-1%", "ten%"] {
            assert!(bad.parse::<Mode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_wins_over_its_layer_and_relationship_layers_always_enforce() {
        let config = RolloutConfig::from_settings_toml(
            "listen = \"0.0.0.0:1\"\n[rollout]\nsecurity_context = \"shadow\"\n\
             rules = { COUNTRY_DENIED = \"enforce\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.mode("security_context", "IP_DENIED"), Mode::Shadow);
        assert_eq!(
            config.mode("security_context", "COUNTRY_DENIED"),
            Mode::Enforce
        );
        assert_eq!(config.mode("team", "NOT_A_MEMBER"), Mode::Enforce);
        assert!(RolloutConfig::from_settings_toml("[rollout]\nrate_limit = \"half\"").is_err());
    }

    #[test]
    fn raising_a_share_only_adds_subjects() {
        let subjects: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let at = |share| -> Vec<&String> {
            subjects
                .iter()
                .filter(|s| Mode::Percent(share).enforces(s))
                .collect()
        };
        let (ten, fifty) = (at(10), at(50));
        assert!(ten.iter().all(|s| fifty.contains(s)));
        assert_eq!(at(0).len(), 0);
        assert_eq!(at(100).len(), 1000);
    }
}
