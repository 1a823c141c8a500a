//! A relay that plays a script, and a clock that jumps: the driver's loop tested without
//! sockets or waiting, the same way natively and inside WebAssembly. (The end-to-end tests run
//! the driver against the real relay; this pins its turns — reconnects, resumes, close codes —
//! where a real network could not make them happen on cue.)

use super::{Clock, Connection, Incoming, Transport};
use protocol::{LogCursor, LogEntry, Message, PeerId, Version};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// Plays one script per connection, in order; a connection whose script has run out waits for
/// ever. Every `Contribute` is logged at once: the next frame is a `LogBatch` with its
/// entries (a relay's acceptance), except on the connections told to lose them. Records what
/// the peer sent.
pub struct ScriptedRelay {
    scripts: VecDeque<Vec<Incoming>>,
    snapshot: Vec<u8>,
    /// The first this many connections never answer a contribution.
    losing: usize,
    /// What the peer sent, one list per connection.
    pub sent: Rc<RefCell<Vec<Vec<Message>>>>,
}

impl ScriptedRelay {
    pub fn new(scripts: Vec<Vec<Incoming>>, snapshot: Vec<u8>) -> Self {
        ScriptedRelay {
            scripts: scripts.into(),
            snapshot,
            losing: 0,
            sent: Rc::default(),
        }
    }

    /// The first `connections` connections take contributions and never answer them, as a
    /// relay restarting behind a socket that stays open would.
    pub fn losing_contributions(mut self, connections: usize) -> Self {
        self.losing = connections;
        self
    }
}

/// A frame of `msg` as the relay would send it.
pub fn frame(msg: &Message) -> Incoming {
    Incoming::Frame(msg.encode())
}

impl Transport for ScriptedRelay {
    type Connection = ScriptedConnection;

    fn address(&self) -> &str {
        "ws://scripted.invalid/ws"
    }

    async fn connect(&mut self) -> Result<ScriptedConnection, String> {
        let script = self.scripts.pop_front().ok_or("no more connections")?;
        self.sent.borrow_mut().push(Vec::new());
        let answers = self.losing == 0;
        self.losing = self.losing.saturating_sub(1);
        Ok(ScriptedConnection {
            script: script.into(),
            answers,
            sent: self.sent.clone(),
            peer: None,
            log: None,
        })
    }

    async fn snapshot(&mut self, job: &crate::Job) -> Result<crate::Snapshot, String> {
        crate::Snapshot::from_bytes(&self.snapshot, job.id, job.model.layout())
            .map_err(|e| e.to_string())
    }
}

pub struct ScriptedConnection {
    script: VecDeque<Incoming>,
    /// Whether contributions are logged (else they vanish).
    answers: bool,
    sent: Rc<RefCell<Vec<Vec<Message>>>>,
    /// The id the script's `Welcome` gave the peer.
    peer: Option<PeerId>,
    /// The log as the script streamed it so far (from its `CounterTable`), to pack answers.
    log: Option<LogCursor>,
}

impl ScriptedConnection {
    /// Follows what the peer is told: its id, and the log's position.
    fn heard(&mut self, incoming: &Incoming) {
        let Incoming::Frame(bytes) = incoming else {
            return;
        };
        match Message::decode(bytes) {
            Ok(Message::Welcome { peer, .. }) => self.peer = Some(peer),
            Ok(Message::CounterTable { version, entries }) => {
                self.log = Some(LogCursor::from_table(version, &entries));
            }
            Ok(Message::LogBatch {
                first_version,
                entries,
            }) => {
                // Its own answers were packed by this cursor already.
                if let Some(log) = self.log.as_mut().filter(|l| l.version() == first_version) {
                    log.unpack(first_version, &entries)
                        .expect("the script's log is consistent");
                }
            }
            _ => {}
        }
    }
}

impl Connection for ScriptedConnection {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        let msg = Message::decode(&frame).map_err(|e| e.to_string())?;
        if let (Message::Contribute { counter, bytes, .. }, Some(peer), Some(log)) =
            (&msg, self.peer, &mut self.log)
            && self.answers
        {
            let entries: Vec<LogEntry> = (u64::from(counter.0)..)
                .zip(bytes)
                .map(|(counter, &byte)| LogEntry {
                    peer,
                    counter: protocol::Counter(counter),
                    byte,
                })
                .collect();
            self.script
                .push_front(Incoming::Frame(log.pack(&entries).encode()));
        }
        self.sent
            .borrow_mut()
            .last_mut()
            .expect("connected")
            .push(msg);
        Ok(())
    }

    async fn recv(&mut self) -> Incoming {
        match self.script.pop_front() {
            Some(incoming) => {
                self.heard(&incoming);
                incoming
            }
            None => std::future::pending().await,
        }
    }

    async fn close(&mut self, _reason: &str) {}
}

/// A clock that never waits: sleeping moves it forward.
#[derive(Debug, Clone, Default)]
pub struct JumpingClock {
    now: Rc<Cell<f64>>,
    /// Every sleep asked for, in ms.
    pub slept: Rc<RefCell<Vec<f64>>>,
}

impl Clock for JumpingClock {
    fn now_ms(&self) -> f64 {
        self.now.get()
    }

    async fn sleep_ms(&self, ms: f64) {
        self.slept.borrow_mut().push(ms);
        self.now.set(self.now.get() + ms.max(0.0));
        futures_lite::future::yield_now().await;
    }
}

