//! argon2id password hashing on a small bounded pool of blocking threads, so
//! a login storm can neither block the async runtime nor queue without end.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{
        PasswordHasher, PasswordVerifier,
        phc::{Output, PasswordHash},
    },
};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::{
    error::AuthzError,
    support::admission::{ExpectedWait, Ticket},
};

/// argon2id cost parameters (the settings default to OWASP's first
/// recommendation: m = 19 MiB, t = 2, p = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashParams {
    fn argon2(self) -> Result<Argon2<'static>, AuthzError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthzError::invalid(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// A hashing thread's working memory: argon2's blocks (19 MiB at the
/// default cost), allocated once per thread. Allocated per hash, the fresh
/// pages were faulted in every time: about a quarter of a hash's CPU time.
type Memory = Vec<Block>;

/// Deviations of the hash time added to each hash ahead when judging a
/// login's wait. A hash on a contended core varies (p10 16 ms, p99 55 ms in
/// a 64-login storm beside Authorize), and judged by the mean alone the
/// admitted logins' real wait reached 1.6x `password_max_wait` at p99.
const WAIT_DEVIATIONS: f64 = 3.0;

/// A hashing job, run on one of the pool's threads.
type Job = Box<dyn FnOnce(&Argon2<'static>, &mut Memory) + Send>;

/// The hashing threads' size and scheduling.
#[derive(Clone, Copy, Debug)]
pub struct HashWorkers {
    /// Threads (`password_workers`: the cores minus one by default).
    pub threads: usize,
    /// Their nice value (`password_nice`, 0 to 19): above 0, a contended
    /// core runs the decisions' threads first and a hash takes what is left.
    pub nice: u8,
}

/// Starts the hashing threads: plain OS threads, at the nice value asked.
/// A hash takes a core for 20-30 ms; at the runtime's priority it took an
/// equal share beside the decisions at the ramp's 10k users, whose p99 then
/// reached 0.2-0.5 s. Background work (warming, the audit writer and its
/// replay) waits for logins in progress, so a login alone keeps its core.
fn hashing_threads(
    workers: HashWorkers,
    (argon2, blocks): (&Argon2<'static>, usize),
) -> Result<mpsc::Sender<Job>, AuthzError> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(std::sync::Mutex::new(queue));
    for n in 0..workers.threads {
        let (queue, argon2) = (queue.clone(), argon2.clone());
        std::thread::Builder::new()
            .name(format!("velro-hash-{n}"))
            .spawn(move || {
                if workers.nice > 0 {
                    let me = Some(rustix::thread::gettid());
                    if let Err(e) = rustix::process::setpriority_process(me, workers.nice.into()) {
                        tracing::warn!("cannot set the hashing thread's nice value: {e}");
                    }
                }
                let mut memory: Memory = vec![Block::default(); blocks];
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(&argon2, &mut memory),
                        // The pool is gone: the thread ends.
                        Err(_) => return,
                    }
                }
            })
            .map_err(|e| AuthzError::Internal(format!("cannot start a hashing thread: {e}")))?;
    }
    Ok(jobs)
}

/// Hashes and verifies passwords off the runtime, at most `workers` at once.
/// A login is admitted only if its hash can start within `max_wait`, judged
/// from the measured hash time padded by its variation and the logins
/// ahead of it (and never more than `queue` waiting); otherwise it is
/// refused RESOURCE_EXHAUSTED at once, with the expected wait as the time
/// to retry. A queued login still waiting when `max_wait` has passed is
/// refused when its turn comes instead of hashed late.
pub struct PasswordHashing {
    params: HashParams,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    admitted: Arc<Semaphore>,
    queue: Arc<ExpectedWait>,
    max_wait: Duration,
    /// A hash of a random password: an unknown email is verified against it
    /// so that it costs what a wrong password costs.
    dummy: String,
}

impl PasswordHashing {
    /// Builds the pool and computes the dummy hash (once, at start-up; its
    /// time is the first estimate of a hash's cost).
    pub async fn new(
        params: HashParams,
        workers: HashWorkers,
        queue: usize,
        max_wait: Duration,
    ) -> Result<Self, AuthzError> {
        let argon2 = params.argon2()?;
        let workers = HashWorkers {
            threads: workers.threads.max(1),
            ..workers
        };
        let random = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let dummy = {
            let argon2 = argon2.clone();
            tokio::task::spawn_blocking(move || {
                argon2
                    .hash_password(random.as_bytes())
                    .map(|h| h.to_string())
            })
            .await
            .map_err(|e| AuthzError::Internal(format!("password hashing task failed: {e}")))?
            .map_err(|e| AuthzError::Internal(format!("cannot hash password: {e}")))?
        };
        Ok(PasswordHashing {
            params,
            jobs: std::sync::Mutex::new(hashing_threads(
                workers,
                (&argon2, argon2.params().block_count()),
            )?),
            admitted: Arc::new(Semaphore::new(workers.threads + queue)),
            queue: ExpectedWait::with_spread(workers.threads, started.elapsed(), WAIT_DEVIATIONS),
            max_wait,
            dummy,
        })
    }

