//! Request data drawn from the reference workload: Zipf-skewed (a hot set
//! dominates, as on a real platform) or uniform (the worst case for any
//! cache), and written as ghz data files (a JSON array ghz cycles through).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::LoadError;
use crate::{
    model::workload::{self, Dataset},
    model::{Action, ResourceKind},
};

/// The data set a data directory was drawn from, written beside the data
/// files so the load generator can compute the expected answers.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadId {
    pub seed: u64,
    pub scale: f64,
}

pub const WORKLOAD_FILE: &str = "workload.json";
/// Users the login data files use.
pub const LOGIN_USERS: usize = 200;

/// How subjects and resources are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    Zipf,
    Uniform,
}

/// One check as the generator draws it.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    pub user: Uuid,
    pub action: Action,
    pub kind: ResourceKind,
    pub id: Uuid,
}

impl Check {
    /// The check in ghz / protojson form (field names as in the proto).
    pub fn to_json(self) -> Value {
        json!({
            "user_id": self.user.to_string(),
            "action": self.action.as_str(),
            "resource": {"type": self.kind.as_str(), "id": self.id.to_string()},
        })
    }
}

/// Draws indexes `0..n` with Zipf exponent 1 or evenly.
struct Picker {
    zipf: Option<Zipf<f64>>,
    n: usize,
}

impl Picker {
    fn new(n: usize, skew: Skew) -> Picker {
        let zipf = match skew {
            Skew::Zipf => Zipf::new(n.max(1) as f64, 1.0).ok(),
            Skew::Uniform => None,
        };
        Picker { zipf, n: n.max(1) }
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> usize {
        match &self.zipf {
            Some(zipf) => (zipf.sample(rng) as usize).clamp(1, self.n) - 1,
            None => rng.random_range(0..self.n),
        }
    }
}

/// Draws checks from a data set: the action mix of the standard run (read
/// 70 %, write 20 %, delete 5 %, share 5 %), and subjects biased towards
/// people related to the resource so about half the answers allow.
pub struct RequestGenerator<'a> {
    data: &'a Dataset,
    rng: ChaCha8Rng,
    users: Picker,
    projects: Picker,
    generations: Picker,
    team_members: HashMap<Uuid, Vec<Uuid>>,
    project_index: HashMap<Uuid, usize>,
}

impl<'a> RequestGenerator<'a> {
    pub fn new(data: &'a Dataset, skew: Skew, seed: u64) -> RequestGenerator<'a> {
        let mut team_members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for m in &data.members {
            team_members.entry(m.team_id).or_default().push(m.user_id);
        }
        RequestGenerator {
            data,
            rng: ChaCha8Rng::seed_from_u64(seed),
            users: Picker::new(data.users.len(), skew),
            projects: Picker::new(data.projects.len(), skew),
            generations: Picker::new(data.generations.len(), skew),
            team_members,
            project_index: data
                .projects
                .iter()
                .enumerate()
                .map(|(i, p)| (p.id, i))
                .collect(),
        }
    }

    pub fn check(&mut self) -> Check {
        let data = self.data;
        let (kind, id, project_index) = match self.rng.random_range(0..10) {
            0..=1 => {
                let p = self.projects.pick(&mut self.rng);
                (ResourceKind::Project, data.projects[p].id, p)
            }
            2..=5 => {
                let g = &data.generations[self.generations.pick(&mut self.rng)];
                (
                    ResourceKind::Generation,
                    g.id,
                    self.project_index(g.project_id),
                )
            }
            _ => {
                let i = self.generations.pick(&mut self.rng);
                let project = data.generations[i].project_id;
                (
                    ResourceKind::Media,
                    data.media[i].id,
                    self.project_index(project),
                )
            }
        };
        let project = &data.projects[project_index];
        let user = match self.rng.random_range(0..20) {
            0..=1 => project.owner_id,
            2..=12 => {
                let members = project
                    .team_id
                    .and_then(|t| self.team_members.get(&t))
                    .filter(|m| !m.is_empty());
                match members {
                    Some(members) => members[self.rng.random_range(0..members.len())],
                    None => project.owner_id,
                }
            }
            _ => data.users[self.users.pick(&mut self.rng)].id,
        };
        let action = match self.rng.random_range(0..20) {
            0..=13 => Action::Read,
            14..=17 => Action::Write,
            18 => Action::Delete,
            _ => Action::Share,
        };
        Check {
            user,
            action,
            kind,
            id,
        }
    }

    fn project_index(&self, id: Uuid) -> usize {
        self.project_index.get(&id).copied().unwrap_or(0)
    }
}

/// How many entries each data file holds.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Entries of the Zipf (hot) Authorize file; ghz cycles through them.
    pub hot: usize,
    /// Entries of the uniform Authorize file: more than a run sends keeps
    /// it cache-hostile.
    pub uniform: usize,
    pub batches: usize,
    pub batch_items: usize,
}

