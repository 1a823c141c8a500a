//! Many peers in one process, talking through an in-memory ordered log exactly as they would
//! through a relay: every peer proposes against its own replica, the log orders the
//! contributions, and every replica applies the whole log, its own entries included.
//!
//! Peers work in rounds: each proposes at the current version, then the round's entries are
//! appended to the log in peer order and broadcast in one batch. A contribution is therefore up
//! to `peers − 1` versions stale when applied, as with a relay under load.

use crate::data::{BatchSampler, Dataset, Split};
use crate::job::Job;
use crate::replica::{EngineError, Evaluation, Replica};
use burn::tensor::Device;
use protocol::{
    Counter, LogCursor, LogEntry, Message, PeerId, Serial, Version, WeightHash, framing,
};
use std::sync::Arc;

/// What peers send the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exchange {
    /// One byte per gradient estimate (the protocol).
    #[default]
    Byte,
    /// The raw f32 projected gradient, for comparison (not a protocol mode).
    RawF32,
}

/// Traffic counters, with WebSocket framing as a real relay would see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Peer → relay: `Contribute` frames.
    pub uplink: u64,
    /// Relay → peers: `LogBatch` frames, one per peer per round.
    pub downlink: u64,
    /// What a ring all-reduce of fp32 gradients would send for the same rounds:
    /// `2 (N − 1) · 4d` bytes per round over all peers.
    pub fp32_allreduce: u64,
}

/// What one [`Simulation::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The log entry, now applied by every replica.
    pub entry: LogEntry,
    /// The direction's seed, derived from `(job, peer, counter)`.
    pub seed: protocol::DirectionSeed,
    pub proposal: crate::replica::Proposal,
    /// `c = −η·D(byte)`: what every replica added along the direction.
    pub step: f32,
}

struct SimPeer {
    id: PeerId,
    replica: Replica,
    shard: Split,
    sampler: BatchSampler,
    next_counter: Counter,
    /// In a private job, the noise a real peer would add (seeded here: a simulation is meant
    /// to be repeatable, and its data never leaves the process).
    privacy: Option<crate::privacy::PrivatePeer>,
}

impl SimPeer {
    /// A proposal as a real peer would send it: noised and re-encoded in a private job.
    async fn propose(
        &mut self,
        counter: Counter,
        batch: &Split,
    ) -> Result<crate::Proposal, EngineError> {
        let mut p = self.replica.propose(self.id, counter, batch).await?;
        if let Some(privacy) = &mut self.privacy {
            p.g = privacy.release(p.g);
            p.byte = self.replica.job().hyper().quantizer.encode(p.g);
        }
        Ok(p)
    }
}

/// N peers, one log.
pub struct Simulation {
    job: Arc<Job>,
    peers: Vec<SimPeer>,
    log: Vec<LogEntry>,
    /// Packs each round's entries as the relay would.
    cursor: LogCursor,
    exchange: Exchange,
    traffic: Traffic,
    last_losses: Vec<f32>,
}

impl Simulation {
    /// `peers` replicas of `job`, each with its own shard of `data.train`.
    pub fn new(
        job: Arc<Job>,
        data: &Dataset,
        peers: usize,
        seed: u64,
        exchange: Exchange,
        device: Device,
    ) -> Self {
        assert!(peers > 0, "a simulation needs at least one peer");
        Simulation::with_replicas(
            job.clone(),
            data,
            (0..peers)
                .map(|_| Replica::new(job.clone(), device.clone()))
                .collect(),
            seed,
            exchange,
        )
    }

