//! What every request handler and socket shares: handles, not state of their own.

use crate::broadcaster::Broadcaster;
use crate::config::RelayConfig;
use crate::follower::FollowerInput;
use crate::limits::{AddressTally, JoinRate};
use crate::log::LogStore;
use crate::sequencer::{Command, Standing};
use crate::stats::Stats;
use crate::store::Snapshots;
use engine::Job;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub struct Context {
    pub config: RelayConfig,
    pub job: Arc<Job>,
    pub job_toml: String,
    /// The log, for reads (`/api/log`) and its durable head.
    pub log: LogStore,
    pub snapshots: Snapshots,
    /// Each peer's feed of the log.
    pub broadcaster: Broadcaster,
    pub sequencer: mpsc::Sender<Command>,
    /// What the sequencer has decided that sockets act on (the pause, the peers joined).
    pub standing: watch::Receiver<Standing>,
    /// Where peers' hash reports go.
    pub follower: std::sync::mpsc::Sender<FollowerInput>,
    /// Figures for `/api/status` and `/metrics`: reported, never read to decide.
    pub stats: Arc<Stats>,
    pub metrics: crate::metrics::Metrics,
    /// Joined peers per network address (the sequencer holds the total to `--max-peers`).
    pub joined: Arc<AddressTally>,
    /// New peers per minute per network address.
    pub join_rate: JoinRate,
    /// For a job that trains part of a checkpoint's model: that checkpoint file, served to
    /// peers at `/api/base` (they check it against the job's pin).
    pub base_file: Option<bytes::Bytes>,
}
