//! `onebyte join`: a peer without a browser.
//!
//! Fetches the job and the newest snapshot over HTTP, opens the relay's websocket, catches up
//! on the log, then trains: proposes contributions from its own data (at most `--window` in
//! flight), applies every batch the relay broadcasts, and reports its weight hash at every
//! hash boundary. A lost connection is retried with backoff and resumes the same peer id from
//! the replica's version; a `Resync` reloads the snapshot.

use crate::data::{BackendArg, load_data};
use anyhow::{Context as _, Result, bail};
use engine::{BatchSampler, Dataset, Job, PeerState, Received, Replica, Session, SessionEnd};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::{Message, RejectReason, RelayUrls, close};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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
    /// Contributions sent but not yet answered, at most (0: 32, or half the job's staleness bound if less).
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
    accuracy: Option<f32>,
    test_loss: Option<f32>,
    /// For a char LM: the held-out loss in bits per character.
    bits_per_char: Option<f32>,
    /// Share of the time since this peer first caught up spent proposing or applying the log.
    busy_share: Option<f64>,
}

/// Where the relay lives.
struct Endpoints {
    http: String,
    ws: String,
    /// TLS settings for the websocket when `--ca-cert` adds a root.
    tls: Option<tokio_tungstenite::Connector>,
}

impl Endpoints {
    /// The endpoints, and the join token the URL's query names (`?token=…`), if any.
    fn parse(relay: &str) -> Result<(Self, Option<String>)> {
        let RelayUrls { http, ws, token } = RelayUrls::parse(relay).context("--relay")?;
        Ok((
            Endpoints {
                http,
                ws,
                tls: None,
            },
            token,
        ))
    }
}

/// What the peer keeps across reconnects.
struct Peer {
    args: Args,
    job: Arc<Job>,
    data: Dataset,
    /// The replica, identity and tallies that `engine::Session` keeps up to date.
    state: PeerState,
    sampler: BatchSampler,
    reconnects: u64,
    backend: Backend,
    started_from: u64,
    busy: Busy,
}

/// Time spent proposing or applying the log since the peer first caught up: the rest it was
/// idle, waiting on the relay.
#[derive(Default)]
struct Busy {
    since: Option<Instant>,
    busy: Duration,
}

impl Busy {
    /// Counts the time since `began` once the peer has trained (caught up); `training` starts
    /// the clock.
    fn record(&mut self, training: bool, began: Instant) {
        if training {
            self.since.get_or_insert(began);
        }
        if self.since.is_some() {
            self.busy += began.elapsed();
        }
    }

    fn share(&self) -> Option<f64> {
        let total = self.since?.elapsed().as_secs_f64();
        (total > 0.0).then(|| self.busy.as_secs_f64() / total)
    }
}

enum Backend {
    Cpu,
    #[cfg(feature = "wgpu")]
    Wgpu(engine::gpu::GpuContext),
}

/// How a websocket session ended.
enum End {
    /// The stop condition holds, or Ctrl-C.
    Done,
    /// The relay said the replica diverged.
    Resync(String),
    /// Worth trying again.
    Retry(String),
    /// Trying again cannot help.
    Fatal(String),
}

