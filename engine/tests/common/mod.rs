//! Helpers shared by the engine's integration tests.

use protocol::{Counter, LogEntry, PeerId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

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
