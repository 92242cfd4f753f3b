//! argon2id password hashing on a small bounded pool of blocking threads, so
//! a login storm can neither block the async runtime nor queue without end.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use tokio::sync::Semaphore;

use crate::error::AuthzError;

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

/// Hashes and verifies passwords off the runtime; at most `workers` at once
/// and `queue` waiting, beyond which callers get RESOURCE_EXHAUSTED.
pub struct PasswordHashing {
    params: HashParams,
    argon2: Argon2<'static>,
    workers: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    /// A hash of a random password: an unknown email is verified against it
    /// so that it costs what a wrong password costs.
    dummy: String,
}

impl PasswordHashing {
    /// Builds the pool and computes the dummy hash (once, at start-up).
    pub async fn new(params: HashParams, workers: usize, queue: usize) -> Result<Self, AuthzError> {
        let argon2 = params.argon2()?;
        let workers = workers.max(1);
        let mut hashing = PasswordHashing {
            params,
            argon2,
            workers: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers + queue)),
            dummy: String::new(),
        };
        let random = uuid::Uuid::new_v4().to_string();
        hashing.dummy = hashing.hash(random).await?;
        Ok(hashing)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, AuthzError> {
        let _admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            AuthzError::ResourceExhausted(
                "too many password logins in progress on this replica; retry in a moment".into(),
            )
        })?;
        let _worker = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthzError::Unavailable("password hashing is shutting down".into()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || work(&argon2))
            .await
            .map_err(|e| AuthzError::Internal(format!("password hashing task failed: {e}")))
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, AuthzError> {
        self.run(move |argon2| {
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
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, AuthzError> {
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let wanted = self.params;
        self.run(move |argon2| {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Verified {
                    matches: false,
                    outdated: false,
                };
            };
            let matches = argon2.verify_password(password.as_bytes(), &parsed).is_ok() && real;
            let outdated = Params::try_from(&parsed).is_ok_and(|p| {
                (p.m_cost(), p.t_cost(), p.p_cost())
                    != (wanted.memory_kib, wanted.iterations, wanted.parallelism)
            }) || parsed.algorithm.as_str() != "argon2id";
            Verified { matches, outdated }
        })
        .await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    pub outdated: bool,
}