pub fn run(args: Args) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn run_async(mut args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut endpoints, url_token) = Endpoints::parse(&args.relay)?;
    // A join link (`https://relay/?token=…`) names its token; `--token` wins when both do.
    if args.token.is_empty()
        && let Some(token) = url_token
    {
        args.token = token;
    }
    let mut http = reqwest::Client::builder();
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("could not read --ca-cert {}", path.display()))?;
        http =
            http.add_root_certificate(reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert {} is not a PEM certificate", path.display())
            })?);
        endpoints.tls = Some(websocket_tls(&pem)?);
    }
    let http = http.build()?;
    let deadline = Duration::from_secs(args.retry_for);
    let job_toml = with_retries(deadline, || get_text(&http, &endpoints.http, "/api/job")).await?;
    let job = Arc::new(Job::from_toml(&job_toml).context("the relay's job is not valid")?);
    let spec = args.data.as_deref().unwrap_or(&job.config.task.dataset);
    let data = load_data(spec, &job, args.seed)?;
    let snapshot = fetch_snapshot(&http, &endpoints, deadline).await?;
    let batch = BatchSampler::new(args.seed).sample(&data.train, job.hyper().batch_size);
    let (backend, replica, lanes) =
        choose_backend(args.backend, args.lanes, &job, &snapshot, &batch).await?;
    // The relay's host sees what this peer computes on.
    let described = match &backend {
        Backend::Cpu => "cpu".to_string(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu(gpu) => format!("wgpu ({}), {lanes} lanes", gpu.adapter),
    };
    endpoints.ws = protocol::websocket_with_backend(&endpoints.ws, &described);
    let sampler = BatchSampler::new(args.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut state = PeerState::new(replica);
    state.until_version = args.until_version;
    state.lanes = lanes;
    let mut peer = Peer {
        args,
        job,
        data,
        state,
        sampler,
        reconnects: 0,
        backend,
        started_from: 0,
        busy: Busy::default(),
    };
    peer.started_from = peer.state.replica.version().0;

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let peers_online = Arc::new(AtomicU64::new(0));
    tokio::spawn(poll_peers(
        http.clone(),
        endpoints.http.clone(),
        peers_online.clone(),
    ));
    let bar = progress_bar(&peer);

    let mut backoff = Duration::from_millis(100);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let started = Instant::now();
        match session(&mut peer, &endpoints, stop.clone(), &bar, &peers_online).await {
            End::Done => break,
            End::Fatal(why) => {
                bar.abandon();
                bail!("{why}");
            }
            End::Resync(why) => {
                bar.println(format!("resync: {why}"));
                peer.state.replica =
                    load_replica(&http, &endpoints, &peer.job, &peer.backend, deadline).await?;
                backoff = Duration::from_millis(100);
                unreachable_since = None;
            }
            End::Retry(why) => {
                if started.elapsed() > Duration::from_secs(2) {
                    backoff = Duration::from_millis(100);
                    unreachable_since = None;
                }
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > deadline {
                    bar.abandon();
                    bail!(
                        "gave up after {} s without the relay: {why}",
                        deadline.as_secs()
                    );
                }
                bar.set_message(format!("reconnecting in {backoff:?}: {why}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                peer.reconnects += 1;
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    bar.finish_and_clear();
    report(&peer).await
}

async fn report(peer: &Peer) -> Result<()> {
    let hash = peer.state.replica.weight_hash().await?.to_hex();
    let eval = if peer.data.test.is_empty() {
        None
    } else {
        Some(peer.state.replica.evaluate(&peer.data.test).await?)
    };
    println!(
        "peer {} at version {}: {} contributions accepted, {} rejected, {} reconnects",
        peer.state.id.map_or("-".into(), |p| p.to_string()),
        peer.state.replica.version(),
        peer.state.accepted,
        peer.state.rejected,
        peer.reconnects
    );
    if let Some(e) = eval {
        println!(
            "test accuracy {:.2} %, test loss {:.4}",
            e.accuracy * 100.0,
            e.loss
        );
    }
    if let Some(share) = peer.busy.share() {
        println!(
            "busy {:.0} % of the time since it caught up (proposing or applying the log)",
            share * 100.0
        );
    }
    println!("weight hash {hash}");
    if peer.args.json {
        let report = Report {
            peer: peer.state.id.map(|p| p.0),
            version: peer.state.replica.version().0,
            hash,
            accepted: peer.state.accepted,
            rejected: peer.state.rejected,
            reconnects: peer.reconnects,
            started_from: peer.started_from,
            accuracy: eval.map(|e| e.accuracy),
            test_loss: eval.map(|e| e.loss),
            bits_per_char: eval
                .filter(|_| peer.job.model.is_language_model())
                .map(|e| e.loss / std::f32::consts::LN_2),
            busy_share: peer.busy.share(),
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn progress_bar(peer: &Peer) -> ProgressBar {
    let bar = match (peer.args.contributions, peer.args.until_version) {
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

impl Peer {
    /// Every stop condition given holds (none given: run until Ctrl-C).
    fn finished(&self) -> bool {
        let (n, v) = (self.args.contributions, self.args.until_version);
        if n.is_none() && v.is_none() {
            return false;
        }
        n.is_none_or(|n| self.state.accepted >= n)
            && v.is_none_or(|v| self.state.replica.version().0 >= v)
    }

    /// `--contributions` leaves room for one more beside those in flight.
    fn wants_more(&self, session: &Session) -> bool {
        self.args
            .contributions
            .is_none_or(|n| self.state.accepted + (session.in_flight() as u64) < n)
    }
}

/// One websocket session: join, catch up, train until done or disconnected. The protocol is
/// `engine::Session`'s; this function only moves its messages over tungstenite.
async fn session(
    peer: &mut Peer,
    endpoints: &Endpoints,
    mut stop: watch::Receiver<bool>,
    bar: &ProgressBar,
    peers_online: &AtomicU64,
) -> End {
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        &endpoints.ws,
        None,
        true,
        endpoints.tls.clone(),
    );
    let (ws, _) = match connect.await {
        Ok(ok) => ok,
        Err(e) => return End::Retry(format!("cannot open {}: {e}", endpoints.ws)),
    };
    let (mut tx, mut rx) = ws.split();
    let mut session = Session::new(&peer.state, &peer.args.token, peer.args.window);
    loop {
        for msg in session.take_outbox() {
            if let Err(e) = tx.send(WsMessage::Binary(msg.encode().into())).await {
                return why_closed(&mut rx, format!("sending {}: {e}", msg.kind())).await;
            }
        }
        if peer.finished() || *stop.borrow() {
            let _ = tx.send(WsMessage::Close(None)).await;
            return End::Done;
        }
        show_progress(peer, &session, bar, peers_online.load(Relaxed));
        let may_send = session.ready_to_contribute(&peer.state) && peer.wants_more(&session);
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            frame = rx.next() => {
                let msg = match decode(frame) {
                    Ok(msg) => msg,
                    Err(end) => return end,
                };
                let began = Instant::now();
                let received = session.receive(&mut peer.state, msg).await;
                peer.busy.record(!session.catching_up(&peer.state), began);
                match received {
                    Ok(Received::Rejected { reason, detail }) => {
                        if reason == RejectReason::Paused {
                            // Wait for the administrator rather than spin.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        tracing::debug!(?reason, %detail, "contribution rejected");
                    }
                    Ok(_) => {}
                    Err(SessionEnd::Resync(why)) => return End::Resync(why),
                    Err(SessionEnd::Refused(why) | SessionEnd::Fatal(why)) => {
                        return End::Fatal(why);
                    }
                }
            }
            _ = std::future::ready(()), if may_send => {
                let batch = peer.sampler.sample(&peer.data.train, peer.job.hyper().batch_size);
                let began = Instant::now();
                if let Err(e) = session.contribute(&mut peer.state, &batch).await {
                    return End::Fatal(e.to_string());
                }
                peer.busy.record(true, began);
            }
        }
    }
}

fn show_progress(peer: &Peer, session: &Session, bar: &ProgressBar, online: u64) {
    let state = &peer.state;
    bar.set_position(match peer.args.contributions {
        Some(_) => state.accepted,
        None => state.replica.version().0,
    });
    let activity = if session.catching_up(state) {
        format!("catching up to {}", session.head())
    } else if let Some(behind) = session.behind() {
        format!("catching up: contributions arrive {behind} versions late")
    } else {
        format!("accepted {}", state.accepted)
    };
    bar.set_message(format!(
        "version {} · {activity} · loss {} · peers {}",
        state.replica.version(),
        state.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        if online == 0 {
            "-".into()
        } else {
            online.to_string()
        }
    ));
}

/// After a failed send: the relay's close frame, read within a second, says how the connection
/// ended (a refusal such as "dropped by the relay's host" must not be retried as a lost line).
async fn why_closed<S>(rx: &mut S, failed: String) -> End
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let close = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(frame) = rx.next().await {
            if let Err(end) = decode(Some(frame)) {
                return Some(end);
            }
        }
        None
    });
    match close.await {
        Ok(Some(end)) => end,
        _ => End::Retry(failed),
    }
}

fn decode(
    frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Message, End> {
    match frame {
        None => Err(End::Retry("the relay closed the connection".into())),
        Some(Err(e)) => Err(End::Retry(format!("connection lost: {e}"))),
        Some(Ok(WsMessage::Binary(bytes))) => Message::decode(&bytes)
            .map_err(|e| End::Fatal(format!("the relay sent a malformed message: {e}"))),
        Some(Ok(WsMessage::Close(frame))) => Err(match frame {
            Some(f) if close::is_fatal(u16::from(f.code)) => End::Fatal(format!(
                "the relay refused this peer: {} (close code {})",
                f.reason,
                u16::from(f.code)
            )),
            Some(f) => End::Retry(format!(
                "the relay closed the connection: {} (close code {})",
                f.reason,
                u16::from(f.code)
            )),
            None => End::Retry("the relay closed the connection".into()),
        }),
        Some(Ok(_)) => Err(End::Retry("unexpected frame type".into())),
    }
}

async fn fetch_snapshot(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    deadline: Duration,
) -> Result<Vec<u8>> {
    with_retries(deadline, || async {
        let resp = http
            .get(format!("{}/api/snapshot", endpoints.http))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.bytes().await?.to_vec())
    })
    .await
}

async fn load_replica(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    job: &Arc<Job>,
    backend: &Backend,
    deadline: Duration,
) -> Result<Replica> {
    let bytes = fetch_snapshot(http, endpoints, deadline).await?;
    backend.replica(job, &bytes)
}

impl Backend {
    fn replica(&self, job: &Arc<Job>, snapshot: &[u8]) -> Result<Replica> {
        Ok(match self {
            Backend::Cpu => Replica::from_snapshot(job.clone(), engine::cpu_device(), snapshot)?,
            #[cfg(feature = "wgpu")]
            Backend::Wgpu(gpu) => Replica::from_snapshot_gpu(job.clone(), gpu, snapshot)?,
        })
    }
}

/// Milliseconds of timed steps per backend and lane count when measuring.
const MEASURE_BUDGET_MS: f64 = 300.0;

/// The backend, a replica on it, and the lanes per step: as asked, or measured (`auto`, and
/// `--lanes 0` on a GPU). Says what it measured and what it chose.
async fn choose_backend(
    asked: BackendArg,
    lanes: usize,
    job: &Arc<Job>,
    snapshot: &[u8],
    batch: &engine::data::Split,
) -> Result<(Backend, Replica, usize)> {
    let on_cpu = || Backend::Cpu.replica(job, snapshot);
    if matches!(asked, BackendArg::Cpu) {
        return Ok((Backend::Cpu, on_cpu()?, lanes.max(1)));
    }
    #[cfg(feature = "wgpu")]
    {
        let gpu = match engine::gpu::GpuContext::init().await {
            Ok(gpu) => gpu,
            Err(e) if matches!(asked, BackendArg::Auto) => {
                eprintln!("backend: cpu (no wgpu adapter: {e})");
                return Ok((Backend::Cpu, on_cpu()?, lanes.max(1)));
            }
            Err(e) => return Err(e.into()),
        };
        let backend = Backend::Wgpu(gpu.clone());
        let rival = match asked {
            BackendArg::Auto => Some(on_cpu()?),
            _ => None,
        };
        let clock = Instant::now();
        let now = move || clock.elapsed().as_secs_f64() * 1_000.0;
        let race = engine::calibrate::race(
            backend.replica(job, snapshot)?,
            rival,
            lanes,
            batch,
            MEASURE_BUDGET_MS,
            now,
        )
        .await?;
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
        Ok((Backend::Cpu, on_cpu()?, lanes.max(1)))
    }
}

/// rustls settings trusting the web's roots and the certificate in `pem`.
fn websocket_tls(pem: &[u8]) -> Result<tokio_tungstenite::Connector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.context("--ca-cert holds a bad certificate")?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

async fn get_text(http: &reqwest::Client, base: &str, path: &str) -> Result<String> {
    Ok(http
        .get(format!("{base}{path}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Retries `f` with backoff until it succeeds or `deadline` has passed.
async fn with_retries<T, F, Fut>(deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() + backoff > deadline => {
                return Err(e.context(format!(
                    "the relay did not answer for {} s",
                    deadline.as_secs()
                )));
            }
            Err(e) => {
                tracing::debug!("retrying: {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Keeps `online` at the relay's peer count, for the progress bar.
async fn poll_peers(http: reqwest::Client, base: String, online: Arc<AtomicU64>) {
    loop {
        if let Ok(text) = get_text(&http, &base, "/api/status").await
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(n) = status["peers"].as_u64()
        {
            online.store(n, Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
