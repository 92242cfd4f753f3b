//! Results of a run: per scenario and per load step, as a table on the
//! terminal, a JSON file and an SVG chart under `ghz_bench/results/`.

use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use super::{
    LoadError, ghz::Call, ramp::StageTallies, replica_report::ReplicaReport, svg, tally::Tally,
    verdict::Verdict,
};

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Milliseconds from a histogram of microseconds.
    fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1_000.0,
        }
    }
}

/// The figures of one load step (or of a whole scenario).
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub label: String,
    pub requests: u64,
    pub decisions: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub decisions_per_second: f64,
    /// Milliseconds.
    pub latency_ms: Percentiles,
    /// Milliseconds, of the answered requests only (when some were not):
    /// what an admitted request cost while others were shed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_latency_ms: Option<Percentiles>,
    pub errors: BTreeMap<String, u64>,
    /// Answers by the source the server reported (cache tier or computed).
    pub sources: BTreeMap<String, u64>,
    /// Cached answers / answers that needed a permission set.
    pub cache_hit_rate: Option<f64>,
    pub checked: u64,
    pub mismatches: u64,
    pub mismatch_samples: Vec<String>,
    /// Ramp steps: the users the step asked for and those logged in and
    /// sending by its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<(u64, u64)>,
    /// Ramp steps: the password logins made during the step, and how many
    /// were shed (RESOURCE_EXHAUSTED, retried after RetryInfo).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logins: Option<Box<StepResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logins_shed: Option<u64>,
    /// Ramp steps: the seed's targets, PASS or FAIL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<Verdict>,
}

const CACHED: [&str; 3] = ["IN_PROCESS_CACHE", "REDIS_CACHE", "DATABASE_CACHE"];

impl StepResult {
    pub fn from_tally(label: impl Into<String>, t: &Tally) -> StepResult {
        let seconds = match (t.first, t.last) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let cached: u64 = CACHED.iter().filter_map(|k| t.sources.get(*k)).sum();
        let computed = t.sources.get("COMPUTED").copied().unwrap_or(0);
        StepResult {
            label: label.into(),
            requests: t.requests,
            decisions: t.decisions,
            seconds,
            requests_per_second: per_second(t.requests),
            decisions_per_second: per_second(t.decisions),
            latency_ms: Percentiles::of(&t.latency),
            served_latency_ms: (!t.errors.is_empty() && !t.served.is_empty())
                .then(|| Percentiles::of(&t.served)),
            errors: t.errors.clone(),
            sources: t.sources.clone(),
            cache_hit_rate: (cached + computed > 0)
                .then(|| cached as f64 / (cached + computed) as f64),
            checked: t.checked,
            mismatches: t.mismatches,
            mismatch_samples: t.mismatch_samples.clone(),
            users: None,
            logins: None,
            logins_shed: None,
            verdicts: Vec::new(),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub call: Call,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    pub steps: Vec<StepResult>,
    pub overall: StepResult,
    /// Throughput as a share of the health-check ceiling of the same run.
    pub ceiling_ratio: Option<f64>,
}

/// A whole run: what ran where, and every scenario.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub started_at: String,
    pub setup: BTreeMap<String, String>,
    pub scenarios: Vec<ScenarioResult>,
    /// `report --replicas N`: per replica figures and staleness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaReport>,
}

impl RunReport {
    /// Sets each scenario's ratio to the health-check ceiling, if one ran.
    pub fn relate_to_ceiling(&mut self) {
        let ceiling = self
            .scenarios
            .iter()
            .find(|s| s.call == Call::HealthCheck)
            .map(|s| s.overall.requests_per_second)
            .filter(|r| *r > 0.0);
        // Only a closed loop runs as fast as it can; an open loop's rate is set.
        for s in self
            .scenarios
            .iter_mut()
            .filter(|s| s.mode == "closed-loop")
        {
            s.ceiling_ratio = ceiling.map(|c| s.overall.requests_per_second / c);
        }
    }

