//! Models: a parameter layout, initial weights from a seed, and a forward pass over a flat `θ`.
//!
//! A forward pass takes `θ` as one 1-D tensor and slices it into the model's tensors, so the
//! engine can hand it a perturbed copy (or, on a GPU, a kernel's output buffer) without knowing
//! anything about layers.

use crate::layout::ParamLayout;
use crate::trained::{Plan, TrainError, TrainSpec};
use crate::transformer::{Dims, Preset};
use crate::weights::{Frozen, Trained, Weights};
use burn::tensor::{Int, Tensor, TensorData, activation};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A model as a job file describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// A multi-layer perceptron classifier.
    Mlp {
        /// Widths of the hidden layers.
        hidden: Vec<usize>,
        #[serde(default)]
        activation: Activation,
    },
    /// A character-level language model: each of the previous `task.features` bytes looks up
    /// an `embedding`-wide vector, the vectors are concatenated and an MLP predicts the next
    /// byte (`task.classes` = 256). The shape of Bengio et al.'s neural probabilistic LM.
    CharLm {
        /// Width of each byte's embedding.
        embedding: usize,
        /// Widths of the hidden layers.
        hidden: Vec<usize>,
        #[serde(default)]
        activation: Activation,
    },
    /// A GPT-2 style transformer language model that predicts the token after the previous
    /// `task.features` tokens (`task.classes` is the vocabulary: 256 for bytes). Sizes come
    /// from `preset` (`tiny`, `small`), each overridden by an explicit key, or from the four
    /// keys alone.
    Transformer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preset: Option<Preset>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layers: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heads: Option<usize>,
        /// Positions in the position table (at least `task.features`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<usize>,
    },
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::Mlp {
            hidden: vec![32, 32],
            activation: Activation::Tanh,
        }
    }
}

/// Hidden-layer non-linearity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Tanh,
    Relu,
}

impl Activation {
    /// The gain its weights are initialised with (LeCun-uniform scaled by it).
    fn gain(self) -> f64 {
        match self {
            Activation::Tanh => 5.0 / 3.0,
            Activation::Relu => std::f64::consts::SQRT_2,
        }
    }
}

/// A model spec that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("an MLP needs at least one hidden layer")]
    NoHiddenLayers,
    #[error("layer widths must be between 1 and 4096; got {0}")]
    Width(usize),
    #[error(
        "a char_lm's vocabulary, task.classes, must be 256 for bytes or the tokenizer's size \
         (2 to 4096), not {0}"
    )]
    Vocabulary(usize),
    #[error("a char_lm reads 1 to 256 previous bytes: task.features = {0}")]
    Context(usize),
    #[error("a transformer needs `{0}` (or a `preset`)")]
    MissingSize(&'static str),
    #[error("transformer: {0}")]
    TransformerSize(String),
}

/// A model built for a given number of input features and classes.
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    /// What kind of network it is, with that kind's sizes: one place per kind, so a new kind
    /// is a new variant the compiler follows everywhere.
    architecture: Architecture,
    /// Input features (for a language model: tokens of context).
    features: usize,
    /// For a language model that classifies by prompt: per class, the vocabulary token whose
    /// logit is its score ([`crate::prompt`]).
    readout: Option<Vec<u32>>,
    /// Every tensor of the model, in order: what a checkpoint of it holds.
    base_layout: ParamLayout,
    /// What trains: everything, or a part of a frozen base.
    plan: Plan,
    /// θ's tensors: the trained ones ([`Plan::trained_layout`]).
    layout: ParamLayout,
}

/// The kinds of network a job can name.
#[derive(Debug, Clone)]
enum Architecture {
    /// An MLP over the input features: `widths` from its input to its output.
    Mlp {
        widths: Vec<usize>,
        activation: Activation,
    },
    /// An MLP over the embeddings (`vocabulary × width`) of its input tokens, predicting the
    /// next token; `widths` from the concatenated embeddings to the vocabulary.
    CharLm {
        vocabulary: usize,
        width: usize,
        widths: Vec<usize>,
        activation: Activation,
    },
    /// GPT-2's architecture.
    Transformer(Dims),
}

