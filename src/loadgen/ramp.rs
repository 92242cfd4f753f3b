//! The ramp as the seed's k6 plan runs it: virtual users who, once started,
//! stay for the rest of the ramp. Each logs in once (a password login as a
//! user of its own), then authorizes by token at its rate (open loop, its
//! latency measured from each intended send time) on its own working set:
//! its teams' and own projects and its own generations. A stage raises or
//! lowers the number of users; its figures are what was sent while it ran.
//!
//! A login refused RESOURCE_EXHAUSTED is retried after the server's
//! RetryInfo, as a client should; it counts as shed, not as an error.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::{sync::OnceCell, time::Instant};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;
use uuid::Uuid;

use super::{
    LoadError,
    data::{RequestGenerator, Skew},
    driver::ensure_fd_limit,
    expect::Expected,
    ghz::Plan,
    tally::Tally,
};
use crate::{
    model::{
        Action, ResourceKind,
        workload::{Dataset, WORKLOAD_PASSWORD},
    },
    proto::{
        self, Decision, authenticate_request::Credentials,
        authorization_service_client::AuthorizationServiceClient,
    },
};

/// Resources in one user's working set.
const WORKING_SET: usize = 8;
/// How long a virtual user keeps trying to log in before it gives up.
const LOGIN_PATIENCE: Duration = Duration::from_secs(120);

/// One stage: how many users, each sending this many requests per second,
/// for this long.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub users: usize,
    pub connections: usize,
    pub rate: f64,
    pub duration: Duration,
    pub timeout: Duration,
}

impl Stage {
    /// A ghz stage config: `concurrency` users over `connections`
    /// connections, `rps` requests per second in all.
    pub fn from_plan(plan: &Plan, seconds: Option<f64>, factor: f64) -> Stage {
        let users = plan.concurrency.max(1);
        let rate = match &plan.load {
            super::ghz::Load::Open(steps) => steps.first().map_or(1.0, |s| s.rps) / users as f64,
            super::ghz::Load::Closed => 1.0,
        };
        let base = plan.duration.unwrap_or(Duration::from_secs(10));
        let duration = match seconds {
            Some(s) => Duration::from_secs_f64(s),
            None => base.mul_f64(factor),
        };
        Stage {
            name: plan.name.clone(),
            users,
            connections: plan.connections.clamp(1, users),
            rate,
            duration,
            timeout: plan.timeout,
        }
    }
}

/// What one stage measured.
pub struct StageTallies {
    pub authz: Tally,
    pub logins: Tally,
    /// Logins refused RESOURCE_EXHAUSTED and retried.
    pub logins_shed: u64,
    /// Users logged in and sending by the stage's end.
    pub active: usize,
}

/// Everything the virtual users share.
struct Ramp {
    host: String,
    data: Arc<Dataset>,
    expected: Expected,
    users: Vec<(Uuid, String)>,
    working_sets: HashMap<Uuid, Vec<(ResourceKind, Uuid)>>,
    channels: Vec<OnceCell<Channel>>,
    /// Users with an index below this run; the others stop.
    target: AtomicUsize,
    active: AtomicUsize,
    logins: bool,
    check_every: u64,
    timeout: Duration,
    /// When each stage starts, and each user's rate in it.
    stage_starts: Vec<Instant>,
    rates: Vec<f64>,
    /// What each stage measured, shared by every user (one histogram set
    /// per stage, not per user).
    tallies: Vec<Mutex<StageTallies>>,
}

impl Ramp {
    /// Records into the tallies of the stage that was running at `at`.
    fn record(&self, at: Instant, f: impl FnOnce(&mut StageTallies)) {
        if let Ok(mut stage) = self.tallies[self.stage_of(at)].lock() {
            f(&mut stage);
        }
    }

    fn stage_of(&self, at: Instant) -> usize {
        self.stage_starts
            .partition_point(|start| *start <= at)
            .saturating_sub(1)
    }

    async fn channel(&self, vu: usize) -> Result<Channel, String> {
        let cell = &self.channels[vu % self.channels.len()];
        cell.get_or_try_init(|| async {
            Endpoint::from_shared(format!("http://{}", self.host))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("{e:?}"))
        })
        .await
        .cloned()
    }
}

