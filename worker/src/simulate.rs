//! `onebyte simulate`: a swarm in one process.

use crate::data::{BackendArg, load_data, read_data_file};
use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use engine::{DataSource, Dataset, Exchange, Job, Replica, Simulation, block_on, cpu_device};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Number of simulated peers, each with its own replica and data shard.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Data: spirals, moons, circles, or a CSV file (numeric features, label in the last column);
    /// for a char LM job: tales, recipes, reviews, or a .txt file; for a prompt classifier:
    /// reviews, or a CSV of `text,label`. Default: the job's dataset (spirals without a job).
    #[arg(long)]
    dataset: Option<String>,
    /// Total contributions to log before stopping.
    #[arg(long, default_value_t = 16_000)]
    contributions: u64,
    /// Write the trained weights here as a safetensors checkpoint (a job's `init`).
    #[arg(long, value_name = "FILE")]
    save_checkpoint: Option<std::path::PathBuf>,
    /// Seed of the dataset and of each peer's batch draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Job file (TOML); the built-in spirals demo job when absent.
    #[arg(long)]
    job: Option<PathBuf>,
    /// What peers send: the protocol's one byte, or the raw f32 estimate for comparison.
    #[arg(long, value_enum, default_value_t = ExchangeArg::Byte)]
    exchange: ExchangeArg,
    /// Where the peers' weights and forward passes live: burn's CPU backend, or wgpu (θ on the
    /// GPU, updated by onebyte's WGSL kernels).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExchangeArg {
    Byte,
    F32,
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    accuracy: f32,
    test_loss: f32,
    version: u64,
    peers: usize,
    hashes: Vec<String>,
    bytes_exchanged: u64,
    uplink_bytes: u64,
    downlink_bytes: u64,
    fp32_allreduce_bytes: u64,
}

/// With no job file: the built-in demo job, its MLP sized to a CSV's features and classes (and
/// saying so), or as it is for the built-in point sets.
fn job_for_data(dataset: &str, seed: u64) -> Result<(Job, Dataset)> {
    let DataSource::Csv(path) = dataset.parse::<DataSource>()? else {
        let demo = Job::demo();
        let data = load_data(dataset, &demo, seed)?;
        return Ok((demo, data));
    };
    let text = read_data_file(&path)?;
    let data =
        engine::data::load_csv(&path, &text, seed).with_context(|| format!("data `{path}`"))?;
    let job = Job::demo_sized(data.features(), data.classes)?;
    eprintln!(
        "no --job given: the demo's MLP sized to {path} ({} features, {} classes)",
        data.features(),
        data.classes
    );
    Ok((job, data))
}

pub fn run(args: Args) -> Result<()> {
    if args.peers == 0 {
        bail!("--peers must be at least 1");
    }
    let (job, data) = match &args.job {
        Some(path) => {
            let job = Job::from_file(path)?;
            let dataset = args.dataset.as_ref().unwrap_or(&job.config.task.dataset);
            let data = load_data(dataset, &job, args.seed)?;
            (job, data)
        }
        None => job_for_data(args.dataset.as_deref().unwrap_or("spirals"), args.seed)?,
    };
    let job = Arc::new(job);
    let exchange = match args.exchange {
        ExchangeArg::Byte => Exchange::Byte,
        ExchangeArg::F32 => Exchange::RawF32,
    };
    let replicas: Vec<Replica> = match args.backend {
        BackendArg::Auto => bail!(
            "--backend auto measures a peer against a live swarm (`onebyte join`); \
             simulate takes cpu or wgpu"
        ),
        BackendArg::Cpu => (0..args.peers)
            .map(|_| Replica::new(job.clone(), cpu_device()))
            .collect(),
        #[cfg(not(feature = "wgpu"))]
        BackendArg::Wgpu => {
            bail!("this onebyte was built without wgpu; rebuild it with `--features wgpu`")
        }
        #[cfg(feature = "wgpu")]
        BackendArg::Wgpu => {
            let gpu = block_on(engine::gpu::GpuContext::init())?;
            eprintln!("wgpu adapter: {}", gpu.adapter);
            (0..args.peers)
                .map(|_| Replica::new_gpu(job.clone(), &gpu))
                .collect()
        }
    };
    let mut sim = Simulation::with_replicas(job.clone(), &data, replicas, args.seed, exchange);

    let bar = ProgressBar::new(args.contributions);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} contributions  {msg}",
        )
        .expect("valid template"),
    );
    while sim.version().0 < args.contributions {
        block_on(sim.round())?;
        bar.set_position(sim.version().0.min(args.contributions));
        if let Some(loss) = sim.last_loss() {
            bar.set_message(format!("loss {loss:.4}"));
        }
    }
    bar.finish_and_clear();

    let held_out = data
        .test
        .held_out_slice(job.model.layout().d(), engine::HELD_OUT_VALUES);
    let eval = block_on(sim.evaluate(&held_out))?;
    let hashes: Vec<String> = block_on(sim.hashes())?.iter().map(|h| h.to_hex()).collect();
    let traffic = sim.traffic();
    let exchanged = traffic.uplink + traffic.downlink;
    println!(
        "{} peers, {} contributions on {} (d = {})",
        args.peers,
        sim.version(),
        data.name,
        job.model.layout().d()
    );
    println!(
        "test accuracy {:.2} %, test loss {:.4} (on {} of {} held-out rows)",
        eval.accuracy * 100.0,
        eval.loss,
        held_out.len(),
        data.test.len()
    );
    if job.model.is_language_model() {
        println!(
            "held-out bits per {} {:.3}",
            job.token_unit(),
            eval.loss / std::f32::consts::LN_2
        );
    }
    if let Some(path) = &args.save_checkpoint {
        let bytes = block_on(sim.replica(0).snapshot())?;
        std::fs::write(path, bytes)
            .with_context(|| format!("could not write the checkpoint {}", path.display()))?;
        println!("checkpoint written to {}", path.display());
    }
    let all_equal = hashes.windows(2).all(|w| w[0] == w[1]);
    println!(
        "replica hashes ({}):",
        if all_equal { "all equal" } else { "DIVERGED" }
    );
    for (i, h) in hashes.iter().enumerate() {
        println!("  peer {i}: {h}");
    }
    println!(
        "bytes exchanged {} (up {}, down {}); an fp32 all-reduce of the same steps: {} ({:.0}x more)",
        exchanged,
        traffic.uplink,
        traffic.downlink,
        traffic.fp32_allreduce,
        traffic.fp32_allreduce as f64 / exchanged.max(1) as f64
    );
    if args.json {
        let report = Report {
            accuracy: eval.accuracy,
            test_loss: eval.loss,
            version: sim.version().0,
            peers: args.peers,
            hashes,
            bytes_exchanged: exchanged,
            uplink_bytes: traffic.uplink,
            downlink_bytes: traffic.downlink,
            fp32_allreduce_bytes: traffic.fp32_allreduce,
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    if !all_equal {
        bail!("replicas diverged: this is a bug in the engine");
    }
    Ok(())
}