/// A host that follows a scripted relay: contributes up to a budget, leaves once it is spent
/// (or after too many turns, so a broken driver fails a test instead of hanging it).
pub struct ScriptedHost {
    job: std::sync::Arc<crate::Job>,
    train: crate::Split,
    sampler: crate::BatchSampler,
    /// Contributions to have accepted before leaving.
    pub budget: u64,
    /// Weight hashes the driver reported.
    pub hashes: Vec<(Version, protocol::WeightHash)>,
    pub turns: u64,
    /// Leave after this many turns of the driver's loop.
    pub max_turns: u64,
}

impl ScriptedHost {
    pub fn new(job: std::sync::Arc<crate::Job>, budget: u64) -> Self {
        let source: crate::DataSource = job.config.task.dataset.parse().expect("built-in data");
        let data = crate::data::for_job(&job, &source, None, 1).expect("built-in data loads");
        ScriptedHost {
            job,
            train: data.train,
            sampler: crate::BatchSampler::new(2),
            budget,
            hashes: Vec::new(),
            turns: 0,
            max_turns: 100_000,
        }
    }
}

impl super::Host for ScriptedHost {
    fn should_leave(&self, peer: &crate::PeerState) -> bool {
        (self.budget > 0 && peer.accepted >= self.budget) || self.turns >= self.max_turns
    }

    fn wants_more(&self, peer: &crate::PeerState, in_flight: usize) -> bool {
        peer.accepted + (in_flight as u64) < self.budget
    }

    fn next_batch(&mut self) -> crate::Split {
        self.sampler
            .sample(&self.train, self.job.hyper().batch_size)
    }

    fn replica(&self, snapshot: crate::Snapshot) -> Result<crate::Replica, String> {
        crate::Replica::restored(self.job.clone(), crate::cpu_device(), snapshot)
            .map_err(|e| e.to_string())
    }

    fn event(&mut self, event: super::Event<'_>) {
        if let super::Event::Hashes(hashes) = event {
            self.hashes.extend_from_slice(hashes);
        }
    }

    async fn tick(&mut self, _view: super::View<'_>) {
        self.turns += 1;
    }
}

/// What [`lost_connection_scenario`] saw.
pub struct Outcome {
    pub result: Result<(), super::Stop>,
    pub peer: crate::PeerState,
    pub host: ScriptedHost,
    pub sent: Vec<Vec<Message>>,
    pub reconnects: u64,
    pub slept: Vec<f64>,
    /// θ after the log the script streamed, applied directly.
    pub expected_hash: protocol::WeightHash,
}

/// The resume secret [`lost_connection_scenario`]'s relay hands out.
pub const SECRET: protocol::ResumeSecret = protocol::ResumeSecret([5; 16]);

/// The demo job's peer 5 catches up to version 300 and the line drops; it reconnects, resumes
/// its id from 300, catches up to 512, has two contributions accepted (sent as one run, and
/// logged: the replica ends at 514) and leaves. Run natively and in wasm; each suite asserts
/// on the [`Outcome`].
pub async fn lost_connection_scenario(token: &str) -> Outcome {
    use protocol::{Counter, LogCursor, PeerId};
    let job = std::sync::Arc::new(crate::Job::demo());
    let log = crate::reference::synthetic_log(512, 7);
    let mut cursor = LogCursor::new(Version(0), []);
    let welcome = |version: u64| Message::Welcome {
        peer: PeerId(5),
        job: job.id,
        version: Version(version),
        next_counter: Counter(0),
        secret: SECRET,
        rate_limit: 0,
    };
    let mut first = vec![frame(&welcome(300)), frame(&cursor.table_message())];
    first.extend(log[..300].chunks(100).map(|c| frame(&cursor.pack(c))));
    first.push(Incoming::Lost("the line dropped".into()));
    // The second connection's catch-up is packed from a fresh cursor at 300, as the relay packs
    // a catch-up from its counter table.
    let table = cursor.table_message();
    let Message::CounterTable { entries, .. } = &table else {
        unreachable!("a table message")
    };
    let mut resumed = LogCursor::from_table(Version(300), entries);
    let mut second = vec![frame(&welcome(512)), frame(&table)];
    second.extend(log[300..].chunks(100).map(|c| frame(&resumed.pack(c))));

    let fresh = crate::Replica::new(job.clone(), crate::cpu_device());
    let snapshot = fresh.snapshot().await.expect("a snapshot");
    let relay = ScriptedRelay::new(vec![first, second], snapshot.clone());
    let sent = relay.sent.clone();
    let clock = JumpingClock::default();
    let slept = clock.slept.clone();
    let mut host = ScriptedHost::new(job.clone(), 2);
    let replica = crate::Replica::from_snapshot(job.clone(), crate::cpu_device(), &snapshot)
        .expect("the snapshot loads");
    let mut peer = crate::PeerState::new(replica);
    let config = super::DriverConfig {
        token: token.to_string(),
        window: 4,
        give_up_after_ms: Some(60_000.0),
        seed: 1,
    };
    let mut driver = super::Driver::new(&mut host, relay, clock, config);
    let result = driver.run(&mut peer).await;
    let reconnects = driver.tally().reconnects;
    drop(driver);
    let mut check = crate::Replica::new(job, crate::cpu_device());
    check.apply(&log);
    let expected_hash = check.weight_hash().await.expect("hashing");
    let sent = sent.borrow().clone();
    let slept = slept.borrow().clone();
    Outcome {
        result,
        peer,
        host,
        sent,
        reconnects,
        slept,
        expected_hash,
    }
}
