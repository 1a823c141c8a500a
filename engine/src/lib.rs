//! The onebyte training engine: shared-randomness zeroth-order SPSA over burn.
//!
//! A [`Replica`] holds θ at a log version. It proposes contributions (two perturbed forward
//! passes on local data, one byte out) and applies log entries (`θ ← θ − η·D(q)·z`). Everything
//! that touches θ is deterministic and bit-exact across platforms; forward passes run on whatever
//! burn device the replica is given.

pub mod bpe;
pub mod calibrate;
pub mod data;
pub mod dataset;
pub mod direction;
pub mod driver;
pub mod export;
#[cfg(feature = "pretrain")]
mod fused;
pub mod gpt2;
#[cfg(feature = "wgpu")]
pub mod gpu;
pub mod hash;
#[cfg(not(target_family = "wasm"))]
pub mod host_memory;
pub mod job;
pub mod layout;
pub mod model;
#[cfg(feature = "pretrain")]
pub mod pretrain;
pub mod privacy;
pub mod prompt;
pub mod reference;
pub mod replica;
pub mod session;
pub mod sim;
pub mod snapshot;
pub mod text;
pub mod trained;
pub mod transformer;
pub mod weights;

pub use data::{BatchSampler, Builtin, DataSource, Dataset, Split};
pub use dataset::{HELD_OUT_VALUES, HELD_OUT_WORK};
pub use job::{CommitteeSpec, HyperParams, Job, JobConfig};
pub use model::{Model, ModelSpec};
pub use replica::{EngineError, Evaluation, Proposal, Replica};
pub use session::{PeerState, Received, Session, SessionEnd};
pub use sim::{Exchange, Simulation, Step, Traffic};
pub use snapshot::{Snapshot, SnapshotReader};
pub use text::Corpus;

/// burn's pure-Rust CPU device: the reference backend.
pub fn cpu_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}

/// Runs a future to completion on this thread. The CPU backend never actually waits, so this is
/// how native callers use the engine's async API (which exists for WebGPU in the browser).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(f)
}
