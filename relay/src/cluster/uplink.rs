//! The edge's side: its sockets' commands go to the sequencer as records on `RAW`, one message
//! per tick, and the sequencer's answers come back to the channels those commands carried.
//!
//! To the sockets this is the sequencer: the same [`Command`] sender and [`Standing`] watch a
//! single relay gives them.

use super::wire::{Announcement, Answer, Record, Tick};
use super::{Names, draw};
use crate::log::JetstreamError;
use crate::sequencer::{Command, Joined, Outgoing, Refusal, Standing};
use crate::store::StoreError;
use async_nats::jetstream::{self, context::PublishErrorKind};
use futures_util::StreamExt;
use protocol::{PeerId, close};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long a tick's publish keeps retrying (an election, a server restarting) before the
/// edge gives up on the sequencer and closes its sockets.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);

/// How long a command waits for a sequencer to be heard (an edge that has just started hears
/// one within a second) before it is refused.
const UNSEQUENCED_WAIT: Duration = Duration::from_secs(5);

/// A socket of this edge, as the sequencer's answers reach it.
struct Conn {
    reply: Option<oneshot::Sender<Result<Joined, Refusal>>>,
    outbox: mpsc::Sender<Outgoing>,
    kick: Option<oneshot::Sender<Refusal>>,
}

/// A host's request waiting for the sequencer's answer.
enum Request {
    Pause(oneshot::Sender<Result<(), Arc<StoreError>>>),
    Drop(oneshot::Sender<bool>),
    Release(oneshot::Sender<Result<bool, Arc<StoreError>>>),
}

/// Starts an edge: the sender its sockets give commands to and the standing they read.
pub async fn start(
    nats: &super::Connection,
    names: Names,
    replicas: usize,
    tick: Duration,
) -> Result<(mpsc::Sender<Command>, watch::Receiver<Standing>), JetstreamError> {
    let edge = draw();
    let answers = nats
        .client
        .subscribe(names.edge_subject(edge))
        .await
        .map_err(|e| failed("hear the sequencer's answers", e.into()))?;
    let announcements = nats
        .client
        .subscribe(names.announce_subject())
        .await
        .map_err(|e| failed("hear the sequencer", e.into()))?;
    super::raw_stream(&nats.jetstream, &names, replicas).await?;
    let (commands, command_rx) = mpsc::channel(65_536);
    let (standing, standing_rx) = watch::channel(Standing::default());
    let (failed, failures) = mpsc::channel(1);
    let uplink = Uplink {
        jetstream: nats.jetstream.clone(),
        subject: names.raw_subject(),
        edge,
        epoch: None,
        sent: 0,
        conns: HashMap::new(),
        sockets: HashMap::new(),
        requests: HashMap::new(),
        next: 0,
        records: Vec::new(),
        failed,
        waiting: Vec::new(),
        standing,
        tick,
    };
    tracing::info!(edge = format!("{edge:016x}"), "an edge of the job");
    let mut connects = nats.connects.clone();
    connects.mark_unchanged();
    tokio::spawn(uplink.run(command_rx, answers, announcements, connects, failures));
    Ok((commands, standing_rx))
}

fn failed(what: &'static str, source: async_nats::Error) -> JetstreamError {
    JetstreamError::Nats { what, source }
}

struct Uplink {
    jetstream: jetstream::Context,
    subject: String,
    edge: u64,
    /// The sequencer in charge, once heard.
    epoch: Option<u64>,
    /// Ticks published (names each for deduplication).
    sent: u64,
    conns: HashMap<u64, Conn>,
    /// A joined socket's connection, by the peer and the socket number the sequencer gave it.
    sockets: HashMap<(PeerId, u64), u64>,
    requests: HashMap<u64, Request>,
    /// The next connection or request number.
    next: u64,
    records: Vec<Record>,
    /// A tick `RAW` did not take: what was in flight may be lost, so every socket starts over.
    failed: mpsc::Sender<()>,
    /// Commands that came before any sequencer was heard, and when.
    waiting: Vec<(tokio::time::Instant, Command)>,
    standing: watch::Sender<Standing>,
    tick: Duration,
}

