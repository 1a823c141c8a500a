//! A replica: one copy of θ that follows the log, and proposes contributions from local data.
//!
//! θ lives on the CPU, as the reference every backend must reproduce bit for bit. The forward
//! passes run on whichever burn `Device` the replica was given.

use crate::data::Split;
use crate::direction::apply_updates;
use crate::hash::weight_hash;
use crate::job::Job;
use crate::model::{lane_losses, lane_private_estimates};
use crate::snapshot::{Snapshot, SnapshotError};
use burn::tensor::{Device, Int, Tensor, TensorData, loss::cross_entropy_with_logits};
use protocol::{Counter, DirectionSeed, LogEntry, PeerId, Version, WeightHash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use thiserror::Error;

/// The largest buffer of perturbed copies one forward pass takes: WebGPU's default limit on a
/// storage buffer binding (128 MiB). More lanes than fit are evaluated in several passes.
pub const MAX_LANE_BYTES: usize = 128 << 20;

/// Most input values (rows × features) one evaluation pass reads. A transformer's activations
/// grow with its input, and a whole test split in one pass (12 000 windows of 32 bytes for the
/// tiny LM job) can exhaust a browser tab's memory; the point sets fit in one pass.
const EVAL_VALUES_PER_PASS: usize = 16_384;

/// A lane of θ itself (no direction is drawn for a scale of 0).
const UNPERTURBED: (DirectionSeed, f32) = (DirectionSeed([0; 32]), 0.0);

/// A failure inside the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("batch has {got} features per row, the model reads {expected}")]
    Features { expected: usize, got: usize },
    #[error("label {label} is out of range for {classes} classes")]
    Label { label: u32, classes: usize },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("reading a result back from the device failed: {0}")]
    Device(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[cfg(feature = "wgpu")]
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// One gradient estimate, ready to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub counter: Counter,
    pub base_version: Version,
    /// `Q(g)`, the byte on the wire.
    pub byte: u8,
    /// The projected gradient `(L+ − L−) / 2ε` before quantisation. In a private job: the
    /// batch mean of the clipped per-example differences, and, once the session has added the
    /// noise, the noised value the byte encodes.
    pub g: f32,
    /// Mean of the two perturbed losses: the local training loss at `base_version`.
    pub loss: f32,
    /// `L(θ + εz)` and `L(θ − εz)` on the batch.
    pub loss_plus: f32,
    pub loss_minus: f32,
}

/// A batch the model can read: not empty, with the model's number of features.
pub(crate) fn check_batch(model: &crate::Model, batch: &Split) -> Result<(), EngineError> {
    if batch.is_empty() {
        return Err(EngineError::EmptyBatch);
    }
    if batch.features != model.features() {
        return Err(EngineError::Features {
            expected: model.features(),
            got: batch.features,
        });
    }
    Ok(())
}

/// A decoded snapshot that is `job`'s, with θ of its model's length.
fn check_restorable(job: &Job, snapshot: &Snapshot) -> Result<(), EngineError> {
    if snapshot.job != job.id {
        return Err(SnapshotError::WrongJob {
            expected: job.id,
            found: snapshot.job,
        }
        .into());
    }
    let d = job.model.layout().d();
    if snapshot.theta.len() != d {
        return Err(SnapshotError::Truncated {
            got: snapshot.theta.len() * 4,
            expected: d * 4,
        }
        .into());
    }
    Ok(())
}

/// Loss and accuracy of the current weights on a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: f32,
}

/// Where θ lives.
#[derive(Debug)]
enum WeightStore {
    /// On the CPU: the reference.
    Host { theta: Vec<f32> },
    /// In a burn tensor on the GPU, changed only by the `shaders` update kernel.
    #[cfg(feature = "wgpu")]
    Gpu(Box<crate::gpu::GpuWeights>),
}

