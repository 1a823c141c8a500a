//! `onebyte join`: a peer without a browser.
//!
//! Fetches the job and the newest snapshot over HTTP, opens the relay's websocket, catches up
//! on the log, then trains: proposes contributions from its own data (at most `--window` in
//! flight), applies every batch the relay broadcasts, and reports its weight hash at every
//! hash boundary. A lost connection is retried with backoff and resumes the same peer id from
//! the replica's version; a `Resync` reloads the snapshot. That loop is `engine::driver`'s,
//! shared with the browser client: this module gives it a progress bar and the stop conditions,
//! [`link`] the sockets and the clock.

mod backend;
pub(crate) mod link;

use crate::data::{BackendArg, load_data};
use anyhow::{Context as _, Result};
use backend::Backend;
use engine::driver::{Activity, Driver, DriverConfig, Event, Host, View};
use engine::{BatchSampler, Dataset, Job, PeerState, Replica, Snapshot};
use indicatif::{ProgressBar, ProgressStyle};
use link::{Relay, TokioClock};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The relay, e.g. http://127.0.0.1:8080 (ws:// works too; a join link with ?token=… gives
    /// the token).
    #[arg(long)]
    relay: String,
    /// Local training data: builtin:spirals, builtin:moons, builtin:circles, or a CSV file
    /// (numeric features, label in the last column); for a language model job builtin:tales,
    /// builtin:recipes or a .txt file. It never leaves this machine. Default: the job's own
    /// built-in data (its `task.dataset`).
    #[arg(long)]
    data: Option<String>,
    /// Where θ and the forward passes live; `auto` measures and picks the faster.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Contributions per step, evaluated in one batched forward pass (0: measured on a GPU,
    /// 1 on the CPU).
    #[arg(long, default_value_t = 0)]
    lanes: usize,
    /// Stop once this many of this peer's contributions were accepted (and send no more).
    /// `--contributions 0` only follows the log.
    #[arg(long, value_name = "N")]
    contributions: Option<u64>,
    /// Stop once the replica has applied the log up to exactly this version. With
    /// --contributions too, stop when both hold.
    #[arg(long, value_name = "V")]
    until_version: Option<u64>,
    /// The relay's join token, if it needs one.
    #[arg(long, env = "ONEBYTE_JOIN_TOKEN", default_value = "")]
    token: String,
    /// Seed of the built-in dataset and of this peer's batch draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Contributions sent but not yet answered, at most (0: adapts to four round trips of this
    /// worker's steps, 32 to 512, at most half the job's staleness bound).
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// An extra root certificate (PEM) to trust for an https/wss relay, e.g. a self-signed one.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// Give up when the relay cannot be reached for this long (seconds).
    #[arg(long, default_value_t = 60)]
    retry_for: u64,
    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    json: bool,
    /// For testing a relay's defences: falsify each contribution. `worst` (the default) sends
    /// the largest magnitude with the sign that raises the loss (the relay should clip and
    /// quarantine this peer); `flip` sends the honest magnitude with the sign flipped (a
    /// committee job's median should outvote it).
    #[arg(long, hide = true, value_enum, num_args = 0..=1, default_missing_value = "worst")]
    adversary: Option<link::Adversary>,
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    peer: Option<u32>,
    version: u64,
    hash: String,
    accepted: u64,
    rejected: u64,
    reconnects: u64,
    /// The version of the first snapshot this peer loaded.
    started_from: u64,
    /// Websocket bytes this peer sent and received, framing included.
    bytes_sent: u64,
    bytes_received: u64,
    /// What an fp32 all-reduce of this peer's accepted contributions would have sent, and
    /// received ([`engine::driver::fp32_allreduce_bytes`]).
    fp32_allreduce_bytes: u64,
    accuracy: Option<f32>,
    test_loss: Option<f32>,
    /// For a byte-level language model: the held-out loss in bits per character.
    bits_per_char: Option<f32>,
    /// For a language model over a BPE tokenizer: the held-out loss in bits per token.
    bits_per_token: Option<f32>,
    /// Share of the time since this peer first caught up spent proposing or applying the log.
    busy_share: Option<f64>,
    /// In a private job: what this peer's contributions have cost its data.
    privacy: Option<PrivacyReport>,
}

