//! Engine benchmarks on the CPU backend, run by `cargo xtask bench`.
//!
//! Prints absolute times and the ratios the project tracks, all measured in this one run:
//! ZO step / (2 × forward), apply one log entry / forward, and steps per second.

use engine::{Builtin, Job, Replica, block_on, cpu_device};
use protocol::{Counter, LogEntry, PeerId};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Median over `reps` repetitions of the mean time of `iters` calls.
fn time(reps: usize, iters: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut samples: Vec<Duration> = (0..reps)
        .map(|r| {
            let start = Instant::now();
            for i in 0..iters {
                f(r * iters + i);
            }
            start.elapsed() / iters as u32
        })
        .collect();
    samples.sort();
    samples[reps / 2]
}

fn main() {
    let job = Arc::new(Job::demo());
    let d = job.model.layout().d();
    let batch_size = job.hyper().batch_size;
    let data = Builtin::Spirals.generate(4_000, 1_000, 1);
    let mut sampler = engine::BatchSampler::new(3);
    let batch = sampler.sample(&data.train, batch_size);
    let mut replica = Replica::new(job.clone(), cpu_device());

    // Warm up allocators and caches.
    for i in 0..200 {
        block_on(replica.propose(PeerId(0), Counter(i), &batch)).unwrap();
    }

    let (reps, iters) = (9, 400);
    let forward = time(reps, iters, |_| {
        black_box(block_on(replica.batch_loss(&batch)).unwrap());
    });
    let step = time(reps, iters, |i| {
        black_box(block_on(replica.propose(PeerId(0), Counter(i as u64), &batch)).unwrap());
    });
    let mut follower = Replica::new(job.clone(), cpu_device());
    let apply = time(reps, iters * 10, |i| {
        follower.apply(&[LogEntry {
            peer: PeerId(1),
            counter: Counter(i as u64),
            byte: 0x21,
        }]);
    });
    let full = time(reps, iters, |i| {
        let p = block_on(replica.propose(PeerId(0), Counter(i as u64), &batch)).unwrap();
        replica.apply(&[LogEntry {
            peer: PeerId(0),
            counter: p.counter,
            byte: p.byte,
        }]);
    });

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let cpu_update = update_throughput(&mut Replica::new(job.clone(), cpu_device()));
    println!("engine on burn's CPU backend (Flex), spirals MLP d = {d}, batch {batch_size}");
    println!(
        "  forward pass (loss on a batch)      {:>9.1} µs",
        us(forward)
    );
    println!("  ZO step (propose: 2 perturbed fwd)  {:>9.1} µs", us(step));
    println!(
        "  apply one log entry                 {:>9.2} µs",
        us(apply)
    );
    println!(
        "  ZO step / (2 × forward)             {:>9.3}   (goal ≤ 1.15)",
        step.as_secs_f64() / (2.0 * forward.as_secs_f64())
    );
    println!(
        "  apply / forward                     {:>9.3}   (goal ≤ 0.25)",
        apply.as_secs_f64() / forward.as_secs_f64()
    );
    println!(
        "  steps per second (propose + apply)  {:>9.0}",
        1.0 / full.as_secs_f64()
    );
    #[cfg(not(feature = "wgpu"))]
    print_update("CPU", &cpu_update, None);
    #[cfg(feature = "wgpu")]
    wgpu_figures(
        &job,
        &batch,
        &cpu_update,
        step.as_secs_f64() / (2.0 * forward.as_secs_f64()),
    );
}

/// Parameters × entries per second when applying batches of 1, 16 and 256 entries.
fn update_throughput(replica: &mut Replica) -> Vec<(usize, f64)> {
    let d = replica.job().model.layout().d() as f64;
    [1usize, 16, 256]
        .into_iter()
        .map(|n| {
            let mut counter = 0u64;
            let mut entries = || {
                (0..n)
                    .map(|_| {
                        counter += 1;
                        LogEntry {
                            peer: PeerId(2),
                            counter: Counter(counter),
                            byte: 0x21,
                        }
                    })
                    .collect::<Vec<_>>()
            };
            let iters = (2_048 / n).max(8);
            // Include a read-back so GPU work is finished, not just queued.
            let t = time(5, 1, |_| {
                for _ in 0..iters {
                    replica.apply(&entries());
                }
                black_box(block_on(replica.weight_hash()).unwrap());
            });
            (n, d * (n * iters) as f64 / t.as_secs_f64())
        })
        .collect()
}

fn print_update(name: &str, figures: &[(usize, f64)], baseline: Option<&[(usize, f64)]>) {
    for (i, (n, rate)) in figures.iter().enumerate() {
        let ratio = baseline
            .map(|b| format!("  ({:.2}× the CPU)", rate / b[i].1))
            .unwrap_or_default();
        println!(
            "  update throughput, {name}, {n:>3} entries/batch {:>9.3e} params·entries/s{ratio}",
            rate
        );
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_figures(
    job: &Arc<Job>,
    batch: &engine::Split,
    cpu_update: &[(usize, f64)],
    cpu_ratio: f64,
) {
    let gpu = block_on(engine::gpu::GpuContext::init()).expect("a wgpu adapter");
    let mut replica = Replica::new_gpu(job.clone(), &gpu);
    for i in 0..50 {
        block_on(replica.propose(PeerId(0), Counter(i), batch)).unwrap();
    }
    let (reps, iters) = (5, 100);
    let forward = time(reps, iters, |_| {
        black_box(block_on(replica.batch_loss(batch)).unwrap());
    });
    let step = time(reps, iters, |i| {
        black_box(block_on(replica.propose(PeerId(0), Counter(i as u64), batch)).unwrap());
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("wgpu: {}", gpu.adapter);
    println!(
        "  forward pass                        {:>9.1} µs",
        us(forward)
    );
    println!("  ZO step                             {:>9.1} µs", us(step));
    println!(
        "  ZO step / (2 × forward)             {:>9.3}   (CPU in this run: {cpu_ratio:.3})",
        step.as_secs_f64() / (2.0 * forward.as_secs_f64())
    );
    print_update("CPU", cpu_update, None);
    print_update("wgpu", &update_throughput(&mut replica), Some(cpu_update));
}