/// θ at a version, following one job's log.
#[derive(Debug)]
pub struct Replica {
    job: Arc<Job>,
    device: Device,
    store: WeightStore,
    /// The frozen base on `device`, where the job trains only part of its model.
    frozen: crate::weights::Frozen,
    version: Version,
    /// Bytes this replica has read back from its device (losses, hashes, evaluations).
    read_back: AtomicU64,
}

impl Replica {
    /// A replica at version 0 with the job's initial weights.
    pub fn new(job: Arc<Job>, device: Device) -> Self {
        let theta = job.initial_weights();
        Replica::at(job, device, theta, Version(0))
    }

    /// A replica restored from a snapshot.
    pub fn from_snapshot(job: Arc<Job>, device: Device, bytes: &[u8]) -> Result<Self, EngineError> {
        let snapshot = Snapshot::from_bytes(bytes, job.id, job.model.layout())?;
        Replica::restored(job, device, snapshot)
    }

    /// A replica from a decoded snapshot (a [`crate::SnapshotReader`]'s), which keeps its θ.
    pub fn restored(
        job: Arc<Job>,
        device: Device,
        snapshot: Snapshot,
    ) -> Result<Self, EngineError> {
        check_restorable(&job, &snapshot)?;
        Ok(Replica::at(job, device, snapshot.theta, snapshot.version))
    }

    fn at(job: Arc<Job>, device: Device, theta: Vec<f32>, version: Version) -> Self {
        Replica {
            frozen: job.frozen(&device),
            job,
            device,
            store: WeightStore::Host { theta },
            version,
            read_back: AtomicU64::new(0),
        }
    }

    /// A replica at version 0 whose θ lives on the GPU of `gpu`.
    #[cfg(feature = "wgpu")]
    pub fn new_gpu(job: Arc<Job>, gpu: &crate::gpu::GpuContext) -> Self {
        let theta = job.initial_weights();
        Replica::at_gpu(job, gpu, &theta, Version(0))
    }

    /// A GPU replica restored from a snapshot.
    #[cfg(feature = "wgpu")]
    pub fn from_snapshot_gpu(
        job: Arc<Job>,
        gpu: &crate::gpu::GpuContext,
        bytes: &[u8],
    ) -> Result<Self, EngineError> {
        let snapshot = Snapshot::from_bytes(bytes, job.id, job.model.layout())?;
        Replica::restored_gpu(job, gpu, &snapshot)
    }

    /// A GPU replica from a decoded snapshot, which stays the caller's (a CPU replica can
    /// take it afterwards).
    #[cfg(feature = "wgpu")]
    pub fn restored_gpu(
        job: Arc<Job>,
        gpu: &crate::gpu::GpuContext,
        snapshot: &Snapshot,
    ) -> Result<Self, EngineError> {
        check_restorable(&job, snapshot)?;
        Ok(Replica::at_gpu(job, gpu, &snapshot.theta, snapshot.version))
    }

    #[cfg(feature = "wgpu")]
    fn at_gpu(
        job: Arc<Job>,
        gpu: &crate::gpu::GpuContext,
        theta: &[f32],
        version: Version,
    ) -> Self {
        let weights = crate::gpu::GpuWeights::in_chunks(&gpu.device, theta, gpu.chunk_params)
            .expect("a GpuContext's device is burn's wgpu device");
        Replica {
            frozen: job.frozen(&gpu.device),
            job,
            device: gpu.device.clone(),
            store: WeightStore::Gpu(Box::new(weights)),
            version,
            read_back: AtomicU64::new(0),
        }
    }

    /// The frozen base this replica's passes read beside θ (empty where everything trains).
    pub fn frozen(&self) -> &crate::weights::Frozen {
        &self.frozen
    }

    /// Whether θ lives on a GPU.
    pub fn on_gpu(&self) -> bool {
        !matches!(self.store, WeightStore::Host { .. })
    }

