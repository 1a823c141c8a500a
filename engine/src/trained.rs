//! Which of a model's parameters a job trains: all of them, or a small named part of a frozen
//! base model (low-rank adapters, the biases and LayerNorms, or tensors chosen by name).
//!
//! θ (what directions perturb, the log updates, the weight hash covers and snapshots carry) is
//! the trained part alone, laid out by [`Plan::trained_layout`]; the rest of the model is the
//! base, read from `job.init` (pinned by its SHA-256) or made from the job's seed, and never
//! changes.

use crate::layout::ParamLayout;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A job's `[train]` section as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// `"all"` (the default), `"lora"`, `"bitfit"`, or a list of parameter-name patterns (`*`
    /// matches any run of characters, e.g. `"h.*.ln_*"`).
    #[serde(default)]
    pub parameters: Parameters,
    /// LoRA: the adapters' rank (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// LoRA: the adapted product is scaled by `alpha / rank` (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// LoRA: the linear layers adapted in every block, by their name within it (default
    /// `["attn.c_attn", "attn.c_proj"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// SHA-256 (hex) of the `job.init` checkpoint the frozen base comes from: a peer whose base
    /// differs is refused instead of silently training another model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
}

/// What trains, as named in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parameters {
    Named(Named),
    /// The parameters whose names match any of these patterns.
    Patterns(Vec<String>),
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters::Named(Named::All)
    }
}

/// The named choices of `train.parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Named {
    /// Every parameter.
    All,
    /// Low-rank adapters on linear layers; the model itself frozen.
    Lora,
    /// Biases and LayerNorm gains and biases.
    Bitfit,
}

/// The linear layers of a transformer block LoRA can adapt.
pub const LORA_TARGETS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// A `[train]` section that cannot apply to its model.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TrainError {
    #[error("train.parameters = \"lora\" needs a transformer")]
    LoraNeedsTransformer,
    #[error(
        "train.targets: `{0}` is not a linear layer of a block; LoRA adapts {layers}",
        layers = LORA_TARGETS.join(", ")
    )]
    Target(String),
    #[error("train.targets is empty: LoRA needs a layer to adapt")]
    NoTargets,
    #[error("train.rank = {rank}: it must be between 1 and {most} (the narrowest adapted layer)")]
    Rank { rank: usize, most: usize },
    #[error("train.alpha = {0}: it must be a finite number > 0")]
    Alpha(f32),
    #[error("train.{0} applies only to train.parameters = \"lora\"")]
    LoraOnly(&'static str),
    #[error("train.parameters: the pattern `{0}` matches no parameter of the model")]
    NoMatch(String),
    #[error("train.parameters selects no parameter of the model")]
    NothingTrained,
    #[error("train.base_sha256 = \"{0}\" is not 64 hex digits")]
    BaseHashFormat(String),
    #[error("train.base_sha256 applies only where part of the model is frozen")]
    BaseHashWithAll,
}

/// What a job trains, resolved against its model.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// θ is the whole model.
    All,
    /// θ is these base tensors (by name, in the base's order); the rest is frozen.
    Subset(Vec<String>),
    /// θ is a pair of adapters `A: [in, rank]`, `B: [rank, out]` per adapted layer (full names,
    /// e.g. `h.0.attn.c_attn`); the whole base is frozen, and a layer computes
    /// `x·W + b + scale·(x·A)·B`.
    Lora {
        rank: usize,
        scale: f32,
        layers: Vec<String>,
    },
}

/// The name of an adapted layer's down-projection in θ.
pub fn lora_a(layer: &str) -> String {
    format!("{layer}.lora_A")
}

/// The name of an adapted layer's up-projection in θ.
pub fn lora_b(layer: &str) -> String {
    format!("{layer}.lora_B")
}