    /// A simulation over replicas made by the caller (on any backends, all at version 0).
    pub fn with_replicas(
        job: Arc<Job>,
        data: &Dataset,
        replicas: Vec<Replica>,
        seed: u64,
        exchange: Exchange,
    ) -> Self {
        assert!(!replicas.is_empty(), "a simulation needs at least one peer");
        let peers = replicas.len();
        let peers = replicas
            .into_iter()
            .enumerate()
            .map(|(i, replica)| SimPeer {
                id: PeerId(i as u32),
                replica,
                shard: data.train.shard(i, peers),
                sampler: BatchSampler::new(
                    seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)),
                ),
                next_counter: Counter(0),
                privacy: job.privacy().map(|spec| {
                    let mut noise_seed = [0u8; 32];
                    noise_seed[..8].copy_from_slice(&seed.to_le_bytes());
                    noise_seed[8..12].copy_from_slice(&(i as u32).to_le_bytes());
                    crate::privacy::PrivatePeer::new(
                        *spec,
                        job.hyper().batch_size,
                        data.train.len() / peers,
                        crate::privacy::Noise::from_seed(noise_seed),
                    )
                }),
            })
            .collect();
        Simulation {
            job,
            peers,
            log: Vec::new(),
            cursor: LogCursor::default(),
            exchange,
            traffic: Traffic::default(),
            last_losses: Vec::new(),
        }
    }

    /// One round: every peer proposes, the log orders and broadcasts, every replica applies.
    /// Returns the number of entries logged.
    pub async fn round(&mut self) -> Result<usize, EngineError> {
        let batch_size = self.job.hyper().batch_size;
        let mut entries = Vec::with_capacity(self.peers.len());
        let mut raw = Vec::with_capacity(self.peers.len());
        self.last_losses.clear();
        for peer in &mut self.peers {
            let batch = peer.sampler.sample(&peer.shard, batch_size);
            let counter = peer.next_counter;
            peer.next_counter = Counter(counter.0 + 1);
            let p = peer.propose(counter, &batch).await?;
            self.last_losses.push(p.loss);
            let frame = Message::Contribute {
                counter: Serial::of(counter.0),
                base_version: Serial::of(p.base_version.0),
                byte: p.byte,
            }
            .encode();
            self.traffic.uplink += match self.exchange {
                Exchange::Byte => framing::client_frame_len(frame.len()),
                // The byte replaced by four.
                Exchange::RawF32 => framing::client_frame_len(frame.len() + 3),
            } as u64;
            entries.push(LogEntry {
                peer: peer.id,
                counter,
                byte: p.byte,
            });
            raw.push(p.g);
        }
        let batch = self.cursor.pack(&entries).encode();
        let extra = if self.exchange == Exchange::RawF32 {
            3 * entries.len()
        } else {
            0
        };
        let n = self.peers.len() as u64;
        self.traffic.downlink += n * framing::server_frame_len(batch.len() + extra) as u64;
        self.traffic.fp32_allreduce += 2 * (n - 1) * 4 * self.job.model.layout().d() as u64;

        for peer in &mut self.peers {
            match self.exchange {
                Exchange::Byte => peer.replica.apply(&entries),
                Exchange::RawF32 => {
                    let lr = self.job.hyper().learning_rate;
                    let steps: Vec<_> = entries
                        .iter()
                        .zip(&raw)
                        .map(|(e, g)| (peer.replica.seed(e.peer, e.counter), -(lr * g)))
                        .collect();
                    peer.replica.apply_steps(&steps);
                }
            }
        }
        self.log.extend(entries);
        Ok(self.peers.len())
    }

    /// One log entry: the next peer in turn proposes on the current weights, the entry is
    /// logged, and every replica applies it. A teaching view walks through these one by one.
    pub async fn step(&mut self) -> Result<Step, EngineError> {
        let turn = self.log.len() % self.peers.len();
        let batch_size = self.job.hyper().batch_size;
        let peer = &mut self.peers[turn];
        let batch = peer.sampler.sample(&peer.shard, batch_size);
        let counter = peer.next_counter;
        peer.next_counter = Counter(counter.0 + 1);
        let seed = peer.replica.seed(peer.id, counter);
        let proposal = peer.propose(counter, &batch).await?;
        let entry = LogEntry {
            peer: peer.id,
            counter,
            byte: proposal.byte,
        };
        let n = self.peers.len() as u64;
        let frame = self.cursor.pack(std::slice::from_ref(&entry)).encode();
        self.traffic.uplink += framing::client_frame_len(6) as u64;
        self.traffic.downlink += n * framing::server_frame_len(frame.len()) as u64;
        for peer in &mut self.peers {
            peer.replica.apply(std::slice::from_ref(&entry));
        }
        self.log.push(entry);
        self.last_losses = vec![proposal.loss];
        Ok(Step {
            entry,
            seed,
            proposal,
            step: self.peers[0].replica.step_for(entry.byte),
        })
    }

    /// The log so far.
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// The replicas' common version.
    pub fn version(&self) -> Version {
        Version(self.log.len() as u64)
    }

    /// Every replica's weight hash, in peer order.
    pub async fn hashes(&self) -> Result<Vec<WeightHash>, EngineError> {
        let mut hashes = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            hashes.push(p.replica.weight_hash().await?);
        }
        Ok(hashes)
    }

    /// Peer `i`'s replica.
    pub fn replica(&self, i: usize) -> &Replica {
        &self.peers[i].replica
    }

    /// Number of peers.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Bytes exchanged so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Mean local loss of the last round's proposals.
    pub fn last_loss(&self) -> Option<f32> {
        (!self.last_losses.is_empty())
            .then(|| self.last_losses.iter().sum::<f32>() / self.last_losses.len() as f32)
    }

    /// Peer 0's replica on `split`.
    pub async fn evaluate(&self, split: &Split) -> Result<Evaluation, EngineError> {
        self.peers[0].replica.evaluate(split).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::PrivacySpec;
    use crate::{Builtin, block_on, cpu_device};

    #[test]
    fn a_simulated_private_job_noises_what_its_peers_send() {
        let data = Builtin::Spirals.generate(400, 40, 1);
        let mut config = Job::demo().config;
        config.privacy = Some(PrivacySpec {
            clip: 5.0,
            noise_multiplier: 1.0,
            delta: 1e-5,
        });
        let private = Arc::new(Job::new(config.clone()).unwrap());
        config.privacy = None;
        let plain = Arc::new(Job::new(config).unwrap());
        // The same job (same id, same directions) without `[privacy]`, for comparison.
        let run = |job: Arc<Job>| {
            let mut sim = Simulation::new(job, &data, 2, 7, Exchange::Byte, cpu_device());
            for _ in 0..20 {
                block_on(sim.round()).unwrap();
            }
            sim.log().iter().map(|e| e.byte).collect::<Vec<u8>>()
        };
        let (noised, again) = (run(private.clone()), run(private));
        assert_eq!(noised, again, "a simulation repeats itself");
        assert_ne!(noised, run(plain), "the private peers' bytes carry noise");
    }
}
