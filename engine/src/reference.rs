//! A fixed log and the weights it must produce, for checking platforms against each other.
//!
//! Every build of the engine — native CPU, wgpu, the CPU backend inside wasm, WebGPU in a
//! browser — must reach [`REFERENCE_HASH`] after applying [`synthetic_log`]`(REFERENCE_LEN,
//! REFERENCE_SEED)` to the demo job's initial weights. The native and the wasm test suites both
//! assert it, so the two are compared without running side by side. If an intended change of
//! the model or its initialisation moves the hash, `reference_log_reaches_the_reference_hash`
//! prints the new one.

use protocol::{Counter, LogEntry, PeerId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Entries in the reference log (crosses two hash-report boundaries).
pub const REFERENCE_LEN: usize = 600;
/// Seed of the reference log.
pub const REFERENCE_SEED: u64 = 7;
/// SHA-256 of θ after the reference log, on the demo job.
pub const REFERENCE_HASH: &str = "ffe97973b1439205a46bd42e8b2ab38cbbaa28fd1e6cea1a4da653a3d3054872";

/// A reproducible log: 16 peers, increasing counters, bytes spread over the codec's levels.
pub fn synthetic_log(len: usize, seed: u64) -> Vec<LogEntry> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counters = [0u64; 16];
    (0..len)
        .map(|_| {
            let peer = (rng.next_u32() % 16) as usize;
            counters[peer] += 1 + u64::from(rng.next_u32() % 3);
            let level = (rng.next_u32() % 81) as u8;
            let sign = if rng.next_u32() % 2 == 0 { 0 } else { 0x80 };
            LogEntry {
                peer: PeerId(peer as u32),
                counter: Counter(counters[peer]),
                byte: sign | level,
            }
        })
        .collect()
}