/// The resources a user works on: owned and team projects, own generations.
fn working_sets(data: &Dataset) -> HashMap<Uuid, Vec<(ResourceKind, Uuid)>> {
    let mut teams: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for m in &data.members {
        teams.entry(m.user_id).or_default().push(m.team_id);
    }
    let mut team_projects: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut owned: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for p in &data.projects {
        owned.entry(p.owner_id).or_default().push(p.id);
        if let Some(team) = p.team_id {
            team_projects.entry(team).or_default().push(p.id);
        }
    }
    let mut created: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for g in &data.generations {
        created.entry(g.created_by).or_default().push(g.id);
    }
    let none = Vec::new();
    data.users
        .iter()
        .map(|u| {
            let projects = owned.get(&u.id).unwrap_or(&none).iter().chain(
                teams
                    .get(&u.id)
                    .unwrap_or(&none)
                    .iter()
                    .flat_map(|t| team_projects.get(t).unwrap_or(&none)),
            );
            let mut set: Vec<(ResourceKind, Uuid)> = projects
                .take(WORKING_SET / 2)
                .map(|p| (ResourceKind::Project, *p))
                .collect();
            let room = WORKING_SET - set.len();
            set.extend(
                created
                    .get(&u.id)
                    .unwrap_or(&none)
                    .iter()
                    .take(room)
                    .map(|g| (ResourceKind::Generation, *g)),
            );
            (u.id, set)
        })
        .collect()
}

fn action(rng: &mut ChaCha8Rng) -> Action {
    match rng.random_range(0..20) {
        0..=13 => Action::Read,
        14..=17 => Action::Write,
        18 => Action::Delete,
        _ => Action::Share,
    }
}

/// Logs in, retrying shed attempts after the server's RetryInfo.
async fn login(
    vu: usize,
    client: &mut AuthorizationServiceClient<Channel>,
    email: &str,
    ramp: &Ramp,
) -> Result<String, Code> {
    let given_up = Instant::now() + LOGIN_PATIENCE;
    loop {
        // A user the ramp no longer wants stops trying (not an error).
        if vu >= ramp.target.load(Ordering::Acquire) {
            return Err(Code::Cancelled);
        }
        let started = Instant::now();
        let mut request = tonic::Request::new(proto::AuthenticateRequest {
            credentials: Some(Credentials::Password(proto::PasswordCredentials {
                email: email.to_owned(),
                password: WORKLOAD_PASSWORD.to_owned(),
            })),
            context: None,
        });
        request.set_timeout(ramp.timeout);
        let answer = client.authenticate(request).await;
        let done = Instant::now().into_std();
        match answer {
            Ok(answer) => {
                ramp.record(started, |s| s.logins.finish(started.into_std(), done));
                return Ok(answer
                    .into_inner()
                    .tokens
                    .map(|t| t.access_token)
                    .unwrap_or_default());
            }
            Err(status) if status.code() == Code::ResourceExhausted && started < given_up => {
                ramp.record(started, |s| s.logins_shed += 1);
                let wait = status
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_secs(1));
                // A little jitter, so refused users do not return in step.
                let jitter = 0.9 + 0.2 * rand::random::<f64>();
                tokio::time::sleep(wait.mul_f64(jitter)).await;
            }
            Err(status) => {
                ramp.record(started, |s| {
                    s.logins.finish(started.into_std(), done);
                    s.logins.error(status.code());
                });
                return Err(status.code());
            }
        }
    }
}

/// One virtual user, for as long as the ramp wants it.
async fn virtual_user(vu: usize, ramp: Arc<Ramp>) {
    let (user, email) = ramp.users[vu % ramp.users.len()].clone();
    let mut client = match ramp.channel(vu).await {
        Ok(channel) => AuthorizationServiceClient::new(channel),
        Err(_) => {
            ramp.record(Instant::now(), |s| s.authz.error(Code::Unavailable));
            return;
        }
    };
    let token = match ramp.logins {
        true => match login(vu, &mut client, &email, &ramp).await {
            Ok(token) => Some(token),
            Err(_) => return,
        },
        false => None,
    };
    ramp.active.fetch_add(1, Ordering::AcqRel);
    let mut rng = ChaCha8Rng::seed_from_u64(vu as u64);
    let fallback: Vec<(ResourceKind, Uuid)>;
    let set = match ramp.working_sets.get(&user) {
        Some(set) if !set.is_empty() => set,
        _ => {
            let mut generator = RequestGenerator::new(&ramp.data, Skew::Zipf, vu as u64);
            fallback = (0..WORKING_SET)
                .map(|_| {
                    let c = generator.check();
                    (c.kind, c.id)
                })
                .collect();
            &fallback
        }
    };
    let mut due = Instant::now();
    let mut sent: u64 = 0;
    while vu < ramp.target.load(Ordering::Acquire) {
        tokio::time::sleep_until(due).await;
        if vu >= ramp.target.load(Ordering::Acquire) {
            break;
        }
        let (kind, id) = set[rng.random_range(0..set.len())];
        let act = action(&mut rng);
        let mut request = tonic::Request::new(proto::AuthorizeRequest {
            user_id: if token.is_none() {
                user.to_string()
            } else {
                String::new()
            },
            subject_token: token.clone().unwrap_or_default(),
            action: act.as_str().to_owned(),
            resource: Some(proto::Resource {
                r#type: kind.as_str().to_owned(),
                id: id.to_string(),
            }),
            ..Default::default()
        });
        request.set_timeout(ramp.timeout);
        let answer = client.authorize(request).await;
        let done = Instant::now().into_std();
        let checked = sent
            .is_multiple_of(ramp.check_every)
            .then(|| ramp.expected.allows(user, act, kind, id));
        ramp.record(due, |stage| {
            stage.authz.finish(due.into_std(), done);
            match answer {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    stage.authz.decisions += 1;
                    stage.authz.source(answer.source());
                    if let Some(want) = checked {
                        stage.authz.checked += 1;
                        if (answer.decision() == Decision::Allow) != want {
                            stage.authz.mismatch(format!(
                                "{user} {act} {}:{id}: expected allow={want}",
                                kind.as_str()
                            ));
                        }
                    }
                }
                Err(status) => stage.authz.error(status.code()),
            }
        });
        sent += 1;
        // Open loop: the next request is due one period later, whatever
        // this one took.
        due += Duration::from_secs_f64(1.0 / ramp.rates[ramp.stage_of(due)].max(0.001));
    }
    ramp.active.fetch_sub(1, Ordering::AcqRel);
}

