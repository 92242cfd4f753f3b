//! Access tokens for the bearer-token scenarios: tokens are issued by a
//! running server, so they are fetched by logging in (password logins of
//! the workload's users) and written as a ghz data file.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tonic::transport::Endpoint;

use super::LoadError;
use crate::{
    proto::{
        self, authenticate_request::Credentials,
        authorization_service_client::AuthorizationServiceClient,
    },
    workload::{self, Dataset},
};

pub const TOKEN_FILE: &str = "authenticate_token.json";

/// Logs in as up to `users` enabled users of `data` and writes their access
/// tokens to `dir/authenticate_token.json` (they expire with the server's
/// access token lifetime, 15 minutes by default).
pub async fn write_token_file(
    host: &str,
    data: &Dataset,
    users: usize,
    dir: &Path,
) -> Result<PathBuf, LoadError> {
    let channel = Endpoint::from_shared(format!("http://{host}"))
        .map_err(|e| LoadError(format!("host {host:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| LoadError(format!("cannot connect to {host}: {e}")))?;
    let mut client = AuthorizationServiceClient::new(channel);
    let mut tokens = Vec::new();
    for user in data.users.iter().filter(|u| !u.disabled).take(users) {
        let request = proto::AuthenticateRequest {
            credentials: Some(Credentials::Password(proto::PasswordCredentials {
                email: user.email.clone(),
                password: workload::WORKLOAD_PASSWORD.into(),
            })),
            context: None,
        };
        let answer = client.authenticate(request).await.map_err(|e| {
            LoadError(format!(
                "login as {} failed: {} (was the data set seeded with `velro-authz seed`?)",
                user.email,
                e.message()
            ))
        })?;
        let access = answer
            .into_inner()
            .tokens
            .map(|t| t.access_token)
            .unwrap_or_default();
        tokens.push(json!({ "access_token": access }));
    }
    std::fs::create_dir_all(dir).map_err(|e| LoadError(format!("{}: {e}", dir.display())))?;
    let path = dir.join(TOKEN_FILE);
    std::fs::write(&path, Value::Array(tokens).to_string())
        .map_err(|e| LoadError(format!("{}: {e}", path.display())))?;
    Ok(path)
}