impl Model {
    /// Builds the model for `features` inputs and `classes` outputs.
    pub fn new(spec: &ModelSpec, features: usize, classes: usize) -> Result<Self, ModelError> {
        let (architecture, layout) = match spec {
            ModelSpec::Transformer {
                preset,
                layers,
                width,
                heads,
                context,
            } => {
                let sizes = TransformerSizes {
                    preset: *preset,
                    layers: *layers,
                    width: *width,
                    heads: *heads,
                    context: *context,
                };
                let dims = transformer_dims(sizes, features, classes)?;
                (Architecture::Transformer(dims), dims.layout())
            }
            ModelSpec::Mlp { hidden, activation } => {
                let (widths, layout) = mlp_layers(None, features, hidden, classes)?;
                let activation = *activation;
                (Architecture::Mlp { widths, activation }, layout)
            }
            ModelSpec::CharLm {
                embedding,
                hidden,
                activation,
            } => {
                if !(2..=4096).contains(&classes) {
                    return Err(ModelError::Vocabulary(classes));
                }
                if !(1..=256).contains(&features) {
                    return Err(ModelError::Context(features));
                }
                if *embedding == 0 || *embedding > 4096 {
                    return Err(ModelError::Width(*embedding));
                }
                let table = (classes, *embedding);
                let (widths, layout) = mlp_layers(Some(table), features, hidden, classes)?;
                let architecture = Architecture::CharLm {
                    vocabulary: classes,
                    width: *embedding,
                    widths,
                    activation: *activation,
                };
                (architecture, layout)
            }
        };
        Ok(Model {
            spec: spec.clone(),
            architecture,
            features,
            readout: None,
            base_layout: layout.clone(),
            plan: Plan::All,
            layout,
        })
    }

    /// Trains what `spec` names instead of every parameter: θ becomes that part, and the rest
    /// a frozen base.
    pub fn train(&mut self, spec: &TrainSpec) -> Result<(), TrainError> {
        let blocks = self.transformer().map(|dims| dims.layers);
        self.plan = Plan::new(spec, &self.base_layout, blocks)?;
        self.layout = self.plan.trained_layout(&self.base_layout);
        Ok(())
    }

    /// What trains.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every tensor of the model (θ's layout where everything trains).
    pub fn base_layout(&self) -> &ParamLayout {
        &self.base_layout
    }

