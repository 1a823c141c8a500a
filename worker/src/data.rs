//! What the command line says about a peer's data and its backend.

use anyhow::{Context, Result};
use engine::{DataSource, Dataset, Job};

/// The data named by `spec` for `job`: a built-in (`spirals`, `builtin:tales`, …; drawn with
/// `seed`), a CSV file for a classifier or a `.txt` file for a char LM.
pub fn load_data(spec: &str, job: &Job, seed: u64) -> Result<Dataset> {
    let source = spec.parse::<DataSource>()?;
    let contents = match &source {
        DataSource::Csv(path) | DataSource::Text(path) => Some(read_data_file(path)?),
        DataSource::Builtin(_) | DataSource::Corpus(_) => None,
    };
    engine::data::for_job(job, &source, contents.as_deref(), seed)
        .with_context(|| format!("data `{spec}`"))
}

/// A CSV or text file of data, or an error naming it.
pub fn read_data_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|source| engine::data::DataError::Read {
            path: path.to_string(),
            source,
        })
        .with_context(|| format!("loading data from {path}"))
}

/// `--backend`: where θ and the forward passes live.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// Time a few steps on each backend this machine has (wgpu at several lane counts, the
    /// CPU) and use the faster.
    Auto,
    /// burn's CPU backend, the reference.
    Cpu,
    /// θ on the GPU through onebyte's WGSL kernels; burn's wgpu runtime for forward passes.
    Wgpu,
}
