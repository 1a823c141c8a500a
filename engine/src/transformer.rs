//! A GPT-2 style transformer over a flat `θ`: token and learned position embeddings,
//! pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final LayerNorm,
//! and the output tied to the token embedding.
//!
//! Parameter names and shapes are Hugging Face's GPT-2 names (`wte.weight`,
//! `h.0.attn.c_attn.weight`, …), and linear weights are stored `[in, out]` as GPT-2's `Conv1D`
//! stores them, so a GPT-2 checkpoint is read tensor by tensor with no transposes.
//!
//! Every forward pass runs over a lane dimension: `K` weight vectors at once, each matmul one
//! batched matmul over the lanes, so the `2K` perturbed copies of a step cost one pass.

use crate::layout::ParamLayout;
use crate::weights::Weights;
use burn::tensor::{Tensor, TensorData, activation};
use serde::{Deserialize, Serialize};

/// GPT-2's LayerNorm epsilon.
const LN_EPS: f32 = 1e-5;

/// The additive attention mask above the diagonal. Large enough that `exp` of it is exactly zero
/// in f32 after softmax's max subtraction, finite so that no `inf − inf` can appear.
const MASKED: f32 = -1e9;

/// Named sizes a job can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// 2 layers, width 64, 4 heads, 64 positions: ~120 k parameters over bytes. What tests use.
    Tiny,
    /// 4 layers, width 256, 8 heads, 128 positions: ~3.3 M parameters over bytes. For GPUs.
    Small,
}

impl Preset {
    /// `(layers, width, heads, context)`.
    pub fn sizes(self) -> (usize, usize, usize, usize) {
        match self {
            Preset::Tiny => (2, 64, 4, 64),
            Preset::Small => (4, 256, 8, 128),
        }
    }
}

/// The sizes of one transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    /// Positions in the position table: the longest input the model reads.
    pub context: usize,
    /// Tokens in the vocabulary (256 for bytes).
    pub vocab: usize,
}

impl Dims {
    /// Width of one attention head.
    pub fn head_width(&self) -> usize {
        self.width / self.heads
    }

    /// The parameter layout, in GPT-2's order and with its names.
    pub fn layout(&self) -> ParamLayout {
        let (w, v, c) = (self.width, self.vocab, self.context);
        let mut layout = ParamLayout::default();
        layout.push("wte.weight", &[v, w]);
        layout.push("wpe.weight", &[c, w]);
        for l in 0..self.layers {
            let p = |name: &str| format!("h.{l}.{name}");
            layout.push(p("ln_1.weight"), &[w]);
            layout.push(p("ln_1.bias"), &[w]);
            layout.push(p("attn.c_attn.weight"), &[w, 3 * w]);
            layout.push(p("attn.c_attn.bias"), &[3 * w]);
            layout.push(p("attn.c_proj.weight"), &[w, w]);
            layout.push(p("attn.c_proj.bias"), &[w]);
            layout.push(p("ln_2.weight"), &[w]);
            layout.push(p("ln_2.bias"), &[w]);
            layout.push(p("mlp.c_fc.weight"), &[w, 4 * w]);
            layout.push(p("mlp.c_fc.bias"), &[4 * w]);
            layout.push(p("mlp.c_proj.weight"), &[4 * w, w]);
            layout.push(p("mlp.c_proj.bias"), &[w]);
        }
        layout.push("ln_f.weight", &[w]);
        layout.push("ln_f.bias", &[w]);
        layout
    }

    /// The standard deviation GPT-2 initialises a tensor with: 0.02 for embeddings and weights,
    /// scaled by `1/√(2·layers)` for the projections that write into the residual stream; `None`
    /// for tensors that start at a constant (LayerNorm gains at 1, biases at 0).
    pub fn init_std(&self, name: &str) -> Option<f64> {
        if name.ends_with(".bias") {
            return None;
        }
        if name.contains("ln_") {
            return None;
        }
        if name.ends_with("c_proj.weight") {
            return Some(0.02 / (2.0 * self.layers as f64).sqrt());
        }
        Some(0.02)
    }
}

/// Logits `[lanes, batch, vocab]` at the last position of each row of `tokens: [batch, T]`
/// (token ids as floats, `T ≤ context`) under `weights`; with `readout`, only those tokens'
/// logits, `[lanes, batch, readout]` (a prompt classifier's label words: the product with the
/// embedding is taken over their rows alone).
pub fn last_logits(
    dims: &Dims,
    weights: &Weights,
    tokens: Tensor<2>,
    readout: Option<&[u32]>,
) -> Tensor<3> {
    let [batch, t] = tokens.dims();
    let h = hidden(dims, weights, tokens);
    let lanes = h.dims()[0];
    let last = h
        .reshape([lanes, batch, t, dims.width])
        .narrow(2, t - 1, 1)
        .reshape([lanes, batch, dims.width]);
    tied_output(dims, weights, last, readout)
}

