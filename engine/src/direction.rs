//! Rademacher directions from counter-mode ChaCha8, and the two operations that use them on the
//! CPU: perturb (into a scratch buffer) and update (in place).
//!
//! Parameter `i` of direction `seed` is `+1` when bit `i % 32` of ChaCha word `i / 32` is set,
//! `-1` otherwise (seed scheme v1, see `protocol::seed`). Words are addressed by position, so any
//! slice of the direction can be computed alone; the functions here walk the stream in order
//! because that is the same thing, and faster ([`word_at`] is the random-access form).
//!
//! The update `θ_i ← θ_i + c·z_i` is one correctly rounded f32 addition of `±c` (a product with
//! `±1` is exact), followed by flushing a subnormal result to `+0`. GPUs may flush subnormals on
//! their own; flushing them everywhere, explicitly, keeps every backend's bits the same.

use protocol::DirectionSeed;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The ChaCha8 generator of a direction, positioned at word 0.
pub fn direction_rng(seed: &DirectionSeed) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(seed.0)
}

/// The 32-bit word at `word_pos` of the direction's stream, computed without the words before it.
pub fn word_at(seed: &DirectionSeed, word_pos: u64) -> u32 {
    let mut rng = direction_rng(seed);
    rng.set_word_pos(u128::from(word_pos));
    rng.next_u32()
}

/// `z_i`: the sign of parameter `i` in direction `seed`, by random access.
pub fn sign_at(seed: &DirectionSeed, i: u64) -> f32 {
    sign_of_bit(word_at(seed, i / 32), (i % 32) as u32)
}

#[inline(always)]
fn sign_of_bit(word: u32, bit: u32) -> f32 {
    if (word >> bit) & 1 == 1 { 1.0 } else { -1.0 }
}

/// Flush subnormals to `+0`, the same on every backend.
#[inline(always)]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// Calls `f(i, z_i)` for every parameter `i < d` of the direction, in order.
#[cfg(test)]
fn for_each_sign(seed: &DirectionSeed, d: usize, mut f: impl FnMut(usize, f32)) {
    let mut rng = direction_rng(seed);
    let mut i = 0;
    while i < d {
        let word = rng.next_u32();
        let end = (i + 32).min(d);
        for (bit, idx) in (i..end).enumerate() {
            f(idx, sign_of_bit(word, bit as u32));
        }
        i = end;
    }
}

/// `out = θ + scale·z`, leaving `θ` untouched.
pub fn perturb_into(theta: &[f32], seed: &DirectionSeed, scale: f32, out: &mut [f32]) {
    perturb_part_into(theta, 0, seed, scale, out);
}

/// `out = part + scale·z[first..]`, where `part` is θ from parameter `first` on: one tensor's
/// perturbed copy, made alone (the same bits as that slice of [`perturb_into`]'s). Natively
/// the part goes to every core in blocks.
pub fn perturb_part_into(
    part: &[f32],
    first: usize,
    seed: &DirectionSeed,
    scale: f32,
    out: &mut [f32],
) {
    assert_eq!(part.len(), out.len(), "scratch buffer must match the part");
    if part.len() <= BLOCK {
        // Not worth sending to other cores.
        return perturb_run(part, first, seed, scale, out);
    }
    // Pieces that start on a block of θ (the first may start inside one).
    let head = ((BLOCK - first % BLOCK) % BLOCK).min(part.len());
    perturb_run(&part[..head], first, seed, scale, &mut out[..head]);
    let (part, out) = (&part[head..], &mut out[head..]);
    let first = first + head;
    let piece = |(index, (part, out)): (usize, (&[f32], &mut [f32]))| {
        perturb_run(part, first + index * BLOCK, seed, scale, out)
    };
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        part.par_chunks(BLOCK)
            .zip(out.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(piece);
    }
    #[cfg(target_family = "wasm")]
    part.chunks(BLOCK)
        .zip(out.chunks_mut(BLOCK))
        .enumerate()
        .for_each(piece);
}

/// [`perturb_part_into`] on one core.
fn perturb_run(part: &[f32], first: usize, seed: &DirectionSeed, scale: f32, out: &mut [f32]) {
    let mut rng = direction_rng(seed);
    rng.set_word_pos((first / 32) as u128);
    let mut bit = first % 32;
    let mut i = 0;
    while i < part.len() {
        let word = rng.next_u32();
        let end = (i + 32 - bit).min(part.len());
        for (b, idx) in (bit..).zip(i..end) {
            out[idx] = part[idx] + scale * sign_of_bit(word, b as u32);
        }
        bit = 0;
        i = end;
    }
}

/// `θ ← θ + c·z`, in place, with subnormals flushed.
pub fn apply_update(theta: &mut [f32], seed: &DirectionSeed, c: f32) {
    apply_updates(theta, &[(*seed, c)]);
}

/// Parameters per block of [`apply_updates`]: 16 KiB of θ, which stays in the L1 cache while
/// every step of a batch passes over it. A multiple of 32, so a block starts on a word.
const BLOCK: usize = 4096;

/// `θ ← θ + c·z` for each `(seed, c)` in order, in place, with subnormals flushed: the same bits
/// as [`apply_update`] step after step. θ goes in blocks, every step over one block before the
/// next (each parameter still sees the steps in log order; its direction words are read at the
/// block's position in each stream), and natively the blocks go to every core.
pub fn apply_updates(theta: &mut [f32], steps: &[(DirectionSeed, f32)]) {
    let steps: Vec<(DirectionSeed, f32)> =
        steps.iter().filter(|(_, c)| *c != 0.0).copied().collect();
    if steps.is_empty() {
        return;
    }
    let update_block = |(index, block): (usize, &mut [f32])| {
        let mut words = [0u32; BLOCK / 32];
        let words = &mut words[..block.len().div_ceil(32)];
        for (seed, c) in &steps {
            let mut rng = direction_rng(seed);
            rng.set_word_pos((index * BLOCK / 32) as u128);
            words.iter_mut().for_each(|w| *w = rng.next_u32());
            for (run, &word) in block.chunks_mut(32).zip(words.iter()) {
                update_run(run, word, *c);
            }
        }
    };
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        theta
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(update_block);
    }
    #[cfg(target_family = "wasm")]
    theta.chunks_mut(BLOCK).enumerate().for_each(update_block);
}

