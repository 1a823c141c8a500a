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
use governor::{Quota, RateLimiter};
use protocol::{Counter, Message, PROTOCOL_VERSION, PeerId, RejectReason, Version, close};
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

    let (outbox, mut inbox) = mpsc::channel::<Vec<Bytes>>(ctx.config.peer_queue);
    let (kick_tx, mut kick) = oneshot::channel();
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
    let result = live(
        &ctx,
        &mut sink,
        &mut stream,
        joined,
        from,
        outbox,
        &mut inbox,
        &mut kick,
    )
    .await;
    if let Err(refusal) = result {
        refuse(&ctx, &mut sink, refusal).await;
    }
    let _ = ctx.sequencer.send(Command::Leave { peer }).await;
    ctx.stats.board.left(peer);
    tracing::info!(%peer, "peer left");
}

fn shutting_down() -> Refusal {
    Refusal::new(close::GOING_AWAY, "the relay is shutting down")
}

fn check_hello(ctx: &Context, msg: Message) -> Result<(Option<PeerId>, Version), Refusal> {
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
        && token != *expected
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

#[allow(clippy::too_many_arguments)]
async fn live(
    ctx: &Context,
    sink: &mut Sink,
    stream: &mut Stream,
    joined: Joined,
    from: Version,
    outbox: mpsc::Sender<Vec<Bytes>>,
    inbox: &mut mpsc::Receiver<Vec<Bytes>>,
    kick: &mut oneshot::Receiver<Refusal>,
) -> Result<(), Refusal> {
    let welcome = Message::Welcome {
        peer: joined.peer,
        job: ctx.job.id,
        version: joined.live_from,
        next_counter: joined.next_counter,
    };
    send(ctx, sink, welcome.encode().into()).await?;
    for frame in catch_up(ctx, from, joined.live_from).await? {
        send(ctx, sink, frame).await?;
    }

    let rate = NonZeroU32::new(ctx.config.rate_limit.max(1)).expect("max(1) is nonzero");
    let limiter = RateLimiter::direct(Quota::per_second(rate));
    loop {
        tokio::select! {
            biased;
            refusal = &mut *kick => return Err(refusal.unwrap_or_else(|_| shutting_down())),
            frame = inbox.recv() => match frame {
                // A peer that stops reading blocks this send; the sequencer's kick still ends it.
                Some(frames) => tokio::select! {
                    biased;
                    refusal = &mut *kick => return Err(refusal.unwrap_or_else(|_| shutting_down())),
                    sent = send_all(ctx, sink, frames) => sent?,
                },
                None => return Ok(()),
            },
            incoming = next_message(ctx, stream) => match incoming? {
                Incoming::Closed => return Ok(()),
                Incoming::Message(msg) => match msg {
                    Message::Contribute { counter, base_version, byte } => {
                        if limiter.check().is_err() {
                            let rejected = Message::Rejected {
                                counter: Counter(u64::from(counter.0)),
                                reason: RejectReason::RateLimited,
                                detail: format!("more than {rate} contributions per second"),
                            };
                            ctx.stats.rejected.fetch_add(1, Relaxed);
                            ctx.stats.board.verdicts(&[], &[(joined.peer, 1)]);
                            send(ctx, sink, rejected.encode().into()).await?;
                        } else {
                            let cmd = Command::Contribute { peer: joined.peer, counter, base: base_version, byte };
                            ctx.sequencer.send(cmd).await.map_err(|_| shutting_down())?;
                        }
                    }
                    Message::HashReport { version, hash } => {
                        let report = FollowerInput::Report { peer: joined.peer, version, hash, outbox: outbox.clone() };
                        let _ = ctx.follower.send(report);
                    }
                    Message::LossReport { loss, .. } if loss.is_finite() => {
                        ctx.stats.last_loss_bits.store(u64::from(loss.to_bits()), Relaxed);
                    }
                    Message::LossReport { .. } => {}
                    Message::Hello { .. } => {
                        return Err(Refusal::new(close::UNEXPECTED, "a second Hello on one socket"));
                    }
                    other => {
                        return Err(Refusal::new(
                            close::UNEXPECTED,
                            format!("peers do not send {}", other.kind()),
                        ));
                    }
                },
            },
        }
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
