//! The log on NATS JetStream: one stream per job (`ONEBYTE_<job>_LOG`, file storage, replicated),
//! one message per append, so a tick's entries are durable together or not at all.
//!
//! Appends are fenced by JetStream itself: each is published with `Nats-Expected-Last-Sequence`
//! set to the stream sequence of the message at the head this writer knows, so a writer that
//! lost track of the head (a deposed sequencer) is refused by the stream's leader, whatever it
//! believes. Each append also carries a `Nats-Msg-Id` unique to this writer and version, so a
//! retry after a lost acknowledgement is recognised as the same message, never written twice.
//!
//! Every process that opens the log follows the stream from its first message with an ordered
//! consumer (the *pump*): it keeps a sparse index from versions to stream sequences, the
//! counter table at its head with checkpoints behind it, and the newest entries, and publishes
//! what other writers appended to this process's subscribers. Older entries are read back from
//! the stream.
//!
//! What an acknowledgement means: a quorum of the stream's replicas (2 of 3) holds the message.
//! JetStream writes it to their files at once but fsyncs on its own schedule (`sync_interval`,
//! two minutes by default), so it survives any one server killed or its machine lost, not a
//! power cut of every replica at once unless the servers run with `sync_interval: always`.

use super::sqlite::{CHECKPOINT_EVERY, DENSE_CHECKPOINTS, SPARSE_CHECKPOINT_EVERY};
use super::{Chunk, LogStoreError};
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{Counter, JobId, LogCursor, LogEntry, PeerId, Version, varint};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Entries kept in memory behind the head: reads and counter tables of recent versions (the
/// ones joins and lagging peers ask for) never go to the stream.
pub const RECENT_ENTRIES: usize = (DENSE_CHECKPOINTS * CHECKPOINT_EVERY) as usize;
/// The index records one message in this many.
const INDEX_EVERY: u64 = 64;
/// How long an append keeps retrying while JetStream elects a leader or a server restarts.
const APPEND_PATIENCE: Duration = Duration::from_secs(30);
/// How long one pull of an ordered consumer waits (its heartbeats come twice as often): a
/// consumer whose server went away is noticed and made again within a few seconds, not the
/// half minute of the client's default.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(3);
/// The message format written; a reader refuses one it does not know.
const FORMAT: u8 = 1;

/// A failure of the log on JetStream.
#[derive(Debug, thiserror::Error)]
pub enum JetstreamError {
    #[error("JetStream could not {what}: {source}")]
    Nats {
        what: &'static str,
        source: async_nats::Error,
    },
    #[error("the log stream {stream} does not read back at its message {sequence}: {what}")]
    Corrupt {
        stream: String,
        sequence: u64,
        what: String,
    },
    #[error(
        "JetStream did not take the append at version {first} within {}s: {last}",
        APPEND_PATIENCE.as_secs()
    )]
    Unavailable { first: Version, last: String },
    #[error(
        "the stream {stream} keeps {has} replica(s) but {asked} were asked (--nats-replicas): \
         a stream's replicas are set when it is made; ask {has}, or change the stream with \
         `nats stream edit`"
    )]
    Replicas {
        stream: String,
        has: usize,
        asked: usize,
    },
}

fn nats(what: &'static str) -> impl FnOnce(async_nats::Error) -> JetstreamError {
    move |source| JetstreamError::Nats { what, source }
}

/// Where a job's log stream lives and how it is made.
#[derive(Debug, Clone)]
pub struct StreamPlace {
    pub jetstream: jetstream::Context,
    pub job: JobId,
    /// Copies JetStream keeps of each message (3 in a cluster; 1 for a lone server).
    pub replicas: usize,
}

impl StreamPlace {
    pub fn stream_name(&self) -> String {
        format!("ONEBYTE_{:016x}_LOG", self.job.0)
    }

    pub fn subject(&self) -> String {
        format!("onebyte.{:016x}.log", self.job.0)
    }
}

/// The head this writer fences its next append with: a version and the stream sequence of the
/// message that ends there (0 for an empty stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    head: Version,
    sequence: u64,
}

