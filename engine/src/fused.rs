//! Fused CPU kernels for first-order training: GELU, the causal attention softmax and LayerNorm,
//! each one pass forward and one pass backward over burn's CPU tensors, registered with burn's
//! autodiff as single operations.
//!
//! Why: under autodiff burn composes these from elementwise operations (LayerNorm is nine, the
//! masked softmax six, GELU seven), and every one of them allocates its output, runs its own
//! pass and records its own backward step; the exponentials go through scalar `expf`, twice
//! (autodiff recomputes `exp` and `sigmoid` in the backward pass). Measured on the small
//! preset, those passes were as much time as every matrix product together. Fused, they are
//! one pass each way, the exponential is a polynomial the compiler vectorises, and the masked
//! half of the attention scores is never exponentiated.
//!
//! The transformer calls these where its tensor is tracked by autodiff on the CPU and falls
//! back to composing burn's operations everywhere else (the swarm's forward passes, wgpu, the
//! page): same functions of the same inputs, within float rounding. Forward passes need no bit
//! identity across peers; only the update does, and nothing here touches it.

use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor, Layout};
use burn_std::{Bytes, Shape};
use rayon::prelude::*;

/// A CPU tensor tracked by autodiff.
type AutodiffTensor = burn_backend::tensor::FloatTensor<Autodiff<Flex>>;

/// Elements one parallel task handles: enough to amortise scheduling, few enough that a
/// layer's activations split across every core.
const CHUNK: usize = 1 << 14;

/// GPT-2's tanh-approximate GELU, `x·σ(2u)` with `u = √(2/π)·(x + 0.044715·x³)`.
pub fn gelu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let x = tracked(x)?;
    #[derive(Debug)]
    struct Gelu;
    impl Backward<Flex, 1> for Gelu {
        type State = FlexTensor;
        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [parent] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            if let Some(parent) = parent {
                let (x, g) = (values(&ops.state), contiguous(grad));
                let out = x
                    .par_iter()
                    .with_min_len(CHUNK)
                    .zip(values(&g))
                    .map(|(&x, &g)| g * gelu_slope(x))
                    .collect();
                grads.register::<Flex>(parent.id, tensor(out, ops.state.layout().shape()));
            }
        }
    }
    let input = contiguous(x.primitive().clone());
    let out = values(&input)
        .par_iter()
        .with_min_len(CHUNK)
        .map(|&x| x * sigmoid(GELU_2C * (x + GELU_A * x * x * x)))
        .collect();
    let out = tensor(out, input.layout().shape());
    let prep = Gelu.prepare::<NoCheckpointing>([x.node()]).compute_bound();
    Some(untyped(match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish(input, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }))
}

/// Whether `x` is a tensor these kernels take: tracked by autodiff, on the CPU, in f32.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    tracked(x).is_some()
}

/// `softmax(scale·scores)` over the last dimension of attention scores `[n, T, T]` under the
/// causal mask: row `i` weighs keys `0..=i`, and later keys get exactly zero.
pub fn causal_softmax(scores: &Tensor<3>, scale: f32) -> Option<Tensor<3>> {
    let scores = tracked(scores)?;
    #[derive(Debug)]
    struct CausalSoftmax;
    impl Backward<Flex, 1> for CausalSoftmax {
        /// The output and the scale: the gradient is `scale·y ⊙ (g − Σ g ⊙ y)` along each row.
        type State = (FlexTensor, f32);
        fn backward(
            self,
            ops: Ops<(FlexTensor, f32), 1>,
            grads: &mut Gradients,
            _: &mut Checkpointer,
        ) {
            let [parent] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            if let Some(parent) = parent {
                let (y, scale) = &ops.state;
                let shape = y.layout().shape().clone();
                let t = shape[2];
                let (y, g) = (values(y), contiguous(grad));
                let mut out = vec![0.0f32; y.len()];
                out.par_chunks_mut(t * t)
                    .zip(y.par_chunks(t * t).zip(values(&g).par_chunks(t * t)))
                    .for_each(|(out, (y, g))| {
                        for i in 0..t {
                            let row = i * t..i * t + i + 1;
                            let (y, g) = (&y[row.clone()], &g[row.clone()]);
                            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                            for ((o, &y), &g) in out[row].iter_mut().zip(y).zip(g) {
                                *o = scale * y * (g - dot);
                            }
                        }
                    });
                grads.register::<Flex>(parent.id, tensor(out, &shape));
            }
        }
    }
    let input = contiguous(scores.primitive().clone());
    let shape = input.layout().shape().clone();
    let t = shape[2];
    if shape[1] != t {
        return None;
    }
    let mut out = vec![0.0f32; values(&input).len()];
    out.par_chunks_mut(t * t)
        .zip(values(&input).par_chunks(t * t))
        .for_each(|(out, x)| {
            for i in 0..t {
                let (x, y) = (&x[i * t..i * t + i + 1], &mut out[i * t..i * t + i + 1]);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = exp(scale * (x - max));
                    sum += *y;
                }
                let inverse = 1.0 / sum;
                y.iter_mut().for_each(|y| *y *= inverse);
            }
        });
    let out = tensor(out, &shape);
    let prep = CausalSoftmax
        .prepare::<NoCheckpointing>([scores.node()])
        .compute_bound();
    Some(untyped(match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }))
}

