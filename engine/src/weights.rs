//! Where a forward pass reads a model's tensors: the trained part (θ, or `K` perturbed copies
//! of it, one per lane) and the frozen base beside it.
//!
//! Every tensor comes with a leading lane dimension: `lanes` for a trained tensor, 1 for a
//! frozen one, which broadcasts (every lane shares the base; it is never copied per lane).

use crate::direction::perturb_part_into;
use crate::layout::ParamLayout;
use crate::trained::{lora_a, lora_b};
use burn::tensor::{Device, Int, Tensor, TensorData};
use protocol::DirectionSeed;
use std::cell::Cell;
use std::collections::HashMap;

thread_local! {
    /// Bytes of base tensors [`Frozen`] copied on this thread.
    static FROZEN_COPIED: Cell<usize> = const { Cell::new(0) };
    /// What [`Trained::Perturbed`] has made on this thread.
    static MADE: Cell<PerturbedMade> = const { Cell::new(PerturbedMade { bytes: 0, largest: 0 }) };
}

/// The perturbed tensors made on the fly on one thread so far (on the host or a GPU): what
/// the tests that bound a step's memory read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerturbedMade {
    /// Bytes of every tensor made.
    pub bytes: usize,
    /// Bytes of the largest one (all its lanes).
    pub largest: usize,
}

impl PerturbedMade {
    /// So far, on this thread.
    pub fn so_far() -> PerturbedMade {
        MADE.with(Cell::get)
    }

    fn add(bytes: usize) {
        MADE.with(|made| {
            let was = made.get();
            made.set(PerturbedMade {
                bytes: was.bytes + bytes,
                largest: was.largest.max(bytes),
            })
        });
    }
}

/// The trained tensors of a pass.
#[derive(Clone, Copy)]
pub enum Trained<'a> {
    /// Slices of flat weight vectors `thetas: [lanes, d]` in `layout`'s order: what replicas
    /// hand over (θ, or its perturbed copies).
    Flat {
        layout: &'a ParamLayout,
        thetas: &'a Tensor<2>,
    },
    /// One tensor `[lanes, len]` per entry of `layout`, in its order. First-order training
    /// makes each its own leaf, so backpropagation delivers one gradient per tensor instead of
    /// summing a zero-padded `d`-long gradient for every slice of a flat θ (measured: a tenth
    /// of a pre-training step on the CPU for the small transformer preset).
    Split {
        layout: &'a ParamLayout,
        tensors: &'a [Tensor<2>],
    },
    /// θ on the host and the lanes' perturbations `(seed, scale)`: each tensor's `[lanes,
    /// len]` is made from its slice of θ when the pass reads it, and dropped once used, so a
    /// pass holds one layer's perturbed copies rather than `lanes` copies of θ. A lane of scale
    /// 0 is θ itself.
    Perturbed {
        layout: &'a ParamLayout,
        theta: &'a [f32],
        lanes: &'a [(DirectionSeed, f32)],
        device: &'a Device,
        /// The pass's inputs as the host holds them: the token codes whose rows of a table
        /// ([`Weights::embedding`]) are all a pass reads of it.
        inputs: &'a [f32],
    },
    /// θ on a GPU and the lanes' perturbations: as [`Trained::Perturbed`], each tensor's
    /// `[lanes, len]` is written by the perturb kernel from its range of θ when the pass reads
    /// it (a lane of scale 0 is θ's own range, not a copy).
    #[cfg(feature = "wgpu")]
    OnGpu {
        layout: &'a ParamLayout,
        gpu: &'a crate::gpu::GpuWeights,
        lanes: &'a [(DirectionSeed, f32)],
        /// The pass's inputs as the host holds them (as [`Trained::Perturbed`]'s).
        inputs: &'a [f32],
    },
}