    /// The job this replica follows.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// The device the forward passes run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of log entries applied.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Bytes read back from the device so far: what a GPU peer pays in transfers besides its
    /// forward passes (for a proposal, only the losses).
    pub fn bytes_read_back(&self) -> u64 {
        self.read_back.load(Relaxed)
    }

    /// The most directions one forward pass evaluates for this model: two perturbed copies
    /// each of the largest tensor, within [`MAX_LANE_BYTES`] (on the host and on a GPU alike,
    /// each tensor's copies are made as the pass reads it).
    pub fn max_lanes(&self) -> usize {
        let layout = self.job.model.layout();
        let largest = layout.params().iter().map(|p| p.len()).max().unwrap_or(1);
        let copy = 2 * largest.max(1) * size_of::<f32>();
        (MAX_LANE_BYTES / copy).max(1)
    }

    /// θ, in parameter order (read back from the GPU when it lives there).
    pub async fn read_weights(&self) -> Result<Vec<f32>, EngineError> {
        match &self.store {
            WeightStore::Host { theta, .. } => Ok(theta.clone()),
            #[cfg(feature = "wgpu")]
            WeightStore::Gpu(gpu) => {
                let mut theta = Vec::new();
                for chunk in gpu.chunk_tensors() {
                    theta.extend(self.read(chunk).await?);
                }
                Ok(theta)
            }
        }
    }

    /// SHA-256 of θ's bits.
    pub async fn weight_hash(&self) -> Result<WeightHash, EngineError> {
        match &self.store {
            WeightStore::Host { theta, .. } => Ok(weight_hash(theta)),
            #[cfg(feature = "wgpu")]
            WeightStore::Gpu(_) => Ok(weight_hash(&self.read_weights().await?)),
        }
    }

