//! Demo data for a newcomer: a small generated data set in an empty embedded
//! database, and ready-to-paste grpcurl commands checked against the engine.

use crate::{
    auth::Authenticator,
    engine::Engine,
    error::AuthzError,
    model::workload::{self, Dataset},
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef, Visibility},
    store::Store,
};

pub const DEMO_SCALE: f64 = 0.01;
pub const DEMO_SEED: u64 = 42;

/// A query and the decision it should get.
pub struct Example {
    pub query: Query,
    pub allow: bool,
}

/// One allowed and one denied query in `data`: an owner reading their
/// project, and a stranger deleting a private project.
pub fn examples(data: &Dataset) -> Vec<Example> {
    let mut examples = Vec::new();
    if let Some(project) = data.projects.first() {
        examples.push(Example {
            query: Query {
                subject: project.owner_id,
                action: Action::Read,
                resource: ResourceRef {
                    kind: ResourceKind::Project,
                    id: project.id,
                },
            },
            allow: true,
        });
    }
    let private = data
        .projects
        .iter()
        .find(|p| p.visibility == Visibility::Private);
    if let Some(project) = private {
        let member = |user: uuid::Uuid| {
            project.owner_id == user
                || data
                    .members
                    .iter()
                    .any(|m| Some(m.team_id) == project.team_id && m.user_id == user)
        };
        if let Some(stranger) = data.users.iter().find(|u| !member(u.id)) {
            examples.push(Example {
                query: Query {
                    subject: stranger.id,
                    action: Action::Delete,
                    resource: ResourceRef {
                        kind: ResourceKind::Project,
                        id: project.id,
                    },
                },
                allow: false,
            });
        }
    }
    examples
}

/// A grpcurl command that sends `query` to a server on `port`.
pub fn grpcurl(query: &Query, port: u16) -> String {
    format!(
        "grpcurl -plaintext -d '{{\"user_id\":\"{}\",\"action\":\"{}\",\"resource\":{{\"type\":\"{}\",\"id\":\"{}\"}}}}' localhost:{port} velro.authz.v1.AuthorizationService/Authorize",
        query.subject,
        query.action,
        query.resource.kind.as_str(),
        query.resource.id
    )
}

/// The demo user's password (the README shows it; demo data only).
pub const DEMO_PASSWORD: &str = "velro-demo-password";

/// Seeds the demo set into an empty store, gives the owner of the first
/// example project the demo password, then logs the example commands that
/// really get the decision they promise.
pub async fn ensure(
    store: &dyn Store,
    engine: &Engine,
    auth: &Authenticator,
    port: u16,
) -> Result<(), AuthzError> {
    let data = workload::generate(DEMO_SCALE, DEMO_SEED);
    if store.is_empty().await? {
        store.insert_dataset(&data).await?;
        if let Some(owner) = data.projects.first().map(|p| p.owner_id) {
            let hash = auth.hashing().hash(DEMO_PASSWORD.to_owned()).await?;
            store.set_password_hash(owner, &hash).await?;
        }
        tracing::info!(
            users = data.users.len(),
            projects = data.projects.len(),
            generations = data.generations.len(),
            "seeded demo data into the empty embedded database"
        );
    }
    let demo_user = data
        .projects
        .first()
        .and_then(|p| data.users.iter().find(|u| u.id == p.owner_id));
    if let Some(user) = demo_user {
        tracing::info!(
            "log in (demo user): grpcurl -plaintext -d '{{\"password\":{{\"email\":\"{}\",\"password\":\"{DEMO_PASSWORD}\"}}}}' localhost:{port} velro.authz.v1.AuthorizationService/Authenticate",
            user.email
        );
    }
    for example in examples(&data) {
        let decision = engine
            .decide(
                example.query,
                Consistency::FullyConsistent,
                &RequestFacts::default(),
            )
            .await?;
        if decision.verdict.allow == example.allow {
            let expect = if example.allow { "ALLOW" } else { "DENY" };
            tracing::info!("try this ({expect}): {}", grpcurl(&example.query, port));
        }
    }
    Ok(())
}
