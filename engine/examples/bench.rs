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
fn time(reps: usize, iters: usize, f: impl FnMut(usize)) -> Duration {
    median_and_fastest(reps, iters, f).0
}

/// The median and the fastest of `reps` repetitions of the mean time of `iters` calls. On a
/// shared machine noise only slows a run down: the fastest is the code's own pace.
fn median_and_fastest(reps: usize, iters: usize, mut f: impl FnMut(usize)) -> (Duration, Duration) {
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
    (samples[reps / 2], samples[0])
}

fn main() {
    // With the allocator's defaults: what start-up frees (θ₀ on the host, its upload's
    // staging) goes back to the system, so the GPU replica's own memory shows.
    #[cfg(feature = "wgpu")]
    if std::env::args().any(|a| a == GPT2_ON_WGPU) {
        return gpt2_small_on_wgpu();
    }
    // As the worker runs (`onebyte`): freed tensors stay in the process for reuse.
    engine::host_memory::keep_freed_memory();
    // First, while the process holds nothing else: its peak memory is the step's.
    gpt2_small_step_figures();
    #[cfg(feature = "wgpu")]
    gpt2_small_on_wgpu_apart();
    mlp_1m_step_figures();
    preset_step_figures();
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
    lanes_figures();
    trained_part_figures();
    #[cfg(feature = "pretrain")]
    pretrain_figures();
}

/// Pre-training speed (`onebyte pretrain`: backpropagation and AdamW) for the tiny and small
/// transformer presets over bytes, on the CPU and on wgpu (lavapipe here, a GPU elsewhere),
/// beside PyTorch training the same GPT-2 configuration with Adam on the same cores, where
/// `torch` is installed.
#[cfg(feature = "pretrain")]
fn pretrain_figures() {
    const BATCH: usize = 16;
    println!("\npre-training (backpropagation + AdamW), batch {BATCH} windows");
    let mut devices = vec![("cpu", cpu_device())];
    #[cfg(feature = "wgpu")]
    {
        let gpu = block_on(engine::gpu::GpuContext::init()).expect("a wgpu adapter");
        devices.push(("wgpu", gpu.device));
    }
    for (preset, steps) in [("tiny", 12u64), ("small", 3)] {
        let toml = format!(
            "[job]\nname = \"bench-{preset}\"\n[model]\nkind = \"transformer\"\n\
             preset = \"{preset}\"\n[task]\nfeatures = {}\nclasses = 256\ndataset = \"tales\"\n",
            if preset == "tiny" { 64 } else { 128 }
        );
        let job = Arc::new(Job::from_toml(&toml).unwrap());
        let dims = *job.model.transformer().unwrap();
        let data = engine::data::for_job(&job, &"tales".parse().unwrap(), None, 1).unwrap();
        let torch = torch_tokens_per_s(&dims, BATCH, job.model.features());
        for (backend, device) in &devices {
            let ours = pretrain_tokens_per_s(&job, &data, device, BATCH, steps);
            let ratio = torch.map_or("(no torch here: not compared)".to_string(), |t| {
                format!(
                    "PyTorch (CPU) {t:.0} tokens/s; ours / PyTorch {:.2} (goal ≥ 0.5)",
                    ours / t
                )
            });
            println!(
                "  {preset:<5} {backend:<4} d = {:>9}, T = {:>3}: {ours:>8.0} tokens/s   {ratio}",
                job.model.layout().d(),
                job.model.features()
            );
        }
    }
}

/// Tokens per second of `steps` first-order steps (after two to warm up) on `device`.
#[cfg(feature = "pretrain")]
fn pretrain_tokens_per_s(
    job: &Arc<Job>,
    data: &engine::Dataset,
    device: &burn::tensor::Device,
    batch: usize,
    steps: u64,
) -> f64 {
    use engine::pretrain::{FirstOrder, Schedule};
    let schedule = Schedule {
        peak: 1e-3,
        warmup: 1,
        steps: steps + 2,
    };
    let mut trainer = FirstOrder::new(
        job.clone(),
        job.initial_weights(),
        device,
        schedule,
        0.01,
        1,
    );
    for _ in 0..2 {
        trainer.step(&data.train, batch).unwrap();
    }
    let start = Instant::now();
    for _ in 0..steps {
        black_box(trainer.step(&data.train, batch).unwrap());
    }
    let tokens = (steps as usize * batch * job.model.features()) as f64;
    tokens / start.elapsed().as_secs_f64()
}

