//! The file's tables, and bringing an older file up to them.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// The schema this relay writes, recorded in the file's `user_version`. Raise it with each
/// change to [`SCHEMA`], and teach [`migrate`] the step from the one before.
pub const SCHEMA_VERSION: i64 = 1;

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

/// Brings the file's schema to [`SCHEMA_VERSION`], recorded in SQLite's `user_version`: a new
/// file gets [`SCHEMA`] whole; a file from before versions were recorded (0, with tables) gets
/// the columns it lacks. A file from a newer relay is refused, not guessed at.
pub fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            version,
            current: SCHEMA_VERSION,
        });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let legacy_peers = conn.prepare("SELECT id FROM peers LIMIT 0").is_ok();
    if legacy_peers {
        // Stores from before resume secrets: their peers get the column, empty, and so can only
        // join afresh. Stores from before ids were reused: every peer counts as having left.
        for (column, kind) in [
            ("secret", "BLOB"),
            ("left_at", "INTEGER"),
            ("quarantined_at", "INTEGER"),
        ] {
            let present = conn
                .prepare(&format!("SELECT {column} FROM peers LIMIT 0"))
                .is_ok();
            if !present {
                conn.execute_batch(&format!("ALTER TABLE peers ADD COLUMN {column} {kind}"))
                    .map_err(err)?;
            }
        }
    }
    conn.execute_batch(&format!("{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn schema_versions_upgrade_old_stores_and_refuse_newer_ones() {
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
        let (stores, _) = crate::store::open(&old, Some(job)).await.unwrap();
        assert!(
            !stores
                .peers
                .resumable(protocol::PeerId(1), [1; 32])
                .await
                .unwrap(),
            "no secret: join afresh"
        );
        drop(stores);
        assert_eq!(version(&old), SCHEMA_VERSION);
        crate::store::open(&old, Some(job)).await.unwrap();

        let fresh = dir.path().join("fresh.db");
        drop(crate::store::open(&fresh, Some(job)).await.unwrap());
        assert_eq!(version(&fresh), SCHEMA_VERSION);

        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let refused = crate::store::open(&newer, Some(job)).await.err().unwrap();
        assert!(
            matches!(refused, StoreError::NewerSchema { version: 99, .. }),
            "{refused}"
        );
    }
}