impl Plan {
    /// Resolves `spec` against a model's `base` layout; `blocks` is a transformer's layer count
    /// (`None` for other kinds).
    pub fn new(
        spec: &TrainSpec,
        base: &ParamLayout,
        blocks: Option<usize>,
    ) -> Result<Plan, TrainError> {
        let lora = matches!(spec.parameters, Parameters::Named(Named::Lora));
        if !lora {
            for (field, given) in [
                ("rank", spec.rank.is_some()),
                ("alpha", spec.alpha.is_some()),
                ("targets", spec.targets.is_some()),
            ] {
                if given {
                    return Err(TrainError::LoraOnly(field));
                }
            }
        }
        if let Some(hash) = &spec.base_sha256 {
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(TrainError::BaseHashFormat(hash.clone()));
            }
            if spec.parameters == Parameters::Named(Named::All) {
                return Err(TrainError::BaseHashWithAll);
            }
        }
        let subset = |keep: &dyn Fn(&str) -> bool| {
            let names: Vec<String> = base
                .params()
                .iter()
                .filter(|p| keep(&p.name))
                .map(|p| p.name.clone())
                .collect();
            match names.is_empty() {
                true => Err(TrainError::NothingTrained),
                false => Ok(Plan::Subset(names)),
            }
        };
        match &spec.parameters {
            Parameters::Named(Named::All) => Ok(Plan::All),
            Parameters::Named(Named::Bitfit) => subset(&is_bias_or_norm),
            Parameters::Patterns(patterns) => {
                if let Some(unmatched) = patterns
                    .iter()
                    .find(|pattern| !base.params().iter().any(|p| matches(pattern, &p.name)))
                {
                    return Err(TrainError::NoMatch(unmatched.clone()));
                }
                subset(&|name| patterns.iter().any(|pattern| matches(pattern, name)))
            }
            Parameters::Named(Named::Lora) => {
                let blocks = blocks.ok_or(TrainError::LoraNeedsTransformer)?;
                let targets = spec
                    .targets
                    .clone()
                    .unwrap_or_else(|| vec!["attn.c_attn".to_string(), "attn.c_proj".to_string()]);
                if targets.is_empty() {
                    return Err(TrainError::NoTargets);
                }
                if let Some(other) = targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
                    return Err(TrainError::Target(other.clone()));
                }
                let layers: Vec<String> = (0..blocks)
                    .flat_map(|l| targets.iter().map(move |t| format!("h.{l}.{t}")))
                    .collect();
                let most = layers
                    .iter()
                    .filter_map(|layer| base.get(&format!("{layer}.weight")))
                    .map(|p| p.shape[0].min(p.shape[1]))
                    .min()
                    .unwrap_or(0);
                let rank = spec.rank.unwrap_or(8);
                if rank == 0 || rank > most {
                    return Err(TrainError::Rank { rank, most });
                }
                let alpha = spec.alpha.unwrap_or(16.0);
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(TrainError::Alpha(alpha));
                }
                Ok(Plan::Lora {
                    rank,
                    scale: alpha / rank as f32,
                    layers,
                })
            }
        }
    }

    /// Whether part of the model is frozen (a base exists apart from θ).
    pub fn freezes(&self) -> bool {
        !matches!(self, Plan::All)
    }

    /// θ's layout: the trained tensors in order (the base's order; a LoRA layer's `A` then `B`).
    pub fn trained_layout(&self, base: &ParamLayout) -> ParamLayout {
        match self {
            Plan::All => base.clone(),
            Plan::Subset(names) => {
                let mut layout = ParamLayout::default();
                for p in base.params().iter().filter(|p| names.contains(&p.name)) {
                    layout.push(p.name.clone(), &p.shape);
                }
                layout
            }
            Plan::Lora { rank, layers, .. } => {
                let mut layout = ParamLayout::default();
                for layer in layers {
                    let w = base
                        .get(&format!("{layer}.weight"))
                        .expect("a LoRA layer is a linear layer of the base");
                    let (inputs, outputs) = (w.shape[0], w.shape[1]);
                    layout.push(lora_a(layer), &[inputs, *rank]);
                    layout.push(lora_b(layer), &[*rank, outputs]);
                }
                layout
            }
        }
    }

    /// θ₀ from the base weights (`base_values` gives a base tensor's, by name): the trained
    /// tensors' base values; for LoRA, `A` uniform in `±1/√in` (Kaiming-uniform, as LoRA
    /// starts) from `key` and `B` zero, so that the adapted model starts as exactly the base
    /// (LoRA reads no base values).
    pub fn initial(
        &self,
        base: &ParamLayout,
        base_values: impl Fn(&str) -> Vec<f32>,
        key: [u8; 32],
    ) -> Vec<f32> {
        let trained = self.trained_layout(base);
        match self {
            Plan::All | Plan::Subset(_) => trained
                .params()
                .iter()
                .flat_map(|p| base_values(&p.name))
                .collect(),
            Plan::Lora { .. } => {
                let mut rng = ChaCha8Rng::from_seed(key);
                let mut theta = vec![0.0f32; trained.d()];
                for p in trained
                    .params()
                    .iter()
                    .filter(|p| p.name.ends_with("lora_A"))
                {
                    let bound = (1.0 / (p.shape[0] as f64).sqrt()) as f32;
                    for v in &mut theta[p.range()] {
                        // 24 random bits -> [0, 1) exactly, then one rounded multiply-add.
                        let unit = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                        *v = (2.0 * unit - 1.0) * bound;
                    }
                }
                theta
            }
        }
    }
}

