//! WGSL kernels of onebyte, as source text for whoever launches them (the engine's GPU path).
//!
//! Every kernel reproduces a CPU reference in `engine::direction` bit for bit:
//!
//! * [`chacha_words_source`]: one word of the ChaCha8 stream per query, for testing the block function;
//! * [`perturb_source`]: `out_l = θ + s_l·z(seed_l)` for several lanes at once, without touching θ;
//! * [`update_source`]: `θ += Σ_j c_j·z(seed_j)` for a batch of log entries, in log order, in place.
//!
//! Each thread computes one ChaCha block in registers and handles its 512 parameters, so no
//! buffer holding `z` exists anywhere. Buffers and uniforms are laid out as the `#[repr(C)]`
//! structs below describe.

/// The shared library: ChaCha8 block function and the subnormal flush.
pub const CHACHA_LIB: &str = include_str!("wgsl/chacha.wgsl");

/// Parameters per thread: one ChaCha block of 16 words × 32 bits.
pub const PARAMS_PER_THREAD: u32 = 512;
/// Threads per workgroup in every kernel.
pub const WORKGROUP_SIZE: u32 = 64;

/// Test kernel: bindings `0: array<ChachaQuery>` (read), `1: array<u32>` (out).
pub fn chacha_words_source() -> String {
    format!("{CHACHA_LIB}\n{}", include_str!("wgsl/chacha_words.wgsl"))
}

/// Perturb kernel: bindings `0: θ`, `1: out` (`lanes × total`), `2: array<PerturbLane>`,
/// `3: PerturbParams`, `4: array<PerturbSegment>`; dispatched with [`perturb_groups`] in x,
/// one segment per y (at most 65 535 a dispatch) and one lane per z.
pub fn perturb_source() -> String {
    format!("{CHACHA_LIB}\n{}", include_str!("wgsl/perturb.wgsl"))
}

/// Update kernel: bindings `0: θ` (written in place), `1: array<UpdateEntry>`, `2: UpdateParams`.
///
/// Every binding of [`perturb_source`] and [`update_source`] is declared
/// `read_write`: the engine launches them through burn's compute client, which binds every
/// buffer that way.
pub fn update_source() -> String {
    format!("{CHACHA_LIB}\n{}", include_str!("wgsl/update.wgsl"))
}

/// A query of the test kernel: a ChaCha key and a 64-bit word position.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ChachaQuery {
    pub key: [u32; 8],
    pub pos_lo: u32,
    pub pos_hi: u32,
}

/// One lane of the perturb kernel: a direction's key and the scale (`±ε`) along it.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PerturbLane {
    pub key: [u32; 8],
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// Parameters of the perturb kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PerturbParams {
    /// Segments of θ to perturb (binding 4).
    pub segments: u32,
    pub lanes: u32,
    /// Parameters each lane's output holds: the segments' lengths summed.
    pub total: u32,
    /// The index in θ of binding 0's first parameter: θ may be held in several buffers, and
    /// every segment of a dispatch lies in the one bound.
    pub offset: u32,
}

/// A segment of θ for the perturb kernel: parameters `first .. first + len`, written at `out`
/// in each lane's output. All of θ is one segment `(0, d, 0)`; the rows a pass reads of a table,
/// one a row.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PerturbSegment {
    pub first: u32,
    pub len: u32,
    pub out: u32,
    pub _pad: u32,
}

/// Workgroups in x for the perturb kernel over segments the longest of which touches
/// `params` parameters' worth of ChaCha blocks (`first % 512 + len`).
pub fn perturb_groups(params: u32) -> u32 {
    params
        .div_ceil(PARAMS_PER_THREAD)
        .div_ceil(WORKGROUP_SIZE)
        .max(1)
}

/// One log entry for the update kernel: the direction's key and its step `c = −η·D(q)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UpdateEntry {
    pub key: [u32; 8],
    pub c: f32,
    pub _pad: [u32; 3],
}

/// Parameters of the update kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UpdateParams {
    /// Parameters in the buffer bound.
    pub d: u32,
    pub entries: u32,
    /// The index in θ of the buffer's first parameter, a multiple of [`PARAMS_PER_THREAD`].
    pub offset: u32,
    pub _pad: u32,
}

/// A 32-byte ChaCha key as the eight little-endian words the kernels read.
pub fn key_words(seed: &[u8; 32]) -> [u32; 8] {
    std::array::from_fn(|i| u32::from_le_bytes(seed[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

/// Workgroups to dispatch for `d` parameters, as `(x, y)`: `y > 1` only when `x` would pass the
/// 65 535 limit on one dimension.
pub fn dispatch_size(d: u32) -> (u32, u32) {
    let threads = d.div_ceil(PARAMS_PER_THREAD);
    let groups = threads.div_ceil(WORKGROUP_SIZE).max(1);
    if groups <= 65_535 {
        (groups, 1)
    } else {
        (65_535, groups.div_ceil(65_535))
    }
}
