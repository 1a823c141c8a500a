//! The invariants of ARCHITECTURE.md that the engine alone upholds, each tested under its own name.

use crate::common;

use common::synthetic_log;
use engine::direction::sign_at;
use engine::{Builtin, Exchange, Job, Replica, Simulation, block_on, cpu_device};
use protocol::{Counter, PeerId, Version};
use std::sync::Arc;

#[test]
fn replicas_are_bit_identical() {
    let job = Arc::new(Job::demo());
    let log = synthetic_log(10_000, 42);

    // Replica A applies one entry at a time, B in uneven batches, C from a snapshot at 5 000.
    let mut a = Replica::new(job.clone(), cpu_device());
    let mut b = Replica::new(job.clone(), cpu_device());
    let mut hashes_a = Vec::new();
    for (i, e) in log.iter().enumerate() {
        a.apply(std::slice::from_ref(e));
        if (i + 1) % 500 == 0 {
            hashes_a.push((a.version(), block_on(a.weight_hash()).unwrap()));
        }
    }
    let mut at = 0;
    let mut sizes = [1usize, 7, 500, 3, 250, 64].into_iter().cycle();
    let mut hashes_b = Vec::new();
    let mut snapshot = None;
    while at < log.len() {
        // Never cross a multiple of 500, so B can be compared there.
        let next_mark = (at / 500 + 1) * 500;
        let end = (at + sizes.next().unwrap()).min(next_mark);
        b.apply(&log[at..end]);
        at = end;
        if at % 500 == 0 {
            hashes_b.push((b.version(), block_on(b.weight_hash()).unwrap()));
            if at == 5_000 {
                snapshot = Some(block_on(b.snapshot()).unwrap());
            }
        }
    }
    assert_eq!(hashes_a.len(), 20);
    assert_eq!(hashes_a, hashes_b, "replicas differ at some 500th version");
    let weights = block_on(a.read_weights()).unwrap();
    assert_eq!(weights.len(), job.model.layout().d());
    assert!(weights.iter().all(|v| v.is_finite()));

    let mut c = Replica::from_snapshot(job.clone(), cpu_device(), &snapshot.unwrap()).unwrap();
    assert_eq!(c.version(), Version(5_000));
    let mut hashes_c = Vec::new();
    for chunk in log[5_000..].chunks(500) {
        c.apply(chunk);
        hashes_c.push((c.version(), block_on(c.weight_hash()).unwrap()));
    }
    assert_eq!(
        hashes_c,
        hashes_a[10..],
        "snapshot-restored replica drifted"
    );
}

#[test]
fn replicas_are_bit_identical_to_the_random_access_definition() {
    // θ_i += c·z_i with z_i read by random access (no stream state), for the first entries.
    let job = Arc::new(Job::demo());
    let log = synthetic_log(40, 7);
    let mut replica = Replica::new(job.clone(), cpu_device());
    replica.apply(&log);
    let mut theta = job.initial_weights();
    for e in &log {
        let c = replica.step_for(e.byte);
        if c == 0.0 {
            continue;
        }
        let seed = replica.seed(e.peer, e.counter);
        for (i, v) in theta.iter_mut().enumerate() {
            let sum = *v + c * sign_at(&seed, i as u64);
            *v = if sum.abs() < f32::MIN_POSITIVE {
                0.0
            } else {
                sum
            };
        }
    }
    let bits = |t: &[f32]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&block_on(replica.read_weights()).unwrap()),
        bits(&theta)
    );
}

#[test]
fn perturbation_does_not_mutate_weights() {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(256, 16, 3);
    let mut replica = Replica::new(job.clone(), cpu_device());
    replica.apply(&synthetic_log(10, 1));
    let before = block_on(replica.read_weights()).unwrap();
    let hash = block_on(replica.weight_hash()).unwrap();
    for counter in 0..200 {
        let p = block_on(replica.propose(PeerId(1), Counter(counter), &data.train)).unwrap();
        assert_eq!(p.base_version, Version(10));
        assert!(p.g.is_finite() && p.loss.is_finite());
    }
    assert_eq!(block_on(replica.weight_hash()).unwrap(), hash);
    assert_eq!(replica.version(), Version(10));
    assert!(
        block_on(replica.read_weights())
            .unwrap()
            .iter()
            .zip(&before)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn proposals_are_deterministic() {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(64, 16, 3);
    let mut replica = Replica::new(job, cpu_device());
    let a = block_on(replica.propose(PeerId(2), Counter(5), &data.train)).unwrap();
    let b = block_on(replica.propose(PeerId(2), Counter(5), &data.train)).unwrap();
    assert_eq!(a, b);
    let other = block_on(replica.propose(PeerId(2), Counter(6), &data.train)).unwrap();
    assert_ne!(a.g, other.g, "different counters give different directions");
}

fn simulate(exchange: Exchange, contributions: u64) -> (f32, Simulation) {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(4_000, 1_000, 1);
    let mut sim = Simulation::new(job, &data, 8, 1, exchange, cpu_device());
    while sim.version().0 < contributions {
        block_on(sim.round()).unwrap();
    }
    let eval = block_on(sim.evaluate(&data.test)).unwrap();
    (eval.accuracy, sim)
}

#[test]
fn spirals_converges() {
    let (accuracy, sim) = simulate(Exchange::Byte, 16_000);
    assert!(accuracy >= 0.97, "test accuracy {accuracy}");
    let hashes = block_on(sim.hashes()).unwrap();
    assert_eq!(hashes.len(), 8);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas diverged");
    let traffic = sim.traffic();
    assert!(traffic.fp32_allreduce > 100 * (traffic.uplink + traffic.downlink));
}

#[test]
fn one_byte_matches_f32() {
    let (byte, _) = simulate(Exchange::Byte, 16_000);
    let (raw, _) = simulate(Exchange::RawF32, 16_000);
    assert!(
        (byte - raw).abs() <= 0.02,
        "one byte {byte} vs raw f32 {raw}"
    );
}

/// Bit-identical replicas across builds: the native CPU replica reaches the hash that the wasm
/// suite (`client-wasm/tests/wasm.rs`) also asserts for the CPU backend inside WebAssembly.
#[test]
fn reference_log_reaches_the_reference_hash() {
    use engine::reference::{REFERENCE_HASH, REFERENCE_LEN, REFERENCE_SEED};
    let mut replica = Replica::new(Arc::new(Job::demo()), cpu_device());
    replica.apply(&synthetic_log(REFERENCE_LEN, REFERENCE_SEED));
    let hash = block_on(replica.weight_hash()).unwrap().to_hex();
    assert_eq!(
        hash, REFERENCE_HASH,
        "the reference weights moved; if intended, set REFERENCE_HASH to {hash}"
    );
}

#[test]
fn lanes_match_single_steps() {
    let job = Arc::new(Job::demo());
    let mut lanes = Replica::new(job.clone(), cpu_device());
    let mut single = Replica::new(job.clone(), cpu_device());
    let log = synthetic_log(300, 11);
    lanes.apply(&log);
    single.apply(&log);
    let entries = common::assert_lanes_match_single_steps(&mut lanes, &mut single);
    lanes.apply(&entries);
    single.apply(&entries);
    assert_eq!(
        block_on(lanes.weight_hash()).unwrap(),
        block_on(single.weight_hash()).unwrap()
    );
}
