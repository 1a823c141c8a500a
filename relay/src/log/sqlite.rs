//! The log in the store's SQLite file: a row per entry, and counter tables every
//! [`CHECKPOINT_EVERY`] entries as a cache (the table at any version is the checkpoint before
//! it plus the log since; the log alone would do, more slowly).

use crate::store::{SqliteFile, StoreError, Writer};
use protocol::{Counter, LogCursor, LogEntry, PeerId, Version, varint};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Every peer's last counter is recorded at each multiple of this many entries, so the table
/// at any version costs one checkpoint and at most this many log rows.
pub const CHECKPOINT_EVERY: u64 = 4096;
/// Checkpoints older than the newest this many are thinned to one every
/// [`SPARSE_CHECKPOINT_EVERY`] entries: joins read recent tables (a peer starts from a recent
/// snapshot), and a table costs a few bytes per peer, so keeping every one would grow the store
/// by more than the log itself once peers are many.
pub const DENSE_CHECKPOINTS: u64 = 16;
pub const SPARSE_CHECKPOINT_EVERY: u64 = 16 * CHECKPOINT_EVERY;

/// The log in SQLite.
pub struct SqliteLog {
    writer: Writer,
    /// The table at the head, for the checkpoints appends pass.
    cursor: Arc<Mutex<LogCursor>>,
}

impl SqliteLog {
    /// The log in `file`. Records the counter table at its head once, so a store from before
    /// checkpoints scans its log only once.
    pub async fn open(file: SqliteFile) -> Result<SqliteLog, StoreError> {
        let writer = Writer::open(file)?;
        let cursor = writer
            .run(|conn, file| {
                let head = head(conn).map_err(|e| file.err(e))?;
                let table = counter_table(conn, file, head)?;
                put_checkpoint(conn, head, &table).map_err(|e| file.err(e))?;
                Ok(LogCursor::new(head, table))
            })
            .await?;
        Ok(SqliteLog {
            writer,
            cursor: Arc::new(Mutex::new(cursor)),
        })
    }

    pub async fn head(&self) -> Result<Version, StoreError> {
        self.writer
            .run(|conn, file| head(conn).map_err(|e| file.err(e)))
            .await
    }

    /// Appends `entries` at `first..` in one transaction with `synchronous = FULL`, with the
    /// counter tables at the checkpoints they pass.
    pub async fn append(&self, first: Version, entries: Arc<[LogEntry]>) -> Result<(), StoreError> {
        let cursor = self.cursor.clone();
        self.writer
            .run(move |conn, file| {
                let mut cursor = cursor.lock().expect("no panics while holding it");
                let end = first.0 + entries.len() as u64;
                // The tables at the checkpoints this append passes, from a copy of the cursor
                // moved ahead; most appends pass none and copy nothing.
                let mut ahead = None;
                let mut checkpoints = Vec::new();
                if end / CHECKPOINT_EVERY > first.0 / CHECKPOINT_EVERY {
                    let mut moved = cursor.clone();
                    for entry in entries.iter() {
                        moved.pack_one(entry);
                        if moved.version().0.is_multiple_of(CHECKPOINT_EVERY) {
                            checkpoints.push((moved.version(), moved.table()));
                        }
                    }
                    ahead = Some(moved);
                }
                let tx = conn.transaction().map_err(|e| file.err(e))?;
                write(&tx, first, &entries, &checkpoints).map_err(|e| file.err(e))?;
                tx.commit().map_err(|e| file.err(e))?;
                // Only a committed append moves the table on.
                match ahead {
                    Some(moved) => *cursor = moved,
                    None => entries.iter().for_each(|e| {
                        cursor.pack_one(e);
                    }),
                }
                Ok(())
            })
            .await
    }

    /// Entries at versions `from..to`.
    pub async fn read(&self, from: Version, to: Version) -> Result<Vec<LogEntry>, StoreError> {
        self.writer
            .file()
            .read(move |conn, file| entries(conn, file, from, to))
            .await
    }

    pub async fn counter_table(&self, at: Version) -> Result<Vec<(PeerId, Counter)>, StoreError> {
        self.writer
            .file()
            .read(move |conn, file| counter_table(conn, file, at))
            .await
    }
}

