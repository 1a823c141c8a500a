//! The sequencer's side: records from `RAW` become the commands a single relay's sockets would
//! send, and what the sequencer answers goes back to the edge that holds the socket.

use super::wire::{Announcement, Answer, Record, Tick};
use super::{ANNOUNCE_EVERY, Names, draw};
use crate::log::JetstreamError;
use crate::sequencer::{Command, Outgoing, Standing};
use crate::store::StoreError;
use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How many answers may wait for one remote socket, as `--peer-queue` bounds a local one's.
const REMOTE_QUEUE: usize = 1024;

/// Reads `RAW` from now on and feeds `commands` (the sequencer's), until NATS fails for good.
/// Announces this sequencer's epoch and `standing` meanwhile.
pub async fn run(
    nats: super::Connection,
    names: Names,
    replicas: usize,
    commands: mpsc::Sender<Command>,
    standing: watch::Receiver<Standing>,
) -> Result<(), JetstreamError> {
    let client = nats.client.clone();
    let raw = super::raw_stream(&nats.jetstream, &names, replicas).await?;
    // Records sent before this epoch was announced are for another sequencer: start after
    // them.
    let mut records = crate::log::jetstream::patiently(|| async {
        raw.create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            max_expires: crate::log::jetstream::PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("read the RAW stream", e.into()))?
        .messages()
        .await
        .map_err(|e| failed("read the RAW stream", e.into()))
    })
    .await?;
    // A new epoch at each (re)connection to NATS: answers published while the connection was
    // down are lost, so every edge must start over with this sequencer.
    let mut connects = nats.connects.clone();
    connects.mark_unchanged();
    let (epochs, epoch_rx) = watch::channel(draw());
    tracing::info!(
        epoch = format!("{:016x}", *epochs.borrow()),
        "sequencing the job's RAW stream"
    );
    tokio::spawn(announce(client.clone(), names.clone(), epoch_rx, standing));
    loop {
        let message = tokio::select! {
            message = records.next() => message,
            Ok(()) = connects.changed() => {
                let epoch = draw();
                tracing::info!(epoch = format!("{epoch:016x}"), "reconnected to NATS: a new epoch");
                epochs.send_replace(epoch);
                continue;
            }
        };
        let Some(message) = message else { break };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("reading RAW: {e}");
                continue;
            }
        };
        let tick = match Tick::decode(&message.payload) {
            Ok(tick) => tick,
            Err(e) => {
                tracing::warn!("a RAW message is not an edge's tick: {e}");
                continue;
            }
        };
        if tick.epoch != *epochs.borrow() {
            continue;
        }
        let answers = Answers {
            client: client.clone(),
            subject: names.edge_subject(tick.edge),
        };
        for record in tick.records {
            if commands.send(command(record, &answers)).await.is_err() {
                return Ok(());
            }
        }
    }
    Err(failed("read the RAW stream", "the consumer ended".into()))
}

fn failed(what: &'static str, source: async_nats::Error) -> JetstreamError {
    JetstreamError::Nats { what, source }
}

/// Where one edge's answers go.
#[derive(Clone)]
struct Answers {
    client: async_nats::Client,
    subject: String,
}

impl Answers {
    async fn send(&self, answer: Answer) {
        // At most once: an edge that missed it closes its sockets when it reconnects.
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), answer.encode())
            .await
        {
            tracing::warn!("an answer to {} was not sent: {e}", self.subject);
        }
    }
}

/// The command a record stands for, with channels whose answers go to the edge.
fn command(record: Record, answers: &Answers) -> Command {
    match record {
        Record::Join { conn, resume, from } => {
            let (outbox, inbox) = mpsc::channel(REMOTE_QUEUE);
            let (kick, kicked) = oneshot::channel();
            let (reply, replied) = oneshot::channel();
            tokio::spawn(forward(conn, replied, inbox, kicked, answers.clone()));
            Command::Join {
                resume,
                from,
                outbox,
                kick,
                reply,
            }
        }
        Record::Propose {
            peer,
            proposed,
            base,
            floor,
            byte,
        } => Command::Propose {
            peer,
            proposed,
            base,
            floor,
            byte,
        },
        Record::Leave { peer, socket } => Command::Leave { peer, socket },
        Record::Pause { request, paused } => {
            let (reply, replied) = oneshot::channel::<Result<(), Arc<StoreError>>>();
            let answers = answers.clone();
            tokio::spawn(async move {
                if let Ok(written) = replied.await {
                    let written = written.map_err(|e| e.to_string());
                    answers.send(Answer::Paused { request, written }).await;
                }
            });
            Command::Pause { paused, reply }
        }
        Record::Drop { request, peer } => {
            let (reply, replied) = oneshot::channel();
            let answers = answers.clone();
            tokio::spawn(async move {
                if let Ok(dropped) = replied.await {
                    answers.send(Answer::Dropped { request, dropped }).await;
                }
            });
            Command::Drop { peer, reply }
        }
        Record::Release { request, peer } => {
            let (reply, replied) = oneshot::channel::<Result<bool, Arc<StoreError>>>();
            let answers = answers.clone();
            tokio::spawn(async move {
                if let Ok(released) = replied.await {
                    let released = released.map_err(|e| e.to_string());
                    answers.send(Answer::Released { request, released }).await;
                }
            });
            Command::Release { peer, reply }
        }
    }
}

/// One remote socket: its join's answer, then what the sequencer queues for it and its kick,
/// in the order the sequencer gave them, until the sequencer lets go of it.
async fn forward(
    conn: u64,
    replied: oneshot::Receiver<Result<crate::sequencer::Joined, crate::sequencer::Refusal>>,
    mut inbox: mpsc::Receiver<Outgoing>,
    mut kicked: oneshot::Receiver<crate::sequencer::Refusal>,
    answers: Answers,
) {
    let Ok(joined) = replied.await else { return };
    let ok = joined.is_ok();
    answers.send(Answer::Joined { conn, joined }).await;
    if !ok {
        return;
    }
    let mut kick_open = true;
    loop {
        tokio::select! {
            outgoing = inbox.recv() => match outgoing {
                Some(Outgoing { after, frames }) => {
                    answers.send(Answer::Outgoing { conn, after, frames }).await;
                }
                None => return,
            },
            refusal = &mut kicked, if kick_open => {
                kick_open = false;
                if let Ok(refusal) = refusal {
                    answers.send(Answer::Kick { conn, refusal }).await;
                }
            }
        }
    }
}

/// Announces the epoch and the standing: at once, on every change, and every
/// [`ANNOUNCE_EVERY`] besides (an edge that starts later hears it within that).
async fn announce(
    client: async_nats::Client,
    names: Names,
    mut epoch: watch::Receiver<u64>,
    mut standing: watch::Receiver<Standing>,
) {
    let subject = names.announce_subject();
    loop {
        let now = *standing.borrow_and_update();
        let announcement = Announcement {
            epoch: *epoch.borrow_and_update(),
            paused: now.paused,
            peers: now.peers as u64,
        };
        if let Err(e) = client.publish(subject.clone(), announcement.encode()).await {
            tracing::warn!("the sequencer's announcement was not sent: {e}");
        }
        tokio::select! {
            changed = standing.changed() => if changed.is_err() { return },
            changed = epoch.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
        // Changes in a burst (joins) go out together.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
