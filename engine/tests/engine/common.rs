//! Helpers shared by the engine's integration tests.

pub use engine::reference::synthetic_log;

use engine::{Builtin, Replica, block_on};
use protocol::{Counter, LogEntry, PeerId};

/// Proposes 64 contributions in one batched pass on `lanes` and one at a time on `single`
/// (same job, same weights, same batch), and checks that every lane's byte is the single step's
/// byte. Batched and single forward passes may round differently, so a byte may differ where
/// `g` sits on a quantizer boundary: then the two bytes are neighbours and the two `g` agree
/// closely, and at most 2 of 64 may differ. Returns the lanes' log entries.
pub fn assert_lanes_match_single_steps(lanes: &mut Replica, single: &mut Replica) -> Vec<LogEntry> {
    let data = Builtin::Spirals.generate(512, 64, 2);
    let batch = data.train.shard(1, 8);
    let peer = PeerId(4);
    let counters: Vec<Counter> = (100..164).map(Counter).collect();
    let together = block_on(lanes.propose_lanes(peer, &counters, &batch)).unwrap();
    assert_eq!(together.len(), counters.len());
    let mut differ = 0;
    for (p, &counter) in together.iter().zip(&counters) {
        assert_eq!(p.counter, counter);
        let alone = block_on(single.propose(peer, counter, &batch)).unwrap();
        assert_eq!(p.base_version, alone.base_version);
        if p.byte != alone.byte {
            differ += 1;
            let (a, b) = (p.byte, alone.byte);
            // Log-quantizer codes: sign bit and level; level 0 is zero whatever the sign.
            let (la, lb) = (a & 0x7f, b & 0x7f);
            let neighbours = (a & 0x80 == b & 0x80 && la.abs_diff(lb) == 1)
                || (la == 0 && lb <= 1)
                || (lb == 0 && la <= 1);
            assert!(
                neighbours && (p.g - alone.g).abs() <= 1e-3 * alone.g.abs().max(1.0),
                "lane {counter}: byte {a:#04x} (g {}) vs single {b:#04x} (g {})",
                p.g,
                alone.g
            );
        }
    }
    assert!(differ <= 2, "{differ} of 64 lanes differ from single steps");
    together
        .iter()
        .map(|p| LogEntry {
            peer,
            counter: p.counter,
            byte: p.byte,
        })
        .collect()
}
