//! A training job: what every replica must agree on (model, initial weights, hyper-parameters,
//! quantizer), loadable from TOML with validated values.

use crate::data::{Builtin, DataSource};
use crate::model::{Model, ModelError, ModelSpec};
use protocol::{JobId, Quantizer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use thiserror::Error;

/// A job file as written by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub job: JobSection,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub task: TaskSpec,
    #[serde(default)]
    pub hyper: HyperParams,
    /// Differential privacy for each peer's data (clipped, noised estimates), if the job asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacySpec>,
    /// Committees: several peers evaluate each shared direction and the relay logs the median
    /// of their bytes, so no minority of peers steers a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committee: Option<CommitteeSpec>,
    /// What trains: every parameter (without this section), or a small named part of a frozen
    /// base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<crate::trained::TrainSpec>,
}

/// A job's `[committee]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitteeSpec {
    /// Peers per round: the relay logs the median of this many votes (or of a majority of
    /// them, when a round waits too long for the rest).
    pub size: usize,
}

impl CommitteeSpec {
    /// The most members a round may have: a round's votes wait in the relay's memory.
    pub const MAX_SIZE: usize = 15;
}

/// Identity of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Human-readable name; the job id is derived from it unless `id` is given.
    pub name: String,
    /// Explicit job id (all seeds are derived under it).
    #[serde(default)]
    pub id: Option<u64>,
    /// Seed of the initial weights.
    #[serde(default = "default_init_seed")]
    pub init_seed: u64,
    /// Start from a checkpoint instead (a safetensors file with the model's parameters, e.g.
    /// `onebyte simulate --save-checkpoint`), relative to the job file. Peers never read it:
    /// the relay loads it and serves it as the snapshot at version 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

fn default_init_seed() -> u64 {
    1
}

/// The shape of the learning problem: what the model reads and predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Input features per example.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
    /// The built-in data peers use when they bring none of their own: a point set (`spirals`,
    /// `moons`, `circles`) or, for a char LM, a text corpus (`tales`, `recipes`).
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// A byte-level BPE `tokenizer.json` (GPT-2's, as Hugging Face writes it) for a language
    /// model's text, relative to the job file; without one the tokens are bytes. The relay
    /// keeps it in its store and serves it to peers (`/api/tokenizer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Prompt-based classification: the language model classifies each text by the label word
    /// it would write after the template ([`crate::prompt`]); the data are labelled texts (the
    /// built-in `reviews`, or a CSV of `text,label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::prompt::PromptSpec>,
}

fn default_dataset() -> String {
    Builtin::Spirals.name().to_string()
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            features: 2,
            classes: 2,
            dataset: default_dataset(),
            tokenizer: None,
            prompt: None,
        }
    }
}

/// The optimizer's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperParams {
    /// η: each log entry moves θ by `η·D(q)` along its direction.
    pub learning_rate: f32,
    /// ε: the perturbation size of the two forward passes.
    pub epsilon: f32,
    /// Examples per gradient estimate.
    pub batch_size: usize,
    /// Oldest `base_version` accepted, counted back from the log's head. The default (1024)
    /// is about half a second of two native workers at full speed: room for a browser tab's
    /// round trip, while fast peers stay far fresher (their window of contributions in flight
    /// is what bounds their staleness).
    pub staleness_bound: u64,
    /// The one-byte codec.
    pub quantizer: Quantizer,
}

impl Default for HyperParams {
    fn default() -> Self {
        HyperParams {
            learning_rate: 0.002,
            epsilon: 1e-3,
            batch_size: 32,
            staleness_bound: 1024,
            quantizer: Quantizer::default(),
        }
    }
}