impl Uplink {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut answers: async_nats::Subscriber,
        mut announcements: async_nats::Subscriber,
        mut connects: watch::Receiver<u64>,
        mut failures: mpsc::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.take(command),
                    None => return,
                },
                Some(message) = answers.next() => match Answer::decode(&message.payload) {
                    Ok(answer) => self.answer(answer),
                    Err(e) => tracing::warn!("{e}"),
                },
                Some(message) = announcements.next() => match Announcement::decode(&message.payload) {
                    Ok(announcement) => self.heard(announcement),
                    Err(e) => tracing::warn!("{e}"),
                },
                Ok(()) = connects.changed() => {
                    // Answers may have been lost while we were away: start over.
                    self.close_all("the relay's edge reconnected to its cluster: reconnect");
                }
                Some(()) = failures.recv() => {
                    self.close_all("the relay's cluster did not answer: reconnect");
                }
                _ = tick.tick() => self.publish(),
            }
        }
    }

    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// A command from a socket or the host becomes a record (or an answer at once, when no
    /// sequencer is known).
    fn take(&mut self, command: Command) {
        if self.epoch.is_none() {
            self.waiting.push((tokio::time::Instant::now(), command));
            return;
        }
        let record = match command {
            Command::Join {
                resume,
                from,
                outbox,
                kick,
                reply,
            } => {
                let conn = self.number();
                self.conns.insert(
                    conn,
                    Conn {
                        reply: Some(reply),
                        outbox,
                        kick: Some(kick),
                    },
                );
                Record::Join { conn, resume, from }
            }
            Command::Propose {
                peer,
                proposed,
                base,
                floor,
                byte,
            } => Record::Propose {
                peer,
                proposed,
                base,
                floor,
                byte,
            },
            Command::Leave { peer, socket } => {
                if let Some(conn) = self.sockets.remove(&(peer, socket)) {
                    self.conns.remove(&conn);
                }
                Record::Leave { peer, socket }
            }
            Command::Pause { paused, reply } => {
                let request = self.number();
                self.requests.insert(request, Request::Pause(reply));
                Record::Pause { request, paused }
            }
            Command::Drop { peer, reply } => {
                let request = self.number();
                self.requests.insert(request, Request::Drop(reply));
                Record::Drop { request, peer }
            }
            Command::Release { peer, reply } => {
                let request = self.number();
                self.requests.insert(request, Request::Release(reply));
                Record::Release { request, peer }
            }
        };
        self.records.push(record);
    }

    /// Publishes this tick's records as one `RAW` message.
    fn publish(&mut self) {
        let Some(epoch) = self.epoch else {
            let now = tokio::time::Instant::now();
            let (expired, waiting) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|(at, _)| now.duration_since(*at) > UNSEQUENCED_WAIT);
            self.waiting = waiting;
            expired
                .into_iter()
                .for_each(|(_, command)| refuse_unsequenced(command));
            return;
        };
        if self.records.is_empty() {
            return;
        }
        let payload = Tick {
            epoch,
            edge: self.edge,
            records: std::mem::take(&mut self.records),
        }
        .encode();
        self.sent += 1;
        let id = format!("{:016x}-{}", self.edge, self.sent);
        // Not awaited here: one slow acknowledgement must not hold the next ticks (nor the
        // answers this loop routes). Ticks retried out of order are harmless: a proposal
        // that arrives after its peer's leave is dropped, a leave that names an old socket
        // is ignored, and nothing is acknowledged before the sequencer has decided it.
        let jetstream = self.jetstream.clone();
        let subject = self.subject.clone();
        let failed = self.failed.clone();
        tokio::spawn(async move {
            if let Err(e) = publish_tick(&jetstream, subject, payload, &id).await {
                tracing::warn!("the sequencer's RAW stream did not take a tick: {e}");
                let _ = failed.try_send(());
            }
        });
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Joined { conn, joined } => {
                let Some(entry) = self.conns.get_mut(&conn) else {
                    return;
                };
                if let Ok(joined) = &joined {
                    self.sockets.insert((joined.peer, joined.socket), conn);
                }
                let refused = joined.is_err();
                if let Some(reply) = entry.reply.take() {
                    let _ = reply.send(joined);
                }
                if refused {
                    self.conns.remove(&conn);
                }
            }
            Answer::Outgoing {
                conn,
                after,
                frames,
            } => {
                let Some(entry) = self.conns.get_mut(&conn) else {
                    return;
                };
                if entry.outbox.try_send(Outgoing { after, frames }).is_err()
                    && let Some(kick) = entry.kick.take()
                {
                    // The socket's queue is full: as the sequencer drops a slow peer.
                    let _ = kick.send(Refusal::new(
                        close::SLOW_CONSUMER,
                        "too far behind: reconnect",
                    ));
                }
            }
            Answer::Kick { conn, refusal } => {
                if let Some(kick) = self.conns.get_mut(&conn).and_then(|c| c.kick.take()) {
                    let _ = kick.send(refusal);
                }
            }
            Answer::Paused { request, written } => {
                if let Some(Request::Pause(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(written.map_err(|e| Arc::new(StoreError::Remote(e))));
                }
            }
            Answer::Dropped { request, dropped } => {
                if let Some(Request::Drop(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(dropped);
                }
            }
            Answer::Released { request, released } => {
                if let Some(Request::Release(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(released.map_err(|e| Arc::new(StoreError::Remote(e))));
                }
            }
        }
    }

    fn heard(&mut self, announcement: Announcement) {
        if self.epoch.is_some_and(|epoch| epoch != announcement.epoch) {
            self.close_all("the relay's sequencer changed: reconnect");
        }
        if self.epoch != Some(announcement.epoch) {
            tracing::info!(
                epoch = format!("{:016x}", announcement.epoch),
                "a sequencer is in charge"
            );
        }
        self.epoch = Some(announcement.epoch);
        for (_, command) in std::mem::take(&mut self.waiting) {
            self.take(command);
        }
        let standing = Standing {
            paused: announcement.paused,
            peers: announcement.peers as usize,
        };
        self.standing.send_if_modified(|now| {
            let changed = *now != standing;
            *now = standing;
            changed
        });
    }

    /// Closes every socket (they reconnect and resume) and forgets what was in flight.
    fn close_all(&mut self, reason: &str) {
        for (_, mut conn) in self.conns.drain() {
            if let Some(reply) = conn.reply.take() {
                let _ = reply.send(Err(Refusal::new(close::GOING_AWAY, reason)));
            }
            if let Some(kick) = conn.kick.take() {
                let _ = kick.send(Refusal::new(close::GOING_AWAY, reason));
            }
        }
        self.sockets.clear();
        self.requests.clear();
        self.records.clear();
    }
}