/// Logits `[lanes, batch·T, vocab]` at every position (row-major over batch then position).
pub fn all_logits(dims: &Dims, weights: &Weights, tokens: Tensor<2>) -> Tensor<3> {
    let h = hidden(dims, weights, tokens);
    tied_output(dims, weights, h, None)
}

/// Rows of the token embedding the output takes at once where the tensors are made as the
/// pass reads them: GPT-2's 50 257 × 768 table would otherwise be made whole for every lane
/// (154 MB each), the largest tensor of the model by far.
const OUTPUT_ROWS_AT_ONCE: usize = 4096;

/// Final LayerNorm, then the product with the token embedding: `[lanes, n, width] → [lanes, n,
/// vocab]`, or with the `readout` tokens' rows of it only.
fn tied_output(dims: &Dims, params: &Weights, h: Tensor<3>, readout: Option<&[u32]>) -> Tensor<3> {
    let w = dims.width;
    let h = layer_norm(
        h,
        params.vector("ln_f.weight", w),
        params.vector("ln_f.bias", w),
    );
    let [lanes, n, _] = h.dims();
    let times = |table: Tensor<3>| {
        let [table_lanes, outputs, _] = table.dims();
        match (lanes, table_lanes) {
            // A frozen embedding under many lanes: one product over every lane's rows.
            (lanes, 1) if lanes > 1 => h
                .clone()
                .reshape([1, lanes * n, w])
                .matmul(table.swap_dims(1, 2))
                .reshape([lanes, n, outputs]),
            _ => h.clone().matmul(table.swap_dims(1, 2)),
        }
    };
    let table = "wte.weight";
    match readout {
        Some(ids) => times(params.rows_of(table, dims.vocab, w, ids)),
        None if params.made_on_the_fly() && dims.vocab > OUTPUT_ROWS_AT_ONCE => {
            let parts = (0..dims.vocab)
                .step_by(OUTPUT_ROWS_AT_ONCE)
                .map(|start| {
                    let end = (start + OUTPUT_ROWS_AT_ONCE).min(dims.vocab);
                    times(params.row_range(table, dims.vocab, w, start..end))
                })
                .collect();
            Tensor::cat(parts, 2)
        }
        None => times(params.matrix(table, dims.vocab, w)),
    }
}

/// The residual stream after the last block, before the final LayerNorm: `[lanes, batch·T,
/// width]`.
fn hidden(dims: &Dims, params: &Weights, tokens: Tensor<2>) -> Tensor<3> {
    let [batch, t] = tokens.dims();
    let (w, heads, hw) = (dims.width, dims.heads, dims.head_width());
    let device = params.device();

    // A frozen tensor has one lane that every lane shares: the stream takes as many lanes as
    // the tensors that made it.
    let codes = tokens.reshape([batch * t]).int();
    let tok = params.embedding("wte.weight", dims.vocab, w, codes);
    let pos = params.row_range("wpe.weight", dims.context, w, 0..t);
    let (tok_lanes, pos_lanes) = (tok.dims()[0], pos.dims()[0]);
    let lanes = tok_lanes.max(pos_lanes);
    let mut h = (tok.reshape([tok_lanes, batch, t, w]) + pos.reshape([pos_lanes, 1, t, w]))
        .reshape([lanes, batch * t, w]);

    let mut mask = vec![0.0f32; t * t];
    for (i, row) in mask.chunks_exact_mut(t).enumerate() {
        row[i + 1..].fill(MASKED);
    }
    let mask = Tensor::<3>::from_data(TensorData::new(mask, [1, t, t]), &device);
    let scale = 1.0 / (hw as f32).sqrt();

    for l in 0..dims.layers {
        let name = |n: &str| format!("h.{l}.{n}");
        // Attention.
        let x = layer_norm(
            h.clone(),
            params.vector(&name("ln_1.weight"), w),
            params.vector(&name("ln_1.bias"), w),
        );
        let qkv = params.linear(x, &name("attn.c_attn"), w, 3 * w);
        let lanes = qkv.dims()[0];
        // [lanes, batch·T, w] → [lanes·batch·heads, T, head width].
        let split_heads = |m: Tensor<3>| -> Tensor<3> {
            m.reshape([lanes, batch, t, heads, hw])
                .swap_dims(2, 3)
                .reshape([lanes * batch * heads, t, hw])
        };
        let q = split_heads(qkv.clone().narrow(2, 0, w));
        let k = split_heads(qkv.clone().narrow(2, w, w));
        let v = split_heads(qkv.narrow(2, 2 * w, w));
        let attended = attention_weights(q, k, scale, &mask).matmul(v);
        let merged = attended
            .reshape([lanes, batch, heads, t, hw])
            .swap_dims(2, 3)
            .reshape([lanes, batch * t, w]);
        h = h + params.linear(merged, &name("attn.c_proj"), w, w);
        // MLP.
        let x = layer_norm(
            h.clone(),
            params.vector(&name("ln_2.weight"), w),
            params.vector(&name("ln_2.bias"), w),
        );
        let up = params.linear(x, &name("mlp.c_fc"), w, 4 * w);
        h = h + params.linear(gelu(up), &name("mlp.c_proj"), 4 * w, w);
    }
    h
}

