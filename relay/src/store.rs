//! The durable store: one SQLite file in WAL mode holding the job, the log, the peers and the
//! follower's snapshots.
//!
//! The sequencer owns the only connection that appends to the log; it commits each tick's
//! entries in one transaction with `synchronous = FULL` before anybody sees them, so a crash of
//! the relay (or of the machine) loses no acknowledged contribution. Readers (catch-up, the
//! HTTP API, the follower) open their own connections: WAL lets them read while it writes.

use protocol::{Counter, LogCursor, LogEntry, PeerId, Version, WeightHash, varint};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::BTreeMap;
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
    #[error(
        "store {path} holds another tokenizer.json than the job file names; the job's \
         tokenizer cannot change: use another --store"
    )]
    TokenizerMismatch { path: PathBuf },
    #[error(
        "store {path} has schema version {version}, newer than this relay's ({SCHEMA_VERSION}): \
         a newer onebyte-relay wrote it"
    )]
    NewerSchema { path: PathBuf, version: i64 },
    #[error("store {path}: log entry at version {version} is not valid: {what}")]
    Corrupt {
        path: PathBuf,
        version: u64,
        what: &'static str,
    },
}

/// The schema this relay writes, recorded in the file's `user_version`. Raise it with each
/// change to [`SCHEMA`], and teach [`Store::migrate`] the step from the one before.
const SCHEMA_VERSION: i64 = 1;

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
    secret BLOB,
    left_at INTEGER,
    quarantined_at INTEGER
);
CREATE INDEX IF NOT EXISTS peers_by_leaving ON peers (left_at);
CREATE TABLE IF NOT EXISTS counter_checkpoints (
    version INTEGER PRIMARY KEY,
    counters BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    version INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    bytes BLOB NOT NULL
);
";

