//! `onebyte pretrain`: first-order training (backpropagation, AdamW) of a job's model on this
//! machine, written as the checkpoint a job's `init` reads: the pre-trained model a swarm then
//! fine-tunes with one byte per step.

use crate::data::{BackendArg, load_data};
use anyhow::{Context as _, Result, bail};
use engine::pretrain::{FirstOrder, Schedule};
use engine::{Job, Replica, Snapshot, block_on, cpu_device};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::Version;
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Job file (TOML): its model, its data and (without --init) its starting weights.
    #[arg(long)]
    job: PathBuf,
    /// Data to train on (builtin:NAME, a .txt or a .csv); the job's `task.dataset` when absent.
    #[arg(long)]
    data: Option<String>,
    /// Start from this checkpoint (safetensors) instead of the job's own starting weights.
    #[arg(long, value_name = "CKPT")]
    init: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1_000)]
    steps: u64,
    /// Where to write the trained weights (safetensors; a transformer as Hugging Face's GPT-2,
    /// with the job's tokenizer.json beside it). Written whole and then renamed into place: an
    /// existing file is replaced only by a complete one.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Peak learning rate (AdamW), reached after the warm-up and decayed to a tenth by the last
    /// step along a cosine.
    #[arg(long, default_value_t = 3e-3)]
    learning_rate: f64,
    /// Steps of linear warm-up; a tenth of --steps (at most 100) when absent.
    #[arg(long)]
    warmup: Option<u64>,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Rows per step (each a window of the job's context for a language model).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Held-out loss every this many steps.
    #[arg(long, default_value_t = 200)]
    eval_every: u64,
    /// Seed of the data and of the batch draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where θ and the passes live: burn's CPU backend, or its wgpu runtime (a GPU).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Print one JSON object with the final figures as the last line of standard output.
    #[arg(long)]
    json: bool,
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    steps: u64,
    interrupted: bool,
    seconds: f64,
    /// A language model's tokens per second; a classifier's examples per second.
    tokens_per_s: f64,
    held_out_loss_before: f32,
    held_out_loss: f32,
    /// Held-out accuracy by the swarm's own evaluation (the next token after each window, for a
    /// language model).
    held_out_accuracy: f32,
    out: String,
}

/// Held-out rows the loss is measured on.
const HELD_OUT_ROWS: usize = 512;

