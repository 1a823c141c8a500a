//! The broadcaster: every appended chunk of the log packed once, as the `LogBatch` every peer
//! receives, and each peer's feed of them.
//!
//! It subscribes to the log like any reader and publishes the encoded batches on one shared
//! channel. A peer's [`PeerFeed`] is its subscription: the `CounterTable` at the version it
//! asked for, then the log from there, read from the store while it is behind the shared
//! batches and taken from them once it has caught up (and read again if it falls behind them).

use crate::log::tail::{Next, Span, Tail};
use crate::log::{LogStore, LogStoreError};
use bytes::Bytes;
use protocol::{LogCursor, Version};
use tokio::sync::{broadcast, watch};

/// Entries per `LogBatch` while a peer reads the log from the store.
const READ_CHUNK: u64 = 4096;

/// One appended chunk, packed and encoded for every peer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frames published before this one.
    seq: u64,
    first: Version,
    end: Version,
    bytes: Bytes,
}

impl Span for Frame {
    fn first(&self) -> Version {
        self.first
    }
    fn end(&self) -> Version {
        self.end
    }
}

/// A handle on the broadcaster; clones share it.
#[derive(Clone)]
pub struct Broadcaster {
    log: LogStore,
    frames: broadcast::Sender<Frame>,
    /// The end of the newest frame published, set before it is sent.
    published: watch::Receiver<Version>,
    /// Frames published so far.
    sent: watch::Receiver<u64>,
    /// Frames a peer may fall behind while its socket is blocked before it is dropped.
    capacity: u64,
}

impl Broadcaster {
    /// Starts packing the log from its head. `capacity` frames are kept for peers that are
    /// behind (`--peer-queue`).
    pub async fn start(log: LogStore, capacity: usize) -> Result<Broadcaster, LogStoreError> {
        let head = log.head();
        let mut cursor = LogCursor::new(head, log.counter_table(head).await?);
        let frames = broadcast::Sender::new(capacity.max(1));
        let (published_tx, published) = watch::channel(head);
        let (sent_tx, sent) = watch::channel(0u64);
        let mut subscription = log.subscribe(head);
        let out = frames.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            // Ends with the log (the relay is shutting down) or a failed read (logged: the
            // peers then see no more batches and resync from another relay or a restart).
            loop {
                let chunk = match subscription.next().await {
                    Ok(chunk) => chunk,
                    Err(LogStoreError::Closed) => return,
                    Err(e) => return tracing::error!("the broadcaster stopped: {e}"),
                };
                let bytes = Bytes::from(cursor.pack(&chunk.entries).encode());
                let frame = Frame {
                    seq,
                    first: chunk.first,
                    end: cursor.version(),
                    bytes,
                };
                seq += 1;
                published_tx.send_replace(frame.end);
                sent_tx.send_replace(seq);
                let _ = out.send(frame);
            }
        });
        Ok(Broadcaster {
            log,
            frames,
            published,
            sent,
            capacity: capacity.max(1) as u64,
        })
    }

    /// A peer's feed of the log from `from`.
    pub fn feed(&self, from: Version) -> PeerFeed {
        let live = self.frames.subscribe();
        let sent = self.sent.clone();
        let taken = *sent.borrow();
        PeerFeed {
            log: self.log.clone(),
            tail: Tail::new(live, self.published.clone(), from),
            from,
            cursor: None,
            table_sent: false,
            sent,
            taken,
            capacity: self.capacity,
        }
    }
}

/// Why a feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error("the broadcaster has stopped")]
    Closed,
}

/// One peer's subscription to the log, as the messages it is sent.
pub struct PeerFeed {
    log: LogStore,
    tail: Tail<Frame>,
    from: Version,
    /// For batches read from the store: where they continue (rebuilt from the store's table
    /// when the feed took shared frames in between).
    cursor: Option<LogCursor>,
    table_sent: bool,
    sent: watch::Receiver<u64>,
    /// How many frames the broadcaster had published when this feed last caught up with it.
    taken: u64,
    capacity: u64,
}

impl PeerFeed {
    /// The version the next batch starts at.
    pub fn position(&self) -> Version {
        self.tail.position()
    }