    /// The tensors of a pass: `thetas: [lanes, d]` (θ's copies) beside the `frozen` base.
    pub fn weights<'a>(&'a self, thetas: &'a Tensor<2>, frozen: &'a Frozen) -> Weights<'a> {
        Weights {
            trained: Trained::Flat {
                layout: &self.layout,
                thetas,
            },
            frozen,
            lora_scale: self.lora_scale(),
        }
    }

    /// The tensors of a pass whose trained tensors are made from θ on the host as the pass
    /// reads them, one `[lanes, len]` per tensor: `θ + scale·z(seed)` for each lane. `inputs`
    /// are the pass's inputs on the host (a table's rows are made only for the codes read).
    pub fn weights_perturbed<'a>(
        &'a self,
        theta: &'a [f32],
        lanes: &'a [(protocol::DirectionSeed, f32)],
        frozen: &'a Frozen,
        device: &'a burn::tensor::Device,
        inputs: &'a [f32],
    ) -> Weights<'a> {
        Weights {
            trained: Trained::Perturbed {
                layout: &self.layout,
                theta,
                lanes,
                device,
                inputs,
            },
            frozen,
            lora_scale: self.lora_scale(),
        }
    }

    /// As [`Model::weights_perturbed`], θ on a GPU: each trained tensor's lanes written by
    /// the perturb kernel from its range of θ as the pass reads it (a table's only for the
    /// rows read).
    #[cfg(feature = "wgpu")]
    pub fn weights_on_gpu<'a>(
        &'a self,
        gpu: &'a crate::gpu::GpuWeights,
        lanes: &'a [(protocol::DirectionSeed, f32)],
        frozen: &'a Frozen,
        inputs: &'a [f32],
    ) -> Weights<'a> {
        Weights {
            trained: Trained::OnGpu {
                layout: &self.layout,
                gpu,
                lanes,
                inputs,
            },
            frozen,
            lora_scale: self.lora_scale(),
        }
    }

    /// The scale of a LoRA layer's adapted product (0 without adapters).
    pub fn lora_scale(&self) -> f32 {
        match self.plan {
            Plan::Lora { scale, .. } => scale,
            Plan::All | Plan::Subset(_) => 0.0,
        }
    }

    /// Whether this is a language model (inputs are token codes, the label the next token).
    pub fn is_language_model(&self) -> bool {
        self.reads_tokens() && self.readout.is_none()
    }

    /// Whether the inputs are token codes: a language model, or one that classifies prompts.
    pub fn reads_tokens(&self) -> bool {
        match self.architecture {
            Architecture::Mlp { .. } => false,
            Architecture::CharLm { .. } | Architecture::Transformer(_) => true,
        }
    }

    /// Makes a language model a prompt classifier: its classes become `tokens`' logits at the
    /// last position, in that order.
    pub fn read_out(&mut self, tokens: Vec<u32>) {
        assert!(
            self.reads_tokens(),
            "only a language model reads out tokens"
        );
        let vocabulary = self.vocabulary();
        assert!(
            tokens.iter().all(|&t| (t as usize) < vocabulary),
            "read-out tokens are in the vocabulary"
        );
        self.readout = Some(tokens);
    }

    /// The vocabulary tokens whose logits are the classes, for a prompt classifier.
    pub fn readout(&self) -> Option<&[u32]> {
        self.readout.as_deref()
    }

    /// Tokens in a language model's vocabulary (the width of its output layer).
    pub fn vocabulary(&self) -> usize {
        self.outputs()
    }

    /// Width of the output layer: a classifier's classes, a language model's vocabulary.
    fn outputs(&self) -> usize {
        match &self.architecture {
            Architecture::Mlp { widths, .. } | Architecture::CharLm { widths, .. } => {
                *widths.last().expect("widths has input and output")
            }
            Architecture::Transformer(dims) => dims.vocab,
        }
    }

    /// The transformer's sizes, for a transformer.
    pub fn transformer(&self) -> Option<&Dims> {
        match &self.architecture {
            Architecture::Transformer(dims) => Some(dims),
            Architecture::Mlp { .. } | Architecture::CharLm { .. } => None,
        }
    }

    /// The parameter order.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The spec this model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Number of output classes: a prompt classifier's label words, else the output layer's
    /// width (a language model's vocabulary).
    pub fn classes(&self) -> usize {
        match &self.readout {
            Some(tokens) => tokens.len(),
            None => self.outputs(),
        }
    }

    /// Number of input features (for a char LM, the context length in bytes).
    pub fn features(&self) -> usize {
        self.features
    }

    /// Initial weights of the whole model (in [`Model::base_layout`]'s order), generated on the
    /// CPU from a ChaCha key: uniform in `±gain·√(3/fan_in)`
    /// for weights (LeCun-uniform scaled by the activation's gain), zero biases; for a
    /// transformer, uniform with GPT-2's standard deviations ([`Dims::init_std`]) and LayerNorm
    /// gains at 1. Integer arithmetic and single roundings only, so every platform gets the same
    /// bits.
    pub fn init(&self, key: [u8; 32]) -> Vec<f32> {
        let mut rng = ChaCha8Rng::from_seed(key);
        let mut theta = vec![0.0f32; self.base_layout.d()];
        for p in self.base_layout.params() {
            let bound = match &self.architecture {
                Architecture::Transformer(dims) => {
                    if p.name.contains("ln_") && p.name.ends_with(".weight") {
                        theta[p.range()].fill(1.0);
                    }
                    dims.init_std(&p.name).map(|std| (std * 3f64.sqrt()) as f32)
                }
                Architecture::Mlp { activation, .. } | Architecture::CharLm { activation, .. } => {
                    let gain = activation.gain();
                    (p.shape.len() == 2).then(|| (gain * (3.0 / p.shape[0] as f64).sqrt()) as f32)
                }
            };
            if let Some(bound) = bound {
                for v in &mut theta[p.range()] {
                    // 24 random bits -> [0, 1) exactly, then one rounded multiply-add.
                    let unit = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                    *v = (2.0 * unit - 1.0) * bound;
                }
            }
        }
        theta
    }

    /// Logits `[batch, classes]` for inputs `x: [batch, features]` under weights `theta: [d]`
    /// beside the `frozen` base. A char LM's inputs are byte codes (0–255) as floats.
    pub fn forward(&self, theta: &Tensor<1>, frozen: &Frozen, x: Tensor<2>) -> Tensor<2> {
        let d = self.layout.d();
        let thetas = theta.clone().reshape([1, d]);
        let [batch, _] = x.dims();
        self.forward_lanes(&thetas, frozen, x)
            .reshape([batch, self.classes()])
    }

    /// Logits `[lanes, batch, classes]` for inputs `x: [batch, features]` under `lanes` weight
    /// vectors `thetas: [lanes, d]` at once, beside the `frozen` base they share: every layer
    /// is one batched matmul over the lanes, so `K` perturbed copies cost one pass, not `K`.
    /// A prompt classifier's logits are its label words' logits at the last position.
    pub fn forward_lanes(&self, thetas: &Tensor<2>, frozen: &Frozen, x: Tensor<2>) -> Tensor<3> {
        self.forward_weights(&self.weights(thetas, frozen), x)
    }

    /// [`Model::forward_lanes`] over weights however held.
    pub fn forward_weights(&self, weights: &Weights, x: Tensor<2>) -> Tensor<3> {
        let readout = || {
            self.readout.as_ref().map(|tokens| {
                let ids = tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>();
                Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &weights.device())
            })
        };
        let lanes = weights.lanes();
        let [batch, features] = x.dims();
        // The transformer reads out inside (over the label words' rows alone); the others
        // select their logits after.
        let (logits, readout) = match &self.architecture {
            Architecture::Transformer(dims) => (
                crate::transformer::last_logits(dims, weights, x, self.readout.as_deref()),
                None,
            ),
            Architecture::Mlp { widths, activation } => {
                let h = x.unsqueeze::<3>().expand([lanes, batch, features]);
                (mlp(weights, h, widths, *activation), readout())
            }
            Architecture::CharLm {
                vocabulary,
                width,
                widths,
                activation,
            } => {
                let codes = x.reshape([batch * features]).int();
                let rows = weights.embedding("embedding", *vocabulary, *width, codes);
                let table_lanes = rows.dims()[0];
                let h = rows.reshape([table_lanes, batch, features * width]);
                (mlp(weights, h, widths, *activation), readout())
            }
        };
        let logits = match readout {
            Some(ids) => logits.select(2, ids),
            None => logits,
        };
        // Every trained tensor feeds the output, so the lanes reach it.
        debug_assert_eq!(logits.dims()[0], lanes, "one row of logits per lane");
        logits
    }
}

