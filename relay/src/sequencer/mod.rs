//! The sequencer: the one place that decides the log.
//!
//! It is a single task. Sockets send it commands; it collects contributions for one tick (a few
//! milliseconds), validates each against the log as it stands at that position, appends the
//! accepted ones to the [`LogStore`] in one call, and only once that returns (they are durable)
//! answers each proposer. It sends no batches: the [`crate::broadcaster`] reads the log like
//! everyone else. A peer whose queue of answers is full is dropped; nobody waits for it.
//!
//! In a committee job it also runs the rounds (see [`crate::committee`]): votes wait in their
//! round until it is decided, and only the decided median is logged and acknowledged.

use crate::committee::{Closed, Committees, Decided};
use crate::influence::{Influence, InfluenceConfig, WINDOW};
use crate::log::{LogStore, LogStoreError};
use crate::stats::Stats;
use crate::store::{JobMeta, PeerRegistry, StoreError};
use bytes::Bytes;
use protocol::{
    Counter, LogCursor, LogEntry, Message, PeerId, Quantizer, RejectReason, Resume, ResumeSecret,
    Serial, Version, close,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Why the sequencer stopped: a store it decides with failed, and nothing after that was
/// answered.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for SequencerError {
    fn from(e: StoreError) -> Self {
        SequencerError::Store(Arc::new(e))
    }
}

/// Frames for one peer that must reach it only after the log up to `after` has (a vote's
/// `Accepted` after the batch that holds the round's entry; a `Rejected` after its tick's
/// batch).
#[derive(Debug)]
pub struct Outgoing {
    pub after: Version,
    pub frames: Vec<Bytes>,
}

/// What the sequencer has decided that others act on: read it, never a report of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// The host paused the job (contributions are rejected, quiet peers kept).
    pub paused: bool,
    /// Peers joined now.
    pub peers: usize,
}

/// The stores the sequencer decides with.
#[derive(Clone)]
pub struct SequencerStores {
    pub log: LogStore,
    pub peers: PeerRegistry,
    pub meta: JobMeta,
}

/// Why a socket is being closed: the close code and its reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// What a newly joined peer needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub peer: PeerId,
    pub next_counter: Counter,
    /// The log's head when the peer joined: it proposes nothing before its replica reaches it.
    pub live_from: Version,
    /// What resumes this id after a reconnect (the one it showed, when it resumed).
    pub secret: ResumeSecret,
    /// Whether the peer resumed its id (else the id is new to it).
    pub resumed: bool,
    /// Names this socket of the peer in its `Leave`.
    pub socket: u64,
    /// The peer resumed an id that is quarantined.
    pub quarantined: bool,
}

/// A request to the sequencer.
#[derive(Debug)]
pub enum Command {
    Join {
        resume: Option<Resume>,
        from: Version,
        outbox: mpsc::Sender<Outgoing>,
        kick: oneshot::Sender<Refusal>,
        reply: oneshot::Sender<Result<Joined, Refusal>>,
    },
    /// A contribution, or in a committee job a vote on an assigned round.
    Propose {
        peer: PeerId,
        proposed: Proposed,
        base: Serial,
        /// A version this peer's replica has certainly reached (see `Serial::at_or_after`).
        floor: Version,
        byte: u8,
    },
    /// A socket ended. `socket` is its [`Joined::socket`]: a peer that already resumed on
    /// another socket stays.
    Leave { peer: PeerId, socket: u64 },
    /// The host pauses or resumes the job; the reply comes once that is durable.
    Pause {
        paused: bool,
        reply: oneshot::Sender<Result<(), Arc<StoreError>>>,
    },
    /// The host drops a peer: its socket closes with [`close::DROPPED`]. The reply says whether
    /// that peer was connected.
    Drop {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// The host releases a quarantined peer. The reply says whether it was quarantined.
    Release {
        peer: PeerId,
        reply: oneshot::Sender<Result<bool, Arc<StoreError>>>,
    },
}

/// Policy the sequencer enforces.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub tick: Duration,
    pub staleness_bound: u64,
    pub max_peers: usize,
    /// The job's codec: clipping lowers a byte's magnitude level.
    pub quantizer: Quantizer,
    pub influence: InfluenceConfig,
    /// The job's committee size, if its steps are decided by committees.
    pub committee_size: Option<usize>,
    /// How long a committee round waits for all its votes (`--round-timeout`).
    pub round_timeout: Duration,
}