    /// θ and its version as safetensors bytes.
    pub async fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        Ok(Snapshot {
            job: self.job.id,
            version: self.version,
            theta: self.read_weights().await?,
        }
        .to_bytes(self.job.model.layout()))
    }

    /// The direction seed of a contribution in this job.
    pub fn seed(&self, peer: PeerId, counter: Counter) -> DirectionSeed {
        DirectionSeed::derive(self.job.id, peer, counter)
    }

    /// The step `c = −η·D(byte)`, computed once in f32.
    pub fn step_for(&self, byte: u8) -> f32 {
        let hyper = self.job.hyper();
        -(hyper.learning_rate * hyper.quantizer.decode(byte))
    }

    /// Applies log entries in order: `θ ← θ + c·z` for each.
    pub fn apply(&mut self, entries: &[LogEntry]) {
        let steps: Vec<(DirectionSeed, f32)> = entries
            .iter()
            .map(|e| (self.seed(e.peer, e.counter), self.step_for(e.byte)))
            .collect();
        self.apply_steps(&steps);
    }

    /// Applies steps of size `c` along each seed's direction, in order, advancing the version
    /// by one each. `c = 0` leaves θ untouched (and still counts as a log position).
    pub fn apply_steps(&mut self, steps: &[(DirectionSeed, f32)]) {
        match &mut self.store {
            WeightStore::Host { theta, .. } => apply_updates(theta, steps),
            #[cfg(feature = "wgpu")]
            WeightStore::Gpu(gpu) => {
                let nonzero: Vec<_> = steps.iter().filter(|(_, c)| *c != 0.0).copied().collect();
                gpu.apply(&nonzero);
            }
        }
        self.version = Version(self.version.0 + steps.len() as u64);
    }

    /// Estimates the projected gradient of contribution `(peer, counter)` on `batch`:
    /// `g = (L(θ+εz) − L(θ−εz)) / 2ε`, and its byte. θ is not modified.
    pub async fn propose(
        &mut self,
        peer: PeerId,
        counter: Counter,
        batch: &Split,
    ) -> Result<Proposal, EngineError> {
        let mut proposals = self.propose_lanes(peer, &[counter], batch).await?;
        Ok(proposals.remove(0))
    }

    /// [`Replica::propose`] for several contributions at once, all on `batch`: their `2K`
    /// perturbed copies go through one batched forward pass (a lane each, in as few passes as
    /// [`Replica::max_lanes`] allows), and only the `2K` losses come back from the device.
    pub async fn propose_lanes(
        &mut self,
        peer: PeerId,
        counters: &[Counter],
        batch: &Split,
    ) -> Result<Vec<Proposal>, EngineError> {
        let eps = self.job.hyper().epsilon;
        let targets = self.targets(batch)?;
        let mut proposals = Vec::with_capacity(counters.len());
        for chunk in counters.chunks(self.max_lanes()) {
            let lanes: Vec<(DirectionSeed, f32)> = chunk
                .iter()
                .flat_map(|&c| {
                    let seed = self.seed(peer, c);
                    [(seed, eps), (seed, -eps)]
                })
                .collect();
            let logits = self.forward_lanes(&lanes, &batch.x);
            // A private job's estimate is the mean of clipped per-example differences (the
            // session adds the noise); otherwise the difference of the mean losses.
            let (losses, clipped) = match self.job.privacy() {
                Some(p) => {
                    let read = self
                        .read(lane_private_estimates(logits, &targets, eps, p.clip))
                        .await?;
                    let (losses, clipped) = read.split_at(2 * chunk.len());
                    (losses.to_vec(), Some(clipped.to_vec()))
                }
                None => (self.read(lane_losses(logits, &targets)).await?, None),
            };
            for (i, (&counter, pair)) in chunk.iter().zip(losses.chunks_exact(2)).enumerate() {
                let (lp, lm) = (pair[0], pair[1]);
                let g = clipped.as_ref().map_or((lp - lm) / (2.0 * eps), |c| c[i]);
                proposals.push(Proposal {
                    counter,
                    base_version: self.version,
                    byte: self.job.hyper().quantizer.encode(g),
                    g,
                    loss: 0.5 * (lp + lm),
                    loss_plus: lp,
                    loss_minus: lm,
                });
            }
        }
        Ok(proposals)
    }

    /// Losses of `copies` unperturbed copies of θ on `batch`, in one batched forward pass: what
    /// a step of `copies / 2` lanes costs without the perturbation (for benchmarks).
    pub async fn batch_loss_copies(
        &self,
        batch: &Split,
        copies: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let targets = self.targets(batch)?;
        let logits = self.forward_lanes(&vec![UNPERTURBED; copies], &batch.x);
        self.read(lane_losses(logits, &targets)).await
    }

    /// Mean cross-entropy of the current (unperturbed) weights on `batch`: one forward pass.
    pub async fn batch_loss(&self, batch: &Split) -> Result<f32, EngineError> {
        let targets = self.targets(batch)?;
        let logits = self.forward(&batch.x);
        Ok(self
            .read(cross_entropy_with_logits(logits, targets))
            .await?[0])
    }

    /// Mean cross-entropy and accuracy of the current weights on `split`.
    pub async fn evaluate(&self, split: &Split) -> Result<Evaluation, EngineError> {
        if split.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        let rows_per_pass = (EVAL_VALUES_PER_PASS / split.features.max(1)).max(1);
        let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
        for start in (0..split.len()).step_by(rows_per_pass) {
            let part = split.rows(start..(start + rows_per_pass).min(split.len()));
            let targets = self.targets(&part)?;
            let logits = self.forward(&part.x);
            let loss = cross_entropy_with_logits(logits.clone(), targets);
            let predicted = logits.argmax(1).reshape([part.len()]);
            let labels = Tensor::<1, Int>::from_data(
                TensorData::new(
                    part.y.iter().map(|&y| y as i64).collect::<Vec<_>>(),
                    [part.len()],
                ),
                &self.device,
            );
            let right = predicted.equal(labels).int().sum().float();
            let both = self.read(Tensor::cat(vec![loss, right], 0)).await?;
            // The pass's mean loss, weighted by its rows (exact for a split that fits in one).
            loss_sum += f64::from(both[0]) * part.len() as f64;
            correct += f64::from(both[1]);
        }
        let rows = split.len() as f64;
        Ok(Evaluation {
            loss: (loss_sum / rows) as f32,
            accuracy: (correct / rows) as f32,
        })
    }

    /// Class scores for each row of `x` (`rows × features`, row-major): the softmax of the logits.
    pub async fn predict(&self, x: &[f32]) -> Result<Vec<f32>, EngineError> {
        let features = self.job.model.features();
        if !x.len().is_multiple_of(features) {
            return Err(EngineError::Features {
                expected: features,
                got: x.len(),
            });
        }
        let rows = x.len() / features;
        let probs = burn::tensor::activation::softmax(self.forward(x), 1);
        self.read(probs.reshape([rows * self.job.model.classes()]))
            .await
    }

    /// About `len` tokens of text a language model writes after `prompt`, each drawn from its
    /// predicted distribution with a ChaCha stream seeded by `seed` (temperature 1): bytes, or
    /// the job's BPE tokens decoded to UTF-8.
    pub async fn sample_text(
        &self,
        prompt: &[u8],
        len: usize,
        seed: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let Some(tokenizer) = self.job.tokenizer() else {
            let prompt: Vec<u32> = prompt.iter().map(|&b| u32::from(b)).collect();
            let tokens = self.sample_tokens(&prompt, 0, len, seed).await?;
            // A byte model's classes are the 256 bytes.
            return Ok(tokens.into_iter().map(|t| t as u8).collect());
        };
        let prompt = tokenizer.encode(&String::from_utf8_lossy(prompt));
        let pad = tokenizer.end_of_text().unwrap_or(0);
        let tokens = self.sample_tokens(&prompt, pad, len, seed).await?;
        Ok(tokenizer.decode(&tokens).into_bytes())
    }

    /// `len` token ids drawn one after another after `prompt` (the context padded with `pad`).
    async fn sample_tokens(
        &self,
        prompt: &[u32],
        pad: u32,
        len: usize,
        seed: u64,
    ) -> Result<Vec<u32>, EngineError> {
        use rand_core::{RngCore, SeedableRng};
        let model = &self.job.model;
        let (context, classes) = (model.features(), model.classes());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tokens = prompt.to_vec();
        for _ in 0..len {
            let row = crate::text::context_of(&tokens, context, pad);
            let logits = self.forward(&row);
            let probs = self
                .read(burn::tensor::activation::softmax(logits, 1).reshape([classes]))
                .await?;
            let mut u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
            let mut next = probs.len() - 1;
            for (i, p) in probs.iter().enumerate() {
                if u < *p {
                    next = i;
                    break;
                }
                u -= p;
            }
            tokens.push(next as u32);
        }
        Ok(tokens.split_off(prompt.len()))
    }

    /// Logits `[lanes, batch, classes]` on `inputs` (rows × features, row-major) of
    /// `θ + scale·z(seed)` for each lane; θ itself is not touched. On the host each tensor's copies are made as the pass reads it; on the
    /// GPU the copies of θ are made there and never leave it.
    fn forward_lanes(&self, lanes: &[(DirectionSeed, f32)], inputs: &[f32]) -> Tensor<3> {
        let model = &self.job.model;
        let features = model.features();
        let x = Tensor::from_data(
            TensorData::new(inputs.to_vec(), [inputs.len() / features, features]),
            &self.device,
        );
        match &self.store {
            WeightStore::Host { theta } => {
                let weights =
                    model.weights_perturbed(theta, lanes, &self.frozen, &self.device, inputs);
                model.forward_weights(&weights, x)
            }
            #[cfg(feature = "wgpu")]
            WeightStore::Gpu(gpu) => {
                let weights = model.weights_on_gpu(gpu, lanes, &self.frozen, inputs);
                model.forward_weights(&weights, x)
            }
        }
    }

    /// Logits `[batch, classes]` of θ itself on `inputs`.
    fn forward(&self, inputs: &[f32]) -> Tensor<2> {
        let batch = inputs.len() / self.job.model.features();
        self.forward_lanes(&[UNPERTURBED], inputs)
            .reshape([batch, self.job.model.classes()])
    }

    /// One-hot targets of a batch the model can read, on the device.
    fn targets(&self, batch: &Split) -> Result<Tensor<2>, EngineError> {
        let model = &self.job.model;
        check_batch(model, batch)?;
        let classes = model.classes();
        let mut onehot = vec![0.0f32; batch.len() * classes];
        for (row, &y) in batch.y.iter().enumerate() {
            if y as usize >= classes {
                return Err(EngineError::Label { label: y, classes });
            }
            onehot[row * classes + y as usize] = 1.0;
        }
        Ok(Tensor::from_data(
            TensorData::new(onehot, [batch.len(), classes]),
            &self.device,
        ))
    }
}

