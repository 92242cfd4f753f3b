//! The server agrees with a small, obviously correct evaluator, written
//! without SQL over plain maps (`loadgen::expect`), on random data sets and
//! requests.

use std::collections::BTreeSet;

use futures::StreamExt;
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;
use velro_authz::{
    loadgen::expect::Expected,
    model::workload::{self, Dataset},
    model::{Action, ResourceKind, TeamRole, Visibility},
    proto::{self, Decision},
};

use crate::{
    common::{Db, TestDb, TestServer, fixture, settings},
    on_both_databases,
};

const ACTIONS: [&str; 4] = ["read", "write", "delete", "share"];

/// The permission set the library's plain-map evaluator (shared with the
/// load generator, nothing shared with the engine or its SQL) expects.
fn model_permissions(
    expected: &Expected,
    user: Uuid,
    kind: &str,
    id: Uuid,
) -> BTreeSet<&'static str> {
    let kind = ResourceKind::parse(kind).unwrap();
    expected
        .permissions(user, kind, id)
        .iter()
        .map(Action::as_str)
        .collect()
}

/// `VELRO_TEST_SEED`, or a fresh one; printed so a failure can be rerun.
fn test_seed() -> u64 {
    let seed = std::env::var("VELRO_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::from(
                std::time::UNIX_EPOCH
                    .elapsed()
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(7),
            )
        });
    eprintln!("reference model seed {seed} (rerun with VELRO_TEST_SEED={seed})");
    seed
}

struct Check {
    user: Uuid,
    action: &'static str,
    kind: &'static str,
    id: Uuid,
}

/// Requests biased towards related pairs, so allows and denies both occur.
fn random_checks(data: &Dataset, rng: &mut ChaCha8Rng, n: usize) -> Vec<Check> {
    (0..n)
        .map(|_| {
            let kind = *["project", "generation", "media"]
                .choose(rng)
                .unwrap_or(&"project");
            let (id, project_id, generation) = match kind {
                "project" => {
                    let p = &data.projects[rng.random_range(0..data.projects.len())];
                    (p.id, p.id, None)
                }
                "generation" => {
                    let g = &data.generations[rng.random_range(0..data.generations.len())];
                    (g.id, g.project_id, Some(g))
                }
                _ => {
                    let i = rng.random_range(0..data.media.len());
                    let g = data
                        .generations
                        .iter()
                        .find(|g| g.id == data.media[i].generation_id);
                    (data.media[i].id, g.map_or(Uuid::nil(), |g| g.project_id), g)
                }
            };
            // The creator of the parent generation: inherits (layer 5).
            let ancestor_creator = generation
                .and_then(|g| g.parent_id)
                .and_then(|p| data.generations.iter().find(|g| g.id == p))
                .map(|g| g.created_by);
            let id = if rng.random_bool(0.05) {
                Uuid::new_v4()
            } else {
                id
            };
            let project = data.projects.iter().find(|p| p.id == project_id);
            let user = match rng.random_range(0..11) {
                0 => Uuid::new_v4(),
                10 => ancestor_creator.unwrap_or(data.users[0].id),
                1..=5 => {
                    let team = project.and_then(|p| p.team_id);
                    let members: Vec<Uuid> = data
                        .members
                        .iter()
                        .filter(|m| Some(m.team_id) == team)
                        .map(|m| m.user_id)
                        .collect();
                    members.choose(rng).copied().unwrap_or(data.users[0].id)
                }
                6 => project.map(|p| p.owner_id).unwrap_or(data.users[0].id),
                _ => data.users[rng.random_range(0..data.users.len())].id,
            };
            Check {
                user,
                action: ACTIONS.choose(rng).unwrap_or(&"read"),
                kind,
                id,
            }
        })
        .collect()
}

