//! The update kernel alone against a CPU reference written from its definition: one dispatch of
//! many entries, in log order, bit for bit. An earlier kernel, indexing the block's words with an
//! expression of the parameter index, went wrong on lavapipe (Mesa 22.3) past ~100 entries.

use crate::common;

use common::run_kernel;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shaders::{UpdateEntry, UpdateParams, dispatch_size, key_words, update_source};

fn reference(theta: &mut [f32], entries: &[([u8; 32], f32)]) {
    for (seed, c) in entries {
        let mut rng = ChaCha8Rng::from_seed(*seed);
        let mut word = 0;
        for (i, v) in theta.iter_mut().enumerate() {
            if i % 32 == 0 {
                word = rng.next_u32();
            }
            let step = if (word >> (i % 32)) & 1 == 1 { *c } else { -*c };
            let sum = *v + step;
            *v = if sum.abs() < f32::MIN_POSITIVE {
                0.0
            } else {
                sum
            };
        }
    }
}

fn run_update(theta: &[f32], entries: &[([u8; 32], f32)]) -> Vec<f32> {
    let list: Vec<UpdateEntry> = entries
        .iter()
        .map(|(seed, c)| UpdateEntry {
            key: key_words(seed),
            c: *c,
            _pad: [0; 3],
        })
        .collect();
    let params = UpdateParams {
        d: theta.len() as u32,
        entries: list.len() as u32,
        offset: 0,
        _pad: 0,
    };
    let bytes = run_kernel(
        update_source(),
        &[
            bytemuck::cast_slice(theta),
            bytemuck::cast_slice(&list),
            bytemuck::bytes_of(&params),
        ],
        0,
        dispatch_size(theta.len() as u32),
    );
    bytemuck::cast_slice(&bytes).to_vec()
}

fn check(d: usize, n: usize) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(d as u64 * 1_000 + n as u64);
    let theta: Vec<f32> = (0..d)
        .map(|_| (rng.next_u32() >> 8) as f32 / (1 << 23) as f32 - 1.0)
        .collect();
    let entries: Vec<([u8; 32], f32)> = (0..n)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            (
                seed,
                ((rng.next_u32() >> 8) as f32 / (1 << 24) as f32 - 0.5) * 1e-3,
            )
        })
        .collect();
    let mut want = theta.clone();
    reference(&mut want, &entries);
    let got = run_update(&theta, &entries);
    let diffs = (0..d)
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .count();
    if diffs == 0 {
        Ok(())
    } else {
        Err(format!("d={d} entries={n}: {diffs} parameters differ"))
    }
}

#[test]
fn update_kernel_matches_cpu_reference() {
    for (d, n) in [
        (1_218, 1),
        (1_218, 128),
        (1_218, 129),
        (1_218, 256),
        (70_000, 17),
    ] {
        check(d, n).unwrap();
    }
}
