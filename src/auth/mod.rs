//! Authentication: password logins (argon2id, off the runtime, throttled),
//! EdDSA access tokens, single-use refresh tokens with reuse detection, and
//! sessions that can be revoked. A verified token is cached by its hash
//! until it expires (at most `token_cache_ttl`), so a repeated check costs
//! microseconds; revoking on this replica evicts it at once.

pub mod events;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod password;
pub mod throttle;

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use moka::{Expiry, future::Cache};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    error::AuthzError,
    store::{
        Store,
        auth::{NewSession, Rotate, Rotation},
    },
    support::{
        clock::{now_ms, now_unix},
        foreground::Foreground,
    },
};
use events::{Event, SecurityEvents};
use jwt::TokenService;
use password::PasswordHashing;
use throttle::Throttle;

const REFRESH_PREFIX: &str = "vrt_";
const MAX_EMAIL_BYTES: usize = 320;
const MAX_PASSWORD_BYTES: usize = 1024;

/// Who a credential belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub email: String,
    /// None for tokens of an external issuer.
    pub session_id: Option<Uuid>,
    /// Unix seconds.
    pub expires_at: u64,
    /// (team id, role)
    pub teams: Vec<(Uuid, String)>,
    pub issuer: String,
}

#[derive(Clone, Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub access_expires_at: u64,
    pub refresh_token: String,
    pub refresh_expires_at: u64,
}

/// Where a login or refresh comes from, recorded on the session.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a verified token's principal is cached: the token's SHA-256, so
/// the cache holds no token.
fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Cached principals live until their token expires, or the cache TTL.
struct UntilTokenExpiry(Duration);

impl Expiry<[u8; 32], Arc<Principal>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Principal>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = Duration::from_secs(value.expires_at.saturating_sub(now_unix()));
        Some(left.min(self.0))
    }
}

/// Called with the user of each newly verified principal (a login or the
/// first use of a token), e.g. to warm the permission caches. Must not
/// block: it runs on the request path.
pub type AfterLogin = Arc<dyn Fn(Uuid) + Send + Sync>;

pub struct AuthConfig {
    pub refresh_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub token_cache_capacity: u64,
    pub token_cache_ttl: Duration,
    pub after_login: Option<AfterLogin>,
    /// Where logins, refreshes and refused tokens are recorded.
    pub events: SecurityEvents,
    /// Counts of the verified-token cache: (hits, misses).
    pub token_cache_counters: Option<(Counter, Counter)>,
    /// Password logins in progress (admitted, not yet answered): background
    /// work such as warming waits for them.
    pub logins: Arc<Foreground>,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    tokens: TokenService,
    hashing: PasswordHashing,
    accounts: Throttle,
    ips: Throttle,
    verified: Cache<[u8; 32], Arc<Principal>>,
    refresh_ttl: u64,
    reuse_grace: Duration,
    after_login: Option<AfterLogin>,
    events: SecurityEvents,
    token_cache_counters: Option<(Counter, Counter)>,
    logins: Arc<Foreground>,
}

impl Authenticator {
    /// Verified tokens held now.
    pub fn token_cache_entries(&self) -> u64 {
        self.verified.entry_count()
    }

    pub fn new(
        store: Arc<dyn Store>,
        tokens: TokenService,
        hashing: PasswordHashing,
        (accounts, ips): (Throttle, Throttle),
        config: AuthConfig,
    ) -> Authenticator {
        Authenticator {
            store,
            tokens,
            hashing,
            accounts,
            ips,
            verified: Cache::builder()
                .max_capacity(config.token_cache_capacity)
                .expire_after(UntilTokenExpiry(config.token_cache_ttl))
                .support_invalidation_closures()
                .build(),
            refresh_ttl: config.refresh_ttl.as_secs(),
            reuse_grace: config.refresh_reuse_grace,
            after_login: config.after_login,
            events: config.events,
            token_cache_counters: config.token_cache_counters,
            logins: config.logins,
        }
    }

    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    pub fn hashing(&self) -> &PasswordHashing {
        &self.hashing
    }