    pub fn print(&self) {
        for (k, v) in &self.setup {
            println!("# {k}: {v}");
        }
        println!(
            "{:<28} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6}  errors",
            "scenario / step",
            "req/s",
            "decisions/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "hit %",
            "ceil",
            "bad"
        );
        for s in &self.scenarios {
            let rows = match s.steps.len() {
                1 => vec![(s.name.clone(), &s.overall)],
                _ => s
                    .steps
                    .iter()
                    .map(|st| (format!("{} / {}", s.name, st.label), st))
                    .chain([(format!("{} (all)", s.name), &s.overall)])
                    .collect(),
            };
            for (label, r) in rows {
                let l = &r.latency_ms;
                let hit = r
                    .cache_hit_rate
                    .map_or("-".into(), |h| format!("{:.1}", h * 100.0));
                let ceil = match std::ptr::eq(r, &s.overall) {
                    true => s.ceiling_ratio.map_or("-".into(), |c| format!("{c:.2}")),
                    false => "".into(),
                };
                println!(
                    "{label:<28} {:>10.0} {:>11.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {hit:>7} {ceil:>7} {:>6}  {:?}",
                    r.requests_per_second,
                    r.decisions_per_second,
                    l.p50,
                    l.p95,
                    l.p99,
                    l.p999,
                    l.max,
                    r.mismatches,
                    r.errors
                );
            }
            let all = &s.overall;
            let shared = ["REDIS_CACHE", "DATABASE_CACHE"];
            if shared.iter().any(|t| all.sources.contains_key(*t)) {
                let total: u64 = all.sources.values().sum();
                let share = |tier: &str| {
                    100.0 * all.sources.get(tier).copied().unwrap_or(0) as f64 / total.max(1) as f64
                };
                println!(
                    "  answered from: in-process {:.1} %, Redis {:.1} %, database tier {:.1} %, computed {:.1} %",
                    share("IN_PROCESS_CACHE"),
                    share("REDIS_CACHE"),
                    share("DATABASE_CACHE"),
                    share("COMPUTED")
                );
            }
            for step in s.steps.iter().filter(|st| !st.verdicts.is_empty()) {
                let (wanted, active) = step.users.unwrap_or_default();
                let logins = step.logins.as_ref().map_or(String::new(), |l| {
                    format!(
                        ", logins {} (p95 {:.1} ms, {} shed and retried)",
                        l.requests,
                        l.latency_ms.p95,
                        step.logins_shed.unwrap_or(0)
                    )
                });
                let verdicts: Vec<String> = step.verdicts.iter().map(Verdict::text).collect();
                println!(
                    "  {} ({active} of {wanted} users sending{logins}): {}",
                    step.label,
                    verdicts.join(", ")
                );
            }
            if !s.overall.verdicts.is_empty() {
                let all = &s.overall;
                let served = all.served_latency_ms.as_ref().map_or(String::new(), |p| {
                    format!(
                        "; answered {} (p99 {:.1} ms), shed {}",
                        all.requests - all.error_count(),
                        p.p99,
                        all.errors.get("ResourceExhausted").copied().unwrap_or(0)
                    )
                });
                let verdicts: Vec<String> = all.verdicts.iter().map(Verdict::text).collect();
                println!("  {}{served}: {}", s.name.trim(), verdicts.join(", "));
            }
            for sample in &s.overall.mismatch_samples {
                println!("  MISMATCH {sample}");
            }
        }
        if let Some(replicas) = &self.replicas {
            replicas.print();
        }
    }

    /// Writes `<stem>.json` and `<stem>.svg` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Vec<std::path::PathBuf>, LoadError> {
        std::fs::create_dir_all(dir).map_err(|e| LoadError(format!("{}: {e}", dir.display())))?;
        let json = dir.join(format!("{stem}.json"));
        let svg_path = dir.join(format!("{stem}.svg"));
        let text = serde_json::to_string_pretty(self).map_err(|e| LoadError(e.to_string()))?;
        std::fs::write(&json, text).map_err(|e| LoadError(format!("{}: {e}", json.display())))?;
        std::fs::write(&svg_path, svg::chart(self))
            .map_err(|e| LoadError(format!("{}: {e}", svg_path.display())))?;
        Ok(vec![json, svg_path])
    }

    pub fn mismatches(&self) -> u64 {
        self.scenarios.iter().map(|s| s.overall.mismatches).sum()
    }
}

/// Builds a scenario's result from per-step tallies and their labels.
pub fn scenario(
    name: &str,
    call: Call,
    open: bool,
    steps: Vec<(String, Tally)>,
) -> Result<ScenarioResult, LoadError> {
    let mut all = Tally::new()?;
    for (_, t) in &steps {
        all.merge(t);
    }
    Ok(ScenarioResult {
        name: name.to_owned(),
        call,
        mode: if open { "open-loop" } else { "closed-loop" }.to_owned(),
        steps: steps
            .iter()
            .map(|(label, t)| StepResult::from_tally(label.clone(), t))
            .collect(),
        overall: StepResult::from_tally("all", &all),
        ceiling_ratio: None,
    })
}

/// Builds the ramp's result: per stage the Authorize figures, the logins
/// and the verdicts against the seed's targets.
pub fn ramp_scenario(
    name: &str,
    stages: &[(String, usize)],
    tallies: &[StageTallies],
) -> Result<ScenarioResult, LoadError> {
    let mut overall = Tally::new()?;
    let mut steps = Vec::with_capacity(tallies.len());
    for ((label, users), t) in stages.iter().zip(tallies) {
        overall.merge(&t.authz);
        let mut both = t.authz.clone();
        both.merge(&t.logins);
        let mut step = StepResult::from_tally(label.clone(), &t.authz);
        let logins = StepResult::from_tally("logins", &t.logins);
        let all = StepResult::from_tally("all", &both);
        step.verdicts = super::verdict::judge(&step, Some(&logins), &all);
        step.users = Some((*users as u64, t.active as u64));
        step.logins_shed = Some(t.logins_shed);
        step.logins = Some(Box::new(logins));
        steps.push(step);
    }
    Ok(ScenarioResult {
        name: name.to_owned(),
        call: Call::Authorize,
        mode: "open-loop".into(),
        steps,
        overall: StepResult::from_tally("all", &overall),
        ceiling_ratio: None,
    })
}
