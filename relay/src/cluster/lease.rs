//! Which sequencer candidate runs: the holder of a lease, a key in a JetStream key-value bucket
//! whose values expire after [`LEASE`] unless renewed.
//!
//! The lease keeps two candidates from both working at once in the ordinary case; it is not
//! what keeps the log right. A candidate that lost its lease without knowing it (paused, cut
//! off) and appends anyway is refused by the `LOG` stream's fence: it does not know the head.

use super::{Connection, Names};
use crate::log::JetstreamError;
use async_nats::jetstream::kv;
use bytes::Bytes;
use std::time::Duration;

/// How long a lease lasts without renewal: a dead sequencer's successor starts within this.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// The key.
const KEY: &str = "sequencer";

/// A held lease.
pub struct Lease {
    store: kv::Store,
    holder: Bytes,
    revision: u64,
}

/// The job's lease bucket, made if missing.
async fn bucket(
    nats: &Connection,
    names: &Names,
    replicas: usize,
) -> Result<kv::Store, JetstreamError> {
    let bucket = names.lease_bucket();
    crate::log::jetstream::patiently(|| {
        crate::store::kv_bucket(&nats.jetstream, &bucket, replicas, LEASE)
    })
    .await
}

/// Waits until this candidate (`holder` names it) holds the lease.
pub async fn acquire(
    nats: &Connection,
    names: &Names,
    replicas: usize,
    holder: String,
) -> Result<Lease, JetstreamError> {
    let store = bucket(nats, names, replicas).await?;
    let holder = Bytes::from(holder);
    loop {
        match store.create(KEY, holder.clone()).await {
            Ok(revision) => {
                return Ok(Lease {
                    store,
                    holder,
                    revision,
                });
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => tracing::warn!("the sequencer lease: {e}; trying again"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

impl Lease {
    /// Renews the lease until it cannot: returns when it is lost (another candidate holds it,
    /// or no renewal went through for [`LEASE`]).
    pub async fn keep(mut self) -> String {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self
                .store
                .update(KEY, self.holder.clone(), self.revision)
                .await
            {
                Ok(revision) => {
                    self.revision = revision;
                    renewed = tokio::time::Instant::now();
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return format!("another candidate holds the sequencer lease ({e})");
                }
                Err(e) if renewed.elapsed() >= LEASE => {
                    return format!("the sequencer lease was not renewed for {LEASE:?} ({e})");
                }
                Err(e) => tracing::warn!("renewing the sequencer lease: {e}"),
            }
        }
    }
}

/// Who holds the lease now, if anyone (the value a holder wrote).
pub async fn holder(
    nats: &Connection,
    names: &Names,
    replicas: usize,
) -> Result<Option<String>, JetstreamError> {
    let store = bucket(nats, names, replicas).await?;
    let value = store.get(KEY).await.map_err(|e| JetstreamError::Nats {
        what: "read the sequencer lease",
        source: e.into(),
    })?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}
