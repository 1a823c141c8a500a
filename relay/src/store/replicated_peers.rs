//! The peer registry in a JetStream key-value bucket, for sequencer candidates on several
//! machines: whoever sequences next knows the ids, secrets and quarantines its predecessor
//! gave.
//!
//! Only the sequencer writes the registry, so it keeps the whole registry in memory (loaded
//! once when it starts) and writes each change through, returning once the bucket holds it.
//! One key a peer, `p<id>`: the digest of its resume secret, when it left (if it did) and
//! when it was quarantined (if it is).

use super::StoreError;
use super::bucket::{PATIENCE, kv_bucket, patiently};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::PeerId;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::Mutex;

/// One peer's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    secret: [u8; 32],
    left_at: Option<i64>,
    quarantined_at: Option<i64>,
}

impl Entry {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(50);
        out.extend_from_slice(&self.secret);
        for at in [self.left_at, self.quarantined_at] {
            match at {
                Some(at) => {
                    out.push(1);
                    out.extend_from_slice(&at.to_le_bytes());
                }
                None => out.push(0),
            }
        }
        out.into()
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let secret = <[u8; 32]>::try_from(bytes.get(..32)?).ok()?;
        let mut rest = &bytes[32..];
        let mut at = || -> Option<Option<i64>> {
            let (&tag, tail) = rest.split_first()?;
            rest = tail;
            if tag == 0 {
                return Some(None);
            }
            let value = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            rest = &rest[8..];
            Some(Some(value))
        };
        let left_at = at()?;
        let quarantined_at = at()?;
        Some(Entry {
            secret,
            left_at,
            quarantined_at,
        })
    }
}

/// The registry in a bucket, with its copy in memory.
pub struct ReplicatedPeers {
    store: kv::Store,
    bucket: String,
    entries: Mutex<BTreeMap<u32, Entry>>,
}

impl ReplicatedPeers {
    /// The registry in `bucket`, made if missing, read whole; retried for a while when the
    /// cluster does not answer (it may be electing).
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<ReplicatedPeers, StoreError> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match ReplicatedPeers::open_once(jetstream, bucket, replicas).await {
                // A refusal (a bucket made with other replicas) is not retried.
                Err(e @ StoreError::Replicated { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                done => return done,
            }
        }
    }

    async fn open_once(
        jetstream: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<ReplicatedPeers, StoreError> {
        let failed = |e: async_nats::Error| StoreError::Replicated {
            bucket: bucket.to_string(),
            what: e.to_string(),
        };
        let store = crate::log::jetstream::patiently(|| {
            kv_bucket(jetstream, bucket, replicas, Duration::ZERO)
        })
        .await?;
        // Every value, read as the bucket's stream holds them (one message a key), through
        // an ordered pull consumer that notices a lost server in seconds.
        let mut entries = BTreeMap::new();
        let mut stream = jetstream
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|e| failed(e.into()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| failed(e.into()))?
            .state
            .clone();
        if state.messages > 0 {
            let mut messages = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    max_expires: crate::log::jetstream::PULL_EXPIRES,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(e.into()))?
                .messages()
                .await
                .map_err(|e| failed(e.into()))?;
            let read = async {
                loop {
                    let Some(message) = messages.next().await else {
                        return Err(failed("the consumer ended".into()));
                    };
                    let message = message.map_err(|e| failed(e.into()))?;
                    let sequence = message.info().map_err(failed)?.stream_sequence;
                    let key = message.subject.rsplit('.').next().unwrap_or_default();
                    if let Some(id) = key.strip_prefix('p').and_then(|id| id.parse::<u32>().ok()) {
                        match Entry::decode(&message.payload) {
                            Some(entry) => {
                                entries.insert(id, entry);
                            }
                            // A delete or purge marker: no value.
                            None if message.payload.is_empty() => {
                                entries.remove(&id);
                            }
                            None => {
                                return Err(StoreError::Replicated {
                                    bucket: bucket.to_string(),
                                    what: format!("the entry of peer {id} does not decode"),
                                });
                            }
                        }
                    }
                    if sequence >= state.last_sequence {
                        return Ok(());
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .map_err(|_| failed("reading the bucket took over 10 s".into()))??;
        }
        Ok(ReplicatedPeers {
            store,
            bucket: bucket.to_string(),
            entries: Mutex::new(entries),
        })
    }

    /// Writes `entry` of `id` to the bucket, then to memory.
    async fn put(
        &self,
        entries: &mut BTreeMap<u32, Entry>,
        id: u32,
        entry: Entry,
    ) -> Result<(), StoreError> {
        let value = entry.encode();
        patiently(&self.bucket, &format!("writing peer {id}"), || {
            self.store.put(format!("p{id}"), value.clone())
        })
        .await?;
        entries.insert(id, entry);
        Ok(())
    }

    /// As [`super::PeerRegistry::register`]: an id left long enough ago, else the next one.
    pub async fn register(&self, secret: [u8; 32], now: i64) -> Result<PeerId, StoreError> {
        let mut entries = self.entries.lock().await;
        let reusable = entries
            .iter()
            .filter_map(|(id, e)| e.left_at.map(|at| (at, *id)))
            .filter(|(at, _)| *at < now - super::RESUME_WINDOW_S)
            .min();
        let id = match reusable {
            Some((_, id)) => id,
            None => entries.keys().next_back().map_or(0, |last| last + 1),
        };
        let entry = Entry {
            secret,
            left_at: None,
            quarantined_at: None,
        };
        self.put(&mut entries, id, entry).await?;
        Ok(PeerId(id))
    }

    /// Changes `peer`'s entry, if it has one.
    async fn change(&self, peer: PeerId, f: impl FnOnce(&mut Entry)) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().await;
        let Some(mut entry) = entries.get(&peer.0).copied() else {
            return Ok(());
        };
        f(&mut entry);
        self.put(&mut entries, peer.0, entry).await
    }

    pub async fn set_left(&self, peer: PeerId, left_at: Option<i64>) -> Result<(), StoreError> {
        self.change(peer, |e| e.left_at = left_at).await
    }

    pub async fn all_left(&self, now: i64) -> Result<(), StoreError> {
        let connected: Vec<u32> = {
            let entries = self.entries.lock().await;
            entries
                .iter()
                .filter(|(_, e)| e.left_at.is_none())
                .map(|(id, _)| *id)
                .collect()
        };
        for id in connected {
            self.set_left(PeerId(id), Some(now)).await?;
        }
        Ok(())
    }

    pub async fn set_quarantined(&self, peer: PeerId, at: Option<i64>) -> Result<(), StoreError> {
        self.change(peer, |e| e.quarantined_at = at).await
    }

    pub async fn quarantined(&self) -> Vec<PeerId> {
        let entries = self.entries.lock().await;
        entries
            .iter()
            .filter(|(_, e)| e.quarantined_at.is_some())
            .map(|(id, _)| PeerId(*id))
            .collect()
    }

    pub async fn resumable(&self, peer: PeerId, secret: [u8; 32]) -> bool {
        let entries = self.entries.lock().await;
        entries
            .get(&peer.0)
            .is_some_and(|e| crate::secret::digests_match(&e.secret, &secret))
    }

    pub async fn count(&self) -> u64 {
        self.entries.lock().await.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Entry;

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        for entry in [
            Entry {
                secret: [7; 32],
                left_at: None,
                quarantined_at: Some(-3),
            },
            Entry {
                secret: [0; 32],
                left_at: Some(1 << 40),
                quarantined_at: None,
            },
        ] {
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        }
        assert_eq!(Entry::decode(&[1; 31]), None);
    }
}