/// A job file that cannot be used, with the reason.
#[derive(Debug, Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("job file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("hyper.{field} = {value}: {why}")]
    Hyper {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("privacy.{field} = {value}: {why}")]
    Privacy {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("committee.size = {0}: must be between 2 and {max}", max = CommitteeSpec::MAX_SIZE)]
    CommitteeSize(usize),
    #[error("hyper.quantizer: {0}")]
    Quantizer(#[from] protocol::QuantizeError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("job.name must not be empty")]
    EmptyName,
    #[error("task.dataset = `{0}`: use spirals, moons, circles, tales, recipes or reviews")]
    Dataset(String),
    #[error("job.init = {path}: {source}")]
    Checkpoint {
        path: String,
        source: crate::snapshot::SnapshotError,
    },
    #[error("task.tokenizer = {path}: {source}")]
    Tokenizer {
        path: String,
        source: crate::bpe::TokenizerError,
    },
    #[error(
        "task.tokenizer = {path} has {vocab} tokens: task.classes = {classes} must be the same"
    )]
    TokenizerVocab {
        path: String,
        vocab: usize,
        classes: usize,
    },
    #[error("task.tokenizer is for a language model's text; this job's model classifies points")]
    TokenizerNeedsText,
    #[error("{0}")]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(
        "task.prompt classifies with a language model's next token: the model must be a \
         transformer or a char_lm"
    )]
    PromptNeedsLanguageModel,
    #[error("{0}")]
    Train(#[from] crate::trained::TrainError),
    #[error(
        "job.init = {path} is the frozen base of a job that trains part of its model: pin it \
         with train.base_sha256 = \"{actual}\" (its SHA-256), so that every peer provably \
         trains on the same base"
    )]
    BaseUnpinned { path: String, actual: String },
    #[error(
        "job.init = {path} is not the base this job trains on: its SHA-256 is {actual}, \
         train.base_sha256 is {expected}"
    )]
    BaseMismatch {
        path: String,
        expected: String,
        actual: String,
    },
}

impl JobConfig {
    /// `job.name` of a job file's TOML, if it parses that far (for messages about a file that
    /// may not be valid as a whole).
    pub fn parse_name(text: &str) -> Option<String> {
        let table: toml::Table = toml::from_str(text).ok()?;
        Some(table.get("job")?.get("name")?.as_str()?.to_string())
    }
}

impl HyperParams {
    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<(), JobError> {
        let bad = |field, value: String, why| Err(JobError::Hyper { field, value, why });
        if !(self.learning_rate.is_normal() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                self.learning_rate.to_string(),
                "must be a finite number > 0",
            );
        }
        if !(self.epsilon.is_normal() && self.epsilon > 0.0 && self.epsilon < 1.0) {
            return bad(
                "epsilon",
                self.epsilon.to_string(),
                "must be a number in (0, 1)",
            );
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return bad(
                "batch_size",
                self.batch_size.to_string(),
                "must be between 1 and 65536",
            );
        }
        // A contribution names its base version by 16 low bits, recovered against a version the
        // peer has certainly reached; a lag of 65 536 or more is stale under any bound.
        if !(1..65_536).contains(&self.staleness_bound) {
            return bad(
                "staleness_bound",
                self.staleness_bound.to_string(),
                "must be between 1 and 65535",
            );
        }
        self.quantizer.validate()?;
        // The smallest non-zero step must stay a normal f32, or the update would flush it away.
        let smallest = self.learning_rate * self.quantizer.decode(1).abs();
        let largest = self.learning_rate * self.quantizer.decode(0x7f).abs();
        if !smallest.is_normal() || !largest.is_finite() {
            return bad(
                "learning_rate",
                self.learning_rate.to_string(),
                "times the quantizer's range must stay within normal f32 numbers",
            );
        }
        Ok(())
    }
}

/// A validated job, ready for replicas.
#[derive(Debug, Clone)]
pub struct Job {
    pub config: JobConfig,
    pub id: JobId,
    pub model: Model,
    /// θ₀ from `job.init`, once loaded, where every parameter trains.
    initial: Option<std::sync::Arc<Vec<f32>>>,
    /// The base from `job.init`, once loaded, where part of the model is frozen: every base
    /// tensor on the CPU, held once. A CPU replica's frozen tensors share these buffers; the
    /// flat base is rebuilt only where asked for ([`Job::base_weights`]: export, tests).
    base: Option<std::sync::Arc<crate::weights::Frozen>>,
    /// `task.tokenizer`, once loaded: the tokenizer and the file it was read from.
    tokenizer: Option<(
        std::sync::Arc<crate::bpe::Tokenizer>,
        std::sync::Arc<Vec<u8>>,
    )>,
    /// `task.prompt` under the job's tokens, once they are known (bytes at once; a BPE
    /// tokenizer's once it is loaded).
    prompt: Option<std::sync::Arc<crate::prompt::Prompt>>,
}

