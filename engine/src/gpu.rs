//! θ on a GPU: the `shaders` kernels launched on burn's own wgpu compute client, over burn's own
//! tensor buffers.
//!
//! θ is held as burn tensors on the wgpu device, one per [`CHUNK_PARAMS`] parameters, that only
//! the update kernel writes (in place, through their buffer handles). The perturb kernel writes
//! `θ ± εz` over segments of θ (a tensor, a table's rows) for several lanes into a fresh burn
//! tensor that the forward pass consumes where it lies: nothing goes through the CPU but the
//! losses. No buffer ever holds `z`. Launching through burn's client (rather than on the raw wgpu
//! queue beside it) puts our kernels in burn's own stream, so burn's pending work and ours run in
//! the order they were issued and burn's memory pool never hands out a buffer we still use.

use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use burn_cubecl::{Cube, tensor::CubeTensor};
use cubecl::ir::{UIntKind, metadata::Info, settings::Dim3};
use cubecl::prelude::*;
use cubecl::server::{Handle, KernelArguments};
use protocol::DirectionSeed;
use shaders::{
    PerturbLane, PerturbParams, PerturbSegment, UpdateEntry, UpdateParams, dispatch_size,
    key_words, perturb_groups,
};

/// Log entries per update dispatch: one kernel launch applies at most this many, in order.
pub const MAX_ENTRIES_PER_DISPATCH: usize = 256;

/// A failure on the GPU path.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no WebGPU/wgpu adapter could be initialised: {0}")]
    Init(String),
    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),
    #[error("the tensor does not live on burn's wgpu runtime: {0}")]
    NotOnGpu(String),
}

/// A hand-written WGSL kernel from `shaders`, as burn's compute client launches it.
struct WgslKernel {
    name: &'static str,
    source: fn() -> String,
}

const PERTURB: WgslKernel = WgslKernel {
    name: "onebyte perturb",
    source: shaders::perturb_source,
};
const UPDATE: WgslKernel = WgslKernel {
    name: "onebyte update",
    source: shaders::update_source,
};

impl KernelMetadata for WgslKernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> KernelId {
        // One type, several kernels: the name keys the compilation cache.
        KernelId::new::<Self>().info(self.name)
    }

    fn address_type(&self) -> ElemType {
        ElemType::UInt(UIntKind::U32)
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        // The source text is the kernel; the definition only keys the cache.
        let settings = KernelSettings::new(
            Dim3::new_1d(shaders::WORKGROUP_SIZE),
            ExecutionMode::Checked,
            AddressType::U32,
        );
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: Info::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: (self.source)(),
            entrypoint_name: "main".to_string(),
            lang: "wgsl",
        })
    }
}

/// Parameters in each of θ's buffers (the last may hold fewer): 64 MiB, under WebGPU's default
/// limit on a storage binding (128 MiB) and on a buffer (256 MiB), so that any model's θ fits
/// any adapter (GPT-2 small's is 495 MB; lavapipe refuses a buffer that large). A multiple of
/// the kernels' 512 parameters per thread.
pub const CHUNK_PARAMS: usize = 1 << 24;

/// θ on the GPU, as burn's own tensors: one per [`CHUNK_PARAMS`] parameters.
#[derive(Debug, Clone)]
pub struct GpuWeights {
    chunks: Vec<CubeTensor>,
    /// Parameters per chunk.
    chunk: usize,
    d: u32,
}

