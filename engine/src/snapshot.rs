//! Snapshots: θ at a version, as a safetensors file with one tensor per model parameter.
//!
//! Metadata keys: `onebyte.job` (job id), `onebyte.version`, `onebyte.hash` (hex weight hash).
//! Loading checks the job, every name and shape against the model's layout, and the hash, so a
//! restored replica holds exactly the bits that were saved.

use crate::hash::weight_hash;
use crate::layout::{ParamLayout, ParamSpec};
use protocol::{JobId, Version, WeightHash};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
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
    #[error("the snapshot ends after {got} bytes of the {expected} its header describes")]
    Truncated { got: usize, expected: usize },
    #[error("the snapshot goes on past the {0} bytes its header describes")]
    TooLong(usize),
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
        let mut reader = SnapshotReader::new(job, layout);
        reader.feed(bytes)?;
        reader.finish()
    }
}

/// The longest header read (safetensors' own limit).
const MAX_HEADER_BYTES: usize = 100_000_000;
/// The header's length field.
const LENGTH_BYTES: usize = 8;

/// Reads a snapshot as its bytes arrive, writing each tensor's values straight into θ, with the
/// checks of [`Snapshot::from_bytes`]: a 124 M-parameter model loads holding θ once, not the
/// file beside it (a tab's WebAssembly memory never shrinks, so the file's copy would stay the
/// tab's cost for as long as it trains).
pub struct SnapshotReader<'a> {
    job: JobId,
    layout: &'a ParamLayout,
    stage: Stage,
}

enum Stage {
    /// The length field and the JSON header, as they arrive.
    Header(Vec<u8>),
    Body(Body),
}

/// The tensors' data, in file order, landing in θ.
struct Body {
    version: Version,
    /// `onebyte.hash` from the header, checked once θ is whole.
    hash: String,
    /// Each tensor's bytes in the data section and its first index in θ, in file order.
    runs: Vec<(std::ops::Range<usize>, usize)>,
    /// The run being filled.
    next: usize,
    /// Bytes of the data section received.
    at: usize,
    theta: Vec<f32>,
}

impl<'a> SnapshotReader<'a> {
    /// A reader of a snapshot of `job`, whose model has `layout`.
    pub fn new(job: JobId, layout: &'a ParamLayout) -> Self {
        SnapshotReader {
            job,
            layout,
            stage: Stage::Header(Vec::new()),
        }
    }

    /// The next bytes of the file, in order, in pieces of any size.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), SnapshotError> {
        while !bytes.is_empty() {
            match &mut self.stage {
                Stage::Header(head) => {
                    let want = if head.len() < LENGTH_BYTES {
                        LENGTH_BYTES
                    } else {
                        LENGTH_BYTES + header_length(head)?
                    };
                    let take = (want - head.len()).min(bytes.len());
                    head.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if head.len() == want && want > LENGTH_BYTES {
                        let body = Body::checked(self.job, self.layout, &head[LENGTH_BYTES..])?;
                        self.stage = Stage::Body(body);
                    }
                }
                Stage::Body(body) => bytes = body.fill(bytes)?,
            }
        }
        Ok(())
    }

    /// The snapshot, once every byte the header describes has arrived and θ matches its hash.
    pub fn finish(self) -> Result<Snapshot, SnapshotError> {
        let body = match self.stage {
            Stage::Header(head) => {
                return Err(match head.len() {
                    0..LENGTH_BYTES => SnapshotError::Format(SafeTensorError::HeaderTooSmall),
                    _ => SnapshotError::Format(SafeTensorError::InvalidHeaderLength),
                });
            }
            Stage::Body(body) => body,
        };
        let expected = body.runs.last().map_or(0, |(bytes, _)| bytes.end);
        if body.at < expected {
            return Err(SnapshotError::Truncated {
                got: body.at,
                expected,
            });
        }
        #[cfg_attr(target_endian = "little", allow(unused_mut))]
        let mut theta = body.theta;
        // The file is little-endian; the bytes were copied as they are.
        #[cfg(target_endian = "big")]
        theta
            .iter_mut()
            .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
        let snapshot = Snapshot {
            job: self.job,
            version: body.version,
            theta,
        };
        let found = snapshot.hash().to_hex();
        if body.hash != found {
            return Err(SnapshotError::HashMismatch {
                expected: body.hash,
                found,
            });
        }
        Ok(snapshot)
    }
}

impl Body {
    /// Checks the JSON header against the job and the layout, and lays out θ.
    fn checked(job: JobId, layout: &ParamLayout, json: &[u8]) -> Result<Body, SnapshotError> {
        let header: Metadata = serde_json::from_slice(json)
            .map_err(|e| SnapshotError::Format(SafeTensorError::InvalidHeaderDeserialization(e)))?;
        let meta = header.metadata().clone().unwrap_or_default();
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
        let hash = get("onebyte.hash")?;
        let tensors = header.tensors();
        check_count(tensors.len(), layout)?;
        let mut runs = Vec::with_capacity(tensors.len());
        for p in layout.params() {
            let info = tensors
                .get(&p.name)
                .ok_or_else(|| SnapshotError::MissingParam(p.name.clone()))?;
            check_param(p, info.dtype, &info.shape)?;
            let (start, end) = info.data_offsets;
            runs.push((start..end, p.offset));
        }
        // The header's offsets are contiguous from 0 (`Metadata` checks it on parsing).
        runs.sort_by_key(|(bytes, _)| bytes.start);
        Ok(Body {
            version,
            hash,
            runs,
            next: 0,
            at: 0,
            theta: vec![0.0; layout.d()],
        })
    }