impl Trained<'_> {
    /// Lanes of the trained tensors.
    pub fn lanes(&self) -> usize {
        match self {
            Trained::Flat { thetas, .. } => thetas.dims()[0],
            Trained::Split { tensors, .. } => tensors[0].dims()[0],
            Trained::Perturbed { lanes, .. } => lanes.len(),
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { lanes, .. } => lanes.len(),
        }
    }

    fn device(&self) -> Device {
        match self {
            Trained::Flat { thetas, .. } => thetas.device(),
            Trained::Split { tensors, .. } => tensors[0].device(),
            Trained::Perturbed { device, .. } => (*device).clone(),
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { gpu, .. } => gpu.device(),
        }
    }

    /// Tensor `name`, `[lanes, len]`, if it trains.
    fn get(&self, name: &str) -> Option<Tensor<2>> {
        let layout = match self {
            Trained::Flat { layout, .. }
            | Trained::Split { layout, .. }
            | Trained::Perturbed { layout, .. } => layout,
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { layout, .. } => layout,
        };
        let (index, spec) = layout
            .params()
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)?;
        Some(match self {
            Trained::Flat { thetas, .. } => (*thetas).clone().narrow(1, spec.offset, spec.len()),
            Trained::Split { tensors, .. } => tensors[index].clone(),
            Trained::Perturbed { .. } => {
                return self
                    .perturbed_rows(name, spec.len(), [0])
                    .map(|t| t.reshape([self.lanes(), spec.len()]));
            }
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { gpu, lanes, .. } => {
                gpu_segments(gpu, lanes, &[(spec.offset, spec.len())])
            }
        })
    }

    /// Where the tensors are made as the pass reads them: rows `rows` (each `width` long) of
    /// tensor `name`, `[lanes, rows, width]`, made alone. `None` if `name` does not train or the
    /// tensors are not made on the fly.
    fn perturbed_rows(
        &self,
        name: &str,
        width: usize,
        rows: impl IntoIterator<Item = usize>,
    ) -> Option<Tensor<3>> {
        let (layout, lanes) = match self {
            Trained::Perturbed { layout, lanes, .. } => (layout, lanes),
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { layout, lanes, .. } => (layout, lanes),
            Trained::Flat { .. } | Trained::Split { .. } => return None,
        };
        let spec = layout.get(name)?;
        let rows: Vec<usize> = rows.into_iter().collect();
        let held = spec.len() / width;
        if let Some(row) = rows.iter().find(|&&row| row >= held) {
            // As a lookup in the whole tensor would: never a row of the tensor after it.
            panic!("row {row} of `{name}` is outside its {held} rows");
        }
        let shape = [lanes.len(), rows.len(), width];
        #[cfg(feature = "wgpu")]
        if let Trained::OnGpu { gpu, .. } = self {
            // Each run of consecutive rows is one segment of θ.
            let mut segments: Vec<(usize, usize)> = Vec::new();
            for &row in &rows {
                let first = spec.offset + row * width;
                match segments.last_mut() {
                    Some((start, len)) if *start + *len == first => *len += width,
                    _ => segments.push((first, width)),
                }
            }
            return Some(gpu_segments(gpu, lanes, &segments).reshape(shape));
        }
        let Trained::Perturbed { theta, device, .. } = self else {
            unreachable!("the host's tensors, the GPU's returned above")
        };
        // Filled row by row: θ's rows copied as they are (a forward pass of θ itself zeroes
        // nothing first: zeroing a layer cost a sixth of a 1 M MLP's pass), perturbed ones
        // written over zeroes.
        let mut copies = Vec::with_capacity(lanes.len() * rows.len() * width);
        for (seed, scale) in lanes.iter() {
            for &row in &rows {
                let first = spec.offset + row * width;
                let part = &theta[first..first + width];
                if *scale == 0.0 {
                    copies.extend_from_slice(part);
                } else {
                    let at = copies.len();
                    copies.resize(at + width, 0.0);
                    perturb_part_into(part, first, seed, *scale, &mut copies[at..]);
                }
            }
        }
        PerturbedMade::add(copies.len() * size_of::<f32>());
        Some(Tensor::from_data(TensorData::new(copies, shape), *device))
    }
}

/// Segments `(first, len)` of θ on a GPU, end to end, for each lane: `[lanes, Σ len]`; θ's own
/// values where every lane is θ itself, else the perturb kernel's copies.
#[cfg(feature = "wgpu")]
fn gpu_segments(
    gpu: &crate::gpu::GpuWeights,
    lanes: &[(DirectionSeed, f32)],
    segments: &[(usize, usize)],
) -> Tensor<2> {
    let total: usize = segments.iter().map(|&(_, len)| len).sum();
    if lanes.iter().all(|(_, scale)| *scale == 0.0) {
        let parts: Vec<Tensor<1>> = segments
            .iter()
            .map(|&(first, len)| gpu.range(first, len))
            .collect();
        let own = match parts.len() {
            1 => parts.into_iter().next().expect("one part"),
            _ => Tensor::cat(parts, 0),
        };
        return own.reshape([1, total]).repeat_dim(0, lanes.len());
    }
    PerturbedMade::add(lanes.len() * total * size_of::<f32>());
    gpu.perturbed_segments(lanes, segments)
}

