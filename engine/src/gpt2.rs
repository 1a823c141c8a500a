//! Reading GPT-2 checkpoints as Hugging Face writes them into a transformer's `θ`.
//!
//! Hugging Face's safetensors files name tensors after the model's modules (`wte.weight`,
//! `h.0.attn.c_attn.weight`, …), with a `transformer.` prefix when saved from the LM-head
//! model, and store linear weights `[in, out]` (GPT-2's `Conv1D`): the names and shapes of our
//! transformer's layout, so each tensor is copied as it is. What differs is tolerated:
//! half-precision storage (F16, BF16) is widened to f32; a position table longer than the job's
//! context keeps its first rows; the causal-mask buffers (`attn.bias`, `attn.masked_bias`) and
//! the tied output head (`lm_head.weight`) carry nothing the layout lacks and are skipped. Any
//! other tensor is an error: it means the file is of a different model.

use crate::layout::ParamLayout;
use crate::snapshot::{SnapshotError, check_hash_if_present};
use safetensors::{Dtype, SafeTensors};

/// The prefix `GPT2LMHeadModel` puts before the transformer's own names.
const PREFIX: &str = "transformer.";

/// The transformer's parameters, in layout order, from a GPT-2-format safetensors file (or one
/// of our own snapshots of the same model). When the file carries an `onebyte.hash`, the
/// weights must match it.
pub fn read_gpt2(bytes: &[u8], layout: &ParamLayout) -> Result<Vec<f32>, SnapshotError> {
    let tensors = SafeTensors::deserialize(bytes)?;
    for name in tensors.names() {
        let bare = name.strip_prefix(PREFIX).unwrap_or(name);
        if layout.get(bare).is_none() && !is_skipped(bare) {
            return Err(SnapshotError::UnusedTensor(name.to_string()));
        }
    }
    let mut theta = Vec::with_capacity(layout.d());
    for p in layout.params() {
        let view = tensors
            .tensor(&p.name)
            .or_else(|_| tensors.tensor(&format!("{PREFIX}{}", p.name)))
            .map_err(|_| SnapshotError::MissingParam(p.name.clone()))?;
        let wrong = || SnapshotError::WrongParam {
            name: p.name.clone(),
            expected: p.shape.clone(),
            found: view.shape().to_vec(),
            dtype: format!("{:?}", view.dtype()),
        };
        // A position table may be longer than the context: its first rows are the ones used.
        let fits = match (p.name.as_str(), view.shape(), p.shape.as_slice()) {
            ("wpe.weight", [rows, cols], [need, width]) => rows >= need && cols == width,
            (_, found, expected) => found == expected,
        };
        if !fits {
            return Err(wrong());
        }
        let width = match view.dtype() {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            _ => return Err(wrong()),
        };
        let data = &view.data()[..p.len() * width];
        match view.dtype() {
            Dtype::F32 => theta.extend(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ),
            Dtype::F16 => theta.extend(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            _ => theta.extend(
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
        }
    }
    check_hash_if_present(bytes, &theta)?;
    Ok(theta)
}

/// θ as a GPT-2 checkpoint in Hugging Face's form: one F32 tensor per layout entry under its
/// GPT-2 name (linear weights `[in, out]`, as `Conv1D` keeps them), the metadata `format = pt`
/// that `transformers` looks for, and `onebyte.hash` so that a job reading it checks the bits.
pub fn write_gpt2(theta: &[f32], layout: &ParamLayout) -> Vec<u8> {
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "onebyte.hash".to_string(),
            crate::hash::weight_hash(theta).to_hex(),
        ),
    ]);
    crate::snapshot::write_params(theta, layout, meta)
}