/// The sequencer's handle on a joined peer's socket: where its answers go, and how to close it.
struct PeerSocket {
    id: u64,
    /// The digest of the secret that resumes this peer's id.
    secret_digest: [u8; 32],
    outbox: mpsc::Sender<Outgoing>,
    kick: Option<oneshot::Sender<Refusal>>,
}

/// What a pending message proposes: a direction of the peer's own, or a vote on a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposed {
    Contribution(Serial),
    Vote(Counter),
}

impl Proposed {
    /// The counter an answer names: the contribution's low bits, or the round.
    pub fn answer_counter(self) -> Counter {
        match self {
            Proposed::Contribution(serial) => Counter(u64::from(serial.0)),
            Proposed::Vote(round) => round,
        }
    }
}

struct Pending {
    peer: PeerId,
    proposed: Proposed,
    base: Serial,
    /// A version the peer's replica has certainly reached: its base is at or after it.
    floor: Version,
    byte: u8,
}

/// The sequencer's state: the log's head, the joined peers, the rounds and the bound.
pub struct Sequencer {
    stores: SequencerStores,
    /// The log as decided so far: appended entries only (a tick's entries join it only once
    /// appended; an append that fails stops the sequencer).
    cursor: LogCursor,
    paused: bool,
    standing: watch::Sender<Standing>,
    sockets: HashMap<PeerId, PeerSocket>,
    /// The next [`Joined::socket`].
    next_socket: u64,
    pending: Vec<Pending>,
    /// The clipping bound and the quarantined peers.
    influence: Influence,
    /// Peers the host dropped, with the digest of their resume secret: a resume of one is
    /// refused with `DROPPED` (a peer that missed its close frame would otherwise come back as
    /// itself, or, once its id went to someone else, as a new peer). Kept for this sequencer's
    /// life.
    dropped: HashSet<(PeerId, [u8; 32])>,
    /// A committee job's rounds.
    committees: Option<Committees>,
    config: SequencerConfig,
    stats: Arc<Stats>,
}

impl Sequencer {
    /// A sequencer continuing the log in `stores`, and the standing it publishes.
    pub async fn new(
        stores: SequencerStores,
        config: SequencerConfig,
        stats: Arc<Stats>,
    ) -> Result<(Self, watch::Receiver<Standing>), SequencerError> {
        let version = stores.log.head();
        let table = stores.log.counter_table(version).await?;
        // Nobody is connected yet.
        stores.peers.all_left().await?;
        let paused = stores.meta.paused().await?;
        stats.version.store(version.0, Relaxed);
        stats.paused.store(paused, Relaxed);
        // The bound picks up where it was: learned again from the log's tail (as logged).
        let quarantined = stores.peers.quarantined().await?;
        let mut influence = Influence::new(config.influence, config.quantizer, quarantined);
        let from = Version(version.0.saturating_sub(WINDOW as u64));
        let tail = stores.log.read(from, version).await?;
        influence.seed(tail.iter().map(|e| (e.peer, e.byte)));
        stats.publish_influence(&influence);
        let committees = match config.committee_size {
            Some(size) => Some(Committees::new(
                size,
                config.round_timeout,
                config.quantizer,
                stores.meta.committee_rounds_reserved().await?,
            )),
            None => None,
        };
        let (standing, standing_rx) = watch::channel(Standing { paused, peers: 0 });
        let sequencer = Sequencer {
            stores,
            cursor: LogCursor::new(version, table),
            paused,
            standing,
            sockets: HashMap::new(),
            next_socket: 0,
            pending: Vec::new(),
            influence,
            dropped: HashSet::new(),
            committees,
            config,
            stats,
        };
        Ok((sequencer, standing_rx))
    }

    /// Publishes the number of joined peers (to the standing and the report).
    fn count_peers(&self) {
        let peers = self.sockets.len();
        self.standing.send_modify(|s| s.peers = peers);
        self.stats.peers.store(peers as u64, Relaxed);
    }

