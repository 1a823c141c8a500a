//! Where `onebyte join` computes: the CPU, or wgpu when asked or when it measures faster.

use crate::data::BackendArg;
use anyhow::Result;
#[cfg(not(feature = "wgpu"))]
use anyhow::bail;
use engine::{Job, Replica, Snapshot};
use std::sync::Arc;
#[cfg(feature = "wgpu")]
use std::time::Instant;

pub enum Backend {
    Cpu,
    #[cfg(feature = "wgpu")]
    Wgpu(engine::gpu::GpuContext),
}

impl Backend {
    /// A replica of `job` from a decoded snapshot on this backend (the CPU's takes its θ).
    pub fn restored(&self, job: &Arc<Job>, snapshot: Snapshot) -> Result<Replica> {
        Ok(match self {
            Backend::Cpu => Replica::restored(job.clone(), engine::cpu_device(), snapshot)?,
            #[cfg(feature = "wgpu")]
            Backend::Wgpu(gpu) => Replica::restored_gpu(job.clone(), gpu, &snapshot)?,
        })
    }

    /// What the relay's host is told this peer computes on.
    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    pub fn describe(&self, lanes: usize) -> String {
        match self {
            Backend::Cpu => "cpu".to_string(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu(gpu) => format!("wgpu ({}), {lanes} lanes", gpu.adapter),
        }
    }
}

/// Milliseconds of timed steps per backend and lane count when measuring.
const MEASURE_BUDGET_MS: f64 = 300.0;

/// The backend, a replica on it, and the lanes per step: as asked, or measured (`auto`, and
/// `--lanes 0` on a GPU). Says what it measured and what it chose.
pub async fn choose(
    asked: BackendArg,
    lanes: usize,
    job: &Arc<Job>,
    snapshot: Snapshot,
    batch: &engine::data::Split,
) -> Result<(Backend, Replica, usize)> {
    let on_cpu = |snapshot| Backend::Cpu.restored(job, snapshot);
    if matches!(asked, BackendArg::Cpu) {
        return Ok((Backend::Cpu, on_cpu(snapshot)?, lanes.max(1)));
    }
    #[cfg(feature = "wgpu")]
    {
        let gpu = match engine::gpu::GpuContext::init().await {
            Ok(gpu) => gpu,
            Err(e) if matches!(asked, BackendArg::Auto) => {
                eprintln!("backend: cpu (no wgpu adapter: {e})");
                return Ok((Backend::Cpu, on_cpu(snapshot)?, lanes.max(1)));
            }
            Err(e) => return Err(e.into()),
        };
        let backend = Backend::Wgpu(gpu.clone());
        let on_gpu = Replica::restored_gpu(job.clone(), &gpu, &snapshot)?;
        // The CPU's replica takes the decoded θ: the peer holds it once on the host.
        let rival = match asked {
            BackendArg::Auto => Some(on_cpu(snapshot)?),
            _ => None,
        };
        let clock = Instant::now();
        let now = move || clock.elapsed().as_secs_f64() * 1_000.0;
        let race =
            engine::calibrate::race(on_gpu, rival, lanes, batch, MEASURE_BUDGET_MS, now).await?;
        eprintln!("wgpu adapter: {}", gpu.adapter);
        eprintln!("measured: {}", race.figures("wgpu"));
        let chosen = if race.on_gpu { backend } else { Backend::Cpu };
        eprintln!(
            "backend: {} with {} lanes{}",
            if race.on_gpu { "wgpu" } else { "cpu" },
            race.lanes,
            race.reason("wgpu")
                .map_or(String::new(), |r| format!(" ({r})"))
        );
        Ok((chosen, race.replica, race.lanes))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        if matches!(asked, BackendArg::Wgpu) {
            bail!("this onebyte was built without wgpu");
        }
        Ok((Backend::Cpu, on_cpu(snapshot)?, lanes.max(1)))
    }
}
