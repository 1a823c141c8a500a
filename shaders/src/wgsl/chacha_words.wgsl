// Test kernel: one ChaCha8 word per query. Query q = (key[8], word_pos_lo, word_pos_hi).

struct Query {
    key: array<u32, 8>,
    pos_lo: u32,
    pos_hi: u32,
}

@group(0) @binding(0) var<storage, read> queries: array<Query>;
@group(0) @binding(1) var<storage, read_write> words: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    if (q >= arrayLength(&queries)) {
        return;
    }
    let query = queries[q];
    // 64-bit word position -> 64-bit block counter (>> 4) and word within the block.
    let block_lo = (query.pos_lo >> 4u) | (query.pos_hi << 28u);
    let block_hi = query.pos_hi >> 4u;
    let block = chacha8_block(query.key, block_lo, block_hi);
    words[q] = block[query.pos_lo & 15u];
}
