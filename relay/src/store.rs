//! The durable store: one SQLite file in WAL mode holding the job, the log, the peers and the
//! follower's snapshots.
//!
//! The sequencer owns the only connection that appends to the log; it commits each tick's
//! entries in one transaction with `synchronous = FULL` before anybody sees them, so a crash of
//! the relay (or of the machine) loses no acknowledged contribution. Readers (catch-up, the
//! HTTP API, the follower) open their own connections: WAL lets them read while it writes.

use protocol::{Counter, LogCursor, LogEntry, PeerId, Version, WeightHash};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A failure of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "store {path} holds job `{stored}`, not the job given with --job (`{given}`); \
         use another --store for another job"
    )]
    JobMismatch {
        path: PathBuf,
        stored: String,
        given: String,
    },
    #[error("store {path} holds no job and none was given")]
    NoJob { path: PathBuf },
    #[error("store {path}: log entry at version {version} is not valid: {what}")]
    Corrupt {
        path: PathBuf,
        version: u64,
        what: &'static str,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    version INTEGER PRIMARY KEY,
    peer INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    byte INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    id INTEGER PRIMARY KEY,
    joined_at INTEGER NOT NULL,
    secret BLOB
);
CREATE TABLE IF NOT EXISTS snapshots (
    version INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    bytes BLOB NOT NULL
);
";

/// Snapshots kept besides the newest: a joiner racing a new snapshot still finds its own.
const SNAPSHOTS_KEPT: i64 = 3;

