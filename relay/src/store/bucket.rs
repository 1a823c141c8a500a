//! JetStream key-value buckets as the replicated stores use them: made if missing with the
//! replicas asked, and written patiently through an election or a server restart.

use super::StoreError;
use crate::log::JetstreamError;
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// How long a replicated store keeps trying while the cluster does not answer.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A key-value bucket, made as the stream one is (`KV_<bucket>`, one value a key, roll-ups
/// allowed) if missing. Not through the client's bucket creation: that first reads account
/// details in a shape the 2.9 server does not send. `max_age` zero: values never expire.
pub async fn kv_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, JetstreamError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    crate::log::jetstream::stream_as_asked(jetstream, config, "open a key-value bucket").await?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|e| JetstreamError::Nats {
            what: "open a key-value bucket",
            source: e.into(),
        })
}

/// Runs `attempt` on `bucket` until it succeeds or [`PATIENCE`] runs out: for idempotent
/// operations (a put of a whole value, a read).
pub(super) async fn patiently<T, E, F, Fut>(
    bucket: &str,
    doing: &str,
    mut attempt: F,
) -> Result<T, StoreError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("{doing} in {bucket}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(StoreError::Replicated {
                    bucket: bucket.to_string(),
                    what: format!("{doing}: {e}"),
                });
            }
        }
    }
}