    /// Copies the front of `bytes` into θ up to the end of the current tensor; the rest.
    fn fill<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], SnapshotError> {
        while self
            .runs
            .get(self.next)
            .is_some_and(|(run, _)| self.at == run.end)
        {
            self.next += 1;
        }
        let Some((run, first)) = self.runs.get(self.next) else {
            return Err(SnapshotError::TooLong(self.at));
        };
        let n = (run.end - self.at).min(bytes.len());
        let into = first * 4 + (self.at - run.start);
        bytemuck::cast_slice_mut::<f32, u8>(&mut self.theta)[into..into + n]
            .copy_from_slice(&bytes[..n]);
        self.at += n;
        Ok(&bytes[n..])
    }
}

/// The JSON header's length, from the file's first eight bytes.
fn header_length(head: &[u8]) -> Result<usize, SnapshotError> {
    let field: [u8; LENGTH_BYTES] = head[..LENGTH_BYTES].try_into().expect("eight bytes");
    match usize::try_from(u64::from_le_bytes(field)) {
        Ok(0) => Err(SnapshotError::Format(SafeTensorError::InvalidHeaderLength)),
        Ok(n) if n <= MAX_HEADER_BYTES => Ok(n),
        _ => Err(SnapshotError::Format(SafeTensorError::HeaderTooLarge)),
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

/// A file holds as many tensors as the layout has parameters.
fn check_count(found: usize, layout: &ParamLayout) -> Result<(), SnapshotError> {
    let expected = layout.params().len();
    if found != expected {
        return Err(SnapshotError::ExtraParams(found, expected));
    }
    Ok(())
}

/// The file's tensor for `p` is F32 of `p`'s shape.
fn check_param(p: &ParamSpec, dtype: Dtype, shape: &[usize]) -> Result<(), SnapshotError> {
    if dtype != Dtype::F32 || shape != p.shape.as_slice() {
        return Err(SnapshotError::WrongParam {
            name: p.name.clone(),
            expected: p.shape.clone(),
            found: shape.to_vec(),
            dtype: format!("{dtype:?}"),
        });
    }
    Ok(())
}

/// Reads the model's parameters, in layout order, from any safetensors file (a snapshot or a
/// checkpoint), checking names, shapes and dtype.
pub fn read_params(bytes: &[u8], layout: &ParamLayout) -> Result<Vec<f32>, SnapshotError> {
    let tensors = SafeTensors::deserialize(bytes)?;
    check_count(tensors.len(), layout)?;
    let mut theta = Vec::with_capacity(layout.d());
    for p in layout.params() {
        let view = tensors
            .tensor(&p.name)
            .map_err(|_| SnapshotError::MissingParam(p.name.clone()))?;
        check_param(p, view.dtype(), view.shape())?;
        theta.extend(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
    }
    Ok(theta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Job;

    /// The demo job's layout and a snapshot of it with every value distinct.
    fn demo_snapshot() -> (Job, Snapshot, Vec<u8>) {
        let job = Job::demo();
        let d = job.model.layout().d();
        let snapshot = Snapshot {
            job: job.id,
            version: Version(41),
            theta: (0..d).map(|i| i as f32 * 0.37 - 5.0).collect(),
        };
        let bytes = snapshot.to_bytes(job.model.layout());
        (job, snapshot, bytes)
    }

    fn read_in_pieces(job: &Job, bytes: &[u8], piece: usize) -> Result<Snapshot, SnapshotError> {
        let mut reader = SnapshotReader::new(job.id, job.model.layout());
        for chunk in bytes.chunks(piece) {
            reader.feed(chunk)?;
        }
        reader.finish()
    }

    #[test]
    fn a_snapshot_read_in_pieces_is_the_snapshot_read_whole() {
        let (job, snapshot, bytes) = demo_snapshot();
        for piece in [1, 3, 7, 8, 9, 1000, bytes.len()] {
            let read = read_in_pieces(&job, &bytes, piece).unwrap();
            assert_eq!(read, snapshot, "in pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_snapshot_cut_short_or_run_long_or_altered_is_refused() {
        let (job, _, bytes) = demo_snapshot();
        let cut = read_in_pieces(&job, &bytes[..bytes.len() - 5], 100).unwrap_err();
        assert!(matches!(cut, SnapshotError::Truncated { .. }), "{cut}");
        let header_only = read_in_pieces(&job, &bytes[..6], 100).unwrap_err();
        assert!(
            matches!(header_only, SnapshotError::Format(_)),
            "{header_only}"
        );
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 3]);
        let long = read_in_pieces(&job, &long, 64).unwrap_err();
        assert!(matches!(long, SnapshotError::TooLong(_)), "{long}");
        let mut altered = bytes.clone();
        let last = altered.len() - 2;
        altered[last] ^= 0x40;
        let altered = read_in_pieces(&job, &altered, 4096).unwrap_err();
        assert!(
            matches!(altered, SnapshotError::HashMismatch { .. }),
            "{altered}"
        );
    }

    #[test]
    fn a_snapshot_of_another_job_is_refused_from_its_header() {
        let (job, _, bytes) = demo_snapshot();
        let other = Job::tiny_lm();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut reader = SnapshotReader::new(other.id, other.model.layout());
        let error = reader.feed(&bytes[..header]).unwrap_err();
        assert!(matches!(error, SnapshotError::WrongJob { .. }), "{error}");
        let mut reader = SnapshotReader::new(job.id, other.model.layout());
        let error = reader.feed(&bytes[..header]).unwrap_err();
        assert!(
            matches!(
                error,
                SnapshotError::ExtraParams(..) | SnapshotError::MissingParam(_)
            ),
            "{error}"
        );
    }
}
