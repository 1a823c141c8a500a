//! What the page asks for, and the local data it names.

use engine::{DataSource, Dataset, Job};
use serde::Deserialize;

/// `new Client(options, …)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    /// The relay's base URL, e.g. `location.origin`.
    pub relay: String,
    /// A built-in dataset (`spirals`, `moons`, `circles`, `tales`, `recipes`), used when `file`
    /// is absent; empty means the job's own `task.dataset`.
    #[serde(default)]
    pub data: String,
    /// The text of the person's own file (CSV, or `.txt` for a language model): it stays in
    /// this tab.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    /// Seed of the tab's shard of a built-in dataset and of its batch draws.
    #[serde(default = "default_seed")]
    pub seed: u32,
    #[serde(default)]
    pub token: String,
    /// `auto` (WebGPU or the CPU, whichever measures faster), `webgpu` or `cpu`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Contributions per step (0: measured).
    #[serde(default)]
    pub lanes: usize,
    /// Contributions in flight at most (0: adapts to four round trips of the tab's steps, 32 to
    /// 512, at most half the job's staleness bound).
    #[serde(default)]
    pub window: usize,
    #[serde(default = "default_throttle")]
    pub throttle: f64,
    #[serde(default)]
    pub paused: bool,
    /// Playground grid cells per side.
    #[serde(default = "default_grid")]
    pub grid: u32,
}

fn default_seed() -> u32 {
    1
}
fn default_backend() -> String {
    "auto".into()
}
fn default_throttle() -> f64 {
    1.0
}
fn default_grid() -> u32 {
    40
}

/// The tab's data for `job`: a file's text the page read (a `.csv` for a classifier, a `.txt`
/// for a char LM), or a seeded draw of a built-in set.
pub fn load_dataset(
    job: &Job,
    data: &str,
    file: Option<&str>,
    file_name: Option<&str>,
    seed: u64,
) -> Result<Dataset, String> {
    let source = match (file, file_name) {
        (Some(_), name) => {
            let name = name.unwrap_or("your file").to_string();
            if name.to_ascii_lowercase().ends_with(".txt") || job.model.is_language_model() {
                DataSource::Text(name)
            } else {
                DataSource::Csv(name)
            }
        }
        (None, _) => match data.parse::<DataSource>() {
            Ok(s @ (DataSource::Builtin(_) | DataSource::Corpus(_))) => s,
            Ok(_) => return Err("a file is read from the page: pick it there".into()),
            Err(e) => return Err(e.to_string()),
        },
    };
    engine::data::for_job(job, &source, file, seed).map_err(|e| match file_name {
        Some(name) => format!("{name}: {e}"),
        None => e.to_string(),
    })
}