/// LayerNorm over the last dimension of `x: [lanes, n, width]` with gain and bias `[1 or
/// lanes, 1, width]`.
pub fn layer_norm(
    x: &Tensor<3>,
    gain: &Tensor<3>,
    bias: &Tensor<3>,
    epsilon: f32,
) -> Option<Tensor<3>> {
    let (x, gain, bias) = (tracked(x)?, tracked(gain)?, tracked(bias)?);
    let input = contiguous(x.primitive().clone());
    let [lanes, n, w] = dims3(input.layout().shape());
    let gains = contiguous(gain.primitive().clone());
    let biases = contiguous(bias.primitive().clone());
    let gain_lanes = dims3(gains.layout().shape())[0];
    if dims3(biases.layout().shape())[0] != gain_lanes || !(gain_lanes == 1 || gain_lanes == lanes)
    {
        return None;
    }

    #[derive(Debug)]
    struct LayerNorm;
    /// The input, the gains, and each row's mean and reciprocal standard deviation.
    #[derive(Debug, Clone)]
    struct Saved {
        x: FlexTensor,
        gain: FlexTensor,
        mean: Vec<f32>,
        rstd: Vec<f32>,
    }
    impl Backward<Flex, 3> for LayerNorm {
        type State = Saved;
        fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_gain, node_bias] = ops.parents;
            let grad = contiguous(grads.consume::<Flex>(&ops.node));
            let Saved {
                x,
                gain,
                mean,
                rstd,
            } = ops.state;
            let [lanes, n, w] = dims3(x.layout().shape());
            let gain_lanes = dims3(gain.layout().shape())[0];
            let (x, dy, gains) = (values(&x), values(&grad), values(&gain));
            let rows_per_task = (CHUNK / w).max(1);
            let mut dx = vec![0.0f32; x.len()];
            // Each task: its rows' dx, and its share of dgain and dbias per gain lane.
            let partials: Vec<(usize, Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(rows_per_task * w)
                .enumerate()
                .map(|(task, dx)| {
                    let first = task * rows_per_task;
                    let mut dgain = vec![0.0f32; gain_lanes * w];
                    let mut dbias = vec![0.0f32; gain_lanes * w];
                    for (k, dx) in dx.chunks_exact_mut(w).enumerate() {
                        let row = first + k;
                        let lane = (row / n) % gain_lanes;
                        let g = &gains[lane * w..(lane + 1) * w];
                        let (xr, dyr) = (&x[row * w..(row + 1) * w], &dy[row * w..(row + 1) * w]);
                        let (mu, r) = (mean[row], rstd[row]);
                        let (mut m1, mut m2) = (0.0f32, 0.0f32);
                        let dgain = &mut dgain[lane * w..(lane + 1) * w];
                        let dbias = &mut dbias[lane * w..(lane + 1) * w];
                        for j in 0..w {
                            let normed = (xr[j] - mu) * r;
                            let scaled = dyr[j] * g[j];
                            m1 += scaled;
                            m2 += scaled * normed;
                            dgain[j] += dyr[j] * normed;
                            dbias[j] += dyr[j];
                        }
                        let (m1, m2) = (m1 / w as f32, m2 / w as f32);
                        for j in 0..w {
                            let normed = (xr[j] - mu) * r;
                            dx[j] = r * (dyr[j] * g[j] - m1 - normed * m2);
                        }
                    }
                    (task, dgain, dbias)
                })
                .collect();
            let mut dgain = vec![0.0f32; gain_lanes * w];
            let mut dbias = vec![0.0f32; gain_lanes * w];
            for (_, g, b) in &partials {
                dgain.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                dbias.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
            let param_shape = Shape::from(vec![gain_lanes, 1, w]);
            if let Some(node) = node_x {
                grads.register::<Flex>(node.id, tensor(dx, &Shape::from(vec![lanes, n, w])));
            }
            if let Some(node) = node_gain {
                grads.register::<Flex>(node.id, tensor(dgain, &param_shape));
            }
            if let Some(node) = node_bias {
                grads.register::<Flex>(node.id, tensor(dbias, &param_shape));
            }
        }
    }

    let xs = values(&input);
    let (g, b) = (values(&gains), values(&biases));
    let rows = lanes * n;
    let mut mean = vec![0.0f32; rows];
    let mut rstd = vec![0.0f32; rows];
    let mut out = vec![0.0f32; xs.len()];
    let rows_per_task = (CHUNK / w).max(1);
    out.par_chunks_mut(rows_per_task * w)
        .zip(mean.par_chunks_mut(rows_per_task))
        .zip(rstd.par_chunks_mut(rows_per_task))
        .enumerate()
        .for_each(|(task, ((out, mean), rstd))| {
            for (k, y) in out.chunks_exact_mut(w).enumerate() {
                let row = task * rows_per_task + k;
                let lane = (row / n) % gain_lanes;
                let (g, b) = (&g[lane * w..(lane + 1) * w], &b[lane * w..(lane + 1) * w]);
                let xr = &xs[row * w..(row + 1) * w];
                let mu = xr.iter().sum::<f32>() / w as f32;
                let var = xr.iter().map(|x| (x - mu) * (x - mu)).sum::<f32>() / w as f32;
                let r = 1.0 / (var + epsilon).sqrt();
                for j in 0..w {
                    y[j] = (xr[j] - mu) * r * g[j] + b[j];
                }
                mean[k] = mu;
                rstd[k] = r;
            }
        });
    let out = tensor(out, input.layout().shape());
    let prep = LayerNorm
        .prepare::<NoCheckpointing>([x.node(), gain.node(), bias.node()])
        .compute_bound();
    Some(untyped(match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                x: input,
                gain: gains,
                mean,
                rstd,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }))
}

