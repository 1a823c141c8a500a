//! The peers a relay has given ids: their resume secrets' digests, who is connected, who left
//! when, and who is quarantined.

use super::file::Writer;
use super::replicated_peers::ReplicatedPeers;
use super::{SqliteFile, StoreError};
use protocol::PeerId;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use std::sync::Arc;

/// How long a peer id that contributed stays reserved for its holder after it leaves (its
/// resume secret keeps working); after that, or at once for an id that never contributed, a
/// new peer may be given it. Its counters continue, so no direction is ever drawn twice.
pub const RESUME_WINDOW_S: i64 = 24 * 60 * 60;

/// The registry of peer ids: in the store file, or (sequencer candidates on several machines)
/// in a JetStream key-value bucket.
#[derive(Clone)]
pub struct PeerRegistry {
    writer: Writer,
    replicated: Option<Arc<ReplicatedPeers>>,
}

impl PeerRegistry {
    pub async fn open(file: SqliteFile) -> Result<PeerRegistry, StoreError> {
        Ok(PeerRegistry {
            writer: Writer::open(file)?,
            replicated: None,
        })
    }

    /// This registry with its peers kept in `replicated` instead of the file.
    pub fn replicated(self, replicated: ReplicatedPeers) -> PeerRegistry {
        PeerRegistry {
            replicated: Some(Arc::new(replicated)),
            ..self
        }
    }

    /// Runs one statement with `args`.
    async fn execute(&self, sql: &'static str, args: Vec<Value>) -> Result<(), StoreError> {
        self.writer
            .run(move |conn, file| {
                conn.execute(sql, rusqlite::params_from_iter(args))
                    .map(|_| ())
                    .map_err(|e| file.err(e))
            })
            .await
    }

