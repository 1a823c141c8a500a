//! What the sequencer decides besides the log and the peers, in a JetStream key-value bucket,
//! for sequencer candidates on several machines: whoever sequences next keeps the host's
//! pause and hands out no committee round its predecessor reserved.
//!
//! The job file and its tokenizer stay in each process's own store: every process is given
//! them, and a tokenizer can outgrow a NATS message.

use super::StoreError;
use super::bucket::{kv_bucket, patiently};
use async_nats::jetstream::{self, kv};
use std::time::Duration;

/// The keys kept in the bucket rather than in the store file.
pub(super) const KEYS: [&str; 2] = ["paused", "committee_rounds_reserved"];

/// The job's shared metadata in a bucket. Each read goes to the bucket: only the sequencer
/// reads it, once when it starts.
pub struct ReplicatedMeta {
    store: kv::Store,
    bucket: String,
}

impl ReplicatedMeta {
    /// The metadata in `bucket`, made if missing.
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<ReplicatedMeta, StoreError> {
        let store = crate::log::jetstream::patiently(|| {
            kv_bucket(jetstream, bucket, replicas, Duration::ZERO)
        })
        .await?;
        Ok(ReplicatedMeta {
            store,
            bucket: bucket.to_string(),
        })
    }

    pub(super) async fn get(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        let value = patiently(&self.bucket, &format!("reading {key}"), || {
            self.store.get(key)
        })
        .await?;
        value
            .map(|bytes| {
                String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Replicated {
                    bucket: self.bucket.clone(),
                    what: format!("the value of {key} is not text"),
                })
            })
            .transpose()
    }

    /// Writes `value` of `key`, returning once the bucket holds it.
    pub(super) async fn set(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        patiently(&self.bucket, &format!("writing {key}"), || {
            self.store.put(key, value.clone().into())
        })
        .await
        .map(|_| ())
    }
}