/// What the pump has read of the stream.
struct Pumped {
    tip: Tip,
    /// `(first version, stream sequence)` of one message in [`INDEX_EVERY`].
    index: Vec<(Version, u64)>,
    /// The counter table at `tip.head`.
    cursor: LogCursor,
    /// Counter tables at multiples of [`CHECKPOINT_EVERY`], thinned like the SQLite log's.
    checkpoints: BTreeMap<Version, Arc<Vec<(PeerId, Counter)>>>,
    /// The entries at `recent_from..tip.head`.
    recent: VecDeque<LogEntry>,
    recent_from: Version,
}

/// The log in a JetStream stream.
pub struct JetstreamLog {
    stream: stream::Stream,
    jetstream: jetstream::Context,
    subject: String,
    name: String,
    /// Names this writer's messages, so its retries are deduplicated and nobody else's are.
    writer: String,
    pumped: Mutex<Pumped>,
    /// The pump's head as it moves (reads wait for it).
    pumped_head: watch::Sender<Version>,
    /// The newest head this process knows: its own acknowledged appends or the pump's.
    tip: Mutex<Tip>,
}

/// The pump's ordered consumer, handed from the opening replay to the background task.
pub struct Pump {
    stream: stream::Stream,
    messages: Option<consumer::pull::Ordered>,
}

/// How long the pump tries to follow the stream again (servers restarting, a leader being
/// elected) before it gives up.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(60);
/// After this long without a message the pump asks the stream whether it holds more than
/// was taken (an idle log is quiet; a stuck consumer is too).
const QUIET_CHECK: Duration = Duration::from_secs(5);

impl JetstreamLog {
    /// The job's log stream, made if it does not exist, read from its first message to its
    /// last; the returned [`Pump`] follows it from there.
    pub async fn open(place: &StreamPlace) -> Result<(JetstreamLog, Pump), JetstreamError> {
        let name = place.stream_name();
        let subject = place.subject();
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: place.replicas,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let (stream, last, messages) = patiently(|| async {
            let mut stream = stream_as_asked(
                &place.jetstream,
                config.clone(),
                "open the job's log stream",
            )
            .await?;
            let last = stream
                .info()
                .await
                .map_err(|e| nats("read the log stream's state")(e.into()))?
                .state
                .last_sequence;
            let messages = follow(&stream, 1).await?;
            Ok((stream, last, messages))
        })
        .await?;
        let messages = Some(messages);
        let mut writer = [0u8; 8];
        getrandom::fill(&mut writer).expect("the system has randomness");
        let log = JetstreamLog {
            stream,
            jetstream: place.jetstream.clone(),
            subject,
            name,
            writer: hex(&writer),
            pumped: Mutex::new(Pumped {
                tip: Tip {
                    head: Version(0),
                    sequence: 0,
                },
                index: Vec::new(),
                cursor: LogCursor::new(Version(0), []),
                checkpoints: BTreeMap::new(),
                recent: VecDeque::new(),
                recent_from: Version(0),
            }),
            pumped_head: watch::Sender::new(Version(0)),
            tip: Mutex::new(Tip {
                head: Version(0),
                sequence: 0,
            }),
        };
        let mut pump = Pump {
            stream: log.stream.clone(),
            messages,
        };
        while log.pumped_tip().sequence < last {
            pump.next(&log).await?;
        }
        Ok((log, pump))
    }

    pub fn head(&self) -> Version {
        self.tip.lock().expect("no panics while holding it").head
    }

    fn pumped_tip(&self) -> Tip {
        self.pumped.lock().expect("no panics while holding it").tip
    }

