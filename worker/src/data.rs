//! What the command line says about a peer's data and its backend.

use anyhow::{Context, Result};
use engine::{DataSource, Dataset};

/// `spirals`, `builtin:spirals` (4 000 train / 1 000 test rows drawn with `seed`) or a CSV file.
pub fn load_data(spec: &str, seed: u64) -> Result<Dataset> {
    Ok(match spec.parse::<DataSource>()? {
        DataSource::Builtin(b) => b.generate(4_000, 1_000, seed),
        DataSource::Csv(path) => engine::data::load_csv_file(&path, seed)
            .with_context(|| format!("loading data from {path}"))?,
    })
}

/// `--backend`: where θ and the forward passes live.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// burn's CPU backend, the reference.
    Cpu,
    /// θ on the GPU through onebyte's WGSL kernels; burn's wgpu runtime for forward passes.
    Wgpu,
}
