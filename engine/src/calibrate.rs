//! Choosing a backend and a lane count by measuring them, not by guessing.
//!
//! A GPU only pays off when it evaluates many directions per dispatch, and a slow adapter
//! (software WebGPU, say) can lose to the CPU at any lane count. So a peer times a few steps on
//! each backend it has, at a few lane counts, and keeps the fastest. The clock is the caller's:
//! there is no `Instant` in a browser.

use crate::data::Split;
use crate::replica::{EngineError, Replica};
use protocol::{Counter, PeerId};

/// Lane counts tried on a GPU.
pub const GPU_LANES: [usize; 4] = [1, 4, 16, 64];
/// Lane counts tried on the CPU (a CPU gains nothing from lanes past a few).
pub const CPU_LANES: [usize; 1] = [1];

/// How fast one backend proposed at one lane count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Contributions per step.
    pub lanes: usize,
    /// Milliseconds per step (the mean of the timed steps).
    pub step_ms: f64,
    /// Contributions per second.
    pub per_second: f64,
}

/// Times `propose_lanes` on `replica` for each lane count in `lanes`, in order: one untimed step
/// first (kernel compilation, allocation), then steps until `budget_ms` of timed work or
/// `max_steps` steps, whichever comes first. It stops before the next lane count once a step
/// took longer than `budget_ms` or the last count gave no more contributions per second than the
/// one before. θ is not changed.
pub async fn measure(
    replica: &mut Replica,
    batch: &Split,
    lanes: &[usize],
    budget_ms: f64,
    now_ms: impl Fn() -> f64,
) -> Result<Vec<Measurement>, EngineError> {
    const MAX_STEPS: usize = 8;
    let mut out = Vec::new();
    for &k in lanes {
        let counters: Vec<Counter> = (0..k as u64).map(Counter).collect();
        // A peer id no relay hands out: these proposals are never sent.
        let peer = PeerId(u32::MAX);
        replica.propose_lanes(peer, &counters, batch).await?;
        let (start, mut steps) = (now_ms(), 0usize);
        while steps < MAX_STEPS && (steps == 0 || now_ms() - start < budget_ms) {
            replica.propose_lanes(peer, &counters, batch).await?;
            steps += 1;
        }
        let step_ms = ((now_ms() - start) / steps as f64).max(1e-3);
        let measured = Measurement {
            lanes: k,
            step_ms,
            per_second: k as f64 * 1_000.0 / step_ms,
        };
        let gained = out
            .last()
            .is_none_or(|previous: &Measurement| measured.per_second > previous.per_second);
        out.push(measured);
        // More lanes make each step longer: once one step alone outlasts the budget, or more
        // lanes stopped paying, larger counts are not worth minutes of a slow adapter's time.
        if step_ms > budget_ms || !gained {
            break;
        }
    }
    Ok(out)
}

/// The measurement with the most contributions per second.
pub fn fastest(measurements: &[Measurement]) -> Option<Measurement> {
    measurements
        .iter()
        .copied()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
}

/// What racing a GPU replica against a CPU one found, and the replica it kept.
#[derive(Debug)]
pub struct Race {
    /// The faster replica (the GPU's when no CPU replica ran).
    pub replica: Replica,
    pub on_gpu: bool,
    /// Contributions per step on the kept replica.
    pub lanes: usize,
    pub gpu: Vec<Measurement>,
    pub cpu: Vec<Measurement>,
}

impl Race {
    /// The figures, e.g. "webgpu K=1 5/s · webgpu K=16 53/s · cpu K=1 150/s".
    pub fn figures(&self, gpu_name: &str) -> String {
        let listed = |name: &str, found: &[Measurement]| -> Vec<String> {
            found
                .iter()
                .map(|m| format!("{name} K={} {:.0}/s", m.lanes, m.per_second))
                .collect()
        };
        let mut all = listed(gpu_name, &self.gpu);
        all.extend(listed("cpu", &self.cpu));
        all.join(" · ")
    }

    /// Why the kept backend, in words; `None` when the CPU did not race.
    pub fn reason(&self, gpu_name: &str) -> Option<String> {
        let best_cpu = fastest(&self.cpu)?;
        let best_gpu = fastest(&self.gpu)?;
        Some(if self.on_gpu {
            format!(
                "measured faster: {:.0} contributions/s against the CPU's {:.0}",
                best_gpu.per_second, best_cpu.per_second
            )
        } else {
            format!(
                "measured faster: {:.0} contributions/s against {gpu_name}'s best {:.0}",
                best_cpu.per_second, best_gpu.per_second
            )
        })
    }
}

