//! Relays on several machines over NATS JetStream: edges hold the sockets, one sequencer
//! decides, the log is a replicated stream.
//!
//! An *edge* ([`uplink`]) is the relay's front as one process has it (sockets, Hello checks,
//! limits, the page, the follower), but its sockets' commands go to the sequencer as records:
//! each tick one message on the job's `RAW` stream, deduplicated by `Nats-Msg-Id` so a retry is
//! never taken twice. The *sequencer* ([`intake`]) reads `RAW`, hands each record to the same
//! [`crate::sequencer::Sequencer`] a single process runs (same rules), and sends each edge the
//! answers for its sockets on a plain NATS subject of its own. Every process reads the log from
//! the `LOG` stream ([`crate::log::jetstream`]); edges send its batches to their peers as a
//! single relay does.
//!
//! Who sequences: any number of candidates wait for a lease ([`lease`]); its holder runs the
//! sequencer, and exits when it loses it.
//!
//! Who is in charge, as edges see it: each sequencer start draws an *epoch* and announces it (with the pause and
//! the peer count) every second and whenever they change. An edge tags its records with the
//! epoch it knows; a sequencer ignores records for another epoch. An edge that hears a new
//! epoch closes its sockets with `GOING_AWAY` (the peers reconnect and resume their ids): the
//! new sequencer knows nothing of the old one's sockets, and whatever they had in flight was
//! never acknowledged. Safety does not rest on this: the `LOG` stream's fence refuses any append
//! not at its head, so two sequencers can never both write a version.
//!
//! Answers travel at most once (plain NATS): one lost while an edge reconnects to NATS leaves a
//! peer waiting, as a relay restart would; the edge closes its sockets when its connection to
//! NATS comes back, and the peers resume.

pub mod intake;
pub mod lease;
pub mod uplink;
pub mod wire;

use async_nats::jetstream::{self, stream};
use protocol::JobId;
use std::time::Duration;
use tokio::sync::watch;

/// How often the sequencer announces itself when nothing changes.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// How long records wait in `RAW`: long enough for a sequencer restart, no longer (they are
/// worth nothing to a later epoch).
const RAW_KEPT: Duration = Duration::from_secs(10 * 60);

/// A connection to NATS: the client, its JetStream context, and how many times it has
/// connected (an edge starts over when that changes: answers may have been lost meanwhile).
#[derive(Clone)]
pub struct Connection {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub connects: watch::Receiver<u64>,
}

/// Connects to NATS at `servers` (URLs separated by commas; the client learns the rest of a
/// cluster from them and moves to another server when one goes away).
pub async fn connect(servers: &str) -> Result<Connection, crate::log::JetstreamError> {
    let addrs: Vec<&str> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let (connected, connects) = watch::channel(0u64);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => connected.send_modify(|n| *n += 1),
                    event => tracing::info!("NATS: {event}"),
                }
            }
        })
        .connect(addrs.as_slice())
        .await
        .map_err(|e| crate::log::JetstreamError::Nats {
            what: "connect",
            source: e.into(),
        })?;
    // Short request timeouts: an append or read retries on another server soon after one
    // goes away, rather than waiting out a long timeout first.
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    Ok(Connection {
        client,
        jetstream,
        connects,
    })
}

/// The subjects and streams of one job.
#[derive(Debug, Clone)]
pub struct Names {
    job: String,
}

impl Names {
    pub fn new(job: JobId) -> Self {
        Names {
            job: format!("{:016x}", job.0),
        }
    }

    pub fn raw_stream(&self) -> String {
        format!("ONEBYTE_{}_RAW", self.job)
    }

    pub fn raw_subject(&self) -> String {
        format!("onebyte.{}.raw", self.job)
    }

    /// The key-value bucket of the sequencer lease.
    pub fn lease_bucket(&self) -> String {
        format!("ONEBYTE_{}_LEASE", self.job)
    }

    /// The key-value bucket of the peer registry.
    pub fn peers_bucket(&self) -> String {
        format!("ONEBYTE_{}_PEERS", self.job)
    }

    /// The key-value bucket of what the sequencer decides besides the log and the peers: the
    /// host's pause, the committee rounds handed out.
    pub fn meta_bucket(&self) -> String {
        format!("ONEBYTE_{}_META", self.job)
    }

    /// Where the sequencer answers the edge `edge`.
    pub fn edge_subject(&self, edge: u64) -> String {
        format!("onebyte.{}.edge.{edge:016x}", self.job)
    }

    /// Where the sequencer announces its epoch and standing.
    pub fn announce_subject(&self) -> String {
        format!("onebyte.{}.sequencer", self.job)
    }
}

/// The job's `RAW` stream, made if missing.
pub async fn raw_stream(
    jetstream: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<stream::Stream, crate::log::JetstreamError> {
    let config = stream::Config {
        name: names.raw_stream(),
        subjects: vec![names.raw_subject()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: RAW_KEPT,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    crate::log::jetstream::patiently(|| {
        crate::log::jetstream::stream_as_asked(
            jetstream,
            config.clone(),
            "open the job's RAW stream",
        )
    })
    .await
}

/// A random number for an epoch or an edge's name.
fn draw() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    u64::from_le_bytes(bytes)
}
