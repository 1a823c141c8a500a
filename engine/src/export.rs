//! What a host takes away from a job: its trained weights in the files other tools read.
//!
//! A transformer leaves as a Hugging Face GPT-2 folder (`model.safetensors`, `config.json`, the
//! job's `tokenizer.json`), which `GPT2LMHeadModel.from_pretrained` loads. A LoRA job can leave
//! as its adapters alone, in the PEFT library's form (`adapter_model.safetensors`,
//! `adapter_config.json`), a few hundred kilobytes to load over the base the job pinned; or
//! merged into that base as a whole GPT-2. Other model kinds leave as a checkpoint in the
//! project's own format, which a job's `init` reads.

use crate::Job;
use crate::layout::ParamLayout;
use crate::trained::{Plan, lora_a, lora_b};
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;

/// One file of an export: its name in the output folder and its contents.
#[derive(Debug, Clone)]
pub struct ExportFile {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// The files for `job` at θ (`theta`, the trained part). A LoRA job gives its adapters unless
/// `merge`; every other job gives its whole model (a job that trains part of a base gives the
/// base with the trained tensors in their places: there is nothing smaller others can load).
pub fn export(job: &Job, theta: &[f32], merge: bool) -> Vec<ExportFile> {
    assert_eq!(theta.len(), job.model.layout().d(), "θ must match the job");
    let plan = job.model.plan();
    if let (Plan::Lora { .. }, false) = (plan, merge) {
        return adapter_files(plan, job.model.layout(), theta);
    }
    let whole = match plan.freezes() {
        true => plan.merge(job.model.base_layout(), &job.base_weights(), theta),
        false => theta.to_vec(),
    };
    let mut files = vec![ExportFile {
        name: "model.safetensors",
        bytes: job.checkpoint_bytes(whole),
    }];
    if let Some(dims) = job.model.transformer() {
        files.push(ExportFile {
            name: "config.json",
            bytes: gpt2_config(dims),
        });
    }
    if let Some(json) = job.tokenizer_json() {
        files.push(ExportFile {
            name: "tokenizer.json",
            bytes: json.to_vec(),
        });
    }
    files
}

/// The Hugging Face configuration of a GPT-2 with these sizes: the tanh GELU, LayerNorm's
/// 1e-5, the output tied to the token embedding, and GPT-2's end-of-text token where the
/// vocabulary has it.
fn gpt2_config(dims: &crate::transformer::Dims) -> Vec<u8> {
    let end_of_text = (dims.vocab > 50_256).then_some(50_256);
    let config = serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": dims.vocab,
        "n_positions": dims.context,
        "n_embd": dims.width,
        "n_layer": dims.layers,
        "n_head": dims.heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
    });
    serde_json::to_vec_pretty(&config).expect("a JSON value serialises")
}

