//! The log seam: where the sequencer's decisions become durable, and where everyone who sends
//! or applies the log reads it.
//!
//! [`LogStore`] is one handle over a backend ([`LogBackend`]: one SQLite file, a replicated
//! NATS JetStream stream, or memory for tests and the simulation). It is an enum rather than a trait object: the backends are few
//! and known, their methods are `async`, and a new backend then shows up in every `match`
//! that must handle it. `append` is the write-ahead point: it returns once the entries are
//! durable, and only then are they published to subscribers, so nobody ever sees an entry
//! that a crash could lose. A [`LogSubscription`] is catch-up and live in one stream: it
//! reads what it has missed from the backend and then follows the appends, and falls back to
//! reading whenever it falls behind the live stream.

pub mod jetstream;
mod memory;
mod sqlite;
mod subscription;
pub mod tail;

pub use jetstream::{JetstreamError, JetstreamLog, StreamPlace};
pub use memory::MemoryLog;
pub use sqlite::{CHECKPOINT_EVERY, DENSE_CHECKPOINTS, SPARSE_CHECKPOINT_EVERY, SqliteLog};
pub use subscription::LogSubscription;

use crate::store::StoreError;
use protocol::{Counter, LogEntry, PeerId, Version};
use std::sync::Arc;
use tokio::sync::{Mutex, broadcast, watch};

/// Appended chunks kept for subscribers that are a little behind; one further behind reads
/// from the backend instead.
const LIVE_CHUNKS: usize = 1024;

/// A failure at the log seam.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jetstream(#[from] JetstreamError),
    /// The fence: an append that does not continue the log is refused, so a writer that lost
    /// track of the head can never write a version twice.
    #[error("an append at version {given}, but the log's head is {head}")]
    NotAtHead { head: Version, given: Version },
    #[error("the log is closed: the relay is shutting down")]
    Closed,
}

/// Entries appended together, as subscribers receive them.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub first: Version,
    pub entries: Arc<[LogEntry]>,
}

impl tail::Span for Chunk {
    fn first(&self) -> Version {
        self.first
    }
    fn end(&self) -> Version {
        Version(self.first.0 + self.entries.len() as u64)
    }
}

/// Where the log lives.
pub enum LogBackend {
    Sqlite(SqliteLog),
    Jetstream(Box<JetstreamLog>),
    Memory(MemoryLog),
}

/// The log: durable appends, reads, counter tables, subscriptions. Clones share it.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: LogBackend,
    /// Serialises appends: the head check and the write are one step.
    appending: Mutex<()>,
    /// The durable head, set before a chunk is published.
    head: watch::Sender<Version>,
    live: broadcast::Sender<Chunk>,
}