impl GpuWeights {
    /// Uploads θ to `device`, which must be burn's wgpu device, `chunk` parameters a buffer (a
    /// multiple of 512; [`CHUNK_PARAMS`] but where tests cross the chunks' boundaries with
    /// small models).
    pub fn in_chunks(device: &Device, theta: &[f32], chunk: usize) -> Result<Self, GpuError> {
        assert!(
            chunk > 0 && chunk.is_multiple_of(shaders::PARAMS_PER_THREAD as usize),
            "chunks hold whole ChaCha blocks"
        );
        let chunks = theta
            .chunks(chunk)
            .map(|part| {
                let tensor =
                    Tensor::<1>::from_data(TensorData::new(part.to_vec(), [part.len()]), device);
                tensor
                    .try_into_primitive::<Cube>()
                    .map_err(|e| GpuError::NotOnGpu(format!("{e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GpuWeights {
            chunks,
            chunk,
            d: theta.len() as u32,
        })
    }

    /// The device θ lives on.
    pub fn device(&self) -> Device {
        self.chunk_tensor(0).device()
    }

    /// θ's chunks as tensors for burn's operations, in order. They share θ's buffers, and burn
    /// never writes a buffer that another tensor still holds, so passes read θ without copying.
    pub fn chunk_tensors(&self) -> impl Iterator<Item = Tensor<1>> + '_ {
        (0..self.chunks.len()).map(|c| self.chunk_tensor(c))
    }

    fn chunk_tensor(&self, c: usize) -> Tensor<1> {
        Tensor::from_primitive::<Cube>(self.chunks[c].clone())
    }

    /// θ's parameters `first .. first + len` as a tensor: views of θ's buffers (joined where
    /// the range crosses from one chunk into the next).
    pub fn range(&self, first: usize, len: usize) -> Tensor<1> {
        let parts: Vec<Tensor<1>> = self
            .pieces(first, len)
            .map(|(c, local, n)| self.chunk_tensor(c).narrow(0, local, n))
            .collect();
        match parts.len() {
            1 => parts.into_iter().next().expect("one part"),
            _ => Tensor::cat(parts, 0),
        }
    }

    /// `(chunk, first within it, len)` for each chunk the range `first .. first + len` crosses.
    fn pieces(&self, first: usize, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let chunk = self.chunk;
        let end = first + len;
        let (from, to) = (first / chunk, end.div_ceil(chunk));
        (from..to).map(move |c| {
            let (start, stop) = (first.max(c * chunk), end.min((c + 1) * chunk));
            (c, start - c * chunk, stop - start)
        })
    }

    /// `θ += c_j·z(seed_j)` for each step in order, in dispatches of up to
    /// [`MAX_ENTRIES_PER_DISPATCH`] entries (one a chunk), in place.
    pub fn apply(&self, steps: &[(DirectionSeed, f32)]) {
        let client = &self.chunks[0].client;
        for batch in steps.chunks(MAX_ENTRIES_PER_DISPATCH) {
            let entries: Vec<UpdateEntry> = batch
                .iter()
                .map(|(seed, c)| UpdateEntry {
                    key: key_words(&seed.0),
                    c: *c,
                    _pad: [0; 3],
                })
                .collect();
            let entries = client.create_from_slice(bytemuck::cast_slice(&entries));
            for (c, chunk) in self.chunks.iter().enumerate() {
                let len = self.chunk.min(self.d as usize - c * self.chunk) as u32;
                let params = UpdateParams {
                    d: len,
                    entries: batch.len() as u32,
                    offset: (c * self.chunk) as u32,
                    _pad: 0,
                };
                let params = client.create_from_slice(bytemuck::bytes_of(&params));
                let (x, y) = dispatch_size(len);
                let buffers = [chunk.handle.clone(), entries.clone(), params];
                self.launch(UPDATE, (x, y, 1), buffers);
            }
        }
    }

    /// `[θ + scale_l·z(seed_l)]` for each lane `l` over θ's parameters `first .. first + len`:
    /// a `lanes × len` tensor on the device, what a pass reads of one tensor (a forward pass
    /// makes each as it reads it, so it holds one tensor's perturbed copies at a time, not
    /// `lanes` copies of θ). θ is not touched and nothing is read back.
    pub fn perturbed_range(
        &self,
        lanes: &[(DirectionSeed, f32)],
        first: usize,
        len: usize,
    ) -> Tensor<2> {
        self.perturbed_segments(lanes, &[(first, len)])
    }

    /// [`GpuWeights::perturbed_range`] over segments `(first, len)` of θ, each lane's laid end
    /// to end: `lanes × Σ len` (the rows of a table that a pass reads, each a segment).
    pub fn perturbed_segments(
        &self,
        lanes: &[(DirectionSeed, f32)],
        segments: &[(usize, usize)],
    ) -> Tensor<2> {
        assert!(
            segments
                .iter()
                .all(|&(first, len)| len > 0 && first + len <= self.d as usize),
            "segments of θ"
        );
        let client = &self.chunks[0].client;
        let count = lanes.len();
        let total: usize = segments.iter().map(|&(_, len)| len).sum();
        let lane_params: Vec<PerturbLane> = lanes
            .iter()
            .map(|(seed, scale)| PerturbLane {
                key: key_words(&seed.0),
                scale: *scale,
                _pad: [0; 3],
            })
            .collect();
        let out = client.empty(count * total * size_of::<f32>());
        let lane_params = client.create_from_slice(bytemuck::cast_slice(&lane_params));
        // Each segment cut at the chunks' boundaries, the pieces gathered by chunk: one
        // dispatch binds one chunk of θ.
        let mut by_chunk: Vec<Vec<PerturbSegment>> = vec![Vec::new(); self.chunks.len()];
        let mut at = 0;
        for &(first, len) in segments {
            for (c, local, n) in self.pieces(first, len) {
                by_chunk[c].push(PerturbSegment {
                    first: (c * self.chunk + local) as u32,
                    len: n as u32,
                    out: at as u32,
                    _pad: 0,
                });
                at += n;
            }
        }
        for (c, pieces) in by_chunk.iter().enumerate() {
            // One piece per workgroup row: at most 65 535 a dispatch.
            for part in pieces.chunks(65_535) {
                // The ChaCha blocks the longest piece touches, from the block it starts in.
                let widest = part
                    .iter()
                    .map(|p| p.first % shaders::PARAMS_PER_THREAD + p.len)
                    .max()
                    .unwrap_or(1);
                let params = PerturbParams {
                    segments: part.len() as u32,
                    lanes: count as u32,
                    total: total as u32,
                    offset: (c * self.chunk) as u32,
                };
                let params = client.create_from_slice(bytemuck::bytes_of(&params));
                let described = client.create_from_slice(bytemuck::cast_slice(part));
                let groups = (perturb_groups(widest), part.len() as u32, count as u32);
                let buffers = [
                    self.chunks[c].handle.clone(),
                    out.clone(),
                    lane_params.clone(),
                    params,
                    described,
                ];
                self.launch(PERTURB, groups, buffers);
            }
        }
        let out = CubeTensor::new_contiguous(
            client.clone(),
            self.chunks[0].device.clone(),
            Shape::new([count, total]),
            out,
            DType::F32,
        );
        Tensor::from_primitive::<Cube>(out)
    }

    /// Launches `kernel` as `groups` workgroups (x, y, z) on burn's stream, with `buffers` as
    /// bindings 0, 1, ….
    fn launch<const N: usize>(
        &self,
        kernel: WgslKernel,
        (x, y, z): (u32, u32, u32),
        buffers: [Handle; N],
    ) {
        let arguments = buffers.into_iter().fold(KernelArguments::new(), |args, b| {
            args.with_buffer(b.binding())
        });
        self.chunks[0]
            .client
            .launch(Box::new(kernel), CubeCount::Static(x, y, z), arguments);
    }
}

/// burn's wgpu device, where θ and the forward passes live.
#[derive(Debug, Clone)]
pub struct GpuContext {
    /// The burn device forward passes run on.
    pub device: Device,
    /// What the adapter says it is.
    pub adapter: String,
    /// Parameters in each of a replica's θ buffers ([`CHUNK_PARAMS`]; tests make it small).
    pub chunk_params: usize,
}

impl GpuContext {
    /// Initialises burn's wgpu runtime on the default adapter. Async because a browser cannot
    /// block while WebGPU starts. burn sets its runtime up once per process, so later calls
    /// return the first context.
    pub async fn init() -> Result<Self, GpuError> {
        static CONTEXT: std::sync::OnceLock<GpuContext> = std::sync::OnceLock::new();
        if let Some(context) = CONTEXT.get() {
            return Ok(context.clone());
        }
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| GpuError::Init(format!("{e:?}")))?;
        let info = setup.adapter.get_info();
        let context = GpuContext {
            device,
            adapter: format!("{} ({:?}, {})", info.name, info.backend, info.driver),
            chunk_params: CHUNK_PARAMS,
        };
        Ok(CONTEXT.get_or_init(|| context).clone())
    }
}
