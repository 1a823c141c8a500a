//! A peer's life, written once: connect → catch up → train, reconnecting with backoff when the
//! connection drops and reloading the snapshot on `Resync`, until the host says to leave or the
//! relay refuses the peer.
//!
//! [`Session`] is the protocol of one connection; the [`Driver`] is the loop around it, shared
//! by `onebyte join` and the browser client. They differ only in how bytes move and time passes
//! ([`Transport`], [`Connection`], [`Clock`]) and in their surroundings ([`Host`]: stop
//! conditions, pause and throttle, the next batch, the display). What a close code means, how
//! long to wait before trying again, and the order in which frames and steps take turns live
//! here, so the two peers cannot drift apart.
//!
//! The turn order: frames first, because a contribution computed on a lagging replica arrives
//! stale. Every frame already delivered is applied before a step that is due, yet a step waits
//! at most [`MAX_DEFER_MS`] (a log that streams in as fast as it is applied would otherwise
//! starve computing for ever). Steps run back to back for at most [`COMPUTE_SLICE_MS`]; then
//! the turn sleeps, which yields to the runtime so every frame that arrived meanwhile is
//! delivered. (Yielding after every step would cost a browser's 4 ms timer clamp each time:
//! most of a CPU step.) Log batches already delivered are merged before applying: a slow
//! adapter pays per dispatch, so a backlog applied in a few large runs is what lets it catch
//! up.
//!
//! Messages per contribution are few: a step's contributions wait up to [`HOLD_MS`] for the
//! next step's and go out as one run (`Contribute` with consecutive counters), and their
//! acceptance is read from the log batches the peer receives anyway. The window of
//! contributions in flight adapts to the round trip measured here (send to answer), so a fast
//! peer keeps computing while answers travel; and a peer faster than the relay's per-peer rate
//! limit paces its steps below it rather than compute contributions that would be refused.

mod io;
pub mod scripted;
mod tally;

pub use io::{Clock, Connection, Incoming, Transport};
pub use tally::{Tally, fp32_allreduce_bytes};

use crate::data::Split;
use crate::replica::Replica;
use crate::session::{PeerState, Received, Session, SessionEnd};
use crate::snapshot::Snapshot;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_lite::future;
use protocol::{Message, RejectReason, Version, WeightHash, close, framing};
use std::collections::VecDeque;
use std::time::Duration;

/// Longest run of steps between two yields to the runtime (ms).
pub const COMPUTE_SLICE_MS: f64 = 20.0;
/// Longest a due step waits while frames keep arriving (ms).
pub const MAX_DEFER_MS: f64 = 250.0;
/// How long to wait for the socket when there is nothing to compute, before looking again at
/// the host's controls (ms).
const IDLE_WAIT_MS: f64 = 200.0;
/// Most log entries merged from delivered batches into one.
const MERGED_ENTRIES: usize = 4096;
/// No answer to a contribution in flight for this long means the peer is behind the log (ms).
const ANSWERS_OVERDUE_MS: f64 = 2_000.0;
/// No answer at all for this long, with contributions in flight, means they were lost on the
/// relay's side (a relay restarting behind a socket that stayed open): the connection starts
/// over, which frees the window (ms). A peer merely behind the log still hears answers every
/// so often, and a relay drops a peer that falls this far behind as a slow consumer anyway.
const ANSWERS_LOST_MS: f64 = 30_000.0;
/// Longest a step's contributions wait for the next step's, to travel as one message (ms):
/// the relay's default tick, within which they would be logged together anyway.
const HOLD_MS: f64 = 5.0;
/// An adapting window holds this many round trips' worth of this peer's contributions: one
/// keeps it busy while answers travel, the rest absorb round trips longer than the usual (a
/// tab's vary several-fold: at two, a CPU tab on the demo job was idle half the time).
const WINDOW_ROUND_TRIPS: f64 = 4.0;
/// Weight of the newest round trip in the running estimate (as TCP's smoothed RTT).
const ROUND_TRIP_WEIGHT: f64 = 0.125;
/// A peer paces itself to this share of the relay's rate limit (its `Welcome` says it), so
/// that no contribution is computed only to be turned down.
const PACE_SHARE: f64 = 0.95;
/// How far ahead of its pace a peer may run, in time (ms): a burst the relay's limiter allows
/// many times over (it allows a second's worth).
const PACE_BURST_MS: f64 = 100.0;
/// A connection that lasted this long was not a failed attempt: the backoff starts over (ms).
const STABLE_CONNECTION_MS: f64 = 2_000.0;
/// After the relay turns a contribution down because the job is paused, wait this long (ms).
const PAUSED_RETRY_MS: f64 = 1_000.0;
/// How long a relay's close frame may take to arrive after a failed send (ms).
const CLOSE_GRACE_MS: f64 = 1_000.0;

