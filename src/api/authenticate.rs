//! Thin handlers of the authentication RPCs and the subject of a request
//! given as a bearer token.

use crate::{
    api::validate,
    auth::{Authenticator, Client, Principal, TokenPair},
    error::AuthzError,
    model::RequestFacts,
    proto::{self, authenticate_request::Credentials, revoke_sessions_request::Target},
};

impl From<&Principal> for proto::Principal {
    fn from(p: &Principal) -> Self {
        proto::Principal {
            user_id: p.user_id.to_string(),
            email: p.email.clone(),
            session_id: p.session_id.map(|s| s.to_string()).unwrap_or_default(),
            expires_at: p.expires_at as i64,
            teams: p
                .teams
                .iter()
                .map(|(team, role)| proto::TeamMembership {
                    team_id: team.to_string(),
                    role: role.clone(),
                })
                .collect(),
            issuer: p.issuer.clone(),
        }
    }
}

impl From<TokenPair> for proto::TokenPair {
    fn from(t: TokenPair) -> Self {
        proto::TokenPair {
            access_token: t.access_token,
            access_token_expires_at: t.access_expires_at as i64,
            refresh_token: t.refresh_token,
            refresh_token_expires_at: t.refresh_expires_at as i64,
        }
    }
}

/// Longest email accepted (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 320;

pub async fn authenticate(
    auth: &Authenticator,
    req: &proto::AuthenticateRequest,
) -> Result<proto::AuthenticateResponse, AuthzError> {
    let client = client_of(&validate::context(req.context.as_ref())?);
    let (principal, tokens) = match &req.credentials {
        Some(Credentials::Password(p)) => {
            validate::text("password.email", &p.email, MAX_EMAIL_BYTES)?;
            let (principal, tokens) = auth.login(&p.email, &p.password, &client).await?;
            (principal, Some(tokens))
        }
        Some(Credentials::AccessToken(token)) => (
            (*auth.verify_presented(token, &client).await?).clone(),
            None,
        ),
        Some(Credentials::RefreshToken(token)) => {
            let (principal, tokens) = auth.refresh(token, &client).await?;
            (principal, Some(tokens))
        }
        None => {
            return Err(AuthzError::invalid(
                "credentials are required: password {email, password}, access_token or refresh_token",
            ));
        }
    };
    Ok(proto::AuthenticateResponse {
        principal: Some((&principal).into()),
        tokens: tokens.map(Into::into),
    })
}

/// Where a request comes from, for security events.
pub fn client_of(facts: &RequestFacts) -> Client {
    Client {
        ip: facts.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent: facts.user_agent.clone(),
    }
}

/// The subject: given directly, or as a bearer token to verify (then also
/// the token's session, if it has one).
pub async fn subject(
    auth: &Authenticator,
    field_prefix: &str,
    user_id: &str,
    token: &str,
    client: &Client,
) -> Result<(String, Option<uuid::Uuid>), AuthzError> {
    match (user_id.is_empty(), token.is_empty()) {
        (false, false) => Err(AuthzError::invalid(format!(
            "give either {field_prefix}user_id or {field_prefix}subject_token, not both"
        ))),
        (true, false) => {
            let principal = auth.verify_presented(token, client).await?;
            Ok((principal.user_id.to_string(), principal.session_id))
        }
        _ => Ok((user_id.to_owned(), None)),
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Admin RPCs need `x-velro-admin-token` to equal the configured token.
pub fn admin_check(admin_token: Option<&str>, presented: Option<&str>) -> Result<(), AuthzError> {
    let Some(expected) = admin_token else {
        return Err(AuthzError::PermissionDenied(
            "admin RPCs are disabled on this server: set admin_token to enable them".into(),
        ));
    };
    match presented {
        None => Err(AuthzError::unauthenticated(
            "admin RPCs need the x-velro-admin-token metadata",
        )),
        Some(p) if !same_secret(p, expected) => Err(AuthzError::PermissionDenied(
            "the admin token is wrong".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// Revokes the sessions named (the caller checked the admin token).
pub async fn revoke_sessions(
    auth: &Authenticator,
    req: &proto::RevokeSessionsRequest,
) -> Result<proto::RevokeSessionsResponse, AuthzError> {
    let revoked = match &req.target {
        Some(Target::SessionId(id)) => {
            auth.revoke_session(validate::uuid("session_id", id)?)
                .await?
        }
        Some(Target::UserId(id)) => auth.revoke_user(validate::uuid("user_id", id)?).await?,
        None => return Err(AuthzError::invalid("give session_id or user_id")),
    };
    Ok(proto::RevokeSessionsResponse { revoked })
}
