//! Access tokens for the bearer-token scenarios: tokens are issued by a
//! running server, so they are fetched by logging in (password logins of
//! the workload's users) and written as a ghz data file.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tonic::transport::Endpoint;

use uuid::Uuid;

use super::{
    LoadError,
    data::{RequestGenerator, Skew},
    expect::Expected,
};
use crate::{
    model::workload::{self, Dataset},
    model::{Action, ResourceKind},
    proto::{
        self, authenticate_request::Credentials,
        authorization_service_client::AuthorizationServiceClient,
    },
};

pub const TOKEN_FILE: &str = "authenticate_token.json";
pub const EXT_AUTHZ_FILE: &str = "ext_authz_check.json";
/// Envoy checks drawn for the ext_authz scenario.
const EXT_AUTHZ_CHECKS: usize = 5_000;

/// Logs in as up to `users` enabled users of `data` and writes their access
/// tokens to `dir/authenticate_token.json` (they expire with the server's
/// access token lifetime, 15 minutes by default), and Envoy checks made with
/// them to `dir/ext_authz_check.json` (expected answers beside it).
pub async fn write_token_files(
    host: &str,
    data: &Dataset,
    users: usize,
    dir: &Path,
) -> Result<Vec<PathBuf>, LoadError> {
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
        tokens.push((user.id, access));
    }
    std::fs::create_dir_all(dir).map_err(|e| LoadError(format!("{}: {e}", dir.display())))?;
    let token_json: Vec<Value> = tokens
        .iter()
        .map(|(_, t)| json!({ "access_token": t }))
        .collect();
    let (checks, expected) = envoy_checks(data, &tokens);
    let files = [
        (TOKEN_FILE.to_owned(), Value::Array(token_json)),
        (EXT_AUTHZ_FILE.to_owned(), Value::Array(checks)),
        (
            EXT_AUTHZ_FILE.replace(".json", ".expect.json"),
            json!(expected),
        ),
    ];
    let mut written = Vec::new();
    for (name, value) in files {
        let path = dir.join(name);
        std::fs::write(&path, value.to_string())
            .map_err(|e| LoadError(format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Envoy CheckRequests (protojson) for the token users on Zipf-drawn
/// resources, with the answer each should get.
fn envoy_checks(data: &Dataset, tokens: &[(Uuid, String)]) -> (Vec<Value>, Vec<bool>) {
    let expected = Expected::new(data);
    let mut generator = RequestGenerator::new(data, Skew::Zipf, 0xe17);
    let (mut checks, mut answers) = (Vec::new(), Vec::new());
    for i in 0..EXT_AUTHZ_CHECKS {
        let Some((user, token)) = tokens.get(i % tokens.len().max(1)) else {
            break;
        };
        let c = generator.check();
        let collection = match c.kind {
            ResourceKind::Project => "projects",
            ResourceKind::Generation => "generations",
            ResourceKind::Media => "media",
        };
        let (method, suffix) = match c.action {
            Action::Read => ("GET", ""),
            Action::Write => ("PUT", ""),
            Action::Delete => ("DELETE", ""),
            Action::Share => ("POST", "/share"),
        };
        checks.push(json!({"attributes": {
            "source": {"address": {"socketAddress": {"address": "198.51.100.7"}}},
            "request": {"http": {
                "method": method,
                "path": format!("/v1/{collection}/{}{suffix}", c.id),
                "host": "api.velro.test",
                "headers": {"authorization": format!("Bearer {token}"), "user-agent": "velro-loadgen"},
            }},
        }}));
        answers.push(expected.allows(*user, c.action, c.kind, c.id));
    }
    (checks, answers)
}
