//! Many peers in one process, talking through an in-memory ordered log exactly as they would
//! through a relay: every peer proposes against its own replica, the log orders the
//! contributions, and every replica applies the whole log, its own entries included.
//!
//! Peers work in rounds: each proposes at the current version, then the round's entries are
//! appended to the log in peer order and broadcast in one batch. A contribution is therefore up
//! to `peers − 1` versions stale when applied, as with a relay under load.
//!
//! In a committee job the peers take turns in committees of the job's size (all of them, if
//! fewer): each member evaluates the round's shared direction `(job, COMMITTEE, round)` on its
//! own batch, and the log takes the median of their bytes, as the relay would.

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
    /// The proposal logged: in a committee job, the median vote (its byte is the entry's when
    /// the committee is odd).
    pub proposal: crate::replica::Proposal,
    /// `c = −η·D(byte)`: what every replica added along the direction.
    pub step: f32,
}

/// A committee job's rounds: members per round, and the next round's number.
#[derive(Debug, Clone, Copy)]
struct Rounds {
    size: usize,
    next: Counter,
}

/// What the log records for one logged step, with what produced it.
struct Decided {
    entry: LogEntry,
    /// The proposals behind it: one peer's, or a committee's (the median vote first).
    proposals: Vec<crate::Proposal>,
    /// The raw value an f32 exchange would send: the proposal's `g`, or the committee's median.
    raw: f32,
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
    /// A proposal along this peer's own direction `counter`.
    async fn propose(
        &mut self,
        counter: Counter,
        batch: &Split,
    ) -> Result<crate::Proposal, EngineError> {
        self.propose_along(self.id, counter, batch).await
    }