/// The (ε, δ) a private peer spent.
#[derive(Serialize)]
struct PrivacyReport {
    epsilon: f64,
    delta: f64,
    /// Contributions released (sent), each one subsampled Gaussian mechanism.
    released: u64,
    sampling_rate: f64,
    noise_multiplier: f32,
    clip: f32,
}

impl PrivacyReport {
    fn of(state: &PeerState) -> Option<Self> {
        state.privacy.as_ref().map(|p| PrivacyReport {
            epsilon: p.accountant.epsilon(),
            delta: p.accountant.delta(),
            released: p.accountant.steps(),
            sampling_rate: p.accountant.sampling_rate(),
            noise_multiplier: p.spec.noise_multiplier,
            clip: p.spec.clip,
        })
    }
}

/// `onebyte join`'s surroundings for the driver: the stop conditions, the data, the bar.
struct Peer {
    args: Args,
    job: Arc<Job>,
    data: Dataset,
    sampler: BatchSampler,
    backend: Backend,
    /// Ctrl-C was pressed.
    interrupted: Arc<AtomicBool>,
    /// The relay's peer count, polled for the bar.
    peers_online: Arc<AtomicU64>,
    bar: ProgressBar,
    /// The share of the time busy since this peer first trained, as of the last tick.
    busy_share: Option<f64>,
}

impl Host for Peer {
    /// Every stop condition given holds (none given: run until Ctrl-C).
    fn should_leave(&self, peer: &PeerState) -> bool {
        if self.interrupted.load(Relaxed) {
            return true;
        }
        let (n, v) = (self.args.contributions, self.args.until_version);
        if n.is_none() && v.is_none() {
            return false;
        }
        n.is_none_or(|n| peer.accepted >= n) && v.is_none_or(|v| peer.replica.version().0 >= v)
    }

    /// `--contributions` leaves room for one more beside those in flight.
    fn wants_more(&self, peer: &PeerState, in_flight: usize) -> bool {
        self.args
            .contributions
            .is_none_or(|n| peer.accepted + (in_flight as u64) < n)
    }

    fn next_batch(&mut self) -> engine::Split {
        self.sampler
            .sample(&self.data.train, self.job.hyper().batch_size)
    }

    fn replica(&self, snapshot: Snapshot) -> Result<Replica, String> {
        self.backend
            .restored(&self.job, snapshot)
            .map_err(|e| format!("the relay's snapshot does not fit the job: {e:#}"))
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Reconnecting { why, after_ms } => {
                // Also logged: a hidden bar (`--json`) would leave no trace of it.
                tracing::info!(%why, after_ms, "reconnecting");
                self.bar.set_message(format!(
                    "reconnecting in {:.1} s: {why}",
                    after_ms / 1_000.0
                ))
            }
            Event::Resyncing { why } => self.bar.println(format!("resync: {why}")),
            Event::Rejected { reason, detail } => {
                tracing::debug!(?reason, %detail, "contribution rejected");
            }
            Event::Connecting { .. } | Event::Hashes(_) => {}
        }
    }

    async fn tick(&mut self, view: View<'_>) {
        let View {
            peer,
            session,
            tally,
            activity,
            now_ms,
        } = view;
        self.busy_share = tally.busy_share(now_ms);
        self.bar.set_position(match self.args.contributions {
            Some(_) => peer.accepted,
            None => peer.replica.version().0,
        });
        let doing = match activity {
            Activity::Connecting => "connecting".to_string(),
            Activity::Replaying { to } => format!("catching up to {to}"),
            Activity::Behind { versions } => {
                format!("catching up: contributions arrive {versions} versions late")
            }
            Activity::Overdue { seconds } => {
                format!("behind the log: no answer for {seconds} s")
            }
            Activity::Quarantined => {
                "quarantined by the relay: contributions rejected, following the log".to_string()
            }
            Activity::Paused | Activity::Training => format!("accepted {}", peer.accepted),
        };
        let online = self.peers_online.load(Relaxed);
        let privacy = peer.privacy.as_ref().map_or(String::new(), |p| {
            format!(
                " · privacy spent ε {:.2} (δ {:e})",
                p.accountant.epsilon(),
                p.accountant.delta()
            )
        });
        self.bar.set_message(format!(
            "version {} · {doing} · in flight {} · loss {} · peers {}{privacy}",
            peer.replica.version(),
            session.in_flight(),
            peer.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            if online == 0 {
                "-".into()
            } else {
                online.to_string()
            }
        ));
    }
}

