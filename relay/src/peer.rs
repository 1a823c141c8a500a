//! One peer's websocket: handshake, catch-up from the store, then the live loop.
//!
//! The first message must be a `Hello`. The peer then receives `Welcome` and its feed of the log
//! ([`crate::broadcaster::PeerFeed`]: the `CounterTable` at the version it asked for, the log
//! from there, read from the store while it is behind, then each batch as it is appended),
//! and the sequencer's answers to it, each after the batch it refers to. Everything the peer
//! sends is checked here first (size, decoding, order, rate); a violation closes the socket
//! with a code and a reason, and never disturbs anybody else. A joined peer is pinged, and one
//! that answers no ping or goes quiet while the job runs is closed: idle sockets cannot hold
//! the relay's places.

use crate::broadcaster::PeerFeed;
use crate::context::Context;
use crate::follower::FollowerInput;
use crate::limits::{Address, NoPlace, Place};
use crate::sequencer::{Command, Joined, Outgoing, Proposed, Refusal};
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use protocol::{
    HASH_REPORT_INTERVAL, Message, PROTOCOL_VERSION, PeerId, RejectReason, Resume, Serial, Version,
    close,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Loss reports kept from one peer: at most one a second (they only feed the status).
const LOSS_REPORT_SPACING: Duration = Duration::from_secs(1);
/// How long a closing socket may take to accept the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed socket is still read, for the peer's answering close frame, before it is
/// dropped. Dropping a socket with unread bytes resets the connection; after a reset the
/// peer's websocket fails as it answers the pings it has not read yet, before it reaches the
/// close frame behind them, and the peer never learns the code and reason.
const LINGER: Duration = Duration::from_secs(5);

type Sink = SplitSink<WebSocket, WsMessage>;
type Stream = SplitStream<WebSocket>;

enum Incoming {
    Message(Message),
    /// A ping or pong: the peer is there.
    Heard,
    Closed,
}

/// What the upgrade knew about a new socket.
pub struct Opened {
    pub remote: SocketAddr,
    /// Its place among the relay's connections, held until the socket closes.
    pub connection: Arc<Place>,
    /// The page's Origin, if the relay refuses it.
    pub refused_origin: Option<String>,
    /// What the peer said it computes on (the websocket URL's `?backend=`), for the dashboard.
    pub backend: String,
}

/// Serves one upgraded socket.
pub async fn serve(socket: WebSocket, ctx: Arc<Context>, opened: Opened) {
    let Opened {
        remote,
        connection: _connection,
        refused_origin,
        backend,
    } = opened;
    let (mut sink, mut stream) = socket.split();
    if let Some(origin) = refused_origin {
        let reason = format!("origin {origin} is not allowed by this relay");
        refuse(
            &ctx,
            &mut sink,
            &mut stream,
            Refusal::new(close::FORBIDDEN_ORIGIN, reason),
        )
        .await;
        return;
    }
    let hello_timeout = ctx.config.header_timeout();
    let hello = tokio::time::timeout(hello_timeout, async {
        loop {
            match next_message(&ctx, &mut stream).await {
                Ok(Incoming::Heard) => continue,
                other => return other,
            }
        }
    });
    let hello = match hello.await {
        Err(_) => Err(Refusal::new(
            close::HELLO_TIMEOUT,
            format!("no Hello within {} s", hello_timeout.as_secs()),
        )),
        Ok(Ok(Incoming::Closed)) => return answer_close(&mut stream).await,
        Ok(Ok(Incoming::Message(msg))) => check_hello(&ctx, msg),
        Ok(Ok(Incoming::Heard)) => unreachable!("pings are skipped above"),
        Ok(Err(refusal)) => Err(refusal),
    };
    let (resume, from) = match hello {
        Ok(hello) => hello,
        Err(refusal) => return refuse(&ctx, &mut sink, &mut stream, refusal).await,
    };
    let address = Address::of(remote.ip());
    // Held until the peer leaves: its address's place among the joined peers.
    let _joined_place = match admit(&ctx, address, resume.is_none()) {
        Ok(place) => place,
        Err(refusal) => return refuse(&ctx, &mut sink, &mut stream, refusal).await,
    };

    let (outbox, inbox) = mpsc::channel::<Outgoing>(ctx.config.peer_queue);
    let (kick_tx, kick) = oneshot::channel();
    let (reply_tx, reply) = oneshot::channel();
    let join = Command::Join {
        resume,
        from,
        outbox: outbox.clone(),
        kick: kick_tx,
        reply: reply_tx,
    };
    if ctx.sequencer.send(join).await.is_err() {
        return refuse(&ctx, &mut sink, &mut stream, shutting_down()).await;
    }
    let joined = match reply.await {
        Ok(Ok(joined)) => joined,
        Ok(Err(refusal)) => return refuse(&ctx, &mut sink, &mut stream, refusal).await,
        Err(_) => return refuse(&ctx, &mut sink, &mut stream, shutting_down()).await,
    };
    let peer = joined.peer;
    tracing::info!(%peer, from = %from, head = %joined.live_from, %backend, %address, "peer joined");
    ctx.stats.board.joined(peer, &backend, !joined.resumed);
    if joined.quarantined {
        ctx.stats.board.quarantined(peer, true);
    }
    let now = Instant::now();
    let mut connection = PeerConnection {
        ctx: &ctx,
        peer,
        sink,
        stream,
        outbox,
        inbox,
        feed: ctx.broadcaster.feed(from),
        held: VecDeque::new(),
        kick,
        limiter: RateLimiter::direct(Quota::per_second(rate_limit(&ctx))),
        floor: joined.live_from,
        last_report: Version(0),
        last_loss_at: None,
        heard_at: now,
        active_at: now,
    };
    let ended = connection.live(&joined).await;
    // The peer is gone for the sequencer at once: the goodbye below may take seconds to a
    // peer that does not read, and its place and id should not wait for it.
    let leave = Command::Leave {
        peer,
        socket: joined.socket,
    };
    let _ = ctx.sequencer.send(leave).await;
    ctx.stats.board.left(peer);
    match ended {
        Err(refusal) => refuse(&ctx, &mut connection.sink, &mut connection.stream, refusal).await,
        Ok(()) => answer_close(&mut connection.stream).await,
    }
    tracing::info!(%peer, "peer left");
}

/// A place for a peer from `address` among the joined ones, if its address has one free and
/// (for a `fresh` peer, which registers a new id) has not joined too often lately.
fn admit(ctx: &Context, address: Address, fresh: bool) -> Result<Place, Refusal> {
    let place = ctx.joined.take(address).map_err(|full| {
        let n = match full {
            NoPlace::Full(n) | NoPlace::AddressFull(n) => n,
        };
        Refusal::new(
            close::BUSY,
            format!(
                "{address} already has {n} peers joined; this relay allows no more from one address"
            ),
        )
    })?;
    // A relay that is full refuses the join anyway (FULL, from the sequencer); it should not
    // cost the address one of its new ids. (A race with another join can still let one through
    // here and be refused there; the budget is a minute's.)
    let full = ctx.standing.borrow().peers >= ctx.config.max_peers;
    if fresh && !full && !ctx.join_rate.allow(address) {
        return Err(Refusal::new(
            close::BUSY,
            format!(
                "more than {} new peers a minute from {address}; try again later",
                ctx.config.joins_per_minute
            ),
        ));
    }
    Ok(place)
}

fn shutting_down() -> Refusal {
    Refusal::new(close::GOING_AWAY, "the relay is shutting down")
}

fn rate_limit(ctx: &Context) -> NonZeroU32 {
    NonZeroU32::new(ctx.config.rate_limit.max(1)).expect("max(1) is nonzero")
}

/// A hash report must name a boundary the log (at `head`) has reached, after this socket's
/// previous one (`last`): a peer reports each boundary once, as its replica passes it.
fn check_report(head: Version, last: Version, version: Version) -> Result<(), Refusal> {
    let problem = if !version.0.is_multiple_of(HASH_REPORT_INTERVAL) || version.0 == 0 {
        format!("a hash report at {version}, not a multiple of {HASH_REPORT_INTERVAL}")
    } else if version <= last {
        format!("a hash report at {version} after one at {last}")
    } else if version > head {
        format!("a hash report at {version}, ahead of the log at {head}")
    } else {
        return Ok(());
    };
    Err(Refusal::new(close::UNEXPECTED, problem))
}

fn check_hello(ctx: &Context, msg: Message) -> Result<(Option<Resume>, Version), Refusal> {
    let Message::Hello {
        protocol,
        job,
        resume,
        from,
        token,
    } = msg
    else {
        return Err(Refusal::new(
            close::UNEXPECTED,
            "the first message must be Hello",
        ));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(Refusal::new(
            close::BAD_HELLO,
            format!("this relay speaks protocol {PROTOCOL_VERSION}, the peer {protocol}"),
        ));
    }
    if job != ctx.job.id {
        return Err(Refusal::new(
            close::WRONG_JOB,
            format!("this relay hosts job {}, not {job}", ctx.job.id),
        ));
    }
    if let Some(expected) = &ctx.config.join_token
        && !crate::secret::tokens_match(&token, expected)
    {
        return Err(Refusal::new(
            close::UNAUTHORIZED,
            if token.is_empty() {
                "this relay needs a join token"
            } else {
                "wrong join token"
            },
        ));
    }
    Ok((resume, from))
}

/// A joined peer's socket: what the sequencer queues for it goes out, what it sends is
/// checked and handed on, one handler per message.
struct PeerConnection<'a> {
    ctx: &'a Context,
    peer: PeerId,
    sink: Sink,
    stream: Stream,
    /// The sequencer's queue to this peer (the follower answers hash reports through it too).
    outbox: mpsc::Sender<Outgoing>,
    inbox: mpsc::Receiver<Outgoing>,
    /// The log, as this peer is sent it.
    feed: PeerFeed,
    /// Answers waiting for the feed to pass the batch they follow.
    held: VecDeque<Outgoing>,
    /// The sequencer ends this connection through it (a slow consumer, the host's drop).
    kick: oneshot::Receiver<Refusal>,
    limiter: DefaultDirectRateLimiter,
    /// A version the peer's replica has certainly reached: the log's head when it joined (it
    /// proposes nothing before catching up to it), then its latest hash report. Its base
    /// versions are recovered from their 16 low bits against it.
    floor: Version,
    /// The version of its latest hash report on this socket (each must be a later boundary).
    last_report: Version,
    last_loss_at: Option<Instant>,
    /// When any frame last came from it (a pong counts).
    heard_at: Instant,
    /// When it last contributed or reported a hash, or the job was last seen paused.
    active_at: Instant,
}

