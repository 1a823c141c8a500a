//! A replica: one copy of θ that follows the log, and proposes contributions from local data.
//!
//! θ lives on the CPU, as the reference every backend must reproduce bit for bit. The forward
//! passes run on whichever burn `Device` the replica was given.

use crate::data::Split;
use crate::direction::{apply_update, perturb_into};
use crate::hash::weight_hash;
use crate::job::Job;
use crate::snapshot::{Snapshot, SnapshotError};
use burn::tensor::{Device, Int, Tensor, TensorData, loss::cross_entropy_with_logits};
use protocol::{Counter, DirectionSeed, LogEntry, PeerId, Version, WeightHash};
use std::sync::Arc;
use thiserror::Error;

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
}

/// One gradient estimate, ready to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub counter: Counter,
    pub base_version: Version,
    /// `Q(g)`, the byte on the wire.
    pub byte: u8,
    /// The projected gradient `(L+ − L−) / 2ε` before quantisation.
    pub g: f32,
    /// Mean of the two perturbed losses: the local training loss at `base_version`.
    pub loss: f32,
}

/// Loss and accuracy of the current weights on a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: f32,
}

/// θ at a version, following one job's log.
#[derive(Debug, Clone)]
pub struct Replica {
    job: Arc<Job>,
    device: Device,
    theta: Vec<f32>,
    version: Version,
    scratch: Vec<f32>,
}

impl Replica {
    /// A replica at version 0 with the job's initial weights.
    pub fn new(job: Arc<Job>, device: Device) -> Self {
        let theta = job.initial_weights();
        Replica::at(job, device, theta, Version(0))
    }

    /// A replica restored from a snapshot.
    pub fn from_snapshot(job: Arc<Job>, device: Device, bytes: &[u8]) -> Result<Self, EngineError> {
        let snap = Snapshot::from_bytes(bytes, job.id, job.model.layout())?;
        Ok(Replica::at(job, device, snap.theta, snap.version))
    }

    fn at(job: Arc<Job>, device: Device, theta: Vec<f32>, version: Version) -> Self {
        let scratch = vec![0.0; theta.len()];
        Replica {
            job,
            device,
            theta,
            version,
            scratch,
        }
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

    /// θ, in parameter order.
    pub fn weights(&self) -> &[f32] {
        &self.theta
    }

    /// SHA-256 of θ's bits.
    pub fn weight_hash(&self) -> WeightHash {
        weight_hash(&self.theta)
    }

    /// θ and its version as safetensors bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        Snapshot {
            job: self.job.id,
            version: self.version,
            theta: self.theta.clone(),
        }
        .to_bytes(self.job.model.layout())
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
        for e in entries {
            let c = self.step_for(e.byte);
            let seed = self.seed(e.peer, e.counter);
            self.apply_step(&seed, c);
        }
    }

    /// Applies one step of size `c` along `seed`'s direction and advances the version.
    /// `c = 0` leaves θ untouched (and still counts as a log position).
    pub fn apply_step(&mut self, seed: &DirectionSeed, c: f32) {
        if c != 0.0 {
            apply_update(&mut self.theta, seed, c);
        }
        self.version = self.version.next();
    }

    /// Estimates the projected gradient of contribution `(peer, counter)` on `batch`:
    /// `g = (L(θ+εz) − L(θ−εz)) / 2ε`, and its byte. θ is not modified.
    pub async fn propose(
        &mut self,
        peer: PeerId,
        counter: Counter,
        batch: &Split,
    ) -> Result<Proposal, EngineError> {
        let seed = self.seed(peer, counter);
        let eps = self.job.hyper().epsilon;
        let (x, targets) = self.batch_tensors(batch)?;

        perturb_into(&self.theta, &seed, eps, &mut self.scratch);
        let plus = self.loss(&x, &targets);
        perturb_into(&self.theta, &seed, -eps, &mut self.scratch);
        let minus = self.loss(&x, &targets);

        let losses = read_f32(Tensor::cat(vec![plus, minus], 0)).await?;
        let (lp, lm) = (losses[0], losses[1]);
        let g = (lp - lm) / (2.0 * eps);
        Ok(Proposal {
            counter,
            base_version: self.version,
            byte: self.job.hyper().quantizer.encode(g),
            g,
            loss: 0.5 * (lp + lm),
        })
    }

    /// Mean cross-entropy of the current (unperturbed) weights on `batch`: one forward pass.
    pub async fn batch_loss(&self, batch: &Split) -> Result<f32, EngineError> {
        let (x, targets) = self.batch_tensors(batch)?;
        let theta = self.theta_tensor(&self.theta);
        let logits = self.job.model.forward(&theta, x);
        Ok(read_f32(cross_entropy_with_logits(logits, targets)).await?[0])
    }

    /// Mean cross-entropy and accuracy of the current weights on `split`.
    pub async fn evaluate(&self, split: &Split) -> Result<Evaluation, EngineError> {
        let (x, targets) = self.batch_tensors(split)?;
        let theta = self.theta_tensor(&self.theta);
        let logits = self.job.model.forward(&theta, x);
        let loss = cross_entropy_with_logits(logits.clone(), targets.clone());
        let predicted = logits.argmax(1).reshape([split.len()]);
        let labels = Tensor::<1, Int>::from_data(
            TensorData::new(
                split.y.iter().map(|&y| y as i64).collect::<Vec<_>>(),
                [split.len()],
            ),
            &self.device,
        );
        let correct = predicted.equal(labels).int().sum().float();
        let both = read_f32(Tensor::cat(vec![loss, correct], 0)).await?;
        Ok(Evaluation {
            loss: both[0],
            accuracy: both[1] / split.len() as f32,
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
        let input =
            Tensor::<2>::from_data(TensorData::new(x.to_vec(), [rows, features]), &self.device);
        let theta = self.theta_tensor(&self.theta);
        let probs = burn::tensor::activation::softmax(self.job.model.forward(&theta, input), 1);
        read_f32(probs.reshape([rows * self.job.model.classes()])).await
    }

    fn loss(&self, x: &Tensor<2>, targets: &Tensor<2>) -> Tensor<1> {
        let theta = self.theta_tensor(&self.scratch);
        let logits = self.job.model.forward(&theta, x.clone());
        cross_entropy_with_logits(logits, targets.clone())
    }

    fn theta_tensor(&self, values: &[f32]) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &self.device,
        )
    }

    /// Inputs and one-hot targets on the device.
    fn batch_tensors(&self, batch: &Split) -> Result<(Tensor<2>, Tensor<2>), EngineError> {
        let model = &self.job.model;
        if batch.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        if batch.features != model.features() {
            return Err(EngineError::Features {
                expected: model.features(),
                got: batch.features,
            });
        }
        let classes = model.classes();
        let mut onehot = vec![0.0f32; batch.len() * classes];
        for (row, &y) in batch.y.iter().enumerate() {
            if y as usize >= classes {
                return Err(EngineError::Label { label: y, classes });
            }
            onehot[row * classes + y as usize] = 1.0;
        }
        let x = Tensor::from_data(
            TensorData::new(batch.x.clone(), [batch.len(), batch.features]),
            &self.device,
        );
        let t = Tensor::from_data(
            TensorData::new(onehot, [batch.len(), classes]),
            &self.device,
        );
        Ok((x, t))
    }
}

async fn read_f32(t: Tensor<1>) -> Result<Vec<f32>, EngineError> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| EngineError::Device(format!("{e:?}")))?;
    data.try_to_vec::<f32>()
        .map_err(|e| EngineError::Device(format!("{e:?}")))
}
