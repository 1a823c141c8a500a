// Perturbed copies of segments of θ for several directions at once (lanes), θ untouched: for
// each segment (first, len, at),
//   out[l·total + at + i − first] = θ[i] + scale_l·z_l(i)   for first ≤ i < first + len
// One thread per ChaCha block of one segment of one lane: 16 words, 512 parameters; the
// segment is the y coordinate of the dispatch, the lane z. Parameter i takes bit i % 32 of word i / 32; a set bit is +1.
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
    segments: u32,
    lanes: u32,
    // Parameters a lane's output holds: the segments' lengths summed.
    total: u32,
    // The index in θ of binding 0's first parameter (θ may be held in several buffers; every
    // segment of a dispatch lies in its buffer). Segments are in θ's indices.
    offset: u32,
}

// A segment of θ: parameters first .. first + len, written at `out` in each lane's output.
struct Segment {
    first: u32,
    len: u32,
    out: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lanes: array<Lane>;
@group(0) @binding(3) var<storage, read_write> params: Perturb;
@group(0) @binding(4) var<storage, read_write> segments: array<Segment>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    // Thread x takes the x-th ChaCha block that segment y touches, for lane z.
    let lane_index = gid.z;
    if (gid.y >= params.segments || lane_index >= params.lanes) {
        return;
    }
    let segment = segments[gid.y];
    let block_index = segment.first / 512u + gid.x;
    let first = block_index * 512u;
    let end = segment.first + segment.len;
    if (first >= end) {
        return;
    }
    let lane = lanes[lane_index];
    let base = lane_index * params.total + segment.out;
    let block = chacha8_block(lane.key, block_index, 0u);
    for (var w = 0u; w < 16u; w = w + 1u) {
        let word = block[w];
        for (var bit = 0u; bit < 32u; bit = bit + 1u) {
            let i = first + w * 32u + bit;
            if (i >= segment.first && i < end) {
                let s = select(-lane.scale, lane.scale, ((word >> bit) & 1u) == 1u);
                out[base + i - segment.first] = theta[i - params.offset] + s;
            }
        }
    }
}
