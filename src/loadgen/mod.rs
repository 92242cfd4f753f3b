//! `velro-loadgen`: runs ghz config files against the service from this
//! machine, checks a sample of the answers against the seeded data set, and
//! reports latency percentiles, throughput, errors and cache hit rate per
//! load step (see `ghz_bench/README.md`).

pub mod data;
pub mod driver;
pub mod expect;
pub mod ghz;
pub mod messages;
pub mod ramp;
pub mod replica_report;
pub mod replicas;
pub mod report;
mod servers;
mod staleness;
pub mod standard;
pub mod svg;
pub mod tally;
pub mod tokens;
pub mod verdict;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ghz::{DataSource, Load, Plan};
use messages::Workset;
use report::ScenarioResult;

/// A load-generator failure, said so a person can act on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// What a run may change in the configs it reads.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Replaces every config's `host`.
    pub host: Option<String>,
    /// Reads each `data-file` by its file name from this directory instead.
    pub data_dir: Option<PathBuf>,
    /// Compare answers with the expected decisions (on by default).
    pub check: bool,
    /// Check every n-th request.
    pub check_every: u64,
    /// Multiplies every duration (a shorter run for a quick look).
    pub duration_factor: f64,
    /// Replaces every config's `connections` (at most its concurrency):
    /// a multiple of the replica count spreads the load evenly.
    pub connections: Option<usize>,
    /// Where in its data file a run starts, as a fraction of the file
    /// (0: the first message): runs that must not repeat each other's
    /// requests (cache misses) start apart.
    pub start_at: f64,
    /// Replaces every config's load with an open loop at this rate
    /// (requests a second) for the config's duration.
    pub rps: Option<f64>,
    /// Replaces every config's `concurrency` (requests in flight; the
    /// connections stay at most this many).
    pub concurrency: Option<usize>,
    /// Sends every request of the data file once (from `start_at`) instead
    /// of running for the config's duration: a warm-up that must cover the
    /// whole file whatever the machine's speed.
    pub one_pass: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            host: None,
            data_dir: None,
            check: true,
            check_every: 4,
            duration_factor: 1.0,
            connections: None,
            start_at: 0.0,
            rps: None,
            concurrency: None,
            one_pass: false,
        }
    }
}

/// The plans of a scenario: one config file, or a directory of stage
/// configs run in file-name order (a ramp).
pub fn scenario_plans(path: &Path) -> Result<(String, Vec<Plan>), LoadError> {
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    if !path.is_dir() {
        return Ok((name, vec![Plan::read(path)?]));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| LoadError(format!("{}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError(format!(
            "{} holds no *.json stage configs",
            path.display()
        )));
    }
    let plans = files
        .iter()
        .map(|f| Plan::read(f))
        .collect::<Result<_, _>>()?;
    Ok((name, plans))
}

fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(d.as_secs_f64() * factor)
}

/// Applies the run options to a plan.
fn adjust(mut plan: Plan, options: &RunOptions) -> Plan {
    if let Some(host) = &options.host {
        plan.host = host.clone();
    }
    if let Some(rps) = options.rps {
        plan.load = Load::Open(vec![ghz::RateStep {
            rps,
            duration: plan.duration,
        }]);
    }
    if let Some(concurrency) = options.concurrency {
        plan.concurrency = concurrency.max(1);
    }
    if let Some(connections) = options.connections {
        plan.connections = connections.clamp(1, plan.concurrency.max(1));
    }
    if let (Some(dir), DataSource::File(file)) = (&options.data_dir, &plan.data)
        && let Some(name) = file.file_name()
    {
        plan.data = DataSource::File(dir.join(name));
    }
    if options.duration_factor != 1.0 {
        let f = options.duration_factor;
        plan.duration = plan.duration.map(|d| scaled(d, f));
        if let Load::Open(steps) = &mut plan.load {
            for step in steps {
                step.duration = step.duration.map(|d| scaled(d, f));
            }
        }
    }
    plan
}

/// Runs one scenario (a config file or a ramp directory).
pub async fn run_scenario(path: &Path, options: &RunOptions) -> Result<ScenarioResult, LoadError> {
    let (name, plans) = scenario_plans(path)?;
    let staged = plans.len() > 1;
    let mut worksets: HashMap<String, Arc<Workset>> = HashMap::new();
    let mut steps = Vec::new();
    let (mut call, mut open) = (None, false);
    for plan in plans {
        let plan = adjust(plan, options);
        let key = format!("{:?}{:?}", plan.call, plan.data);
        let workset = match worksets.get(&key) {
            Some(w) => w.clone(),
            None => {
                let w = Arc::new(messages::load(plan.call, &plan.data, options.check)?);
                worksets.insert(key, w.clone());
                w
            }
        };
        let first = (options.start_at * workset.messages.len() as f64) as u64;
        let plan = match options.one_pass {
            true => Plan {
                load: Load::Closed,
                duration: None,
                total: Some(workset.messages.len() as u64),
                ..plan
            },
            false => plan,
        };
        let tallies = driver::run(&plan, workset, options.check_every, first).await?;
        let rates: Vec<String> = match &plan.load {
            Load::Open(rates) => rates.iter().map(|r| format!("{:.0} rps", r.rps)).collect(),
            Load::Closed => vec![format!("c={}", plan.concurrency)],
        };
        open |= matches!(plan.load, Load::Open(_));
        call = Some(plan.call);
        for (rate, tally) in rates.into_iter().zip(tallies) {
            if tally.requests == 0 {
                continue;
            }
            let label = match staged {
                true => plan.name.clone(),
                false => rate,
            };
            steps.push((label, tally));
        }
    }
    let call = call.ok_or_else(|| LoadError(format!("{name}: nothing to run")))?;
    report::scenario(&name, call, open, steps)
}

/// Runs a ramp directory with virtual users (see `ramp`): each stage's
/// `concurrency` is its users, `rps` their total rate.
pub async fn run_user_ramp(
    dir: &Path,
    host: &str,
    data: Arc<crate::model::workload::Dataset>,
    stage_seconds: Option<f64>,
    duration_factor: f64,
    logins: bool,
) -> Result<ScenarioResult, LoadError> {
    let (name, plans) = scenario_plans(dir)?;
    let stages: Vec<ramp::Stage> = plans
        .iter()
        .map(|p| ramp::Stage::from_plan(p, stage_seconds, duration_factor))
        .collect();
    let tallies = ramp::run(
        &stages,
        ramp::RampOptions {
            host: host.to_owned(),
            data,
            logins,
            check_every: 4,
        },
    )
    .await?;
    let labels: Vec<(String, usize)> = stages.iter().map(|s| (s.name.clone(), s.users)).collect();
    report::ramp_scenario(&name, &labels, &tallies)
}
