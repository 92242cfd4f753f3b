//! Real-time threat detection on the audit stream: a burst of denials for
//! one principal, or on one resource, within a fixed window raises one
//! alert per window. It sees the events that pass through the writer's
//! queue (not those spilled because the queue was full).

use std::{collections::HashMap, time::Duration};

use super::AuditEvent;

/// Windows remembered before expired ones are pruned.
const MAX_TRACKED: usize = 100_000;

struct Window {
    start_ms: i64,
    denials: u32,
}

pub struct Bursts {
    threshold: u32,
    window_ms: i64,
    windows: HashMap<String, Window>,
    /// Bursts found since `logged_at_ms`, by kind, with one example each:
    /// logged as one line per window, not one per principal.
    found: HashMap<&'static str, (u32, String)>,
    logged_at_ms: i64,
}

/// A burst found: the alert kind and what it is about.
pub struct Burst {
    pub kind: &'static str,
    pub key: String,
    pub denials: u32,
}

impl Bursts {
    pub fn new(threshold: u32, window: Duration) -> Bursts {
        Bursts {
            threshold,
            window_ms: window.as_millis().max(1) as i64,
            windows: HashMap::new(),
            found: HashMap::new(),
            logged_at_ms: 0,
        }
    }

    /// Once per window, a line that sums up the bursts found in it.
    pub fn summary(&mut self, now_ms: i64) -> Option<String> {
        if self.found.is_empty() || now_ms - self.logged_at_ms < self.window_ms {
            return None;
        }
        self.logged_at_ms = now_ms;
        let mut parts: Vec<String> = self
            .found
            .drain()
            .map(|(kind, (n, example))| format!("{kind}: {n} (e.g. {example})"))
            .collect();
        parts.sort();
        Some(format!(
            "denial bursts (each also an audit alert) in the last {} s: {}",
            self.window_ms / 1000,
            parts.join("; ")
        ))
    }

    /// Counts a decision; returns the bursts it completes.
    pub fn observe(&mut self, event: &AuditEvent) -> Vec<Burst> {
        if self.threshold == 0 || event.kind != "decision" || event.decision != "deny" {
            return Vec::new();
        }
        if self.windows.len() > MAX_TRACKED {
            let horizon = event.at_ms - self.window_ms;
            self.windows.retain(|_, w| w.start_ms > horizon);
        }
        let keys = [
            ("denial_burst_principal", event.subject.clone()),
            (
                "denial_burst_resource",
                format!("{}:{}", event.resource_type, event.resource_id),
            ),
        ];
        let mut found = Vec::new();
        for (kind, key) in keys {
            let window = self
                .windows
                .entry(format!("{kind}/{key}"))
                .or_insert(Window {
                    start_ms: event.at_ms,
                    denials: 0,
                });
            if event.at_ms - window.start_ms >= self.window_ms {
                *window = Window {
                    start_ms: event.at_ms,
                    denials: 0,
                };
            }
            window.denials += 1;
            if window.denials == self.threshold {
                let seen = self.found.entry(kind).or_insert((0, key.clone()));
                seen.0 += 1;
                found.push(Burst {
                    kind,
                    key,
                    denials: window.denials,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(subject: &str, resource: &str, at_ms: i64) -> AuditEvent {
        AuditEvent {
            kind: "decision".into(),
            decision: "deny".into(),
            subject: subject.into(),
            resource_type: "project".into(),
            resource_id: resource.into(),
            at_ms,
            ..AuditEvent::default()
        }
    }

    #[test]
    fn one_alert_per_window_per_principal_and_resource() {
        let mut b = Bursts::new(3, Duration::from_secs(10));
        let kinds = |found: Vec<Burst>| found.iter().map(|f| f.kind).collect::<Vec<_>>();
        assert!(b.observe(&deny("u1", "r1", 0)).is_empty());
        assert!(b.observe(&deny("u1", "r2", 1)).is_empty());
        assert_eq!(
            kinds(b.observe(&deny("u1", "r3", 2))),
            ["denial_burst_principal"]
        );
        assert!(
            b.observe(&deny("u1", "r3", 3)).is_empty(),
            "once per window"
        );
        assert_eq!(
            kinds(b.observe(&deny("u2", "r3", 4))),
            ["denial_burst_resource"]
        );
        // A new window starts counting again.
        for at in [20_000, 20_001] {
            assert!(b.observe(&deny("u1", "x", at)).is_empty());
        }
        assert_eq!(
            kinds(b.observe(&deny("u1", "y", 20_002))),
            ["denial_burst_principal"]
        );
        let mut allow = deny("u9", "r9", 0);
        allow.decision = "allow".into();
        let mut off = Bursts::new(0, Duration::from_secs(1));
        assert!(off.observe(&deny("u1", "r1", 0)).is_empty());
        assert!(b.observe(&allow).is_empty());
    }
}
