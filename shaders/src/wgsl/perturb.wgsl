// Perturbed copies of a range of θ for several directions at once (lanes), θ untouched:
//   out[l·len + i − first] = θ[i] + scale_l·z_l(i)   for first ≤ i < first + len
// One thread per ChaCha block of one lane: 16 words, 512 parameters; the lane is the z
// coordinate of the dispatch. Parameter i takes bit i % 32 of word i / 32; a set bit is +1.
// Every binding is read_write because the engine launches this through burn's compute client,
// which binds every buffer as a read-write storage buffer.

struct Lane {
    key: array<u32, 8>,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Perturb {
    // The range of θ to perturb: parameters first .. first + len.
    first: u32,
    len: u32,
    lanes: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lanes: array<Lane>;
@group(0) @binding(3) var<storage, read_write> params: Perturb;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // Thread t takes the t-th ChaCha block that the range touches.
    let block_index = params.first / 512u + gid.x + gid.y * groups.x * 64u;
    let first = block_index * 512u;
    let end = params.first + params.len;
    let lane_index = gid.z;
    if (first >= end || lane_index >= params.lanes) {
        return;
    }
    let lane = lanes[lane_index];
    let base = lane_index * params.len;
    let block = chacha8_block(lane.key, block_index, 0u);
    for (var w = 0u; w < 16u; w = w + 1u) {
        let word = block[w];
        for (var bit = 0u; bit < 32u; bit = bit + 1u) {
            let i = first + w * 32u + bit;
            if (i >= params.first && i < end) {
                let s = select(-lane.scale, lane.scale, ((word >> bit) & 1u) == 1u);
                out[base + i - params.first] = theta[i] + s;
            }
        }
    }
}
