//! `onebyte export`: a job's trained weights, from a relay or from a snapshot file, as files
//! other tools load (`engine::export`): a Hugging Face GPT-2 folder, a LoRA job's PEFT
//! adapters, or the project's checkpoint for other models.

use crate::join::link::{Relay, with_retries};
use anyhow::{Context as _, Result, bail};
use engine::snapshot::SnapshotError;
use engine::{Job, Snapshot};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The relay whose model to export (`http(s)://host:port`): its job, its newest snapshot,
    /// and its frozen base and tokenizer where the job has them.
    #[arg(long, required_unless_present = "job", conflicts_with_all = ["job", "snapshot"])]
    relay: Option<String>,
    /// A root certificate (PEM) to trust for an https relay, beside the web's roots.
    #[arg(long, value_name = "PEM", requires = "relay")]
    ca_cert: Option<PathBuf>,
    /// With --snapshot instead of --relay: the job file (its base and tokenizer are read from
    /// the files it names).
    #[arg(long, requires = "snapshot")]
    job: Option<PathBuf>,
    /// A snapshot of that job (what a relay serves at /api/snapshot).
    #[arg(long, requires = "job")]
    snapshot: Option<PathBuf>,
    /// The folder to write into (made if missing). Each file is written whole and then renamed
    /// into place, so an existing one is replaced only by a complete one.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// For a LoRA job: the adapters merged into the base, as a whole GPT-2 checkpoint, instead
    /// of the adapters alone in PEFT's form.
    #[arg(long)]
    merge: bool,
    /// How long to keep retrying an unreachable relay, in seconds.
    #[arg(long, default_value_t = 30)]
    retry_for: u64,
}

pub fn run(args: Args) -> Result<()> {
    let misfit = |from: &str, job: &Job| {
        format!(
            "the snapshot from {from} is not of the job `{}`",
            job.config.job.name
        )
    };
    let (job, snapshot, from) = match (&args.relay, &args.job, &args.snapshot) {
        (Some(url), _, _) => {
            let from = format!("the relay {url}");
            let (job, snapshot) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(from_relay(url, args.ca_cert.as_deref(), args.retry_for))?;
            let snapshot = snapshot.with_context(|| misfit(&from, &job))?;
            (job, snapshot, from)
        }
        (None, Some(job_path), Some(snapshot_path)) => {
            let job = Job::from_file(job_path)
                .with_context(|| format!("--job {}", job_path.display()))?;
            let bytes = std::fs::read(snapshot_path).with_context(|| {
                format!("could not read --snapshot {}", snapshot_path.display())
            })?;
            let from = snapshot_path.display().to_string();
            let snapshot = Snapshot::from_bytes(&bytes, job.id, job.model.layout())
                .with_context(|| misfit(&from, &job))?;
            (job, snapshot, from)
        }
        _ => bail!("name a --relay, or a --job with its --snapshot"),
    };
    if args.merge && !job.model.plan().freezes() {
        eprintln!("--merge: the job trains its whole model; writing it as it is");
    }
    let files = engine::export::export(&job, &snapshot.theta, args.merge);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("could not make the folder --out {}", args.out.display()))?;
    for file in &files {
        write_whole(&args.out.join(file.name), &file.bytes)?;
    }
    println!(
        "job `{}` at version {} (weights {}) from {from}:",
        job.config.job.name,
        snapshot.version.0,
        snapshot.hash().to_hex()
    );
    for file in &files {
        println!(
            "  {} ({} bytes)",
            args.out.join(file.name).display(),
            file.bytes.len()
        );
    }
    Ok(())
}

/// The job, with its base and tokenizer, and the newest snapshot (decoded as it arrives, or why
/// it does not fit the job), from the relay at `url`.
async fn from_relay(
    url: &str,
    ca_cert: Option<&Path>,
    retry_for: u64,
) -> Result<(Job, Result<Snapshot, SnapshotError>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (relay, _) = Relay::new(url, ca_cert)?;
    let limit = Duration::from_secs(retry_for);
    let toml = with_retries(limit, || relay.text("/api/job")).await?;
    let mut job = Job::from_toml(&toml).context("the relay's job is not valid")?;
    if job.needs_base() {
        let bytes = with_retries(limit, || relay.bytes("/api/base")).await?;
        job = job
            .with_checkpoint("the relay's /api/base", &bytes)
            .context("the relay's frozen base is not this job's")?;
    }
    if job.needs_tokenizer() {
        let json = with_retries(limit, || relay.text("/api/tokenizer")).await?;
        job = job
            .with_tokenizer_json(json.into_bytes())
            .context("the relay's tokenizer.json is not usable")?;
    }
    let snapshot = with_retries(limit, || relay.snapshot_of(&job)).await?;
    Ok((job, snapshot))
}

/// Writes `bytes` to a file beside `path`, then renames it over `path`.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
        .with_context(|| format!("could not write {}", path.display()))
}
