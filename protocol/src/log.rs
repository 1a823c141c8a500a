//! Packing log entries for the downlink: counters are implied when they follow on.
//!
//! Most of a peer's contributions reach the log with consecutive counters, so a `LogBatch`
//! entry names only the peer and the byte and sets a flag when the counter is anything other
//! than "that peer's previous counter in the log, plus one". A [`LogCursor`] holds the state
//! both ends need for that: the next version and each peer's last counter. The relay packs each
//! batch once for everybody; a peer that joins at version `v` first receives the cursor's
//! `CounterTable` at `v`, so it resolves the same entries to the same counters.

use crate::message::{Message, PackedEntry};
use crate::{Counter, LogEntry, PeerId, Version};
use std::collections::HashMap;
use thiserror::Error;

/// A log stream that does not fit the cursor.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    #[error("log batch starts at version {got}, expected {expected}")]
    Gap { expected: Version, got: Version },
    #[error("peer {0} appears with an implied counter but has no earlier entry")]
    UnknownPeer(PeerId),
}

/// Where a log stream stands: the next version and every peer's last counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    version: Version,
    last: HashMap<PeerId, Counter>,
}

impl LogCursor {
    /// A cursor at `version` with the given last counters.
    pub fn new(version: Version, table: impl IntoIterator<Item = (PeerId, Counter)>) -> Self {
        LogCursor {
            version,
            last: table.into_iter().collect(),
        }
    }

    /// The cursor a `CounterTable` message describes.
    pub fn from_table(version: Version, table: &[(PeerId, Counter)]) -> Self {
        LogCursor::new(version, table.iter().copied())
    }

    /// The next version this cursor expects.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The last counter of `peer` in the log so far.
    pub fn last_counter(&self, peer: PeerId) -> Option<Counter> {
        self.last.get(&peer).copied()
    }

    /// Every peer's last counter, in id order.
    pub fn table(&self) -> Vec<(PeerId, Counter)> {
        let mut entries: Vec<_> = self.last.iter().map(|(&p, &c)| (p, c)).collect();
        entries.sort_unstable();
        entries
    }

    /// The `CounterTable` message for this cursor (peers in id order).
    pub fn table_message(&self) -> Message {
        Message::CounterTable {
            version: self.version,
            entries: self.table(),
        }
    }

    /// Records `entry` as the next log position and returns how it is packed.
    pub fn pack_one(&mut self, entry: &LogEntry) -> PackedEntry {
        let implied = self
            .last
            .insert(entry.peer, entry.counter)
            .is_some_and(|prev| prev.0.checked_add(1) == Some(entry.counter.0));
        self.version = self.version.next();
        PackedEntry {
            peer: entry.peer,
            counter: (!implied).then_some(entry.counter),
            byte: entry.byte,
        }
    }

    /// Packs `entries` as the batch that continues this cursor.
    pub fn pack(&mut self, entries: &[LogEntry]) -> Message {
        let first_version = self.version;
        Message::LogBatch {
            first_version,
            entries: entries.iter().map(|e| self.pack_one(e)).collect(),
        }
    }

    /// Resolves a received batch that must start at this cursor's version.
    pub fn unpack(
        &mut self,
        first_version: Version,
        packed: &[PackedEntry],
    ) -> Result<Vec<LogEntry>, LogError> {
        if first_version != self.version {
            return Err(LogError::Gap {
                expected: self.version,
                got: first_version,
            });
        }
        let mut out = Vec::with_capacity(packed.len());
        for p in packed {
            let counter = match p.counter {
                Some(c) => c,
                None => {
                    let prev = self
                        .last
                        .get(&p.peer)
                        .ok_or(LogError::UnknownPeer(p.peer))?;
                    Counter(prev.0.wrapping_add(1))
                }
            };
            self.last.insert(p.peer, counter);
            out.push(LogEntry {
                peer: p.peer,
                counter,
                byte: p.byte,
            });
        }
        self.version = Version(self.version.0 + packed.len() as u64);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_log() -> impl Strategy<Value = Vec<LogEntry>> {
        proptest::collection::vec((0u32..6, 1u64..4, any::<u8>()), 0..200).prop_map(|steps| {
            let mut next = HashMap::new();
            steps
                .into_iter()
                .map(|(peer, step, byte)| {
                    let c = next.entry(peer).or_insert(0u64);
                    *c += step;
                    LogEntry {
                        peer: PeerId(peer),
                        counter: Counter(*c),
                        byte,
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Any split of a log into batches, packed by one cursor and unpacked by another that
        /// joined midway from a counter table, resolves to the same entries.
        #[test]
        fn packed_batches_unpack_to_the_same_log(log in any_log(), cut in 0usize..200, chunk in 1usize..17) {
            let cut = cut.min(log.len());
            let mut relay = LogCursor::default();
            let _ = relay.pack(&log[..cut]);
            let Message::CounterTable { version, entries } = relay.table_message() else { unreachable!() };
            let mut joiner = LogCursor::from_table(version, &entries);
            let mut got = Vec::new();
            for part in log[cut..].chunks(chunk) {
                let msg = Message::decode(&relay.pack(part).encode()).unwrap();
                let Message::LogBatch { first_version, entries } = msg else { unreachable!() };
                got.extend(joiner.unpack(first_version, &entries).unwrap());
            }
            prop_assert_eq!(&got[..], &log[cut..]);
            prop_assert_eq!(joiner, relay);
        }
    }

    #[test]
    fn consecutive_counters_cost_two_bytes_an_entry() {
        let mut cursor = LogCursor::default();
        let first: Vec<_> = (0..64)
            .map(|p| LogEntry {
                peer: PeerId(p),
                counter: Counter(0),
                byte: 1,
            })
            .collect();
        let _ = cursor.pack(&first);
        let second: Vec<_> = first
            .iter()
            .map(|e| LogEntry {
                counter: Counter(1),
                ..*e
            })
            .collect();
        let bytes = cursor.pack(&second).encode();
        // tag, first_version 64 (1 byte), n = 64 (1 byte), then 64 × (peer·2 + byte).
        assert_eq!(bytes.len(), 3 + 64 * 2);
    }

    #[test]
    fn gaps_and_unknown_peers_are_errors() {
        let mut cursor = LogCursor::default();
        let entry = PackedEntry {
            peer: PeerId(3),
            counter: None,
            byte: 0,
        };
        assert_eq!(
            cursor.unpack(Version(1), &[]),
            Err(LogError::Gap {
                expected: Version(0),
                got: Version(1)
            })
        );
        assert_eq!(
            cursor.unpack(Version(0), &[entry]),
            Err(LogError::UnknownPeer(PeerId(3)))
        );
    }
}