    /// Registers a new peer with the digest of its resume secret and returns its id: the id of
    /// a peer that left long enough ago (see [`RESUME_WINDOW_S`]) if there is one, so ids grow
    /// only as far as the peers of one window, else the next unused one. Either way the id is
    /// marked connected.
    pub async fn register(&self, secret_digest: [u8; 32]) -> Result<PeerId, StoreError> {
        if let Some(replicated) = &self.replicated {
            return replicated.register(secret_digest, unix_now()).await;
        }
        self.writer
            .run(move |conn, file| {
                let now = unix_now();
                let reusable: Option<u32> = conn
                    .prepare_cached(
                        "SELECT id FROM peers WHERE left_at IS NOT NULL AND left_at < ?1 \
                         ORDER BY left_at, id LIMIT 1",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(params![now - RESUME_WINDOW_S], |r| r.get(0))
                            .optional()
                    })
                    .map_err(|e| file.err(e))?;
                if let Some(id) = reusable {
                    conn.execute(
                        "UPDATE peers SET joined_at = ?2, secret = ?3, left_at = NULL, \
                         quarantined_at = NULL WHERE id = ?1",
                        params![id, now, &secret_digest[..]],
                    )
                    .map_err(|e| file.err(e))?;
                    return Ok(PeerId(id));
                }
                conn.execute(
                    "INSERT INTO peers (id, joined_at, secret) \
                     SELECT COALESCE(MAX(id) + 1, 0), ?1, ?2 FROM peers",
                    params![now, &secret_digest[..]],
                )
                .map_err(|e| file.err(e))?;
                Ok(PeerId(conn.last_insert_rowid() as u32))
            })
            .await
    }

    /// `peer` resumed: it is connected again.
    pub async fn rejoined(&self, peer: PeerId) -> Result<(), StoreError> {
        if let Some(replicated) = &self.replicated {
            return replicated.set_left(peer, None).await;
        }
        self.execute(
            "UPDATE peers SET left_at = NULL WHERE id = ?1",
            vec![peer.0.into()],
        )
        .await
    }

    /// `peer` left. An id that `contributed` stays reserved for its holder for
    /// [`RESUME_WINDOW_S`]; one that did not may be given out again at once.
    pub async fn left(&self, peer: PeerId, contributed: bool) -> Result<(), StoreError> {
        let left_at = if contributed { unix_now() } else { 0 };
        if let Some(replicated) = &self.replicated {
            return replicated.set_left(peer, Some(left_at)).await;
        }
        self.execute(
            "UPDATE peers SET left_at = ?2 WHERE id = ?1",
            vec![peer.0.into(), left_at.into()],
        )
        .await
    }

    /// Nobody is connected (the relay is starting): every peer still marked connected left now.
    pub async fn all_left(&self) -> Result<(), StoreError> {
        if let Some(replicated) = &self.replicated {
            return replicated.all_left(unix_now()).await;
        }
        self.execute(
            "UPDATE peers SET left_at = ?1 WHERE left_at IS NULL",
            vec![unix_now().into()],
        )
        .await
    }

    /// Quarantines `peer` (its contributions are rejected), or with `false` releases it. Kept
    /// across restarts and resumes; a new holder of the id starts clean.
    pub async fn set_quarantined(&self, peer: PeerId, quarantined: bool) -> Result<(), StoreError> {
        let at = quarantined.then(unix_now);
        if let Some(replicated) = &self.replicated {
            return replicated.set_quarantined(peer, at).await;
        }
        self.execute(
            "UPDATE peers SET quarantined_at = ?2 WHERE id = ?1",
            vec![peer.0.into(), at.into()],
        )
        .await
    }

    /// Every quarantined peer.
    pub async fn quarantined(&self) -> Result<Vec<PeerId>, StoreError> {
        if let Some(replicated) = &self.replicated {
            return Ok(replicated.quarantined().await);
        }
        self.writer
            .run(|conn, file| {
                let mut stmt = conn
                    .prepare("SELECT id FROM peers WHERE quarantined_at IS NOT NULL ORDER BY id")
                    .map_err(|e| file.err(e))?;
                let ids = stmt
                    .query_map([], |r| r.get::<_, u32>(0))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file.err(e))?;
                Ok(ids.into_iter().map(PeerId).collect())
            })
            .await
    }

    /// Whether `peer` was registered with a resume secret of this digest.
    pub async fn resumable(
        &self,
        peer: PeerId,
        secret_digest: [u8; 32],
    ) -> Result<bool, StoreError> {
        if let Some(replicated) = &self.replicated {
            return Ok(replicated.resumable(peer, secret_digest).await);
        }
        self.writer
            .run(move |conn, file| {
                let stored: Option<Option<Vec<u8>>> = conn
                    .query_row(
                        "SELECT secret FROM peers WHERE id = ?1",
                        params![peer.0],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| file.err(e))?;
                Ok(stored
                    .flatten()
                    .is_some_and(|stored| crate::secret::digests_match(&stored, &secret_digest)))
            })
            .await
    }

    /// The number of peers ever registered.
    pub async fn count(&self) -> Result<u64, StoreError> {
        if let Some(replicated) = &self.replicated {
            return Ok(replicated.count().await);
        }
        self.writer
            .run(|conn, file| {
                conn.query_row("SELECT COUNT(*) FROM peers", [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(|e| file.err(e))
            })
            .await
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use crate::store::open;
    use protocol::PeerId;

    #[tokio::test]
    async fn ids_of_peers_that_left_are_given_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, _) = open(&dir.path().join("p.db"), Some("name = \"a\""))
            .await
            .unwrap();
        let peers = stores.peers;
        let a = peers.register([1; 32]).await.unwrap();
        let b = peers.register([2; 32]).await.unwrap();
        assert_eq!((a, b), (PeerId(0), PeerId(1)));
        // `a` contributed: reserved for its holder. `b` did not: free at once.
        peers.left(a, true).await.unwrap();
        peers.left(b, false).await.unwrap();
        assert_eq!(peers.register([3; 32]).await.unwrap(), b);
        assert!(
            !peers.resumable(b, [2; 32]).await.unwrap(),
            "the old secret no longer works"
        );
        assert!(peers.resumable(b, [3; 32]).await.unwrap());
        assert_eq!(peers.register([4; 32]).await.unwrap(), PeerId(2));
        assert!(peers.resumable(a, [1; 32]).await.unwrap());
        assert!(!peers.resumable(PeerId(9), [1; 32]).await.unwrap());
        // A restart: everyone left, and the window starts now.
        peers.all_left().await.unwrap();
        assert_eq!(peers.register([5; 32]).await.unwrap(), PeerId(3));
        assert_eq!(peers.count().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_quarantine_survives_reopening_and_ends_with_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (stores, _) = open(&path, Some("name = \"a\"")).await.unwrap();
        let peers = stores.peers;
        let (a, b) = (
            peers.register([1; 32]).await.unwrap(),
            peers.register([2; 32]).await.unwrap(),
        );
        peers.set_quarantined(a, true).await.unwrap();
        peers.set_quarantined(b, true).await.unwrap();
        peers.set_quarantined(b, false).await.unwrap();
        drop(peers);
        let (stores, _) = open(&path, None).await.unwrap();
        let peers = stores.peers;
        assert_eq!(peers.quarantined().await.unwrap(), [a]);
        // An id that never contributed is free at once: its next holder is not quarantined.
        peers.left(a, false).await.unwrap();
        assert_eq!(peers.register([3; 32]).await.unwrap(), a);
        assert_eq!(peers.quarantined().await.unwrap(), []);
    }
}
