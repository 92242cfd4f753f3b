//! An external issuer's keys from its JWKS URL: fetched at start and every
//! `jwks_refresh`, re-fetched when a token names a key id we do not know
//! (at most once per `ON_DEMAND_EVERY`, so forged key ids cannot make us
//! hammer the identity provider), and the last good set kept when a fetch
//! fails. No keys yet means every token of the issuer is refused.

use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant},
};

use jsonwebtoken::jwk::JwkSet;

/// Unknown key ids trigger a fetch at most this often, per issuer.
pub const ON_DEMAND_EVERY: Duration = Duration::from_secs(10);
/// A fetch that takes longer fails (the last good keys stay).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct RemoteJwks {
    issuer: String,
    url: String,
    /// Built once: its connection pool and TLS roots are reused.
    client: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
    last_on_demand: Mutex<Option<Instant>>,
}

impl RemoteJwks {
    pub fn new(issuer: &str, url: &str) -> Result<Arc<RemoteJwks>, String> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("jwks_url {url:?} must be an http(s) URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("velro-authz/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("jwks_url {url}: {e}"))?;
        Ok(Arc::new(RemoteJwks {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            client,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            last_on_demand: Mutex::new(None),
        }))
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<JwkSet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn knows(&self, kid: Option<&str>) -> bool {
        let keys = self.current();
        match kid {
            Some(kid) => keys.find(kid).is_some(),
            None => keys.keys.len() == 1,
        }
    }

    /// Fetches the set and puts it in force; on failure the last good set
    /// stays and the error is returned (and logged).
    pub async fn fetch(&self) -> Result<usize, String> {
        let result = self.download().await;
        match &result {
            Ok(set) => {
                let count = set.keys.len();
                let mut slot = match self.keys.write() {
                    Ok(slot) => slot,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *slot = Arc::new(set.clone());
                tracing::debug!(issuer = %self.issuer, keys = count, "JWKS fetched");
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(
                    issuer = %self.issuer,
                    url = %self.url,
                    "JWKS not fetched (the last good keys stay in force): {e}"
                );
                Err(e.clone())
            }
        }
    }

    async fn download(&self) -> Result<JwkSet, String> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the server answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS holds no keys".into());
        }
        Ok(set)
    }

    /// A token named a key id we do not know: fetch again, unless a fetch
    /// for that reason ran within `ON_DEMAND_EVERY`. True when a fetch ran
    /// and succeeded.
    pub async fn fetch_for_unknown_kid(&self) -> bool {
        let now = Instant::now();
        let allowed = match self.last_on_demand.lock() {
            Ok(mut last) => match *last {
                Some(at) if now.duration_since(at) < ON_DEMAND_EVERY => false,
                _ => {
                    *last = Some(now);
                    true
                }
            },
            Err(_) => false,
        };
        allowed && self.fetch().await.is_ok()
    }

    /// Refreshes every `every` while anyone holds the keys.
    pub async fn follow(me: Weak<RemoteJwks>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Some(jwks) = me.upgrade() else {
                return;
            };
            let _ = jwks.fetch().await;
        }
    }
}