/// The delays between attempts to reach the relay: 0.1 s doubling to 3 s, each plus up to as
/// much again at random, so that peers cut off together do not return together. Endless;
/// `seed` draws the jitter.
pub fn backoff(seed: u64) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(3))
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
}

/// What the peer does now, as its display says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Waiting for the relay's `Welcome` and counter table.
    Connecting,
    /// Replaying the log up to the relay's version at `Welcome`.
    Replaying {
        to: Version,
    },
    /// The relay turns contributions down as stale: they reach it this many versions late.
    Behind {
        versions: u64,
    },
    /// No answer to contributions in flight for this many seconds: the peer reads the log more
    /// slowly than the swarm writes it.
    Overdue {
        seconds: u64,
    },
    /// The host paused computing; the log is still followed.
    Paused,
    /// The relay quarantined this peer: its contributions lay far outside everyone else's.
    /// The log is still followed; the relay's host may release it (then reconnect).
    Quarantined,
    Training,
}

/// Something the host may show or log.
#[derive(Debug)]
pub enum Event<'a> {
    /// Opening the websocket at this address.
    Connecting { address: &'a str },
    /// The connection was lost; trying again after this many milliseconds.
    Reconnecting { why: &'a str, after_ms: f64 },
    /// The relay said the replica diverged: reloading the snapshot.
    Resyncing { why: &'a str },
    /// Weight hashes at the boundaries just crossed (each already reported to the relay).
    Hashes(&'a [(Version, WeightHash)]),
    /// The relay turned a contribution down.
    Rejected {
        reason: RejectReason,
        detail: &'a str,
    },
}

/// What the host sees each turn.
pub struct View<'a> {
    pub peer: &'a PeerState,
    pub session: &'a Session,
    pub tally: &'a Tally,
    pub activity: Activity,
    pub now_ms: f64,
}

/// A peer's surroundings: when to stop, how hard to compute, what to train on, what to show.
// One thread drives the peer (see `io`), so `tick`'s future need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Leave the relay now: asked to stop, or the stop conditions hold.
    fn should_leave(&self, peer: &PeerState) -> bool;
    /// Follow the log but compute nothing.
    fn paused(&self) -> bool {
        false
    }
    /// Share of wall time to spend computing, in (0, 1].
    fn compute_share(&self) -> f64 {
        1.0
    }
    /// Whether to propose another step, with `in_flight` contributions unanswered (a budget of
    /// contributions says no once it is spent).
    fn wants_more(&self, _peer: &PeerState, _in_flight: usize) -> bool {
        true
    }
    /// The next training batch.
    fn next_batch(&mut self) -> Split;
    /// A replica from the relay's decoded snapshot, on this peer's backend.
    fn replica(&self, snapshot: Snapshot) -> Result<Replica, String>;
    /// Something happened.
    fn event(&mut self, event: Event<'_>);
    /// Called at every turn of the loop: the host rate-limits its display itself.
    async fn tick(&mut self, view: View<'_>);
}

/// Settings of one driver.
#[derive(Debug, Clone, Default)]
pub struct DriverConfig {
    /// The relay's join token.
    pub token: String,
    /// Contributions in flight at most (0: the session's default).
    pub window: usize,
    /// Give up when the relay stays unreachable this long (ms); `None`: never.
    pub give_up_after_ms: Option<f64>,
    /// Spreads the backoff's jitter between peers.
    pub seed: u64,
}

/// Why a peer stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    /// The relay will not take this peer: a fatal close code, an `Error`, a malformed stream.
    #[error("{0}")]
    Refused(String),
    /// This peer's engine failed (e.g. a GPU device was lost).
    #[error("{0}")]
    Failed(String),
    /// The relay stayed unreachable longer than the configured limit.
    #[error("{0}")]
    Unreachable(String),
}

/// How one connection ended.
enum End {
    /// The host asked to leave.
    Left,
    Resync(String),
    Retry(String),
    /// The relay no longer knows the peer's id (or its secret): join again without one.
    Rejoin(String),
    Refused(String),
    Failed(String),
}

/// The loop around a peer's sessions.
pub struct Driver<'h, H, T, C> {
    host: &'h mut H,
    transport: T,
    clock: C,
    config: DriverConfig,
    tally: Tally,
    /// When the relay last answered a contribution, or none was in flight.
    answered_at: f64,
    /// Computing may start no earlier than this (the throttle, a paused job).
    next_compute: f64,
    /// When each contribution in flight on this connection was sent, oldest first.
    sent_at: VecDeque<f64>,
    /// Smoothed time from sending a contribution to hearing its answer (ms).
    round_trip_ms: Option<f64>,
    /// When this peer's contributions so far would all have been sent at the relay's pace
    /// (a virtual clock, as a token bucket keeps it).
    paced_until: f64,
}

impl<'h, H: Host, T: Transport, C: Clock> Driver<'h, H, T, C> {
    pub fn new(host: &'h mut H, transport: T, clock: C, config: DriverConfig) -> Self {
        Driver {
            host,
            transport,
            clock,
            config,
            tally: Tally::default(),
            answered_at: 0.0,
            next_compute: 0.0,
            sent_at: VecDeque::new(),
            round_trip_ms: None,
            paced_until: 0.0,
        }
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Runs `peer` until the host says to leave (`Ok`) or it cannot go on.
    pub async fn run(&mut self, peer: &mut PeerState) -> Result<(), Stop> {
        let mut delays = backoff(self.config.seed);
        let mut unreachable_since: Option<f64> = None;
        loop {
            let started = self.clock.now_ms();
            match self.connection(peer).await {
                End::Left => return Ok(()),
                End::Refused(why) => return Err(Stop::Refused(why)),
                End::Failed(why) => return Err(Stop::Failed(why)),
                End::Rejoin(why) => {
                    peer.id = None;
                    peer.secret = None;
                    self.host.event(Event::Reconnecting {
                        why: &why,
                        after_ms: 0.0,
                    });
                }
                End::Resync(why) => {
                    self.host.event(Event::Resyncing { why: &why });
                    let Some(snapshot) = self.snapshot(peer).await? else {
                        return Ok(());
                    };
                    peer.replica = self.host.replica(snapshot).map_err(Stop::Failed)?;
                    delays = backoff(self.config.seed);
                    unreachable_since = None;
                }
                End::Retry(why) => {
                    let now = self.clock.now_ms();
                    if now - started > STABLE_CONNECTION_MS {
                        delays = backoff(self.config.seed);
                        unreachable_since = None;
                    }
                    let since = *unreachable_since.get_or_insert(now);
                    if let Some(limit) = self.config.give_up_after_ms
                        && now - since > limit
                    {
                        return Err(Stop::Unreachable(format!(
                            "gave up after {:.0} s without the relay: {why}",
                            limit / 1_000.0
                        )));
                    }
                    let after_ms = next_delay(&mut delays);
                    self.host.event(Event::Reconnecting {
                        why: &why,
                        after_ms,
                    });
                    self.clock.sleep_ms(after_ms).await;
                    self.tally.reconnects += 1;
                }
            }
            if self.host.should_leave(peer) {
                return Ok(());
            }
        }
    }

    /// The relay's newest snapshot, retried with backoff; `None` when the host says to leave
    /// while waiting.
    async fn snapshot(&mut self, peer: &PeerState) -> Result<Option<Snapshot>, Stop> {
        let mut delays = backoff(self.config.seed);
        let since = self.clock.now_ms();
        loop {
            match self.transport.snapshot(peer.replica.job()).await {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(why) => {
                    if self.host.should_leave(peer) {
                        return Ok(None);
                    }
                    if let Some(limit) = self.config.give_up_after_ms
                        && self.clock.now_ms() - since > limit
                    {
                        return Err(Stop::Unreachable(format!(
                            "gave up fetching the snapshot after {:.0} s: {why}",
                            limit / 1_000.0
                        )));
                    }
                    let after_ms = next_delay(&mut delays);
                    let why = format!("fetching the snapshot: {why}");
                    self.host.event(Event::Reconnecting {
                        why: &why,
                        after_ms,
                    });
                    self.clock.sleep_ms(after_ms).await;
                }
            }
        }
    }

    /// One websocket connection, until it ends.
    async fn connection(&mut self, peer: &mut PeerState) -> End {
        let address = self.transport.address().to_string();
        self.host.event(Event::Connecting { address: &address });
        let mut conn = match self.transport.connect().await {
            Ok(conn) => conn,
            Err(e) => return End::Retry(format!("cannot open {address}: {e}")),
        };
        let mut session = Session::new(peer, &self.config.token, self.config.window);
        self.answered_at = self.clock.now_ms();
        self.sent_at.clear();
        // Whether steps have run for a whole slice: the next turn yields first.
        let mut must_yield = false;
        // When the current run of steps without yielding began.
        let mut slice_began = None;
        // Since when a due step has waited for the frames already delivered.
        let mut due_since: Option<f64> = None;
        // A message read ahead while merging log batches, handled next turn.
        let mut held: Option<Result<Message, End>> = None;
        // Since when the outbox has held contributions back for the next step's.
        let mut holding_since: Option<f64> = None;
        loop {
            if self.host.should_leave(peer) {
                conn.close("the peer is leaving").await;
                return End::Left;
            }
            self.tick(peer, &session).await;
            if let Some(lost) = self.lost_answers(&session) {
                return End::Retry(lost);
            }

            let wants = session.ready_to_contribute(peer)
                && !self.host.paused()
                && self.host.wants_more(peer, session.in_flight());
            let now = self.clock.now_ms();
            let wait = if wants {
                (self.next_compute - now).max(0.0)
            } else {
                IDLE_WAIT_MS
            };
            let due = wants && !must_yield && now >= self.next_compute;
            // Contributions of steps run back to back go out as one message: held while the
            // next turn computes again, at most HOLD_MS; anything else goes at once.
            let hold = due
                && held.is_none()
                && session.only_contributions_queued()
                && now - *holding_since.get_or_insert(now) < HOLD_MS;
            if !hold {
                holding_since = None;
                if let Err(end) = self.send_outbox(&mut conn, &mut session).await {
                    return end;
                }
            }
            due_since = due.then(|| due_since.unwrap_or(now));
            let incoming = if held.is_some() {
                None
            } else if due_since.is_some_and(|since| now - since < MAX_DEFER_MS) {
                future::poll_once(conn.recv()).await
            } else if due {
                None
            } else if wants && must_yield && wait <= 0.0 {
                // The yield between two slices of steps: a bare sleep, not a wait on the
                // socket, so that every frame that arrived during the slice is delivered (a
                // browser hands over one websocket message per task, and waking on the first
                // would take in one frame a slice); the next turns take them all, log batches
                // merged, before computing again.
                must_yield = false;
                slice_began = None;
                self.clock.sleep_ms(0.0).await;
                continue;
            } else {
                must_yield = false;
                slice_began = None;
                let timer = async {
                    self.clock.sleep_ms(wait).await;
                    None
                };
                future::or(async { Some(conn.recv().await) }, timer).await
            };
            let next = match incoming {
                Some(incoming) => Some(self.decode(incoming)),
                None => held.take(),
            };
            match next {
                Some(Ok(msg)) => {
                    let msg = self.merge_delivered(msg, &mut conn, &mut held).await;
                    if let Err(end) = self.receive(peer, &mut session, msg).await {
                        return end;
                    }
                }
                Some(Err(end)) => return end,
                None if wants => {
                    let batch = self.host.next_batch();
                    let began = self.clock.now_ms();
                    let step = match session.contribute(peer, &batch).await {
                        Ok(step) => step,
                        Err(e) => return End::Failed(e.to_string()),
                    };
                    let done = self.clock.now_ms();
                    self.tally.stepped(began, done, step.len());
                    if let Some(round_trip) = self.round_trip_ms {
                        // A contribution's answer comes a round trip after it is sent, and
                        // it may wait HOLD_MS for its run before that.
                        let each = (done - began) / step.len().max(1) as f64;
                        session.fit_window(each, round_trip + HOLD_MS, WINDOW_ROUND_TRIPS);
                    }
                    must_yield = done - *slice_began.get_or_insert(began) >= COMPUTE_SLICE_MS;
                    let share = self.host.compute_share().clamp(0.01, 1.0);
                    self.next_compute = done + (done - began) * (1.0 - share) / share;
                    if let Some(limit) = session.rate_limit() {
                        let spacing = 1_000.0 / (f64::from(limit) * PACE_SHARE);
                        self.paced_until = self.paced_until.max(done) + step.len() as f64 * spacing;
                        self.next_compute = self.next_compute.max(self.paced_until - PACE_BURST_MS);
                    }
                }
                None => {}
            }
        }
    }

    /// Sends what the session queued, in order.
    async fn send_outbox(
        &mut self,
        conn: &mut T::Connection,
        session: &mut Session,
    ) -> Result<(), End> {
        for msg in session.take_outbox() {
            let estimates = match &msg {
                Message::Contribute { bytes, .. } => bytes.len(),
                Message::Vote { .. } => 1,
                _ => 0,
            };
            let now = self.clock.now_ms();
            self.sent_at.extend(std::iter::repeat_n(now, estimates));
            let bytes = msg.encode();
            self.tally.bytes_sent += framing::client_frame_len(bytes.len()) as u64;
            if let Err(e) = conn.send(bytes).await {
                let failed = format!("sending {}: {e}", msg.kind());
                return Err(self.why_closed(conn, failed).await);
            }
        }
        Ok(())
    }

    /// Hands one message to the session and acts on what it changed.
    async fn receive(
        &mut self,
        peer: &mut PeerState,
        session: &mut Session,
        msg: Message,
    ) -> Result<(), End> {
        let began = self.clock.now_ms();
        let received = session.receive(peer, msg).await;
        let now = self.clock.now_ms();
        self.tally.received(began, now, !session.catching_up(peer));
        match received {
            Ok(Received::Applied {
                accepted, hashes, ..
            }) => {
                if accepted > 0 {
                    self.answered_at = now;
                    self.answers_heard(accepted, now);
                }
                if !hashes.is_empty() {
                    self.host.event(Event::Hashes(&hashes));
                }
            }
            Ok(Received::Accepted) => {
                self.answered_at = now;
                self.answers_heard(1, now);
            }
            Ok(Received::Rejected { reason, detail }) => {
                self.answered_at = now;
                self.answers_heard(1, now);
                if reason == RejectReason::Paused {
                    // Wait for the relay's host rather than spin.
                    self.next_compute = now + PAUSED_RETRY_MS;
                }
                self.host.event(Event::Rejected {
                    reason,
                    detail: &detail,
                });
            }
            Ok(_) => {}
            Err(SessionEnd::Resync(why)) => return Err(End::Resync(why)),
            Err(SessionEnd::Refused(why)) => return Err(End::Refused(why)),
            Err(SessionEnd::Fatal(why)) => return Err(End::Failed(why)),
        }
        Ok(())
    }

    /// `n` contributions were answered now: the oldest in flight, as the relay answers in
    /// order (near enough for a running estimate of the round trip).
    fn answers_heard(&mut self, n: usize, now: f64) {
        let mut sent = None;
        for _ in 0..n {
            sent = self.sent_at.pop_front().or(sent);
        }
        if let Some(sent) = sent {
            let sample = now - sent;
            self.round_trip_ms = Some(
                self.round_trip_ms
                    .map_or(sample, |rtt| rtt + ROUND_TRIP_WEIGHT * (sample - rtt)),
            );
        }
    }

    /// Why the connection should start over, when contributions in flight went unanswered
    /// for [`ANSWERS_LOST_MS`]. (Not in a committee job: a vote waits for its round, for as
    /// long as the relay's host lets rounds wait.)
    fn lost_answers(&self, session: &Session) -> Option<String> {
        let silent_ms = self.clock.now_ms() - self.answered_at;
        (session.in_flight() > 0 && !session.committee() && silent_ms >= ANSWERS_LOST_MS).then(
            || {
                format!(
                    "no answer to {} contributions in {:.0} s: they were lost",
                    session.in_flight(),
                    silent_ms / 1_000.0
                )
            },
        )
    }

    /// Tells the host where the peer stands.
    async fn tick(&mut self, peer: &PeerState, session: &Session) {
        let now = self.clock.now_ms();
        if session.in_flight() == 0 {
            self.answered_at = now;
        }
        let activity = activity(session, peer, self.host.paused(), now - self.answered_at);
        if activity != Activity::Training {
            self.tally.not_training();
        }
        self.host
            .tick(View {
                peer,
                session,
                tally: &self.tally,
                activity,
                now_ms: now,
            })
            .await;
    }

    /// `msg`, and if it is a log batch, every batch that follows on from it among the frames
    /// already delivered, as one. The first other message read is `held`.
    async fn merge_delivered(
        &mut self,
        msg: Message,
        conn: &mut T::Connection,
        held: &mut Option<Result<Message, End>>,
    ) -> Message {
        let Message::LogBatch {
            first_version,
            mut entries,
        } = msg
        else {
            return msg;
        };
        while entries.len() < MERGED_ENTRIES {
            let Some(incoming) = future::poll_once(conn.recv()).await else {
                break;
            };
            match self.decode(incoming) {
                Ok(Message::LogBatch {
                    first_version: next,
                    entries: more,
                }) if next.0 == first_version.0 + entries.len() as u64 => entries.extend(more),
                other => {
                    *held = Some(other);
                    break;
                }
            }
        }
        Message::LogBatch {
            first_version,
            entries,
        }
    }

    /// After a failed send: the relay's close frame, if one arrives soon, says how the
    /// connection ended (a refusal such as "dropped by the relay's host" must not be retried
    /// as if the line had dropped).
    async fn why_closed(&mut self, conn: &mut T::Connection, failed: String) -> End {
        let deadline = self.clock.now_ms() + CLOSE_GRACE_MS;
        loop {
            let left = deadline - self.clock.now_ms();
            if left <= 0.0 {
                return End::Retry(failed);
            }
            let timer = async {
                self.clock.sleep_ms(left).await;
                None
            };
            match future::or(async { Some(conn.recv().await) }, timer).await {
                None => return End::Retry(failed),
                Some(incoming) => {
                    if let Err(end) = self.decode(incoming) {
                        return match end {
                            End::Retry(_) => End::Retry(failed),
                            end => end,
                        };
                    }
                }
            }
        }
    }

    /// The next message, or how the connection ended.
    fn decode(&mut self, incoming: Incoming) -> Result<Message, End> {
        match incoming {
            Incoming::Frame(bytes) => {
                self.tally.bytes_received += framing::server_frame_len(bytes.len()) as u64;
                Message::decode(&bytes)
                    .map_err(|e| End::Refused(format!("the relay sent a malformed message: {e}")))
            }
            Incoming::Closed { code, reason } => {
                let reason = if reason.is_empty() {
                    "no reason given".to_string()
                } else {
                    reason
                };
                let said = format!("{reason} (close code {code})");
                Err(if close::is_fatal(code) {
                    End::Refused(format!("the relay refused this peer: {said}"))
                } else if code == close::UNKNOWN_PEER {
                    End::Rejoin(format!("the relay does not know this peer's id: {said}"))
                } else {
                    End::Retry(format!("the relay closed the connection: {said}"))
                })
            }
            Incoming::Lost(why) => Err(End::Retry(why)),
            Incoming::Unexpected(what) => Err(End::Refused(format!("the relay sent {what}"))),
        }
    }
}

fn next_delay(delays: &mut impl Iterator<Item = Duration>) -> f64 {
    delays
        .next()
        .unwrap_or(Duration::from_secs(3))
        .as_secs_f64()
        * 1_000.0
}

/// What the peer does, from its session and how long answers have been missing.
fn activity(session: &Session, peer: &PeerState, paused: bool, unanswered_ms: f64) -> Activity {
    if !session.streaming() {
        Activity::Connecting
    } else if session.catching_up(peer) {
        Activity::Replaying { to: session.head() }
    } else if paused {
        Activity::Paused
    } else if session.quarantined() {
        Activity::Quarantined
    } else if let Some(versions) = session.behind() {
        Activity::Behind { versions }
    } else if unanswered_ms >= ANSWERS_OVERDUE_MS {
        Activity::Overdue {
            seconds: (unanswered_ms / 1_000.0).floor() as u64,
        }
    } else {
        Activity::Training
    }
}