/// One connection to the store file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` for the job `job_toml`. With `None`, the
    /// job already in the store is used. Returns the store and the job's TOML.
    pub fn open(path: &Path, job_toml: Option<&str>) -> Result<(Store, String), StoreError> {
        let conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store
            .conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
            )
            .map_err(|e| store.err(e))?;
        store.conn.execute_batch(SCHEMA).map_err(|e| store.err(e))?;
        // Stores from before resume secrets: their peers get the column, empty, and so can only
        // join afresh.
        let has_secrets = store
            .conn
            .prepare("SELECT secret FROM peers LIMIT 0")
            .is_ok();
        if !has_secrets {
            store
                .conn
                .execute_batch("ALTER TABLE peers ADD COLUMN secret BLOB")
                .map_err(|e| store.err(e))?;
        }
        let stored: Option<String> = store
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'job'", [], |r| r.get(0))
            .optional()
            .map_err(|e| store.err(e))?;
        let job = match (stored, job_toml) {
            (Some(stored), Some(given)) if stored.trim() != given.trim() => {
                return Err(StoreError::JobMismatch {
                    path: path.to_path_buf(),
                    stored: first_line_name(&stored),
                    given: first_line_name(given),
                });
            }
            (Some(stored), _) => stored,
            (None, Some(given)) => {
                store
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('job', ?1)",
                        params![given],
                    )
                    .map_err(|e| store.err(e))?;
                given.to_string()
            }
            (None, None) => {
                return Err(StoreError::NoJob {
                    path: path.to_path_buf(),
                });
            }
        };
        Ok((store, job))
    }

    /// A second connection to an open store (for readers and the follower).
    pub fn reopen(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite(path, e))?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
            .map_err(|e| sqlite(path, e))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        sqlite(&self.path, source)
    }

    /// Whether the host paused the job (it stays paused across restarts).
    pub fn paused(&self) -> Result<bool, StoreError> {
        let value: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'paused'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(value.as_deref() == Some("true"))
    }

    /// Records the host's pause or resume, durably.
    pub fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('paused', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![if paused { "true" } else { "false" }],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The number of entries in the log: the version a replica reaches by applying all of it.
    pub fn version(&self) -> Result<Version, StoreError> {
        let v: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(version) + 1, 0) FROM log", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        Ok(Version(v as u64))
    }

    /// Appends `entries` at versions `first..` in one durable transaction.
    pub fn append(&mut self, first: Version, entries: &[LogEntry]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO log (version, peer, counter, byte) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| sqlite(&self.path, e))?;
            for (i, e) in entries.iter().enumerate() {
                insert
                    .execute(params![
                        (first.0 + i as u64) as i64,
                        e.peer.0,
                        e.counter.0 as i64,
                        e.byte
                    ])
                    .map_err(|e| sqlite(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| sqlite(&self.path, e))
    }

    /// Log entries at versions `from..to`.
    pub fn entries(&self, from: Version, to: Version) -> Result<Vec<LogEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT version, peer, counter, byte FROM log \
                 WHERE version >= ?1 AND version < ?2 ORDER BY version",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![from.0 as i64, to.0 as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (version, peer, counter, byte) = row.map_err(|e| self.err(e))?;
            let corrupt = |what| StoreError::Corrupt {
                path: self.path.clone(),
                version: version as u64,
                what,
            };
            if version as u64 != from.0 + out.len() as u64 {
                return Err(corrupt("the log has a gap before it"));
            }
            out.push(LogEntry {
                peer: PeerId(u32::try_from(peer).map_err(|_| corrupt("peer out of range"))?),
                counter: Counter(counter as u64),
                byte: u8::try_from(byte).map_err(|_| corrupt("byte out of range"))?,
            });
        }
        Ok(out)
    }

    /// Each peer's last counter in `log[0..at)`.
    pub fn counter_table(&self, at: Version) -> Result<Vec<(PeerId, Counter)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT peer, MAX(counter) FROM log WHERE version < ?1 GROUP BY peer ORDER BY peer",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![at.0 as i64], |r| {
                Ok((
                    PeerId(r.get::<_, u32>(0)?),
                    Counter(r.get::<_, i64>(1)? as u64),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The log `from..to` as a peer receives it: the `CounterTable` at `from`, then `LogBatch`es
    /// of at most `chunk` entries, packed by one cursor, each message encoded.
    pub fn packed_log(
        &self,
        from: Version,
        to: Version,
        chunk: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut cursor = LogCursor::new(from, self.counter_table(from)?);
        let mut messages = vec![cursor.table_message().encode()];
        let mut at = from;
        while at < to {
            let end = Version((at.0 + chunk).min(to.0));
            messages.push(cursor.pack(&self.entries(at, end)?).encode());
            at = end;
        }
        Ok(messages)
    }

    /// Registers a new peer with the digest of its resume secret and returns its id (ids count
    /// up from 0 and are never reused).
    pub fn new_peer(&self, secret_digest: &[u8; 32]) -> Result<PeerId, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.conn
            .execute(
                "INSERT INTO peers (id, joined_at, secret) \
                 SELECT COALESCE(MAX(id) + 1, 0), ?1, ?2 FROM peers",
                params![now, &secret_digest[..]],
            )
            .map_err(|e| self.err(e))?;
        Ok(PeerId(self.conn.last_insert_rowid() as u32))
    }

    /// Whether `peer` was registered with a resume secret of this digest.
    pub fn resumable(&self, peer: PeerId, secret_digest: &[u8; 32]) -> Result<bool, StoreError> {
        let stored: Option<Option<Vec<u8>>> = self
            .conn
            .query_row(
                "SELECT secret FROM peers WHERE id = ?1",
                params![peer.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(stored
            .flatten()
            .is_some_and(|stored| crate::secret::digests_match(&stored, secret_digest)))
    }

    /// The number of peers ever registered.
    pub fn peer_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM peers", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Stores a snapshot and drops all but the newest few.
    pub fn put_snapshot(
        &self,
        version: Version,
        hash: &WeightHash,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO snapshots (version, hash, bytes) VALUES (?1, ?2, ?3)",
                params![version.0 as i64, &hash.0[..], bytes],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "DELETE FROM snapshots WHERE version NOT IN \
                 (SELECT version FROM snapshots ORDER BY version DESC LIMIT ?1)",
                params![SNAPSHOTS_KEPT],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The newest snapshot: its version and safetensors bytes.
    pub fn latest_snapshot(&self) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        self.conn
            .query_row(
                "SELECT version, bytes FROM snapshots ORDER BY version DESC LIMIT 1",
                [],
                |r| Ok((Version(r.get::<_, i64>(0)? as u64), r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The `name = "…"` of a job TOML, for error messages.
fn first_line_name(toml: &str) -> String {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("name").map(|r| r.trim()))
        .and_then(|r| r.strip_prefix('='))
        .map(|r| r.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| "unnamed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(peer: u32, counter: u64) -> LogEntry {
        LogEntry {
            peer: PeerId(peer),
            counter: Counter(counter),
            byte: (counter % 256) as u8,
        }
    }

    #[test]
    fn the_log_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let job = "[job]\nname = \"a\"\n";
        {
            let (mut store, _) = Store::open(&path, Some(job)).unwrap();
            assert_eq!(store.new_peer(&[1; 32]).unwrap(), PeerId(0));
            assert_eq!(store.new_peer(&[1; 32]).unwrap(), PeerId(1));
            store
                .append(Version(0), &[entry(0, 0), entry(1, 0), entry(0, 1)])
                .unwrap();
        }
        let (store, stored_job) = Store::open(&path, None).unwrap();
        assert_eq!(stored_job, job);
        assert_eq!(store.version().unwrap(), Version(3));
        assert_eq!(
            store.entries(Version(1), Version(3)).unwrap(),
            [entry(1, 0), entry(0, 1)]
        );
        assert_eq!(
            store.counter_table(Version(3)).unwrap(),
            [(PeerId(0), Counter(1)), (PeerId(1), Counter(0))]
        );
        assert_eq!(
            store.counter_table(Version(1)).unwrap(),
            [(PeerId(0), Counter(0))]
        );
        assert!(store.resumable(PeerId(1), &[1; 32]).unwrap());
        assert!(!store.resumable(PeerId(1), &[2; 32]).unwrap());
        assert!(!store.resumable(PeerId(2), &[1; 32]).unwrap());
        let other = Store::open(&path, Some("[job]\nname = \"b\"\n")).unwrap_err();
        assert!(other.to_string().contains("holds job `a`"), "{other}");
    }

    #[test]
    fn a_pause_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (store, _) = Store::open(&path, Some("name = \"a\"")).unwrap();
        assert!(!store.paused().unwrap());
        store.set_paused(true).unwrap();
        drop(store);
        let (store, _) = Store::open(&path, None).unwrap();
        assert!(store.paused().unwrap());
        store.set_paused(false).unwrap();
        assert!(!Store::reopen(&path).unwrap().paused().unwrap());
    }

    #[test]
    fn only_the_newest_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            Store::open(&dir.path().join("s.db"), Some("[job]\nname = \"a\"\n")).unwrap();
        for v in 0..6u64 {
            store
                .put_snapshot(Version(v * 10), &WeightHash([v as u8; 32]), &[v as u8])
                .unwrap();
        }
        assert_eq!(
            store.latest_snapshot().unwrap(),
            Some((Version(50), vec![5]))
        );
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, SNAPSHOTS_KEPT);
    }
}
