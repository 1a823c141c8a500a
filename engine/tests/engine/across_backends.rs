//! The CPU reference and the GPU path (our WGSL kernels on burn's wgpu device; lavapipe in CI)
//! hold the same bits. A missing adapter fails these tests: they never skip.

use crate::common;

use common::synthetic_log;
use engine::direction::perturb_part_into;
use engine::gpu::{GpuContext, GpuWeights};
use engine::job::JobError;
use engine::weights::PerturbedMade;
use engine::{Builtin, Exchange, Job, Replica, Simulation, block_on, cpu_device};
use protocol::{Counter, DirectionSeed, PeerId};
use std::sync::{Arc, OnceLock};

fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = block_on(GpuContext::init()).expect(
            "no wgpu adapter: install Mesa's lavapipe (Debian: mesa-vulkan-drivers); \
             `cargo xtask test` does this when run as root",
        );
        eprintln!("GPU adapter: {}", gpu.adapter);
        gpu
    })
}

#[test]
fn replicas_are_bit_identical_across_backends() {
    let job = Arc::new(Job::demo());
    let log = synthetic_log(10_000, 5);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job.clone(), gpu());
    assert!(gpu.on_gpu());
    assert_eq!(
        block_on(cpu.weight_hash()).unwrap(),
        block_on(gpu.weight_hash()).unwrap(),
        "initial weights differ"
    );
    // The GPU applies uneven batches (one dispatch per ≤ 256 entries); the CPU one at a time.
    let mut sizes = [1usize, 300, 7, 256, 129, 64].into_iter().cycle();
    let mut at = 0;
    let mut compared = 0;
    while at < log.len() {
        let mark = (at / 500 + 1) * 500;
        let end = (at + sizes.next().unwrap()).min(mark);
        gpu.apply(&log[at..end]);
        for e in &log[at..end] {
            cpu.apply(std::slice::from_ref(e));
        }
        at = end;
        if at % 500 == 0 {
            assert_eq!(cpu.version(), gpu.version());
            assert_eq!(
                block_on(cpu.weight_hash()).unwrap(),
                block_on(gpu.weight_hash()).unwrap(),
                "backends differ at version {at}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 20);
}

#[test]
fn transformer_replicas_are_bit_identical_across_backends() {
    let job = Arc::new(Job::tiny_lm());
    let data = engine::text::corpus_dataset(engine::Corpus::Tales, 32, 3);
    let batch = data.train.shard(0, 64);
    let log = synthetic_log(600, 21);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job, gpu());
    for (at, chunk) in log.chunks(200).enumerate() {
        cpu.apply(chunk);
        gpu.apply(chunk);
        assert_eq!(
            block_on(cpu.weight_hash()).unwrap(),
            block_on(gpu.weight_hash()).unwrap(),
            "backends differ at version {}",
            (at + 1) * 200
        );
    }
    // The forward passes agree too (to rounding), so both backends contribute the same signal.
    let a = block_on(cpu.propose(PeerId(5), Counter(7), &batch)).unwrap();
    let b = block_on(gpu.propose(PeerId(5), Counter(7), &batch)).unwrap();
    assert!(
        (a.loss - b.loss).abs() <= 1e-4 * a.loss.abs().max(1.0),
        "loss {} vs {}",
        a.loss,
        b.loss
    );
}

#[test]
fn gpu_replica_restored_from_a_cpu_snapshot_continues_identically() {
    let job = Arc::new(Job::demo());
    let log = synthetic_log(1_000, 9);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    cpu.apply(&log[..400]);
    let snapshot = block_on(cpu.snapshot()).unwrap();
    let mut gpu = Replica::from_snapshot_gpu(job, gpu(), &snapshot).unwrap();
    cpu.apply(&log[400..]);
    gpu.apply(&log[400..]);
    assert_eq!(
        block_on(cpu.weight_hash()).unwrap(),
        block_on(gpu.weight_hash()).unwrap()
    );
}

/// The same proposal computed on the CPU and on wgpu: equal losses within rounding, and `g`
/// within what dividing a loss difference by 2ε makes of that rounding.
fn assert_proposals_agree(a: &engine::Proposal, b: &engine::Proposal) {
    assert!(
        (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs().max(1.0),
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    assert!(
        (a.g - b.g).abs() <= 2e-2 + 1e-2 * a.g.abs(),
        "g {} vs {}",
        a.g,
        b.g
    );
}

#[test]
fn perturbed_losses_match_across_backends() {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(512, 64, 2);
    let log = synthetic_log(50, 3);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job, gpu());
    cpu.apply(&log);
    gpu.apply(&log);
    let before = block_on(gpu.weight_hash()).unwrap();
    for counter in 0..20 {
        let batch = data.train.shard(counter as usize % 8, 8);
        let a = block_on(cpu.propose(PeerId(4), Counter(counter), &batch)).unwrap();
        let b = block_on(gpu.propose(PeerId(4), Counter(counter), &batch)).unwrap();
        assert_proposals_agree(&a, &b);
    }
    assert_eq!(
        block_on(gpu.weight_hash()).unwrap(),
        before,
        "perturbing changed θ on the GPU"
    );
}

#[test]
fn spirals_converges_on_wgpu() {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(4_000, 1_000, 1);
    let replicas = (0..8)
        .map(|_| Replica::new_gpu(job.clone(), gpu()))
        .collect();
    let mut sim = Simulation::with_replicas(job, &data, replicas, 1, Exchange::Byte);
    while sim.version().0 < 16_000 {
        block_on(sim.round()).unwrap();
    }
    let accuracy = block_on(sim.evaluate(&data.test)).unwrap().accuracy;
    assert!(accuracy >= 0.97, "test accuracy {accuracy}");
    let hashes = block_on(sim.hashes()).unwrap();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "GPU replicas diverged"
    );
}

#[test]
fn lanes_match_single_steps_on_wgpu() {
    let job = Arc::new(Job::demo());
    let log = synthetic_log(300, 11);
    let mut lanes = Replica::new_gpu(job.clone(), gpu());
    let mut single = Replica::new_gpu(job.clone(), gpu());
    let mut cpu = Replica::new(job, cpu_device());
    for r in [&mut lanes, &mut single, &mut cpu] {
        r.apply(&log);
    }
    let entries = common::assert_lanes_match_single_steps(&mut lanes, &mut single);
    // The lanes' contributions, applied on both backends, keep the replicas bit-identical.
    lanes.apply(&entries);
    cpu.apply(&entries);
    assert_eq!(
        block_on(lanes.weight_hash()).unwrap(),
        block_on(cpu.weight_hash()).unwrap()
    );
}

#[test]
fn gpu_step_reads_back_only_losses() {
    let job = Arc::new(Job::demo());
    let data = Builtin::Spirals.generate(512, 64, 2);
    let batch = data.train.shard(0, 8);
    let mut gpu = Replica::new_gpu(job, gpu());
    assert_eq!(gpu.bytes_read_back(), 0);
    gpu.apply(&synthetic_log(500, 4));
    assert_eq!(
        gpu.bytes_read_back(),
        0,
        "applying the log read something back"
    );
    for k in [1u64, 16] {
        let before = gpu.bytes_read_back();
        let counters: Vec<Counter> = (0..k).map(|i| Counter(1_000 * k + i)).collect();
        let proposals = block_on(gpu.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
        assert_eq!(proposals.len() as u64, k);
        assert_eq!(
            gpu.bytes_read_back() - before,
            8 * k,
            "a step of {k} lanes must read back exactly its 2·{k} f32 losses"
        );
    }
}

#[test]
fn a_prompt_classifier_perturbs_alike_on_both_backends_with_lanes() {
    // The shipped sentiment job over random weights: its classes are two label words' logits.
    let job = Job::from_toml(include_str!("../../../deploy/jobs/reviews-sentiment.toml")).unwrap();
    let mut config = job.config.clone();
    config.job.init = None;
    let job = Arc::new(Job::new(config).unwrap());
    let data = engine::data::for_job(&job, &"reviews".parse().unwrap(), None, 1).unwrap();
    let batch = data.train.rows(0..16);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job, gpu());
    let counters: Vec<Counter> = (0..4).map(Counter).collect();
    let a = block_on(cpu.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
    let b = block_on(gpu.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
    assert_eq!(a.len(), 4);
    for (a, b) in a.iter().zip(&b) {
        assert_proposals_agree(a, b);
    }
}

#[test]
fn adapter_replicas_are_bit_identical_across_backends_with_lanes() {
    // The tiny transformer frozen, LoRA on every linear layer of its blocks; then BitFit; then
    // BitFit on a base read from a checkpoint (held once on the CPU, copied to the GPU).
    for (train, from_checkpoint) in [
        (
            "parameters = \"lora\"\ntargets = [\"attn.c_attn\", \"attn.c_proj\", \"mlp.c_fc\", \
             \"mlp.c_proj\"]",
            false,
        ),
        ("parameters = \"bitfit\"", false),
        ("parameters = \"bitfit\"", true),
    ] {
        let mut config = Job::tiny_lm().config;
        config.train = Some(toml::from_str(train).unwrap());
        let job = if from_checkpoint {
            let base = Job::tiny_lm();
            let bytes = base.checkpoint_bytes(base.initial_weights());
            config.job.init = Some("base.safetensors".into());
            let unpinned = Job::new(config.clone()).unwrap();
            let Err(JobError::BaseUnpinned { actual, .. }) =
                unpinned.with_checkpoint("base.safetensors", &bytes)
            else {
                panic!("an unpinned base is refused, naming its digest")
            };
            config.train.as_mut().unwrap().base_sha256 = Some(actual);
            let job = Job::new(config).unwrap();
            job.with_checkpoint("base.safetensors", &bytes).unwrap()
        } else {
            Job::new(config).unwrap()
        };
        let job = Arc::new(job);
        let data = engine::text::corpus_dataset(engine::Corpus::Tales, 32, 3);
        let batch = data.train.rows(0..16);
        let log = synthetic_log(400, 17);
        let mut cpu = Replica::new(job.clone(), cpu_device());
        let mut gpu = Replica::new_gpu(job, gpu());
        cpu.apply(&log);
        gpu.apply(&log);
        assert_eq!(
            block_on(cpu.weight_hash()).unwrap(),
            block_on(gpu.weight_hash()).unwrap(),
            "{train}"
        );
        let counters: Vec<Counter> = (0..4).map(Counter).collect();
        let a = block_on(cpu.propose_lanes(PeerId(3), &counters, &batch)).unwrap();
        let b = block_on(gpu.propose_lanes(PeerId(3), &counters, &batch)).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert_proposals_agree(a, b);
        }
    }
}

#[cfg(feature = "pretrain")]
#[test]
fn first_order_steps_on_wgpu_follow_the_cpu() {
    use engine::pretrain::{FirstOrder, Schedule};
    // The same steps on the same batches: the losses agree within rounding, and fall.
    let job = Arc::new(Job::tiny_lm());
    let data = engine::text::corpus_dataset(engine::Corpus::Tales, 32, 1);
    let schedule = Schedule {
        peak: 3e-3,
        warmup: 2,
        steps: 12,
    };
    let losses = |device: &burn::tensor::Device| -> Vec<f32> {
        let mut trainer = FirstOrder::new(
            job.clone(),
            job.initial_weights(),
            device,
            schedule,
            0.01,
            3,
        );
        (0..schedule.steps)
            .map(|_| trainer.step(&data.train, 8).unwrap())
            .collect()
    };
    let cpu = losses(&cpu_device());
    let gpu = losses(&gpu().device);
    for (step, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "step {step}: {a} vs {b}"
        );
    }
    assert!(gpu[11] < gpu[0] - 0.5, "{gpu:?}");
}

#[test]
fn a_range_of_theta_perturbed_on_the_gpu_is_the_cpu_reference_bit_for_bit() {
    // Ranges that start and end inside ChaCha blocks (512 parameters), across several, and
    // the whole of θ: what a pass reads of one tensor, or of a run of a table's rows.
    let d = 5_000;
    let theta: Vec<f32> = (0..d)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    // θ in buffers of 1 536 parameters: segments cross from one into the next.
    let weights = GpuWeights::in_chunks(&gpu().device, &theta, 1_536).unwrap();
    let lanes: Vec<(DirectionSeed, f32)> = (0..3u8)
        .map(|l| (DirectionSeed([l + 1; 32]), [1e-3, -1e-3, 0.5][l as usize]))
        .collect();
    let single = [
        (0, d),
        (1, 511),
        (511, 2),
        (700, 1_300),
        (4_999, 1),
        (1_024, 512),
    ];
    let mut cases: Vec<Vec<(usize, usize)>> = single.iter().map(|&s| vec![s]).collect();
    // Several segments at once, as the rows of a table a pass reads (out of order, too).
    cases.push(vec![(3, 10), (600, 700), (4_000, 5), (20, 1)]);
    for segments in cases {
        let total: usize = segments.iter().map(|&(_, len)| len).sum();
        let made = match segments[..] {
            [(first, len)] => weights.perturbed_range(&lanes, first, len),
            _ => weights.perturbed_segments(&lanes, &segments),
        };
        assert_eq!(made.dims(), [lanes.len(), total]);
        let made = made.into_data().try_to_vec::<f32>().unwrap();
        for (l, (seed, scale)) in lanes.iter().enumerate() {
            let mut expected = Vec::new();
            for &(first, len) in &segments {
                let mut part = vec![0.0f32; len];
                perturb_part_into(&theta[first..first + len], first, seed, *scale, &mut part);
                expected.extend(part);
            }
            let got = &made[l * total..(l + 1) * total];
            assert!(
                got.iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "segments {segments:?} lane {l}"
            );
        }
    }
}

#[test]
fn a_table_read_in_rows_on_the_gpu_gives_the_cpu_losses() {
    // A vocabulary far larger than the batch reads: the embedding's rows (and the output's
    // parts) are made alone on both backends.
    let job = Arc::new(
        Job::from_toml(
            "[job]\nname = \"wide-vocabulary\"\n[model]\nkind = \"transformer\"\n\
             layers = 1\nwidth = 8\nheads = 2\ncontext = 8\n[task]\nfeatures = 8\n\
             classes = 9000\ndataset = \"tales\"\n",
        )
        .unwrap(),
    );
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job.clone(), gpu());
    let log = synthetic_log(20, 5);
    cpu.apply(&log);
    gpu.apply(&log);
    let batch = engine::text::corpus_dataset(engine::Corpus::Tales, 8, 1)
        .train
        .rows(0..4);
    let counters = [Counter(7), Counter(8)];
    let before = PerturbedMade::so_far();
    let a = block_on(cpu.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
    let mid = PerturbedMade::so_far();
    let b = block_on(gpu.propose_lanes(PeerId(2), &counters, &batch)).unwrap();
    let after = PerturbedMade::so_far();
    for (a, b) in a.iter().zip(&b) {
        assert_proposals_agree(a, b);
    }
    // The GPU made no more than the host: the embedding's rows, not its whole table.
    assert!(
        after.bytes - mid.bytes <= mid.bytes - before.bytes,
        "{before:?} {mid:?} {after:?}"
    );
}

#[test]
fn a_gpu_step_makes_one_tensor_at_a_time_not_a_copy_of_theta_per_lane() {
    let job = Arc::new(Job::tiny_lm());
    let mut replica = Replica::new_gpu(job.clone(), gpu());
    replica.apply(&synthetic_log(10, 3));
    let batch = engine::text::corpus_dataset(engine::Corpus::Tales, 32, 1)
        .train
        .rows(0..8);
    let counters = [Counter(0), Counter(1), Counter(2)];
    let lanes = 2 * counters.len();
    let before = PerturbedMade::so_far();
    block_on(replica.propose_lanes(PeerId(4), &counters, &batch)).unwrap();
    let made = PerturbedMade::so_far();
    let layout = job.model.layout();
    let d = layout.d();
    let largest_tensor = layout.params().iter().map(|p| p.len()).max().unwrap();
    assert!(largest_tensor * 4 < d, "the bound below means something");
    assert!(made.bytes > before.bytes, "the kernel made the lanes");
    assert!(
        made.largest <= lanes * largest_tensor * size_of::<f32>(),
        "{made:?}"
    );
    // Each tensor once a step; the token table twice (embedding, then readout).
    let wte = layout.get("wte.weight").unwrap().len();
    assert!(
        made.bytes - before.bytes <= lanes * (d + wte) * size_of::<f32>(),
        "{made:?}"
    );
}

#[test]
fn a_gpu_replica_with_theta_in_several_buffers_matches_the_cpu() {
    // θ in buffers of 4 096 parameters (a model's own would take 2^24): updates and perturbed
    // tensors cross the buffers' boundaries.
    let mut small = gpu().clone();
    small.chunk_params = 4_096;
    let job = Arc::new(Job::tiny_lm());
    assert!(job.model.layout().d() > 20 * small.chunk_params);
    let mut cpu = Replica::new(job.clone(), cpu_device());
    let mut gpu = Replica::new_gpu(job.clone(), &small);
    let log = synthetic_log(300, 9);
    cpu.apply(&log);
    gpu.apply(&log);
    assert_eq!(
        block_on(cpu.weight_hash()).unwrap(),
        block_on(gpu.weight_hash()).unwrap()
    );
    let batch = engine::text::corpus_dataset(engine::Corpus::Tales, 32, 1)
        .train
        .rows(0..8);
    let counters: Vec<Counter> = (0..3).map(Counter).collect();
    let a = block_on(cpu.propose_lanes(PeerId(6), &counters, &batch)).unwrap();
    let b = block_on(gpu.propose_lanes(PeerId(6), &counters, &batch)).unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert_proposals_agree(a, b);
    }
    let (x, y) = (
        block_on(cpu.batch_loss(&batch)).unwrap(),
        block_on(gpu.batch_loss(&batch)).unwrap(),
    );
    assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
}
