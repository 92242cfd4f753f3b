//! Staleness across replicas while they are loaded: a plain SQL write
//! every `WRITE_EVERY`, then the time until every replica answers the new
//! decision, checked against the replicas' `cache_max_lag`.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use sqlx::Connection;
use tonic::transport::Channel;
use uuid::Uuid;

use super::{LoadError, replica_report::Staleness, servers};
use crate::proto::{
    AuthorizeRequest, Decision, Resource, authorization_service_client::AuthorizationServiceClient,
};

/// The replicas' `cache_max_lag`: the staleness bound they promise.
const CACHE_MAX_LAG: Duration = servers::REPLICA_CACHE_MAX_LAG;
/// One plain SQL write this often while the load runs.
const WRITE_EVERY: Duration = Duration::from_millis(500);
/// How often each replica is asked whether it sees the write.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// A project of its own whose visibility the prober flips with plain SQL
/// (public: anyone may read it; private: only its owner), and a reader
/// with no other tie to it. Neither appears in any request file, so the
/// scenarios' expected answers are untouched.
pub struct Prober {
    conn: sqlx::PgConnection,
    project: Uuid,
    reader: Uuid,
    public: bool,
}

impl Prober {
    pub async fn create(url: &str) -> Result<Prober, LoadError> {
        let fail = |e: sqlx::Error| LoadError(format!("staleness probe: {e}"));
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(fail)?;
        let (owner, reader, project) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for user in [owner, reader] {
            sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)")
                .bind(user)
                .bind(format!("probe-{user}@staleness.invalid"))
                .execute(&mut conn)
                .await
                .map_err(fail)?;
        }
        sqlx::query(
            "INSERT INTO projects (id, owner_id, visibility, name) \
             VALUES ($1, $2, 'private', 'staleness probe')",
        )
        .bind(project)
        .bind(owner)
        .execute(&mut conn)
        .await
        .map_err(fail)?;
        Ok(Prober {
            conn,
            project,
            reader,
            public: false,
        })
    }

    fn request(&self) -> AuthorizeRequest {
        AuthorizeRequest {
            user_id: self.reader.to_string(),
            action: "read".into(),
            resource: Some(Resource {
                r#type: "project".into(),
                id: self.project.to_string(),
            }),
            ..Default::default()
        }
    }

    /// Flips the visibility; returns the decision every replica must reach.
    async fn flip(&mut self) -> Result<Decision, LoadError> {
        self.public = !self.public;
        let visibility = if self.public { "public" } else { "private" };
        sqlx::query("UPDATE projects SET visibility = $1 WHERE id = $2")
            .bind(visibility)
            .bind(self.project)
            .execute(&mut self.conn)
            .await
            .map_err(|e| LoadError(format!("staleness probe write: {e}")))?;
        Ok(if self.public {
            Decision::Allow
        } else {
            Decision::Deny
        })
    }

    /// Writes every `WRITE_EVERY` until `stop`; per write, the time until
    /// the last replica answered the new decision (`None`: not within the
    /// bound).
    pub async fn probe(
        &mut self,
        replicas: &[AuthorizationServiceClient<Channel>],
        stop: &AtomicBool,
    ) -> Result<Vec<Option<Duration>>, LoadError> {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let expected = self.flip().await?;
            let written = Instant::now();
            let request = self.request();
            let waits = replicas.iter().map(|client| {
                let (mut client, request) = (client.clone(), request.clone());
                async move {
                    while written.elapsed() < CACHE_MAX_LAG * 2 {
                        let answer = client.authorize(request.clone()).await;
                        if answer.is_ok_and(|r| r.into_inner().decision() == expected) {
                            return Some(written.elapsed());
                        }
                        tokio::time::sleep(POLL_EVERY).await;
                    }
                    None
                }
            });
            let all = futures::future::join_all(waits).await;
            let last = all
                .iter()
                .try_fold(Duration::ZERO, |latest, w| w.map(|w| w.max(latest)));
            seen.push(last.filter(|l| *l <= CACHE_MAX_LAG));
            tokio::time::sleep(WRITE_EVERY.saturating_sub(written.elapsed())).await;
        }
        Ok(seen)
    }

    pub async fn remove(mut self) {
        let _ = sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(self.project)
            .execute(&mut self.conn)
            .await;
    }
}

pub fn staleness(replicas: usize, scenario: &str, seen: &[Option<Duration>]) -> Staleness {
    let mut ms: Vec<f64> = seen
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Staleness {
        replicas,
        scenario: scenario.to_owned(),
        writes: seen.len(),
        median_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
        beyond_bound: seen.iter().filter(|s| s.is_none()).count(),
        bound_ms: CACHE_MAX_LAG.as_secs_f64() * 1e3,
    }
}