    /// Appends `entries` at `first..` as one message, fenced on the stream's last sequence.
    pub async fn append(&self, first: Version, entries: &[LogEntry]) -> Result<(), LogStoreError> {
        let tip = *self.tip.lock().expect("no panics while holding it");
        if tip.head != first {
            return Err(LogStoreError::NotAtHead {
                head: tip.head,
                given: first,
            });
        }
        let payload = encode(first, entries);
        let id = format!("{}-{}", self.writer, first.0);
        let deadline = tokio::time::Instant::now() + APPEND_PATIENCE;
        let ack = loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id)
                .expected_last_sequence(tip.sequence);
            let attempt = async {
                self.jetstream
                    .send_publish(self.subject.clone(), publish)
                    .await?
                    .await
            };
            let error = match attempt.await {
                Ok(ack) => break ack,
                Err(e) => e,
            };
            match error.kind() {
                PublishErrorKind::WrongLastSequence => {
                    return Err(LogStoreError::NotAtHead {
                        head: self.head(),
                        given: first,
                    });
                }
                PublishErrorKind::MaxPayloadExceeded => {
                    return Err(nats(
                        "append (the tick's entries exceed the server's max_payload)",
                    )(error.into())
                    .into());
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(JetstreamError::Unavailable {
                        first,
                        last: error.to_string(),
                    }
                    .into());
                }
                _ => {
                    tracing::debug!("append at {first} not taken yet ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let end = Version(first.0 + entries.len() as u64);
        self.raise_tip(Tip {
            head: end,
            sequence: ack.sequence,
        });
        Ok(())
    }

    /// Waits until the pump has read every message the stream held when this was called, and
    /// returns the head there.
    pub async fn caught_up(&self) -> Result<Version, JetstreamError> {
        let last = patiently(|| async {
            self.stream
                .get_info()
                .await
                .map_err(|e| nats("read the log stream's state")(e.into()))
        })
        .await?
        .state
        .last_sequence;
        loop {
            let pumped = self.pumped_tip();
            if pumped.sequence >= last {
                return Ok(pumped.head);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn raise_tip(&self, to: Tip) {
        let mut tip = self.tip.lock().expect("no panics while holding it");
        if to.sequence > tip.sequence {
            *tip = to;
        }
    }

    /// Entries at `from..to`, once the pump has read that far.
    pub async fn read(&self, from: Version, to: Version) -> Result<Vec<LogEntry>, LogStoreError> {
        self.wait_pumped(to).await?;
        let start = {
            let pumped = self.pumped.lock().expect("no panics while holding it");
            if from >= pumped.recent_from {
                let skip = (from.0 - pumped.recent_from.0) as usize;
                let take = (to.0 - from.0) as usize;
                return Ok(pumped
                    .recent
                    .iter()
                    .skip(skip)
                    .take(take)
                    .copied()
                    .collect());
            }
            let at = pumped.index.partition_point(|(first, _)| *first <= from);
            // The index starts at the stream's first message, which starts at version 0.
            pumped.index[at.saturating_sub(1)]
        };
        Ok(self.read_stream(start, from, to).await?)
    }

    /// Reads the stream from the message `start` (which begins at or before `from`) with an
    /// ordered consumer of its own.
    async fn read_stream(
        &self,
        start: (Version, u64),
        from: Version,
        to: Version,
    ) -> Result<Vec<LogEntry>, JetstreamError> {
        let mut messages = patiently(|| follow(&self.stream, start.1)).await?;
        let mut out = Vec::with_capacity((to.0 - from.0) as usize);
        let mut at = start.0;
        while at < to {
            let message = messages
                .next()
                .await
                .ok_or_else(|| nats("read the log stream")("the consumer ended".into()))?
                .map_err(|e| nats("read the log stream")(e.into()))?;
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let (first, entries) =
                decode(&message.payload).map_err(|what| self.corrupt(sequence, what))?;
            if first != at {
                return Err(self.corrupt(sequence, format!("it starts at {first}, not {at}")));
            }
            for (i, entry) in entries.into_iter().enumerate() {
                let version = Version(first.0 + i as u64);
                if version >= from && version < to {
                    out.push(entry);
                }
                at = Version(version.0 + 1);
            }
        }
        Ok(out)
    }

    /// Each peer's last counter in `log[0..at)`.
    pub async fn counter_table(
        &self,
        at: Version,
    ) -> Result<Vec<(PeerId, Counter)>, LogStoreError> {
        self.wait_pumped(at).await?;
        let (since, table) = {
            let pumped = self.pumped.lock().expect("no panics while holding it");
            if at == pumped.tip.head {
                return Ok(pumped.cursor.table());
            }
            match pumped.checkpoints.range(..=at).next_back() {
                Some((version, table)) => (*version, table.as_ref().clone()),
                None => (Version(0), Vec::new()),
            }
        };
        let mut cursor = LogCursor::new(since, table);
        for entry in self.read(since, at).await? {
            cursor.pack_one(&entry);
        }
        Ok(cursor.table())
    }

    async fn wait_pumped(&self, to: Version) -> Result<(), LogStoreError> {
        let mut head = self.pumped_head.subscribe();
        head.wait_for(|head| *head >= to)
            .await
            .map_err(|_| LogStoreError::Closed)?;
        Ok(())
    }

    fn corrupt(&self, sequence: u64, what: impl Into<String>) -> JetstreamError {
        JetstreamError::Corrupt {
            stream: self.name.clone(),
            sequence,
            what: what.into(),
        }
    }
}

impl Pump {
    /// Takes the stream's next message into `log`'s index, table and recent entries, and
    /// returns it as a chunk.
    pub async fn next(&mut self, log: &JetstreamLog) -> Result<Chunk, JetstreamError> {
        let mut failing_since = None;
        let (message, sequence) = loop {
            let failed = match self.messages.as_mut() {
                Some(messages) => match tokio::time::timeout(QUIET_CHECK, messages.next()).await {
                    Ok(Some(Ok(message))) => match message.info().map(|i| i.stream_sequence) {
                        Ok(sequence) => break (message, sequence),
                        Err(e) => e.to_string(),
                    },
                    Ok(Some(Err(e))) => e.to_string(),
                    Ok(None) => "the consumer ended".to_string(),
                    // Quiet: fine while the stream holds nothing after what was taken; else
                    // the consumer is stuck (seen after its stream's leader was killed:
                    // neither messages nor an error came again) and is made anew.
                    Err(_) => match self.stream.get_info().await {
                        Ok(info) if info.state.last_sequence > log.pumped_tip().sequence => {
                            format!(
                                "the consumer stalled at {} of the stream's {}",
                                log.pumped_tip().sequence,
                                info.state.last_sequence
                            )
                        }
                        _ => continue,
                    },
                },
                None => match follow(&self.stream, log.pumped_tip().sequence + 1).await {
                    Ok(messages) => {
                        self.messages = Some(messages);
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
            };
            // Follow again from after the last message taken.
            self.messages = None;
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > FOLLOW_PATIENCE {
                return Err(nats("follow the log stream")(failed.into()));
            }
            tracing::warn!("following the log stream again: {failed}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (first, entries) =
            decode(&message.payload).map_err(|what| log.corrupt(sequence, what))?;
        let chunk = {
            let mut pumped = log.pumped.lock().expect("no panics while holding it");
            if first != pumped.tip.head {
                return Err(log.corrupt(
                    sequence,
                    format!(
                        "it starts at {first}, but the log before it ends at {}",
                        pumped.tip.head
                    ),
                ));
            }
            if pumped.index.is_empty() || sequence.is_multiple_of(INDEX_EVERY) {
                pumped.index.push((first, sequence));
            }
            for entry in &entries {
                pumped.cursor.pack_one(entry);
                let version = pumped.cursor.version();
                if version.0.is_multiple_of(CHECKPOINT_EVERY) {
                    let table = Arc::new(pumped.cursor.table());
                    pumped.checkpoints.insert(version, table);
                    let dense_from = version
                        .0
                        .saturating_sub(DENSE_CHECKPOINTS * CHECKPOINT_EVERY);
                    pumped.checkpoints.retain(|v, _| {
                        v.0 >= dense_from || v.0.is_multiple_of(SPARSE_CHECKPOINT_EVERY)
                    });
                }
                pumped.recent.push_back(*entry);
            }
            while pumped.recent.len() > RECENT_ENTRIES {
                pumped.recent.pop_front();
                pumped.recent_from = Version(pumped.recent_from.0 + 1);
            }
            let end = Version(first.0 + entries.len() as u64);
            pumped.tip = Tip {
                head: end,
                sequence,
            };
            Chunk {
                first,
                entries: entries.into(),
            }
        };
        log.raise_tip(log.pumped_tip());
        log.pumped_head.send_replace(tip_end(&chunk));
        Ok(chunk)
    }
}

/// An ordered consumer of the stream from the message `start` on.
async fn follow(
    stream: &stream::Stream,
    start: u64,
) -> Result<consumer::pull::Ordered, JetstreamError> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            max_expires: PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("follow the log stream")(e.into()))?
        .messages()
        .await
        .map_err(|e| nats("follow the log stream")(e.into()))
}

fn tip_end(chunk: &Chunk) -> Version {
    Version(chunk.first.0 + chunk.entries.len() as u64)
}

/// One append as a message: the format, the first version, the count, then each entry's peer,
/// counter and byte.
fn encode(first: Version, entries: &[LogEntry]) -> Bytes {
    let mut out = Vec::with_capacity(16 + entries.len() * 6);
    out.push(FORMAT);
    varint::put(&mut out, first.0);
    varint::put(&mut out, entries.len() as u64);
    for entry in entries {
        varint::put(&mut out, u64::from(entry.peer.0));
        varint::put(&mut out, entry.counter.0);
        out.push(entry.byte);
    }
    out.into()
}

fn decode(mut payload: &[u8]) -> Result<(Version, Vec<LogEntry>), String> {
    let Some((&format, rest)) = payload.split_first() else {
        return Err("the message is empty".into());
    };
    if format != FORMAT {
        return Err(format!(
            "its format {format} is not one this relay reads ({FORMAT})"
        ));
    }
    payload = rest;
    let field = |payload: &mut &[u8], name| varint::get(payload, name).map_err(|e| e.to_string());
    let first = Version(field(&mut payload, "first")?);
    let count = field(&mut payload, "count")?;
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let peer = field(&mut payload, "peer")?;
        let counter = field(&mut payload, "counter")?;
        let Some((&byte, rest)) = payload.split_first() else {
            return Err("an entry is cut short".into());
        };
        payload = rest;
        entries.push(LogEntry {
            peer: PeerId(u32::try_from(peer).map_err(|_| "a peer id is out of range")?),
            counter: Counter(counter),
            byte,
        });
    }
    if !payload.is_empty() {
        return Err("bytes follow its last entry".into());
    }
    Ok((first, entries))
}

/// Tries `attempt` until it succeeds, fails with something other than a timeout, or
/// [`FOLLOW_PATIENCE`] has passed: a cluster that is starting or electing a leader answers late.
pub(crate) async fn patiently<T, F, Fut>(mut attempt: F) -> Result<T, JetstreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, JetstreamError>>,
{
    let deadline = tokio::time::Instant::now() + FOLLOW_PATIENCE;
    loop {
        match attempt().await {
            Err(e) if tokio::time::Instant::now() < deadline && is_timeout(&e) => {
                tracing::warn!("{e}; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            done => return done,
        }
    }
}

/// The stream `config` names, made if missing; one made before with another number of
/// replicas is refused rather than used as it is.
pub(crate) async fn stream_as_asked(
    jetstream: &jetstream::Context,
    config: stream::Config,
    what: &'static str,
) -> Result<stream::Stream, JetstreamError> {
    let asked = config.num_replicas;
    let stream = jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| nats(what)(e.into()))?;
    let made = &stream.cached_info().config;
    if made.num_replicas != asked {
        return Err(JetstreamError::Replicas {
            stream: made.name.clone(),
            has: made.num_replicas,
            asked,
        });
    }
    Ok(stream)
}

/// A failure that waiting may cure (as opposed to a refusal, such as three replicas asked of
/// a lone server).
fn is_timeout(error: &JetstreamError) -> bool {
    let text = error.to_string();
    text.contains("timed out") || text.contains("no responders")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_decodes_to_what_was_encoded() {
        let entries = [
            LogEntry {
                peer: PeerId(3),
                counter: Counter(1 << 40),
                byte: 200,
            },
            LogEntry {
                peer: PeerId(0),
                counter: Counter(0),
                byte: 0,
            },
        ];
        let payload = encode(Version(77), &entries);
        assert_eq!(decode(&payload), Ok((Version(77), entries.to_vec())));
        assert!(decode(&payload[..payload.len() - 1]).is_err());
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut other_format = payload.to_vec();
        other_format[0] = 9;
        assert!(decode(&other_format).unwrap_err().contains("format 9"));
    }
}