/// What woke the live loop.
enum Turn {
    Kicked(Refusal),
    Deliver(Option<Outgoing>),
    Batch(Result<Bytes, crate::broadcaster::FeedError>),
    Received(Incoming),
    Ping,
}

impl PeerConnection<'_> {
    /// Welcome, the log up to the head it joined at, then the live stream until either side
    /// ends it.
    async fn live(&mut self, joined: &Joined) -> Result<(), Refusal> {
        let welcome = Message::Welcome {
            peer: joined.peer,
            job: self.ctx.job.id,
            version: joined.live_from,
            next_counter: joined.next_counter,
            secret: joined.secret,
            rate_limit: rate_limit(self.ctx).get(),
        };
        send(self.ctx, &mut self.sink, welcome.encode().into()).await?;
        self.catch_up(joined.live_from).await?;
        // The socket was not read while the catch-up went out: quiet counts from here.
        (self.heard_at, self.active_at) = (Instant::now(), Instant::now());
        let idle_timeout = self.ctx.config.idle_timeout();
        // The first ping a period from now, not at once: a fresh peer has just been heard.
        let period = idle_timeout / 4;
        let mut pings = tokio::time::interval_at(Instant::now() + period, period);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let turn = tokio::select! {
                biased;
                refusal = &mut self.kick => Turn::Kicked(refusal.unwrap_or_else(|_| shutting_down())),
                frames = self.inbox.recv() => Turn::Deliver(frames),
                batch = self.feed.next() => Turn::Batch(batch),
                incoming = next_message(self.ctx, &mut self.stream) => Turn::Received(incoming?),
                _ = pings.tick() => Turn::Ping,
            };
            match turn {
                Turn::Kicked(refusal) => return Err(refusal),
                Turn::Deliver(Some(outgoing)) => {
                    self.held.push_back(outgoing);
                    self.release_held().await?;
                }
                Turn::Batch(Ok(batch)) => {
                    self.deliver(vec![batch]).await?;
                    self.release_held().await?;
                }
                Turn::Batch(Err(e)) => {
                    tracing::error!(peer = %self.peer, "the log feed failed: {e}");
                    return Err(Refusal::new(
                        close::GOING_AWAY,
                        "the relay could not read its log; try again",
                    ));
                }
                Turn::Deliver(None) | Turn::Received(Incoming::Closed) => return Ok(()),
                Turn::Received(Incoming::Heard) => self.heard_at = Instant::now(),
                Turn::Received(Incoming::Message(msg)) => {
                    self.heard_at = Instant::now();
                    self.handle(msg).await?;
                }
                Turn::Ping => {
                    self.check_quiet(idle_timeout)?;
                    // Like a delivery, a ping to a peer that stops reading may block: the
                    // sequencer's kick still ends it.
                    tokio::select! {
                        biased;
                        refusal = &mut self.kick => return Err(refusal.unwrap_or_else(|_| shutting_down())),
                        () = self.feed.overrun() => return Err(self.slow_consumer()),
                        sent = ping(&mut self.sink) => sent?,
                    }
                }
            }
        }
    }

    /// Closes a peer that answered no ping, or that neither contributed nor reported a hash
    /// for `idle_timeout` while the job ran (one following the log reports every few hundred
    /// entries; one that is training contributes).
    fn check_quiet(&mut self, idle_timeout: Duration) -> Result<(), Refusal> {
        let now = Instant::now();
        if self.ctx.standing.borrow().paused {
            self.active_at = now;
        }
        let seconds = idle_timeout.as_secs();
        let quiet = if now.duration_since(self.heard_at) > idle_timeout {
            format!("answered no ping for {seconds} s")
        } else if now.duration_since(self.active_at) > idle_timeout {
            format!("neither contributed nor reported a hash for {seconds} s")
        } else {
            return Ok(());
        };
        self.ctx.stats.idle_closed.fetch_add(1, Relaxed);
        Err(Refusal::new(close::IDLE, quiet))
    }

    /// The feed up to `to` (the head when the peer joined), sent without reading the socket:
    /// the `CounterTable`, then the log a chunk at a time.
    async fn catch_up(&mut self, to: Version) -> Result<(), Refusal> {
        let mut table = true;
        while table || self.feed.position() < to {
            table = false;
            let message = self.feed.next().await.map_err(|e| {
                tracing::error!(peer = %self.peer, "catch-up read failed: {e}");
                Refusal::new(
                    close::GOING_AWAY,
                    "the relay could not read its log; try again",
                )
            })?;
            send(self.ctx, &mut self.sink, message).await?;
        }
        Ok(())
    }

    /// Sends the held answers whose batches the peer has been sent.
    async fn release_held(&mut self) -> Result<(), Refusal> {
        while self
            .held
            .front()
            .is_some_and(|o| o.after <= self.feed.position())
        {
            let outgoing = self.held.pop_front().expect("just seen");
            self.deliver(outgoing.frames).await?;
        }
        Ok(())
    }

    /// Sends frames. A peer that stops reading blocks the send; the sequencer's kick still ends
    /// it, and so does falling too far behind the log's batches (a slow consumer).
    async fn deliver(&mut self, frames: Vec<Bytes>) -> Result<(), Refusal> {
        tokio::select! {
            biased;
            refusal = &mut self.kick => Err(refusal.unwrap_or_else(|_| shutting_down())),
            () = self.feed.overrun() => Err(self.slow_consumer()),
            sent = send_all(self.ctx, &mut self.sink, frames) => sent,
        }
    }

    /// Counts and words the end of a peer that fell too far behind the log's batches while
    /// its socket would take nothing.
    fn slow_consumer(&self) -> Refusal {
        self.ctx.stats.slow_consumers_dropped.fetch_add(1, Relaxed);
        Refusal::new(
            close::SLOW_CONSUMER,
            "dropped: the peer did not read the log fast enough and its queue filled",
        )
    }

    async fn handle(&mut self, msg: Message) -> Result<(), Refusal> {
        match msg {
            Message::Contribute {
                counter,
                base_version,
                bytes,
            } => {
                // A run: consecutive counters at one base, each its own contribution (and
                // each counted against the rate limit).
                for (i, byte) in bytes.into_iter().enumerate() {
                    let counter = Serial(counter.0.wrapping_add(i as u16));
                    self.propose(Proposed::Contribution(counter), base_version, byte)
                        .await?;
                }
                Ok(())
            }
            Message::Vote {
                round,
                base_version,
                byte,
            } => {
                self.propose(Proposed::Vote(round), base_version, byte)
                    .await
            }
            Message::HashReport { version, hash } => {
                check_report(self.ctx.log.head(), self.last_report, version)?;
                self.last_report = version;
                self.active_at = Instant::now();
                self.floor = self.floor.max(version);
                let report = FollowerInput::Report {
                    peer: self.peer,
                    version,
                    hash,
                    outbox: self.outbox.clone(),
                };
                let _ = self.ctx.follower.send(report);
                Ok(())
            }
            Message::LossReport { loss, .. } => {
                // Only the status reads losses: one a second per peer is plenty, and the
                // status shows the median over peers, so no single peer sets it.
                let now = Instant::now();
                let due = self
                    .last_loss_at
                    .is_none_or(|at| now.duration_since(at) >= LOSS_REPORT_SPACING);
                if due && loss.is_finite() && loss >= 0.0 {
                    self.last_loss_at = Some(now);
                    self.ctx.stats.board.loss(self.peer, loss);
                }
                Ok(())
            }
            Message::Hello { .. } => Err(Refusal::new(
                close::UNEXPECTED,
                "a second Hello on one socket",
            )),
            other => Err(Refusal::new(
                close::UNEXPECTED,
                format!("peers do not send {}", other.kind()),
            )),
        }
    }

    /// Hands a contribution or a committee vote to the sequencer, or turns it down when the
    /// peer sends faster than the relay's rate limit.
    async fn propose(&mut self, proposed: Proposed, base: Serial, byte: u8) -> Result<(), Refusal> {
        self.active_at = Instant::now();
        if self.limiter.check().is_err() {
            let rejected = Message::Rejected {
                counter: proposed.answer_counter(),
                reason: RejectReason::RateLimited,
                detail: format!(
                    "more than {} contributions per second",
                    rate_limit(self.ctx)
                ),
            };
            self.ctx.stats.rejected.fetch_add(1, Relaxed);
            self.ctx.stats.board.verdicts(&[], &[(self.peer, 1)]);
            return send(self.ctx, &mut self.sink, rejected.encode().into()).await;
        }
        let cmd = Command::Propose {
            peer: self.peer,
            proposed,
            base,
            floor: self.floor,
            byte,
        };
        self.ctx
            .sequencer
            .send(cmd)
            .await
            .map_err(|_| shutting_down())
    }
}