/// Snapshots kept besides the newest: a joiner racing a new snapshot still finds its own.
const SNAPSHOTS_KEPT: i64 = 3;
/// The sequencer records every peer's last counter at each multiple of this many entries, so
/// the table at any version costs one checkpoint and at most this many log rows.
pub const CHECKPOINT_EVERY: u64 = 4096;
/// Checkpoints older than the newest this many are thinned to one every
/// [`SPARSE_CHECKPOINT_EVERY`] entries: joins read recent tables (a peer starts from a recent
/// snapshot), and a table costs a few bytes per peer, so keeping every one would grow the store
/// by more than the log itself once peers are many.
pub const DENSE_CHECKPOINTS: u64 = 16;
pub const SPARSE_CHECKPOINT_EVERY: u64 = 16 * CHECKPOINT_EVERY;
/// How long a peer id that contributed stays reserved for its holder after it leaves (its
/// resume secret keeps working); after that, or at once for an id that never contributed, a
/// new peer may be given it. Its counters continue, so no direction is ever drawn twice.
pub const RESUME_WINDOW_S: i64 = 24 * 60 * 60;

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
    /// Brings the file's schema to [`SCHEMA_VERSION`], recorded in SQLite's `user_version`: a
    /// new file gets [`SCHEMA`] whole; a file from before versions were recorded (0, with
    /// tables) gets the columns it lacks. A file from a newer relay is refused, not guessed at.
    fn migrate(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                version,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let legacy_peers = self.conn.prepare("SELECT id FROM peers LIMIT 0").is_ok();
        if legacy_peers {
            // Stores from before resume secrets: their peers get the column, empty, and so can
            // only join afresh. Stores from before ids were reused: every peer counts as having
            // left.
            for (column, kind) in [
                ("secret", "BLOB"),
                ("left_at", "INTEGER"),
                ("quarantined_at", "INTEGER"),
            ] {
                let present = self
                    .conn
                    .prepare(&format!("SELECT {column} FROM peers LIMIT 0"))
                    .is_ok();
                if !present {
                    self.conn
                        .execute_batch(&format!("ALTER TABLE peers ADD COLUMN {column} {kind}"))
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        self.conn
            .execute_batch(&format!("{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(|e| self.err(e))
    }

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
        store.migrate()?;
        let stored: Option<String> = store
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'job'", [], |r| r.get(0))
            .optional()
            .map_err(|e| store.err(e))?;
        let job = match (stored, job_toml) {
            (Some(stored), Some(given)) if stored.trim() != given.trim() => {
                return Err(StoreError::JobMismatch {
                    path: path.to_path_buf(),
                    stored: job_name(&stored),
                    given: job_name(given),
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

    /// The job's `tokenizer.json`, as kept by [`Store::keep_tokenizer`].
    pub fn tokenizer(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'tokenizer'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Keeps the job's `tokenizer.json`, so that the relay serves it after a restart without
    /// the job file. The job's tokenizer is part of it: a different one is refused.
    pub fn keep_tokenizer(&self, json: &str) -> Result<(), StoreError> {
        match self.tokenizer()? {
            Some(kept) if kept != json => Err(StoreError::TokenizerMismatch {
                path: self.path.clone(),
            }),
            Some(_) => Ok(()),
            None => self
                .conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('tokenizer', ?1)",
                    params![json],
                )
                .map(|_| ())
                .map_err(|e| self.err(e)),
        }
    }

    /// Committee round numbers below this may have been handed out (0 when none were).
    pub fn committee_rounds_reserved(&self) -> Result<u64, StoreError> {
        let value: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'committee_rounds_reserved'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Reserves committee round numbers below `upto`, durably: a restart hands out none of
    /// them again.
    pub fn reserve_committee_rounds(&self, upto: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('committee_rounds_reserved', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![upto.to_string()],
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

    /// Appends `entries` at versions `first..` in one durable transaction, with the counter
    /// tables at the checkpoint versions they pass (see [`CHECKPOINT_EVERY`]).
    pub fn append(
        &mut self,
        first: Version,
        entries: &[LogEntry],
        checkpoints: &[(Version, Vec<(PeerId, Counter)>)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
        for (version, table) in checkpoints {
            tx.execute(
                "INSERT OR REPLACE INTO counter_checkpoints (version, counters) VALUES (?1, ?2)",
                params![version.0 as i64, encode_table(table)],
            )
            .map_err(|e| sqlite(&self.path, e))?;
        }
        if let Some((newest, _)) = checkpoints.last() {
            let dense_from = newest
                .0
                .saturating_sub(DENSE_CHECKPOINTS * CHECKPOINT_EVERY);
            tx.execute(
                "DELETE FROM counter_checkpoints WHERE version < ?1 AND version % ?2 != 0",
                params![dense_from as i64, SPARSE_CHECKPOINT_EVERY as i64],
            )
            .map_err(|e| sqlite(&self.path, e))?;
        }
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

    /// Each peer's last counter in `log[0..at)`: the newest checkpoint at or before `at`, and
    /// the log from there.
    pub fn counter_table(&self, at: Version) -> Result<Vec<(PeerId, Counter)>, StoreError> {
        let checkpoint: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT version, counters FROM counter_checkpoints WHERE version <= ?1 \
                 ORDER BY version DESC LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![at.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let (since, mut table) = match checkpoint {
            Some((version, blob)) => {
                let table = decode_table(&blob).ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    version: version as u64,
                    what: "its counter checkpoint does not decode",
                })?;
                (version, table.into_iter().collect::<BTreeMap<_, _>>())
            }
            None => (0, BTreeMap::new()),
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT peer, MAX(counter) FROM log WHERE version >= ?1 AND version < ?2 \
                 GROUP BY peer",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since, at.0 as i64], |r| {
                Ok((
                    PeerId(r.get::<_, u32>(0)?),
                    Counter(r.get::<_, i64>(1)? as u64),
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (peer, counter) = row.map_err(|e| self.err(e))?;
            // A peer's counters only grow along the log: its later entry is its last.
            table.insert(peer, counter);
        }
        Ok(table.into_iter().collect())
    }

    /// Records the counter table at `version` (the sequencer does so once at start, so a store
    /// from before checkpoints scans its log only once).
    pub fn put_checkpoint(
        &self,
        version: Version,
        table: &[(PeerId, Counter)],
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO counter_checkpoints (version, counters) VALUES (?1, ?2)",
                params![version.0 as i64, encode_table(table)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
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

    /// Registers a new peer with the digest of its resume secret and returns its id: the id of
    /// a peer that left long enough ago (see [`RESUME_WINDOW_S`]) if there is one, so ids grow
    /// only as far as the peers of one window, else the next unused one. Either way the id is
    /// marked connected.
    pub fn new_peer(&self, secret_digest: &[u8; 32]) -> Result<PeerId, StoreError> {
        let now = unix_now();
        let reusable: Option<u32> = self
            .conn
            .prepare_cached(
                "SELECT id FROM peers WHERE left_at IS NOT NULL AND left_at < ?1 \
                 ORDER BY left_at, id LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![now - RESUME_WINDOW_S], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        if let Some(id) = reusable {
            self.conn
                .execute(
                    "UPDATE peers SET joined_at = ?2, secret = ?3, left_at = NULL, \
                     quarantined_at = NULL WHERE id = ?1",
                    params![id, now, &secret_digest[..]],
                )
                .map_err(|e| self.err(e))?;
            return Ok(PeerId(id));
        }
        self.conn
            .execute(
                "INSERT INTO peers (id, joined_at, secret) \
                 SELECT COALESCE(MAX(id) + 1, 0), ?1, ?2 FROM peers",
                params![now, &secret_digest[..]],
            )
            .map_err(|e| self.err(e))?;
        Ok(PeerId(self.conn.last_insert_rowid() as u32))
    }

    /// `peer` resumed: it is connected again.
    pub fn rejoined(&self, peer: PeerId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE peers SET left_at = NULL WHERE id = ?1",
                params![peer.0],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `peer` left. An id that `contributed` stays reserved for its holder for
    /// [`RESUME_WINDOW_S`]; one that did not may be given out again at once.
    pub fn left(&self, peer: PeerId, contributed: bool) -> Result<(), StoreError> {
        let left_at = if contributed { unix_now() } else { 0 };
        self.conn
            .execute(
                "UPDATE peers SET left_at = ?2 WHERE id = ?1",
                params![peer.0, left_at],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Nobody is connected (the relay is starting): every peer still marked connected left now.
    pub fn all_left(&self) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE peers SET left_at = ?1 WHERE left_at IS NULL",
                params![unix_now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Quarantines `peer` (its contributions are rejected), or with `false` releases it. Kept
    /// across restarts and resumes; a new holder of the id starts clean.
    pub fn set_quarantined(&self, peer: PeerId, quarantined: bool) -> Result<(), StoreError> {
        let at = quarantined.then(unix_now);
        self.conn
            .execute(
                "UPDATE peers SET quarantined_at = ?2 WHERE id = ?1",
                params![peer.0, at],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every quarantined peer.
    pub fn quarantined(&self) -> Result<Vec<PeerId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM peers WHERE quarantined_at IS NOT NULL ORDER BY id")
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, u32>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(ids.into_iter().map(PeerId).collect())
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A counter table as a blob: varint pairs of (peer id minus the previous one, counter), peers
/// in increasing order.
fn encode_table(table: &[(PeerId, Counter)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(table.len() * 4);
    let mut previous = 0u64;
    for (peer, counter) in table {
        let id = u64::from(peer.0);
        varint::put(&mut out, id - previous);
        varint::put(&mut out, counter.0);
        previous = id;
    }
    out
}

fn decode_table(mut blob: &[u8]) -> Option<Vec<(PeerId, Counter)>> {
    let mut table = Vec::new();
    let mut id = 0u64;
    while !blob.is_empty() {
        id += varint::get(&mut blob, "peer").ok()?;
        let counter = varint::get(&mut blob, "counter").ok()?;
        table.push((PeerId(u32::try_from(id).ok()?), Counter(counter)));
    }
    Some(table)
}

fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The `name = "…"` of a job TOML, for error messages.
/// The job's name (`job.name`) in a job file, for messages.
fn job_name(toml: &str) -> String {
    engine::JobConfig::parse_name(toml).unwrap_or_else(|| "unnamed".into())
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
                .append(Version(0), &[entry(0, 0), entry(1, 0), entry(0, 1)], &[])
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
        assert!(
            other.to_string().contains("holds job `a`") && other.to_string().contains("(`b`)"),
            "{other}"
        );
    }

    #[test]
    fn schema_versions_upgrade_old_stores_and_refuse_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let job = "[job]\nname = \"a\"\n";
        let version = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        // A store from before versions were recorded: peers without secrets or leave times.
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch(
                "CREATE TABLE peers (id INTEGER PRIMARY KEY, joined_at INTEGER NOT NULL);\
                 INSERT INTO peers (id, joined_at) VALUES (1, 0);",
            )
            .unwrap();
        let (store, _) = Store::open(&old, Some(job)).unwrap();
        assert!(
            !store.resumable(PeerId(1), &[1; 32]).unwrap(),
            "no secret: join afresh"
        );
        drop(store);
        assert_eq!(version(&old), SCHEMA_VERSION);
        Store::open(&old, Some(job)).unwrap();

        let fresh = dir.path().join("fresh.db");
        drop(Store::open(&fresh, Some(job)).unwrap());
        assert_eq!(version(&fresh), SCHEMA_VERSION);

        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let refused = Store::open(&newer, Some(job)).unwrap_err();
        assert!(
            matches!(refused, StoreError::NewerSchema { version: 99, .. }),
            "{refused}"
        );
    }

    #[test]
    fn counter_tables_come_from_checkpoints_and_the_log_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(&dir.path().join("c.db"), Some("name = \"a\"")).unwrap();
        store
            .append(Version(0), &[entry(0, 0), entry(1, 0)], &[])
            .unwrap();
        // A checkpoint at 2 that the log does not back: the table must come from it.
        let at_2 = vec![(PeerId(0), Counter(7)), (PeerId(300), Counter(1 << 40))];
        store
            .append(
                Version(2),
                &[entry(1, 1), entry(2, 5)],
                &[(Version(2), at_2.clone())],
            )
            .unwrap();
        assert_eq!(store.counter_table(Version(2)).unwrap(), at_2);
        assert_eq!(
            store.counter_table(Version(4)).unwrap(),
            [
                (PeerId(0), Counter(7)),
                (PeerId(1), Counter(1)),
                (PeerId(2), Counter(5)),
                (PeerId(300), Counter(1 << 40))
            ]
        );
        assert_eq!(
            store.counter_table(Version(1)).unwrap(),
            [(PeerId(0), Counter(0))],
            "before the first checkpoint: the log alone"
        );
    }

    #[test]
    fn old_checkpoints_are_thinned_and_old_tables_still_come_out_right() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(&dir.path().join("c.db"), Some("name = \"a\"")).unwrap();
        // 40 checkpoints' worth of entries: peer (v % 7), counters growing.
        let total = 40 * CHECKPOINT_EVERY;
        let mut cursor = LogCursor::new(Version(0), []);
        let mut version = 0;
        while version < total {
            let n = 1000.min(total - version);
            let entries: Vec<LogEntry> = (version..version + n)
                .map(|v| entry((v % 7) as u32, v))
                .collect();
            let mut checkpoints = Vec::new();
            for e in &entries {
                cursor.pack_one(e);
                if cursor.version().0.is_multiple_of(CHECKPOINT_EVERY) {
                    checkpoints.push((cursor.version(), cursor.table()));
                }
            }
            store
                .append(Version(version), &entries, &checkpoints)
                .unwrap();
            version += n;
        }
        let kept: Vec<i64> = store
            .conn
            .prepare("SELECT version FROM counter_checkpoints ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let sparse = SPARSE_CHECKPOINT_EVERY as i64;
        assert_eq!(
            kept.len() as u64,
            DENSE_CHECKPOINTS
                + 1
                + (total - DENSE_CHECKPOINTS * CHECKPOINT_EVERY) / SPARSE_CHECKPOINT_EVERY,
            "{kept:?}"
        );
        assert!(
            kept.iter()
                .filter(|&&v| v < kept[kept.len() - 17])
                .all(|v| v % sparse == 0)
        );
        // A table in the thinned part: the sparse checkpoint before it and the log since.
        let at = Version(5 * CHECKPOINT_EVERY + 3);
        let expected: Vec<(PeerId, Counter)> = (0..7u64)
            .map(|p| {
                let last = (0..at.0).rev().find(|v| v % 7 == p).unwrap();
                (PeerId(p as u32), Counter(last))
            })
            .collect();
        assert_eq!(store.counter_table(at).unwrap(), expected);
    }

    #[test]
    fn ids_of_peers_that_left_are_given_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("p.db"), Some("name = \"a\"")).unwrap();
        let a = store.new_peer(&[1; 32]).unwrap();
        let b = store.new_peer(&[2; 32]).unwrap();
        assert_eq!((a, b), (PeerId(0), PeerId(1)));
        // `a` contributed: reserved for its holder. `b` did not: free at once.
        store.left(a, true).unwrap();
        store.left(b, false).unwrap();
        assert_eq!(store.new_peer(&[3; 32]).unwrap(), b);
        assert!(
            !store.resumable(b, &[2; 32]).unwrap(),
            "the old secret no longer works"
        );
        assert!(store.resumable(b, &[3; 32]).unwrap());
        assert_eq!(store.new_peer(&[4; 32]).unwrap(), PeerId(2));
        assert!(store.resumable(a, &[1; 32]).unwrap());
        // A restart: everyone left, and the window starts now.
        store.all_left().unwrap();
        assert_eq!(store.new_peer(&[5; 32]).unwrap(), PeerId(3));
        assert_eq!(store.peer_count().unwrap(), 4);
    }

    #[test]
    fn a_quarantine_survives_reopening_and_ends_with_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (store, _) = Store::open(&path, Some("name = \"a\"")).unwrap();
        let (a, b) = (
            store.new_peer(&[1; 32]).unwrap(),
            store.new_peer(&[2; 32]).unwrap(),
        );
        store.set_quarantined(a, true).unwrap();
        store.set_quarantined(b, true).unwrap();
        store.set_quarantined(b, false).unwrap();
        drop(store);
        let (store, _) = Store::open(&path, None).unwrap();
        assert_eq!(store.quarantined().unwrap(), [a]);
        // An id that never contributed is free at once: its next holder is not quarantined.
        store.left(a, false).unwrap();
        assert_eq!(store.new_peer(&[3; 32]).unwrap(), a);
        assert_eq!(store.quarantined().unwrap(), []);
    }

    #[test]
    fn a_committee_round_reservation_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (store, _) = Store::open(&path, Some("[job]\nname = \"t\"\n")).unwrap();
        assert_eq!(store.committee_rounds_reserved().unwrap(), 0);
        store.reserve_committee_rounds(65_536).unwrap();
        drop(store);
        let store = Store::reopen(&path).unwrap();
        assert_eq!(store.committee_rounds_reserved().unwrap(), 65_536);
    }

    #[test]
    fn a_jobs_tokenizer_is_kept_and_cannot_be_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (store, _) = Store::open(&path, Some("[job]\nname = \"t\"\n")).unwrap();
        assert_eq!(store.tokenizer().unwrap(), None);
        store.keep_tokenizer("{\"model\": 1}").unwrap();
        store.keep_tokenizer("{\"model\": 1}").unwrap();
        drop(store);
        let (store, _) = Store::open(&path, None).unwrap();
        assert_eq!(
            store.tokenizer().unwrap().as_deref(),
            Some("{\"model\": 1}")
        );
        assert!(matches!(
            store.keep_tokenizer("{\"model\": 2}"),
            Err(StoreError::TokenizerMismatch { .. })
        ));
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
