// out = θ + scale·z(seed), θ untouched. One thread per ChaCha block: 16 words, 512 parameters.
// Parameter i takes bit i % 32 of word i / 32; a set bit is +1.

struct Perturb {
    key: array<u32, 8>,
    scale: f32,
    d: u32,
}

@group(0) @binding(0) var<storage, read> theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> params: Perturb;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let block_index = gid.x + gid.y * groups.x * 64u;
    let first = block_index * 512u;
    if (first >= params.d) {
        return;
    }
    let block = chacha8_block(params.key, block_index, 0u);
    for (var w = 0u; w < 16u; w = w + 1u) {
        let word = block[w];
        for (var bit = 0u; bit < 32u; bit = bit + 1u) {
            let i = first + w * 32u + bit;
            if (i < params.d) {
                let s = select(-params.scale, params.scale, ((word >> bit) & 1u) == 1u);
                out[i] = theta[i] + s;
            }
        }
    }
}
