//! What the page asks for, and the local data it names.

use engine::{Builtin, DataSource, Dataset};
use serde::Deserialize;

/// `new Client(options, …)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    /// The relay's base URL, e.g. `location.origin`.
    pub relay: String,
    /// A built-in dataset name (`spirals`, `moons`, `circles`), used when `csv` is absent.
    #[serde(default = "default_data")]
    pub data: String,
    /// The text of the person's own CSV file: it stays in this tab.
    #[serde(default)]
    pub csv: Option<String>,
    #[serde(default)]
    pub csv_name: Option<String>,
    /// Seed of the tab's shard of a built-in dataset and of its batch draws.
    #[serde(default = "default_seed")]
    pub seed: u32,
    #[serde(default)]
    pub token: String,
    /// `auto` (WebGPU when the browser has an adapter) or `cpu`.
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_throttle")]
    pub throttle: f64,
    #[serde(default)]
    pub paused: bool,
    /// Playground grid cells per side.
    #[serde(default = "default_grid")]
    pub grid: u32,
}

fn default_data() -> String {
    "spirals".into()
}
fn default_seed() -> u32 {
    1
}
fn default_backend() -> String {
    "auto".into()
}
fn default_window() -> usize {
    2
}
fn default_throttle() -> f64 {
    1.0
}
fn default_grid() -> u32 {
    40
}

/// The tab's data: a seeded draw of a built-in set, or a CSV's text.
pub fn load_dataset(
    data: &str,
    csv: Option<&str>,
    csv_name: Option<&str>,
    seed: u64,
) -> Result<Dataset, String> {
    if let Some(text) = csv {
        let name = csv_name.unwrap_or("your CSV");
        return engine::data::load_csv(name, text, seed).map_err(|e| format!("{name}: {e}"));
    }
    match data.parse::<DataSource>() {
        Ok(DataSource::Builtin(b)) => Ok(builtin(b, seed)),
        Ok(DataSource::Csv(_)) => Err("a CSV file is read from the page, pick it there".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn builtin(b: Builtin, seed: u64) -> Dataset {
    b.generate(4_000, 1_000, seed)
}