/// Attention's weights `softmax(scale·q·kᵀ)` over `[n, T, head width]` queries and keys, each
/// query weighing only itself and earlier positions (`mask` is 0 on and below the diagonal,
/// `MASKED` above).
fn attention_weights(q: Tensor<3>, k: Tensor<3>, scale: f32, mask: &Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "pretrain")]
    if crate::fused::applies(&q) {
        let scores = q.clone().matmul(k.clone().swap_dims(1, 2));
        if let Some(weights) = crate::fused::causal_softmax(&scores, scale) {
            return weights;
        }
    }
    composed_attention_weights(q, k, scale, mask)
}

fn composed_attention_weights(
    q: Tensor<3>,
    k: Tensor<3>,
    scale: f32,
    mask: &Tensor<3>,
) -> Tensor<3> {
    // The scale goes on the queries, a T-th of the scores' size.
    let scores = (q * scale).matmul(k.swap_dims(1, 2));
    activation::softmax(scores + mask.clone(), 2)
}

/// LayerNorm over the last dimension, with gain and bias `[lanes, 1, width]`.
fn layer_norm(x: Tensor<3>, gain: Tensor<3>, bias: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "pretrain")]
    if let Some(normed) = crate::fused::layer_norm(&x, &gain, &bias, LN_EPS) {
        return normed;
    }
    composed_layer_norm(x, gain, bias)
}

fn composed_layer_norm(x: Tensor<3>, gain: Tensor<3>, bias: Tensor<3>) -> Tensor<3> {
    let centred = x.clone() - x.mean_dim(2);
    let variance = (centred.clone() * centred.clone()).mean_dim(2);
    centred / (variance + LN_EPS).sqrt() * gain + bias
}

/// GPT-2's GELU, the tanh approximation `x·½(1 + tanh u)`, written as the equal `x·σ(2u)`:
/// a sigmoid is one cheap pass forward and backward where `tanh` costs several (measured: the
/// tanh form was a sixth of a pre-training step on the CPU).
fn gelu(x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "pretrain")]
    if let Some(y) = crate::fused::gelu(&x) {
        return y;
    }
    composed_gelu(x)
}

