//! The relay's command line.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Hosts one onebyte training job: serves the page and the job, sequences the peers'
/// one-byte contributions into a durable log and broadcasts it. It never sees training data.
#[derive(Debug, Clone, Parser)]
#[command(name = "onebyte-relay", version)]
pub struct RelayConfig {
    /// The job to host (TOML). Without it: the job already in --store, or else the built-in demo
    /// job (an MLP on two spirals).
    #[arg(long, value_name = "FILE")]
    pub job: Option<PathBuf>,

    /// The store file (SQLite). Restarting on the same store resumes the job where it was.
    #[arg(long, value_name = "PATH", default_value = "onebyte-relay.db")]
    pub store: PathBuf,

    /// Address to listen on. Port 0 picks a free port (the chosen address is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of static files served at `/` (the page and its wasm package).
    #[arg(long, value_name = "DIR")]
    pub web: Option<PathBuf>,

    /// Peers must present this token in their Hello.
    #[arg(long, env = "ONEBYTE_JOIN_TOKEN", value_name = "TOKEN")]
    pub join_token: Option<String>,

    /// Enables POST /api/admin/pause and /api/admin/resume with `Authorization: Bearer TOKEN`.
    #[arg(long, env = "ONEBYTE_ADMIN_TOKEN", value_name = "TOKEN")]
    pub admin_token: Option<String>,

    /// A page origin allowed to open the websocket and read the job, snapshot, log and status
    /// (repeatable; `*` allows any): e.g. a course page embedding the widget in live mode.
    /// Pages served by the relay itself and clients that send no Origin (native workers) are
    /// always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,

    /// Most peers joined at once.
    #[arg(long, default_value_t = 1024, help_heading = "Limits")]
    pub max_peers: usize,

    /// Most peers joined at once from one network address (an IPv4 address, an IPv6 /64);
    /// 0: no limit. Behind a reverse proxy every peer shares the proxy's address: set 0 and
    /// limit there.
    #[arg(long, default_value_t = 32, help_heading = "Limits")]
    pub max_peers_per_address: usize,

    /// Most new joins per minute from one network address (each registers a peer id); 0: no
    /// limit.
    #[arg(long, default_value_t = 60, help_heading = "Limits")]
    pub joins_per_minute: u32,

    /// Most TCP connections open at once (HTTP requests, sockets before and after Hello).
    #[arg(long, default_value_t = 4096, help_heading = "Limits")]
    pub max_connections: usize,

    /// Most TCP connections open at once from one network address; 0: no limit.
    #[arg(long, default_value_t = 64, help_heading = "Limits")]
    pub max_connections_per_address: usize,

    /// Seconds a connection may take to send a request's headers (and a TLS handshake to
    /// finish), and a new websocket to send its Hello.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECONDS",
        help_heading = "Limits"
    )]
    pub header_timeout: u64,

    /// Seconds a joined peer may stay quiet: no answer to the relay's pings, or no contribution
    /// or hash report while the job runs (a peer following the log reports every 256 entries).
    /// A paused job keeps its quiet peers.
    #[arg(
        long,
        default_value_t = 120,
        value_name = "SECONDS",
        help_heading = "Limits"
    )]
    pub idle_timeout: u64,

    /// Largest websocket message accepted from a peer, in bytes.
    #[arg(long, default_value_t = 4096, help_heading = "Limits")]
    pub max_frame: usize,

    /// Most contributions per second from one peer; faster ones are rejected.
    #[arg(long, default_value_t = 2000, help_heading = "Limits")]
    pub rate_limit: u32,

    /// Clip each contribution's magnitude to this many times the median magnitude of recent
    /// contributions (over the peers that sent the last 1 024, each counted once); the log
    /// records the clipped byte. 0: no clipping.
    #[arg(
        long,
        default_value_t = 4.0,
        value_name = "FACTOR",
        value_parser = clip_factor,
        help_heading = "Influence"
    )]
    pub clip_factor: f32,

    /// Quarantine a peer when at least this share of its last 64 contributions was clipped:
    /// its contributions are rejected until the host releases it (`/admin`); 0: never.
    #[arg(
        long,
        default_value_t = 0.5,
        value_name = "SHARE",
        value_parser = share,
        help_heading = "Influence"
    )]
    pub quarantine_share: f32,

    /// In a committee job: how long a round waits for all its members' votes before it is
    /// decided by a majority of them, or closed (seconds).
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECONDS",
        help_heading = "Influence"
    )]
    pub round_timeout: u64,

    /// How long the sequencer gathers contributions before committing them as one batch (ms).
    #[arg(long, default_value_t = 5)]
    pub tick_ms: u64,

    /// The follower stores a snapshot every this many log entries.
    #[arg(long, default_value_t = 2000)]
    pub snapshot_every: u64,

    /// Log batches (one a tick) a peer whose socket is blocked may fall behind, and answers
    /// queued for it, before it counts as too slow and is dropped.
    #[arg(long, default_value_t = 1024, help_heading = "Limits")]
    pub peer_queue: usize,

    /// Kernel send buffer of each socket, in bytes (the OS default if not given). Small values
    /// make a peer that stops reading show up in its queue sooner.
    #[arg(long, value_name = "BYTES")]
    pub send_buffer: Option<usize>,

    /// NATS servers (URLs, comma-separated) whose JetStream holds the job's log: this process
    /// becomes part of a relay spread over machines (see --role). Without it the log is in
    /// --store and one process is the whole relay.
    #[arg(long, value_name = "URLS", help_heading = "Cluster")]
    pub nats: Option<String>,

    /// With --nats: what this process does. `edge` holds peers' sockets and serves the page;
    /// `sequencer` decides the log (run one); `both`, the two in one process.
    #[arg(
        long,
        value_enum,
        default_value_t = Role::Both,
        requires = "nats",
        help_heading = "Cluster"
    )]
    pub role: Role,

    /// With --nats: copies JetStream keeps of the job's streams (3 in a cluster of three or
    /// more servers; 1 for a lone server).
    #[arg(
        long,
        default_value_t = 3,
        requires = "nats",
        value_parser = clap::value_parser!(u8).range(1..=5),
        help_heading = "Cluster"
    )]
    pub nats_replicas: u8,

    /// TLS certificate chain (PEM). With --tls-key, the relay serves https and wss: browsers
    /// only allow WebGPU in secure contexts, which off localhost means TLS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// What a process of a relay spread over machines does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Edge,
    Sequencer,
    Both,
}

impl RelayConfig {
    pub fn influence(&self) -> crate::influence::InfluenceConfig {
        crate::influence::InfluenceConfig {
            clip_factor: self.clip_factor,
            quarantine_share: self.quarantine_share,
        }
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.max(1))
    }
}

/// `--clip-factor`: 0 (off) or at least 1 (a bound below the median would clip most honest
/// contributions).
fn clip_factor(text: &str) -> Result<f32, String> {
    let f: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if f == 0.0 || (f.is_finite() && f >= 1.0) {
        Ok(f)
    } else {
        Err(format!(
            "{text} is neither 0 (off) nor a finite factor of at least 1"
        ))
    }
}

/// `--quarantine-share`: a share in [0, 1].
fn share(text: &str) -> Result<f32, String> {
    let s: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{text} is not a share between 0 and 1"))
    }
}
