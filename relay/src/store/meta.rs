//! The job's metadata: the job itself, the host's pause, the tokenizer, committee rounds
//! handed out.

use super::file::Writer;
use super::replicated_meta::{self, ReplicatedMeta};
use super::{SqliteFile, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;

/// The job's metadata in the store (a key-value table), or, for what the sequencer decides
/// when candidates on several machines take turns, in a JetStream key-value bucket.
#[derive(Clone)]
pub struct JobMeta {
    writer: Writer,
    replicated: Option<Arc<ReplicatedMeta>>,
}

impl JobMeta {
    pub async fn open(file: SqliteFile) -> Result<JobMeta, StoreError> {
        Ok(JobMeta {
            writer: Writer::open(file)?,
            replicated: None,
        })
    }

    /// This metadata with the pause and the committee rounds kept in `replicated` instead of
    /// the file.
    pub fn replicated(self, replicated: ReplicatedMeta) -> JobMeta {
        JobMeta {
            replicated: Some(Arc::new(replicated)),
            ..self
        }
    }

    /// Where `key` is kept: the bucket, if it is one of the shared keys and there is one.
    fn bucket_for(&self, key: &str) -> Option<&ReplicatedMeta> {
        self.replicated
            .as_deref()
            .filter(|_| replicated_meta::KEYS.contains(&key))
    }

    async fn get(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        if let Some(bucket) = self.bucket_for(key) {
            return bucket.get(key).await;
        }
        self.writer
            .run(move |conn, file| get(conn, key).map_err(|e| file.err(e)))
            .await
    }

    async fn set(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        if let Some(bucket) = self.bucket_for(key) {
            return bucket.set(key, value).await;
        }
        self.writer
            .run(move |conn, file| {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )
                .map(|_| ())
                .map_err(|e| file.err(e))
            })
            .await
    }

    /// The job this store holds: `given` if the store holds none yet (it is recorded), the
    /// stored one if nothing is given; a different job is refused.
    pub async fn claim_job(&self, given: Option<&str>) -> Result<String, StoreError> {
        let given = given.map(str::to_string);
        self.writer
            .run(move |conn, file| {
                let stored = get(conn, "job").map_err(|e| file.err(e))?;
                match (stored, given) {
                    (Some(stored), Some(given)) if stored.trim() != given.trim() => {
                        Err(StoreError::JobMismatch {
                            path: file.path().to_path_buf(),
                            stored: job_name(&stored),
                            given: job_name(&given),
                        })
                    }
                    (Some(stored), _) => Ok(stored),
                    (None, Some(given)) => {
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('job', ?1)",
                            params![given],
                        )
                        .map_err(|e| file.err(e))?;
                        Ok(given)
                    }
                    (None, None) => Err(StoreError::NoJob {
                        path: file.path().to_path_buf(),
                    }),
                }
            })
            .await
    }

    /// Whether the host paused the job (it stays paused across restarts).
    pub async fn paused(&self) -> Result<bool, StoreError> {
        Ok(self.get("paused").await?.as_deref() == Some("true"))
    }

    /// Records the host's pause or resume, durably.
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.set("paused", paused.to_string()).await
    }

    /// The job's `tokenizer.json`, as kept by [`JobMeta::keep_tokenizer`].
    pub async fn tokenizer(&self) -> Result<Option<String>, StoreError> {
        self.get("tokenizer").await
    }

    /// Keeps the job's `tokenizer.json`, so that the relay serves it after a restart without
    /// the job file. The job's tokenizer is part of it: a different one is refused.
    pub async fn keep_tokenizer(&self, json: &str) -> Result<(), StoreError> {
        match self.tokenizer().await? {
            Some(kept) if kept != json => Err(StoreError::TokenizerMismatch {
                path: self.writer.file().path().to_path_buf(),
            }),
            Some(_) => Ok(()),
            None => self.set("tokenizer", json.to_string()).await,
        }
    }

    /// Committee round numbers below this may have been handed out (0 when none were).
    pub async fn committee_rounds_reserved(&self) -> Result<u64, StoreError> {
        let value = self.get("committee_rounds_reserved").await?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Reserves committee round numbers below `upto`, durably: a restart hands out none of
    /// them again.
    pub async fn reserve_committee_rounds(&self, upto: u64) -> Result<(), StoreError> {
        self.set("committee_rounds_reserved", upto.to_string())
            .await
    }
}

fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
}

/// The job's name (`job.name`) in a job file, for messages.
fn job_name(toml: &str) -> String {
    engine::JobConfig::parse_name(toml).unwrap_or_else(|| "unnamed".into())
}

#[cfg(test)]
mod tests {
    use crate::store::{StoreError, open};

    #[tokio::test]
    async fn a_stores_job_is_kept_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let job = "[job]\nname = \"a\"\n";
        drop(open(&path, Some(job)).await.unwrap());
        let (_, stored) = open(&path, None).await.unwrap();
        assert_eq!(stored, job);
        let other = open(&path, Some("[job]\nname = \"b\"\n"))
            .await
            .err()
            .unwrap();
        assert!(
            other.to_string().contains("holds job `a`") && other.to_string().contains("(`b`)"),
            "{other}"
        );
        let empty = open(&dir.path().join("empty.db"), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(empty, StoreError::NoJob { .. }), "{empty}");
    }

    #[tokio::test]
    async fn a_committee_round_reservation_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (stores, _) = open(&path, Some("[job]\nname = \"t\"\n")).await.unwrap();
        assert_eq!(stores.meta.committee_rounds_reserved().await.unwrap(), 0);
        stores.meta.reserve_committee_rounds(65_536).await.unwrap();
        drop(stores);
        let (stores, _) = open(&path, None).await.unwrap();
        assert_eq!(
            stores.meta.committee_rounds_reserved().await.unwrap(),
            65_536
        );
    }

    #[tokio::test]
    async fn a_jobs_tokenizer_is_kept_and_cannot_be_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (stores, _) = open(&path, Some("[job]\nname = \"t\"\n")).await.unwrap();
        assert_eq!(stores.meta.tokenizer().await.unwrap(), None);
        stores.meta.keep_tokenizer("{\"model\": 1}").await.unwrap();
        stores.meta.keep_tokenizer("{\"model\": 1}").await.unwrap();
        drop(stores);
        let (stores, _) = open(&path, None).await.unwrap();
        assert_eq!(
            stores.meta.tokenizer().await.unwrap().as_deref(),
            Some("{\"model\": 1}")
        );
        assert!(matches!(
            stores.meta.keep_tokenizer("{\"model\": 2}").await,
            Err(StoreError::TokenizerMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn a_pause_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (stores, _) = open(&path, Some("name = \"a\"")).await.unwrap();
        assert!(!stores.meta.paused().await.unwrap());
        stores.meta.set_paused(true).await.unwrap();
        drop(stores);
        let (stores, _) = open(&path, None).await.unwrap();
        assert!(stores.meta.paused().await.unwrap());
        stores.meta.set_paused(false).await.unwrap();
        assert!(!stores.meta.paused().await.unwrap());
    }
}
