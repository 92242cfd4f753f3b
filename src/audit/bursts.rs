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
    /// Per principal, and per resource type then id: looked up by the
    /// event's own text, so only a key seen for the first time is copied.
    principals: HashMap<String, Window>,
    resources: HashMap<String, HashMap<String, Window>>,
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
            principals: HashMap::new(),
            resources: HashMap::new(),
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
        let tracked =
            self.principals.len() + self.resources.values().map(HashMap::len).sum::<usize>();
        if tracked > MAX_TRACKED {
            let horizon = event.at_ms - self.window_ms;
            self.principals.retain(|_, w| w.start_ms > horizon);
            for ids in self.resources.values_mut() {
                ids.retain(|_, w| w.start_ms > horizon);
            }
            self.resources.retain(|_, ids| !ids.is_empty());
        }
        let (threshold, window_ms, at_ms) = (self.threshold, self.window_ms, event.at_ms);
        let principal = count(&mut self.principals, &event.subject, at_ms, window_ms);
        let ids = match self.resources.get_mut(&*event.resource_type) {
            Some(ids) => ids,
            None => self
                .resources
                .entry(event.resource_type.to_string())
                .or_default(),
        };
        let resource = count(ids, &event.resource_id, at_ms, window_ms);
        let mut found = Vec::new();
        if principal == threshold {
            found.push(("denial_burst_principal", event.subject.clone(), principal));
        }
        if resource == threshold {
            let key = format!("{}:{}", event.resource_type, event.resource_id);
            found.push(("denial_burst_resource", key, resource));
        }
        found
            .into_iter()
            .map(|(kind, key, denials)| {
                let seen = self.found.entry(kind).or_insert((0, key.clone()));
                seen.0 += 1;
                Burst { kind, key, denials }
            })
            .collect()
    }
}

/// Counts one denial in `key`'s window (a new window once the old one is
/// over); returns the denials in it.
fn count(windows: &mut HashMap<String, Window>, key: &str, at_ms: i64, window_ms: i64) -> u32 {
    let window = match windows.get_mut(key) {
        Some(window) => window,
        None => windows.entry(key.to_owned()).or_insert(Window {
            start_ms: at_ms,
            denials: 0,
        }),
    };
    if at_ms - window.start_ms >= window_ms {
        *window = Window {
            start_ms: at_ms,
            denials: 0,
        };
    }
    window.denials += 1;
    window.denials
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
