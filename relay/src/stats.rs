//! Counters the sequencer, the follower and the sockets update, and `/api/status` and
//! `/metrics` read. Plain atomics: nothing here is on the path that decides the log.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Live figures of one relay.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries in the durable log.
    pub version: AtomicU64,
    /// Peers with an open socket.
    pub peers: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Sockets closed by the relay with a refusal code (bad input, limits, slow consumers).
    pub refused: AtomicU64,
    /// TCP connections closed at once because of `--max-connections[-per-address]`.
    pub connections_refused: AtomicU64,
    /// Joined peers closed for answering no ping or going quiet (`--idle-timeout`).
    pub idle_closed: AtomicU64,
    pub slow_consumers_dropped: AtomicU64,
    /// Contributions logged clipped to the bound, and peers quarantined now.
    pub clipped: AtomicU64,
    pub quarantined: AtomicU64,
    /// The clipping bound `|D|` as f32 bits; 0 while nothing is clipped.
    clip_bound_bits: AtomicU32,
    /// Bytes of message payload received from and sent to peers (framing not included).
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub paused: AtomicBool,
    /// The follower's version and its snapshot's.
    pub follower_version: AtomicU64,
    pub snapshot_version: AtomicU64,
    /// Hash reports compared with the follower, and how many disagreed.
    pub hashes_checked: AtomicU64,
    pub hashes_diverged: AtomicU64,
    rate: Mutex<crate::rate::RateWindow>,
    /// The follower's latest evaluation on held-out data.
    pub held_out: Mutex<Option<HeldOut>>,
    /// Each peer's figures, for the host's dashboard.
    pub board: crate::board::PeerBoard,
}

impl Stats {
    /// Records that `n` more contributions were accepted just now.
    pub fn record_accepted(&self, n: u64) {
        let total = self.accepted.fetch_add(n, Relaxed) + n;
        self.rate
            .lock()
            .expect("rate window poisoned")
            .record(total);
    }

    /// Accepted contributions per second over the last five seconds.
    pub fn contributions_per_second(&self) -> f64 {
        self.rate.lock().expect("rate window poisoned").per_second()
    }

    /// The sequencer's bound and quarantine count, for the status and the metrics.
    pub fn publish_influence(&self, influence: &crate::influence::Influence) {
        let bits = influence.bound_value().map_or(0, f32::to_bits);
        self.clip_bound_bits.store(bits, Relaxed);
        self.quarantined
            .store(influence.quarantined_count() as u64, Relaxed);
    }

    /// The clipping bound now, if contributions are being clipped.
    pub fn clip_bound(&self) -> Option<f32> {
        let bits = self.clip_bound_bits.load(Relaxed);
        (bits != 0).then(|| f32::from_bits(bits))
    }

    /// The figures `/api/status` serves.
    pub fn status(&self) -> Status {
        let checked = self.hashes_checked.load(Relaxed);
        let diverged = self.hashes_diverged.load(Relaxed);
        Status {
            version: self.version.load(Relaxed),
            peers: self.peers.load(Relaxed),
            contributions_per_s: self.contributions_per_second(),
            accepted: self.accepted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            paused: self.paused.load(Relaxed),
            last_reported_loss: self.board.median_loss(),
            held_out: self
                .held_out
                .lock()
                .expect("no panics while holding it")
                .clone(),
            influence: Influence {
                clip_bound: self.clip_bound(),
                clipped: self.clipped.load(Relaxed),
                peers_quarantined: self.quarantined.load(Relaxed),
            },
            consistency: Consistency {
                follower_version: self.follower_version.load(Relaxed),
                snapshot_version: self.snapshot_version.load(Relaxed),
                hashes_checked: checked,
                hashes_diverged: diverged,
                peers_diverged: self.board.diverged(),
                consistent: self.board.diverged() == 0,
            },
        }
    }
}

/// `GET /api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: u64,
    pub peers: u64,
    pub contributions_per_s: f64,
    pub accepted: u64,
    pub rejected: u64,
    pub paused: bool,
    /// The median of the connected peers' latest loss reports.
    pub last_reported_loss: Option<f32>,
    /// The relay's own replica on held-out examples of the job's built-in data.
    pub held_out: Option<HeldOut>,
    pub influence: Influence,
    pub consistency: Consistency,
}

/// The relay's replica evaluated on held-out examples of the job's built-in data (its own draw,
/// which no peer trains on).
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub version: u64,
    pub examples: usize,
    /// Share of examples whose likeliest class (a language model's: next token) is right.
    pub accuracy: f32,
    /// Mean cross-entropy, nats.
    pub loss: f32,
    /// For a language model: the loss in bits per token of its vocabulary.
    pub bits_per_token: Option<f32>,
}

/// How far any one peer can move the weights.
#[derive(Debug, Clone, Serialize)]
pub struct Influence {
    /// The largest `|D(byte)|` the log takes now (`None`: nothing is clipped yet, or clipping
    /// is off).
    pub clip_bound: Option<f32>,
    /// Contributions logged clipped to the bound.
    pub clipped: u64,
    /// Peers whose contributions are rejected until the host releases them.
    pub peers_quarantined: u64,
}

/// How the peers' weight hashes compare with the relay's own replica.
#[derive(Debug, Clone, Serialize)]
pub struct Consistency {
    pub follower_version: u64,
    pub snapshot_version: u64,
    pub hashes_checked: u64,
    pub hashes_diverged: u64,
    /// Connected peers whose latest compared hash differs from the follower's (each was told
    /// to resync).
    pub peers_diverged: u64,
    /// No connected peer's latest compared hash differs from the follower's.
    pub consistent: bool,
}