pub fn run(args: Args) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(args.learning_rate.is_finite() && args.learning_rate > 0.0) {
        bail!("--learning-rate must be a number above 0");
    }
    let job = Arc::new(load_job(&args.job, args.init.is_some())?);
    if job.model.plan().freezes() {
        bail!(
            "the job `{}` trains part of its model ([train] parameters): onebyte pretrain \
             trains whole models, so pre-train the base with a job without a [train] section",
            job.config.job.name
        );
    }
    let out = Output::prepare(&args.out, &job)?;
    let theta = match &args.init {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("could not read --init {}", path.display()))?;
            job.read_checkpoint(&bytes).with_context(|| {
                format!(
                    "--init {} does not fit the job `{}`'s model",
                    path.display(),
                    job.config.job.name
                )
            })?
        }
        None => job.initial_weights(),
    };
    let dataset = args
        .data
        .clone()
        .unwrap_or_else(|| job.config.task.dataset.clone());
    let data = load_data(&dataset, &job, args.seed)?;
    let held_out = data.test.rows(0..data.test.len().min(HELD_OUT_ROWS));
    let schedule = Schedule {
        peak: args.learning_rate,
        warmup: args.warmup.unwrap_or((args.steps / 10).min(100)),
        steps: args.steps,
    };
    let device = match args.backend {
        BackendArg::Auto => bail!("pretrain takes --backend cpu or wgpu"),
        BackendArg::Cpu => cpu_device(),
        #[cfg(not(feature = "wgpu"))]
        BackendArg::Wgpu => {
            bail!("this onebyte was built without wgpu; rebuild it with `--features wgpu`")
        }
        #[cfg(feature = "wgpu")]
        BackendArg::Wgpu => {
            let gpu = block_on(engine::gpu::GpuContext::init())?;
            eprintln!("wgpu adapter: {}", gpu.adapter);
            gpu.device
        }
    };
    let mut trainer = FirstOrder::new(
        job.clone(),
        theta,
        &device,
        schedule,
        args.weight_decay,
        args.seed,
    );
    let unit = LossUnit::of(&job);
    let before = trainer.loss_on(&held_out)?;
    eprintln!(
        "{} (d = {}) on {}: {} training rows, {} steps of {}; held-out loss {}",
        job.config.job.name,
        job.model.layout().d(),
        data.name,
        data.train.len(),
        args.steps,
        args.batch_size,
        unit.show(before)
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(interrupted.clone());
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  (left {eta})",
        )
        .expect("valid template"),
    );
    let tokens_per_step = (args.batch_size * trainer.tokens_per_row()) as f64;
    // What a step's rows are counted as: a language model's tokens, a classifier's examples.
    let counted = if job.model.is_language_model() {
        "tokens"
    } else {
        "examples"
    };
    let began = Instant::now();
    let mut smoothed: Option<f32> = None;
    while trainer.steps_taken() < args.steps {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let loss = trainer.step(&data.train, args.batch_size)?;
        let s = smoothed.map_or(loss, |s| 0.95 * s + 0.05 * loss);
        smoothed = Some(s);
        let done = trainer.steps_taken();
        let per_s = tokens_per_step * done as f64 / began.elapsed().as_secs_f64();
        bar.set_position(done);
        bar.set_message(format!("loss {s:.3}  {per_s:.0} {counted}/s"));
        if done.is_multiple_of(args.eval_every) && done < args.steps {
            let held = trainer.loss_on(&held_out)?;
            let line = format!("step {done}: held-out loss {}", unit.show(held));
            // A hidden bar (no terminal) prints nothing, not even its lines.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish_and_clear();
    let seconds = began.elapsed().as_secs_f64();
    let steps = trainer.steps_taken();
    let was_interrupted = steps < args.steps;
    if was_interrupted {
        eprintln!(
            "interrupted at step {steps} of {}: writing the checkpoint it has",
            args.steps
        );
    }

    let after = trainer.loss_on(&held_out)?;
    let theta = trainer.weights();
    let snapshot = Snapshot {
        job: job.id,
        version: Version(0),
        theta: theta.clone(),
    };
    let replica = Replica::from_snapshot(
        job.clone(),
        cpu_device(),
        &snapshot.to_bytes(job.model.layout()),
    )?;
    let accuracy = block_on(replica.evaluate(&held_out))?.accuracy;
    out.write(&job.checkpoint_bytes(theta))?;
    let tokens_per_s = tokens_per_step * steps as f64 / seconds.max(1e-9);
    println!(
        "{steps} steps in {seconds:.1} s ({tokens_per_s:.0} {counted}/s); held-out loss {} (was {})",
        unit.show(after),
        unit.show(before)
    );
    println!("checkpoint written to {}", args.out.display());
    if args.json {
        let report = Report {
            steps,
            interrupted: was_interrupted,
            seconds,
            tokens_per_s,
            held_out_loss_before: before,
            held_out_loss: after,
            held_out_accuracy: accuracy,
            out: args.out.display().to_string(),
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// The job file, with its tokenizer and (unless `--init` replaces them) its starting weights.
fn load_job(path: &Path, init_given: bool) -> Result<Job> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read --job {}", path.display()))?;
    let mut job = Job::from_toml(&text).with_context(|| format!("--job {}", path.display()))?;
    if init_given {
        // The job may name the very checkpoint this run writes, not there yet.
        job.config.job.init = None;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    job.with_init_from(dir)
        .with_context(|| format!("--job {}", path.display()))
}

/// Where the checkpoint goes: checked before any training, so a mistake costs no time.
struct Output {
    out: PathBuf,
    /// The file written first and renamed over `out` once complete.
    partial: PathBuf,
    /// The job's `tokenizer.json`, to be put beside `out` (when the job has one).
    tokenizer: Option<(PathBuf, Vec<u8>)>,
}

impl Output {
    fn prepare(out: &Path, job: &Job) -> Result<Output> {
        let dir = match out.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if out.is_dir() {
            bail!(
                "--out {} is a folder; name the file to write",
                out.display()
            );
        }
        let name = out
            .file_name()
            .with_context(|| format!("--out {} names no file", out.display()))?;
        let partial = dir.join(format!(".{}.partial", name.to_string_lossy()));
        std::fs::File::create(&partial)
            .and_then(|mut f| f.write_all(b""))
            .with_context(|| {
                format!(
                    "cannot write --out {}: creating a file in {} failed",
                    out.display(),
                    dir.display()
                )
            })?;
        let tokenizer = match job.tokenizer_json() {
            None => None,
            Some(json) => {
                let path = dir.join("tokenizer.json");
                if let Ok(there) = std::fs::read(&path)
                    && there != json
                {
                    let _ = std::fs::remove_file(&partial);
                    bail!(
                        "{} holds another tokenizer than the job's; --out needs a folder where \
                         the job's tokenizer.json can go beside the checkpoint",
                        path.display()
                    );
                }
                Some((path, json.to_vec()))
            }
        };
        Ok(Output {
            out: out.to_path_buf(),
            partial,
            tokenizer,
        })
    }

    /// Writes `bytes` whole, then renames them over `out`; puts the tokenizer beside it.
    fn write(mut self, bytes: &[u8]) -> Result<()> {
        let written = std::fs::write(&self.partial, bytes)
            .and_then(|()| std::fs::rename(&self.partial, &self.out));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&self.partial);
            return Err(e)
                .with_context(|| format!("could not write the checkpoint {}", self.out.display()));
        }
        if let Some((path, json)) = self.tokenizer.take() {
            std::fs::write(&path, json)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Gone once renamed; left behind only by an error, which removes it here.
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// How a loss reads: bits per token (or character) for a language model, nats otherwise.
struct LossUnit(Option<&'static str>);

impl LossUnit {
    fn of(job: &Job) -> LossUnit {
        LossUnit(job.model.is_language_model().then(|| job.token_unit()))
    }

    fn show(&self, loss: f32) -> String {
        match self.0 {
            Some(unit) => format!("{:.3} bits per {unit}", loss / std::f32::consts::LN_2),
            None => format!("{loss:.4}"),
        }
    }
}

/// Sets `flag` on the first Ctrl-C, so the loop ends at a step boundary and writes what it has.
fn watch_ctrl_c(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime
            && runtime.block_on(tokio::signal::ctrl_c()).is_ok()
        {
            flag.store(true, Ordering::Relaxed);
        }
    });
}