    /// Runs until every command sender is gone. Returns early only if the store fails, in which
    /// case nothing more is acknowledged.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), SequencerError> {
        loop {
            let timeout = self.committees.as_ref().and_then(Committees::next_timeout);
            let cmd = match timeout {
                Some(at) => tokio::select! {
                    cmd = commands.recv() => cmd,
                    _ = tokio::time::sleep_until(at) => {
                        // A committee round waited out its timeout: decide or close it.
                        self.flush().await?;
                        continue;
                    }
                },
                None => commands.recv().await,
            };
            let Some(cmd) = cmd else { break };
            self.handle(cmd).await?;
            if self.pending.is_empty() {
                continue;
            }
            let deadline = Instant::now() + self.config.tick;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => self.handle(cmd).await?,
                        None => break,
                    },
                }
            }
            self.flush().await?;
        }
        self.flush().await
    }

    async fn handle(&mut self, cmd: Command) -> Result<(), SequencerError> {
        match cmd {
            Command::Join {
                resume,
                from,
                outbox,
                kick,
                reply,
            } => {
                let answer = self.join(resume, from).await?;
                let mut assign = None;
                if let Ok(joined) = &answer {
                    self.sockets.insert(
                        joined.peer,
                        PeerSocket {
                            id: joined.socket,
                            secret_digest: crate::secret::resume_digest(&joined.secret),
                            outbox,
                            kick: Some(kick),
                        },
                    );
                    self.count_peers();
                    if !joined.quarantined {
                        assign = Some(joined.peer);
                    }
                }
                let _ = reply.send(answer);
                // Its first rounds reach it after its catch-up, through its queue.
                if let Some(peer) = assign {
                    let frames = self.assignments(&[peer]).await?;
                    for (peer, frames) in frames {
                        self.send(peer, frames);
                    }
                }
            }
            Command::Propose {
                peer,
                proposed,
                base,
                floor,
                byte,
            } => {
                if self.sockets.contains_key(&peer) {
                    self.pending.push(Pending {
                        peer,
                        proposed,
                        base,
                        floor,
                        byte,
                    });
                }
            }
            Command::Leave { peer, socket } => {
                let ours = self.sockets.get(&peer).is_none_or(|s| s.id == socket);
                if ours {
                    self.sockets.remove(&peer);
                    // Unacknowledged, and its id may go to a newcomer before this tick ends.
                    self.pending.retain(|p| p.peer != peer);
                    if let Some(committees) = &mut self.committees {
                        committees.leave(peer);
                    }
                    self.count_peers();
                    let contributed = self.cursor.last_counter(peer).is_some();
                    self.stores.peers.left(peer, contributed).await?;
                }
            }
            Command::Pause { paused, reply } => {
                // A restart keeps the host's decision: written before it takes effect.
                let written = self.stores.meta.set_paused(paused).await.map_err(Arc::new);
                if written.is_ok() {
                    self.paused = paused;
                    self.standing.send_modify(|s| s.paused = paused);
                    self.stats.paused.store(paused, Relaxed);
                }
                let _ = reply.send(written.clone());
                written.map_err(SequencerError::Store)?;
            }
            Command::Drop { peer, reply } => {
                if let Some(socket) = self.sockets.get(&peer) {
                    self.dropped.insert((peer, socket.secret_digest));
                }
                let kick = self.sockets.get_mut(&peer).and_then(|s| s.kick.take());
                let dropped = kick.is_some_and(|kick| {
                    kick.send(Refusal::new(close::DROPPED, "dropped by the relay's host"))
                        .is_ok()
                });
                let _ = reply.send(dropped);
            }
            Command::Release { peer, reply } => {
                let written = self
                    .stores
                    .peers
                    .set_quarantined(peer, false)
                    .await
                    .map_err(Arc::new);
                let answer = written.clone().map(|()| self.influence.release(peer));
                if matches!(answer, Ok(true)) {
                    tracing::info!(%peer, "released from quarantine by the host");
                    self.stats.board.quarantined(peer, false);
                    self.stats.publish_influence(&self.influence);
                    // Its socket stopped proposing when it was quarantined; a new one (it
                    // reconnects on its own, resuming its id) contributes again.
                    if let Some(kick) = self.sockets.get_mut(&peer).and_then(|s| s.kick.take()) {
                        let _ = kick.send(Refusal::new(
                            close::GOING_AWAY,
                            "released from quarantine: reconnect to contribute again",
                        ));
                    }
                }
                let _ = reply.send(answer);
                written.map_err(SequencerError::Store)?;
            }
        }
        Ok(())
    }

    async fn join(
        &mut self,
        resume: Option<Resume>,
        from: Version,
    ) -> Result<Result<Joined, Refusal>, StoreError> {
        if self.sockets.len() >= self.config.max_peers {
            return Ok(Err(Refusal::new(
                close::FULL,
                format!(
                    "the relay has its maximum of {} peers",
                    self.config.max_peers
                ),
            )));
        }
        let head = self.cursor.version();
        if from > head {
            return Ok(Err(Refusal::new(
                close::AHEAD_OF_LOG,
                format!("asked for the log from version {from}; it has {head} entries"),
            )));
        }
        let (peer, secret) = match resume {
            // The secret first: whether an id is connected is nobody's business but its own.
            Some(Resume { peer, secret }) => {
                let digest = crate::secret::resume_digest(&secret);
                if self.dropped.contains(&(peer, digest)) {
                    return Ok(Err(Refusal::new(
                        close::DROPPED,
                        "dropped by the relay's host",
                    )));
                }
                if !self.stores.peers.resumable(peer, digest).await? {
                    return Ok(Err(Refusal::new(
                        close::UNKNOWN_PEER,
                        format!(
                            "peer {peer} is not known to this relay, or that is not its resume \
                             secret; join without it"
                        ),
                    )));
                }
                if self.sockets.contains_key(&peer) {
                    return Ok(Err(Refusal::new(
                        close::PEER_UNAVAILABLE,
                        format!("peer {peer} is connected on another socket"),
                    )));
                }
                self.stores.peers.rejoined(peer).await?;
                (peer, secret)
            }
            None => {
                let Ok(secret) = crate::secret::fresh_resume_secret() else {
                    return Ok(Err(Refusal::new(
                        close::GOING_AWAY,
                        "the relay could not draw a resume secret; try again",
                    )));
                };
                let digest = crate::secret::resume_digest(&secret);
                let peer = self.stores.peers.register(digest).await?;
                // The id may have been someone else's: its record and quarantine are not ours.
                self.influence.forget(peer);
                (peer, secret)
            }
        };
        let next_counter = self
            .cursor
            .last_counter(peer)
            .map_or(Counter(0), |c| Counter(c.0 + 1));
        self.next_socket += 1;
        Ok(Ok(Joined {
            peer,
            next_counter,
            live_from: head,
            secret,
            resumed: resume.is_some(),
            socket: self.next_socket,
            quarantined: self.influence.is_quarantined(peer),
        }))
    }

    /// Rounds for `peers` to hold their share, as `Assign` frames per peer. The round numbers
    /// are reserved in the store before anything is sent.
    async fn assignments(
        &mut self,
        peers: &[PeerId],
    ) -> Result<Vec<(PeerId, Vec<Bytes>)>, StoreError> {
        let Some(committees) = &mut self.committees else {
            return Ok(Vec::new());
        };
        let mut peers = peers.to_vec();
        peers.sort_unstable();
        peers.dedup();
        let now = Instant::now();
        let mut frames = Vec::new();
        for peer in peers {
            if !self.sockets.contains_key(&peer) || self.influence.is_quarantined(peer) {
                continue;
            }
            let rounds = committees.top_up(peer, now);
            if !rounds.is_empty() {
                let assigns = rounds
                    .into_iter()
                    .map(|round| Bytes::from(Message::Assign { round }.encode()))
                    .collect();
                frames.push((peer, assigns));
            }
        }
        if let Some(upto) = committees.reservation_due() {
            self.stores.meta.reserve_committee_rounds(upto).await?;
        }
        Ok(frames)
    }

    /// Logs `entry` at the head; returns its position.
    fn log(&mut self, tick: &mut Tick, entry: LogEntry) -> Version {
        let at = self.cursor.version();
        self.cursor.pack_one(&entry);
        tick.entries.push(entry);
        at
    }

    /// Logs a decided committee round under the shared id; each voter is acknowledged.
    fn log_round(&mut self, tick: &mut Tick, decided: Decided) {
        let entry = LogEntry {
            peer: PeerId::COMMITTEE,
            counter: decided.round,
            byte: decided.byte,
        };
        let at = self.log(tick, entry);
        for voter in decided.voters {
            tick.logged.push(voter);
            tick.acks.push((voter, decided.round, at));
        }
    }

    /// Decides one pending contribution or vote: logged, waiting in its round, or rejected.
    fn admit(&mut self, tick: &mut Tick, p: Pending, paused: bool) {
        let head = self.cursor.version().0;
        let reject = |tick: &mut Tick, reason, detail: String| {
            let counter = p.proposed.answer_counter();
            let msg = Message::Rejected {
                counter,
                reason,
                detail,
            };
            tick.rejections.push((p.peer, msg));
        };
        // A vote on a round this peer holds uses the assignment up, whatever becomes of it.
        let held = match (p.proposed, &mut self.committees) {
            (Proposed::Vote(round), Some(c)) => c.holds(p.peer, round),
            _ => false,
        };
        if self.influence.is_quarantined(p.peer) {
            if let Some(c) = &mut self.committees {
                c.leave(p.peer);
            }
            return reject(
                tick,
                RejectReason::Quarantined,
                "quarantined by the relay: too many of this peer's recent contributions were far \
                 larger than everyone else's"
                    .to_string(),
            );
        }
        let verdict = if paused {
            Err((RejectReason::Paused, "the job is paused".to_string()))
        } else {
            match (p.proposed, self.committees.is_some()) {
                (Proposed::Contribution(_), true) => Err((
                    RejectReason::NotAssigned,
                    "this job is decided by committees: peers vote on the rounds the relay \
                     assigns"
                        .to_string(),
                )),
                (Proposed::Vote(_), false) => Err((
                    RejectReason::NotAssigned,
                    "this job takes contributions, not committee votes".to_string(),
                )),
                (Proposed::Vote(round), true) if !held => Err((
                    RejectReason::NotAssigned,
                    format!("round {round} is not assigned to this peer"),
                )),
                (Proposed::Contribution(counter), false) => {
                    let last = self.cursor.last_counter(p.peer).map(|c| c.0);
                    next_counter(counter, last).and_then(|counter| {
                        check_base(p.base, p.floor, head, self.config.staleness_bound)
                            .map(|()| counter)
                    })
                }
                (Proposed::Vote(round), true) => {
                    check_base(p.base, p.floor, head, self.config.staleness_bound).map(|()| round)
                }
            }
        };
        let counter = match verdict {
            Ok(counter) => counter,
            Err((reason, detail)) => {
                if held {
                    if let Some(c) = &mut self.committees {
                        c.forfeit(p.peer, p.proposed.answer_counter());
                    }
                    tick.owed.push(p.peer);
                }
                return reject(tick, reason, detail);
            }
        };
        let admitted = self.influence.admit(p.peer, p.byte);
        if admitted.clipped {
            tick.clipped.push(p.peer);
        }
        if admitted.quarantined {
            tick.quarantined.push(p.peer);
        }
        let Some(committees) = &mut self.committees else {
            let entry = LogEntry {
                peer: p.peer,
                counter,
                byte: admitted.byte,
            };
            // The peer reads its acceptance from its entry in the log it is sent anyway.
            self.log(tick, entry);
            tick.logged.push(p.peer);
            return;
        };
        let voted = committees.vote(p.peer, counter, admitted.byte);
        if admitted.quarantined {
            // It earned its quarantine with this vote: its other places go to others.
            committees.leave(p.peer);
        } else {
            tick.owed.push(p.peer);
        }
        match voted {
            Ok(Some(decided)) => self.log_round(tick, decided),
            Ok(None) => {}
            Err((reason, detail)) => reject(tick, reason, detail),
        }
    }

    /// Validates the tick's contributions and votes and closes timed-out committee rounds,
    /// appends what is logged, then answers everybody.
    async fn flush(&mut self) -> Result<(), SequencerError> {
        let closed = match &mut self.committees {
            Some(c) => c.close_timed_out(Instant::now()),
            None => Closed::default(),
        };
        if self.pending.is_empty() && closed == Closed::default() {
            return Ok(());
        }
        let first = self.cursor.version();
        let paused = self.paused;
        let mut tick = Tick::default();
        for decided in closed.decided {
            self.log_round(&mut tick, decided);
        }
        for (peer, round) in closed.abandoned {
            let detail = format!(
                "round {round} waited {:?} without a majority of its votes",
                self.config.round_timeout
            );
            tick.rejections.push((
                peer,
                Message::Rejected {
                    counter: round,
                    reason: RejectReason::RoundClosed,
                    detail,
                },
            ));
        }
        for p in std::mem::take(&mut self.pending) {
            self.admit(&mut tick, p, paused);
        }
        let Tick {
            entries,
            logged,
            acks,
            rejections,
            clipped,
            quarantined,
            owed,
        } = tick;
        // Each peer's frames of this tick go into its queue as one item.
        let mut outgoing: HashMap<PeerId, Vec<Bytes>> = HashMap::new();
        if !entries.is_empty() {
            // Durable before anyone hears of it. A failed append stops the sequencer before
            // anything of this tick is answered.
            let n = entries.len() as u64;
            self.stores.log.append(first, entries.into()).await?;
            self.stats.version.store(self.cursor.version().0, Relaxed);
            self.stats.record_accepted(n);
        }
        for &(peer, counter, version) in &acks {
            let ack = Bytes::from(Message::Accepted { counter, version }.encode());
            outgoing.entry(peer).or_default().push(ack);
        }
        self.stats
            .rejected
            .fetch_add(rejections.len() as u64, Relaxed);
        self.stats.board.verdicts(
            &per_peer(logged.iter().copied()),
            &per_peer(rejections.iter().map(|(peer, _)| *peer)),
        );
        self.stats.board.clipped(&per_peer(clipped.iter().copied()));
        self.stats.clipped.fetch_add(clipped.len() as u64, Relaxed);
        for peer in quarantined {
            // After the append: a crash in between loses the mark, and the peer earns it again.
            self.stores.peers.set_quarantined(peer, true).await?;
            tracing::warn!(%peer, "quarantined: its contributions keep hitting the clipping bound");
            self.stats.board.quarantined(peer, true);
        }
        self.stats.publish_influence(&self.influence);
        for (peer, msg) in rejections {
            outgoing
                .entry(peer)
                .or_default()
                .push(Bytes::from(msg.encode()));
        }
        for (peer, assigns) in self.assignments(&owed).await? {
            outgoing.entry(peer).or_default().extend(assigns);
        }
        for (peer, frames) in outgoing {
            self.send(peer, frames);
        }
        Ok(())
    }

    /// Queues one tick's frames for a peer, to follow the log as far as it is appended; drops
    /// the peer if its queue is full.
    fn send(&mut self, peer: PeerId, frames: Vec<Bytes>) {
        let after = self.cursor.version();
        let Some(socket) = self.sockets.get_mut(&peer) else {
            return;
        };
        match socket.outbox.try_send(Outgoing { after, frames }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(kick) = socket.kick.take() {
                    let _ = kick.send(Refusal::new(
                        close::SLOW_CONSUMER,
                        "dropped: the peer did not read the log fast enough and its queue filled",
                    ));
                }
                self.sockets.remove(&peer);
                self.stats.slow_consumers_dropped.fetch_add(1, Relaxed);
                self.count_peers();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sockets.remove(&peer);
                self.count_peers();
            }
        }
    }
}

