//! The engine's integration tests, one binary (each test binary links burn and wgpu, so one
//! link instead of one per file).

mod common;
mod driver;
mod invariants;
// The GPU path against the CPU reference: only with the GPU backend built in.
#[cfg(feature = "wgpu")]
mod across_backends;