    /// How long a login may wait for a hashing thread (`password_max_wait`).
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The measured time of one hash (smoothed).
    pub fn hash_time(&self) -> Duration {
        self.queue.service_time()
    }

    /// A place in the hashing queue, or RESOURCE_EXHAUSTED at once (with
    /// the time to retry) when it could not start within `max_wait`. Taken
    /// before any other work of a login, so a refused login costs nothing.
    pub fn admit(&self) -> Result<HashSlot, AuthzError> {
        let ticket =
            self.queue
                .admit(self.max_wait)
                .map_err(|too_long| AuthzError::Overloaded {
                    message: format!(
                        "password logins on this replica are queued about {} ms deep (limit {} ms, \
                     setting password_max_wait); retry after the given time",
                        too_long.expected_wait.as_millis(),
                        self.max_wait.as_millis()
                    ),
                    retry_after: too_long.retry_after,
                })?;
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            AuthzError::overloaded(
                "too many password logins in progress on this replica (setting password_queue); \
                 retry in a moment",
            )
        })?;
        Ok(HashSlot {
            ticket,
            _admitted: admitted,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        slot: HashSlot,
        work: impl FnOnce(&Argon2<'static>, &mut Memory) -> T + Send + 'static,
    ) -> Result<T, AuthzError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let (admitted_at, max_wait) = (slot.ticket.admitted_at(), self.max_wait);
        let queued = slot.ticket.queued();
        let job: Job = Box::new(move |argon2, memory| {
            // Queued on an estimate that proved wrong (the hashes ahead
            // ran slow): refused now rather than served late, so a queued
            // login never waits past its budget. One admitted to a free
            // thread is always served.
            if queued && admitted_at.elapsed() > max_wait {
                let _ = done.send(None);
                return;
            }
            let started = Instant::now();
            let result = work(argon2, memory);
            let _ = done.send(Some((result, started.elapsed())));
        });
        let gone = || AuthzError::Unavailable("password hashing is shutting down".into());
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .send(job)
            .map_err(|_| gone())?;
        let span = tracing::debug_span!("password.hash", queued = self.queue.in_flight());
        let Some((result, took)) = answer.instrument(span).await.map_err(|_| gone())? else {
            return Err(AuthzError::Overloaded {
                message: format!(
                    "this login waited more than {} ms for a hashing thread (setting \
                     password_max_wait): the logins ahead of it took longer than measured; \
                     retry after the given time",
                    self.max_wait.as_millis()
                ),
                retry_after: self.queue.expected_wait(),
            });
        };
        slot.ticket.served(took);
        Ok(result)
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, AuthzError> {
        let slot = self.admit()?;
        self.run(slot, move |argon2, _| {
            argon2
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| AuthzError::Internal(format!("cannot hash password: {e}")))
        })
        .await?
    }

    /// Whether `password` matches `stored` (the dummy hash when `None`, and
    /// then never a match). Also says whether the stored hash was made with
    /// other parameters than the configured ones (rehash on login).
    pub async fn verify(
        &self,
        slot: HashSlot,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, AuthzError> {
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let wanted = self.params;
        self.run(slot, move |argon2, memory| {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Verified {
                    matches: false,
                    outdated: false,
                };
            };
            let outdated = Params::try_from(&parsed).is_ok_and(|p| {
                (p.m_cost(), p.t_cost(), p.p_cost())
                    != (wanted.memory_kib, wanted.iterations, wanted.parallelism)
            }) || parsed.algorithm.as_str() != "argon2id";
            let matches = match outdated || parsed.version != Some(Version::V0x13.into()) {
                // The configured cost: recomputed in the thread's memory.
                false => recompute_matches(argon2, memory, password.as_bytes(), &parsed),
                // Another cost (rehashed after the login): its own parameters.
                true => argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
            };
            Verified {
                matches: matches && real,
                outdated,
            }
        })
        .await
    }
}

