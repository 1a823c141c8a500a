//! The sequencer: the one place that decides the log.
//!
//! It is a single task. Sockets send it commands; it collects contributions for one tick (a few
//! milliseconds), validates each against the log as it stands at that position, commits the
//! accepted ones to the store in one transaction, and only then acknowledges them and sends the
//! batch to every peer's queue. A peer whose queue is full is dropped; nobody waits for it.

use crate::follower::FollowerInput;
use crate::influence::{Influence, InfluenceConfig, WINDOW};
use crate::stats::Stats;
use crate::store::{CHECKPOINT_EVERY, Store, StoreError};
use bytes::Bytes;
use protocol::{
    Counter, LogCursor, LogEntry, Message, PeerId, Quantizer, RejectReason, Resume, ResumeSecret,
    Serial, Version, close,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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
    /// The version of the first entry the peer will receive through its queue; everything
    /// before it is durable in the store.
    pub live_from: Version,
    /// What resumes this id after a reconnect (the one it showed, when it resumed).
    pub secret: ResumeSecret,
    /// Whether the peer resumed its id (else the id is new to it).
    pub resumed: bool,
    /// Names this session of the peer in its `Leave`.
    pub session: u64,
    /// The peer resumed an id that is quarantined.
    pub quarantined: bool,
}

/// A request to the sequencer.
#[derive(Debug)]
pub enum Command {
    Join {
        resume: Option<Resume>,
        from: Version,
        outbox: mpsc::Sender<Vec<Bytes>>,
        kick: oneshot::Sender<Refusal>,
        reply: oneshot::Sender<Result<Joined, Refusal>>,
    },
    Contribute {
        peer: PeerId,
        counter: Serial,
        base: Serial,
        /// A version this peer's replica has certainly reached (see `Serial::at_or_after`).
        floor: Version,
        byte: u8,
    },
    /// A socket ended. `session` is its [`Joined::session`]: a peer that already resumed on
    /// another socket stays.
    Leave { peer: PeerId, session: u64 },
    /// The host pauses or resumes the job; the reply comes once that is durable.
    Pause {
        paused: bool,
        reply: oneshot::Sender<Result<(), String>>,
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
        reply: oneshot::Sender<Result<bool, String>>,
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
}

struct Session {
    id: u64,
    outbox: mpsc::Sender<Vec<Bytes>>,
    kick: Option<oneshot::Sender<Refusal>>,
}

struct Pending {
    peer: PeerId,
    counter: Serial,
    base: Serial,
    /// A version the peer's replica has certainly reached: its base is at or after it.
    floor: Version,
    byte: u8,
}

/// The sequencer's state: the store's write connection and the log's head.
pub struct Sequencer {
    store: Store,
    cursor: LogCursor,
    sessions: HashMap<PeerId, Session>,
    /// The next [`Joined::session`].
    next_session: u64,
    pending: Vec<Pending>,
    /// The clipping bound and the quarantined peers.
    influence: Influence,
    config: SequencerConfig,
    stats: Arc<Stats>,
    follower: std::sync::mpsc::Sender<FollowerInput>,
}

impl Sequencer {
    /// A sequencer continuing the log in `store`.
    pub fn new(
        store: Store,
        config: SequencerConfig,
        stats: Arc<Stats>,
        follower: std::sync::mpsc::Sender<FollowerInput>,
    ) -> Result<Self, StoreError> {
        let version = store.version()?;
        let table = store.counter_table(version)?;
        // Nobody is connected yet; and joins from now on read the table from here.
        store.all_left()?;
        store.put_checkpoint(version, &table)?;
        stats.version.store(version.0, Relaxed);
        stats.paused.store(store.paused()?, Relaxed);
        // The bound picks up where it was: learned again from the log's tail (as logged).
        let mut influence =
            Influence::new(config.influence, config.quantizer, store.quarantined()?);
        let tail = store.entries(Version(version.0.saturating_sub(WINDOW as u64)), version)?;
        influence.seed(tail.iter().map(|e| (e.peer, e.byte)));
        stats.publish_influence(&influence);
        Ok(Sequencer {
            store,
            cursor: LogCursor::new(version, table),
            sessions: HashMap::new(),
            next_session: 0,
            pending: Vec::new(),
            influence,
            config,
            stats,
            follower,
        })
    }