fn composed_gelu(x: Tensor<3>) -> Tensor<3> {
    let cube = x.clone() * x.clone() * x.clone();
    let twice_inner = (x.clone() + cube * 0.044_715) * (2.0 * 0.797_884_6);
    x * activation::sigmoid(twice_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exchange, Job, Simulation, block_on, cpu_device};
    use std::sync::Arc;

    #[test]
    fn tiny_lm_learns_from_one_byte_steps() {
        let job = Arc::new(Job::tiny_lm());
        let data = crate::text::corpus_dataset(crate::text::Corpus::Tales, 32, 1);
        let held_out = data.test.shard(0, 8);
        let mut sim = Simulation::new(job, &data, 4, 1, Exchange::Byte, cpu_device());
        let before = block_on(sim.evaluate(&held_out)).unwrap().loss;
        while sim.version().0 < 500 {
            block_on(sim.round()).unwrap();
        }
        let after = block_on(sim.evaluate(&held_out)).unwrap().loss;
        eprintln!("held-out loss {before} -> {after} nats/byte");
        assert!(after < before - 0.3, "held-out loss {before} -> {after}");
        let hashes = block_on(sim.hashes()).unwrap();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas diverged");
    }

    /// The fused kernels of first-order training (`fused.rs`) compute what burn's composed
    /// operations compute, forward and backward, including the lanes of a LayerNorm's gain.
    #[cfg(feature = "pretrain")]
    #[test]
    fn fused_kernels_match_the_composed_operations() {
        use burn::tensor::{Distribution, Tolerance};
        let device = cpu_device();
        let random = |shape: [usize; 3], scale: f64| {
            Tensor::<3>::random(shape, Distribution::Normal(0.5, scale), &device)
                .autodiff()
                .require_grad()
        };
        // Sum of the output weighted by fixed random numbers, so every output element's
        // gradient differs.
        let weigh = |y: Tensor<3>, seed: Tensor<3>| (y * seed).sum();
        let close = |a: Tensor<3>, b: Tensor<3>, what: &str| {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(2e-5));
            eprintln!("{what}: equal");
        };

        // GELU over values well past where the tanh saturates.
        let x = random([2, 8, 40], 3.0);
        let seed = Tensor::<3>::random([2, 8, 40], Distribution::Default, &device);
        let fused = crate::fused::gelu(&x).expect("an autodiff CPU tensor takes the fused path");
        let composed = composed_gelu(x.clone());
        close(fused.clone().inner(), composed.clone().inner(), "gelu");
        let (gf, gc) = (
            weigh(fused, seed.clone()).backward(),
            weigh(composed, seed).backward(),
        );
        close(x.grad(&gf).unwrap(), x.grad(&gc).unwrap(), "gelu gradient");

        // Attention's weights under the causal mask, from queries and keys of a head's size.
        let (n, t, hw) = (6, 9, 5);
        let (q, k) = (random([n, t, hw], 2.0), random([n, t, hw], 2.0));
        let mut mask = vec![0.0f32; t * t];
        for (i, row) in mask.chunks_exact_mut(t).enumerate() {
            row[i + 1..].fill(MASKED);
        }
        let mask = Tensor::<3>::from_data(TensorData::new(mask, [1, t, t]), &device);
        let seed = Tensor::<3>::random([n, t, t], Distribution::Default, &device);
        let fused = attention_weights(q.clone(), k.clone(), 0.4, &mask);
        let composed = composed_attention_weights(q.clone(), k.clone(), 0.4, &mask);
        close(fused.clone().inner(), composed.clone().inner(), "attention");
        let (gf, gc) = (
            weigh(fused, seed.clone()).backward(),
            weigh(composed, seed).backward(),
        );
        close(
            q.grad(&gf).unwrap(),
            q.grad(&gc).unwrap(),
            "attention: queries' gradient",
        );
        close(
            k.grad(&gf).unwrap(),
            k.grad(&gc).unwrap(),
            "attention: keys' gradient",
        );

        // LayerNorm with one gain for every lane, then with a gain per lane.
        for gain_lanes in [1, 3] {
            let x = random([3, 5, 24], 2.0);
            let gain = random([gain_lanes, 1, 24], 1.0);
            let bias = random([gain_lanes, 1, 24], 1.0);
            let seed = Tensor::<3>::random([3, 5, 24], Distribution::Default, &device);
            let fused = crate::fused::layer_norm(&x, &gain, &bias, LN_EPS).expect("fused path");
            let composed = composed_layer_norm(x.clone(), gain.clone(), bias.clone());
            close(
                fused.clone().inner(),
                composed.clone().inner(),
                "layer norm",
            );
            let gf = weigh(fused, seed.clone()).backward();
            let gc = weigh(composed, seed).backward();
            for (leaf, what) in [(&x, "x"), (&gain, "gain"), (&bias, "bias")] {
                close(leaf.grad(&gf).unwrap(), leaf.grad(&gc).unwrap(), what);
            }
        }

        // Without autodiff, the composed operations run.
        assert!(crate::fused::gelu(&x.inner()).is_none());
    }

    #[test]
    fn tiny_has_gpt2_names_and_about_120k_parameters() {
        let (layers, width, heads, context) = Preset::Tiny.sizes();
        let dims = Dims {
            layers,
            width,
            heads,
            context,
            vocab: 256,
        };
        let layout = dims.layout();
        assert_eq!(layout.d(), 120_576);
        assert_eq!(layout.params()[0].name, "wte.weight");
        assert_eq!(
            layout.get("h.1.attn.c_attn.weight").unwrap().shape,
            [64, 192]
        );
        assert_eq!(layout.params().last().unwrap().name, "ln_f.bias");
        assert_eq!(dims.init_std("h.0.ln_1.weight"), None);
        assert_eq!(dims.init_std("h.0.mlp.c_fc.bias"), None);
        assert_eq!(dims.init_std("h.0.attn.c_proj.weight"), Some(0.01));
    }
}
