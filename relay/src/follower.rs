//! The follower: the relay's own CPU replica of the job.
//!
//! It subscribes to the log like every peer and applies each durable chunk, stores a snapshot every N entries (so a join costs one
//! snapshot and a short tail), hashes θ at every multiple of [`HASH_REPORT_INTERVAL`] and
//! compares peers' hash reports with its own. A peer that disagrees is told to resync. It runs
//! on its own thread: replaying is CPU work that must not hold up the sockets.

use crate::log::{LogStore, LogStoreError};
use crate::sequencer::Outgoing;
use crate::stats::{HeldOut, Stats};
use crate::store::Snapshots;
use bytes::Bytes;
use engine::{Job, Replica, Split};
use protocol::{HASH_REPORT_INTERVAL, LogEntry, Message, PeerId, Version, WeightHash};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// What the follower is sent.
#[derive(Debug)]
pub enum FollowerInput {
    /// Durable entries, continuing where the last chunk ended.
    Entries(Arc<[LogEntry]>),
    /// A peer's `(version, hash)`; the outbox is where a `Resync` goes if it disagrees.
    Report {
        peer: PeerId,
        version: Version,
        hash: WeightHash,
        outbox: mpsc::Sender<Outgoing>,
    },
}

/// Starts the follower on a thread of its own: it restores the newest snapshot and replays the
/// log to its head before this returns, then follows the log. Hash reports go to the sender
/// returned.
pub async fn spawn(
    job: Arc<Job>,
    log: LogStore,
    snapshots: Snapshots,
    snapshot_every: u64,
    stats: Arc<Stats>,
) -> anyhow::Result<std::sync::mpsc::Sender<FollowerInput>> {
    let (inputs, input_rx) = std::sync::mpsc::channel();
    let head = log.head();
    let (ready_tx, ready) = oneshot::channel();
    let runtime = Handle::current();
    let replay = log.clone();
    std::thread::Builder::new()
        .name("follower".into())
        .spawn(move || {
            let started = Follower::start(
                job,
                &replay,
                snapshots,
                snapshot_every,
                stats,
                runtime,
                head,
            );
            match started {
                Ok(follower) => {
                    let _ = ready_tx.send(Ok(()));
                    follower.run(input_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    ready
        .await
        .map_err(|_| anyhow::anyhow!("the follower stopped while replaying the log"))??;
    // From where the replay ended, the follower reads the log as every subscriber does.
    let entries = inputs.clone();
    let mut subscription = log.subscribe(head);
    tokio::spawn(async move {
        loop {
            match subscription.next().await {
                Ok(chunk) => {
                    if entries.send(FollowerInput::Entries(chunk.entries)).is_err() {
                        return;
                    }
                }
                Err(LogStoreError::Closed) => return,
                Err(e) => return tracing::error!("the follower's subscription failed: {e}"),
            }
        }
    });
    Ok(inputs)
}

/// Hashes kept for comparing late reports.
const HASHES_KEPT: usize = 1024;
/// Reports kept waiting for the follower to reach their version. Sockets only pass on reports
/// of boundaries the log has reached, so this many means the follower is far behind; the
/// oldest are then dropped unanswered rather than held without bound.
const REPORTS_WAITING: usize = 4096;

/// The seed of the relay's own draw of the job's built-in data (peers draw theirs from their
/// own seeds, 1 and up by default).
const HELD_OUT_SEED: u64 = 0x00de_ad10_0fed;
/// Most input values (rows × features) of held-out data the follower evaluates on: 256
/// examples of the tiny transformer's 64 tokens.
const HELD_OUT_VALUES: usize = 16_384;
/// The follower evaluates at most this often, at hash boundaries.
const EVALUATE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The relay's replica.
pub struct Follower {
    replica: Replica,
    /// Held-out examples of the job's built-in data, and when they were last evaluated.
    held_out: Option<Split>,
    evaluated: Option<std::time::Instant>,
    snapshots: Snapshots,
    /// For the store's calls, from this thread.
    runtime: Handle,
    snapshot_every: u64,
    stats: Arc<Stats>,
    hashes: BTreeMap<Version, WeightHash>,
    waiting: VecDeque<FollowerInput>,
}

impl Follower {
    /// Restores the newest snapshot in the store (or the job's initial weights) and replays the
    /// log up to `head`.
    fn start(
        job: Arc<Job>,
        log: &LogStore,
        snapshots: Snapshots,
        snapshot_every: u64,
        stats: Arc<Stats>,
        runtime: Handle,
        head: Version,
    ) -> anyhow::Result<Self> {
        let device = engine::cpu_device();
        let stored = runtime.block_on(snapshots.latest())?;
        let replica = match &stored {
            Some((_, bytes)) => Replica::from_snapshot(job, device, bytes)?,
            None => Replica::new(job, device),
        };
        let held_out = held_out(replica.job());
        let mut follower = Follower {
            replica,
            held_out,
            evaluated: None,
            snapshots,
            runtime,
            snapshot_every: snapshot_every.max(1),
            stats,
            hashes: BTreeMap::new(),
            waiting: VecDeque::new(),
        };
        if stored.is_none() {
            follower.snapshot()?;
        }
        let mut at = follower.replica.version();
        while at < head {
            let to = Version((at.0 + 65_536).min(head.0));
            let entries = follower.runtime.block_on(log.read(at, to))?;
            follower.apply(&entries)?;
            at = to;
        }
        follower.evaluate();
        follower.publish();
        Ok(follower)
    }

    /// Evaluates the replica on the held-out examples and publishes the figures. A figure that
    /// cannot be made is logged: it only reports, and the follower's work goes on.
    fn evaluate(&mut self) {
        let Some(split) = &self.held_out else {
            return;
        };
        self.evaluated = Some(std::time::Instant::now());
        let eval = match engine::block_on(self.replica.evaluate(split)) {
            Ok(eval) => eval,
            Err(e) => return tracing::warn!("held-out evaluation failed: {e}"),
        };
        let language = self.replica.job().model.is_language_model();
        *self
            .stats
            .held_out
            .lock()
            .expect("no panics while holding it") = Some(HeldOut {
            version: self.replica.version().0,
            examples: split.len(),
            accuracy: eval.accuracy,
            loss: eval.loss,
            bits_per_token: language.then(|| eval.loss / std::f32::consts::LN_2),
        });
    }

    /// The follower's version.
    pub fn version(&self) -> Version {
        self.replica.version()
    }

    /// Serves inputs until the sequencer is gone.
    pub fn run(mut self, inputs: std::sync::mpsc::Receiver<FollowerInput>) {
        for input in inputs {
            let result = match input {
                FollowerInput::Entries(entries) => self.apply(&entries).map(|()| self.recheck()),
                report @ FollowerInput::Report { .. } => {
                    if self.waiting.len() >= REPORTS_WAITING {
                        self.waiting.pop_front();
                    }
                    self.waiting.push_back(report);
                    self.recheck();
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!("follower stopped: {e:#}");
                return;
            }
            self.publish();
        }
    }

    fn publish(&self) {
        self.stats
            .follower_version
            .store(self.replica.version().0, Relaxed);
    }

    /// Applies entries, stopping at every hash and snapshot boundary on the way.
    fn apply(&mut self, mut entries: &[LogEntry]) -> anyhow::Result<()> {
        while !entries.is_empty() {
            let v = self.replica.version().0;
            let next_hash = (v / HASH_REPORT_INTERVAL + 1) * HASH_REPORT_INTERVAL;
            let next_snapshot = (v / self.snapshot_every + 1) * self.snapshot_every;
            let stop = next_hash.min(next_snapshot);
            let n = ((stop - v) as usize).min(entries.len());
            self.replica.apply(&entries[..n]);
            entries = &entries[n..];
            let v = self.replica.version().0;
            if v.is_multiple_of(HASH_REPORT_INTERVAL) {
                let hash = engine::block_on(self.replica.weight_hash())?;
                self.hashes.insert(Version(v), hash);
                while self.hashes.len() > HASHES_KEPT {
                    self.hashes.pop_first();
                }
                if self
                    .evaluated
                    .is_none_or(|at| at.elapsed() >= EVALUATE_EVERY)
                {
                    self.evaluate();
                }
            }
            if v.is_multiple_of(self.snapshot_every) {
                self.snapshot()?;
            }
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<(), anyhow::Error> {
        let bytes = engine::block_on(self.replica.snapshot())?;
        let hash = engine::block_on(self.replica.weight_hash())?;
        let version = self.replica.version();
        self.runtime
            .block_on(self.snapshots.put(version, hash, bytes))?;
        self.stats.snapshot_version.store(version.0, Relaxed);
        Ok(())
    }

    /// Compares every waiting report the follower has reached.
    fn recheck(&mut self) {
        let head = self.replica.version();
        let waiting = std::mem::take(&mut self.waiting);
        for report in waiting {
            let FollowerInput::Report {
                peer,
                version,
                hash,
                outbox,
            } = report
            else {
                continue;
            };
            if version > head {
                self.waiting.push_back(FollowerInput::Report {
                    peer,
                    version,
                    hash,
                    outbox,
                });
                continue;
            }
            // Too old to compare (or not at a hash boundary): nothing to say.
            let Some(ours) = self.hashes.get(&version) else {
                continue;
            };
            self.stats.hashes_checked.fetch_add(1, Relaxed);
            self.stats.board.hash(peer, version.0, *ours == hash);
            if *ours != hash {
                self.stats.hashes_diverged.fetch_add(1, Relaxed);
                tracing::warn!(
                    %peer, %version,
                    "peer reported hash {} but the relay has {}; telling it to resync",
                    hash.to_hex(), ours.to_hex()
                );
                let resync = Message::Resync {
                    version,
                    reason: format!(
                        "weight hash at version {version} differs from the relay's; reload the snapshot"
                    ),
                };
                // Whenever it comes: it names its version.
                let _ = outbox.try_send(Outgoing {
                    after: Version(0),
                    frames: vec![Bytes::from(resync.encode())],
                });
            }
        }
    }
}

/// A bounded slice of the test split of the job's built-in data, drawn with the relay's own
/// seed; `None` when the data cannot be made here (it is logged, and the relay runs on).
fn held_out(job: &Job) -> Option<Split> {
    let source = match job.config.task.dataset.parse() {
        Ok(source) => source,
        Err(e) => {
            tracing::warn!("no held-out evaluation: {e}");
            return None;
        }
    };
    match engine::data::for_job(job, &source, None, HELD_OUT_SEED) {
        Ok(data) => (!data.test.is_empty()).then(|| {
            data.test
                .held_out_slice(job.model.layout().d(), HELD_OUT_VALUES)
        }),
        Err(e) => {
            tracing::warn!("no held-out evaluation: {e}");
            None
        }
    }
}
