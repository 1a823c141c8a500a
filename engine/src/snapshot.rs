//! Snapshots: θ at a version, as a safetensors file with one tensor per model parameter.
//!
//! Metadata keys: `onebyte.job` (job id), `onebyte.version`, `onebyte.hash` (hex weight hash).
//! Loading checks the job, every name and shape against the model's layout, and the hash, so a
//! restored replica holds exactly the bits that were saved.

use crate::hash::weight_hash;
use crate::layout::ParamLayout;
use protocol::{JobId, Version, WeightHash};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use thiserror::Error;

/// θ at a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub job: JobId,
    pub version: Version,
    pub theta: Vec<f32>,
}

/// A snapshot that cannot be loaded.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("not a safetensors file: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("snapshot metadata lacks `{0}`")]
    MissingMetadata(&'static str),
    #[error("snapshot metadata `{key}` = `{value}` is not valid")]
    BadMetadata { key: &'static str, value: String },
    #[error("snapshot is of job {found}, not {expected}")]
    WrongJob { expected: JobId, found: JobId },
    #[error("snapshot lacks parameter `{0}`")]
    MissingParam(String),
    #[error("snapshot parameter `{name}` is {found:?} {dtype}, the model needs {expected:?} F32")]
    WrongParam {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        dtype: String,
    },
    #[error("checkpoint tensor `{0}` is not part of this model (a checkpoint of another model?)")]
    UnusedTensor(String),
    #[error("snapshot has {0} tensors, the model has {1}")]
    ExtraParams(usize, usize),
    #[error("snapshot weights hash to {found}, its metadata says {expected}")]
    HashMismatch { expected: String, found: String },
}

impl Snapshot {
    /// The hash of the saved weights.
    pub fn hash(&self) -> WeightHash {
        weight_hash(&self.theta)
    }

    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self, layout: &ParamLayout) -> Vec<u8> {
        let meta = HashMap::from([
            ("onebyte.job".to_string(), self.job.0.to_string()),
            ("onebyte.version".to_string(), self.version.0.to_string()),
            ("onebyte.hash".to_string(), self.hash().to_hex()),
        ]);
        write_params(&self.theta, layout, meta)
    }

    /// Parses safetensors bytes and checks them against the job and layout.
    pub fn from_bytes(
        bytes: &[u8],
        job: JobId,
        layout: &ParamLayout,
    ) -> Result<Self, SnapshotError> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |key: &'static str| {
            meta.get(key)
                .cloned()
                .ok_or(SnapshotError::MissingMetadata(key))
        };
        let num = |key: &'static str| -> Result<u64, SnapshotError> {
            let value = get(key)?;
            value
                .parse()
                .map_err(|_| SnapshotError::BadMetadata { key, value })
        };
        let found = JobId(num("onebyte.job")?);
        if found != job {
            return Err(SnapshotError::WrongJob {
                expected: job,
                found,
            });
        }
        let version = Version(num("onebyte.version")?);
        let theta = read_params(bytes, layout)?;
        let snapshot = Snapshot {
            job,
            version,
            theta,
        };
        let expected = get("onebyte.hash")?;
        let found = snapshot.hash().to_hex();
        if expected != found {
            return Err(SnapshotError::HashMismatch { expected, found });
        }
        Ok(snapshot)
    }
}

/// θ as safetensors: one F32 tensor per layout entry, under its name and shape, with `meta`.
pub fn write_params(theta: &[f32], layout: &ParamLayout, meta: HashMap<String, String>) -> Vec<u8> {
    assert_eq!(theta.len(), layout.d(), "θ must match the layout");
    let bytes: Vec<u8> = theta.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views: Vec<(String, TensorView<'_>)> = layout
        .params()
        .iter()
        .map(|p| {
            let data = &bytes[p.offset * 4..(p.offset + p.len()) * 4];
            let view = TensorView::new(Dtype::F32, p.shape.clone(), data)
                .expect("shape and byte length agree");
            (p.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, Some(meta)).expect("in-memory serialisation succeeds")
}

/// A checkpoint's parameters: any safetensors file with the model's tensors (a snapshot of any
/// job with the same model, or a file written by other tools). When it carries an
/// `onebyte.hash`, the weights must match it.
pub fn read_checkpoint(bytes: &[u8], layout: &ParamLayout) -> Result<Vec<f32>, SnapshotError> {
    let theta = read_params(bytes, layout)?;
    check_hash_if_present(bytes, &theta)?;
    Ok(theta)
}

/// When the file's metadata carries an `onebyte.hash`, `theta` (read from it) must match it.
pub fn check_hash_if_present(bytes: &[u8], theta: &[f32]) -> Result<(), SnapshotError> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    if let Some(expected) = meta.metadata().as_ref().and_then(|m| m.get("onebyte.hash")) {
        let found = weight_hash(theta).to_hex();
        if *expected != found {
            return Err(SnapshotError::HashMismatch {
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// Reads the model's parameters, in layout order, from any safetensors file (a snapshot or a
/// checkpoint), checking names, shapes and dtype.
pub fn read_params(bytes: &[u8], layout: &ParamLayout) -> Result<Vec<f32>, SnapshotError> {
    let tensors = SafeTensors::deserialize(bytes)?;
    if tensors.len() != layout.params().len() {
        return Err(SnapshotError::ExtraParams(
            tensors.len(),
            layout.params().len(),
        ));
    }
    let mut theta = Vec::with_capacity(layout.d());
    for p in layout.params() {
        let view = tensors
            .tensor(&p.name)
            .map_err(|_| SnapshotError::MissingParam(p.name.clone()))?;
        if view.dtype() != Dtype::F32 || view.shape() != p.shape.as_slice() {
            return Err(SnapshotError::WrongParam {
                name: p.name.clone(),
                expected: p.shape.clone(),
                found: view.shape().to_vec(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        theta.extend(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
    }
    Ok(theta)
}