impl Job {
    /// Validates a config and builds its model.
    pub fn new(config: JobConfig) -> Result<Self, JobError> {
        if config.job.name.trim().is_empty() {
            return Err(JobError::EmptyName);
        }
        config.hyper.validate()?;
        if let Some((field, value, why)) = config.privacy.as_ref().and_then(|p| p.problem()) {
            return Err(JobError::Privacy { field, value, why });
        }
        if let Some(committee) = config.committee
            && !(2..=CommitteeSpec::MAX_SIZE).contains(&committee.size)
        {
            return Err(JobError::CommitteeSize(committee.size));
        }
        let mut model = Model::new(&config.model, config.task.features, config.task.classes)?;
        if let Some(train) = &config.train {
            model.train(train)?;
        }
        if config.task.tokenizer.is_some() && !model.reads_tokens() {
            return Err(JobError::TokenizerNeedsText);
        }
        if let Some(prompt) = &config.task.prompt {
            prompt.validate()?;
            if !model.reads_tokens() {
                return Err(JobError::PromptNeedsLanguageModel);
            }
        }
        match config.task.dataset.parse::<DataSource>() {
            Ok(DataSource::Builtin(_) | DataSource::Corpus(_)) => {}
            _ => return Err(JobError::Dataset(config.task.dataset.clone())),
        }
        let id = config.job.id.map(JobId).unwrap_or_else(|| {
            let digest = Sha256::digest(config.job.name.as_bytes());
            JobId(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
        });
        let mut job = Job {
            config,
            id,
            model,
            initial: None,
            base: None,
            tokenizer: None,
            prompt: None,
        };
        if job.config.task.tokenizer.is_none() {
            job.make_prompt(|text| text.bytes().map(u32::from).collect(), false)?;
        }
        Ok(job)
    }

    /// Makes `task.prompt` concrete under the job's tokens, and the model a classifier over its
    /// label words.
    fn make_prompt(
        &mut self,
        encode: impl Fn(&str) -> Vec<u32>,
        whole_tokens: bool,
    ) -> Result<(), JobError> {
        if let Some(spec) = &self.config.task.prompt {
            let prompt = crate::prompt::Prompt::new(spec, encode, whole_tokens)?;
            self.model.read_out(prompt.readout().to_vec());
            self.prompt = Some(std::sync::Arc::new(prompt));
        }
        Ok(())
    }

    /// The job's prompt, for a prompt classifier whose tokens are known.
    pub fn prompt(&self) -> Option<&crate::prompt::Prompt> {
        self.prompt.as_deref()
    }

    /// The job's text as token ids: its tokenizer's, or bytes.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.tokenizer() {
            Some(tokenizer) => tokenizer.encode(text),
            None => text.bytes().map(u32::from).collect(),
        }
    }

    /// Token ids as text: the tokenizer's decoding, or bytes (invalid UTF-8 replaced).
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self.tokenizer() {
            Some(tokenizer) => tokenizer.decode(tokens),
            None => {
                let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The text one example row of a prompt classifier reads (token ids as floats), without
    /// the padding in front.
    pub fn prompt_text(&self, row: &[f32]) -> String {
        let pad = self.pad_token() as f32;
        let start = row.iter().position(|&t| t != pad).unwrap_or(row.len());
        let tokens: Vec<u32> = row[start..].iter().map(|&t| t as u32).collect();
        self.decode(&tokens)
    }

    /// The token a prompt is padded with in front: the tokenizer's end of text, or byte 0.
    pub fn pad_token(&self) -> u32 {
        self.tokenizer()
            .and_then(crate::bpe::Tokenizer::end_of_text)
            .unwrap_or(0)
    }

    /// Parses and validates TOML.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        Job::new(toml::from_str(text)?)
    }

    /// Reads, parses and validates a job file.
    pub fn from_file(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let job = Job::from_toml(&text)?;
        job.with_init_from(path.parent().unwrap_or(Path::new(".")))
    }

    /// Loads the files the job names, resolving them against `dir`: `job.init` (θ₀ becomes the
    /// checkpoint's parameters, checked against the model's layout) and `task.tokenizer`.
    pub fn with_init_from(mut self, dir: &Path) -> Result<Self, JobError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| JobError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        if let Some(tokenizer) = self.config.task.tokenizer.clone() {
            self = self.with_tokenizer_json(read(&tokenizer)?)?;
        }
        let Some(init) = self.config.job.init.clone() else {
            return Ok(self);
        };
        let bytes = read(&init)?;
        let shown = dir.join(&init).display().to_string();
        self.with_checkpoint(&shown, &bytes)
    }

    /// Takes `job.init`'s contents (`shown` names where they came from in messages): a peer
    /// gets a frozen base's from the relay. A base must be the one the job pins.
    pub fn with_checkpoint(mut self, shown: &str, bytes: &[u8]) -> Result<Self, JobError> {
        self.check_base(shown, bytes)?;
        let theta = self
            .read_checkpoint(bytes)
            .map_err(|source| JobError::Checkpoint {
                path: shown.to_string(),
                source,
            })?;
        if self.model.plan().freezes() {
            // Per tensor, and the flat copy dropped: a peer's memory holds the base once.
            let nothing_trained = crate::layout::ParamLayout::default();
            let base = crate::weights::Frozen::new(
                self.model.base_layout(),
                &theta,
                &nothing_trained,
                &crate::cpu_device(),
            );
            self.base = Some(std::sync::Arc::new(base));
        } else {
            self.initial = Some(std::sync::Arc::new(theta));
        }
        Ok(self)
    }

    /// Where part of the model is frozen, `bytes` (the checkpoint at `path`) must be the base
    /// the job pins.
    pub fn check_base(&self, path: &str, bytes: &[u8]) -> Result<(), JobError> {
        if !self.model.plan().freezes() {
            return Ok(());
        }
        let actual = hex::encode(Sha256::digest(bytes));
        let pinned = self
            .config
            .train
            .as_ref()
            .and_then(|t| t.base_sha256.clone());
        match pinned {
            None => Err(JobError::BaseUnpinned {
                path: path.to_string(),
                actual,
            }),
            Some(expected) if !expected.eq_ignore_ascii_case(&actual) => {
                Err(JobError::BaseMismatch {
                    path: path.to_string(),
                    expected,
                    actual,
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// The whole model's weights from a checkpoint of this job's model. A transformer reads
    /// GPT-2 checkpoints as Hugging Face writes them (our own snapshots of it are one case of
    /// those); other models read exactly their own tensors.
    pub fn read_checkpoint(
        &self,
        bytes: &[u8],
    ) -> Result<Vec<f32>, crate::snapshot::SnapshotError> {
        if self.model.transformer().is_some() {
            crate::gpt2::read_gpt2(bytes, self.model.base_layout())
        } else {
            crate::snapshot::read_checkpoint(bytes, self.model.base_layout())
        }
    }

    /// The whole model's weights (in the base layout: θ itself unless part of the model is
    /// frozen) as the checkpoint a job's `init` reads back to the same bits: a transformer as
    /// GPT-2 safetensors ([`crate::gpt2::write_gpt2`]), other models as a snapshot of this job.
    pub fn checkpoint_bytes(&self, theta: Vec<f32>) -> Vec<u8> {
        if self.model.transformer().is_some() {
            crate::gpt2::write_gpt2(&theta, self.model.base_layout())
        } else {
            crate::Snapshot {
                job: self.id,
                version: protocol::Version(0),
                theta,
            }
            .to_bytes(self.model.base_layout())
        }
    }

    /// Takes `task.tokenizer` from the contents of that `tokenizer.json` (a peer gets them from
    /// the relay); its vocabulary must be the model's.
    pub fn with_tokenizer_json(mut self, json: Vec<u8>) -> Result<Self, JobError> {
        let path = self.config.task.tokenizer.clone().unwrap_or_default();
        let tokenizer =
            crate::bpe::Tokenizer::from_json(&json).map_err(|source| JobError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        if tokenizer.vocab_size() != self.config.task.classes {
            return Err(JobError::TokenizerVocab {
                path,
                vocab: tokenizer.vocab_size(),
                classes: self.config.task.classes,
            });
        }
        let tokenizer = std::sync::Arc::new(tokenizer);
        self.make_prompt(|text| tokenizer.encode(text), true)?;
        self.tokenizer = Some((tokenizer, std::sync::Arc::new(json)));
        Ok(self)
    }

    /// The job's tokenizer, once loaded; `None` where the tokens are bytes (or it is not
    /// loaded: [`Job::needs_tokenizer`]).
    pub fn tokenizer(&self) -> Option<&crate::bpe::Tokenizer> {
        self.tokenizer.as_ref().map(|(t, _)| t.as_ref())
    }

    /// What one of a language model's tokens is called in its bits-per figures: a "token" of
    /// its tokenizer, or a "character" (a byte).
    pub fn token_unit(&self) -> &'static str {
        if self.tokenizer.is_some() {
            "token"
        } else {
            "character"
        }
    }

    /// The `tokenizer.json` the tokenizer was read from, as the relay serves it.
    pub fn tokenizer_json(&self) -> Option<&[u8]> {
        self.tokenizer.as_ref().map(|(_, json)| json.as_slice())
    }

    /// Whether the job names a tokenizer that is not loaded here.
    pub fn needs_tokenizer(&self) -> bool {
        self.config.task.tokenizer.is_some() && self.tokenizer.is_none()
    }

    /// Whether θ₀ comes from a checkpoint that is not loaded here (a peer learns it from the
    /// relay's snapshot instead).
    pub fn needs_checkpoint(&self) -> bool {
        self.config.job.init.is_some() && self.initial.is_none() && self.base.is_none()
    }

    /// The frozen base on `device`: nothing where every parameter trains (whose replicas may
    /// start from a snapshot without the checkpoint).
    ///
    /// # Panics
    /// As [`Job::initial_weights`], where part of the model is frozen.
    pub fn frozen(&self, device: &burn::tensor::Device) -> crate::weights::Frozen {
        if !self.model.plan().freezes() {
            return crate::weights::Frozen::none();
        }
        match &self.base {
            Some(base) => base.untrained_on(self.model.layout(), device),
            None => crate::weights::Frozen::new(
                self.model.base_layout(),
                &self.base_weights(),
                self.model.layout(),
                device,
            ),
        }
    }

    /// Whether the job trains part of a frozen base that comes from a checkpoint not loaded
    /// here: a peer fetches it from the relay (`/api/base`) and loads it with
    /// [`Job::with_checkpoint`], which checks it against the pin.
    pub fn needs_base(&self) -> bool {
        self.model.plan().freezes() && self.needs_checkpoint()
    }

    /// The built-in demo: spirals with a 2-32-32-2 tanh MLP.
    pub fn demo() -> Self {
        Job::new(JobConfig {
            job: JobSection {
                name: "spirals-demo".into(),
                id: None,
                init_seed: 1,
                init: None,
            },
            model: ModelSpec::default(),
            task: TaskSpec::default(),
            hyper: HyperParams::default(),
            privacy: None,
            committee: None,
            train: None,
        })
        .expect("the demo job is valid")
    }

    /// The demo job's MLP sized for other data: `features` inputs, `classes` outputs (what
    /// `onebyte simulate --dataset my.csv` trains when given no job file).
    pub fn demo_sized(features: usize, classes: usize) -> Result<Self, JobError> {
        let mut config = Job::demo().config;
        config.job.name = format!("mlp-{features}x{classes}");
        config.task.features = features;
        config.task.classes = classes;
        Job::new(config)
    }

    /// The built-in transformer: the `tiny` GPT-2 (~120 k parameters) predicting the next byte
    /// of the `tales` corpus from the 32 before it, from random weights. Zeroth-order steps on a
    /// transformer tolerate little staleness, so its bound is far tighter than the MLP's.
    pub fn tiny_lm() -> Self {
        Job::new(JobConfig {
            job: JobSection {
                name: "tiny-lm".into(),
                id: None,
                init_seed: 1,
                init: None,
            },
            model: ModelSpec::Transformer {
                preset: Some(crate::transformer::Preset::Tiny),
                layers: None,
                width: None,
                heads: None,
                context: None,
            },
            task: TaskSpec {
                features: 32,
                classes: 256,
                dataset: crate::text::Corpus::Tales.name().into(),
                tokenizer: None,
                prompt: None,
            },
            hyper: HyperParams {
                learning_rate: 2e-4,
                epsilon: 1e-3,
                batch_size: 32,
                staleness_bound: 64,
                quantizer: Quantizer::default(),
            },
            privacy: None,
            committee: None,
            train: None,
        })
        .expect("the tiny transformer job is valid")
    }

    /// The hyper-parameters.
    pub fn hyper(&self) -> &HyperParams {
        &self.config.hyper
    }

    /// The job's committees, if its steps are decided by several peers' votes.
    pub fn committee(&self) -> Option<CommitteeSpec> {
        self.config.committee
    }

    /// The job's differential-privacy settings, if it asks peers for private estimates.
    pub fn privacy(&self) -> Option<&crate::privacy::PrivacySpec> {
        self.config.privacy.as_ref()
    }

    /// θ₀: the checkpoint's weights, or generated on the CPU from the seed; where the job
    /// trains only part of its model, that part made from the base
    /// ([`crate::trained::Plan::initial`]).
    ///
    /// # Panics
    /// When the job names a checkpoint that was not loaded ([`Job::needs_checkpoint`]): such a
    /// job starts from a snapshot, never from here.
    pub fn initial_weights(&self) -> Vec<f32> {
        let plan = self.model.plan();
        let key = protocol::seed::init_key(self.id, self.config.job.init_seed);
        let adapter_key: [u8; 32] = Sha256::new()
            .chain_update(key)
            .chain_update(b"lora")
            .finalize()
            .into();
        let layout = self.model.base_layout();
        if let Some(base) = &self.base {
            let values = |name: &str| base.values(name).expect("a base tensor");
            return plan.initial(layout, values, adapter_key);
        }
        let base = self.base_weights();
        if !plan.freezes() {
            // Generated weights are this call's own: θ takes them without a copy.
            return std::sync::Arc::try_unwrap(base).unwrap_or_else(|kept| kept.to_vec());
        }
        let values = |name: &str| base[layout.get(name).expect("a base tensor").range()].to_vec();
        plan.initial(layout, values, adapter_key)
    }

    /// The whole model's starting weights (in [`Model::base_layout`]'s order): `job.init`'s,
    /// or generated from the seed. Where part of the model is frozen, this is the base.
    ///
    /// # Panics
    /// As [`Job::initial_weights`].
    pub fn base_weights(&self) -> std::sync::Arc<Vec<f32>> {
        if let Some(theta) = &self.initial {
            return theta.clone();
        }
        if let Some(base) = &self.base {
            let flat = self
                .model
                .base_layout()
                .params()
                .iter()
                .flat_map(|p| base.values(&p.name).expect("every base tensor is held"))
                .collect();
            return std::sync::Arc::new(flat);
        }
        assert!(
            !self.needs_checkpoint(),
            "job `{}` starts from the checkpoint {:?}, which was not loaded",
            self.config.job.name,
            self.config.job.init
        );
        std::sync::Arc::new(
            self.model
                .init(protocol::seed::init_key(self.id, self.config.job.init_seed)),
        )
    }

    /// The job as TOML, as a relay would serve it.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.config).expect("job configs serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_tiny_lm_job_file_is_the_built_in_job() {
        let shipped = Job::from_toml(include_str!("../../deploy/jobs/tiny-lm.toml")).unwrap();
        let built_in = Job::tiny_lm();
        assert_eq!(shipped.config, built_in.config);
        assert_eq!(shipped.id, built_in.id);
        assert_eq!(shipped.model.layout().d(), 120_576);
    }

    /// A char LM over the reference tokenizer's 400 tokens (`tests/reference/`).
    const BPE_JOB: &str = "[job]\nname = \"bpe\"\n\n[model]\nkind = \"char_lm\"\n\
        embedding = 8\nhidden = [16]\n\n[task]\nfeatures = 8\nclasses = 400\n\
        dataset = \"tales\"\ntokenizer = \"bpe-tokenizer.json\"\n";

    #[test]
    fn a_job_reads_its_tokenizer_beside_the_job_file_and_its_text_becomes_those_tokens() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
        let named = Job::from_toml(BPE_JOB).unwrap();
        assert!(named.needs_tokenizer());
        let tales = DataSource::Corpus(crate::Corpus::Tales);
        // Without its tokenizer a peer cannot make its examples (it would read bytes).
        assert!(crate::data::for_job(&named, &tales, None, 1).is_err());

        let job = named.with_init_from(&dir).unwrap();
        assert!(!job.needs_tokenizer());
        let json = std::fs::read(dir.join("bpe-tokenizer.json")).unwrap();
        assert_eq!(job.tokenizer_json(), Some(json.as_slice()));
        let data = crate::data::for_job(&job, &tales, None, 1).unwrap();
        assert_eq!(data.classes, 400);
        assert!(
            data.train.y.iter().any(|&t| t >= 256),
            "merged tokens are used"
        );
        assert!(data.train.y.iter().all(|&t| t < 400));
        // A peer given the same file's contents has the same tokenizer.
        let peer = Job::from_toml(BPE_JOB)
            .unwrap()
            .with_tokenizer_json(json)
            .unwrap();
        let text = "the clever fox hid the map at dawn.";
        assert_eq!(
            peer.tokenizer().unwrap().encode(text),
            job.tokenizer().unwrap().encode(text)
        );
    }

    #[test]
    fn a_tokenizer_that_does_not_fit_the_job_is_named() {
        let json = include_bytes!("../tests/reference/bpe-tokenizer.json").to_vec();
        let wrong_size = Job::from_toml(&BPE_JOB.replace("classes = 400", "classes = 256"))
            .unwrap()
            .with_tokenizer_json(json.clone())
            .unwrap_err();
        assert!(
            matches!(
                wrong_size,
                JobError::TokenizerVocab {
                    vocab: 400,
                    classes: 256,
                    ..
                }
            ),
            "{wrong_size}"
        );
        let broken = Job::from_toml(BPE_JOB)
            .unwrap()
            .with_tokenizer_json(b"{\"model\": 1}".to_vec())
            .unwrap_err();
        assert!(
            broken
                .to_string()
                .starts_with("task.tokenizer = bpe-tokenizer.json"),
            "{broken}"
        );
        let points = "[job]\nname = \"p\"\n[task]\nfeatures = 2\nclasses = 2\n\
                      tokenizer = \"t.json\"\n";
        assert!(matches!(
            Job::from_toml(points),
            Err(JobError::TokenizerNeedsText)
        ));
        let missing = Job::from_toml(BPE_JOB)
            .unwrap()
            .with_init_from(Path::new("/nonexistent"))
            .unwrap_err();
        assert!(
            missing.to_string().contains("bpe-tokenizer.json"),
            "{missing}"
        );
    }

    /// The shipped sentiment job, without loading its checkpoint.
    fn sentiment_job() -> Job {
        Job::from_toml(include_str!("../../deploy/jobs/reviews-sentiment.toml")).unwrap()
    }

    #[test]
    fn a_prompt_job_scores_its_classes_by_the_label_words_logits() {
        use burn::tensor::{Tensor, TensorData};
        let job = sentiment_job();
        assert_eq!(job.model.classes(), 2);
        assert!(!job.model.is_language_model());
        let reviews = DataSource::Corpus(crate::Corpus::Reviews);
        let data = crate::data::for_job(&job, &reviews, None, 1).unwrap();
        assert_eq!(data.class_names, ["negative", "positive"]);
        assert_eq!((data.features(), data.classes), (64, 2));
        let text = job.prompt_text(&data.test.x[..64]);
        assert!(
            text.starts_with("the ") && text.ends_with(". It was "),
            "{text:?}"
        );

        // The same transformer read as a language model: its logits for `t` and `g` are the
        // classifier's two classes.
        let mut config = job.config.clone();
        config.task.prompt = None;
        let lm = Job::new(config).unwrap();
        let theta = lm.model.init([3; 32]);
        let device = crate::cpu_device();
        let theta =
            Tensor::<1>::from_data(TensorData::new(theta, [job.model.layout().d()]), &device);
        let rows = data.test.rows(0..4);
        let x = || Tensor::<2>::from_data(TensorData::new(rows.x.clone(), [4, 64]), &device);
        let classes = job
            .model
            .forward(&theta, &crate::weights::Frozen::none(), x())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let vocabulary = lm
            .model
            .forward(&theta, &crate::weights::Frozen::none(), x())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Within rounding: the product over two rows of the embedding sums in another order.
        for (scores, logits) in classes.chunks(2).zip(vocabulary.chunks(256)) {
            let words = [logits[usize::from(b't')], logits[usize::from(b'g')]];
            for (score, logit) in scores.iter().zip(words) {
                assert!((score - logit).abs() < 1e-5, "{scores:?} against {words:?}");
            }
        }
    }

    #[test]
    fn a_task_that_cannot_classify_is_refused_with_its_reason() {
        let shipped = include_str!("../../deploy/jobs/reviews-sentiment.toml");
        let refused = |text: String| Job::from_toml(&text).unwrap_err().to_string();
        let no_text = refused(shipped.replace("{text} It was", "It was"));
        assert!(no_text.contains("must contain `{text}`"), "{no_text}");
        let one_word = refused(shipped.replace("[\" terrible\", \" great\"]", "[\" ok\"]"));
        assert!(one_word.contains("2 to 256 label words"), "{one_word}");
        let points = refused(
            "[job]\nname = \"p\"\n[task]\nfeatures = 2\nclasses = 2\n\
             [task.prompt]\ntemplate = \"{text}\"\nlabels = [\"a\", \"b\"]\n"
                .to_string(),
        );
        assert!(
            points.contains("must be a transformer or a char_lm"),
            "{points}"
        );

        // Under a BPE tokenizer a label word must be one token.
        let bpe = format!(
            "{BPE_JOB}[task.prompt]\ntemplate = \"{{text}} It was\"\n\
             labels = [\" terrible\", \" superb\"]\n"
        );
        let json = include_bytes!("../tests/reference/bpe-tokenizer.json").to_vec();
        let words = Job::from_toml(&bpe)
            .unwrap()
            .with_tokenizer_json(json)
            .unwrap_err()
            .to_string();
        assert!(
            words.contains("\" superb\" is") && words.contains("one token"),
            "{words}"
        );

        // Labelled texts must fit the job's label words.
        let job = sentiment_job();
        let csv = |text: &str| {
            crate::data::for_job(&job, &DataSource::Csv("mine.csv".into()), Some(text), 1)
                .unwrap_err()
                .to_string()
        };
        let rows = |labels: &[&str]| {
            (0..12)
                .map(|i| format!("review {i},{}\n", labels[i % labels.len()]))
                .collect::<String>()
        };
        let header = csv(&format!("review,sentiment\n{}", rows(&["bad", "good"])));
        assert!(header.contains("`text,label`"), "{header}");
        let three = csv(&format!("text,label\n{}", rows(&["bad", "good", "meh"])));
        assert!(three.contains("3 classes (bad, good, meh)"), "{three}");
        let points =
            crate::data::for_job(&job, &DataSource::Builtin(crate::Builtin::Spirals), None, 1)
                .unwrap_err()
                .to_string();
        assert!(
            points.contains("reviews or a CSV of text,label"),
            "{points}"
        );
        let two = crate::data::for_job(
            &job,
            &DataSource::Csv("mine.csv".into()),
            Some(&format!(
                "Text,Label\n\"so, so good\",good\n{}",
                rows(&["bad", "good"])
            )),
            1,
        )
        .unwrap();
        assert_eq!(two.class_names, ["bad", "good"]);
        assert_eq!(two.train.len() + two.test.len(), 13);
    }

    #[test]
    fn a_job_files_name_is_read_as_toml() {
        let name = |text: &str| JobConfig::parse_name(text);
        assert_eq!(name("[job]\nname = \"a = b\"  # c\n"), Some("a = b".into()));
        assert_eq!(
            name("[model]\nname = \"no\"\n[job]\nname = 'yes'\n"),
            Some("yes".into())
        );
        assert_eq!(name("[job]\nid = 3\n"), None);
        assert_eq!(name("not toml ["), None);
    }

    #[test]
    fn demo_job_round_trips_through_toml() {
        let job = Job::demo();
        let again = Job::from_toml(&job.to_toml()).unwrap();
        assert_eq!(again.config, job.config);
        assert_eq!(again.id, job.id);
    }

    #[test]
    fn minimal_job_file_uses_defaults() {
        let job = Job::from_toml("[job]\nname = \"x\"\n").unwrap();
        assert_eq!(job.config.hyper, HyperParams::default());
        assert_eq!(job.model.layout().d(), Job::demo().model.layout().d());
    }

    #[test]
    fn full_job_file_parses() {
        let text = r#"
            [job]
            name = "iris"
            id = 42
            init_seed = 7
            [model]
            kind = "mlp"
            hidden = [16]
            activation = "relu"
            [task]
            features = 4
            classes = 3
            [hyper]
            learning_rate = 0.01
            epsilon = 0.001
            batch_size = 16
            staleness_bound = 10
            quantizer = { kind = "linear", step = 0.1 }
        "#;
        let job = Job::from_toml(text).unwrap();
        assert_eq!(job.id, JobId(42));
        assert_eq!(job.model.layout().d(), 4 * 16 + 16 + 16 * 3 + 3);
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("learning_rate = -1.0", "hyper.learning_rate"),
            ("epsilon = 0.0", "hyper.epsilon"),
            ("batch_size = 0", "hyper.batch_size"),
            ("staleness_bound = 0", "hyper.staleness_bound"),
            ("staleness_bound = 65536", "hyper.staleness_bound"),
            (
                "quantizer = { kind = \"log\", min = 1.0, max = 0.5 }",
                "hyper.quantizer",
            ),
            ("learning_rate = 1e-36", "within normal f32"),
        ];
        for (line, needle) in cases {
            let text = format!("[job]\nname = \"x\"\n[hyper]\n{line}\n");
            let err = Job::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "`{line}` gave `{err}`");
        }
        for size in [0, 1, CommitteeSpec::MAX_SIZE + 1] {
            let text = format!("[job]\nname = \"x\"\n[committee]\nsize = {size}\n");
            let err = Job::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("committee.size"), "size {size} gave `{err}`");
        }
        let committee = Job::from_toml("[job]\nname = \"x\"\n[committee]\nsize = 3\n").unwrap();
        assert_eq!(committee.committee(), Some(CommitteeSpec { size: 3 }));
        let err = Job::from_toml("[job]\nname = \"x\"\nlearning_rate = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(matches!(
            Job::from_file(Path::new("/no/such/job.toml")),
            Err(JobError::Read { .. })
        ));
    }
}