/// The MLP's layers (`layer0`, `layer1`, …) over `h: [lanes or 1, batch, widths[0]]`: a
/// product and a bias each, the activation between them.
fn mlp(weights: &Weights, mut h: Tensor<3>, widths: &[usize], activation: Activation) -> Tensor<3> {
    let layers = widths.len() - 1;
    for (l, w) in widths.windows(2).enumerate() {
        let weight = weights.matrix(&format!("layer{l}.weight"), w[0], w[1]);
        let bias = weights.vector(&format!("layer{l}.bias"), w[1]);
        h = h.matmul(weight) + bias;
        if l + 1 < layers {
            h = match activation {
                Activation::Tanh => h.tanh(),
                Activation::Relu => activation::relu(h),
            };
        }
    }
    h
}

/// An MLP's widths from its input (the features, or their embeddings: `table` is
/// `(vocabulary, width)`) to `classes`, checked, and its parameters in order.
fn mlp_layers(
    table: Option<(usize, usize)>,
    features: usize,
    hidden: &[usize],
    classes: usize,
) -> Result<(Vec<usize>, ParamLayout), ModelError> {
    if hidden.is_empty() {
        return Err(ModelError::NoHiddenLayers);
    }
    let input = table.map_or(features, |(_, width)| features * width);
    let mut widths = vec![input];
    widths.extend(hidden);
    widths.push(classes);
    if let Some(&w) = widths.iter().find(|&&w| w == 0 || w > 4096) {
        return Err(ModelError::Width(w));
    }
    let mut layout = ParamLayout::default();
    if let Some((vocabulary, width)) = table {
        layout.push("embedding".to_string(), &[vocabulary, width]);
    }
    for (l, w) in widths.windows(2).enumerate() {
        layout.push(format!("layer{l}.weight"), &[w[0], w[1]]);
        layout.push(format!("layer{l}.bias"), &[w[1]]);
    }
    Ok((widths, layout))
}

/// A transformer spec's sizes, each explicit or from its preset.
struct TransformerSizes {
    preset: Option<Preset>,
    layers: Option<usize>,
    width: Option<usize>,
    heads: Option<usize>,
    context: Option<usize>,
}