    /// A password login: a new session and a token pair. Every outcome is
    /// a security event.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: &Client,
    ) -> Result<(Principal, TokenPair), AuthzError> {
        let outcome = self.try_login(email, password, client).await;
        let event = match &outcome {
            Ok((principal, _)) => Event {
                decision: "login_succeeded",
                reason: "PASSWORD".into(),
                subject: principal.user_id.to_string(),
                session: principal.session_id,
                message: format!("{email} logged in"),
                client,
            },
            Err(error) => Event {
                decision: events::login_failure(error),
                reason: error.code_name().to_ascii_uppercase(),
                subject: email.to_owned(),
                session: None,
                message: error.to_string(),
                client,
            },
        };
        self.events.record("login", event);
        outcome
    }

    async fn try_login(
        &self,
        email: &str,
        password: &str,
        client: &Client,
    ) -> Result<(Principal, TokenPair), AuthzError> {
        if email.is_empty() || email.len() > MAX_EMAIL_BYTES {
            return Err(AuthzError::invalid(format!(
                "password.email must be 1 to {MAX_EMAIL_BYTES} bytes"
            )));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthzError::invalid(format!(
                "password.password must be 1 to {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let account = email.trim().to_lowercase();
        self.accounts.check(&account)?;
        if !client.ip.is_empty() {
            self.ips.check(&client.ip)?;
        }
        // A place for the hash first: a login that cannot be served in time
        // is refused before it costs a database read.
        let slot = self.hashing.admit()?;
        let _in_progress = self.logins.enter();
        let credentials = self.store.credentials(email.trim()).await?;
        let stored = credentials.as_ref().and_then(|c| c.password_hash.clone());
        // Unknown emails are verified against the dummy hash: same work,
        // same answer. The user's teams are read while the hash runs, so
        // the login's principal costs no round trip after it.
        let teams = async {
            match &credentials {
                Some(user) => self.store.memberships(user.user_id).await.map(Some),
                None => Ok(None),
            }
        };
        let (verified, teams) = tokio::join!(
            self.hashing.verify(slot, password.to_owned(), stored),
            teams
        );
        let verified = verified?;
        let Some(user) = credentials.filter(|_| verified.matches) else {
            self.accounts.failed(&account);
            if !client.ip.is_empty() {
                self.ips.failed(&client.ip);
            }
            return Err(AuthzError::unauthenticated(
                "the email or the password is wrong",
            ));
        };
        if user.disabled {
            return Err(AuthzError::PermissionDenied(
                "this account is disabled; ask an administrator".into(),
            ));
        }
        self.accounts.succeeded(&account);
        if verified.outdated {
            match self.hashing.hash(password.to_owned()).await {
                Ok(hash) => self.store.set_password_hash(user.user_id, &hash).await?,
                Err(e) => tracing::warn!("could not rehash a password: {e}"),
            }
        }
        let now = now_unix();
        let session = Uuid::new_v4();
        let refresh = new_refresh_token();
        self.store
            .create_session(NewSession {
                id: session,
                user_id: user.user_id,
                client_ip: &client.ip,
                user_agent: &client.user_agent,
                now: now as i64,
                refresh_hash: &sha256_hex(&refresh),
                refresh_expires_at: (now + self.refresh_ttl) as i64,
            })
            .await?;
        // The principal is known without reading back the session just
        // written (what verifying the new token would do: two reads and a
        // write more for every login).
        let (access, exp) = self.tokens.issue(user.user_id, session, now)?;
        let principal = Arc::new(Principal {
            user_id: user.user_id,
            email: user.email,
            session_id: Some(session),
            expires_at: exp,
            teams: teams?.unwrap_or_default(),
            issuer: self.tokens.own_issuer().to_owned(),
        });
        self.remember(cache_key(&access), principal.clone()).await;
        Ok((
            (*principal).clone(),
            self.token_pair((access, exp), refresh, now),
        ))
    }

    /// The pair handed to the client: the access token with its expiry,
    /// the refresh token with the one `refresh_ttl` gives it.
    fn token_pair(&self, (access, exp): (String, u64), refresh: String, now: u64) -> TokenPair {
        TokenPair {
            access_token: access,
            access_expires_at: exp,
            refresh_token: refresh,
            refresh_expires_at: now + self.refresh_ttl,
        }
    }

    async fn pair(
        &self,
        user: Uuid,
        session: Uuid,
        refresh: String,
        now: u64,
    ) -> Result<(Principal, TokenPair), AuthzError> {
        let (access, exp) = self.tokens.issue(user, session, now)?;
        let principal = self.verify(&access).await?;
        Ok((
            (*principal).clone(),
            self.token_pair((access, exp), refresh, now),
        ))
    }

    /// Rotates a refresh token: the old one dies, a new pair comes back.
    /// A token used before revokes its whole session. Both are security
    /// events.
    pub async fn refresh(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<(Principal, TokenPair), AuthzError> {
        let outcome = self.try_refresh(token, client).await;
        let event = match &outcome {
            Ok((principal, _)) => Event {
                decision: "token_refreshed",
                reason: "REFRESH_TOKEN".into(),
                subject: principal.user_id.to_string(),
                session: principal.session_id,
                message: "a refresh token was rotated".into(),
                client,
            },
            Err(error) => Event {
                decision: "refresh_refused",
                reason: error.code_name().to_ascii_uppercase(),
                subject: String::new(),
                session: None,
                message: error.to_string(),
                client,
            },
        };
        self.events.record("refresh", event);
        outcome
    }

    async fn try_refresh(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<(Principal, TokenPair), AuthzError> {
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Err(AuthzError::unauthenticated("this is not a refresh token"));
        }
        let now = now_unix();
        let next = new_refresh_token();
        let now_ms = now_ms();
        let rotation = self
            .store
            .rotate_refresh(Rotate {
                old_hash: &sha256_hex(token),
                new_hash: &sha256_hex(&next),
                now_ms,
                grace_ms: self.reuse_grace.as_millis() as i64,
                new_expires_at: (now + self.refresh_ttl) as i64,
            })
            .await?;
        match rotation {
            Rotation::Rotated {
                session_id,
                user_id,
            } => self.pair(user_id, session_id, next, now).await,
            Rotation::Reused { session_id } => {
                self.forget_session(session_id).await;
                self.events.record(
                    "refresh",
                    Event {
                        decision: "refresh_reused",
                        reason: "SESSION_REVOKED".into(),
                        subject: String::new(),
                        session: Some(session_id),
                        message: "a refresh token was presented a second time (a stolen copy?): \
                                  its session is revoked"
                            .into(),
                        client,
                    },
                );
                Err(AuthzError::unauthenticated(
                    "this refresh token was already used; the session has been revoked, log in again",
                ))
            }
            Rotation::Raced => Err(AuthzError::unauthenticated(
                "this refresh token was just used by another request; use the tokens that request got",
            )),
            Rotation::Expired => Err(AuthzError::unauthenticated(
                "the refresh token has expired; log in again",
            )),
            Rotation::SessionEnded => Err(AuthzError::unauthenticated(
                "the session has ended; log in again",
            )),
            Rotation::Unknown => Err(AuthzError::unauthenticated(
                "the refresh token is not known",
            )),
        }
    }

    /// Verifies an access token a client presented (a bearer token on a
    /// decision, or Authenticate); a refusal is a security event.
    pub async fn verify_presented(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<Arc<Principal>, AuthzError> {
        let outcome = self.verify(token).await;
        if let Err(error) = &outcome {
            self.events.record(
                "bearer_token",
                Event {
                    decision: "token_rejected",
                    reason: error.code_name().to_ascii_uppercase(),
                    subject: String::new(),
                    session: None,
                    message: error.to_string(),
                    client,
                },
            );
        }
        outcome
    }

    /// Verifies an access token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthzError> {
        let key = cache_key(token);
        if let Some(principal) = self.verified.get(&key).await
            && principal.expires_at > now_unix()
        {
            if let Some((hits, _)) = &self.token_cache_counters {
                hits.inc();
            }
            return Ok(principal);
        }
        if let Some((_, misses)) = &self.token_cache_counters {
            misses.inc();
        }
        let claims = self.tokens.verify(token).await?;
        let principal = Arc::new(self.principal(claims).await?);
        self.remember(key, principal.clone()).await;
        Ok(principal)
    }

    /// Caches a newly verified principal under its token's `cache_key` and
    /// tells the after-login hook (warming) about its user.
    async fn remember(&self, key: [u8; 32], principal: Arc<Principal>) {
        let user = principal.user_id;
        self.verified.insert(key, principal).await;
        if let Some(after_login) = &self.after_login {
            after_login(user);
        }
    }

    async fn principal(&self, claims: jwt::VerifiedClaims) -> Result<Principal, AuthzError> {
        let user_id = Uuid::parse_str(&claims.sub)
            .map_err(|_| AuthzError::unauthenticated("the token's subject is not a user id"))?;
        let (email, session_id) = if self.tokens.is_own(&claims) {
            let sid = claims.sid.as_deref().unwrap_or_default();
            let session_id = Uuid::parse_str(sid)
                .map_err(|_| AuthzError::unauthenticated("the token's session id is malformed"))?;
            let state = self
                .store
                .session_state(session_id)
                .await?
                .filter(|s| s.user_id == user_id)
                .ok_or_else(|| AuthzError::unauthenticated("the token's session does not exist"))?;
            if state.revoked {
                return Err(AuthzError::unauthenticated(
                    "the token's session has been revoked",
                ));
            }
            if state.user_disabled {
                return Err(AuthzError::unauthenticated("the token's user is disabled"));
            }
            self.store
                .touch_session(session_id, now_unix() as i64)
                .await?;
            (state.email, Some(session_id))
        } else {
            let (email, disabled) = self.store.user_state(user_id).await?.ok_or_else(|| {
                AuthzError::unauthenticated("the token's subject is not a known user")
            })?;
            if disabled {
                return Err(AuthzError::unauthenticated("the token's user is disabled"));
            }
            (email, None)
        };
        Ok(Principal {
            user_id,
            email,
            session_id,
            expires_at: claims.exp,
            teams: self.store.memberships(user_id).await?,
            issuer: claims.iss,
        })
    }

    async fn forget_session(&self, session: Uuid) {
        let _ = self
            .verified
            .invalidate_entries_if(move |_, p| p.session_id == Some(session));
    }

    /// Revokes one session; its tokens stop working at once on this replica.
    pub async fn revoke_session(&self, session: Uuid) -> Result<u32, AuthzError> {
        let revoked = self
            .store
            .revoke_session(session, now_unix() as i64, "revoked by an administrator")
            .await?;
        self.forget_session(session).await;
        Ok(u32::from(revoked))
    }

    /// Revokes every session of a user.
    pub async fn revoke_user(&self, user: Uuid) -> Result<u32, AuthzError> {
        let sessions = self
            .store
            .revoke_user_sessions(user, now_unix() as i64, "revoked by an administrator")
            .await?;
        let _ = self
            .verified
            .invalidate_entries_if(move |_, p| p.user_id == user);
        Ok(sessions.len() as u32)
    }
}

fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}