async fn send_all(ctx: &Context, sink: &mut Sink, frames: Vec<Bytes>) -> Result<(), Refusal> {
    for frame in frames {
        ctx.stats.bytes_out.fetch_add(frame.len() as u64, Relaxed);
        sink.feed(WsMessage::Binary(frame))
            .await
            .map_err(|_| Refusal::new(close::GOING_AWAY, "socket closed"))?;
    }
    sink.flush()
        .await
        .map_err(|_| Refusal::new(close::GOING_AWAY, "socket closed"))
}

async fn send(ctx: &Context, sink: &mut Sink, frame: Bytes) -> Result<(), Refusal> {
    send_all(ctx, sink, vec![frame]).await
}

async fn ping(sink: &mut Sink) -> Result<(), Refusal> {
    sink.send(WsMessage::Ping(Bytes::new()))
        .await
        .map_err(|_| Refusal::new(close::GOING_AWAY, "socket closed"))
}

/// The next protocol message, or word that the peer is there (ping and pong are answered by
/// the websocket layer).
async fn next_message(ctx: &Context, stream: &mut Stream) -> Result<Incoming, Refusal> {
    let frame = match stream.next().await {
        None | Some(Err(_)) => return Ok(Incoming::Closed),
        Some(Ok(frame)) => frame,
    };
    match frame {
        WsMessage::Binary(bytes) => {
            ctx.stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
            let limit = ctx.config.max_frame;
            if bytes.len() > limit {
                return Err(Refusal::new(
                    close::TOO_BIG,
                    format!("a {}-byte frame; the limit is {limit}", bytes.len()),
                ));
            }
            Message::decode(&bytes)
                .map(Incoming::Message)
                .map_err(|e| Refusal::new(close::MALFORMED, format!("malformed message: {e}")))
        }
        WsMessage::Text(_) => Err(Refusal::new(
            close::NOT_BINARY,
            "text frames are not part of the protocol; messages are binary",
        )),
        WsMessage::Close(_) => Ok(Incoming::Closed),
        WsMessage::Ping(_) | WsMessage::Pong(_) => Ok(Incoming::Heard),
    }
}

