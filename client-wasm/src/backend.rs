//! WebGPU when the browser has an adapter and it measures faster, burn's CPU backend inside
//! wasm otherwise.

use crate::clock::now_ms;
use crate::relay::misfit;
use engine::calibrate;
use engine::data::Split;
use engine::gpu::GpuContext;
use engine::{Job, Replica, Snapshot};
use std::sync::Arc;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// Where θ and the forward passes live.
pub enum Backend {
    Cpu,
    WebGpu(GpuContext),
}

/// What the page is told about the choice.
pub struct Choice {
    pub backend: Backend,
    pub adapter: String,
    /// Why the CPU, when it is the CPU.
    pub reason: Option<String>,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::WebGpu(_) => "webgpu",
        }
    }

    /// A replica of `job` from a decoded snapshot, on this backend (the CPU's takes its θ).
    pub fn restored(&self, job: Arc<Job>, snapshot: Snapshot) -> Result<Replica, String> {
        let replica = match self {
            Backend::Cpu => Replica::restored(job, engine::cpu_device(), snapshot),
            Backend::WebGpu(gpu) => Replica::restored_gpu(job, gpu, &snapshot),
        };
        replica.map_err(misfit)
    }
}

/// `navigator.gpu`, if this browser (or worker) exposes WebGPU at all.
fn navigator_gpu() -> Option<wasm_bindgen::JsValue> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    (!gpu.is_undefined() && !gpu.is_null()).then_some(gpu)
}

/// Whether `navigator.gpu.requestAdapter()` gives an adapter, and what the browser says it is.
/// Asked before burn initialises wgpu, because a missing adapter is an ordinary situation here,
/// not an error to unwind from.
pub async fn webgpu_available() -> Result<String, String> {
    let gpu = navigator_gpu().ok_or("this browser has no WebGPU (navigator.gpu is missing)")?;
    let request: js_sys::Function = js_sys::Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or("navigator.gpu.requestAdapter is missing")?;
    let promise: js_sys::Promise = request
        .call0(&gpu)
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?
        .dyn_into()
        .map_err(|_| "requestAdapter did not return a promise")?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU has no adapter here (requestAdapter returned null)".into());
    }
    Ok(describe_adapter(&adapter))
}

/// `GPUAdapterInfo`'s vendor, architecture and description, whichever the browser fills in.
fn describe_adapter(adapter: &wasm_bindgen::JsValue) -> String {
    let info = js_sys::Reflect::get(adapter, &"info".into()).unwrap_or_default();
    let words: Vec<String> = ["vendor", "architecture", "description"]
        .iter()
        .filter_map(|k| js_sys::Reflect::get(&info, &(*k).into()).ok()?.as_string())
        .filter(|s| !s.is_empty())
        .collect();
    if words.is_empty() {
        "an unnamed adapter".into()
    } else {
        words.join(" ")
    }
}

/// What the measurement found and chose.
pub struct Settled {
    pub backend: Backend,
    pub replica: Replica,
    /// Contributions per step.
    pub lanes: usize,
    /// The figures measured, for the page ("webgpu K=16 410/s · cpu 150/s"); empty when
    /// nothing was measured.
    pub measured: String,
    /// Why this backend, in words.
    pub reason: Option<String>,
}

/// Milliseconds of timed steps per backend and lane count.
const MEASURE_BUDGET_MS: f64 = 300.0;

/// Settles the backend and the lanes per step. With WebGPU available and `preference` `auto`,
/// races WebGPU (at several lane counts) against the CPU and keeps the faster; with `webgpu`,
/// measures only the lane count; `lanes > 0` fixes the lane count.
pub async fn settle(
    choice: Choice,
    preference: &str,
    lanes: usize,
    job: &Arc<Job>,
    snapshot: Snapshot,
    batch: &Split,
) -> Result<Settled, String> {
    let Backend::WebGpu(gpu) = &choice.backend else {
        return Ok(Settled {
            replica: Backend::Cpu.restored(job.clone(), snapshot)?,
            backend: choice.backend,
            lanes: lanes.max(1),
            measured: String::new(),
            reason: choice.reason,
        });
    };
    let on_gpu = Replica::restored_gpu(job.clone(), gpu, &snapshot).map_err(misfit)?;
    // The CPU's replica takes the decoded θ: the tab holds it once, whichever wins.
    let on_cpu = match preference {
        "webgpu" => None,
        _ => Some(Backend::Cpu.restored(job.clone(), snapshot)?),
    };
    let race = calibrate::race(on_gpu, on_cpu, lanes, batch, MEASURE_BUDGET_MS, now_ms)
        .await
        .map_err(|e| format!("measuring the backends failed: {e}"))?;
    Ok(Settled {
        measured: race.figures("webgpu"),
        reason: race
            .reason("WebGPU")
            .or_else(|| Some("WebGPU was asked for".into())),
        lanes: race.lanes,
        backend: if race.on_gpu {
            choice.backend
        } else {
            Backend::Cpu
        },
        replica: race.replica,
    })
}

/// Picks the candidate backend: `preference` is `auto`, `webgpu` or `cpu`.
pub async fn choose(preference: &str) -> Choice {
    let cpu = |reason: String| Choice {
        backend: Backend::Cpu,
        adapter: "burn CPU backend in WebAssembly".into(),
        reason: Some(reason),
    };
    if preference == "cpu" {
        return cpu("the CPU was asked for".into());
    }
    let adapter = match webgpu_available().await {
        Ok(adapter) => adapter,
        Err(why) => return cpu(why),
    };
    match GpuContext::init().await {
        Ok(gpu) => Choice {
            adapter,
            backend: Backend::WebGpu(gpu),
            reason: None,
        },
        Err(e) => cpu(format!("WebGPU could not start: {e}")),
    }
}
