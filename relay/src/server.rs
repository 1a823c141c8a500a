//! Starting a relay: the store, the follower, the sequencer, the broadcaster and the
//! HTTP/websocket server.

use crate::broadcaster::Broadcaster;
use crate::cluster;
use crate::config::{RelayConfig, Role};
use crate::context::Context;
use crate::http;
use crate::limits::{AddressTally, JoinRate};
use crate::log::{LogStore, StreamPlace};
use crate::sequencer::{self, Command, Sequencer, SequencerConfig, Standing};
use crate::stats::Stats;
use anyhow::{Context as _, Result};
use engine::Job;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Loads the job and the store, replays the log into the follower, and serves until Ctrl-C.
pub async fn run(config: RelayConfig) -> Result<()> {
    let given = match &config.job {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read the job file {}", path.display()))?;
            Job::from_toml(&text)
                .with_context(|| format!("the job file {} is not valid", path.display()))?;
            Some(text)
        }
        None if config.store.exists() => None,
        None => Some(Job::demo().to_toml()),
    };
    let (stores, job_toml) = crate::store::open(&config.store, given.as_deref()).await?;
    let mut job = Job::from_toml(&job_toml)
        .with_context(|| format!("the job stored in {} is not valid", config.store.display()))?;
    // A job that starts from a checkpoint needs it until its first snapshot exists; a job's
    // tokenizer is kept in the store, which serves it from then on.
    let mut base_file = None;
    if let Some(path) = &config.job {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        job = job.with_init_from(dir)?;
        if let (true, Some(init)) = (job.model.plan().freezes(), &job.config.job.init) {
            let path = dir.join(init);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("could not read the base {}", path.display()))?;
            // The file as read again must still be the pinned one.
            job.check_base(&path.display().to_string(), &bytes)?;
            base_file = Some(bytes::Bytes::from(bytes));
        }
        if let Some(json) = job.tokenizer_json() {
            let json =
                std::str::from_utf8(json).context("the job's tokenizer.json is not UTF-8")?;
            stores.meta.keep_tokenizer(json).await?;
        }
    } else {
        if job.needs_base() {
            anyhow::bail!(
                "the job trains part of the frozen base model {:?}, which the relay reads at \
                 every start: pass --job with the job file",
                job.config.job.init
            );
        }
        if job.needs_checkpoint() && stores.snapshots.latest().await?.is_none() {
            anyhow::bail!(
                "the job starts from the checkpoint {:?} and has no snapshot yet: pass --job \
                 with the job file so the relay can find the checkpoint",
                job.config.job.init
            );
        }
        if job.needs_tokenizer() {
            let Some(json) = stores.meta.tokenizer().await? else {
                anyhow::bail!(
                    "the job reads text through the tokenizer {:?}, which the store {} does not \
                     hold: pass --job with the job file",
                    job.config.task.tokenizer,
                    config.store.display()
                );
            };
            job = job.with_tokenizer_json(json.into_bytes())?;
        }
    }
    let job = Arc::new(job);

    // Where the log lives: the store file, or the cluster's JetStream.
    let nats = match &config.nats {
        Some(servers) => Some(
            cluster::connect(servers)
                .await
                .with_context(|| format!("could not reach the NATS servers {servers}"))?,
        ),
        None => None,
    };
    let role = if nats.is_some() {
        config.role
    } else {
        Role::Both
    };
    let replicas = usize::from(config.nats_replicas);
    let log = match &nats {
        Some(nats) => LogStore::jetstream(&StreamPlace {
            jetstream: nats.jetstream.clone(),
            job: job.id,
            replicas,
        })
        .await
        .context("could not open the job's log on JetStream (a lone NATS server needs --nats-replicas 1)")?,
        None => LogStore::sqlite(stores.file.clone()).await?,
    };
    let names = cluster::Names::new(job.id);
    let tick = Duration::from_millis(config.tick_ms.max(1));
    let stats = Arc::new(Stats::default());

    let sequencer_config = SequencerConfig {
        tick,
        staleness_bound: job.hyper().staleness_bound,
        max_peers: config.max_peers,
        quantizer: job.hyper().quantizer,
        influence: config.influence(),
        committee_size: job.committee().map(|c| c.size),
        round_timeout: Duration::from_secs(config.round_timeout.max(1)),
    };
    let decides = sequencer::SequencerStores {
        log: log.clone(),
        peers: stores.peers.clone(),
        meta: stores.meta.clone(),
    };
    // What the sockets talk to: the sequencer in this process, or the cluster's.
    let (commands, standing) = match &nats {
        None => start_sequencer(decides, sequencer_config, stats.clone()).await?,
        Some(nats) => {
            if role != Role::Edge {
                let candidate = run_candidate(
                    nats.clone(),
                    names.clone(),
                    replicas,
                    decides,
                    sequencer_config,
                    stats.clone(),
                );
                println!(
                    "onebyte relay: sequencer candidate of job `{}` (id {}), log on NATS \
                     JetStream at version {}",
                    job.config.job.name,
                    job.id,
                    log.head()
                );
                if role == Role::Sequencer {
                    // It serves no sockets.
                    let ended = tokio::select! {
                        ended = candidate => ended,
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    };
                    return ended;
                }
                tokio::spawn(async move {
                    if let Err(e) = candidate.await {
                        eprintln!("onebyte-relay: {e:#}");
                        std::process::exit(2);
                    }
                });
            }
            let (commands, standing) = cluster::uplink::start(nats, names, replicas, tick)
                .await
                .context("could not join the relay's cluster as an edge")?;
            if role == Role::Edge {
                tokio::spawn(report_cluster(log.clone(), standing.clone(), stats.clone()));
            }
            (commands, standing)
        }
    };

    let follower = crate::follower::spawn(
        job.clone(),
        log.clone(),
        stores.snapshots.clone(),
        config.snapshot_every,
        stats.clone(),
    )
    .await
    .context("the follower could not replay the log")?;
    let broadcaster = Broadcaster::start(log.clone(), config.peer_queue).await?;

    let version = log.head();
    let ctx = Arc::new(Context {
        config: config.clone(),
        job: job.clone(),
        job_toml,
        log,
        snapshots: stores.snapshots,
        broadcaster,
        sequencer: commands,
        standing,
        follower,
        metrics: crate::metrics::Metrics::new(stats.clone()),
        stats,
        joined: AddressTally::new(usize::MAX, config.max_peers_per_address),
        join_rate: JoinRate::new(config.joins_per_minute),
        base_file,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "onebyte relay: job `{}` (id {}) at version {version}, store {}",
        job.config.job.name,
        job.id,
        config.store.display()
    );
    println!("listening on {scheme}://{addr}");
    http::serve(ctx, listener).await
}