impl Replica {
    /// Reads a tensor back from the device, counting the bytes.
    async fn read(&self, t: Tensor<1>) -> Result<Vec<f32>, EngineError> {
        let data = t
            .into_data_async()
            .await
            .map_err(|e| EngineError::Device(format!("{e:?}")))?;
        let values = data
            .try_to_vec::<f32>()
            .map_err(|e| EngineError::Device(format!("{e:?}")))?;
        self.read_back
            .fetch_add((values.len() * size_of::<f32>()) as u64, Relaxed);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{Corpus, corpus_dataset};
    use crate::{block_on, cpu_device};

    /// The full-copy path: `lanes × d` perturbed copies of θ, then one pass over them.
    fn full_copy_losses(
        replica: &Replica,
        lanes: &[(DirectionSeed, f32)],
        batch: &Split,
    ) -> Vec<f32> {
        let theta = block_on(replica.read_weights()).unwrap();
        let d = theta.len();
        let mut copies = vec![0.0f32; lanes.len() * d];
        for ((seed, scale), out) in lanes.iter().zip(copies.chunks_exact_mut(d)) {
            crate::direction::perturb_into(&theta, seed, *scale, out);
        }
        let thetas = Tensor::from_data(TensorData::new(copies, [lanes.len(), d]), replica.device());
        let targets = replica.targets(batch).unwrap();
        let x = Tensor::from_data(
            TensorData::new(batch.x.clone(), [batch.len(), batch.features]),
            replica.device(),
        );
        let logits = replica
            .job
            .model
            .forward_lanes(&thetas, replica.frozen(), x);
        block_on(replica.read(lane_losses(logits, &targets))).unwrap()
    }

    #[test]
    fn perturbed_tensors_made_on_the_fly_give_the_full_copy_losses_and_hold_a_layer_at_a_time() {
        let job = Arc::new(Job::tiny_lm());
        let mut replica = Replica::new(job.clone(), cpu_device());
        // Away from the initial weights, so every tensor's values are θ's own.
        replica.apply_steps(&[(replica.seed(PeerId(1), Counter(0)), 0.01)]);
        let batch = corpus_dataset(Corpus::Tales, 32, 1).train.rows(0..8);
        let (peer, counters) = (PeerId(4), [Counter(0), Counter(1), Counter(2)]);
        let made_before = crate::weights::PerturbedMade::so_far();
        let proposals = block_on(replica.propose_lanes(peer, &counters, &batch)).unwrap();
        let made = crate::weights::PerturbedMade::so_far();

        let eps = job.hyper().epsilon;
        let lanes: Vec<_> = counters
            .iter()
            .flat_map(|&c| [(replica.seed(peer, c), eps), (replica.seed(peer, c), -eps)])
            .collect();
        let losses = full_copy_losses(&replica, &lanes, &batch);
        for (p, pair) in proposals.iter().zip(losses.chunks_exact(2)) {
            assert_eq!(
                (p.loss_plus.to_bits(), p.loss_minus.to_bits()),
                (pair[0].to_bits(), pair[1].to_bits()),
                "{p:?} against {pair:?}"
            );
        }

        // At most one tensor's 2K copies at once, never a copy of θ per lane.
        let layout = job.model.layout();
        let d = layout.d();
        let largest_tensor = layout.params().iter().map(|p| p.len()).max().unwrap();
        assert!(largest_tensor * 4 < d, "the bound below means something");
        assert!(
            made.largest <= lanes.len() * largest_tensor * size_of::<f32>(),
            "{made:?}"
        );
        // Each tensor once a step; the token table twice (embedding, then readout).
        let wte = layout.get("wte.weight").unwrap().len();
        assert!(
            made.bytes - made_before.bytes <= lanes.len() * (d + wte) * size_of::<f32>(),
            "{made:?}"
        );
    }

    #[test]
    fn a_tied_output_made_in_parts_gives_the_full_copy_losses() {
        // More tokens than the output takes at once: the product with the embedding is made
        // in parts, each part's rows perturbed alone.
        let job = Arc::new(
            Job::from_toml(
                "[job]\nname = \"wide-vocabulary\"\n[model]\nkind = \"transformer\"\n\
                 layers = 1\nwidth = 8\nheads = 2\ncontext = 8\n[task]\nfeatures = 8\n\
                 classes = 9000\ndataset = \"tales\"\n",
            )
            .unwrap(),
        );
        let mut replica = Replica::new(job.clone(), cpu_device());
        replica.apply_steps(&[(replica.seed(PeerId(1), Counter(0)), 0.01)]);
        let batch = corpus_dataset(Corpus::Tales, 8, 1).train.rows(0..4);
        let counters = [Counter(7), Counter(8)];
        let proposals = block_on(replica.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
        let eps = job.hyper().epsilon;
        let lanes: Vec<_> = counters
            .iter()
            .flat_map(|&c| {
                [
                    (replica.seed(PeerId(2), c), eps),
                    (replica.seed(PeerId(2), c), -eps),
                ]
            })
            .collect();
        let losses = full_copy_losses(&replica, &lanes, &batch);
        let ours: Vec<f32> = proposals
            .iter()
            .flat_map(|p| [p.loss_plus, p.loss_minus])
            .collect();
        // Each logit is the same dot product either way (bit for bit on this machine); allow
        // for a matrix product that orders its sums differently for another shape. The
        // forward pass need not agree across peers: only the update must.
        for (a, b) in ours.iter().zip(&losses) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{ours:?} against {losses:?}"
            );
        }
    }