/// `2·√(2/π)` and GELU's cubic coefficient.
const GELU_2C: f32 = 2.0 * 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// The derivative of `x·σ(2u(x))`: `s + x·s·(1 − s)·2u'(x)`.
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let s = sigmoid(GELU_2C * (x + GELU_A * x * x * x));
    s + x * s * (1.0 - s) * GELU_2C * (1.0 + 3.0 * GELU_A * x * x)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// `eᶻ` to about two units in the last place, branch-free so that loops over it vectorise
/// (`f32::exp` is a call the compiler cannot): `z = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a
/// degree-6 polynomial for `eʳ`, and `2ⁿ` put straight into the exponent bits. Inputs are
/// clamped to where the result is a normal float, so a very negative `z` gives ~1e-38, not 0:
/// nothing here relies on an exact zero.
#[inline(always)]
fn exp(z: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let z = z.clamp(-87.0, 88.0);
    let shifted = z * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = z - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    p * f32::from_bits(exponent << 23)
}

/// The autodiff CPU tensor under `x`, when `x` is one (in f32).
fn tracked<const D: usize>(x: &Tensor<D>) -> Option<AutodiffTensor> {
    if !x.is_autodiff() || x.dtype() != DType::F32 {
        return None;
    }
    x.clone().try_into_primitive::<Autodiff<Flex>>().ok()
}

fn untyped<const D: usize>(x: AutodiffTensor) -> Tensor<D> {
    Tensor::from_primitive::<Autodiff<Flex>>(x)
}

fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}

fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>()
        .expect("made contiguous in f32 before reading")
}

/// A contiguous f32 tensor over `values`, without the copy `FlexTensor::empty` makes.
fn tensor(values: Vec<f32>, shape: &Shape) -> FlexTensor {
    debug_assert_eq!(values.len(), shape.num_elements());
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape.clone()),
        DType::F32,
    )
}

fn dims3(shape: &Shape) -> [usize; 3] {
    [shape[0], shape[1], shape[2]]
}