/// The frozen base's tensors on one device, by name, each `[1, len]`: made once per replica
/// (or trainer), shared by every pass.
#[derive(Debug, Clone, Default)]
pub struct Frozen {
    tensors: HashMap<String, Tensor<2>>,
}

impl Frozen {
    /// Nothing frozen: a job that trains every parameter.
    pub fn none() -> Self {
        Frozen::default()
    }

    /// The tensors of `base` (laid out by `base_layout`) that `trained` does not hold, on
    /// `device`.
    pub fn new(
        base_layout: &ParamLayout,
        base: &[f32],
        trained: &ParamLayout,
        device: &Device,
    ) -> Self {
        let tensors = base_layout
            .params()
            .iter()
            .filter(|p| trained.get(&p.name).is_none())
            .map(|p| {
                FROZEN_COPIED.with(|c| c.set(c.get() + p.len() * size_of::<f32>()));
                let values = TensorData::new(base[p.range()].to_vec(), [1, p.len()]);
                (p.name.clone(), Tensor::from_data(values, device))
            })
            .collect();
        Frozen { tensors }
    }

    /// Those of these tensors that `trained` does not hold, on `device`: the same storage where
    /// they already live there (a CPU tensor's clone shares its buffer), copies otherwise.
    pub fn untrained_on(&self, trained: &ParamLayout, device: &Device) -> Self {
        let tensors = self
            .tensors
            .iter()
            .filter(|(name, _)| trained.get(name).is_none())
            .map(|(name, t)| {
                let t = if t.device() == *device {
                    t.clone()
                } else {
                    FROZEN_COPIED.with(|c| c.set(c.get() + t.dims()[1] * size_of::<f32>()));
                    t.clone().to_device(device)
                };
                (name.clone(), t)
            })
            .collect();
        Frozen { tensors }
    }

    /// Bytes of base tensors copied into `Frozen`s on this thread so far: what the test that
    /// a base is held once reads.
    pub fn copied_so_far() -> usize {
        FROZEN_COPIED.with(Cell::get)
    }

    /// The values of tensor `name`.
    pub fn values(&self, name: &str) -> Option<Vec<f32>> {
        let data = self.tensors.get(name)?.to_data();
        Some(data.try_to_vec::<f32>().expect("the tensors are f32"))
    }

    /// The frozen tensor `name`, `[1, len]`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor<2>> {
        self.tensors.get(name)
    }

    /// Number of frozen scalars.
    pub fn len(&self) -> usize {
        self.tensors.values().map(|t| t.dims()[1]).sum()
    }

    /// Whether nothing is frozen.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// A model's tensors for one pass.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub trained: Trained<'a>,
    pub frozen: &'a Frozen,
    /// The scale of a LoRA layer's adapted product (`alpha / rank`; unused without adapters).
    pub lora_scale: f32,
}

impl<'a> Weights<'a> {
    /// Every tensor in `thetas: [lanes, d]`, nothing frozen.
    pub fn flat(layout: &'a ParamLayout, thetas: &'a Tensor<2>) -> Self {
        static NONE: std::sync::OnceLock<Frozen> = std::sync::OnceLock::new();
        Weights {
            trained: Trained::Flat { layout, thetas },
            frozen: NONE.get_or_init(Frozen::none),
            lora_scale: 0.0,
        }
    }

    /// Lanes of the pass (the trained tensors' lanes).
    pub fn lanes(&self) -> usize {
        self.trained.lanes()
    }

    pub fn device(&self) -> Device {
        self.trained.device()
    }

    /// Tensor `name`: `[lanes, len]` if it trains, `[1, len]` if frozen.
    pub fn get(&self, name: &str) -> Tensor<2> {
        self.trained
            .get(name)
            .or_else(|| self.frozen.tensors.get(name).cloned())
            .unwrap_or_else(|| panic!("the model has a tensor `{name}`"))
    }

