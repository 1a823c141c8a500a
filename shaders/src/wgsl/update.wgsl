// θ += Σ_j c_j·z(seed_j), entries in log order, in place. One thread per ChaCha block (512
// parameters); each thread walks the entries in order, so every parameter sees the same
// sequence of single rounded adds as on the CPU (engine::direction::apply_update).
// Every binding is read_write: burn's compute client binds buffers that way.
// Words are walked with constant-bound loops (word, then bit), as in perturb.wgsl: indexing the
// block with an expression of the parameter index was miscompiled by lavapipe (Mesa 22.3).

struct Entry {
    key: array<u32, 8>,
    c: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Update {
    // Parameters in this buffer, and the first one's index in θ (a multiple of 512): θ may be
    // held in several buffers, each updated by its own dispatch.
    d: u32,
    entries: u32,
    offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> entries: array<Entry>;
@group(0) @binding(2) var<storage, read_write> params: Update;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let local_block = gid.x + gid.y * groups.x * 64u;
    let first = local_block * 512u;
    if (first >= params.d) {
        return;
    }
    let block_index = params.offset / 512u + local_block;
    for (var j = 0u; j < params.entries; j = j + 1u) {
        let entry = entries[j];
        let block = chacha8_block(entry.key, block_index, 0u);
        for (var w = 0u; w < 16u; w = w + 1u) {
            let word = block[w];
            for (var bit = 0u; bit < 32u; bit = bit + 1u) {
                let i = first + w * 32u + bit;
                if (i < params.d) {
                    let step = select(-entry.c, entry.c, ((word >> bit) & 1u) == 1u);
                    theta[i] = flush_subnormal(theta[i] + step);
                }
            }
        }
    }
}
