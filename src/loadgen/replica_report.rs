//! What `report --replicas N` adds to a report: per replica count and
//! scenario, each replica's share of the decisions, its cache hit rate and
//! its CPU per 1,000 decisions (from /proc), and how long a plain SQL write
//! took to reach every replica's answers while the load ran.

use std::collections::BTreeMap;

use serde::Serialize;

/// One replica's part of one scenario run across `replicas` replicas.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaRow {
    pub replicas: usize,
    pub scenario: String,
    /// 1-based.
    pub replica: usize,
    /// Decisions this replica made (its own counter; batch items count one).
    pub decisions: u64,
    /// User + system CPU of the replica's process during the scenario.
    pub cpu_seconds: f64,
    pub cpu_ms_per_1000_decisions: Option<f64>,
    /// Permission-set lookups answered from a cache tier.
    pub hit_rate: Option<f64>,
    /// Permission sets computed from the database (misses of every tier).
    pub computations: u64,
    /// Decision-path database queries (pool acquisitions).
    pub db_queries: u64,
    /// Requests this replica shed RESOURCE_EXHAUSTED, by signal
    /// (`runtime_lag`, `in_flight`, `database_queue`, `connection_backlog`).
    pub shed: BTreeMap<String, u64>,
}

/// Time from a committed write to every replica answering accordingly.
#[derive(Clone, Debug, Serialize)]
pub struct Staleness {
    pub replicas: usize,
    pub scenario: String,
    pub writes: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Writes that some replica had not picked up within the bound.
    pub beyond_bound: usize,
    pub bound_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaReport {
    pub rows: Vec<ReplicaRow>,
    pub staleness: Vec<Staleness>,
    /// Per replica count and scenario, all replicas together.
    pub cost: Vec<Cost>,
    /// Measured inputs of the capacity model (`docs/scaling.md`).
    pub inputs: BTreeMap<String, f64>,
}

/// What one scenario run across `replicas` replicas cost per decision.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub replicas: usize,
    pub scenario: String,
    pub decisions: u64,
    pub decisions_per_second: f64,
    pub cpu_ms_per_1000_decisions: f64,
    /// This count's CPU per decision over one replica's.
    pub ratio_to_one_replica: Option<f64>,
    /// Commands the Redis server processed (INFO stats), per decision.
    pub redis_commands_per_decision: Option<f64>,
    pub misses_per_decision: f64,
    pub db_queries_per_miss: Option<f64>,
}

impl Cost {
    /// Sums one run's rows.
    pub fn of(rows: &[ReplicaRow], seconds: f64, redis_commands: Option<f64>) -> Option<Cost> {
        let first = rows.first()?;
        let decisions: u64 = rows.iter().map(|r| r.decisions).sum();
        let cpu: f64 = rows.iter().map(|r| r.cpu_seconds).sum();
        let computations: u64 = rows.iter().map(|r| r.computations).sum();
        let queries: u64 = rows.iter().map(|r| r.db_queries).sum();
        let per = |n: f64, of: u64| (of > 0).then(|| n / of as f64);
        Some(Cost {
            replicas: first.replicas,
            scenario: first.scenario.clone(),
            decisions,
            decisions_per_second: if seconds > 0.0 {
                decisions as f64 / seconds
            } else {
                0.0
            },
            cpu_ms_per_1000_decisions: per(cpu * 1e6, decisions)?,
            ratio_to_one_replica: None,
            redis_commands_per_decision: redis_commands.and_then(|c| per(c, decisions)),
            misses_per_decision: per(computations as f64, decisions).unwrap_or(0.0),
            db_queries_per_miss: per(queries as f64, computations),
        })
    }
}

impl ReplicaReport {
    /// Sets each run's ratio to the same scenario on one replica.
    pub fn relate_to_one_replica(&mut self) {
        let one: Vec<(String, f64)> = self
            .cost
            .iter()
            .filter(|c| c.replicas == 1)
            .map(|c| (c.scenario.clone(), c.cpu_ms_per_1000_decisions))
            .collect();
        for c in &mut self.cost {
            c.ratio_to_one_replica = one
                .iter()
                .find(|(s, _)| *s == c.scenario)
                .map(|(_, base)| c.cpu_ms_per_1000_decisions / base);
        }
    }

    pub fn print(&self) {
        println!();
        println!(
            "{:<9} {:<24} {:>8} {:>10} {:>8} {:>16} {:>7} {:>6}",
            "replicas",
            "scenario",
            "replica",
            "decisions",
            "CPU s",
            "CPU ms/1000 dec",
            "hit %",
            "shed"
        );
        for r in &self.rows {
            println!(
                "{:<9} {:<24} {:>8} {:>10} {:>8.2} {:>16} {:>7} {:>6}",
                r.replicas,
                r.scenario,
                r.replica,
                r.decisions,
                r.cpu_seconds,
                r.cpu_ms_per_1000_decisions
                    .map_or("-".into(), |c| format!("{c:.1}")),
                r.hit_rate
                    .map_or("-".into(), |h| format!("{:.1}", h * 100.0)),
                r.shed.values().sum::<u64>(),
            );
        }
        println!();
        println!(
            "{:<9} {:<24} {:>11} {:>16} {:>8} {:>12} {:>9} {:>11}",
            "replicas",
            "scenario",
            "decisions/s",
            "CPU ms/1000 dec",
            "vs 1",
            "Redis cmd/dec",
            "miss/dec",
            "queries/miss"
        );
        let or_dash =
            |v: Option<f64>, places: usize| v.map_or("-".into(), |v| format!("{v:.places$}"));
        for c in &self.cost {
            println!(
                "{:<9} {:<24} {:>11.0} {:>16.1} {:>8} {:>12} {:>9.3} {:>11}",
                c.replicas,
                c.scenario,
                c.decisions_per_second,
                c.cpu_ms_per_1000_decisions,
                or_dash(c.ratio_to_one_replica, 2),
                or_dash(c.redis_commands_per_decision, 3),
                c.misses_per_decision,
                or_dash(c.db_queries_per_miss, 2),
            );
        }
        for r in self.rows.iter().filter(|r| !r.shed.is_empty()) {
            println!(
                "# shed by {} replica(s), {} on replica {}: {:?}",
                r.replicas, r.scenario, r.replica, r.shed
            );
        }
        for (name, value) in &self.inputs {
            println!("# {name}: {value:.3}");
        }
        println!();
        println!(
            "{:<9} {:<24} {:>7} {:>10} {:>8} {:>8} {:>8}",
            "replicas", "staleness during", "writes", "median ms", "p99 ms", "max ms", "bound"
        );
        for s in &self.staleness {
            let held = match s.beyond_bound {
                0 => format!("PASS (<= {:.0} ms)", s.bound_ms),
                n => format!("FAIL ({n} beyond {:.0} ms)", s.bound_ms),
            };
            println!(
                "{:<9} {:<24} {:>7} {:>10.1} {:>8.1} {:>8.1} {held}",
                s.replicas, s.scenario, s.writes, s.median_ms, s.p99_ms, s.max_ms
            );
        }
    }
}
