//! The seed's targets, judged per load step: errors < 0.1 %, p95 < 200 ms,
//! authorization p95 < 75 ms, authentication p95 < 50 ms, cache hit rate
//! >= 95 %. A verdict says the figure, the target and PASS or FAIL.

use serde::Serialize;

use super::report::StepResult;

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub value: f64,
    pub pass: bool,
}

impl Verdict {
    fn new(target: &str, value: f64, pass: bool) -> Verdict {
        Verdict {
            target: target.to_owned(),
            value,
            pass,
        }
    }

    /// `PASS errors 0.000 % < 0.1 %`-style text.
    pub fn text(&self) -> String {
        let word = if self.pass { "PASS" } else { "FAIL" };
        format!("{word} {} ({:.3})", self.target, self.value)
    }
}

/// Password logins one at a time: the plan's 50 ms, at p95 and at p99.
pub fn one_login_at_a_time(logins: &StepResult) -> Vec<Verdict> {
    let l = &logins.latency_ms;
    vec![
        Verdict::new("auth p95 ms < 50", l.p95, l.p95 < 50.0),
        Verdict::new("auth p99 ms < 50", l.p99, l.p99 < 50.0),
    ]
}

/// A login storm: the logins admitted stay fast (p99 < 300 ms); the rest
/// are shed at once, which is not an error of the service.
pub fn login_storm(logins: &StepResult) -> Vec<Verdict> {
    let served = logins
        .served_latency_ms
        .as_ref()
        .unwrap_or(&logins.latency_ms);
    let failed: u64 = logins
        .errors
        .iter()
        .filter(|(code, _)| code.as_str() != "ResourceExhausted")
        .map(|(_, n)| n)
        .sum();
    vec![
        Verdict::new("admitted p99 ms < 300", served.p99, served.p99 < 300.0),
        Verdict::new("failed (not shed) = 0", failed as f64, failed == 0),
    ]
}

/// The verdicts of one step: `authz` the Authorize figures, `logins` the
/// password logins of the step (if any), `all` both together.
pub fn judge(authz: &StepResult, logins: Option<&StepResult>, all: &StepResult) -> Vec<Verdict> {
    let requests = all.requests.max(1) as f64;
    let error_pct = 100.0 * all.error_count() as f64 / requests;
    let mut verdicts = vec![
        Verdict::new("errors % < 0.1", error_pct, error_pct < 0.1),
        Verdict::new(
            "p95 ms < 200",
            all.latency_ms.p95,
            all.latency_ms.p95 < 200.0,
        ),
        Verdict::new(
            "authz p95 ms < 75",
            authz.latency_ms.p95,
            authz.latency_ms.p95 < 75.0,
        ),
    ];
    if let Some(logins) = logins.filter(|l| l.requests > 0) {
        verdicts.push(Verdict::new(
            "auth p95 ms < 50",
            logins.latency_ms.p95,
            logins.latency_ms.p95 < 50.0,
        ));
    }
    if let Some(hit) = authz.cache_hit_rate {
        verdicts.push(Verdict::new("hit % >= 95", hit * 100.0, hit >= 0.95));
    }
    verdicts
}