pub fn run(args: Args) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn run_async(mut args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut relay, url_token) = Relay::new(&args.relay, args.ca_cert.as_deref())?;
    // A join link (`https://relay/?token=…`) names its token; `--token` wins when both do.
    if args.token.is_empty()
        && let Some(token) = url_token
    {
        args.token = token;
    }
    let limit = Duration::from_secs(args.retry_for);
    let job_toml = link::with_retries(limit, || relay.text("/api/job")).await?;
    let mut job = Job::from_toml(&job_toml).context("the relay's job is not valid")?;
    if job.needs_base() {
        // The frozen base, checked against the job's pin before anything trains on it.
        let bytes = link::with_retries(limit, || relay.bytes("/api/base")).await?;
        job = job
            .with_checkpoint("the relay's /api/base", &bytes)
            .context("the relay's frozen base is not this job's")?;
    }
    if job.needs_tokenizer() {
        let json = link::with_retries(limit, || relay.text("/api/tokenizer")).await?;
        job = job
            .with_tokenizer_json(json.into_bytes())
            .context("the relay's tokenizer.json is not usable")?;
    }
    let job = Arc::new(job);
    if let Some(adversary) = args.adversary {
        eprintln!(
            "--adversary {}: every contribution this peer sends is falsified to raise the loss",
            match adversary {
                link::Adversary::Worst => "worst",
                link::Adversary::Flip => "flip",
            }
        );
        relay.adversary = Some((adversary, job.hyper().quantizer));
    }
    let spec = args.data.as_deref().unwrap_or(&job.config.task.dataset);
    let data = load_data(spec, &job, args.seed)?;
    let snapshot = relay.snapshot_within(limit, &job).await?;
    let probe = BatchSampler::new(args.seed).sample(&data.train, job.hyper().batch_size);
    let (backend, replica, lanes) =
        backend::choose(args.backend, args.lanes, &job, snapshot, &probe).await?;
    // The relay's host sees what this peer computes on.
    relay.ws = protocol::websocket_with_backend(&relay.ws, &backend.describe(lanes));
    let mut state = PeerState::new(replica);
    state.until_version = args.until_version;
    state.lanes = lanes;
    state.privacy = engine::privacy::PrivatePeer::for_job(&job, data.train.len())
        .context("the job is private, and this system gave no randomness for the noise")?;
    if let Some(p) = &state.privacy {
        eprintln!(
            "the job is private: each contribution is clipped to {} per example with noise σ = \
             {} (sampling rate {:.4}); the privacy spent is shown as (ε, δ = {:e})",
            p.spec.clip,
            p.spec.noise_multiplier,
            p.accountant.sampling_rate(),
            p.accountant.delta()
        );
    }
    let started_from = state.replica.version().0;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Relaxed);
        }
    });
    let peers_online = Arc::new(AtomicU64::new(0));
    tokio::spawn(poll_peers(relay.clone(), peers_online.clone()));
    let config = DriverConfig {
        token: args.token.clone(),
        window: args.window,
        give_up_after_ms: Some(limit.as_secs_f64() * 1_000.0),
        seed: args.seed,
    };
    let bar = progress_bar(&args);
    let mut peer = Peer {
        sampler: BatchSampler::new(args.seed ^ 0x9e37_79b9_7f4a_7c15),
        args,
        job,
        data,
        backend,
        interrupted,
        peers_online,
        bar,
        busy_share: None,
    };
    let mut driver = Driver::new(&mut peer, relay, TokioClock::new(), config);
    let ran = driver.run(&mut state).await;
    let tally = driver.tally();
    let traffic = Traffic {
        reconnects: tally.reconnects,
        sent: tally.bytes_sent,
        received: tally.bytes_received,
    };
    drop(driver);
    match ran {
        Ok(()) => peer.bar.finish_and_clear(),
        Err(stop) => {
            peer.bar.abandon();
            return Err(stop.into());
        }
    }
    report(&peer, &state, traffic, started_from).await
}

