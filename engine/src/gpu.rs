//! θ on a GPU: the `shaders` kernels on the wgpu device that burn's wgpu runtime also uses.
//!
//! burn creates the device (`Device::wgpu_options().init_with_setup_async()`) and hands back its
//! wgpu handles; θ lives in a storage buffer that only the update kernel writes. The perturb
//! kernel writes `θ ± εz` into a scratch buffer; no buffer ever holds `z`.

use protocol::DirectionSeed;
use shaders::{PerturbParams, UpdateEntry, UpdateParams, dispatch_size, key_words};
use wgpu::util::DeviceExt;

/// Log entries per update dispatch: one kernel launch applies at most this many, in order.
pub const MAX_ENTRIES_PER_DISPATCH: usize = 256;

/// The compiled kernels on one device.
#[derive(Debug, Clone)]
pub struct GpuKernels {
    device: wgpu::Device,
    queue: wgpu::Queue,
    perturb: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
}

/// A failure on the GPU path.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no WebGPU/wgpu adapter could be initialised: {0}")]
    Init(String),
    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),
}

fn pipeline(device: &wgpu::Device, label: &str, source: String) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

impl GpuKernels {
    /// Compiles the kernels for an existing device and queue.
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let perturb = pipeline(&device, "onebyte perturb", shaders::perturb_source());
        let update = pipeline(&device, "onebyte update", shaders::update_source());
        GpuKernels {
            device,
            queue,
            perturb,
            update,
        }
    }

    fn storage(&self, label: &str, contents: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | extra,
            })
    }

    fn dispatch(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], d: u32) {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = dispatch_size(d);
            pass.dispatch_workgroups(x, y, 1);
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `buffer` back to the CPU. Awaits the map on wasm; polls the device natively.
    pub async fn read(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>, GpuError> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("onebyte readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        #[cfg(not(target_family = "wasm"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let values = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(values)
    }
}

/// θ and a scratch buffer of the same size, on the GPU.
#[derive(Debug, Clone)]
pub struct GpuWeights {
    kernels: GpuKernels,
    theta: wgpu::Buffer,
    scratch: wgpu::Buffer,
    d: u32,
}

impl GpuWeights {
    /// Uploads θ.
    pub fn new(kernels: GpuKernels, theta: &[f32]) -> Self {
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let bytes: &[u8] = bytemuck::cast_slice(theta);
        GpuWeights {
            theta: kernels.storage("onebyte θ", bytes, usage),
            scratch: kernels.storage("onebyte θ±εz", bytes, usage),
            d: theta.len() as u32,
            kernels,
        }
    }

    /// `θ += c_j·z(seed_j)` for each step in order, in dispatches of up to
    /// [`MAX_ENTRIES_PER_DISPATCH`] entries.
    pub fn apply(&self, steps: &[(DirectionSeed, f32)]) {
        for chunk in steps.chunks(MAX_ENTRIES_PER_DISPATCH) {
            let entries: Vec<UpdateEntry> = chunk
                .iter()
                .map(|(seed, c)| UpdateEntry {
                    key: key_words(&seed.0),
                    c: *c,
                    _pad: [0; 3],
                })
                .collect();
            let params = UpdateParams {
                d: self.d,
                entries: entries.len() as u32,
                _pad: [0; 2],
            };
            let k = &self.kernels;
            let entries = k.storage(
                "entries",
                bytemuck::cast_slice(&entries),
                wgpu::BufferUsages::empty(),
            );
            let params = k.storage(
                "update params",
                bytemuck::bytes_of(&params),
                wgpu::BufferUsages::empty(),
            );
            k.dispatch(&k.update, &[&self.theta, &entries, &params], self.d);
        }
    }

    /// Writes `θ + scale·z(seed)` into the scratch buffer and returns it.
    pub fn perturb(&self, seed: &DirectionSeed, scale: f32) -> &wgpu::Buffer {
        let params = PerturbParams {
            key: key_words(&seed.0),
            scale,
            d: self.d,
            _pad: [0; 2],
        };
        let k = &self.kernels;
        let params = k.storage(
            "perturb params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::empty(),
        );
        k.dispatch(&k.perturb, &[&self.theta, &self.scratch, &params], self.d);
        &self.scratch
    }

    /// θ, read back.
    pub async fn read(&self) -> Result<Vec<f32>, GpuError> {
        self.kernels.read(&self.theta).await
    }

    /// The perturbed copy, read back.
    pub async fn read_scratch(&self) -> Result<Vec<f32>, GpuError> {
        self.kernels.read(&self.scratch).await
    }
}

/// burn's wgpu device and our kernels on the same wgpu device and queue.
#[derive(Debug, Clone)]
pub struct GpuContext {
    /// The burn device forward passes run on.
    pub device: burn::tensor::Device,
    /// The `shaders` kernels, compiled for the same wgpu device.
    pub kernels: GpuKernels,
    /// What the adapter says it is.
    pub adapter: String,
}

impl GpuContext {
    /// Initialises burn's wgpu runtime on the default adapter and compiles the kernels on its
    /// device. Async because a browser cannot block while WebGPU starts.
    pub async fn init() -> Result<Self, GpuError> {
        let (device, setup) = burn::tensor::Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| GpuError::Init(format!("{e:?}")))?;
        let info = setup.adapter.get_info();
        Ok(GpuContext {
            device,
            kernels: GpuKernels::new(setup.device, setup.queue),
            adapter: format!("{} ({:?}, {})", info.name, info.backend, info.driver),
        })
    }
}
