//! Drives one plan over real gRPC: a set of HTTP/2 connections shared by
//! workers, closed loop or open loop. In open loop every request has an
//! intended send time from the rate schedule and its latency is measured
//! from that time, so a stalled server shows its queueing in the figures
//! instead of hiding it by slowing the generator (coordinated omission).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient as ExtAuthzClient,
    check_response::HttpResponse as EnvoyHttpResponse,
};
use futures::StreamExt;
use tokio::time::Instant;
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::health_client::HealthClient;

use super::{
    LoadError,
    ghz::{Load, Plan},
    messages::{Message, Workset},
    tally::Tally,
};
use crate::proto::{
    Decision, PermissionSource, authorization_service_client::AuthorizationServiceClient,
    batch_result::Outcome,
};

/// Connections opened at once while setting up.
const CONNECT_PARALLELISM: usize = 256;
/// File descriptors kept free beyond one per connection.
const SPARE_FDS: u64 = 256;

/// Ticket number -> intended send offset and load step, for open loop.
struct Schedule {
    /// (first ticket, start offset, rate) of each step.
    steps: Vec<(u64, Duration, f64)>,
}

impl Schedule {
    fn new(load: &Load) -> Option<Schedule> {
        let Load::Open(rates) = load else {
            return None;
        };
        let mut steps = Vec::with_capacity(rates.len());
        let (mut first, mut offset) = (0u64, Duration::ZERO);
        for rate in rates {
            steps.push((first, offset, rate.rps));
            if let Some(d) = rate.duration {
                first += (rate.rps * d.as_secs_f64()).round() as u64;
                offset += d;
            }
        }
        Some(Schedule { steps })
    }

    fn at(&self, ticket: u64) -> (Duration, usize) {
        let step = self
            .steps
            .partition_point(|(first, _, _)| *first <= ticket)
            .saturating_sub(1);
        let (first, offset, rps) = self.steps[step];
        let into = Duration::from_secs_f64((ticket - first) as f64 / rps);
        (offset + into, step)
    }

    fn len(&self) -> usize {
        self.steps.len()
    }
}

/// Raises the soft file-descriptor limit as far as the hard limit allows
/// and says what to raise when that is still too few.
pub fn ensure_fd_limit(connections: usize) -> Result<(), LoadError> {
    let wanted = connections as u64 + SPARE_FDS;
    let have = rlimit::increase_nofile_limit(wanted.max(1024)).unwrap_or(0);
    if have < wanted {
        return Err(LoadError(format!(
            "{connections} connections need about {wanted} file descriptors but this process may \
             open only {have}; raise the limit (ulimit -n {wanted}, or LimitNOFILE= in systemd)"
        )));
    }
    Ok(())
}

