//! A peer's side of the relay protocol, without any I/O.
//!
//! The native worker (tokio + tungstenite) and the browser client (wasm, the page's websocket)
//! move bytes differently but must speak exactly the same protocol, so the protocol lives here
//! once: a [`Session`] is one connection's state machine. The caller feeds it each message the
//! relay sends, asks it for contributions, and sends whatever it puts in its outbox, in order.
//!
//! A session goes `Hello → Welcome → CounterTable → live`. While the replica is behind the
//! relay's version at `Welcome` it is *catching up* and proposes nothing (a contribution computed
//! on old weights would only be rejected as stale). Every time the replica reaches a multiple of
//! [`HASH_REPORT_INTERVAL`] the session hashes θ and queues a `HashReport`.
//!
//! A peer proposes `lanes` contributions per step (one batched forward pass on a GPU) and keeps
//! computing while earlier ones are in flight, up to a window (32 by default, at most half the
//! job's staleness bound). When the relay turns contributions down as stale the peer is too slow for
//! the swarm's pace: [`Session::behind`] says by how many versions, so nobody calls that training.
//!
//! In a committee job a peer proposes no directions of its own: the relay assigns it rounds
//! (`Assign`), each a direction shared by several peers ([`PeerId::COMMITTEE`] with the round as
//! its counter), and the peer answers each with a `Vote`. The relay logs the median of a round's
//! votes; the window, lanes and answers work as for contributions, keyed by round.

use crate::data::Split;
use crate::replica::{Proposal, Replica};
use protocol::message::MAX_RUN;
use protocol::{
    Counter, HASH_REPORT_INTERVAL, LogCursor, LogEntry, Message, PROTOCOL_VERSION, PeerId,
    RejectReason, Resume, ResumeSecret, Serial, Version, WeightHash,
};
use std::collections::VecDeque;

/// A local loss is reported to the relay every this many contributions.
pub const LOSS_REPORT_EVERY: u64 = 64;
/// Assignments a session keeps at most: the relay hands out a few at a time, so more is a
/// relay gone wrong, and the oldest are the first to have closed.
const MAX_ASSIGNED: usize = 1024;
/// Contributions in flight at first when the window adapts (or half the staleness bound, if
/// less): enough to keep computing across a round trip, few enough that a fast peer's
/// contributions stay fresh.
pub const DEFAULT_WINDOW: u64 = 32;
/// Most contributions in flight an adapting window grows to (or half the staleness bound).
pub const MAX_WINDOW: u64 = 512;

/// What a peer keeps across connections: its replica, its identity and its tallies.
#[derive(Debug)]
pub struct PeerState {
    pub replica: Replica,
    /// Assigned by the relay at the first `Welcome`; a reconnect resumes it.
    pub id: Option<PeerId>,
    /// What the relay's `Welcome` handed out to resume `id` with.
    pub secret: Option<ResumeSecret>,
    /// This peer's contributions the relay logged.
    pub accepted: u64,
    /// This peer's contributions the relay turned down.
    pub rejected: u64,
    /// Mean of the two perturbed losses of the latest proposal.
    pub last_loss: Option<f32>,
    /// Stop applying the log at exactly this version (peers compare hashes at equal versions).
    pub until_version: Option<u64>,
    /// Contributions proposed per step, in one batched forward pass (at least 1).
    pub lanes: usize,
    /// A private job's noise and accountant: its host sets it (it knows the data's size);
    /// without it, a private job's session proposes nothing.
    pub privacy: Option<crate::privacy::PrivatePeer>,
}

impl PeerState {
    pub fn new(replica: Replica) -> Self {
        PeerState {
            replica,
            id: None,
            secret: None,
            accepted: 0,
            rejected: 0,
            last_loss: None,
            until_version: None,
            lanes: 1,
            privacy: None,
        }
    }
}

/// Why a session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    /// The replica no longer matches the log: reload the snapshot, then reconnect.
    #[error("resync: {0}")]
    Resync(String),
    /// The relay sent an `Error`: it will not take this peer.
    #[error("{0}")]
    Refused(String),
    /// Reconnecting cannot help: a protocol violation or a failure of this peer's engine.
    #[error("{0}")]
    Fatal(String),
}

/// What a message from the relay changed, for the caller's display and pacing.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The relay admitted this peer; the log stood at `head`.
    Welcome { peer: PeerId, head: Version },
    /// The counter table arrived: the log stream starts now.
    Streaming,
    /// Log entries were applied; `hashes` are the weight hashes at the boundaries crossed (each
    /// already queued as a `HashReport`).
    Applied {
        entries: usize,
        /// How many of them were this peer's contributions in flight: accepted.
        accepted: usize,
        hashes: Vec<(Version, WeightHash)>,
    },
    /// A committee vote was logged.
    Accepted,
    Rejected {
        reason: RejectReason,
        detail: String,
    },
    /// Nothing this peer acts on.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitWelcome,
    AwaitTable,
    Live,
}

