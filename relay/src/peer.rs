//! One peer's websocket: handshake, catch-up from the store, then the live loop.
//!
//! The first message must be a `Hello`. The peer then receives `Welcome`, the `CounterTable`
//! at the version it asked for, the log from there to the sequencer's head (read from the
//! store), and then whatever the sequencer queues for it. Everything the peer sends is checked
//! here first (size, decoding, order, rate); a violation closes the socket with a code and a
//! reason, and never disturbs anybody else.

use crate::follower::FollowerInput;
use crate::sequencer::{Command, Joined, Refusal};
use crate::server::Context;
use crate::store::Store;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use protocol::{
    Counter, Message, PROTOCOL_VERSION, PeerId, RejectReason, Resume, Serial, Version, close,
};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a new socket may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket may take to accept the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries per `LogBatch` while catching a peer up from the store.
const CATCH_UP_CHUNK: u64 = 4096;

type Sink = SplitSink<WebSocket, WsMessage>;
type Stream = SplitStream<WebSocket>;

enum Incoming {
    Message(Message),
    Closed,
}

/// Serves one upgraded socket. `origin` is the refused Origin, if it was refused; `backend` is
/// what the peer said it computes on (the websocket URL's `?backend=`), for the dashboard.
pub async fn serve(
    socket: WebSocket,
    ctx: Arc<Context>,
    refused_origin: Option<String>,
    backend: String,
) {
    let (mut sink, mut stream) = socket.split();
    if let Some(origin) = refused_origin {
        let reason = format!("origin {origin} is not allowed by this relay");
        refuse(
            &ctx,
            &mut sink,
            Refusal::new(close::FORBIDDEN_ORIGIN, reason),
        )
        .await;
        return;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_message(&ctx, &mut stream)).await {
        Err(_) => Err(Refusal::new(close::HELLO_TIMEOUT, "no Hello within 10 s")),
        Ok(Ok(Incoming::Closed)) => return,
        Ok(Ok(Incoming::Message(msg))) => check_hello(&ctx, msg),
        Ok(Err(refusal)) => Err(refusal),
    };
    let (resume, from) = match hello {
        Ok(hello) => hello,
        Err(refusal) => return refuse(&ctx, &mut sink, refusal).await,
    };

    let (outbox, inbox) = mpsc::channel::<Vec<Bytes>>(ctx.config.peer_queue);
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
        return refuse(&ctx, &mut sink, shutting_down()).await;
    }
    let joined = match reply.await {
        Ok(Ok(joined)) => joined,
        Ok(Err(refusal)) => return refuse(&ctx, &mut sink, refusal).await,
        Err(_) => return refuse(&ctx, &mut sink, shutting_down()).await,
    };
    let peer = joined.peer;
    tracing::info!(%peer, from = %from, head = %joined.live_from, %backend, "peer joined");
    ctx.stats.board.joined(peer, &backend);
    let mut connection = PeerConnection {
        ctx: &ctx,
        peer,
        sink,
        stream,
        outbox,
        inbox,
        kick,
        limiter: RateLimiter::direct(Quota::per_second(rate_limit(&ctx))),
        floor: joined.live_from,
    };
    if let Err(refusal) = connection.live(&joined, from).await {
        refuse(&ctx, &mut connection.sink, refusal).await;
    }
    let _ = ctx.sequencer.send(Command::Leave { peer }).await;
    ctx.stats.board.left(peer);
    tracing::info!(%peer, "peer left");
}

fn shutting_down() -> Refusal {
    Refusal::new(close::GOING_AWAY, "the relay is shutting down")
}

fn rate_limit(ctx: &Context) -> NonZeroU32 {
    NonZeroU32::new(ctx.config.rate_limit.max(1)).expect("max(1) is nonzero")
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
    outbox: mpsc::Sender<Vec<Bytes>>,
    inbox: mpsc::Receiver<Vec<Bytes>>,
    /// The sequencer ends this connection through it (a slow consumer, the host's drop).
    kick: oneshot::Receiver<Refusal>,
    limiter: DefaultDirectRateLimiter,
    /// A version the peer's replica has certainly reached: the log's head when it joined (it
    /// proposes nothing before catching up to it), then its latest hash report. Its base
    /// versions are recovered from their 16 low bits against it.
    floor: Version,
}

/// What woke the live loop.
enum Turn {
    Kicked(Refusal),
    Deliver(Option<Vec<Bytes>>),
    Received(Incoming),
}