/// Checks one answer against the model; true when it allowed.
fn assert_agrees(data: &Expected, c: &Check, r: &proto::AuthorizeResponse) -> bool {
    let expected = model_permissions(data, c.user, c.kind, c.id);
    let got: BTreeSet<&str> = r.permissions.iter().map(String::as_str).collect();
    let what = format!("{} {} {}:{} -> {r:?}", c.user, c.action, c.kind, c.id);
    assert_eq!(
        got,
        expected.iter().copied().collect(),
        "permission set: {what}"
    );
    let allow = expected.contains(c.action);
    assert_eq!(r.decision() == Decision::Allow, allow, "decision: {what}");
    allow
}

async fn agree_on_random_worlds(db: Db) {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut checked, mut allowed, mut inherited) = (0usize, 0usize, 0usize);
    for round in 0..2 {
        let db = TestDb::create(db).await;
        let data = workload::generate(0.004 + 0.004 * round as f64, rng.random());
        db.store()
            .await
            .insert_dataset(&data)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let server = TestServer::start(settings(&db.url)).await;
        let expected = Expected::new(&data);

        // Through Authorize, concurrently, twice (computed, then cached).
        let checks = random_checks(&data, &mut rng, 700);
        for _pass in 0..2 {
            let answers: Vec<_> = futures::stream::iter(&checks)
                .map(|c| {
                    let mut client = server.client.clone();
                    async move {
                        client
                            .authorize(fixture::authorize(c.user, c.action, c.kind, c.id))
                            .await
                    }
                })
                .buffered(16)
                .collect()
                .await;
            for (c, answer) in checks.iter().zip(answers) {
                let r = answer
                    .unwrap_or_else(|e| panic!("authorize: {e}"))
                    .into_inner();
                allowed += usize::from(assert_agrees(&expected, c, &r));
                inherited += usize::from(r.decided_by == "generation_inheritance");
                checked += 1;
            }
        }

        // Through BatchAuthorize, fully consistent and cached.
        let checks = random_checks(&data, &mut rng, 1_000);
        for consistency in [
            proto::Consistency::FullyConsistent,
            proto::Consistency::MinimizeLatency,
        ] {
            for chunk in checks.chunks(250) {
                let request = proto::BatchAuthorizeRequest {
                    items: chunk
                        .iter()
                        .map(|c| fixture::item(c.user, c.action, c.kind, c.id))
                        .collect(),
                    consistency: consistency as i32,
                    ..Default::default()
                };
                let results = server
                    .client
                    .clone()
                    .batch_authorize(request)
                    .await
                    .unwrap_or_else(|e| panic!("batch: {e}"))
                    .into_inner()
                    .results;
                assert_eq!(results.len(), chunk.len());
                for (c, result) in chunk.iter().zip(results) {
                    let Some(proto::batch_result::Outcome::Response(r)) = result.outcome else {
                        panic!("valid item got {result:?}");
                    };
                    allowed += usize::from(assert_agrees(&expected, c, &r));
                    inherited += usize::from(r.decided_by == "generation_inheritance");
                    checked += 1;
                }
            }
        }
        server.stop().await;
    }
    assert!(checked >= 6_000, "{checked} decisions checked");
    assert!(
        inherited >= 20,
        "only {inherited} answers came from inheritance"
    );
    let share = allowed as f64 / checked as f64;
    assert!(
        (0.15..0.85).contains(&share),
        "allow share {share:.2}: the requests must exercise both answers"
    );
}
on_both_databases!(
    server_agrees_with_the_reference_model,
    agree_on_random_worlds
);