impl Default for Sizes {
    fn default() -> Sizes {
        Sizes {
            hot: 5_000,
            uniform: 5_000,
            batches: 100,
            batch_items: 50,
        }
    }
}

/// The data files of the standard scenarios, by file name.
pub fn scenario_files(data: &Dataset, id: WorkloadId, sizes: Sizes) -> Vec<(&'static str, Value)> {
    let draw = |skew: Skew, salt: u64, n: usize| -> Vec<Check> {
        let mut generator = RequestGenerator::new(data, skew, id.seed ^ salt);
        (0..n).map(|_| generator.check()).collect()
    };
    let authorize = |skew, salt, n| {
        Value::Array(
            draw(skew, salt, n)
                .into_iter()
                .map(Check::to_json)
                .collect(),
        )
    };
    let batches: Vec<Value> = draw(Skew::Zipf, 3, sizes.batches * sizes.batch_items)
        .chunks(sizes.batch_items.max(1))
        .map(|chunk| json!({"items": chunk.iter().map(|c| c.to_json()).collect::<Vec<_>>()}))
        .collect();
    // Password logins of enabled users (`velro-authz seed` gives them all
    // the workload password).
    let logins: Vec<Value> = data
        .users
        .iter()
        .filter(|u| !u.disabled)
        .take(LOGIN_USERS)
        .map(|u| json!({"password": {"email": u.email, "password": workload::WORKLOAD_PASSWORD}}))
        .collect();
    vec![
        ("authenticate_password.json", Value::Array(logins)),
        ("authorize_hot.json", authorize(Skew::Zipf, 1, sizes.hot)),
        (
            "authorize_uniform.json",
            authorize(Skew::Uniform, 2, sizes.uniform),
        ),
        ("batch_authorize_50.json", Value::Array(batches)),
    ]
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |e| LoadError(format!("{}: {e}", path.display()))
}

/// Writes the data files and `workload.json` into `dir`; returns the paths.
pub fn write_files(dir: &Path, id: WorkloadId, sizes: Sizes) -> Result<Vec<PathBuf>, LoadError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let data = workload::generate(id.scale, id.seed);
    let mut written = Vec::new();
    let mut files = scenario_files(&data, id, sizes);
    files.push((WORKLOAD_FILE, json!(id)));
    for (name, value) in files {
        let path = dir.join(name);
        let text = serde_json::to_string(&value).map_err(|e| LoadError(format!("{name}: {e}")))?;
        std::fs::write(&path, text + "\n").map_err(io_error(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Reads the `workload.json` in `dir`.
pub fn read_workload_id(dir: &Path) -> Result<WorkloadId, LoadError> {
    let path = dir.join(WORKLOAD_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        LoadError(format!(
            "{}: {e}; the data directory must say which seed and scale it was drawn from \
             (regenerate it with `velro-loadgen data`)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError(format!("{}: {e}", path.display())))
}