/// Starts the sequencer on `stores`: the sender sockets give commands to, and its standing.
async fn start_sequencer(
    stores: sequencer::SequencerStores,
    config: SequencerConfig,
    stats: Arc<Stats>,
) -> Result<(
    mpsc::Sender<Command>,
    tokio::sync::watch::Receiver<Standing>,
)> {
    let (sequencer, standing) = Sequencer::new(stores, config, stats).await?;
    let (commands, command_rx) = mpsc::channel(65_536);
    tokio::spawn(async move {
        if let Err(e) = sequencer.run(command_rx).await {
            // Nothing after the failed commit was acknowledged; stop rather than guess.
            tracing::error!("the log could not be written: {e}; stopping");
            eprintln!("onebyte-relay: the log could not be written: {e}");
            std::process::exit(2);
        }
    });
    Ok((commands, standing))
}

/// A sequencer candidate: waits for the lease, then sequences the edges' records until the
/// lease is lost or NATS fails for good (an error either way: the process ends, and whatever
/// supervises it starts it again as a candidate).
async fn run_candidate(
    nats: cluster::Connection,
    names: cluster::Names,
    replicas: usize,
    mut stores: sequencer::SequencerStores,
    config: SequencerConfig,
    stats: Arc<Stats>,
) -> Result<()> {
    let holder = format!("pid {} {:016x}", std::process::id(), {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the system has randomness");
        u64::from_le_bytes(bytes)
    });
    let lease = cluster::lease::acquire(&nats, &names, replicas, holder)
        .await
        .context("could not take part in the sequencer lease")?;
    // Renewed from now on, while the rest starts (reading the registry may take seconds).
    let kept = lease.keep();
    let work = async move {
        // The log may have moved while this candidate waited: start from what the stream
        // holds.
        stores.log.caught_up().await?;
        // The ids, secrets and quarantines the candidates before this one gave.
        let registry =
            crate::store::ReplicatedPeers::open(&nats.jetstream, &names.peers_bucket(), replicas)
                .await?;
        stores.peers = stores.peers.replicated(registry);
        // The pause and the committee rounds its predecessors decided.
        let meta =
            crate::store::ReplicatedMeta::open(&nats.jetstream, &names.meta_bucket(), replicas)
                .await?;
        stores.meta = stores.meta.replicated(meta);
        println!("onebyte relay: sequencing at version {}", stores.log.head());
        let (commands, standing) = start_sequencer(stores, config, stats).await?;
        cluster::intake::run(nats, names, replicas, commands, standing)
            .await
            .context("the sequencer cannot read its edges")?;
        anyhow::bail!("the sequencer's intake ended")
    };
    tokio::select! {
        lost = kept => anyhow::bail!("stopping the sequencer: {lost}"),
        ended = work => ended,
    }
}

/// An edge's report of what the sequencer elsewhere decided (a single relay's sequencer
/// reports it itself): the log's head, the pause, the peers.
async fn report_cluster(
    log: LogStore,
    mut standing: tokio::sync::watch::Receiver<Standing>,
    stats: Arc<Stats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut head = log.watch_head();
    loop {
        stats.version.store(head.borrow_and_update().0, Relaxed);
        let now = *standing.borrow_and_update();
        stats.paused.store(now.paused, Relaxed);
        stats.peers.store(now.peers as u64, Relaxed);
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            changed = standing.changed() => if changed.is_err() { return },
        }
    }
}