/// One random write, made with plain SQL and mirrored in the model data.
fn random_write(data: &mut Dataset, rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..5) {
        0 if !data.members.is_empty() => {
            let m = data.members.remove(rng.random_range(0..data.members.len()));
            format!(
                "DELETE FROM team_members WHERE team_id = '{}' AND user_id = '{}'",
                m.team_id, m.user_id
            )
        }
        1 if !data.members.is_empty() => {
            let i = rng.random_range(0..data.members.len());
            data.members[i].role = TeamRole::Admin;
            let m = &data.members[i];
            format!(
                "UPDATE team_members SET role = 'admin' WHERE team_id = '{}' AND user_id = '{}'",
                m.team_id, m.user_id
            )
        }
        2 => {
            let i = rng.random_range(0..data.projects.len());
            let visibility = *[Visibility::Private, Visibility::Team, Visibility::Public]
                .choose(rng)
                .unwrap_or(&Visibility::Private);
            data.projects[i].visibility = visibility;
            format!(
                "UPDATE projects SET visibility = '{}' WHERE id = '{}'",
                visibility.as_str(),
                data.projects[i].id
            )
        }
        3 if data.generations.iter().any(|g| g.parent_id.is_some()) => {
            let linked: Vec<usize> = (0..data.generations.len())
                .filter(|i| data.generations[*i].parent_id.is_some())
                .collect();
            let i = *linked.choose(rng).unwrap_or(&0);
            data.generations[i].parent_id = None;
            format!(
                "UPDATE generations SET parent_id = NULL WHERE id = '{}'",
                data.generations[i].id
            )
        }
        _ => {
            let i = rng.random_range(0..data.users.len());
            data.users[i].disabled = true;
            format!(
                "UPDATE users SET disabled = TRUE WHERE id = '{}'",
                data.users[i].id
            )
        }
    }
}

/// Two replicas with every tier on (in-process, Redis, database) while
/// random writes land: right after each write AT_LEAST_AS_FRESH answers
/// agree with the model, and once the staleness bound passed so do plain
/// (cached) answers on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agrees_under_writes_with_every_tier_on() {
    let prefix = crate::common::redis::Prefix::new().await;
    agree_under_writes(|s| {
        s.redis_url = Some(crate::common::redis::redis_url());
        s.redis_prefix = prefix.0.clone();
    })
    .await;
    prefix.remove().await;
}

/// The check above with the shared tier `shared` sets up (one Redis, or a
/// cluster).
pub async fn agree_under_writes(shared: impl Fn(&mut velro_authz::app::config::Settings)) {
    let seed = test_seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let db = TestDb::create(Db::Postgres).await;
    let mut data = workload::generate(0.004, rng.random());
    db.store().await.insert_dataset(&data).await.unwrap();
    let replica = || {
        let mut s = settings(&db.url);
        shared(&mut s);
        s.db_cache = true;
        s
    };
    let (a, b) = (
        TestServer::start(replica()).await,
        TestServer::start(replica()).await,
    );
    let bound = std::time::Duration::from_millis(600);
    let mut checked = 0;
    for _round in 0..12 {
        // Warm both replicas (and the shared tiers) with the current answers.
        let checks = random_checks(&data, &mut rng, 60);
        for server in [&a, &b] {
            for c in &checks {
                server
                    .client
                    .clone()
                    .authorize(fixture::authorize(c.user, c.action, c.kind, c.id))
                    .await
                    .unwrap();
            }
        }
        let sql = random_write(&mut data, &mut rng);
        db.execute(&sql).await;
        let expected = Expected::new(&data);
        let revision = b.revision().await;
        for c in &checks {
            let mut request = fixture::authorize(c.user, c.action, c.kind, c.id);
            request.consistency = proto::Consistency::AtLeastAsFresh as i32;
            request.at_least_revision = revision;
            let r = b.decide(request).await;
            assert_agrees(&expected, c, &r);
            checked += 1;
        }
        tokio::time::sleep(bound).await;
        for server in [&a, &b] {
            for c in &checks {
                let r = server
                    .decide(fixture::authorize(c.user, c.action, c.kind, c.id))
                    .await;
                assert_agrees(&expected, c, &r);
                checked += 1;
            }
        }
    }
    assert!(checked >= 12 * 180);
    a.stop().await;
    b.stop().await;
}