/// Tensors of a GPT-2 checkpoint that hold nothing the layout lacks.
fn is_skipped(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelSpec};
    use crate::transformer;
    use crate::{block_on, cpu_device};
    use burn::tensor::{Tensor, TensorData};
    use safetensors::tensor::TensorView;
    use serde::Deserialize;

    /// What `tests/reference/gpt2_reference.py` wrote: the sizes, the inputs and numpy's logits.
    #[derive(Deserialize)]
    struct Reference {
        layers: usize,
        width: usize,
        heads: usize,
        context: usize,
        vocab: usize,
        tokens: Vec<Vec<u32>>,
        logits: Vec<Vec<Vec<f64>>>,
        /// Rows a prompt classifier reads, its label words' tokens, each row's class, and the
        /// mean cross-entropy over the label words' logits at the last position.
        prompts: Vec<Vec<u32>>,
        readout: Vec<u32>,
        labels: Vec<u32>,
        label_word_loss: f64,
    }

    const CHECKPOINT: &[u8] = include_bytes!("../tests/reference/gpt2-random.safetensors");
    const REFERENCE: &str = include_str!("../tests/reference/gpt2-random-logits.json");

    fn reference_model() -> (Reference, Model) {
        let r: Reference = serde_json::from_str(REFERENCE).unwrap();
        let spec = ModelSpec::Transformer {
            preset: None,
            layers: Some(r.layers),
            width: Some(r.width),
            heads: Some(r.heads),
            // Fewer positions than the file's table: its first rows are read.
            context: Some(r.context - 4),
        };
        let model = Model::new(&spec, r.tokens[0].len(), r.vocab).unwrap();
        (r, model)
    }

    #[test]
    fn label_word_loss_matches_reference() {
        let (r, mut model) = reference_model();
        model.read_out(r.readout.clone());
        assert_eq!(model.classes(), r.readout.len());
        let theta = read_gpt2(CHECKPOINT, model.layout()).unwrap();
        let device = cpu_device();
        let d = theta.len();
        let thetas = Tensor::<2>::from_data(TensorData::new(theta, [1, d]), &device);
        let (rows, t) = (r.prompts.len(), r.prompts[0].len());
        let tokens: Vec<f32> = r.prompts.iter().flatten().map(|&c| c as f32).collect();
        let tokens = Tensor::<2>::from_data(TensorData::new(tokens, [rows, t]), &device);
        let mut one_hot = vec![0.0f32; rows * model.classes()];
        for (row, &label) in r.labels.iter().enumerate() {
            one_hot[row * model.classes() + label as usize] = 1.0;
        }
        let targets =
            Tensor::<2>::from_data(TensorData::new(one_hot, [rows, model.classes()]), &device);
        // The loss every replica computes for its two perturbed passes.
        let loss = crate::model::lane_losses(
            model.forward_lanes(&thetas, &crate::weights::Frozen::none(), tokens),
            &targets,
        );
        let loss = block_on(loss.into_data_async())
            .unwrap()
            .try_to_vec::<f32>()
            .unwrap()[0];
        assert!(
            (f64::from(loss) - r.label_word_loss).abs() < 1e-5,
            "label-word loss {loss}, reference {}",
            r.label_word_loss
        );
    }

    #[test]
    fn gpt2_checkpoint_matches_reference_logits() {
        let (r, model) = reference_model();
        let theta = read_gpt2(CHECKPOINT, model.layout()).unwrap();
        let device = cpu_device();
        let d = theta.len();
        let thetas = Tensor::<2>::from_data(TensorData::new(theta, [1, d]), &device);
        let (batch, t) = (r.tokens.len(), r.tokens[0].len());
        let tokens: Vec<f32> = r.tokens.iter().flatten().map(|&c| c as f32).collect();
        let tokens = Tensor::<2>::from_data(TensorData::new(tokens, [batch, t]), &device);
        let dims = model.transformer().unwrap();
        let logits = transformer::all_logits(
            dims,
            &crate::weights::Weights::flat(model.layout(), &thetas),
            tokens,
        );
        let logits: Vec<f32> = block_on(logits.into_data_async())
            .unwrap()
            .try_to_vec::<f32>()
            .unwrap();
        let expected: Vec<f64> = r.logits.iter().flatten().flatten().copied().collect();
        assert_eq!(logits.len(), expected.len());
        let worst = logits
            .iter()
            .zip(&expected)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-4,
            "largest difference from the reference: {worst}"
        );
    }

    /// The reference checkpoint rewritten with every tensor in `dtype`, without the prefix.
    fn rewritten(dtype: Dtype, extra: Option<&str>) -> Vec<u8> {
        let tensors = SafeTensors::deserialize(CHECKPOINT).unwrap();
        let mut owned = Vec::new();
        for (name, view) in tensors.tensors() {
            if view.dtype() != Dtype::F32 {
                continue;
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let bytes: Vec<u8> = match dtype {
                Dtype::F16 => values
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values
                    .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            let bare = name.strip_prefix(PREFIX).unwrap().to_string();
            owned.push((bare, view.shape().to_vec(), bytes));
        }
        if let Some(name) = extra {
            owned.push((name.to_string(), vec![2], vec![0; 4]));
        }
        let views: Vec<_> = owned
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn half_precision_checkpoints_widen_to_f32() {
        let (_, model) = reference_model();
        let full = read_gpt2(CHECKPOINT, model.layout()).unwrap();
        for dtype in [Dtype::F16, Dtype::BF16] {
            let theta = read_gpt2(&rewritten(dtype, None), model.layout()).unwrap();
            let worst = full
                .iter()
                .zip(&theta)
                .map(|(a, b)| ((a - b) / a.abs().max(1e-3)).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-2, "{dtype:?} differs by {worst} relative");
            assert_ne!(full, theta, "{dtype:?} rounded nothing");
        }
    }

    #[test]
    fn tensors_of_another_model_are_refused() {
        let (_, model) = reference_model();
        let file = rewritten(Dtype::F16, Some("h.0.attn.q_proj.weight"));
        let error = read_gpt2(&file, model.layout()).unwrap_err();
        assert!(
            matches!(&error, SnapshotError::UnusedTensor(n) if n == "h.0.attn.q_proj.weight"),
            "{error}"
        );
        let mut spec = model.spec().clone();
        if let ModelSpec::Transformer { width, heads, .. } = &mut spec {
            *width = Some(16);
            *heads = Some(2);
        }
        let narrower = Model::new(&spec, 16, 96).unwrap();
        let error = read_gpt2(CHECKPOINT, narrower.layout()).unwrap_err();
        assert!(matches!(error, SnapshotError::WrongParam { .. }), "{error}");
    }
}
