//! WGSL kernels: the ChaCha8 block function the engine uses for directions, perturb and update.
//!
//! Not written yet: the WebGPU kernels issue fills this crate. Until then the engine's CPU path
//! (`engine::direction`) is the only implementation, and the reference the kernels must match.
