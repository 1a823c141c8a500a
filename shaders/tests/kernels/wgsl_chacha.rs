//! The WGSL ChaCha8 block function against rand_chacha, word for word, on a real adapter
//! (lavapipe in CI).

use crate::common;

use common::run_kernel;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shaders::{ChachaQuery, chacha_words_source, key_words};

fn run_queries(queries: &[ChachaQuery]) -> Vec<u32> {
    let out = vec![0u8; queries.len() * 4];
    let groups = ((queries.len() as u32).div_ceil(64), 1);
    let bytes = run_kernel(
        chacha_words_source(),
        &[bytemuck::cast_slice(queries), &out],
        1,
        groups,
    );
    bytemuck::cast_slice(&bytes).to_vec()
}

#[test]
fn wgsl_chacha_matches_rand_chacha() {
    let mut meta = ChaCha8Rng::seed_from_u64(2023);
    let mut queries = Vec::new();
    let mut expected = Vec::new();
    for k in 0..4_096u64 {
        let mut seed = [0u8; 32];
        meta.fill_bytes(&mut seed);
        // Near 0, around the 2^32-bit boundary (2^27 words), and far past it.
        let pos: u64 = match k % 4 {
            0 => meta.next_u64() % 1_000,
            1 => (1u64 << 27) - 500 + meta.next_u64() % 1_000,
            2 => (1u64 << 32) - 8 + meta.next_u64() % 16,
            _ => meta.next_u64() >> 4,
        };
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_word_pos(u128::from(pos));
        expected.push(rng.next_u32());
        queries.push(ChachaQuery {
            key: key_words(&seed),
            pos_lo: pos as u32,
            pos_hi: (pos >> 32) as u32,
        });
    }
    let words = run_queries(&queries);
    for (i, (got, want)) in words.iter().zip(&expected).enumerate() {
        let q = &queries[i];
        assert_eq!(
            got,
            want,
            "query {i} at word position {}",
            (u64::from(q.pos_hi) << 32) | u64::from(q.pos_lo)
        );
    }
    assert_eq!(words.len(), 4_096);
}