    /// The next message: first the `CounterTable` at the feed's start, then `LogBatch`es.
    pub async fn next(&mut self) -> Result<Bytes, FeedError> {
        if !self.table_sent {
            let table = self.log.counter_table(self.from).await?;
            let cursor = LogCursor::new(self.from, table);
            let message = Bytes::from(cursor.table_message().encode());
            self.cursor = Some(cursor);
            self.table_sent = true;
            return Ok(message);
        }
        loop {
            let sent_before = *self.sent.borrow();
            match self.tail.next().await.map_err(|_| FeedError::Closed)? {
                Next::Live(frame) => {
                    self.taken = frame.seq + 1;
                    self.cursor = None;
                    return Ok(frame.bytes);
                }
                Next::Read { from, to } => {
                    let to = Version(to.0.min(from.0 + READ_CHUNK));
                    let entries = self.log.read(from, to).await?;
                    if entries.is_empty() {
                        continue;
                    }
                    let mut cursor = match self.cursor.take() {
                        Some(cursor) if cursor.version() == from => cursor,
                        _ => LogCursor::new(from, self.log.counter_table(from).await?),
                    };
                    let batch = Bytes::from(cursor.pack(&entries).encode());
                    self.tail.advance(cursor.version());
                    self.cursor = Some(cursor);
                    self.taken = sent_before;
                    return Ok(batch);
                }
            }
        }
    }

    /// Resolves once the broadcaster has published `capacity` frames since this feed last
    /// caught up: a peer whose socket is blocked that long is too slow to keep.
    pub async fn overrun(&mut self) {
        loop {
            if self.sent.borrow_and_update().saturating_sub(self.taken) >= self.capacity {
                return;
            }
            if self.sent.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Counter, LogEntry, Message, PeerId};
    use std::sync::Arc;

    fn chunk(first: u64, n: u64) -> Arc<[LogEntry]> {
        (first..first + n)
            .map(|v| LogEntry {
                peer: PeerId((v % 3) as u32),
                counter: Counter(v / 3),
                byte: v as u8,
            })
            .collect()
    }

    /// Unpacks what a feed sends, as a peer does.
    async fn receive(feed: &mut PeerFeed, until: Version) -> Vec<LogEntry> {
        let mut cursor = None;
        let mut got = Vec::new();
        while cursor
            .as_ref()
            .is_none_or(|c: &LogCursor| c.version() < until)
        {
            match Message::decode(&feed.next().await.unwrap()).unwrap() {
                Message::CounterTable { version, entries } => {
                    cursor = Some(LogCursor::from_table(version, &entries))
                }
                Message::LogBatch {
                    first_version,
                    entries,
                } => got.extend(
                    cursor
                        .as_mut()
                        .unwrap()
                        .unpack(first_version, &entries)
                        .unwrap(),
                ),
                other => panic!("a feed sent {other:?}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn a_feed_reads_what_is_durable_then_takes_the_shared_batches() {
        let log = LogStore::memory().await;
        log.append(Version(0), chunk(0, 9000)).await.unwrap();
        let broadcaster = Broadcaster::start(log.clone(), 4).await.unwrap();
        let mut feed = broadcaster.feed(Version(100));
        let mut late = broadcaster.feed(Version(0));
        for first in (9000..9100).step_by(10) {
            log.append(Version(first), chunk(first, 10)).await.unwrap();
        }
        let all = log.read(Version(0), Version(9100)).await.unwrap();
        assert_eq!(receive(&mut feed, Version(9100)).await, all[100..]);
        // One that fell far behind the four shared batches kept reads the rest.
        assert_eq!(receive(&mut late, Version(9100)).await, all);
        // Live: the next append comes as the shared batch.
        log.append(Version(9100), chunk(9100, 1)).await.unwrap();
        let batch = feed.next().await.unwrap();
        assert!(matches!(
            Message::decode(&batch).unwrap(),
            Message::LogBatch {
                first_version: Version(9100),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_feed_that_takes_nothing_is_overrun_after_capacity_frames() {
        let log = LogStore::memory().await;
        let broadcaster = Broadcaster::start(log.clone(), 3).await.unwrap();
        let mut feed = broadcaster.feed(Version(0));
        for v in 0..2 {
            log.append(Version(v), chunk(v, 1)).await.unwrap();
        }
        let not_yet =
            tokio::time::timeout(std::time::Duration::from_millis(200), feed.overrun()).await;
        assert!(not_yet.is_err(), "two frames behind of three");
        log.append(Version(2), chunk(2, 1)).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.overrun())
            .await
            .expect("three frames behind");
    }
}
