//! One SQLite file and the connections to it.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::Semaphore;

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
    #[error("the JetStream bucket {bucket}: {what}")]
    Replicated { bucket: String, what: String },
    #[error(transparent)]
    Jetstream(#[from] crate::log::JetstreamError),
    /// The sequencer's store failed, as an edge hears of it.
    #[error("the sequencer's store: {0}")]
    Remote(String),
    #[error("store {path} holds no job and none was given")]
    NoJob { path: PathBuf },
    #[error(
        "store {path} holds another tokenizer.json than the job file names; the job's \
         tokenizer cannot change: use another --store"
    )]
    TokenizerMismatch { path: PathBuf },
    #[error(
        "store {path} has schema version {version}, newer than this relay's ({current}): \
         a newer onebyte-relay wrote it"
    )]
    NewerSchema {
        path: PathBuf,
        version: i64,
        current: i64,
    },
    #[error("store {path}: log entry at version {version} is not valid: {what}")]
    Corrupt {
        path: PathBuf,
        version: u64,
        what: &'static str,
    },
    #[error("store {path}: the relay is shutting down")]
    ShuttingDown { path: PathBuf },
}

/// Reads of the file on a client's behalf at once (catch-up, `/api/log`, snapshots): a crowd
/// asking for the whole log waits its turn instead of holding it all in memory.
const READERS: usize = 8;

/// The store file: where it is, and a bound on the readers it serves at once.
#[derive(Clone)]
pub struct SqliteFile {
    path: Arc<PathBuf>,
    readers: Arc<Semaphore>,
}

impl SqliteFile {
    /// Opens or creates the file in WAL mode and brings its schema up to date.
    pub async fn create(path: &Path) -> Result<SqliteFile, StoreError> {
        let file = SqliteFile {
            path: Arc::new(path.to_path_buf()),
            readers: Arc::new(Semaphore::new(READERS)),
        };
        let init = file.clone();
        file.blocking(move || {
            let conn = Connection::open(init.path()).map_err(|e| init.err(e))?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
            )
            .map_err(|e| init.err(e))?;
            super::schema::migrate(&conn, init.path())
        })
        .await?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connection of its own, for one handle's writes or one read.
    pub fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            self.path(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.err(e))?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
            .map_err(|e| self.err(e))?;
        Ok(conn)
    }

    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// Runs `work` off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|_| Err(self.shutting_down()))
    }

    /// Runs `read` on a fresh connection off the async threads, one of a bounded few at once
    /// (a reader waiting to send holds no connection, nor its page cache).
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, &SqliteFile) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .readers
            .acquire()
            .await
            .map_err(|_| self.shutting_down())?;
        let file = self.clone();
        self.blocking(move || read(&file.connect()?, &file)).await
    }

    fn shutting_down(&self) -> StoreError {
        StoreError::ShuttingDown {
            path: self.path.to_path_buf(),
        }
    }
}

/// One handle's own connection, used by one call at a time.
#[derive(Clone)]
pub struct Writer {
    file: SqliteFile,
    conn: Arc<Mutex<Connection>>,
}

impl Writer {
    pub fn open(file: SqliteFile) -> Result<Writer, StoreError> {
        let conn = file.connect()?;
        Ok(Writer {
            file,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn file(&self) -> &SqliteFile {
        &self.file
    }

    /// Runs `work` on this handle's connection, off the async threads.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SqliteFile) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        self.file
            .blocking(move || {
                let mut conn = this.conn.lock().expect("no panics while holding it");
                work(&mut conn, &this.file)
            })
            .await
    }
}