/// One word's parameters (32, fewer at the end of θ): `θ_i ← flush(θ_i ± c)` by bit `i` of
/// `word`. Written without branches on the bits, so that it compiles to vector code.
#[inline(always)]
fn update_run(run: &mut [f32], word: u32, c: f32) {
    #[inline(always)]
    fn one(t: &mut f32, word: u32, bit: usize, c: f32) {
        let step = if word & (1 << bit) != 0 { c } else { -c };
        *t = flush_subnormal(*t + step);
    }
    match <&mut [f32; 32]>::try_from(&mut *run) {
        Ok(full) => full
            .iter_mut()
            .enumerate()
            .for_each(|(bit, t)| one(t, word, bit, c)),
        Err(_) => run
            .iter_mut()
            .enumerate()
            .for_each(|(bit, t)| one(t, word, bit, c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Counter, JobId, PeerId};

    fn seed(n: u64) -> DirectionSeed {
        DirectionSeed::derive(JobId(7), PeerId(3), Counter(n))
    }

    #[test]
    fn rng_is_counter_based() {
        // Random access to any word equals reading the sequential stream up to it.
        for n in 0..8 {
            let s = seed(n);
            let mut rng = direction_rng(&s);
            let stream: Vec<u32> = (0..300).map(|_| rng.next_u32()).collect();
            for (pos, &w) in stream.iter().enumerate().rev() {
                assert_eq!(word_at(&s, pos as u64), w, "seed {n} word {pos}");
            }
        }
        // And far into the stream, past 2^32 parameters (2^27 words), both ways agree.
        let s = seed(99);
        let far = (1u64 << 27) + 12_345;
        let mut rng = direction_rng(&s);
        rng.set_word_pos(u128::from(far - 3));
        let seq: Vec<u32> = (0..6).map(|_| rng.next_u32()).collect();
        let random: Vec<u32> = (far - 3..far + 3).map(|p| word_at(&s, p)).collect();
        assert_eq!(seq, random);
    }

    #[test]
    fn signs_are_balanced_and_match_random_access() {
        let s = seed(1);
        let d = 10_000;
        let mut theta = vec![0.0f32; d];
        perturb_into(&vec![0.0; d], &s, 1.0, &mut theta);
        let plus = theta.iter().filter(|&&v| v == 1.0).count();
        assert!((4_700..5_300).contains(&plus), "{plus} of {d} are +1");
        for i in [0usize, 31, 32, 33, 999, 9_999] {
            assert_eq!(theta[i], sign_at(&s, i as u64));
        }
    }

    #[test]
    fn a_part_perturbed_alone_equals_that_slice_of_the_whole() {
        let s = seed(5);
        let d = 2 * BLOCK + 77;
        let theta: Vec<f32> = (0..d).map(|i| (i as f32 * 0.13).cos()).collect();
        let mut whole = vec![0.0; d];
        perturb_into(&theta, &s, 1e-3, &mut whole);
        for (first, len) in [
            (0, d),
            (5, 40),
            (31, 1),
            (BLOCK - 3, BLOCK + 9),
            (d - 17, 17),
        ] {
            let mut part = vec![0.0; len];
            perturb_part_into(&theta[first..first + len], first, &s, 1e-3, &mut part);
            assert_eq!(part, whole[first..first + len], "from {first}, {len} long");
        }
    }

    #[test]
    fn update_is_one_rounded_add_per_parameter() {
        let s = seed(2);
        let theta0: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut theta = theta0.clone();
        let c = -0.012_345_f32;
        apply_update(&mut theta, &s, c);
        for i in 0..100 {
            let z = sign_at(&s, i as u64);
            assert_eq!(
                theta[i].to_bits(),
                (theta0[i] + if z > 0.0 { c } else { -c }).to_bits()
            );
        }
    }

    #[test]
    fn blocked_updates_equal_one_step_after_another() {
        // Across block boundaries, with a partial last word, a zero step among them, and values
        // where the flush matters.
        let d = 3 * BLOCK + 45;
        let theta0: Vec<f32> = (0..d)
            .map(|i| match i % 7 {
                0 => 1e-39,
                1 => 0.01,
                _ => (i as f32 * 0.37).sin(),
            })
            .collect();
        let steps: Vec<(DirectionSeed, f32)> = (0..9)
            .map(|n| (seed(n), if n == 4 { 0.0 } else { 0.01 / (n as f32 + 1.0) }))
            .collect();
        let mut one_by_one = theta0.clone();
        for (s, c) in &steps {
            if *c != 0.0 {
                for_each_sign(s, d, |i, z| {
                    one_by_one[i] = flush_subnormal(one_by_one[i] + c * z)
                });
            }
        }
        let mut blocked = theta0;
        apply_updates(&mut blocked, &steps);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&blocked), bits(&one_by_one));
    }

    #[test]
    fn subnormal_results_flush_to_positive_zero() {
        assert_eq!(flush_subnormal(1e-40).to_bits(), 0);
        assert_eq!(flush_subnormal(-1e-40).to_bits(), 0);
        assert_eq!(flush_subnormal(-0.0).to_bits(), 0);
        assert_eq!(flush_subnormal(1.5), 1.5);
    }
}
