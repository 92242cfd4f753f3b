//! The reference workload of `ghz_bench/WORKLOAD.md`, generated deterministically
//! from a seed: the same seed and scale always give the same ids and rows.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::model::{TeamRole, Visibility};

/// Counts at scale 1.
pub const BASE_USERS: f64 = 10_000.0;
pub const BASE_TEAMS: f64 = 1_000.0;
pub const BASE_PROJECTS: f64 = 5_000.0;
pub const BASE_GENERATIONS: f64 = 100_000.0;
/// Longest parent chain the generator builds.
pub const MAX_CHAIN_DEPTH: u8 = 8;

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub disabled: bool,
}

#[derive(Clone, Debug)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub role: TeamRole,
}

#[derive(Clone, Debug)]
pub struct Project {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub team_id: Option<Uuid>,
    pub visibility: Visibility,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub id: Uuid,
    pub project_id: Uuid,
    pub created_by: Uuid,
    pub parent_id: Option<Uuid>,
}

#[derive(Clone, Debug)]
pub struct Media {
    pub id: Uuid,
    pub generation_id: Uuid,
    pub object_key: String,
    pub kind: &'static str,
}

/// The password of every user `velro-authz seed` writes (benchmarks log in).
pub const WORKLOAD_PASSWORD: &str = "velro-workload-password";

/// A generated data set, rows in an order that satisfies every foreign key.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// One argon2id hash given to every user, when set.
    pub password_hash: Option<String>,
    pub users: Vec<User>,
    pub teams: Vec<Team>,
    pub members: Vec<Member>,
    pub projects: Vec<Project>,
    pub generations: Vec<Generation>,
    pub media: Vec<Media>,
}

fn count(base: f64, scale: f64) -> usize {
    ((base * scale).round() as usize).max(1)
}

fn uuid(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Generates the workload at `scale` (1.0 = reference size) from `seed`.
pub fn generate(scale: f64, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let users: Vec<User> = (0..count(BASE_USERS, scale))
        .map(|i| User {
            id: uuid(&mut rng),
            email: format!("user{i}@velro.test"),
            disabled: rng.random_bool(0.01),
        })
        .collect();
    let teams: Vec<Team> = (0..count(BASE_TEAMS, scale))
        .map(|i| Team {
            id: uuid(&mut rng),
            name: format!("team-{i}"),
        })
        .collect();

    // Each user joins 1-3 distinct teams: viewer 60 %, editor 30 %, admin 10 %.
    let mut members = Vec::new();
    let mut team_members: Vec<Vec<Uuid>> = vec![Vec::new(); teams.len()];
    for user in &users {
        let wanted = rng.random_range(1..=3usize).min(teams.len());
        let mut joined: Vec<usize> = Vec::with_capacity(wanted);
        while joined.len() < wanted {
            let t = rng.random_range(0..teams.len());
            if !joined.contains(&t) {
                joined.push(t);
            }
        }
        for t in joined {
            let role = match rng.random_range(0..10) {
                0..=5 => TeamRole::Viewer,
                6..=8 => TeamRole::Editor,
                _ => TeamRole::Admin,
            };
            members.push(Member {
                team_id: teams[t].id,
                user_id: user.id,
                role,
            });
            team_members[t].push(user.id);
        }
    }

    // Projects: owned by a member of their team where it has one.
    let mut projects = Vec::new();
    let mut project_team: Vec<usize> = Vec::new();
    for i in 0..count(BASE_PROJECTS, scale) {
        let t = rng.random_range(0..teams.len());
        let owner_id = match team_members[t].is_empty() {
            true => pick(&mut rng, &users).id,
            false => *pick(&mut rng, &team_members[t]),
        };
        let visibility = match rng.random_range(0..10) {
            0..=4 => Visibility::Private,
            5..=8 => Visibility::Team,
            _ => Visibility::Public,
        };
        projects.push(Project {
            id: uuid(&mut rng),
            owner_id,
            team_id: Some(teams[t].id),
            visibility,
            name: format!("project-{i}"),
        });
        project_team.push(t);
    }

    // Generations: 30 % remix an earlier generation of the same project.
    let mut generations = Vec::new();
    let mut media = Vec::new();
    let mut in_project: Vec<Vec<(Uuid, u8)>> = vec![Vec::new(); projects.len()];
    for _ in 0..count(BASE_GENERATIONS, scale) {
        let p = rng.random_range(0..projects.len());
        let project = &projects[p];
        let created_by = match rng.random_bool(0.5) || team_members[project_team[p]].is_empty() {
            true => project.owner_id,
            false => *pick(&mut rng, &team_members[project_team[p]]),
        };
        let candidates: Vec<(Uuid, u8)> = in_project[p]
            .iter()
            .copied()
            .filter(|(_, depth)| *depth < MAX_CHAIN_DEPTH)
            .collect();
        let (parent_id, depth) = if !candidates.is_empty() && rng.random_bool(0.3) {
            let (parent, depth) = *pick(&mut rng, &candidates);
            (Some(parent), depth + 1)
        } else {
            (None, 1)
        };
        let id = uuid(&mut rng);
        in_project[p].push((id, depth));
        generations.push(Generation {
            id,
            project_id: project.id,
            created_by,
            parent_id,
        });
        let (kind, ext) = if rng.random_bool(0.8) {
            ("image", "png")
        } else {
            ("video", "mp4")
        };
        media.push(Media {
            id: uuid(&mut rng),
            generation_id: id,
            object_key: format!("media/{}/{id}.{ext}", project.id),
            kind,
        });
    }

    Dataset {
        password_hash: None,
        users,
        teams,
        members,
        projects,
        generations,
        media,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(0.01, 7);
        let b = generate(0.01, 7);
        let c = generate(0.01, 8);
        assert_eq!(a.users[0].id, b.users[0].id);
        assert_eq!(
            a.generations.last().map(|g| g.id),
            b.generations.last().map(|g| g.id)
        );
        assert_ne!(a.users[0].id, c.users[0].id);
    }

    #[test]
    fn counts_scale_and_chains_stay_in_their_project() {
        let data = generate(0.01, 1);
        assert_eq!(data.users.len(), 100);
        assert_eq!(data.teams.len(), 10);
        assert_eq!(data.projects.len(), 50);
        assert_eq!(data.generations.len(), 1_000);
        assert_eq!(data.media.len(), 1_000);
        let project_of: std::collections::HashMap<Uuid, Uuid> = data
            .generations
            .iter()
            .map(|g| (g.id, g.project_id))
            .collect();
        let with_parent = data
            .generations
            .iter()
            .filter(|g| g.parent_id.is_some())
            .count();
        assert!(
            (200..=400).contains(&with_parent),
            "{with_parent} of 1000 have a parent"
        );
        for g in &data.generations {
            if let Some(parent) = g.parent_id {
                assert_eq!(project_of.get(&parent), Some(&g.project_id));
            }
        }
    }
}
