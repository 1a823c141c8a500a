//! A subscription to the log: catch-up and live in one stream.

use super::tail::{Next, Tail};
use super::{Chunk, LogStore, LogStoreError};
use protocol::Version;

/// Entries per chunk read from the backend while catching up.
const READ_CHUNK: u64 = 4096;

/// The log from a version on, chunk after chunk, each continuing the one before.
pub struct LogSubscription {
    log: LogStore,
    tail: Tail<Chunk>,
}

impl LogSubscription {
    pub(super) fn new(log: LogStore, from: Version) -> Self {
        let (live, head) = log.live();
        LogSubscription {
            log,
            tail: Tail::new(live, head, from),
        }
    }

    /// The version the next chunk starts at.
    pub fn position(&self) -> Version {
        self.tail.position()
    }

    /// The next chunk, waiting for an append when there is none.
    pub async fn next(&mut self) -> Result<Chunk, LogStoreError> {
        loop {
            match self.tail.next().await.map_err(|_| LogStoreError::Closed)? {
                Next::Live(chunk) => return Ok(chunk),
                Next::Read { from, to } => {
                    let to = Version(to.0.min(from.0 + READ_CHUNK));
                    let entries = self.log.read(from, to).await?;
                    if entries.is_empty() {
                        continue;
                    }
                    self.tail.advance(Version(from.0 + entries.len() as u64));
                    return Ok(Chunk {
                        first: from,
                        entries: entries.into(),
                    });
                }
            }
        }
    }
}