impl Plan {
    /// The whole model (in `base`'s order) that θ and the frozen `base_theta` make: the trained
    /// tensors in their places, and each LoRA layer's weight `W + scale·A·B` (summed in f64,
    /// rounded once).
    pub fn merge(&self, base: &ParamLayout, base_theta: &[f32], theta: &[f32]) -> Vec<f32> {
        let trained = self.trained_layout(base);
        let mut merged = base_theta.to_vec();
        match self {
            Plan::All => merged.copy_from_slice(theta),
            Plan::Subset(_) => {
                for p in trained.params() {
                    let at = base.get(&p.name).expect("a trained tensor is in the base");
                    merged[at.range()].copy_from_slice(&theta[p.range()]);
                }
            }
            Plan::Lora {
                rank,
                scale,
                layers,
            } => {
                for layer in layers {
                    let w = base
                        .get(&format!("{layer}.weight"))
                        .expect("a LoRA layer is a linear layer of the base");
                    let (inputs, outputs) = (w.shape[0], w.shape[1]);
                    let a = &theta[trained.get(&lora_a(layer)).expect("A").range()];
                    let b = &theta[trained.get(&lora_b(layer)).expect("B").range()];
                    for i in 0..inputs {
                        for o in 0..outputs {
                            let delta: f64 = (0..*rank)
                                .map(|r| f64::from(a[i * rank + r]) * f64::from(b[r * outputs + o]))
                                .sum();
                            let at = w.offset + i * outputs + o;
                            merged[at] = (f64::from(merged[at]) + f64::from(*scale) * delta) as f32;
                        }
                    }
                }
            }
        }
        merged
    }
}