/// A contribution sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    counter: Counter,
    /// The version it was computed at.
    base: Version,
    /// This peer's entries seen in the log when it was proposed.
    own_logged: u64,
}

/// One connection to the relay.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    cursor: LogCursor,
    next_counter: Counter,
    /// The replica's version when this connection began.
    start: Version,
    /// The log's version when the relay welcomed us: the end of catching up.
    head: Version,
    /// Contributions sent and not yet answered, oldest first.
    in_flight: VecDeque<InFlight>,
    /// This peer's entries seen in the log on this connection.
    own_logged: u64,
    window: usize,
    /// The most [`Session::fit_window`] may set; `None`: the window was fixed by the host.
    adapts_up_to: Option<usize>,
    /// Smoothed staleness other peers give this peer's accepted contributions: their log
    /// entries between each one's base version and its place.
    staleness: Option<f64>,
    sent: u64,
    /// How many versions late the latest answered contribution was, when it was turned down as
    /// stale; `None` once one is accepted.
    behind: Option<u64>,
    /// The version a stale rejection proves the log had reached (its base plus the staleness
    /// bound, and one): a step on a replica short of it would be turned down too, so none is
    /// computed until the replica gets there, and the time goes to applying the log instead.
    resume_at: Version,
    /// The relay quarantined this peer (its contributions are rejected): it follows the log
    /// and proposes nothing on this connection.
    quarantined: bool,
    /// The job's steps are committee votes: propose only on assigned rounds.
    committee: bool,
    /// Committee rounds the relay assigned and this peer has not voted on, oldest first.
    assigned: VecDeque<Counter>,
    /// Most contributions a second the relay takes from this peer (its `Welcome` says).
    rate_limit: Option<u32>,
    outbox: Vec<Message>,
}