/// Closes the socket with `refusal`'s code and reason, so that the peer reads them: the close
/// frame is flushed, then the socket is read (and what arrives dropped) until the peer answers
/// with its own close frame or [`LINGER`] passes, and only then let go.
async fn refuse(ctx: &Context, sink: &mut Sink, stream: &mut Stream, refusal: Refusal) {
    ctx.stats.refused.fetch_add(1, Relaxed);
    tracing::info!(code = refusal.code, reason = %refusal.reason, "closing a peer socket");
    let frame = CloseFrame {
        code: refusal.code,
        reason: truncate(&refusal.reason, 123).into(),
    };
    // A peer that is not reading may never take the close frame: give it a while, then drop.
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, async {
        sink.send(WsMessage::Close(Some(frame))).await.is_ok()
    })
    .await;
    if sent != Ok(true) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// After the peer closed: tungstenite sends the answering close frame on the next read.
async fn answer_close(stream: &mut Stream) {
    let _ = tokio::time::timeout(LINGER, stream.next()).await;
}

/// A close reason may hold at most 123 bytes (RFC 6455 §5.5).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod on_the_seam {
    //! The socket handler's checks against the seam: the log's head, the sequencer's standing.

    use super::*;
    use crate::log::LogStore;
    use crate::sequencer::Standing;
    use clap::Parser;
    use protocol::{Counter, LogEntry};
    use tokio::sync::watch;

    async fn context(dir: &std::path::Path) -> (Context, watch::Sender<Standing>) {
        let config = crate::RelayConfig::parse_from([
            "onebyte-relay",
            "--max-peers",
            "1",
            "--joins-per-minute",
            "1",
            "--join-token",
            "secret",
        ]);
        let job = engine::Job::demo();
        let (stores, job_toml) = crate::store::open(&dir.join("relay.db"), Some(&job.to_toml()))
            .await
            .unwrap();
        let log = LogStore::memory().await;
        let stats = Arc::new(crate::stats::Stats::default());
        let (standing_tx, standing) = watch::channel(Standing::default());
        let ctx = Context {
            joined: crate::limits::AddressTally::new(usize::MAX, config.max_peers_per_address),
            join_rate: crate::limits::JoinRate::new(config.joins_per_minute),
            config,
            job: Arc::new(job),
            job_toml,
            broadcaster: crate::broadcaster::Broadcaster::start(log.clone(), 8)
                .await
                .unwrap(),
            log,
            snapshots: stores.snapshots,
            sequencer: mpsc::channel(1).0,
            standing,
            follower: std::sync::mpsc::channel().0,
            metrics: crate::metrics::Metrics::new(stats.clone()),
            stats,
            base_file: None,
        };
        (ctx, standing_tx)
    }

    #[tokio::test]
    async fn hash_reports_are_checked_against_the_logs_head() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _standing) = context(dir.path()).await;
        let at = Version(HASH_REPORT_INTERVAL);
        let ahead = check_report(ctx.log.head(), Version(0), at).unwrap_err();
        assert!(
            ahead.reason.contains("ahead of the log"),
            "{}",
            ahead.reason
        );
        let entries: Vec<LogEntry> = (0..HASH_REPORT_INTERVAL)
            .map(|c| LogEntry {
                peer: PeerId(0),
                counter: Counter(c),
                byte: 1,
            })
            .collect();
        ctx.log.append(Version(0), entries.into()).await.unwrap();
        assert_eq!(check_report(ctx.log.head(), Version(0), at), Ok(()));
        let again = check_report(ctx.log.head(), at, at).unwrap_err();
        assert!(again.reason.contains("after one at"), "{}", again.reason);
        let off = check_report(ctx.log.head(), Version(0), Version(3)).unwrap_err();
        assert_eq!(off.code, close::UNEXPECTED);
    }

    #[tokio::test]
    async fn a_full_relay_refuses_without_spending_the_addresss_new_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, standing) = context(dir.path()).await;
        let address = Address::of("127.0.0.1".parse().unwrap());
        // Full by the sequencer's standing: the join goes on to be refused there, and this
        // address keeps its one new id a minute.
        standing.send_modify(|s| s.peers = 1);
        let place = admit(&ctx, address, true).unwrap();
        drop(place);
        standing.send_modify(|s| s.peers = 0);
        let place = admit(&ctx, address, true).unwrap();
        drop(place);
        let refused = admit(&ctx, address, true).unwrap_err();
        assert_eq!(refused.code, close::BUSY, "{}", refused.reason);
    }

    #[tokio::test]
    async fn a_hello_names_the_job_the_protocol_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _standing) = context(dir.path()).await;
        let hello = |protocol, job, token: &str| Message::Hello {
            protocol,
            job,
            resume: None,
            from: Version(0),
            token: token.to_string(),
        };
        let id = ctx.job.id;
        assert!(check_hello(&ctx, hello(PROTOCOL_VERSION, id, "secret")).is_ok());
        let codes = [
            (hello(PROTOCOL_VERSION + 1, id, "secret"), close::BAD_HELLO),
            (
                hello(PROTOCOL_VERSION, protocol::JobId(id.0 ^ 1), "secret"),
                close::WRONG_JOB,
            ),
            (hello(PROTOCOL_VERSION, id, "wrong"), close::UNAUTHORIZED),
            (
                Message::LossReport {
                    loss: 1.0,
                    version: Version(0),
                },
                close::UNEXPECTED,
            ),
        ];
        for (msg, code) in codes {
            assert_eq!(check_hello(&ctx, msg).unwrap_err().code, code);
        }
    }
}
