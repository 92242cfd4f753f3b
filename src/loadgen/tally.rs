//! What one worker saw during one load step, merged across workers at the
//! end: an HDR latency histogram, counts, errors by gRPC code, answer
//! sources (the cache tier the server reported) and correctness checks.

use std::{collections::BTreeMap, time::Instant};

use hdrhistogram::Histogram;

use super::LoadError;
use crate::proto::PermissionSource;

/// Latencies are recorded in microseconds, up to a minute.
const MAX_MICROS: u64 = 60_000_000;
/// Mismatches kept verbatim for the report.
const SAMPLES: usize = 5;

#[derive(Clone)]
pub struct Tally {
    pub latency: Histogram<u64>,
    /// Latency of the requests that were answered (not refused or failed):
    /// what an admitted request costs while others are shed.
    pub served: Histogram<u64>,
    pub requests: u64,
    pub decisions: u64,
    pub errors: BTreeMap<String, u64>,
    pub sources: BTreeMap<String, u64>,
    pub checked: u64,
    pub mismatches: u64,
    pub mismatch_samples: Vec<String>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Tally {
    pub fn new() -> Result<Tally, LoadError> {
        Ok(Tally {
            // Three significant digits over 1 µs .. 60 s.
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .map_err(|e| LoadError(format!("histogram: {e}")))?,
            served: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .map_err(|e| LoadError(format!("histogram: {e}")))?,
            requests: 0,
            decisions: 0,
            errors: BTreeMap::new(),
            sources: BTreeMap::new(),
            checked: 0,
            mismatches: 0,
            mismatch_samples: Vec::new(),
            first: None,
            last: None,
        })
    }

    /// Records a finished request that was due at `due` (its intended send
    /// time in open loop, its real send time in closed loop).
    pub fn finish(&mut self, due: Instant, done: Instant) {
        let micros = Self::micros(due, done);
        self.latency.saturating_record(micros);
        self.requests += 1;
        self.first = Some(self.first.map_or(due, |f| f.min(due)));
        self.last = Some(self.last.map_or(done, |l| l.max(done)));
    }

    /// Records the latency of a request that was answered (after `finish`).
    pub fn served(&mut self, due: Instant, done: Instant) {
        self.served.saturating_record(Self::micros(due, done));
    }

    fn micros(due: Instant, done: Instant) -> u64 {
        let micros = done.saturating_duration_since(due).as_micros();
        u64::try_from(micros)
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS)
    }

    pub fn error(&mut self, code: tonic::Code) {
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
    }

    pub fn source(&mut self, source: PermissionSource) {
        *self
            .sources
            .entry(
                source
                    .as_str_name()
                    .trim_start_matches("PERMISSION_SOURCE_")
                    .to_owned(),
            )
            .or_default() += 1;
    }

    pub fn mismatch(&mut self, what: String) {
        self.mismatches += 1;
        if self.mismatch_samples.len() < SAMPLES {
            self.mismatch_samples.push(what);
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.served.add(&other.served);
        self.requests += other.requests;
        self.decisions += other.decisions;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.sources {
            *self.sources.entry(k.clone()).or_default() += v;
        }
        self.checked += other.checked;
        self.mismatches += other.mismatches;
        for s in &other.mismatch_samples {
            if self.mismatch_samples.len() < SAMPLES {
                self.mismatch_samples.push(s.clone());
            }
        }
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}