impl PeerConnection<'_> {
    /// Welcome, catch-up from the store, then the live stream until either side ends it.
    async fn live(&mut self, joined: &Joined, from: Version) -> Result<(), Refusal> {
        let welcome = Message::Welcome {
            peer: joined.peer,
            job: self.ctx.job.id,
            version: joined.live_from,
            next_counter: joined.next_counter,
            secret: joined.secret,
        };
        send(self.ctx, &mut self.sink, welcome.encode().into()).await?;
        for frame in catch_up(self.ctx, from, joined.live_from).await? {
            send(self.ctx, &mut self.sink, frame).await?;
        }
        loop {
            let turn = tokio::select! {
                biased;
                refusal = &mut self.kick => Turn::Kicked(refusal.unwrap_or_else(|_| shutting_down())),
                frames = self.inbox.recv() => Turn::Deliver(frames),
                incoming = next_message(self.ctx, &mut self.stream) => Turn::Received(incoming?),
            };
            match turn {
                Turn::Kicked(refusal) => return Err(refusal),
                Turn::Deliver(Some(frames)) => self.deliver(frames).await?,
                Turn::Deliver(None) | Turn::Received(Incoming::Closed) => return Ok(()),
                Turn::Received(Incoming::Message(msg)) => self.handle(msg).await?,
            }
        }
    }

    /// Sends what the sequencer queued. A peer that stops reading blocks the send; the
    /// sequencer's kick still ends it.
    async fn deliver(&mut self, frames: Vec<Bytes>) -> Result<(), Refusal> {
        tokio::select! {
            biased;
            refusal = &mut self.kick => Err(refusal.unwrap_or_else(|_| shutting_down())),
            sent = send_all(self.ctx, &mut self.sink, frames) => sent,
        }
    }

    async fn handle(&mut self, msg: Message) -> Result<(), Refusal> {
        match msg {
            Message::Contribute {
                counter,
                base_version,
                byte,
            } => self.contribute(counter, base_version, byte).await,
            Message::HashReport { version, hash } => {
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
                if loss.is_finite() {
                    let bits = u64::from(loss.to_bits());
                    self.ctx.stats.last_loss_bits.store(bits, Relaxed);
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

    /// Hands a contribution to the sequencer, or turns it down when the peer sends faster than
    /// the relay's rate limit.
    async fn contribute(&mut self, counter: Serial, base: Serial, byte: u8) -> Result<(), Refusal> {
        if self.limiter.check().is_err() {
            let rejected = Message::Rejected {
                counter: Counter(u64::from(counter.0)),
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
        let cmd = Command::Contribute {
            peer: self.peer,
            counter,
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

/// The counter table at `from` and the log `from..to`, packed as the live stream will continue.
async fn catch_up(ctx: &Context, from: Version, to: Version) -> Result<Vec<Bytes>, Refusal> {
    let path = ctx.config.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        Store::reopen(&path)?.packed_log(from, to, CATCH_UP_CHUNK)
    });
    match read.await {
        Ok(Ok(messages)) => Ok(messages.into_iter().map(Bytes::from).collect()),
        Ok(Err(e)) => {
            tracing::error!("catch-up read failed: {e:#}");
            Err(Refusal::new(
                close::GOING_AWAY,
                "the relay could not read its log; try again",
            ))
        }
        Err(_) => Err(shutting_down()),
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

/// The next protocol message. Ping and pong are handled by the websocket layer.
async fn next_message(ctx: &Context, stream: &mut Stream) -> Result<Incoming, Refusal> {
    loop {
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
                return Message::decode(&bytes).map(Incoming::Message).map_err(|e| {
                    Refusal::new(close::MALFORMED, format!("malformed message: {e}"))
                });
            }
            WsMessage::Text(_) => {
                return Err(Refusal::new(
                    close::NOT_BINARY,
                    "text frames are not part of the protocol; messages are binary",
                ));
            }
            WsMessage::Close(_) => return Ok(Incoming::Closed),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
        }
    }
}

/// Closes the socket with `refusal`'s code and reason.
async fn refuse(ctx: &Context, sink: &mut Sink, refusal: Refusal) {
    ctx.stats.refused.fetch_add(1, Relaxed);
    tracing::info!(code = refusal.code, reason = %refusal.reason, "closing a peer socket");
    let frame = CloseFrame {
        code: refusal.code,
        reason: truncate(&refusal.reason, 123).into(),
    };
    // A peer that is not reading may never take the close frame: give it a while, then drop.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(WsMessage::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
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