/// The transformer's sizes from its spec, checked.
fn transformer_dims(
    spec: TransformerSizes,
    features: usize,
    classes: usize,
) -> Result<Dims, ModelError> {
    let TransformerSizes {
        preset,
        layers,
        width,
        heads,
        context,
    } = spec;
    let sizes = preset.map(Preset::sizes);
    let pick = |explicit: Option<usize>, from_preset: Option<usize>, name| {
        explicit
            .or(from_preset)
            .ok_or(ModelError::MissingSize(name))
    };
    let dims = Dims {
        layers: pick(layers, sizes.map(|s| s.0), "layers")?,
        width: pick(width, sizes.map(|s| s.1), "width")?,
        heads: pick(heads, sizes.map(|s| s.2), "heads")?,
        context: pick(context, sizes.map(|s| s.3), "context")?,
        vocab: classes,
    };
    let bad = |why: String| Err(ModelError::TransformerSize(why));
    if !(1..=48).contains(&dims.layers) {
        return bad(format!("layers = {} must be between 1 and 48", dims.layers));
    }
    if !(1..=4096).contains(&dims.width)
        || dims.heads == 0
        || !dims.width.is_multiple_of(dims.heads)
    {
        return bad(format!(
            "width = {} must be between 1 and 4096 and divisible by heads = {}",
            dims.width, dims.heads
        ));
    }
    if !(1..=4096).contains(&dims.context) {
        return bad(format!(
            "context = {} must be between 1 and 4096",
            dims.context
        ));
    }
    if features == 0 || features > dims.context {
        return bad(format!(
            "task.features = {features} tokens per example must be between 1 and context = {}",
            dims.context
        ));
    }
    if !(2..=1 << 20).contains(&classes) {
        return bad(format!(
            "task.classes = {classes} is the vocabulary: 256 for bytes, or the tokenizer's size"
        ));
    }
    Ok(dims)
}

/// Mean cross-entropy of each lane: `logits: [lanes, batch, classes]` against one-hot
/// `targets: [batch, classes]`, giving `[lanes]`.
pub fn lane_losses(logits: Tensor<3>, targets: &Tensor<2>) -> Tensor<1> {
    let [lanes, _, _] = logits.dims();
    let log_probs = activation::log_softmax(logits, 2);
    let picked = (log_probs * targets.clone().unsqueeze::<3>()).sum_dim(2);
    picked.mean_dim(1).reshape([lanes]).neg()
}

/// For a private step: `logits: [2K, batch, classes]` holding the `+ε` and `−ε` copies of K
/// directions in turn. Gives `[3K]`: the 2K mean losses, then for each direction the mean over
/// the batch of the per-example differences `(L_i⁺ − L_i⁻) / 2ε`, each clipped to `[−clip,
/// clip]`. One tensor, so one read back.
pub fn lane_private_estimates(
    logits: Tensor<3>,
    targets: &Tensor<2>,
    eps: f32,
    clip: f32,
) -> Tensor<1> {
    let [lanes, batch, _] = logits.dims();
    let directions = lanes / 2;
    let log_probs = activation::log_softmax(logits, 2);
    let per_example = (log_probs * targets.clone().unsqueeze::<3>())
        .sum_dim(2)
        .reshape([lanes, batch])
        .neg();
    let means = per_example.clone().mean_dim(1).reshape([lanes]);
    let pairs = per_example.reshape([directions, 2, batch]);
    let plus = pairs.clone().narrow(1, 0, 1);
    let minus = pairs.narrow(1, 1, 1);
    let clipped = ((plus - minus) / (2.0 * eps))
        .clamp(-clip, clip)
        .mean_dim(2)
        .reshape([directions]);
    Tensor::cat(vec![means, clipped], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_layout_is_stable() {
        let m = Model::new(&ModelSpec::default(), 2, 2).unwrap();
        let names: Vec<_> = m
            .layout()
            .params()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "layer0.weight",
                "layer0.bias",
                "layer1.weight",
                "layer1.bias",
                "layer2.weight",
                "layer2.bias"
            ]
        );
        assert_eq!(m.layout().d(), 2 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2);
    }

    #[test]
    fn bad_specs_are_refused() {
        let none = ModelSpec::Mlp {
            hidden: vec![],
            activation: Activation::Tanh,
        };
        assert_eq!(
            Model::new(&none, 2, 2).unwrap_err(),
            ModelError::NoHiddenLayers
        );
        assert_eq!(
            Model::new(&ModelSpec::default(), 0, 2).unwrap_err(),
            ModelError::Width(0)
        );
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let m = Model::new(&ModelSpec::default(), 2, 2).unwrap();
        let a = m.init([1; 32]);
        assert_eq!(a, m.init([1; 32]));
        assert_ne!(a, m.init([2; 32]));
        let bound = (5.0f64 / 3.0 * (3.0f64 / 2.0).sqrt()) as f32;
        assert!(a[..64].iter().all(|v| v.abs() <= bound));
        assert!(a[64..96].iter().all(|&v| v == 0.0));
    }
}
