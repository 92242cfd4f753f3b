//! Anomaly detection per principal. Requests and denials are counted in
//! fixed windows; each finished window folds into an exponentially weighted
//! moving average (EWMA) of the principal's request rate and denial ratio.
//! After `warmup_windows`, a window whose count exceeds `rate_factor` times
//! the baseline (and `min_requests`), or whose denial ratio exceeds
//! `denial_ratio` while being `rate_factor` times the baseline ratio (with
//! at least `min_requests` denials), is an anomaly: the principal's quota
//! is tightened by `tighten_factor` for `tighten_for`, and an alert goes to
//! the audit stream. Anomalous windows do not feed the baseline, so a burst
//! cannot teach the model that bursting is normal.
//!
//! What it cannot do: it knows a principal only after the warm-up (a new
//! principal, or one whose baseline aged out, bursts freely up to its
//! quota); a slow ramp that grows less than `rate_factor` per baseline
//! period raises the baseline with it; it is per replica (each replica sees
//! its share of a principal's traffic) and forgets principals idle for the
//! `idle_forget` period.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::principal::Principal;
use crate::support::duration::HumanDuration;

/// `[rate_limit.anomaly]` in the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    pub enabled: bool,
    pub window: HumanDuration,
    /// Weight of the newest window in the baseline (0 < alpha <= 1).
    pub alpha: f64,
    pub warmup_windows: u32,
    pub rate_factor: f64,
    pub min_requests: u32,
    pub denial_ratio: f64,
    /// The tightened quota is the tier's divided by this.
    pub tighten_factor: u32,
    pub tighten_for: HumanDuration,
    pub idle_forget: HumanDuration,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            window: HumanDuration(Duration::from_secs(1)),
            alpha: 0.1,
            warmup_windows: 30,
            rate_factor: 10.0,
            min_requests: 50,
            denial_ratio: 0.5,
            tighten_factor: 10,
            tighten_for: HumanDuration(Duration::from_secs(300)),
            idle_forget: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// One principal's baseline and current window.
#[derive(Debug)]
struct Baseline {
    window_start: Instant,
    requests: u32,
    denials: u32,
    rate: f64,
    deny_ratio: f64,
    windows: u32,
    tightened_until: Option<Instant>,
}

/// What a request learned about its principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Normal,
    /// Under a tightened quota (since an earlier anomaly).
    Tightened,
    /// This request revealed an anomaly: tighten now and alert once.
    NewAnomaly,
}

pub struct Anomalies {
    config: AnomalyConfig,
    principals: moka::sync::Cache<Principal, Arc<Mutex<Baseline>>>,
}

impl Anomalies {
    pub fn new(config: &AnomalyConfig) -> Anomalies {
        Anomalies {
            config: config.clone(),
            principals: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(config.idle_forget.0)
                .build(),
        }
    }

    fn baseline(&self, principal: Principal) -> Arc<Mutex<Baseline>> {
        self.principals.get_with(principal, || {
            Arc::new(Mutex::new(Baseline {
                window_start: Instant::now(),
                requests: 0,
                denials: 0,
                rate: 0.0,
                deny_ratio: 0.0,
                windows: 0,
                tightened_until: None,
            }))
        })
    }

    /// Counts a request and says how the principal stands.
    pub fn request(&self, principal: Principal) -> Standing {
        if !self.config.enabled {
            return Standing::Normal;
        }
        let baseline = self.baseline(principal);
        let mut b = baseline.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        self.roll(&mut b, now);
        b.requests += 1;
        if b.tightened_until.is_some_and(|until| until > now) {
            return Standing::Tightened;
        }
        if self.anomalous(&b) {
            b.tightened_until = Some(now + self.config.tighten_for.0);
            return Standing::NewAnomaly;
        }
        Standing::Normal
    }

    /// Counts a denial of the principal's request.
    pub fn denied(&self, principal: Principal) {
        if !self.config.enabled {
            return;
        }
        if let Some(baseline) = self.principals.get(&principal) {
            baseline.lock().unwrap_or_else(|p| p.into_inner()).denials += 1;
        }
    }

    /// Folds finished windows into the baseline (idle windows count as
    /// zero), unless they were anomalous.
    fn roll(&self, b: &mut Baseline, now: Instant) {
        let window = self.config.window.0.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(b.window_start);
        if elapsed < window {
            return;
        }
        let alpha = self.config.alpha.clamp(0.001, 1.0);
        if !self.anomalous(b) {
            let ratio = match b.requests {
                0 => 0.0,
                n => f64::from(b.denials) / f64::from(n),
            };
            let first = b.windows == 0;
            b.rate = if first {
                f64::from(b.requests)
            } else {
                alpha * f64::from(b.requests) + (1.0 - alpha) * b.rate
            };
            b.deny_ratio = if first {
                ratio
            } else {
                alpha * ratio + (1.0 - alpha) * b.deny_ratio
            };
            b.windows += 1;
        }
        // Windows with no request at all: the baseline decays towards zero.
        let idle = (elapsed.as_nanos() / window.as_nanos())
            .saturating_sub(1)
            .min(64) as i32;
        b.rate *= (1.0 - alpha).powi(idle);
        b.windows = b.windows.saturating_add(idle as u32);
        b.window_start = now;
        b.requests = 0;
        b.denials = 0;
    }

    /// Whether the current window is far above the baseline.
    fn anomalous(&self, b: &Baseline) -> bool {
        let c = &self.config;
        if b.windows < c.warmup_windows {
            return false;
        }
        let requests = f64::from(b.requests);
        let rate_burst = b.requests >= c.min_requests && requests > c.rate_factor * b.rate.max(1.0);
        let ratio = match b.requests {
            0 => 0.0,
            n => f64::from(b.denials) / f64::from(n),
        };
        let denial_burst = b.denials >= c.min_requests
            && ratio >= c.denial_ratio
            && ratio > c.rate_factor * b.deny_ratio;
        rate_burst || denial_burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u128) -> Principal {
        Principal::User(uuid::Uuid::from_u128(n))
    }

    fn config() -> AnomalyConfig {
        AnomalyConfig {
            window: HumanDuration(Duration::from_millis(20)),
            warmup_windows: 3,
            min_requests: 10,
            rate_factor: 5.0,
            ..AnomalyConfig::default()
        }
    }

    #[test]
    fn a_burst_far_above_the_baseline_is_an_anomaly_a_steady_rate_is_not() {
        let a = Anomalies::new(&config());
        for _ in 0..5 {
            for _ in 0..4 {
                assert_eq!(a.request(who(1)), Standing::Normal);
                assert_eq!(a.request(who(2)), Standing::Normal);
            }
            std::thread::sleep(Duration::from_millis(22));
        }
        let mut seen = Vec::new();
        for _ in 0..60 {
            seen.push(a.request(who(2)));
        }
        assert_eq!(
            seen.iter().filter(|s| **s == Standing::NewAnomaly).count(),
            1,
            "alerted once"
        );
        assert_eq!(seen.last(), Some(&Standing::Tightened));
        for _ in 0..4 {
            assert_eq!(a.request(who(1)), Standing::Normal);
        }
    }

    #[test]
    fn nothing_is_anomalous_during_warm_up() {
        let a = Anomalies::new(&config());
        for _ in 0..1_000 {
            assert_eq!(a.request(who(3)), Standing::Normal);
        }
    }
}