/// Whether `password` hashes to `parsed` (made with `argon2`'s parameters),
/// computed in `memory`; the outputs are compared in constant time.
fn recompute_matches(
    argon2: &Argon2<'static>,
    memory: &mut Memory,
    password: &[u8],
    parsed: &PasswordHash,
) -> bool {
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    argon2
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, memory.as_mut_slice())
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == *expected)
}

/// An admitted hash: its place in the queue.
pub struct HashSlot {
    ticket: Ticket,
    _admitted: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    pub outdated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: HashWorkers = HashWorkers {
        threads: 1,
        nice: 0,
    };

    const CHEAP: HashParams = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    async fn pool(params: HashParams) -> PasswordHashing {
        PasswordHashing::new(params, ONE, 4, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn verify(pool: &PasswordHashing, password: &str, stored: &str) -> Verified {
        let slot = pool.admit().unwrap_or_else(|e| panic!("{e}"));
        pool.verify(slot, password.into(), Some(stored.into()))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn the_reused_memory_verifies_like_the_reference_implementation() {
        let pool = pool(CHEAP).await;
        let stored = pool.hash("correct horse".into()).await.unwrap();
        for _ in 0..3 {
            // The same memory, hash after hash: no state carried over.
            let right = verify(&pool, "correct horse", &stored).await;
            assert_eq!(
                right,
                Verified {
                    matches: true,
                    outdated: false
                }
            );
            assert!(!verify(&pool, "correct horsf", &stored).await.matches);
        }
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(CHEAP.memory_kib, 1, 1, None).unwrap(),
        );
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(reference.verify_password(b"correct horse", &parsed).is_ok());
        // A hash of another cost: verified with its own parameters, and
        // reported outdated so the login rehashes it.
        let older = pool_with(512)
            .await
            .hash("correct horse".into())
            .await
            .unwrap();
        let verified = verify(&pool, "correct horse", &older).await;
        assert!(verified.matches && verified.outdated);
        assert!(!verify(&pool, "wrong", &older).await.matches);
    }

    async fn pool_with(memory_kib: u32) -> PasswordHashing {
        pool(HashParams {
            memory_kib,
            ..CHEAP
        })
        .await
    }

    /// A well-formed hash of the test's cost that no password here matches.
    const UNRELATED_HASH: &str = "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    #[tokio::test]
    async fn a_queued_hash_that_cannot_start_within_its_budget_is_refused_not_run() {
        let pool = PasswordHashing::new(CHEAP, ONE, 4, Duration::from_millis(50))
            .await
            .unwrap();
        // The one hashing thread is held by work the estimate knows nothing
        // of (as when the hashes ahead run far slower than measured).
        let (held, release) = std::sync::mpsc::channel::<()>();
        let job: Job = Box::new(move |_, _| {
            let _ = release.recv_timeout(Duration::from_secs(5));
        });
        pool.jobs.lock().unwrap().send(job).unwrap();
        let stored = UNRELATED_HASH.to_owned();
        // One admitted ahead (a cheap hash, well within the budget), so
        // this one queues.
        let ahead = pool.admit().expect("nothing admitted ahead: admitted");
        let slot = pool.admit().expect("one cheap hash ahead: admitted");
        drop(ahead);
        let waiting = tokio::spawn(async move {
            let answer = pool.verify(slot, "pw".into(), Some(stored)).await;
            (answer, pool)
        });
        tokio::time::sleep(Duration::from_millis(120)).await;
        held.send(()).unwrap();
        let (answer, pool) = waiting.await.unwrap();
        match answer {
            Err(AuthzError::Overloaded { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO, "a time to retry is given")
            }
            other => panic!("refused after waiting past the budget, got {other:?}"),
        }
        // The place is free again and the next login is served.
        assert_eq!(pool.queue.in_flight(), 0);
        assert!(!verify(&pool, "pw", UNRELATED_HASH).await.matches);
    }

    #[tokio::test]
    async fn hashing_threads_run_at_the_nice_value_asked() {
        let nice_of_a_hash = |nice| async move {
            let workers = HashWorkers { threads: 1, nice };
            let pool = PasswordHashing::new(CHEAP, workers, 4, Duration::from_secs(60))
                .await
                .unwrap();
            let slot = pool.admit().unwrap();
            pool.run(slot, |_, _| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            })
            .await
            .unwrap()
            .unwrap()
        };
        let runtime = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(
            nice_of_a_hash(0).await,
            runtime,
            "0 keeps the process's own"
        );
        assert_eq!(nice_of_a_hash(7).await, 7);
        assert_eq!(nice_of_a_hash(19).await, 19);
    }
}