/// One tick's outcome, gathered before anything is written or sent.
#[derive(Default)]
struct Tick {
    entries: Vec<LogEntry>,
    /// Whose contribution or vote each logged entry took (a vote's round counts for every
    /// voter).
    logged: Vec<PeerId>,
    /// Committee voters who hear `Accepted`: for which round, at which position. A contributor
    /// hears nothing; its entry in the log is its acceptance.
    acks: Vec<(PeerId, Counter, Version)>,
    rejections: Vec<(PeerId, Message)>,
    clipped: Vec<PeerId>,
    quarantined: Vec<PeerId>,
    /// Committee members owed new rounds for the assignments this tick used up.
    owed: Vec<PeerId>,
}

/// Checks one contribution against the log's head; returns its full counter.
#[cfg(test)]
fn validate(
    p: &Pending,
    head: u64,
    last_counter: Option<u64>,
    staleness_bound: u64,
) -> Result<Counter, (RejectReason, String)> {
    let Proposed::Contribution(counter) = p.proposed else {
        panic!("validate checks contributions");
    };
    let counter = next_counter(counter, last_counter)?;
    check_base(p.base, p.floor, head, staleness_bound).map(|()| counter)
}

/// A contribution's full counter, if it comes after the peer's last logged one.
fn next_counter(
    counter: Serial,
    last_counter: Option<u64>,
) -> Result<Counter, (RejectReason, String)> {
    counter.after(last_counter).map(Counter).ok_or_else(|| {
        (
            RejectReason::CounterNotIncreasing,
            format!(
                "counter (low bits {}) is not after the last logged counter {:?}",
                counter.0, last_counter
            ),
        )
    })
}