    #[test]
    fn evaluation_in_passes_is_the_row_weighted_mean() {
        let job = Job::from_toml(
            "[job]\nname = \"eval\"\n[model]\nkind = \"char_lm\"\nembedding = 4\nhidden = [16]\n\
             [task]\nfeatures = 16\nclasses = 256\ndataset = \"tales\"\n",
        )
        .unwrap();
        let replica = Replica::new(Arc::new(job), cpu_device());
        // 1 800 windows of 16 bytes: passes of 1 024 and 776 rows.
        let split = corpus_dataset(Corpus::Tales, 16, 1).test.rows(0..1800);
        let whole = block_on(replica.evaluate(&split)).unwrap();
        let (mut loss, mut accuracy) = (0.0f64, 0.0f64);
        for rows in [0..1024, 1024..1800] {
            let n = rows.len() as f64;
            let part = block_on(replica.evaluate(&split.rows(rows))).unwrap();
            loss += f64::from(part.loss) * n;
            accuracy += f64::from(part.accuracy) * n;
        }
        assert!(
            (f64::from(whole.loss) - loss / 1800.0).abs() < 1e-5,
            "{whole:?}"
        );
        assert!((f64::from(whole.accuracy) - accuracy / 1800.0).abs() < 1e-6);
    }
}