/// BitFit's choice: every bias, and every LayerNorm's gain and bias.
fn is_bias_or_norm(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("ln_")
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none too).
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{Corpus, corpus_dataset};
    use crate::weights::Frozen;
    use crate::{Job, Replica, block_on, cpu_device};
    use protocol::{Counter, LogEntry, PeerId};
    use std::sync::Arc;

    /// The tiny transformer over bytes (its name, so its id and base, the same throughout);
    /// `train` is the job's `[train]` section, if any.
    fn tiny(train: &str) -> Job {
        Job::from_toml(&format!(
            "[job]\nname = \"peft\"\n[model]\nkind = \"transformer\"\npreset = \"tiny\"\n\
             [task]\nfeatures = 32\nclasses = 256\ndataset = \"tales\"\n{train}"
        ))
        .unwrap()
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn lora_at_zero_gives_the_base_logits() {
        let full = Arc::new(tiny(""));
        let lora = Arc::new(tiny("[train]\nparameters = \"lora\"\n"));
        // Rank 8 on both attention products of 2 blocks of width 64.
        assert_eq!(
            lora.model.layout().d(),
            2 * (64 * 8 + 8 * 192 + 64 * 8 + 8 * 64)
        );
        assert_eq!(*lora.base_weights(), full.initial_weights());
        let data = corpus_dataset(Corpus::Tales, 32, 1);
        let x = data.test.rows(0..16).x;
        let base = block_on(Replica::new(full, cpu_device()).predict(&x)).unwrap();
        let adapted = block_on(Replica::new(lora, cpu_device()).predict(&x)).unwrap();
        assert_eq!(bits(&adapted), bits(&base));
    }

    #[test]
    fn a_trained_part_computes_what_the_merged_model_computes() {
        let full = Arc::new(tiny(""));
        let data = corpus_dataset(Corpus::Tales, 32, 1);
        let x = data.test.rows(0..16).x;
        for train in ["parameters = \"lora\"", "parameters = \"bitfit\""] {
            let job = Arc::new(tiny(&format!("[train]\n{train}\n")));
            // θ away from its start (LoRA's B away from zero), as after some training.
            let theta: Vec<f32> = job
                .initial_weights()
                .iter()
                .enumerate()
                .map(|(i, v)| v + 0.05 * ((i * 7919 % 101) as f32 / 50.0 - 1.0))
                .collect();
            let merged =
                job.model
                    .plan()
                    .merge(job.model.base_layout(), &job.base_weights(), &theta);
            let snapshot = |job: &Arc<Job>, theta: Vec<f32>| {
                crate::Snapshot {
                    job: job.id,
                    version: protocol::Version(0),
                    theta,
                }
                .to_bytes(job.model.layout())
            };
            let part =
                Replica::from_snapshot(job.clone(), cpu_device(), &snapshot(&job, theta)).unwrap();
            let whole =
                Replica::from_snapshot(full.clone(), cpu_device(), &snapshot(&full, merged))
                    .unwrap();
            let (a, b) = (
                block_on(part.predict(&x)).unwrap(),
                block_on(whole.predict(&x)).unwrap(),
            );
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "{train}: probabilities differ by {worst}");
        }
    }

    #[test]
    fn frozen_parameters_never_change() {
        let log: Vec<LogEntry> = (0..300u64)
            .map(|i| LogEntry {
                peer: PeerId(1 + (i % 3) as u32),
                counter: Counter(i),
                byte: (i * 37 % 251) as u8,
            })
            .collect();
        for train in ["parameters = \"lora\"", "parameters = \"bitfit\""] {
            let job = Arc::new(tiny(&format!("[train]\n{train}\n")));
            let base = job.base_weights();
            let mut replica = Replica::new(job.clone(), cpu_device());
            replica.apply(&log);
            let theta = block_on(replica.read_weights()).unwrap();
            assert_eq!(theta.len(), job.model.layout().d(), "{train}");
            assert_ne!(theta, job.initial_weights(), "{train}: the log moved θ");
            let frozen = job
                .model
                .base_layout()
                .params()
                .iter()
                .filter(|p| job.model.layout().get(&p.name).is_none());
            let mut checked = 0;
            for p in frozen {
                let tensor = replica.frozen().tensor(&p.name).expect("a frozen tensor");
                let values = tensor.clone().into_data().try_to_vec::<f32>().unwrap();
                assert_eq!(bits(&values), bits(&base[p.range()]), "{train}: {}", p.name);
                checked += p.len();
            }
            assert_eq!(checked, replica.frozen().len(), "{train}");
            assert!(
                checked > theta.len(),
                "{train}: most of the model is frozen"
            );
        }
    }

    /// A directory `name` holding the tiny transformer's weights as `base.safetensors`: the
    /// directory, that model's job, and the file's SHA-256.
    fn tiny_base_in(name: &str) -> (std::path::PathBuf, Job, String) {
        let dir = std::env::temp_dir().join(format!("onebyte-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let full = tiny("");
        let bytes = full.checkpoint_bytes(full.initial_weights());
        std::fs::write(dir.join("base.safetensors"), &bytes).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        (dir, full, sha)
    }

    /// A job file in `dir` that trains `parameters` of the tiny transformer on `dir`'s base,
    /// `pin` added to its `[train]` section, as read back.
    fn peft_job(
        dir: &std::path::Path,
        parameters: &str,
        pin: &str,
    ) -> Result<Job, crate::job::JobError> {
        let toml = format!(
            "[job]\nname = \"peft\"\ninit = \"base.safetensors\"\n[model]\n\
             kind = \"transformer\"\npreset = \"tiny\"\n[task]\nfeatures = 32\n\
             classes = 256\ndataset = \"tales\"\n[train]\nparameters = \"{parameters}\"\n{pin}"
        );
        std::fs::write(dir.join("job.toml"), toml).unwrap();
        Job::from_file(&dir.join("job.toml"))
    }

    #[test]
    fn a_base_that_is_not_the_pinned_one_is_refused() {
        let (dir, full, sha) = tiny_base_in("base");
        let job_with = |pin: &str| peft_job(&dir, "bitfit", pin);
        let unpinned = job_with("").unwrap_err().to_string();
        assert!(unpinned.contains(&sha), "{unpinned}");
        let other = "0".repeat(64);
        let wrong = job_with(&format!("base_sha256 = \"{other}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(wrong.contains(&sha) && wrong.contains(&other), "{wrong}");
        let pinned = job_with(&format!("base_sha256 = \"{sha}\"\n")).unwrap();
        assert_eq!(*pinned.base_weights(), full.initial_weights());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_base_from_a_checkpoint_is_held_once() {
        let (dir, full, sha) = tiny_base_in("once");
        for train in ["lora", "bitfit"] {
            let pin = format!("base_sha256 = \"{sha}\"\n");
            let job = Arc::new(peft_job(&dir, train, &pin).unwrap());
            assert!(!job.needs_checkpoint(), "{train}");
            // Replicas on the CPU read the job's own base tensors: no byte of it is copied.
            let before = Frozen::copied_so_far();
            let replicas = [
                Replica::new(job.clone(), cpu_device()),
                Replica::new(job.clone(), cpu_device()),
            ];
            assert_eq!(Frozen::copied_so_far(), before, "{train}");
            assert!(
                replicas[0].frozen().len() > job.model.layout().d(),
                "{train}"
            );
            // The base they read is the checkpoint's, and rebuilt whole for whoever asks.
            assert_eq!(*job.base_weights(), full.initial_weights(), "{train}");
            let data = corpus_dataset(Corpus::Tales, 32, 1);
            let x = data.test.rows(0..8).x;
            // At θ₀ the adapted (or bias-trained) model is exactly the base.
            let read = block_on(replicas[1].predict(&x)).unwrap();
            let base = block_on(Replica::new(Arc::new(full.clone()), cpu_device()).predict(&x));
            assert_eq!(bits(&read), bits(&base.unwrap()), "{train}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_train_section_that_cannot_apply_is_refused_with_its_reason() {
        let err = |train: &str| {
            Job::from_toml(&format!(
                "[job]\nname = \"peft\"\n[model]\nkind = \"transformer\"\npreset = \"tiny\"\n\
                 [task]\nfeatures = 32\nclasses = 256\ndataset = \"tales\"\n[train]\n{train}"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(err("parameters = \"lora\"\ntargets = [\"attn.q\"]").contains("attn.q"));
        assert!(err("parameters = \"lora\"\nrank = 0").contains("rank = 0"));
        assert!(err("parameters = \"bitfit\"\nrank = 4").contains("only"));
        assert!(err("parameters = [\"h.*.nothing\"]").contains("h.*.nothing"));
        let mlp = Job::from_toml(
            "[job]\nname = \"p\"\n[task]\nfeatures = 2\nclasses = 2\n[train]\nparameters = \"lora\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(mlp.contains("transformer"), "{mlp}");
    }

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(matches("h.*.ln_*", "h.0.ln_1.weight"));
        assert!(matches("*bias", "h.3.attn.c_attn.bias"));
        assert!(matches("wte.weight", "wte.weight"));
        assert!(!matches("wte.weight", "wte.weight2"));
        assert!(!matches("h.*.ln_*", "ln_f.weight"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*bc*c", "abc"));
    }
}