/// Opens the plan's connections; a `host` of several comma-separated
/// addresses (replicas) gets them round robin, as a gRPC client's
/// round-robin balancer spreads its subchannels.
async fn connect_all(plan: &Plan) -> Result<Vec<Channel>, LoadError> {
    ensure_fd_limit(plan.connections)?;
    let endpoints = plan
        .host
        .split(',')
        .map(|host| {
            Endpoint::from_shared(format!("http://{}", host.trim()))
                .map(|e| e.connect_timeout(plan.connect_timeout).tcp_nodelay(true))
                .map_err(|e| LoadError(format!("host {host:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results: Vec<_> = futures::stream::iter(0..plan.connections)
        .map(|i| endpoints[i % endpoints.len()].connect())
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect()
        .await;
    let mut channels = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Ok(channel) => channels.push(channel),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(channels),
        Some(e) => Err(LoadError(format!(
            "opened {} of {} connections to {}: {e:?}",
            channels.len(),
            plan.connections,
            plan.host
        ))),
    }
}

/// One answer: the decision and the source the server reported, or a
/// per-item error code inside a batch.
type Answer = Result<(bool, PermissionSource), Code>;

async fn send(
    channel: &Channel,
    message: &Message,
    timeout: Duration,
) -> Result<Vec<Answer>, Code> {
    let status = |s: tonic::Status| s.code();
    let call = async {
        match message {
            Message::HealthCheck(m) => {
                let mut request = Request::new(m.clone());
                request.set_timeout(timeout);
                HealthClient::new(channel.clone())
                    .check(request)
                    .await
                    .map_err(status)?;
                Ok(Vec::new())
            }
            Message::Authorize(m) => {
                let mut request = Request::new(m.clone());
                request.set_timeout(timeout);
                let r = AuthorizationServiceClient::new(channel.clone())
                    .authorize(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                Ok(vec![Ok((r.decision() == Decision::Allow, r.source()))])
            }
            Message::ExtAuthzCheck(m) => {
                let mut request = Request::new((**m).clone());
                request.set_timeout(timeout);
                let r = ExtAuthzClient::new(channel.clone())
                    .check(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                // A denied response for overload or an outage (429/503) is
                // the service not deciding, not a decision: count its code.
                let code = Code::from_i32(r.status.as_ref().map_or(0, |s| s.code));
                if matches!(
                    code,
                    Code::ResourceExhausted
                        | Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Internal
                        | Code::Unknown
                ) {
                    return Ok(vec![Err(code)]);
                }
                let allow = matches!(r.http_response, Some(EnvoyHttpResponse::OkResponse(_)));
                Ok(vec![Ok((allow, PermissionSource::None))])
            }
            Message::Authenticate(m) => {
                let mut request = Request::new(m.clone());
                request.set_timeout(timeout);
                AuthorizationServiceClient::new(channel.clone())
                    .authenticate(request)
                    .await
                    .map_err(status)?;
                Ok(Vec::new())
            }
            Message::BatchAuthorize(m) => {
                let mut request = Request::new(m.clone());
                request.set_timeout(timeout);
                let results = AuthorizationServiceClient::new(channel.clone())
                    .batch_authorize(request)
                    .await
                    .map_err(status)?
                    .into_inner()
                    .results;
                Ok(results
                    .into_iter()
                    .map(|r| match r.outcome {
                        Some(Outcome::Response(r)) => {
                            Ok((r.decision() == Decision::Allow, r.source()))
                        }
                        Some(Outcome::Error(e)) => Err(Code::from_i32(e.code)),
                        None => Err(Code::Unknown),
                    })
                    .collect())
            }
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(Code::DeadlineExceeded))
}

/// Counts `answers`; with an `expected` answer, checks them. An item the
/// service did not decide (shed, timed out: its code) is an error, counted
/// below, not a wrong answer; a decision that differs is, and so is a
/// reply with another number of items than asked for.
fn record(tally: &mut Tally, answers: Vec<Answer>, expected: Option<&Vec<bool>>, index: usize) {
    tally.decisions += answers.len() as u64;
    if let Some(expected) = expected {
        tally.checked += 1;
        let wrong = answers.len() != expected.len()
            || answers
                .iter()
                .zip(expected)
                .any(|(answer, want)| matches!(answer, Ok((got, _)) if got != want));
        if wrong {
            let got: Vec<Option<bool>> = answers.iter().map(|a| a.ok().map(|(d, _)| d)).collect();
            tally.mismatch(format!("data[{index}]: expected {expected:?}, got {got:?}"));
        }
    }
    for answer in answers {
        match answer {
            Ok((_, source)) => tally.source(source),
            Err(code) => tally.error(code),
        }
    }
}

/// Runs `plan`; returns one tally per load step (one for closed loop).
/// Every `check_every`-th request is compared with its expected answer.
/// The messages are sent in order from index `first`, cycling.
pub async fn run(
    plan: &Plan,
    workset: Arc<Workset>,
    check_every: u64,
    first: u64,
) -> Result<Vec<Tally>, LoadError> {
    if workset.messages.is_empty() {
        return Err(LoadError("no request messages to send".into()));
    }
    let channels = Arc::new(connect_all(plan).await?);
    let schedule = Arc::new(Schedule::new(&plan.load));
    let steps = schedule.as_ref().as_ref().map_or(1, Schedule::len);
    let template = Tally::new()?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let check_every = check_every.max(1);

    let workers: Vec<_> = (0..plan.concurrency)
        .map(|w| {
            let (channels, schedule, next, workset) = (
                channels.clone(),
                schedule.clone(),
                next.clone(),
                workset.clone(),
            );
            let mut tallies = vec![template.clone(); steps];
            let (total, duration, timeout) = (plan.total, plan.duration, plan.timeout);
            tokio::spawn(async move {
                let channel = &channels[w % channels.len()];
                loop {
                    let ticket = next.fetch_add(1, Ordering::Relaxed);
                    if total.is_some_and(|t| ticket >= t) {
                        break;
                    }
                    let (due, step) = match schedule.as_ref() {
                        Some(schedule) => {
                            let (offset, step) = schedule.at(ticket);
                            if duration.is_some_and(|d| offset >= d) {
                                break;
                            }
                            let due = start + offset;
                            tokio::time::sleep_until(due).await;
                            (due, step)
                        }
                        None => {
                            let now = Instant::now();
                            if duration.is_some_and(|d| now - start >= d) {
                                break;
                            }
                            (now, 0)
                        }
                    };
                    let index = ((ticket + first) % workset.messages.len() as u64) as usize;
                    let outcome = send(channel, &workset.messages[index], timeout).await;
                    let tally = &mut tallies[step];
                    let done = Instant::now().into_std();
                    tally.finish(due.into_std(), done);
                    match outcome {
                        Ok(answers) => {
                            tally.served(due.into_std(), done);
                            let expected = (ticket % check_every == 0)
                                .then(|| workset.expected[index].as_ref())
                                .flatten();
                            record(tally, answers, expected, index);
                        }
                        Err(code) => tally.error(code),
                    }
                }
                tallies
            })
        })
        .collect();

    let mut merged = vec![template; steps];
    for worker in workers {
        let tallies = worker
            .await
            .map_err(|e| LoadError(format!("a load worker failed: {e}")))?;
        for (into, from) in merged.iter_mut().zip(&tallies) {
            into.merge(from);
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(answers: Vec<Answer>, expected: Vec<bool>) -> Tally {
        let mut tally = Tally::new().unwrap();
        record(&mut tally, answers, Some(&expected), 7);
        tally
    }

    #[test]
    fn an_undecided_item_is_an_error_and_a_different_decision_is_wrong() {
        let allow = Ok((true, PermissionSource::None));
        let deny = Ok((false, PermissionSource::None));
        let shed = checked(vec![Err(Code::ResourceExhausted)], vec![false]);
        assert_eq!((shed.mismatches, shed.checked), (0, 1));
        assert_eq!(shed.errors.values().sum::<u64>(), 1);
        let batch = checked(vec![allow, Err(Code::DeadlineExceeded)], vec![true, true]);
        assert_eq!(batch.mismatches, 0);
        let wrong = checked(vec![deny], vec![true]);
        assert_eq!(wrong.mismatches, 1);
        assert_eq!(
            wrong.mismatch_samples,
            ["data[7]: expected [true], got [Some(false)]"]
        );
        let short = checked(vec![allow], vec![true, false]);
        assert_eq!(short.mismatches, 1);
        assert_eq!(checked(vec![allow, deny], vec![true, false]).mismatches, 0);
    }
}