    /// `[lanes or 1, rows, cols]`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Tensor<3> {
        let t = self.get(name);
        let lanes = t.dims()[0];
        t.reshape([lanes, rows, cols])
    }

    /// Whether the trained tensors are made as the pass reads them (so that reading a table
    /// in parts holds less at once).
    pub fn made_on_the_fly(&self) -> bool {
        match self.trained {
            Trained::Perturbed { .. } => true,
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { .. } => true,
            Trained::Flat { .. } | Trained::Split { .. } => false,
        }
    }

    /// Rows `codes` of the table `name` (`[rows, width]`), `[lanes or 1, codes, width]`:
    /// an embedding lookup. `codes` are the pass's inputs, in order; where tensors are made on
    /// the fly only those rows are.
    pub fn embedding(
        &self,
        name: &str,
        rows: usize,
        width: usize,
        codes: Tensor<1, Int>,
    ) -> Tensor<3> {
        // Rows alone where the batch reads few of a large table (GPT-2's 50 257 tokens); a
        // small table read all over (a byte model's 256) is made whole: one draw of each
        // direction word rather than one a row.
        let inputs = match self.trained {
            Trained::Perturbed { inputs, .. } => Some(inputs),
            #[cfg(feature = "wgpu")]
            Trained::OnGpu { inputs, .. } => Some(inputs),
            Trained::Flat { .. } | Trained::Split { .. } => None,
        };
        if let Some(inputs) = inputs
            && inputs.len() * 4 < rows
        {
            let ids = inputs.iter().map(|&code| code as usize);
            if let Some(made) = self.trained.perturbed_rows(name, width, ids) {
                return made;
            }
        }
        self.matrix(name, rows, width).select(1, codes)
    }

    /// Rows `ids` of the table `name` (`[rows, width]`): `[lanes or 1, ids, width]`.
    pub fn rows_of(&self, name: &str, rows: usize, width: usize, ids: &[u32]) -> Tensor<3> {
        if let Some(made) =
            self.trained
                .perturbed_rows(name, width, ids.iter().map(|&id| id as usize))
        {
            return made;
        }
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device());
        self.matrix(name, rows, width).select(1, ids)
    }

    /// Rows `range` of the table `name` (`[rows, width]`): `[lanes or 1, range, width]`.
    pub fn row_range(
        &self,
        name: &str,
        rows: usize,
        width: usize,
        range: std::ops::Range<usize>,
    ) -> Tensor<3> {
        if let Some(made) = self.trained.perturbed_rows(name, width, range.clone()) {
            return made;
        }
        self.matrix(name, rows, width)
            .narrow(1, range.start, range.len())
    }

    /// `[lanes or 1, 1, len]`, to broadcast over rows.
    pub fn vector(&self, name: &str, len: usize) -> Tensor<3> {
        let t = self.get(name);
        let lanes = t.dims()[0];
        t.reshape([lanes, 1, len])
    }

    /// The linear layer `layer` (GPT-2's `Conv1D`: `{layer}.weight: [inputs, outputs]` and
    /// `{layer}.bias`) over `x: [lanes or 1, n, inputs]`: `x·W + b`, plus `scale·(x·A)·B` where
    /// the layer has LoRA adapters in θ.
    pub fn linear(&self, x: Tensor<3>, layer: &str, inputs: usize, outputs: usize) -> Tensor<3> {
        let weight = self.matrix(&format!("{layer}.weight"), inputs, outputs);
        let bias = self.vector(&format!("{layer}.bias"), outputs);
        let [x_lanes, n, _] = x.dims();
        let product = match (x_lanes, weight.dims()[0]) {
            // A frozen weight under many lanes: one product over every lane's rows.
            (lanes, 1) if lanes > 1 => x
                .clone()
                .reshape([1, lanes * n, inputs])
                .matmul(weight)
                .reshape([lanes, n, outputs]),
            _ => x.clone().matmul(weight),
        };
        let out = product + bias;
        match (
            self.trained.get(&lora_a(layer)),
            self.trained.get(&lora_b(layer)),
        ) {
            (Some(a), Some(b)) => {
                let lanes = a.dims()[0];
                let rank = a.dims()[1] / inputs;
                let a = a.reshape([lanes, inputs, rank]);
                let b = b.reshape([lanes, rank, outputs]);
                let x = match x_lanes {
                    1 if lanes > 1 => x.expand([lanes, n, inputs]),
                    _ => x,
                };
                out + x.matmul(a).matmul(b) * self.lora_scale
            }
            _ => out,
        }
    }
}