/// Publishes one tick to `RAW`, retrying (deduplicated by `id`) while JetStream elects or
/// restarts, for [`PUBLISH_PATIENCE`] at most.
async fn publish_tick(
    jetstream: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    id: &str,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    loop {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(id);
        let attempt = async {
            jetstream
                .send_publish(subject.clone(), publish)
                .await?
                .await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && e.kind() != PublishErrorKind::MaxPayloadExceeded =>
            {
                tracing::debug!("a tick not taken yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Answers a command that waited too long for a sequencer.
fn refuse_unsequenced(command: Command) {
    let refusal = || {
        Refusal::new(
            close::GOING_AWAY,
            "no sequencer is in charge of this job yet: reconnect in a moment",
        )
    };
    match command {
        Command::Join { reply, .. } => {
            let _ = reply.send(Err(refusal()));
        }
        Command::Pause { reply, .. } => {
            let _ = reply.send(Err(Arc::new(StoreError::Remote(
                "no sequencer is in charge of this job yet".into(),
            ))));
        }
        Command::Drop { reply, .. } => {
            let _ = reply.send(false);
        }
        Command::Release { reply, .. } => {
            let _ = reply.send(Err(Arc::new(StoreError::Remote(
                "no sequencer is in charge of this job yet".into(),
            ))));
        }
        Command::Propose { .. } | Command::Leave { .. } => {}
    }
}