    /// A proposal along `(peer, counter)`'s direction as a real peer would send it: noised and
    /// re-encoded in a private job.
    async fn propose_along(
        &mut self,
        peer: PeerId,
        counter: Counter,
        batch: &Split,
    ) -> Result<crate::Proposal, EngineError> {
        let mut p = self.replica.propose(peer, counter, batch).await?;
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
    /// In a committee job, its rounds.
    rounds: Option<Rounds>,
    /// The peer that proposes (or that the next committee starts with) next.
    turn: usize,
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
        let peers: Vec<SimPeer> = replicas
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
            rounds: job.committee().map(|c| Rounds {
                size: c.size.min(peers.len()),
                next: Counter(0),
            }),
            turn: 0,
            job,
            peers,
            log: Vec::new(),
            cursor: LogCursor::default(),
            exchange,
            traffic: Traffic::default(),
            last_losses: Vec::new(),
        }
    }

    /// One round: every peer proposes (in a committee job: every committee votes), the log
    /// orders and broadcasts, every replica applies. Returns the number of entries logged.
    pub async fn round(&mut self) -> Result<usize, EngineError> {
        let decisions = match self.rounds {
            None => self.peers.len(),
            Some(r) => (self.peers.len() / r.size).max(1),
        };
        let mut decided = Vec::with_capacity(decisions);
        for _ in 0..decisions {
            decided.push(self.decide_next().await?);
        }
        self.last_losses = decided
            .iter()
            .flat_map(|d| d.proposals.iter().map(|p| p.loss))
            .collect();
        let entries: Vec<LogEntry> = decided.iter().map(|d| d.entry).collect();
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
                    let steps: Vec<_> = decided
                        .iter()
                        .map(|d| {
                            let e = d.entry;
                            (peer.replica.seed(e.peer, e.counter), -(lr * d.raw))
                        })
                        .collect();
                    peer.replica.apply_steps(&steps);
                }
            }
        }
        self.log.extend(entries);
        Ok(decided.len())
    }

    /// One log entry: the next peer in turn (in a committee job: the next committee) proposes
    /// on the current weights, the entry is logged, and every replica applies it. A teaching
    /// view walks through these one by one.
    pub async fn step(&mut self) -> Result<Step, EngineError> {
        let Decided {
            entry,
            mut proposals,
            ..
        } = self.decide_next().await?;
        let n = self.peers.len() as u64;
        let frame = self.cursor.pack(std::slice::from_ref(&entry)).encode();
        self.traffic.downlink += n * framing::server_frame_len(frame.len()) as u64;
        for peer in &mut self.peers {
            peer.replica.apply(std::slice::from_ref(&entry));
        }
        self.log.push(entry);
        self.last_losses = proposals.iter().map(|p| p.loss).collect();
        Ok(Step {
            entry,
            seed: self.peers[0].replica.seed(entry.peer, entry.counter),
            proposal: proposals.swap_remove(0),
            step: self.peers[0].replica.step_for(entry.byte),
        })
    }

    /// The next entry to log, proposed on the current weights and counted as uplink traffic.
    async fn decide_next(&mut self) -> Result<Decided, EngineError> {
        let batch_size = self.job.hyper().batch_size;
        let frame_len = |msg: Message, exchange: Exchange| {
            let len = msg.encode().len();
            framing::client_frame_len(match exchange {
                Exchange::Byte => len,
                // The byte replaced by four.
                Exchange::RawF32 => len + 3,
            }) as u64
        };
        let n = self.peers.len();
        let Some(rounds) = self.rounds.as_mut() else {
            let peer = &mut self.peers[self.turn];
            self.turn = (self.turn + 1) % n;
            let batch = peer.sampler.sample(&peer.shard, batch_size);
            let counter = peer.next_counter;
            peer.next_counter = Counter(counter.0 + 1);
            let p = peer.propose(counter, &batch).await?;
            self.traffic.uplink += frame_len(
                Message::Contribute {
                    counter: Serial::of(counter.0),
                    base_version: Serial::of(p.base_version.0),
                    bytes: vec![p.byte],
                },
                self.exchange,
            );
            return Ok(Decided {
                entry: LogEntry {
                    peer: peer.id,
                    counter,
                    byte: p.byte,
                },
                raw: p.g,
                proposals: vec![p],
            });
        };
        let round = rounds.next;
        rounds.next = Counter(round.0 + 1);
        let (size, first) = (rounds.size, self.turn);
        self.turn = (first + size) % n;
        let mut votes = Vec::with_capacity(size);
        for i in 0..size {
            let peer = &mut self.peers[(first + i) % n];
            let batch = peer.sampler.sample(&peer.shard, batch_size);
            let p = peer.propose_along(PeerId::COMMITTEE, round, &batch).await?;
            self.traffic.uplink += frame_len(
                Message::Vote {
                    round,
                    base_version: Serial::of(p.base_version.0),
                    byte: p.byte,
                },
                self.exchange,
            );
            votes.push(p);
        }
        let quantizer = self.job.hyper().quantizer;
        let byte = quantizer.median(&votes.iter().map(|p| p.byte).collect::<Vec<_>>());
        // The median vote first (the lower middle one of an even count).
        votes.sort_by(|a, b| a.g.total_cmp(&b.g));
        let middle = votes.remove((votes.len() - 1) / 2);
        let raw = if votes.len() % 2 == 1 {
            // Even count before the removal: the mean of the two middle values.
            (middle.g + votes[votes.len() / 2].g) / 2.0
        } else {
            middle.g
        };
        votes.insert(0, middle);
        Ok(Decided {
            entry: LogEntry {
                peer: PeerId::COMMITTEE,
                counter: round,
                byte,
            },
            proposals: votes,
            raw,
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

    #[test]
    fn a_simulated_committee_logs_the_median_vote_along_each_rounds_shared_direction() {
        let data = Builtin::Spirals.generate(400, 40, 1);
        let mut config = Job::demo().config;
        config.committee = Some(crate::job::CommitteeSpec { size: 3 });
        let job = Arc::new(Job::new(config).unwrap());
        let mut sim = Simulation::new(job.clone(), &data, 7, 3, Exchange::Byte, cpu_device());
        // Seven peers hold two committees of three a round.
        assert_eq!(block_on(sim.round()).unwrap(), 2);
        for round in 2..6 {
            let step = block_on(sim.step()).unwrap();
            assert_eq!(step.entry.peer, PeerId::COMMITTEE);
            assert_eq!(step.entry.counter, Counter(round));
            assert_eq!(
                step.seed,
                sim.replica(0).seed(PeerId::COMMITTEE, Counter(round))
            );
            assert_eq!(
                step.entry.byte, step.proposal.byte,
                "the median of three is a vote"
            );
        }
        let rounds: Vec<u64> = sim.log().iter().map(|e| e.counter.0).collect();
        assert_eq!(rounds, [0, 1, 2, 3, 4, 5]);
        let hashes = block_on(sim.hashes()).unwrap();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        // Fewer peers than the size: one committee of all of them.
        let mut own = Simulation::new(job, &data, 1, 3, Exchange::Byte, cpu_device());
        block_on(own.round()).unwrap();
        assert_eq!(own.log()[0].peer, PeerId::COMMITTEE);
    }
}
