//! The follower's snapshots: a replica's weights at a version, the newest few kept.

use super::file::Writer;
use super::{SqliteFile, StoreError};
use protocol::{Version, WeightHash};
use rusqlite::{OptionalExtension, params};

/// Snapshots kept besides the newest: a joiner racing a new snapshot still finds its own.
const SNAPSHOTS_KEPT: i64 = 3;

/// The snapshots in the store.
#[derive(Clone)]
pub struct Snapshots {
    writer: Writer,
}

impl Snapshots {
    pub async fn open(file: SqliteFile) -> Result<Snapshots, StoreError> {
        Ok(Snapshots {
            writer: Writer::open(file)?,
        })
    }

    /// Stores a snapshot and drops all but the newest few.
    pub async fn put(
        &self,
        version: Version,
        hash: WeightHash,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.writer
            .run(move |conn, file| {
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (version, hash, bytes) VALUES (?1, ?2, ?3)",
                    params![version.0 as i64, &hash.0[..], bytes],
                )
                .map_err(|e| file.err(e))?;
                conn.execute(
                    "DELETE FROM snapshots WHERE version NOT IN \
                     (SELECT version FROM snapshots ORDER BY version DESC LIMIT ?1)",
                    params![SNAPSHOTS_KEPT],
                )
                .map_err(|e| file.err(e))?;
                Ok(())
            })
            .await
    }

    /// The newest snapshot: its version and safetensors bytes (read on a connection of its
    /// own: snapshots are served to many peers at once).
    pub async fn latest(&self) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        self.writer
            .file()
            .read(|conn, file| {
                conn.query_row(
                    "SELECT version, bytes FROM snapshots ORDER BY version DESC LIMIT 1",
                    [],
                    |r| Ok((Version(r.get::<_, i64>(0)? as u64), r.get(1)?)),
                )
                .optional()
                .map_err(|e| file.err(e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::open;
    use protocol::{Version, WeightHash};

    #[tokio::test]
    async fn only_the_newest_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (stores, _) = open(&path, Some("[job]\nname = \"a\"\n")).await.unwrap();
        for v in 0..6u64 {
            stores
                .snapshots
                .put(Version(v * 10), WeightHash([v as u8; 32]), vec![v as u8])
                .await
                .unwrap();
        }
        assert_eq!(
            stores.snapshots.latest().await.unwrap(),
            Some((Version(50), vec![5]))
        );
        let n: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, super::SNAPSHOTS_KEPT);
    }
}
