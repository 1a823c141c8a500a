//! The WGSL kernels on a real adapter (lavapipe in CI), one test binary.

mod common;
mod update_kernel;
mod wgsl_chacha;