/// LoRA adapters as PEFT writes them for a `GPT2LMHeadModel`: under
/// `base_model.model.transformer.<layer>.lora_{A,B}.weight`, `A` as `[rank, in]` and `B` as
/// `[out, rank]` (`torch.nn.Linear`'s orientation: ours are `[in, rank]` and `[rank, out]`,
/// so each is transposed), with `fan_in_fan_out` set because GPT-2's `Conv1D` stores its
/// weight `[in, out]`. PEFT's scaling `lora_alpha / r` is the job's `alpha / rank`.
fn adapter_files(plan: &Plan, layout: &ParamLayout, theta: &[f32]) -> Vec<ExportFile> {
    let Plan::Lora {
        rank,
        scale,
        layers,
    } = plan
    else {
        unreachable!("adapters exist only for a LoRA plan")
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in layers {
        for (name, peft_name) in [(lora_a(layer), "lora_A"), (lora_b(layer), "lora_B")] {
            let spec = layout.get(&name).expect("every adapted layer has A and B");
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            let values = &theta[spec.range()];
            let transposed: Vec<u8> = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
                .flat_map(f32::to_le_bytes)
                .collect();
            tensors.push((
                format!("base_model.model.transformer.{layer}.{peft_name}.weight"),
                vec![cols, rows],
                transposed,
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("shape and byte length agree");
            (name.clone(), view)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = safetensors::serialize(views, Some(meta)).expect("in-memory serialisation");

    // The modules as PEFT matches them: a suffix of the module's path (`attn.c_proj` adapts the
    // attention's projection and not the MLP's).
    let mut targets: Vec<&str> = layers
        .iter()
        .map(|layer| {
            layer
                .splitn(3, '.')
                .nth(2)
                .expect("layers are h.N.<module>")
        })
        .collect();
    targets.dedup();
    targets.sort_unstable();
    targets.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "r": rank,
        "lora_alpha": scale * *rank as f32,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "fan_in_fan_out": true,
        "bias": "none",
        "use_rslora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    vec![
        ExportFile {
            name: "adapter_model.safetensors",
            bytes: weights,
        },
        ExportFile {
            name: "adapter_config.json",
            bytes: serde_json::to_vec_pretty(&config).expect("a JSON value serialises"),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn lora_job() -> Job {
        Job::from_toml(
            "[job]\nname = \"lora-export\"\n[model]\nkind = \"transformer\"\npreset = \"tiny\"\n\
             [task]\nfeatures = 16\nclasses = 256\ndataset = \"tales\"\n\
             [train]\nparameters = \"lora\"\nrank = 4\nalpha = 8\n",
        )
        .unwrap()
    }

    /// θ with every adapter entry distinct and nonzero.
    fn trained(job: &Job) -> Vec<f32> {
        (0..job.model.layout().d())
            .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
            .collect()
    }

    #[test]
    fn adapters_leave_in_peft_form_transposed_with_their_scaling() {
        let job = lora_job();
        let theta = trained(&job);
        let files = export(&job, &theta, false);
        let names: Vec<_> = files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["adapter_model.safetensors", "adapter_config.json"]);

        let weights = SafeTensors::deserialize(&files[0].bytes).unwrap();
        let layout = job.model.layout();
        // Two adapted layers per block, A and B each.
        assert_eq!(weights.len(), 2 * 2 * 2);
        let a = layout.get("h.1.attn.c_attn.lora_A").unwrap();
        let peft_a = weights
            .tensor("base_model.model.transformer.h.1.attn.c_attn.lora_A.weight")
            .unwrap();
        assert_eq!(peft_a.shape(), [4, 64]);
        let b = layout.get("h.0.attn.c_proj.lora_B").unwrap();
        let peft_b = weights
            .tensor("base_model.model.transformer.h.0.attn.c_proj.lora_B.weight")
            .unwrap();
        assert_eq!(peft_b.shape(), [64, 4]);
        let at = |bytes: &[u8], i: usize| {
            f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
        };
        // PEFT's A[r][i] is our A[i][r]; its B[o][r] is our B[r][o].
        for (i, r) in [(0, 0), (5, 3), (63, 1)] {
            assert_eq!(at(peft_a.data(), r * 64 + i), theta[a.offset + i * 4 + r]);
        }
        for (r, o) in [(0, 0), (3, 17), (2, 63)] {
            assert_eq!(at(peft_b.data(), o * 4 + r), theta[b.offset + r * 64 + o]);
        }

        let config: serde_json::Value = serde_json::from_slice(&files[1].bytes).unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["r"], 4);
        assert_eq!(config["lora_alpha"], 8.0);
        assert_eq!(config["fan_in_fan_out"], true);
        assert_eq!(
            config["target_modules"],
            serde_json::json!(["attn.c_attn", "attn.c_proj"])
        );
    }

    #[test]
    fn a_merged_export_is_the_base_plus_the_scaled_adapter_product() {
        let job = lora_job();
        let theta = trained(&job);
        let files = export(&job, &theta, true);
        let names: Vec<_> = files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["model.safetensors", "config.json"]);
        let whole = job.read_checkpoint(&files[0].bytes).unwrap();
        let base = job.base_weights();
        let (layout, trained) = (job.model.base_layout(), job.model.layout());
        for p in layout.params() {
            let (merged, original) = (&whole[p.range()], &base[p.range()]);
            if p.name == "h.0.attn.c_attn.weight" {
                // One entry by hand: W + (alpha / rank)·Σ_r A[i][r]·B[r][o].
                let (i, o) = (7, 100);
                let a = &theta[trained.get("h.0.attn.c_attn.lora_A").unwrap().range()];
                let b = &theta[trained.get("h.0.attn.c_attn.lora_B").unwrap().range()];
                let delta: f64 = (0..4)
                    .map(|r| f64::from(a[i * 4 + r]) * f64::from(b[r * 192 + o]))
                    .sum();
                let expected = (f64::from(original[i * 192 + o]) + 2.0 * delta) as f32;
                assert_eq!(merged[i * 192 + o], expected);
            } else if !p.name.ends_with("attn.c_attn.weight")
                && !p.name.ends_with("attn.c_proj.weight")
            {
                assert_eq!(
                    merged, original,
                    "{} is not adapted and must not move",
                    p.name
                );
            }
        }
        let config: serde_json::Value = serde_json::from_slice(&files[1].bytes).unwrap();
        assert_eq!(config["n_layer"], 2);
        assert_eq!(config["n_head"], 4);
        assert_eq!(config["activation_function"], "gelu_new");
    }
}
