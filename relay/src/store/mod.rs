//! The relay's SQLite file (WAL mode): the log, the peers, the job's metadata and the
//! follower's snapshots, each behind its own handle.
//!
//! [`open`] brings the file to this relay's schema and hands out one handle per concern:
//! [`PeerRegistry`], [`JobMeta`], [`Snapshots`], and the file itself, on which
//! `crate::log::LogStore::sqlite` keeps the log.
//! Each writes through its own connection with `synchronous = FULL`, so what a call returns
//! from is on disk; readers open connections of their own (WAL lets them read while the log is
//! written). Every call runs off the async threads. The handles' methods are the shape another
//! backend (a replicated key-value store, an object store) would take.

mod bucket;
mod file;
mod meta;
mod peers;
mod replicated_meta;
mod replicated_peers;
mod schema;
mod snapshots;

pub use bucket::kv_bucket;
pub use file::{SqliteFile, StoreError, Writer};
pub use meta::JobMeta;
pub use peers::{PeerRegistry, RESUME_WINDOW_S};
pub use replicated_meta::ReplicatedMeta;
pub use replicated_peers::ReplicatedPeers;
pub use snapshots::Snapshots;

use std::path::Path;

/// Every handle on one store file.
#[derive(Clone)]
pub struct Stores {
    /// The file, for the log's backend.
    pub file: SqliteFile,
    pub peers: PeerRegistry,
    pub meta: JobMeta,
    pub snapshots: Snapshots,
}

/// Opens (creating if needed) the store at `path` for the job `job_toml`. With `None`, the job
/// already in the store is used. Returns the handles and the job's TOML.
pub async fn open(path: &Path, job_toml: Option<&str>) -> Result<(Stores, String), StoreError> {
    let file = SqliteFile::create(path).await?;
    let meta = JobMeta::open(file.clone()).await?;
    let job_toml = meta.claim_job(job_toml).await?;
    let stores = Stores {
        file: file.clone(),
        peers: PeerRegistry::open(file.clone()).await?,
        meta,
        snapshots: Snapshots::open(file).await?,
    };
    Ok((stores, job_toml))
}