/// What a peer's connections carried, as its driver counted.
struct Traffic {
    reconnects: u64,
    /// Websocket bytes, framing included.
    sent: u64,
    received: u64,
}

async fn report(peer: &Peer, state: &PeerState, traffic: Traffic, started_from: u64) -> Result<()> {
    let hash = state.replica.weight_hash().await?.to_hex();
    let eval = if peer.data.test.is_empty() {
        None
    } else {
        Some(
            state
                .replica
                .evaluate(&peer.data.test.held_out_slice(
                    state.replica.job().model.layout().d(),
                    engine::HELD_OUT_VALUES,
                ))
                .await?,
        )
    };
    println!(
        "peer {} at version {}: {} contributions accepted, {} rejected, {} reconnects",
        state.id.map_or("-".into(), |p| p.to_string()),
        state.replica.version(),
        state.accepted,
        state.rejected,
        traffic.reconnects
    );
    let fp32_allreduce =
        engine::driver::fp32_allreduce_bytes(state.accepted, peer.job.model.layout().d());
    println!(
        "sent {} bytes, received {} (websocket framing included); an fp32 all-reduce of the same \
         contributions: {} each way",
        traffic.sent, traffic.received, fp32_allreduce
    );
    if let Some(e) = eval {
        println!(
            "test accuracy {:.2} %, test loss {:.4}",
            e.accuracy * 100.0,
            e.loss
        );
    }
    let bits = eval
        .filter(|_| peer.job.model.is_language_model())
        .map(|e| e.loss / std::f32::consts::LN_2);
    if let Some(bits) = bits {
        println!("held-out bits per {} {bits:.3}", peer.job.token_unit());
    }
    if let Some(share) = peer.busy_share {
        println!(
            "busy {:.0} % of the time since it caught up (proposing or applying the log)",
            share * 100.0
        );
    }
    if let Some(p) = &state.privacy {
        println!(
            "privacy spent: ε = {:.3} at δ = {:e} over {} contributions",
            p.accountant.epsilon(),
            p.accountant.delta(),
            p.accountant.steps()
        );
    }
    println!("weight hash {hash}");
    if peer.args.json {
        let report = Report {
            peer: state.id.map(|p| p.0),
            version: state.replica.version().0,
            hash,
            accepted: state.accepted,
            rejected: state.rejected,
            reconnects: traffic.reconnects,
            started_from,
            bytes_sent: traffic.sent,
            bytes_received: traffic.received,
            fp32_allreduce_bytes: fp32_allreduce,
            accuracy: eval.map(|e| e.accuracy),
            test_loss: eval.map(|e| e.loss),
            bits_per_char: bits.filter(|_| peer.job.tokenizer().is_none()),
            bits_per_token: bits.filter(|_| peer.job.tokenizer().is_some()),
            busy_share: peer.busy_share,
            privacy: PrivacyReport::of(state),
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn progress_bar(args: &Args) -> ProgressBar {
    let bar = match (args.contributions, args.until_version) {
        (Some(n), _) => ProgressBar::new(n),
        (None, Some(v)) => ProgressBar::new(v),
        (None, None) => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}  {msg}")
            .expect("valid template"),
    );
    bar
}

/// Keeps `online` at the relay's peer count, for the progress bar.
async fn poll_peers(relay: Relay, online: Arc<AtomicU64>) {
    loop {
        if let Ok(text) = relay.text("/api/status").await
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(n) = status["peers"].as_u64()
        {
            online.store(n, Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