impl LogStore {
    /// A log over `backend`, continuing at its durable head.
    pub async fn new(backend: LogBackend) -> Result<LogStore, StoreError> {
        let head = match &backend {
            LogBackend::Sqlite(log) => log.head().await?,
            LogBackend::Jetstream(log) => log.head(),
            LogBackend::Memory(log) => log.head(),
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                backend,
                appending: Mutex::new(()),
                head: watch::Sender::new(head),
                live: broadcast::Sender::new(LIVE_CHUNKS),
            }),
        })
    }

    /// The log in the store file `file`.
    pub async fn sqlite(file: crate::store::SqliteFile) -> Result<LogStore, StoreError> {
        LogStore::new(LogBackend::Sqlite(SqliteLog::open(file).await?)).await
    }

    /// The job's log in a JetStream stream (made if missing), read to its end; a task follows
    /// it from there, so appends by other writers reach this process's subscribers.
    pub async fn jetstream(place: &StreamPlace) -> Result<LogStore, LogStoreError> {
        let (backend, mut pump) = JetstreamLog::open(place).await?;
        let log = LogStore::new(LogBackend::Jetstream(Box::new(backend))).await?;
        let inner = Arc::downgrade(&log.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = inner.upgrade() else { return };
                let LogBackend::Jetstream(backend) = &inner.backend else {
                    unreachable!("made above")
                };
                match pump.next(backend).await {
                    Ok(chunk) => publish(&inner, chunk),
                    Err(e) => {
                        // Reads wait for the pump: without it this process cannot go on.
                        tracing::error!("the log stream cannot be followed: {e}; stopping");
                        eprintln!("onebyte-relay: the log stream cannot be followed: {e}");
                        std::process::exit(2);
                    }
                }
            }
        });
        Ok(log)
    }

    /// A log in memory, empty.
    pub async fn memory() -> LogStore {
        LogStore::new(LogBackend::Memory(MemoryLog::default()))
            .await
            .expect("a memory log opens")
    }

    /// The number of durable entries: the version a replica reaches by applying all of them.
    pub fn head(&self) -> Version {
        *self.inner.head.borrow()
    }

    /// Waits until this handle has seen every entry the backend held when it was called (a
    /// replicated log may have been appended to by another writer).
    pub async fn caught_up(&self) -> Result<(), LogStoreError> {
        let at = match &self.inner.backend {
            LogBackend::Jetstream(log) => log.caught_up().await?,
            LogBackend::Sqlite(_) | LogBackend::Memory(_) => return Ok(()),
        };
        self.watch_head()
            .wait_for(|head| *head >= at)
            .await
            .map_err(|_| LogStoreError::Closed)?;
        Ok(())
    }

    /// The durable head as it moves.
    pub fn watch_head(&self) -> watch::Receiver<Version> {
        self.inner.head.subscribe()
    }

    /// Appends `entries` at versions `first..`, durably, then publishes them. Refused unless
    /// `first` is the head.
    pub async fn append(
        &self,
        first: Version,
        entries: Arc<[LogEntry]>,
    ) -> Result<(), LogStoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _turn = self.inner.appending.lock().await;
        let head = self.head();
        if first != head {
            return Err(LogStoreError::NotAtHead { head, given: first });
        }
        match &self.inner.backend {
            LogBackend::Sqlite(log) => log.append(first, entries.clone()).await?,
            LogBackend::Jetstream(log) => log.append(first, &entries).await?,
            LogBackend::Memory(log) => log.append(&entries),
        }
        publish(&self.inner, Chunk { first, entries });
        Ok(())
    }

    /// The durable entries at versions `from..to` (fewer if the head is before `to`).
    pub async fn read(&self, from: Version, to: Version) -> Result<Vec<LogEntry>, LogStoreError> {
        let to = to.min(self.head());
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(match &self.inner.backend {
            LogBackend::Sqlite(log) => log.read(from, to).await?,
            LogBackend::Jetstream(log) => log.read(from, to).await?,
            LogBackend::Memory(log) => log.read(from, to),
        })
    }

    /// Each peer's last counter in `log[0..at)`, in id order.
    pub async fn counter_table(
        &self,
        at: Version,
    ) -> Result<Vec<(PeerId, Counter)>, LogStoreError> {
        Ok(match &self.inner.backend {
            LogBackend::Sqlite(log) => log.counter_table(at).await?,
            LogBackend::Jetstream(log) => log.counter_table(at).await?,
            LogBackend::Memory(log) => log.counter_table(at),
        })
    }

    /// The log from `from` on: what is durable already, then each append as it happens.
    pub fn subscribe(&self, from: Version) -> LogSubscription {
        LogSubscription::new(self.clone(), from)
    }

    pub(crate) fn live(&self) -> (broadcast::Receiver<Chunk>, watch::Receiver<Version>) {
        (self.inner.live.subscribe(), self.inner.head.subscribe())
    }
}

/// Moves the head to `chunk`'s end and hands it to subscribers, unless the head is there
/// already (a JetStream log hears of its own appends twice: from the acknowledgement and from
/// the stream).
fn publish(inner: &Inner, chunk: Chunk) {
    let end = tail::Span::end(&chunk);
    let moved = inner.head.send_if_modified(|head| {
        let moved = end > *head;
        if moved {
            *head = end;
        }
        moved
    });
    if moved {
        // Nobody listening is fine: subscribers read what they missed from the backend.
        let _ = inner.live.send(chunk);
    }
}

#[cfg(test)]
mod tests;