impl Session {
    /// Starts a connection: queues the `Hello` for `peer`'s replica. At most `window`
    /// contributions are in flight, never fewer than one step's lanes; `0`: the window adapts
    /// ([`Session::fit_window`]), from [`DEFAULT_WINDOW`] up to [`MAX_WINDOW`], never beyond
    /// half the job's staleness bound.
    pub fn new(peer: &PeerState, token: &str, window: usize) -> Self {
        let half_bound = (peer.replica.job().hyper().staleness_bound / 2).max(1);
        let lanes = peer.lanes.max(1);
        let (window, adapts_up_to) = if window == 0 {
            let most = (half_bound.min(MAX_WINDOW) as usize).max(lanes);
            (half_bound.min(DEFAULT_WINDOW) as usize, Some(most))
        } else {
            (window, None)
        };
        let from = peer.replica.version();
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            job: peer.replica.job().id,
            resume: peer
                .id
                .zip(peer.secret)
                .map(|(peer, secret)| Resume { peer, secret }),
            from,
            token: token.to_string(),
        };
        Session {
            phase: Phase::AwaitWelcome,
            cursor: LogCursor::new(from, []),
            next_counter: Counter(0),
            start: from,
            head: from,
            in_flight: VecDeque::new(),
            own_logged: 0,
            window: window.max(lanes),
            adapts_up_to,
            staleness: None,
            sent: 0,
            behind: None,
            resume_at: from,
            quarantined: false,
            committee: peer.replica.job().committee().is_some(),
            assigned: VecDeque::new(),
            rate_limit: None,
            outbox: vec![hello],
        }
    }

    /// Messages to send to the relay, oldest first.
    pub fn take_outbox(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// The replica's version when this connection began.
    pub fn start(&self) -> Version {
        self.start
    }

    /// The relay's version when it welcomed this peer.
    pub fn head(&self) -> Version {
        self.head
    }

    /// Whether the relay has welcomed this peer and the log is streaming.
    pub fn streaming(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Streaming the log but still behind the version the relay had at `Welcome`.
    pub fn catching_up(&self, peer: &PeerState) -> bool {
        self.phase != Phase::Live || peer.replica.version() < self.head
    }

    /// Contributions sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The most contributions in flight at once.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Sizes an adapting window to cover `round_trips` of this peer's own pace: a contribution
    /// takes `contribution_ms` to compute and `round_trip_ms` to be answered, so that many in
    /// flight keep it computing while answers travel, and no more keeps its contributions as
    /// fresh as they can be. Within [`DEFAULT_WINDOW`]'s floor (or less, for a small
    /// staleness bound) and the most set at the start; a fixed window stays as it is.
    pub fn fit_window(&mut self, contribution_ms: f64, round_trip_ms: f64, round_trips: f64) {
        let Some(most) = self.adapts_up_to else {
            return;
        };
        if !(contribution_ms > 0.0 && round_trip_ms >= 0.0) {
            return;
        }
        let floor = (DEFAULT_WINDOW as usize).min(most);
        // Where other peers' entries already take half the most the window may grow to (a
        // quarter of the staleness bound, or 256) between a contribution's base and its place
        // (a busy swarm), a larger window only makes every peer's contributions staler: ten workers on two cores learned spirals to 75–90 %
        // instead of 92 % and more.
        if self.staleness.is_some_and(|s| s > most as f64 / 2.0) {
            self.window = floor;
            return;
        }
        let wanted = (round_trips * round_trip_ms / contribution_ms).ceil();
        self.window = (wanted.min(most as f64) as usize).max(floor);
    }

    /// How many versions behind the log this peer's latest answered contribution arrived, when
    /// the relay turned it down as stale (and none has been accepted since): the peer cannot
    /// keep up with the swarm, and is catching up rather than training.
    pub fn behind(&self) -> Option<u64> {
        self.behind
    }

    /// Whether the relay quarantined this peer: it rejects its contributions until its host
    /// releases it.
    pub fn quarantined(&self) -> bool {
        self.quarantined
    }

    /// Most contributions (or votes) a second the relay takes from this peer, once welcomed.
    pub fn rate_limit(&self) -> Option<u32> {
        self.rate_limit
    }

    /// Whether the job's steps are committee votes.
    pub fn committee(&self) -> bool {
        self.committee
    }

    /// Committee rounds assigned and not yet voted on.
    pub fn assigned(&self) -> usize {
        self.assigned.len()
    }

    /// Whether a contribution may be proposed now: live, caught up, not quarantined, room in
    /// the window, and (in a committee job) a round to vote on.
    pub fn ready_to_contribute(&self, peer: &PeerState) -> bool {
        !self.catching_up(peer)
            && !self.quarantined
            && peer.replica.version() >= self.resume_at
            && self.in_flight.len() < self.window
            && (!self.committee || !self.assigned.is_empty())
    }

    /// Removes an answered contribution from the window; its base version if it was there.
    /// A rejection names a contribution by the 16 bits it was sent with (the relay cannot
    /// always resolve more), so those match too where no counter matches in full.
    fn answered(&mut self, counter: Counter) -> Option<InFlight> {
        let exact = self.in_flight.iter().position(|f| f.counter == counter);
        let sent_as = || {
            let low = u16::try_from(counter.0).ok().filter(|_| !self.committee)?;
            self.in_flight
                .iter()
                .position(|f| Serial::of(f.counter.0).0 == low)
        };
        let at = exact.or_else(sent_as)?;
        self.in_flight.remove(at)
    }

    /// Handles one message from the relay.
    pub async fn receive(
        &mut self,
        peer: &mut PeerState,
        msg: Message,
    ) -> Result<Received, SessionEnd> {
        match (self.phase, msg) {
            (_, Message::Error { code, message }) => Err(SessionEnd::Refused(format!(
                "relay error {code}: {message}"
            ))),
            (_, Message::Resync { reason, .. }) => Err(SessionEnd::Resync(reason)),
            (Phase::AwaitTable | Phase::Live, Message::Assign { round }) if self.committee => {
                if self.assigned.len() == MAX_ASSIGNED {
                    self.assigned.pop_front();
                }
                self.assigned.push_back(round);
                Ok(Received::Nothing)
            }
            (
                Phase::AwaitWelcome,
                Message::Welcome {
                    peer: id,
                    version,
                    next_counter,
                    secret,
                    rate_limit,
                    ..
                },
            ) => {
                peer.id = Some(id);
                peer.secret = Some(secret);
                self.next_counter = next_counter;
                self.rate_limit = (rate_limit > 0).then_some(rate_limit);
                self.head = version;
                self.phase = Phase::AwaitTable;
                Ok(Received::Welcome {
                    peer: id,
                    head: version,
                })
            }
            (Phase::AwaitTable, Message::CounterTable { version, entries }) => {
                if version != peer.replica.version() {
                    return Err(SessionEnd::Fatal(format!(
                        "the relay streams from version {version}, the replica is at {}",
                        peer.replica.version()
                    )));
                }
                self.cursor = LogCursor::from_table(version, &entries);
                self.phase = Phase::Live;
                Ok(Received::Streaming)
            }
            (
                Phase::Live,
                Message::LogBatch {
                    first_version,
                    entries,
                },
            ) => {
                let entries = self
                    .cursor
                    .unpack(first_version, &entries)
                    .map_err(|e| SessionEnd::Resync(format!("the log stream broke: {e}")))?;
                let room = peer.until_version.map_or(usize::MAX, |v| {
                    v.saturating_sub(peer.replica.version().0) as usize
                });
                let accepted = self.accepted_in(peer, first_version, &entries);
                let entries = &entries[..room.min(entries.len())];
                let hashes = self.apply(peer, entries).await?;
                Ok(Received::Applied {
                    entries: entries.len(),
                    accepted,
                    hashes,
                })
            }
            // A committee vote's answer (a contribution's is its entry in the log).
            (Phase::Live, Message::Accepted { counter, .. }) => {
                self.answered(counter);
                self.behind = None;
                peer.accepted += 1;
                Ok(Received::Accepted)
            }
            (
                Phase::Live,
                Message::Rejected {
                    counter,
                    reason,
                    detail,
                },
            ) => {
                let base = self.answered(counter).map(|sent| sent.base);
                if reason == RejectReason::Stale {
                    let now = peer.replica.version().0;
                    self.behind = Some(base.map_or(0, |b| now.saturating_sub(b.0)));
                    if let Some(base) = base {
                        let bound = peer.replica.job().hyper().staleness_bound;
                        self.resume_at = self.resume_at.max(Version(base.0 + bound + 1));
                    }
                }
                if reason == RejectReason::Quarantined {
                    self.quarantined = true;
                }
                peer.rejected += 1;
                Ok(Received::Rejected { reason, detail })
            }
            (phase, other) => match other {
                Message::Welcome { .. }
                | Message::CounterTable { .. }
                | Message::LogBatch { .. } => Err(SessionEnd::Fatal(format!(
                    "the relay sent {} while this peer was in {phase:?}",
                    other.kind()
                ))),
                _ => Ok(Received::Nothing),
            },
        }
    }

    /// Queues one contribution: it extends the run the outbox ends with when it comes next
    /// (the following counter, the same base version), so the lanes of a step, and steps that
    /// run back to back before the outbox is sent, go out as one `Contribute`.
    fn queue_contribution(&mut self, proposal: &Proposal) {
        let counter = Serial::of(proposal.counter.0);
        let base = Serial::of(proposal.base_version.0);
        if let Some(Message::Contribute {
            counter: first,
            base_version,
            bytes,
        }) = self.outbox.last_mut()
            && *base_version == base
            && first.0.wrapping_add(bytes.len() as u16) == counter.0
            && (bytes.len() as u64) < MAX_RUN
        {
            bytes.push(proposal.byte);
            return;
        }
        self.outbox.push(Message::Contribute {
            counter,
            base_version: base,
            bytes: vec![proposal.byte],
        });
    }

    /// Whether the outbox holds contributions and nothing else (which may wait to be sent
    /// together with the next step's).
    pub fn only_contributions_queued(&self) -> bool {
        !self.outbox.is_empty()
            && self
                .outbox
                .iter()
                .all(|m| matches!(m, Message::Contribute { .. }))
    }

    /// Counts this peer's contributions among `entries` as accepted and takes them out of the
    /// window: the relay logs a contribution and says nothing else (only durable entries are
    /// ever sent). Entries of an earlier connection are not in the window and count nowhere.
    fn accepted_in(&mut self, peer: &mut PeerState, first: Version, entries: &[LogEntry]) -> usize {
        let Some(id) = peer.id.filter(|_| !self.in_flight.is_empty()) else {
            return 0;
        };
        let mut accepted = 0;
        for (at, entry) in (first.0..).zip(entries).filter(|(_, e)| e.peer == id) {
            if let Some(sent) = self.answered(entry.counter) {
                accepted += 1;
                // How many of other peers' entries the log took between its base and its own
                // place (this peer's own in between are its window's doing).
                let late = at.saturating_sub(sent.base.0);
                let own = self.own_logged - sent.own_logged;
                let others = late.saturating_sub(own) as f64;
                self.staleness = Some(self.staleness.map_or(others, |s| s + (others - s) / 8.0));
            }
            self.own_logged += 1;
        }
        if accepted > 0 {
            self.behind = None;
            peer.accepted += accepted as u64;
        }
        accepted
    }

    /// Applies entries, stopping at each hash boundary to hash θ and queue a `HashReport`.
    async fn apply(
        &mut self,
        peer: &mut PeerState,
        mut entries: &[LogEntry],
    ) -> Result<Vec<(Version, WeightHash)>, SessionEnd> {
        let mut hashes = Vec::new();
        while !entries.is_empty() {
            let v = peer.replica.version().0;
            let boundary = (v / HASH_REPORT_INTERVAL + 1) * HASH_REPORT_INTERVAL;
            let n = ((boundary - v) as usize).min(entries.len());
            peer.replica.apply(&entries[..n]);
            entries = &entries[n..];
            let version = peer.replica.version();
            if version.0.is_multiple_of(HASH_REPORT_INTERVAL) {
                let hash = peer
                    .replica
                    .weight_hash()
                    .await
                    .map_err(|e| SessionEnd::Fatal(format!("hashing failed: {e}")))?;
                self.outbox.push(Message::HashReport { version, hash });
                hashes.push((version, hash));
            }
        }
        Ok(hashes)
    }

    /// Proposes the next step on `batch`: up to `peer.lanes` contributions (as many as the
    /// window has room for) in one batched pass, and queues them (and, now and then, a
    /// `LossReport`). Call only when [`Session::ready_to_contribute`] holds.
    pub async fn contribute(
        &mut self,
        peer: &mut PeerState,
        batch: &Split,
    ) -> Result<Vec<Proposal>, SessionEnd> {
        let id = peer
            .id
            .ok_or_else(|| SessionEnd::Fatal("contributing before the relay's Welcome".into()))?;
        let room = self.window.saturating_sub(self.in_flight.len());
        let mut k = peer.lanes.max(1).min(room.max(1));
        // A committee member evaluates the rounds' shared directions, not its own.
        let (direction_of, counters): (PeerId, Vec<Counter>) = if self.committee {
            k = k.min(self.assigned.len());
            if k == 0 {
                return Err(SessionEnd::Fatal(
                    "voting with no committee round assigned".into(),
                ));
            }
            (PeerId::COMMITTEE, self.assigned.drain(..k).collect())
        } else {
            let next = self.next_counter.0;
            (id, (0..k as u64).map(|i| Counter(next + i)).collect())
        };
        let private = peer.replica.job().privacy().is_some();
        if private && peer.privacy.is_none() {
            return Err(SessionEnd::Fatal(
                "the job is private, and this peer has no noise source to make its \
                 contributions private"
                    .into(),
            ));
        }
        let mut proposals = peer
            .replica
            .propose_lanes(direction_of, &counters, batch)
            .await
            .map_err(|e| SessionEnd::Fatal(format!("proposing failed: {e}")))?;
        if let Some(privacy) = peer.privacy.as_mut().filter(|_| private) {
            let quantizer = peer.replica.job().hyper().quantizer;
            for p in &mut proposals {
                p.g = privacy.release(p.g);
                p.byte = quantizer.encode(p.g);
            }
        }
        for proposal in &proposals {
            if self.committee {
                self.outbox.push(Message::Vote {
                    round: proposal.counter,
                    base_version: Serial::of(proposal.base_version.0),
                    byte: proposal.byte,
                });
            } else {
                self.queue_contribution(proposal);
            }
            self.in_flight.push_back(InFlight {
                counter: proposal.counter,
                base: proposal.base_version,
                own_logged: self.own_logged,
            });
            self.sent += 1;
            peer.last_loss = Some(proposal.loss);
            // A private peer's loss would be one more release of its data.
            if !private && self.sent.is_multiple_of(LOSS_REPORT_EVERY) {
                // Before the run being gathered, which may grow yet (the relay takes loss
                // reports in any order).
                let at = self.outbox.len().saturating_sub(1);
                self.outbox.insert(
                    at,
                    Message::LossReport {
                        version: proposal.base_version,
                        loss: proposal.loss,
                    },
                );
            }
        }
        if !self.committee {
            self.next_counter = Counter(self.next_counter.0 + k as u64);
        }
        Ok(proposals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::synthetic_log;
    use crate::{Builtin, Job, block_on, cpu_device};
    use std::sync::Arc;

    /// The peer under test: beyond the 16 peers of `synthetic_log`, so no synthetic entry is
    /// taken for its own.
    const ME: PeerId = PeerId(40);

    fn welcomed(head: u64) -> (PeerState, Session) {
        welcomed_with(head, 1, 2)
    }

    fn welcomed_with(head: u64, lanes: usize, window: usize) -> (PeerState, Session) {
        welcomed_on(Job::demo(), head, lanes, window)
    }

    /// A peer on `job` that the relay welcomed (id [`ME`], next counter 10) at `head`.
    fn welcomed_on(job: Job, head: u64, lanes: usize, window: usize) -> (PeerState, Session) {
        let replica = Replica::new(Arc::new(job), cpu_device());
        let mut peer = PeerState::new(replica);
        peer.lanes = lanes;
        let mut session = Session::new(&peer, "t", window);
        assert!(matches!(
            session.take_outbox().as_slice(),
            [Message::Hello { resume: None, .. }]
        ));
        let welcome = Message::Welcome {
            peer: ME,
            job: peer.replica.job().id,
            version: Version(head),
            next_counter: Counter(10),
            secret: ResumeSecret([7; 16]),
            rate_limit: 2000,
        };
        block_on(session.receive(&mut peer, welcome)).unwrap();
        let table = LogCursor::new(Version(0), []).table_message();
        assert_eq!(
            block_on(session.receive(&mut peer, table)),
            Ok(Received::Streaming)
        );
        (peer, session)
    }

    #[test]
    fn a_session_catches_up_before_contributing_and_reports_hashes_at_boundaries() {
        let (mut peer, mut session) = welcomed(300);
        assert!(session.catching_up(&peer));
        assert!(!session.ready_to_contribute(&peer));
        let log = synthetic_log(300, 1);
        let mut cursor = LogCursor::new(Version(0), []);
        let batch = cursor.pack(&log);
        let received = block_on(session.receive(&mut peer, batch)).unwrap();
        let Received::Applied {
            entries,
            accepted: 0,
            hashes,
        } = received
        else {
            panic!("expected Applied, got {received:?}");
        };
        assert_eq!(entries, 300);
        assert_eq!(hashes.len(), 1);
        assert_eq!(hashes[0].0, Version(HASH_REPORT_INTERVAL));
        assert!(matches!(
            session.take_outbox().as_slice(),
            [Message::HashReport { version, .. }] if *version == Version(256)
        ));
        assert!(session.ready_to_contribute(&peer));

        let data = Builtin::Spirals.generate(64, 8, 1);
        block_on(session.contribute(&mut peer, &data.train)).unwrap();
        block_on(session.contribute(&mut peer, &data.train)).unwrap();
        assert!(!session.ready_to_contribute(&peer), "the window is 2");
        // Two steps at one version before the outbox was sent: one run, counters 10 and 11.
        let sent = session.take_outbox();
        assert!(
            matches!(
                sent.as_slice(),
                [Message::Contribute { counter, bytes, .. }]
                    if *counter == Serial::of(10) && bytes.len() == 2
            ),
            "{sent:?}"
        );
        // Its own entry in the log is its acceptance: counter 10, between two of others'.
        let logged = [
            LogEntry {
                peer: PeerId(4),
                counter: Counter(0),
                byte: 1,
            },
            LogEntry {
                peer: ME,
                counter: Counter(10),
                byte: 2,
            },
            LogEntry {
                peer: PeerId(4),
                counter: Counter(1),
                byte: 3,
            },
        ];
        let received = block_on(session.receive(&mut peer, cursor.pack(&logged))).unwrap();
        assert!(
            matches!(
                received,
                Received::Applied {
                    entries: 3,
                    accepted: 1,
                    ..
                }
            ),
            "{received:?}"
        );
        assert_eq!((peer.accepted, session.in_flight()), (1, 1));
        assert_eq!(peer.replica.version(), Version(303));
        assert!(session.ready_to_contribute(&peer));
    }

    #[test]
    fn an_adapting_window_covers_its_round_trips_within_its_bounds() {
        // The demo job's staleness bound is 1024: the window may grow to 512.
        let (_, mut session) = welcomed_with(0, 1, 0);
        assert_eq!(session.window(), 32);
        // 0.25 ms a contribution, 20 ms to an answer: 160 in flight cover two round trips.
        session.fit_window(0.25, 20.0, 2.0);
        assert_eq!(session.window(), 160);
        session.fit_window(0.01, 20.0, 2.0);
        assert_eq!(session.window(), MAX_WINDOW as usize);
        // A slow peer keeps the floor: its contributions are fresh anyway.
        session.fit_window(500.0, 20.0, 2.0);
        assert_eq!(session.window(), 32);
        // In a busy swarm, where its contribution took its place 300 entries after its base,
        // the window keeps its floor however fast the peer is.
        let (mut peer, mut busy) = welcomed_with(0, 1, 0);
        let data = Builtin::Spirals.generate(64, 8, 1);
        block_on(busy.contribute(&mut peer, &data.train)).unwrap();
        let mut log = synthetic_log(300, 4);
        log.push(LogEntry {
            peer: ME,
            counter: Counter(10),
            byte: 1,
        });
        let mut cursor = LogCursor::new(Version(0), []);
        block_on(busy.receive(&mut peer, cursor.pack(&log))).unwrap();
        assert_eq!(peer.accepted, 1);
        busy.fit_window(0.01, 20.0, 2.0);
        assert_eq!(busy.window(), 32);
        // Alone, its own entries between a contribution's base and its place are no reason
        // to hold back: 300 in flight, logged one after another, and the window stays grown.
        let (mut peer, mut alone) = welcomed_with(0, 1, 0);
        alone.fit_window(0.01, 20.0, 2.0);
        for _ in 0..300 {
            block_on(alone.contribute(&mut peer, &data.train)).unwrap();
        }
        let own: Vec<LogEntry> = (10..310)
            .map(|c| LogEntry {
                peer: ME,
                counter: Counter(c),
                byte: 1,
            })
            .collect();
        let mut cursor = LogCursor::new(Version(0), []);
        block_on(alone.receive(&mut peer, cursor.pack(&own))).unwrap();
        assert_eq!(peer.accepted, 300);
        alone.fit_window(0.01, 20.0, 2.0);
        assert_eq!(alone.window(), MAX_WINDOW as usize);
        // A window the host fixed stays.
        let (_, mut fixed) = welcomed_with(0, 1, 3);
        fixed.fit_window(0.25, 20.0, 2.0);
        assert_eq!(fixed.window(), 3);
        // A small staleness bound caps it at half.
        let mut config = Job::demo().config;
        config.hyper.staleness_bound = 40;
        let (_, mut tight) = welcomed_on(Job::new(config).unwrap(), 0, 1, 0);
        tight.fit_window(0.25, 20.0, 2.0);
        assert_eq!(tight.window(), 20);
    }

    #[test]
    fn steps_at_one_version_go_out_as_one_run_and_a_new_version_starts_another() {
        let (mut peer, mut session) = welcomed_with(0, 1, 1_000);
        let data = Builtin::Spirals.generate(64, 8, 1);
        for _ in 0..100 {
            block_on(session.contribute(&mut peer, &data.train)).unwrap();
        }
        // The 64th step's loss report does not split the run.
        let mut cursor = LogCursor::new(Version(0), []);
        block_on(session.receive(&mut peer, cursor.pack(&synthetic_log(1, 1)))).unwrap();
        block_on(session.contribute(&mut peer, &data.train)).unwrap();
        let sent = session.take_outbox();
        let runs: Vec<(u16, u16, usize)> = sent
            .iter()
            .filter_map(|m| match m {
                Message::Contribute {
                    counter,
                    base_version,
                    bytes,
                } => Some((counter.0, base_version.0, bytes.len())),
                _ => None,
            })
            .collect();
        assert_eq!(runs, [(10, 0, 100), (110, 1, 1)]);
        assert_eq!(sent.len(), 3, "and one loss report: {sent:?}");
        assert!(matches!(sent[0], Message::LossReport { .. }));
    }

    #[test]
    fn a_rejection_by_the_sixteen_bits_sent_frees_its_place_in_the_window() {
        let (mut peer, mut session) = welcomed_with(0, 1, 4);
        // Past 65 536 contributions: the relay names a rejected one by its low 16 bits.
        session.next_counter = Counter(70_000);
        let data = Builtin::Spirals.generate(64, 8, 1);
        block_on(session.contribute(&mut peer, &data.train)).unwrap();
        assert_eq!(session.in_flight(), 1);
        let limited = Message::Rejected {
            counter: Counter(70_000 & 0xffff),
            reason: RejectReason::RateLimited,
            detail: "too fast".into(),
        };
        block_on(session.receive(&mut peer, limited)).unwrap();
        assert_eq!((session.in_flight(), peer.rejected), (0, 1));
    }

    #[test]
    fn own_entries_of_an_earlier_connection_count_as_nothing_accepted() {
        let (mut peer, mut session) = welcomed(0);
        let mut cursor = LogCursor::new(Version(0), []);
        // Counter 3 was this peer's before it reconnected: not in this session's window.
        let earlier = [LogEntry {
            peer: ME,
            counter: Counter(3),
            byte: 1,
        }];
        let received = block_on(session.receive(&mut peer, cursor.pack(&earlier))).unwrap();
        assert!(matches!(received, Received::Applied { accepted: 0, .. }));
        assert_eq!(peer.accepted, 0);
    }

    #[test]
    fn a_gap_in_the_log_asks_for_a_resync_and_out_of_order_messages_are_fatal() {
        let (mut peer, mut session) = welcomed(0);
        let mut cursor = LogCursor::new(Version(5), []);
        let batch = cursor.pack(&synthetic_log(3, 1));
        assert!(matches!(
            block_on(session.receive(&mut peer, batch)),
            Err(SessionEnd::Resync(_))
        ));
        let again = Message::Welcome {
            peer: ME,
            job: peer.replica.job().id,
            version: Version(0),
            next_counter: Counter(0),
            secret: ResumeSecret([7; 16]),
            rate_limit: 2000,
        };
        assert!(matches!(
            block_on(session.receive(&mut peer, again)),
            Err(SessionEnd::Fatal(_))
        ));
    }

    #[test]
    fn a_step_sends_a_contribution_per_lane_and_stale_rejections_say_how_far_behind() {
        // Window 0: the default window, 32 in flight.
        let (mut peer, mut session) = welcomed_with(0, 4, 0);
        assert_eq!(session.window(), 32);
        let data = Builtin::Spirals.generate(64, 8, 1);
        let step = block_on(session.contribute(&mut peer, &data.train)).unwrap();
        assert_eq!(step.len(), 4);
        // The four lanes travel as one run from counter 10, in lane order.
        let sent = session.take_outbox();
        let [Message::Contribute { counter, bytes, .. }] = sent.as_slice() else {
            panic!("expected one Contribute, got {sent:?}");
        };
        assert_eq!(*counter, Serial::of(10));
        assert_eq!(*bytes, step.iter().map(|p| p.byte).collect::<Vec<_>>());
        assert_eq!(session.in_flight(), 4);

        // The log moves on 100 versions; the relay turns counter 11 down as stale.
        let mut cursor = LogCursor::new(Version(0), []);
        block_on(session.receive(&mut peer, cursor.pack(&synthetic_log(100, 2)))).unwrap();
        let stale = Message::Rejected {
            counter: Counter(11),
            reason: RejectReason::Stale,
            detail: "too old".into(),
        };
        block_on(session.receive(&mut peer, stale)).unwrap();
        assert_eq!(session.behind(), Some(100));
        assert_eq!(session.in_flight(), 3);
        // The relay's log had passed base 0 plus the staleness bound: no step is computed on a
        // replica short of that, and once the log is applied that far steps resume.
        let bound = peer.replica.job().hyper().staleness_bound;
        assert!(
            !session.ready_to_contribute(&peer),
            "a step now would be stale too"
        );
        block_on(session.receive(
            &mut peer,
            cursor.pack(&synthetic_log(bound as usize + 1 - 100, 3)),
        ))
        .unwrap();
        assert_eq!(peer.replica.version(), Version(bound + 1));
        assert!(session.ready_to_contribute(&peer));
        let accepted = LogEntry {
            peer: ME,
            counter: Counter(12),
            byte: 0,
        };
        block_on(session.receive(&mut peer, cursor.pack(&[accepted]))).unwrap();
        assert_eq!(
            session.behind(),
            None,
            "an accepted contribution means keeping up"
        );
        assert_eq!(session.in_flight(), 2);
    }

    #[test]
    fn a_committee_session_votes_only_on_assigned_rounds_along_their_shared_directions() {
        let mut config = Job::demo().config;
        config.committee = Some(crate::CommitteeSpec { size: 3 });
        let job = Job::new(config).unwrap();
        let (mut peer, mut session) = welcomed_on(job.clone(), 0, 4, 0);
        assert!(
            !session.ready_to_contribute(&peer),
            "no round assigned, nothing to vote on"
        );
        for round in [5, 9] {
            let assign = Message::Assign {
                round: Counter(round),
            };
            block_on(session.receive(&mut peer, assign)).unwrap();
        }
        assert_eq!(session.assigned(), 2);
        assert!(session.ready_to_contribute(&peer));
        let data = Builtin::Spirals.generate(64, 8, 1);
        let votes = block_on(session.contribute(&mut peer, &data.train)).unwrap();
        assert_eq!(votes.len(), 2, "four lanes, two rounds");
        assert!(!session.ready_to_contribute(&peer));

        // The bytes are those of the rounds' shared directions, not of this peer's own.
        let mut other = Replica::new(Arc::new(job), cpu_device());
        let rounds = [Counter(5), Counter(9)];
        let shared =
            block_on(other.propose_lanes(PeerId::COMMITTEE, &rounds, &data.train)).unwrap();
        let sent = session.take_outbox();
        let expected: Vec<Message> = shared
            .iter()
            .map(|p| Message::Vote {
                round: p.counter,
                base_version: Serial::of(0),
                byte: p.byte,
            })
            .collect();
        assert_eq!(sent, expected);
        let own = block_on(other.propose_lanes(ME, &rounds, &data.train)).unwrap();
        assert_ne!(
            own.iter().map(|p| p.g).collect::<Vec<_>>(),
            shared.iter().map(|p| p.g).collect::<Vec<_>>()
        );

        // Answers name the round.
        let accepted = Message::Accepted {
            counter: Counter(9),
            version: Version(0),
        };
        block_on(session.receive(&mut peer, accepted)).unwrap();
        assert_eq!((peer.accepted, session.in_flight()), (1, 1));
    }

    #[test]
    fn a_private_session_noises_its_estimates_accounts_for_them_and_reports_no_loss() {
        use crate::privacy::{Noise, PrivacySpec, PrivatePeer};
        let spec = PrivacySpec {
            clip: 0.5,
            noise_multiplier: 1.0,
            delta: 1e-5,
        };
        let mut config = Job::demo().config;
        config.privacy = Some(spec);
        let private_job = Job::new(config).unwrap();
        let data = Builtin::Spirals.generate(320, 8, 1);

        // Without its noise source, a private peer proposes nothing.
        let (mut bare, mut session) = welcomed_on(private_job.clone(), 0, 1, 1_000);
        assert!(matches!(
            block_on(session.contribute(&mut bare, &data.train)),
            Err(SessionEnd::Fatal(_))
        ));

        let (mut peer, mut session) = welcomed_on(private_job, 0, 1, 1_000);
        peer.privacy = Some(PrivatePeer::new(
            spec,
            32,
            data.train.len(),
            Noise::from_seed([1; 32]),
        ));
        let batch = data.train.rows(0..32);
        let mut noised = Vec::new();
        for _ in 0..2 * LOSS_REPORT_EVERY {
            let p = block_on(session.contribute(&mut peer, &batch)).unwrap();
            noised.push(p[0].g);
        }
        let sent = session.take_outbox();
        let [Message::Contribute { bytes, .. }] = sent.as_slice() else {
            panic!("contributions only, as one run: {sent:?}");
        };
        assert_eq!(bytes.len() as u64, 2 * LOSS_REPORT_EVERY);
        let accountant = &peer.privacy.as_ref().unwrap().accountant;
        assert_eq!(accountant.steps(), 2 * LOSS_REPORT_EVERY);
        assert!(accountant.epsilon() > 0.0);

        // The same directions without noise: each clipped mean lies within [−C, C], and the
        // noise (σ·C/B ≈ 0.016) moves every one of them, by about that much.
        let mut config = Job::demo().config;
        config.privacy = Some(spec);
        let mut clean = Replica::new(Arc::new(Job::new(config).unwrap()), cpu_device());
        let mut diffs = Vec::new();
        for (i, g) in noised.iter().enumerate() {
            // The session's counters start at the Welcome's 10.
            let counter = [Counter(10 + i as u64)];
            let p = block_on(clean.propose_lanes(ME, &counter, &batch)).unwrap();
            assert!(p[0].g.abs() <= spec.clip, "clipped mean {}", p[0].g);
            diffs.push(f64::from(g - p[0].g));
        }
        let std = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        let expected = 1.0 * 0.5 / 32.0;
        assert!(diffs.iter().all(|d| *d != 0.0));
        assert!(
            (std / expected - 1.0).abs() < 0.3,
            "noise std {std}, expected {expected}"
        );
    }
}