/// What the ramp needs besides its stages.
pub struct RampOptions {
    pub host: String,
    pub data: Arc<Dataset>,
    /// Users log in first (password) and authorize by token.
    pub logins: bool,
    pub check_every: u64,
}

/// Runs the stages in order; returns what each measured.
pub async fn run(stages: &[Stage], options: RampOptions) -> Result<Vec<StageTallies>, LoadError> {
    let connections = stages.iter().map(|s| s.connections).max().unwrap_or(1);
    ensure_fd_limit(connections)?;
    let start = Instant::now() + Duration::from_millis(200);
    let mut stage_starts = Vec::with_capacity(stages.len());
    let mut at = start;
    for stage in stages {
        stage_starts.push(at);
        at += stage.duration;
    }
    let users: Vec<(Uuid, String)> = options
        .data
        .users
        .iter()
        .filter(|u| !u.disabled)
        .map(|u| (u.id, u.email.clone()))
        .collect();
    if users.is_empty() {
        return Err(LoadError("the data set has no enabled users".into()));
    }
    let ramp = Arc::new(Ramp {
        host: options.host,
        expected: Expected::new(&options.data),
        working_sets: working_sets(&options.data),
        data: options.data,
        users,
        channels: (0..connections).map(|_| OnceCell::new()).collect(),
        target: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        logins: options.logins,
        check_every: options.check_every.max(1),
        timeout: stages.first().map_or(Duration::from_secs(5), |s| s.timeout),
        stage_starts: stage_starts.clone(),
        rates: stages.iter().map(|s| s.rate).collect(),
        tallies: stages
            .iter()
            .map(|_| {
                Ok(Mutex::new(StageTallies {
                    authz: Tally::new()?,
                    logins: Tally::new()?,
                    logins_shed: 0,
                    active: 0,
                }))
            })
            .collect::<Result<_, LoadError>>()?,
    });
    let mut users = Vec::new();
    let mut active = Vec::with_capacity(stages.len());
    for (stage, begins) in stages.iter().zip(&stage_starts) {
        tokio::time::sleep_until(*begins).await;
        ramp.target.store(stage.users, Ordering::Release);
        // New users start spread over the first second of their stage.
        let (from, to) = (users.len(), stage.users);
        for vu in from..to {
            let ramp = ramp.clone();
            let delay = Duration::from_secs_f64((vu - from) as f64 / (to - from).max(1) as f64);
            users.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                virtual_user(vu, ramp).await
            }));
        }
        tokio::time::sleep_until(*begins + stage.duration).await;
        active.push(ramp.active.load(Ordering::Acquire));
    }
    ramp.target.store(0, Ordering::Release);
    for user in users {
        user.await
            .map_err(|e| LoadError(format!("a virtual user failed: {e}")))?;
    }
    let ramp =
        Arc::try_unwrap(ramp).map_err(|_| LoadError("virtual users outlived the ramp".into()))?;
    ramp.tallies
        .into_iter()
        .zip(active)
        .map(|(stage, active)| {
            let mut stage = stage
                .into_inner()
                .map_err(|_| LoadError("a virtual user panicked while recording".into()))?;
            stage.active = active;
            Ok(stage)
        })
        .collect()
}