    /// Runs until every command sender is gone. Returns early only if the store fails, in which
    /// case nothing more is acknowledged.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), StoreError> {
        while let Some(cmd) = commands.recv().await {
            self.handle(cmd)?;
            if self.pending.is_empty() {
                continue;
            }
            let deadline = Instant::now() + self.config.tick;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => self.handle(cmd)?,
                        None => break,
                    },
                }
            }
            self.flush()?;
        }
        self.flush()
    }

    fn handle(&mut self, cmd: Command) -> Result<(), StoreError> {
        match cmd {
            Command::Join {
                resume,
                from,
                outbox,
                kick,
                reply,
            } => {
                let answer = self.join(resume, from)?;
                if let Ok(joined) = &answer {
                    self.sessions.insert(
                        joined.peer,
                        Session {
                            id: joined.session,
                            outbox,
                            kick: Some(kick),
                        },
                    );
                    self.stats.peers.store(self.sessions.len() as u64, Relaxed);
                }
                let _ = reply.send(answer);
            }
            Command::Contribute {
                peer,
                counter,
                base,
                floor,
                byte,
            } => {
                if self.sessions.contains_key(&peer) {
                    self.pending.push(Pending {
                        peer,
                        counter,
                        base,
                        floor,
                        byte,
                    });
                }
            }
            Command::Leave { peer, session } => {
                let ours = self.sessions.get(&peer).is_none_or(|s| s.id == session);
                if ours {
                    self.sessions.remove(&peer);
                    // Unacknowledged, and its id may go to a newcomer before this tick ends.
                    self.pending.retain(|p| p.peer != peer);
                    self.stats.peers.store(self.sessions.len() as u64, Relaxed);
                    let contributed = self.cursor.last_counter(peer).is_some();
                    tokio::task::block_in_place(|| self.store.left(peer, contributed))?;
                }
            }
            Command::Pause { paused, reply } => {
                // A restart keeps the host's decision: written before it takes effect.
                let written = self.store.set_paused(paused);
                if written.is_ok() {
                    self.stats.paused.store(paused, Relaxed);
                }
                let _ = reply.send(written.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                written?;
            }
            Command::Drop { peer, reply } => {
                let kick = self.sessions.get_mut(&peer).and_then(|s| s.kick.take());
                let dropped = kick.is_some_and(|kick| {
                    kick.send(Refusal::new(close::DROPPED, "dropped by the relay's host"))
                        .is_ok()
                });
                let _ = reply.send(dropped);
            }
            Command::Release { peer, reply } => {
                let written =
                    tokio::task::block_in_place(|| self.store.set_quarantined(peer, false));
                let answer = written
                    .as_ref()
                    .map(|_| self.influence.release(peer))
                    .map_err(|e| e.to_string());
                if answer == Ok(true) {
                    tracing::info!(%peer, "released from quarantine by the host");
                    self.stats.board.quarantined(peer, false);
                    self.stats.publish_influence(&self.influence);
                    // Its session stopped proposing when it was quarantined; a new one (it
                    // reconnects on its own, resuming its id) contributes again.
                    if let Some(kick) = self.sessions.get_mut(&peer).and_then(|s| s.kick.take()) {
                        let _ = kick.send(Refusal::new(
                            close::GOING_AWAY,
                            "released from quarantine: reconnect to contribute again",
                        ));
                    }
                }
                let _ = reply.send(answer);
                written?;
            }
        }
        Ok(())
    }

    fn join(
        &mut self,
        resume: Option<Resume>,
        from: Version,
    ) -> Result<Result<Joined, Refusal>, StoreError> {
        if self.sessions.len() >= self.config.max_peers {
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
                if !tokio::task::block_in_place(|| self.store.resumable(peer, &digest))? {
                    return Ok(Err(Refusal::new(
                        close::UNKNOWN_PEER,
                        format!(
                            "peer {peer} is not known to this relay, or that is not its resume \
                             secret; join without it"
                        ),
                    )));
                }
                if self.sessions.contains_key(&peer) {
                    return Ok(Err(Refusal::new(
                        close::PEER_UNAVAILABLE,
                        format!("peer {peer} is connected on another socket"),
                    )));
                }
                tokio::task::block_in_place(|| self.store.rejoined(peer))?;
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
                let peer = tokio::task::block_in_place(|| self.store.new_peer(&digest))?;
                // The id may have been someone else's: its record and quarantine are not ours.
                self.influence.forget(peer);
                (peer, secret)
            }
        };
        let next_counter = self
            .cursor
            .last_counter(peer)
            .map_or(Counter(0), |c| Counter(c.0 + 1));
        self.next_session += 1;
        Ok(Ok(Joined {
            peer,
            next_counter,
            live_from: head,
            secret,
            resumed: resume.is_some(),
            session: self.next_session,
            quarantined: self.influence.is_quarantined(peer),
        }))
    }

    /// Validates the tick's contributions, commits the accepted ones, then tells everybody.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.cursor.version();
        let paused = self.stats.paused.load(Relaxed);
        let mut entries = Vec::with_capacity(self.pending.len());
        let mut packed = Vec::with_capacity(self.pending.len());
        let mut acks = Vec::with_capacity(self.pending.len());
        let mut checkpoints = Vec::new();
        let mut rejections = Vec::new();
        let mut clipped = Vec::new();
        let mut quarantined = Vec::new();
        // Each peer's frames of this tick go into its queue as one item.
        let mut outgoing: HashMap<PeerId, Vec<Bytes>> = HashMap::new();
        for p in std::mem::take(&mut self.pending) {
            let head = self.cursor.version().0;
            let last = self.cursor.last_counter(p.peer).map(|c| c.0);
            let verdict = if paused {
                Err((RejectReason::Paused, "the job is paused".to_string()))
            } else if self.influence.is_quarantined(p.peer) {
                Err((
                    RejectReason::Quarantined,
                    "quarantined by the relay: too many of this peer's recent contributions were \
                     far larger than everyone else's"
                        .to_string(),
                ))
            } else {
                validate(&p, head, last, self.config.staleness_bound)
            };
            match verdict {
                Ok(counter) => {
                    let admitted = self.influence.admit(p.peer, p.byte);
                    if admitted.clipped {
                        clipped.push(p.peer);
                    }
                    if admitted.quarantined {
                        quarantined.push(p.peer);
                    }
                    let entry = LogEntry {
                        peer: p.peer,
                        counter,
                        byte: admitted.byte,
                    };
                    packed.push(self.cursor.pack_one(&entry));
                    entries.push(entry);
                    acks.push((p.peer, counter, Version(head)));
                    let reached = self.cursor.version();
                    if reached.0.is_multiple_of(CHECKPOINT_EVERY) {
                        checkpoints.push((reached, self.cursor.table()));
                    }
                }
                Err((reason, detail)) => rejections.push((
                    p.peer,
                    Message::Rejected {
                        counter: Counter(u64::from(p.counter.0)),
                        reason,
                        detail,
                    },
                )),
            }
        }
        let entries_peers: Vec<PeerId> = entries.iter().map(|e| e.peer).collect();
        if !entries.is_empty() {
            // Durable before anyone hears of it.
            tokio::task::block_in_place(|| self.store.append(first, &entries, &checkpoints))?;
            self.stats.version.store(self.cursor.version().0, Relaxed);
            self.stats.record_accepted(entries.len() as u64);
            let batch = Bytes::from(
                Message::LogBatch {
                    first_version: first,
                    entries: packed,
                }
                .encode(),
            );
            let _ = self.follower.send(FollowerInput::Entries(entries));
            for peer in self.sessions.keys() {
                outgoing.entry(*peer).or_default().push(batch.clone());
            }
            for (peer, counter, version) in acks {
                let ack = Bytes::from(Message::Accepted { counter, version }.encode());
                outgoing.entry(peer).or_default().push(ack);
            }
        }
        self.stats
            .rejected
            .fetch_add(rejections.len() as u64, Relaxed);
        self.stats.board.verdicts(
            &per_peer(entries_peers.iter().copied()),
            &per_peer(rejections.iter().map(|(peer, _)| *peer)),
        );
        self.stats.board.clipped(&per_peer(clipped.iter().copied()));
        self.stats.clipped.fetch_add(clipped.len() as u64, Relaxed);
        for peer in quarantined {
            // After the append: a crash in between loses the mark, and the peer earns it again.
            tokio::task::block_in_place(|| self.store.set_quarantined(peer, true))?;
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
        for (peer, frames) in outgoing {
            self.send(peer, frames);
        }
        Ok(())
    }

    /// Queues one tick's frames for a peer; drops the peer if its queue is full.
    fn send(&mut self, peer: PeerId, frames: Vec<Bytes>) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        match session.outbox.try_send(frames) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(kick) = session.kick.take() {
                    let _ = kick.send(Refusal::new(
                        close::SLOW_CONSUMER,
                        "dropped: the peer did not read the log fast enough and its queue filled",
                    ));
                }
                self.sessions.remove(&peer);
                self.stats.slow_consumers_dropped.fetch_add(1, Relaxed);
                self.stats.peers.store(self.sessions.len() as u64, Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sessions.remove(&peer);
                self.stats.peers.store(self.sessions.len() as u64, Relaxed);
            }
        }
    }
}

/// Checks one contribution against the log's head; returns its full counter.
fn validate(
    p: &Pending,
    head: u64,
    last_counter: Option<u64>,
    staleness_bound: u64,
) -> Result<Counter, (RejectReason, String)> {
    let counter = p.counter.after(last_counter).ok_or_else(|| {
        (
            RejectReason::CounterNotIncreasing,
            format!(
                "counter (low bits {}) is not after the last logged counter {:?}",
                p.counter.0, last_counter
            ),
        )
    })?;
    // A base is at or after the floor, so within 65 536 of it it is recovered exactly; a floor
    // that far behind the head means a base at least that stale.
    let floor = p.floor.0;
    if head.saturating_sub(floor) >= 1 << 16 {
        return Err((
            RejectReason::Stale,
            format!(
                "the peer's replica was last known at version {floor}, more than 65 536 behind \
                 the log at {head}"
            ),
        ));
    }
    let base = p.base.at_or_after(floor);
    if base > head {
        return Err((
            RejectReason::FromTheFuture,
            format!(
                "base version (low bits {}, at or after {floor}) is ahead of the log at {head}",
                p.base.0
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
    Ok(Counter(counter))
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
            counter: Serial::of(counter),
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