/// Times `gpu` at `lanes` directions per step ([`GPU_LANES`] when 0) and, when `cpu` is given,
/// the CPU at one lane (or `lanes`), and keeps the replica with more contributions per second.
pub async fn race(
    mut gpu: Replica,
    cpu: Option<Replica>,
    lanes: usize,
    batch: &Split,
    budget_ms: f64,
    now_ms: impl Fn() -> f64 + Copy,
) -> Result<Race, EngineError> {
    let gpu_lanes = if lanes == 0 {
        GPU_LANES.to_vec()
    } else {
        vec![lanes]
    };
    let found_gpu = measure(&mut gpu, batch, &gpu_lanes, budget_ms, now_ms).await?;
    let best_gpu = fastest(&found_gpu).expect("at least one lane count was measured");
    let Some(mut cpu) = cpu else {
        return Ok(Race {
            replica: gpu,
            on_gpu: true,
            lanes: best_gpu.lanes,
            gpu: found_gpu,
            cpu: Vec::new(),
        });
    };
    let found_cpu = measure(&mut cpu, batch, &[lanes.max(1)], budget_ms, now_ms).await?;
    let best_cpu = fastest(&found_cpu).expect("one lane count was measured");
    let on_gpu = best_gpu.per_second > best_cpu.per_second;
    Ok(Race {
        replica: if on_gpu { gpu } else { cpu },
        on_gpu,
        lanes: if on_gpu {
            best_gpu.lanes
        } else {
            best_cpu.lanes
        },
        gpu: found_gpu,
        cpu: found_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Builtin, Job, block_on, cpu_device};
    use std::sync::Arc;

    #[test]
    fn measuring_times_each_lane_count_and_leaves_theta_alone() {
        let mut replica = Replica::new(Arc::new(Job::demo()), cpu_device());
        let before = block_on(replica.weight_hash()).unwrap();
        let data = Builtin::Spirals.generate(256, 8, 1);
        let clock = std::time::Instant::now();
        let now = || clock.elapsed().as_secs_f64() * 1_000.0;
        let found = block_on(measure(&mut replica, &data.train, &[1, 4], 20.0, now)).unwrap();
        assert_eq!(found.iter().map(|m| m.lanes).collect::<Vec<_>>(), [1, 4]);
        assert!(found.iter().all(|m| m.per_second > 0.0 && m.step_ms > 0.0));
        let best = fastest(&found).unwrap();
        assert!(found.iter().all(|m| m.per_second <= best.per_second));
        assert_eq!(block_on(replica.weight_hash()).unwrap(), before);
    }

    #[test]
    fn measuring_stops_when_a_step_outlasts_the_budget() {
        let mut replica = Replica::new(Arc::new(Job::demo()), cpu_device());
        let data = Builtin::Spirals.generate(256, 8, 1);
        // A clock on which every step takes 100 ms: past the 50 ms budget at the first count.
        let ticks = std::cell::Cell::new(0.0);
        let slow = || {
            ticks.set(ticks.get() + 50.0);
            ticks.get()
        };
        let found = block_on(measure(&mut replica, &data.train, &[1, 4, 16], 50.0, slow)).unwrap();
        assert_eq!(found.iter().map(|m| m.lanes).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_race_keeps_the_faster_replica_and_its_lanes() {
        let job = Arc::new(Job::demo());
        let data = Builtin::Spirals.generate(256, 8, 1);
        let clock = std::time::Instant::now();
        let now = || clock.elapsed().as_secs_f64() * 1_000.0;
        // Two CPU replicas stand in for the two contenders: whichever wins, the race reports
        // both sets of figures and keeps the winner's lane count.
        let a = Replica::new(job.clone(), cpu_device());
        let b = Replica::new(job, cpu_device());
        let race = block_on(race(a, Some(b), 0, &data.train, 10.0, now)).unwrap();
        // The lane counts in order, from K = 1, as far as they paid off.
        let tried: Vec<usize> = race.gpu.iter().map(|m| m.lanes).collect();
        assert!(
            !tried.is_empty() && tried[..] == GPU_LANES[..tried.len()],
            "{tried:?}"
        );
        assert_eq!(race.cpu.len(), 1);
        let best_gpu = fastest(&race.gpu).unwrap();
        let best_cpu = fastest(&race.cpu).unwrap();
        assert_eq!(race.on_gpu, best_gpu.per_second > best_cpu.per_second);
        let kept = if race.on_gpu { best_gpu } else { best_cpu };
        assert_eq!(race.lanes, kept.lanes);
        assert!(race.figures("webgpu").starts_with("webgpu K=1 "));
        assert!(
            race.reason("webgpu")
                .unwrap()
                .starts_with("measured faster")
        );
    }
}