/// Checks a base version (low bits `base`, at or after `floor`) against the log's head.
fn check_base(
    base: Serial,
    floor: Version,
    head: u64,
    staleness_bound: u64,
) -> Result<(), (RejectReason, String)> {
    // A base is at or after the floor, so within 65 536 of it it is recovered exactly; a floor
    // that far behind the head means a base at least that stale.
    let floor = floor.0;
    if head.saturating_sub(floor) >= 1 << 16 {
        return Err((
            RejectReason::Stale,
            format!(
                "the peer's replica was last known at version {floor}, more than 65 536 behind \
                 the log at {head}"
            ),
        ));
    }
    let low = base.0;
    let base = base.at_or_after(floor);
    if base > head {
        return Err((
            RejectReason::FromTheFuture,
            format!(
                "base version (low bits {low}, at or after {floor}) is ahead of the log at {head}"
            ),
        ));
    }
    let lag = head - base;
    if lag > staleness_bound {
        return Err((
            RejectReason::Stale,
            format!(
                "computed at version {base}, {lag} behind the log; the bound is {staleness_bound}"
            ),
        ));
    }
    Ok(())
}

/// How many of `peers` each peer is.
fn per_peer(peers: impl Iterator<Item = PeerId>) -> Vec<(PeerId, u64)> {
    let mut counts: HashMap<PeerId, u64> = HashMap::new();
    for peer in peers {
        *counts.entry(peer).or_default() += 1;
    }
    counts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(counter: u64, base: u64) -> Pending {
        pending_above(counter, base, 0)
    }

    fn pending_above(counter: u64, base: u64, floor: u64) -> Pending {
        Pending {
            peer: PeerId(0),
            proposed: Proposed::Contribution(Serial::of(counter)),
            base: Serial::of(base),
            floor: Version(floor),
            byte: 1,
        }
    }

    #[test]
    fn contributions_are_validated_against_the_head() {
        assert_eq!(validate(&pending(0, 0), 0, None, 64), Ok(Counter(0)));
        assert_eq!(validate(&pending(5, 90), 100, Some(4), 64), Ok(Counter(5)));
        assert_eq!(
            validate(&pending(4, 90), 100, Some(4), 64).unwrap_err().0,
            RejectReason::CounterNotIncreasing
        );
        assert_eq!(
            validate(&pending(5, 10), 100, Some(4), 64).unwrap_err().0,
            RejectReason::Stale
        );
        assert_eq!(
            validate(&pending(5, 101), 100, Some(4), 64).unwrap_err().0,
            RejectReason::FromTheFuture
        );
    }

    #[test]
    fn a_base_more_than_65536_behind_is_stale_not_wrapped() {
        let head = 200_000;
        // Computed at 200 000 − 65 536 − 10: its low bits are those of 199 990, 10 behind.
        let base = head - 65_536 - 10;
        // Against the head alone it would pass a bound of 64; the peer's floor says otherwise.
        assert_eq!(Serial::of(base).at_or_before(head), Some(head - 10));
        let verdict = validate(&pending_above(5, base, base), head, Some(4), 64);
        assert_eq!(verdict.unwrap_err().0, RejectReason::Stale);
        // A recent floor recovers a recent base exactly.
        let fresh = validate(&pending_above(5, head - 10, head - 300), head, Some(4), 64);
        assert_eq!(fresh, Ok(Counter(5)));
        // Below its floor a base cannot be; its low bits then name a version after the head.
        let ahead = validate(&pending_above(5, head - 400, head - 300), head, Some(4), 64);
        assert_eq!(ahead.unwrap_err().0, RejectReason::FromTheFuture);
    }
}

#[cfg(test)]
mod on_the_seam;