fn head(conn: &Connection) -> rusqlite::Result<Version> {
    conn.query_row("SELECT COALESCE(MAX(version) + 1, 0) FROM log", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| Version(v as u64))
}

fn write(
    tx: &rusqlite::Transaction<'_>,
    first: Version,
    entries: &[LogEntry],
    checkpoints: &[(Version, Vec<(PeerId, Counter)>)],
) -> rusqlite::Result<()> {
    for (version, table) in checkpoints {
        put_checkpoint(tx, *version, table)?;
    }
    if let Some((newest, _)) = checkpoints.last() {
        let dense_from = newest
            .0
            .saturating_sub(DENSE_CHECKPOINTS * CHECKPOINT_EVERY);
        tx.execute(
            "DELETE FROM counter_checkpoints WHERE version < ?1 AND version % ?2 != 0",
            params![dense_from as i64, SPARSE_CHECKPOINT_EVERY as i64],
        )?;
    }
    let mut insert = tx
        .prepare_cached("INSERT INTO log (version, peer, counter, byte) VALUES (?1, ?2, ?3, ?4)")?;
    for (i, e) in entries.iter().enumerate() {
        insert.execute(params![
            (first.0 + i as u64) as i64,
            e.peer.0,
            e.counter.0 as i64,
            e.byte
        ])?;
    }
    Ok(())
}

fn put_checkpoint(
    conn: &Connection,
    version: Version,
    table: &[(PeerId, Counter)],
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO counter_checkpoints (version, counters) VALUES (?1, ?2)",
        params![version.0 as i64, encode_table(table)],
    )
    .map(|_| ())
}

fn entries(
    conn: &Connection,
    file: &SqliteFile,
    from: Version,
    to: Version,
) -> Result<Vec<LogEntry>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT version, peer, counter, byte FROM log \
             WHERE version >= ?1 AND version < ?2 ORDER BY version",
        )
        .map_err(|e| file.err(e))?;
    let rows = stmt
        .query_map(params![from.0 as i64, to.0 as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(|e| file.err(e))?;
    let mut out = Vec::new();
    for row in rows {
        let (version, peer, counter, byte) = row.map_err(|e| file.err(e))?;
        let corrupt = |what| StoreError::Corrupt {
            path: file.path().to_path_buf(),
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

/// Each peer's last counter in `log[0..at)`: the newest checkpoint at or before `at`, and the
/// log from there.
fn counter_table(
    conn: &Connection,
    file: &SqliteFile,
    at: Version,
) -> Result<Vec<(PeerId, Counter)>, StoreError> {
    let checkpoint: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT version, counters FROM counter_checkpoints WHERE version <= ?1 \
             ORDER BY version DESC LIMIT 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![at.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| file.err(e))?;
    let (since, mut table) = match checkpoint {
        Some((version, blob)) => {
            let table = decode_table(&blob).ok_or_else(|| StoreError::Corrupt {
                path: file.path().to_path_buf(),
                version: version as u64,
                what: "its counter checkpoint does not decode",
            })?;
            (version, table.into_iter().collect::<BTreeMap<_, _>>())
        }
        None => (0, BTreeMap::new()),
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT peer, MAX(counter) FROM log WHERE version >= ?1 AND version < ?2 \
             GROUP BY peer",
        )
        .map_err(|e| file.err(e))?;
    let rows = stmt
        .query_map(params![since, at.0 as i64], |r| {
            Ok((
                PeerId(r.get::<_, u32>(0)?),
                Counter(r.get::<_, i64>(1)? as u64),
            ))
        })
        .map_err(|e| file.err(e))?;
    for row in rows {
        let (peer, counter) = row.map_err(|e| file.err(e))?;
        // A peer's counters only grow along the log: its later entry is its last.
        table.insert(peer, counter);
    }
    Ok(table.into_iter().collect())
}

/// A counter table as a blob: varint pairs of (peer id minus the previous one, counter), peers
/// in increasing order.
pub(super) fn encode_table(table: &[(PeerId, Counter)]) -> Vec<u8> {
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