/// PyTorch's tokens per second for the same configuration (`tests/reference/pretrain_torch.py`),
/// or `None` where python3 cannot import torch.
#[cfg(feature = "pretrain")]
fn torch_tokens_per_s(
    dims: &engine::transformer::Dims,
    batch: usize,
    context: usize,
) -> Option<f64> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/pretrain_torch.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--layers", &dims.layers.to_string()])
        .args(["--width", &dims.width.to_string()])
        .args(["--heads", &dims.heads.to_string()])
        .args(["--context", &context.to_string()])
        .args(["--vocab", &dims.vocab.to_string()])
        .args(["--batch", &batch.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

/// The MLP of about a million parameters (64-1024-1024-10, ReLU) and a batch of 64 for it.
fn mlp_1m() -> (Arc<Job>, engine::Split) {
    let job = Job::from_toml(
        "[job]\nname = \"bench-1m\"\n[model]\nkind = \"mlp\"\nhidden = [1024, 1024]\nactivation = \"relu\"\n\
         [task]\nfeatures = 64\nclasses = 10\n[hyper]\nbatch_size = 64\n",
    )
    .expect("the 1M job");
    let batch = engine::Split {
        features: 64,
        x: (0..64 * 64)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect(),
        y: (0..64).map(|i| i % 10).collect(),
    };
    (Arc::new(job), batch)
}

/// The 1 M MLP's forward pass, ZO step and apply on the CPU, beside PyTorch's on the same cores.
fn mlp_1m_step_figures() {
    let (job, batch) = mlp_1m();
    let d = job.model.layout().d();
    let mut replica = Replica::new(job, cpu_device());
    let times = step_times(&mut replica, &batch, 5, 40);
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    println!("MLP 64-1024-1024-10 on the CPU, d = {d}, batch 64");
    println!(
        "  forward {:.2} ms, ZO step {:.2} ms, apply one entry {:.2} ms",
        ms(times.forward),
        ms(times.step),
        ms(times.apply)
    );
    beside_torch(
        &["--mlp", "64,1024,1024,10", "--batch", "64"],
        &times,
        Some(0.8),
    );
    println!();
}

/// The models the lane figures use: the demo's spirals MLP, the char LM, the tiny transformer
/// and an MLP of about a million parameters (64-1024-1024-10), each with a batch of its own
/// shape.
fn lane_models() -> Vec<(&'static str, Arc<Job>, engine::Split)> {
    let lm = Job::from_toml(
        "[job]\nname = \"bench-lm\"\n[model]\nkind = \"char_lm\"\nembedding = 8\nhidden = [64]\n\
         [task]\nfeatures = 8\nclasses = 256\ndataset = \"tales\"\n[hyper]\nbatch_size = 64\n",
    )
    .expect("the LM job");
    let lm = Arc::new(lm);
    let lm_data = engine::data::for_job(&lm, &"tales".parse().unwrap(), None, 1).unwrap();
    let (big, big_batch) = mlp_1m();
    let spirals = Builtin::Spirals.generate(4_000, 1_000, 1);
    let mut sampler = engine::BatchSampler::new(3);
    let demo = Arc::new(Job::demo());
    let demo_batch = sampler.sample(&spirals.train, demo.hyper().batch_size);
    let lm_batch = sampler.sample(&lm_data.train, lm.hyper().batch_size);
    let tiny = Arc::new(Job::tiny_lm());
    let tiny_data = engine::data::for_job(&tiny, &"tales".parse().unwrap(), None, 1).unwrap();
    let tiny_batch = sampler.sample(&tiny_data.train, tiny.hyper().batch_size);
    vec![
        ("spirals MLP", demo, demo_batch),
        ("char LM", lm, lm_batch),
        ("tiny transformer", tiny, tiny_batch),
        ("MLP 64-1024-1024-10", big, big_batch),
    ]
}

/// Contributions per second, bytes read back per contribution, and ZO step / (2 × forward) at
/// the same lane count, for K = 1, 4, 16, 64 on each backend; then the log's apply throughput
/// for the largest model at 256 entries per dispatch.
fn lanes_figures() {
    #[cfg(feature = "wgpu")]
    let gpu = block_on(engine::gpu::GpuContext::init()).expect("a wgpu adapter");
    for (name, job, batch) in lane_models() {
        let d = job.model.layout().d();
        println!("\nlanes: {name}, d = {d}, batch {}", batch.len());
        println!(
            "  backend   K  contributions/s  per-contribution cost vs K=1  read back B/contribution  step/(2×fwd)"
        );
        #[cfg_attr(not(feature = "wgpu"), allow(unused_mut))]
        let mut backends: Vec<(&str, Replica)> =
            vec![("cpu", Replica::new(job.clone(), cpu_device()))];
        #[cfg(feature = "wgpu")]
        backends.push(("wgpu", Replica::new_gpu(job.clone(), &gpu)));
        for (backend, mut replica) in backends {
            let mut single = None;
            // The million-parameter model at 64 lanes would take minutes on a software adapter.
            let ks: &[usize] = if d > 100_000 {
                &[1, 4, 16]
            } else {
                &[1, 4, 16, 64]
            };
            for &k in ks {
                let counters: Vec<Counter> = (0..k as u64).map(Counter).collect();
                block_on(replica.propose_lanes(PeerId(0), &counters, &batch)).unwrap();
                let iters = if d > 100_000 { 2 } else { 8 };
                let before = replica.bytes_read_back();
                let step = time(3, iters, |_| {
                    black_box(
                        block_on(replica.propose_lanes(PeerId(0), &counters, &batch)).unwrap(),
                    );
                });
                let read = (replica.bytes_read_back() - before) as f64 / (3 * iters * k) as f64;
                let forward = time(3, iters, |_| {
                    black_box(block_on(replica.batch_loss_copies(&batch, k)).unwrap());
                });
                let per = step.as_secs_f64() / k as f64;
                let base = *single.get_or_insert(per);
                println!(
                    "  {backend:<7} {k:>3}  {:>15.0}  {:>28.3}  {:>24.1}  {:>12.3}",
                    1.0 / per,
                    per / base,
                    read,
                    step.as_secs_f64() / (2.0 * forward.as_secs_f64()),
                );
            }
        }
        if d > 100_000 {
            let mut cpu = Replica::new(job.clone(), cpu_device());
            let cpu_apply = apply_256(&mut cpu);
            println!(
                "  apply the log, 256 entries per dispatch: cpu {cpu_apply:.3e} params·entries/s"
            );
            #[cfg(feature = "wgpu")]
            {
                let mut on_gpu = Replica::new_gpu(job.clone(), &gpu);
                let gpu_apply = apply_256(&mut on_gpu);
                println!(
                    "  apply the log, 256 entries per dispatch: wgpu {gpu_apply:.3e} params·entries/s ({:.2}× the CPU)",
                    gpu_apply / cpu_apply
                );
            }
        }
    }
}

/// Parameters × entries per second applying 256 entries at once (a read-back at the end so GPU
/// work is finished).
fn apply_256(replica: &mut Replica) -> f64 {
    let d = replica.job().model.layout().d() as f64;
    let entries: Vec<LogEntry> = (0..256)
        .map(|i| LogEntry {
            peer: PeerId(2),
            counter: Counter(i),
            byte: 0x21,
        })
        .collect();
    let t = time(3, 1, |_| {
        replica.apply(&entries);
        black_box(block_on(replica.weight_hash()).unwrap());
    });
    d * 256.0 / t.as_secs_f64()
}

/// Resident memory of this process (`VmRSS`) and its peak (`VmHWM`), in bytes (Linux).
fn resident() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One CPU peer on the GPT-2-small shape (12 layers, width 768, 12 heads, 50 257 tokens,
/// random weights from the seed), batch 4 × 32 tokens: forward, ZO step, applying one entry,
/// and the peak resident memory of the process against θ's bytes (each perturbed tensor is
/// made as the pass reads it); beside them PyTorch's forward and MeZO step where torch
/// imports (our step is compared with the apply included, as MeZO's includes its update).
fn gpt2_small_step_figures() {
    let (job, batch) = gpt2_small();
    let d = job.model.layout().d();
    let before = resident().map_or(0, |(rss, _)| rss);
    let mut replica = Replica::new(job.clone(), cpu_device());
    let times = step_times(&mut replica, &batch, 3, 1);
    let StepTimes {
        forward,
        step,
        apply,
        ..
    } = times;
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    println!("GPT-2-small shape on the CPU, d = {d}, batch 4 × 32 tokens");
    println!(
        "  forward pass                        {:>9.0} ms",
        ms(forward)
    );
    println!("  ZO step (propose: 2 perturbed fwd)  {:>9.0} ms", ms(step));
    println!(
        "  apply one log entry                 {:>9.0} ms   ({:.2e} params/s)",
        ms(apply),
        d as f64 / apply.as_secs_f64()
    );
    let gpt2 = "--layers 12 --width 768 --heads 12 --context 32 --vocab 50257 --batch 4";
    beside_torch(&gpt2.split(' ').collect::<Vec<_>>(), &times, Some(0.5));
    if let Some((_, peak)) = resident() {
        let theta = (d * size_of::<f32>()) as f64;
        println!(
            "  peak resident memory                {:>9.0} MB   ({:.2}× θ's {:.0} MB; goal ≤ 1.3× + activations)",
            (peak - before) as f64 / 1e6,
            (peak - before) as f64 / theta,
            theta / 1e6
        );
    }
    println!();
}

/// The transformer presets on the CPU (random weights, bytes of the `tales` corpus): forward
/// pass, ZO step and applying one entry, beside PyTorch's on a model of the same shape.
fn preset_step_figures() {
    for (preset, window, rows) in [("tiny", 32, 32), ("small", 128, 8)] {
        let job = Job::from_toml(&format!(
            "[job]\nname = \"bench-{preset}-zo\"\n[model]\nkind = \"transformer\"\n\
             preset = \"{preset}\"\n[task]\nfeatures = {window}\nclasses = 256\n\
             dataset = \"tales\"\n[hyper]\nbatch_size = {rows}\n"
        ))
        .expect("a preset's job");
        let job = Arc::new(job);
        let d = job.model.layout().d();
        let dims = *job.model.transformer().expect("a transformer");
        let data = engine::text::corpus_dataset(engine::Corpus::Tales, window, 1);
        let batch = data.train.rows(0..rows);
        let mut replica = Replica::new(job, cpu_device());
        let times = step_times(&mut replica, &batch, 3, 4);
        let ms = |t: Duration| t.as_secs_f64() * 1e3;
        println!("{preset} transformer preset on the CPU, d = {d}, batch {rows} × {window} bytes");
        println!(
            "  forward {:.2} ms, ZO step {:.2} ms, apply one entry {:.3} ms",
            ms(times.forward),
            ms(times.step),
            ms(times.apply)
        );
        let shape = [
            ("--layers", dims.layers),
            ("--width", dims.width),
            ("--heads", dims.heads),
            ("--context", window),
            ("--vocab", 256),
            ("--batch", rows),
        ];
        let args: Vec<String> = shape
            .iter()
            .flat_map(|(flag, n)| [flag.to_string(), n.to_string()])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        beside_torch(&args, &times, None);
        println!();
    }
}

/// The GPT-2-small shape with random weights from the seed, and a batch of 4 × 32 tokens.
fn gpt2_small() -> (Arc<Job>, engine::Split) {
    let job = Job::from_toml(
        "[job]\nname = \"bench-gpt2-small-step\"\n[model]\nkind = \"transformer\"\n\
         layers = 12\nwidth = 768\nheads = 12\ncontext = 32\n[task]\nfeatures = 32\n\
         classes = 50257\ndataset = \"tales\"\n[hyper]\nbatch_size = 4\n",
    )
    .unwrap();
    let batch = engine::Split {
        features: 32,
        x: (0..4 * 32).map(|i| ((i * 7919) % 50257) as f32).collect(),
        y: (0..4).map(|i| (i * 104_729) % 50257).collect(),
    };
    (Arc::new(job), batch)
}

/// The argument that makes this program measure only [`gpt2_small_on_wgpu`]: in a process of
/// its own, so that its peak memory is the GPU replica's alone.
#[cfg(feature = "wgpu")]
const GPT2_ON_WGPU: &str = "--gpt2-small-on-wgpu";

/// [`gpt2_small_on_wgpu`] in a child process.
#[cfg(feature = "wgpu")]
fn gpt2_small_on_wgpu_apart() {
    let me = std::env::current_exe().expect("the bench knows its own path");
    match std::process::Command::new(me).arg(GPT2_ON_WGPU).status() {
        Ok(status) if status.success() => {}
        Ok(status) => println!("  (the GPT-2-small shape on wgpu failed: {status})\n"),
        Err(e) => println!("  (the GPT-2-small shape on wgpu did not start: {e})\n"),
    }
}

/// One GPU peer on the GPT-2-small shape: forward and ZO step (each trained tensor's two
/// perturbed copies made by the kernel as the pass reads it), and the process's resident
/// memory after start-up and at its peak during the steps (on lavapipe the GPU's buffers live
/// there too) against θ's bytes. (Applying an entry is queued, not waited for: see the lanes'
/// apply figures.)
#[cfg(feature = "wgpu")]
fn gpt2_small_on_wgpu() {
    let (job, batch) = gpt2_small();
    let d = job.model.layout().d();
    let gpu = block_on(engine::gpu::GpuContext::init()).expect("a wgpu adapter");
    let before = resident().map_or(0, |(rss, _)| rss);
    println!(
        "GPT-2-small shape on wgpu ({}), d = {d}, batch 4 × 32 tokens",
        gpu.adapter
    );
    let mut replica = Replica::new_gpu(job.clone(), &gpu);
    // Once, to compile the kernels, before timing; θ may not fit the adapter.
    if let Err(e) = block_on(replica.batch_loss(&batch)) {
        let why = e.to_string();
        let cause = why.rsplit("Caused by:").next().unwrap_or(&why).trim();
        println!(
            "  not measured: {}\n",
            cause.lines().next().unwrap_or(cause)
        );
        return;
    }
    // Start-up held θ₀ on the host and staged its upload: the steps' own peak is from here.
    let started = resident().map_or(0, |(rss, _)| rss);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let forward = time(1, 1, |_| {
        black_box(block_on(replica.batch_loss(&batch)).unwrap());
    });
    let step = time(1, 1, |i| {
        black_box(block_on(replica.propose(PeerId(0), Counter(i as u64), &batch)).unwrap());
    });
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    println!(
        "  forward pass                        {:>9.0} ms",
        ms(forward)
    );
    println!("  ZO step (propose: 2 perturbed fwd)  {:>9.0} ms", ms(step));
    if let Some((_, peak)) = resident() {
        let theta = (d * size_of::<f32>()) as f64;
        println!(
            "  resident after start-up             {:>9.0} MB   (host and lavapipe's buffers; θ is {:.0} MB)",
            (started - before) as f64 / 1e6,
            theta / 1e6
        );
        println!(
            "  peak resident memory in the steps   {:>9.0} MB   ({:.2}× θ)",
            (peak - before) as f64 / 1e6,
            (peak - before) as f64 / theta
        );
    }
    println!();
}

/// One CPU replica's forward pass, ZO step and applying one log entry.
#[derive(Clone, Copy)]
struct StepTimes {
    forward: Duration,
    /// The fastest repetition's mean forward pass.
    fastest_forward: Duration,
    step: Duration,
    apply: Duration,
}

/// Times `replica`'s forward pass, step and apply on `batch` (`reps` runs of `iters` each).
fn step_times(
    replica: &mut Replica,
    batch: &engine::Split,
    reps: usize,
    iters: usize,
) -> StepTimes {
    let (forward, fastest_forward) = median_and_fastest(reps, iters, |_| {
        black_box(block_on(replica.batch_loss(batch)).unwrap());
    });
    let step = time(reps, iters, |i| {
        black_box(block_on(replica.propose(PeerId(0), Counter(i as u64), batch)).unwrap());
    });
    let apply = time(reps, iters, |i| {
        replica.apply(&[LogEntry {
            peer: PeerId(1),
            counter: Counter(i as u64),
            byte: 0x21,
        }]);
    });
    StepTimes {
        forward,
        fastest_forward,
        step,
        apply,
    }
}

/// PyTorch's figures for the model `args` describe beside `ours`: forward throughput (against
/// `forward_goal` where there is one), and the step (ours with the apply, as MeZO's includes
/// its update; against twice PyTorch's where there are goals).
fn beside_torch(args: &[&str], ours: &StepTimes, forward_goal: Option<f64>) {
    let Some(torch) = torch_zo_seconds(args) else {
        println!("  (no PyTorch figures: python3 cannot import torch here)");
        return;
    };
    // The goals are the GPT-2 shape's and the 1 M MLP's; the presets are shown as they are.
    let goal = |text: String| forward_goal.map_or(String::new(), |_| text);
    println!(
        "  PyTorch (same cores): forward {:.2} ms, MeZO step {:.2} ms; forward throughput \
         ours/PyTorch {:.2}{}, step {:.2}× PyTorch's{}",
        torch.forward * 1e3,
        torch.step * 1e3,
        torch.forward / ours.forward.as_secs_f64(),
        goal(format!(" (goal ≥ {})", forward_goal.unwrap_or_default())),
        torch.step / (ours.step + ours.apply).as_secs_f64(),
        goal(" (goal ≥ 2)".to_string()),
    );
    println!(
        "  the fastest repetitions' forward passes: ours {:.2} ms, PyTorch {:.2} ms, throughput \
         ours/PyTorch {:.2}",
        ours.fastest_forward.as_secs_f64() * 1e3,
        torch.fastest_forward * 1e3,
        torch.fastest_forward / ours.fastest_forward.as_secs_f64(),
    );
}

/// What `zo_torch.py` measured, in seconds: the median forward pass and step, and the fastest
/// repetition's mean forward pass.
struct TorchFigures {
    forward: f64,
    step: f64,
    fastest_forward: f64,
}

/// PyTorch's forward pass and MeZO-style step on the model `args` describe
/// (`tests/reference/zo_torch.py`), in seconds, or `None` where python3 cannot import torch.
fn torch_zo_seconds(args: &[&str]) -> Option<TorchFigures> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/zo_torch.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = text
        .lines()
        .last()?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let &[forward, step, fastest_forward] = figures.as_slice() else {
        return None;
    };
    Some(TorchFigures {
        forward,
        step,
        fastest_forward,
    })
}

/// Parameters × entries per second when applying batches of 1, 16 and 256 entries.
/// Log entries one CPU peer applies per second on the GPT-2-small shape (12 layers, width
/// 768, 50 257 tokens; the base from the seed), when the job trains every parameter and when
/// it trains LoRA rank 8 on the attention products only (`[train]`).
fn trained_part_figures() {
    println!("\napplying the log on the GPT-2-small shape (CPU), entries per second");
    let job = |train: &str| {
        let toml = format!(
            "[job]\nname = \"bench-gpt2-small\"\n[model]\nkind = \"transformer\"\n\
             layers = 12\nwidth = 768\nheads = 12\ncontext = 1024\n[task]\nfeatures = 64\n\
             classes = 50257\ndataset = \"tales\"\n{train}"
        );
        Arc::new(Job::from_toml(&toml).unwrap())
    };
    let mut full_rate = None;
    for (name, train, entries) in [
        ("all parameters", "", 4usize),
        (
            "LoRA rank 8 (attn.c_attn, attn.c_proj)",
            "[train]\nparameters = \"lora\"\nrank = 8\n",
            256,
        ),
    ] {
        let job = job(train);
        let mut replica = Replica::new(job.clone(), cpu_device());
        let log: Vec<LogEntry> = (0..entries as u64)
            .map(|i| LogEntry {
                peer: PeerId(2),
                counter: Counter(i),
                byte: 0x21,
            })
            .collect();
        let start = Instant::now();
        replica.apply(&log);
        let rate = entries as f64 / start.elapsed().as_secs_f64();
        let versus = full_rate.map_or(String::new(), |full: f64| {
            format!("   {:.0}x all parameters (goal ≥ 10 000/s)", rate / full)
        });
        println!(
            "  {name:<40} d = {:>11}: {rate:>9.0} entries/s{versus}",
            job.model.layout().d()
        );
        full_rate.get_or_insert(rate);
    }
}

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
