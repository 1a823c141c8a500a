// ChaCha8 block function, word for word the stream of rand_chacha's `ChaCha8Rng`:
// state = "expand 32-byte k" | key (8 words, little-endian from the 32-byte seed) |
//         block counter (64 bits: low word, high word) | stream (64 bits, always 0 here).
// Word `w` of the stream is word `w % 16` of block `w / 16`.

const CHACHA_CONST0: u32 = 0x61707865u;
const CHACHA_CONST1: u32 = 0x3320646eu;
const CHACHA_CONST2: u32 = 0x79622d32u;
const CHACHA_CONST3: u32 = 0x6b206574u;

fn rotl(v: u32, n: u32) -> u32 {
    return (v << n) | (v >> (32u - n));
}

fn quarter_round(x: ptr<function, array<u32, 16>>, a: u32, b: u32, c: u32, d: u32) {
    (*x)[a] = (*x)[a] + (*x)[b]; (*x)[d] = rotl((*x)[d] ^ (*x)[a], 16u);
    (*x)[c] = (*x)[c] + (*x)[d]; (*x)[b] = rotl((*x)[b] ^ (*x)[c], 12u);
    (*x)[a] = (*x)[a] + (*x)[b]; (*x)[d] = rotl((*x)[d] ^ (*x)[a], 8u);
    (*x)[c] = (*x)[c] + (*x)[d]; (*x)[b] = rotl((*x)[b] ^ (*x)[c], 7u);
}

// The 16 output words of block (block_lo, block_hi) under `key`.
fn chacha8_block(key: array<u32, 8>, block_lo: u32, block_hi: u32) -> array<u32, 16> {
    var init = array<u32, 16>(
        CHACHA_CONST0, CHACHA_CONST1, CHACHA_CONST2, CHACHA_CONST3,
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        block_lo, block_hi, 0u, 0u);
    var x = init;
    for (var round = 0u; round < 4u; round = round + 1u) {
        quarter_round(&x, 0u, 4u, 8u, 12u);
        quarter_round(&x, 1u, 5u, 9u, 13u);
        quarter_round(&x, 2u, 6u, 10u, 14u);
        quarter_round(&x, 3u, 7u, 11u, 15u);
        quarter_round(&x, 0u, 5u, 10u, 15u);
        quarter_round(&x, 1u, 6u, 11u, 12u);
        quarter_round(&x, 2u, 7u, 8u, 13u);
        quarter_round(&x, 3u, 4u, 9u, 14u);
    }
    for (var i = 0u; i < 16u; i = i + 1u) {
        x[i] = x[i] + init[i];
    }
    return x;
}

// Subnormals flush to +0, as on the CPU (engine::direction::flush_subnormal).
fn flush_subnormal(v: f32) -> f32 {
    if (abs(v) < 1.17549435e-38) {
        return 0.0;
    }
    return v;
}
