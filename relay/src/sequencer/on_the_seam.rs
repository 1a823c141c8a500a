//! The sequencer against the stores' seam, without sockets: admission, staleness, the pause,
//! clipping, committee rounds, and durability before anyone hears of an entry.

use super::*;
use crate::influence::InfluenceConfig;
use std::time::Duration as StdDuration;

const WAIT: StdDuration = StdDuration::from_secs(10);

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    commands: mpsc::Sender<Command>,
    log: LogStore,
    standing: watch::Receiver<Standing>,
    stats: Arc<Stats>,
}

/// A joined peer as the sequencer sees it: its id and its queue of answers.
struct TestPeer {
    joined: Joined,
    answers: mpsc::Receiver<Outgoing>,
    _kick: oneshot::Receiver<Refusal>,
}

fn config() -> SequencerConfig {
    SequencerConfig {
        tick: Duration::from_millis(1),
        staleness_bound: 8,
        max_peers: 3,
        quantizer: Quantizer::default(),
        influence: InfluenceConfig {
            clip_factor: 0.0,
            quarantine_share: 0.0,
        },
        committee_size: None,
        round_timeout: Duration::from_secs(5),
    }
}

async fn start(config: SequencerConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (stores, _) = crate::store::open(&path, Some("[job]\nname = \"t\"\n"))
        .await
        .unwrap();
    let stats = Arc::new(Stats::default());
    let log = LogStore::sqlite(stores.file.clone()).await.unwrap();
    let decides = SequencerStores {
        log: log.clone(),
        peers: stores.peers,
        meta: stores.meta,
    };
    let (sequencer, standing) = Sequencer::new(decides, config, stats.clone())
        .await
        .unwrap();
    let (commands, rx) = mpsc::channel(1024);
    tokio::spawn(sequencer.run(rx));
    Harness {
        _dir: dir,
        path,
        commands,
        log,
        standing,
        stats,
    }
}

impl Harness {
    async fn try_join(&self, resume: Option<Resume>) -> Result<TestPeer, Refusal> {
        // Room for every answer a test leaves unread: a full queue would drop the peer.
        let (outbox, answers) = mpsc::channel(1024);
        let (kick, kick_rx) = oneshot::channel();
        let (reply, joined) = oneshot::channel();
        let join = Command::Join {
            resume,
            from: Version(0),
            outbox,
            kick,
            reply,
        };
        self.commands.send(join).await.unwrap();
        joined.await.unwrap().map(|joined| TestPeer {
            joined,
            answers,
            _kick: kick_rx,
        })
    }

    /// Pauses or resumes the job; returns once that is recorded.
    async fn pause(&self, paused: bool) {
        let (reply, done) = oneshot::channel();
        let pause = Command::Pause { paused, reply };
        self.commands.send(pause).await.unwrap();
        done.await.unwrap().unwrap();
    }

    async fn join(&self) -> TestPeer {
        self.try_join(None).await.unwrap()
    }

    async fn contribute(&self, peer: &TestPeer, counter: u64, base: u64, byte: u8) {
        let propose = Command::Propose {
            peer: peer.joined.peer,
            proposed: Proposed::Contribution(Serial::of(counter)),
            base: Serial::of(base),
            floor: Version(0),
            byte,
        };
        self.commands.send(propose).await.unwrap();
    }
}

impl Harness {
    /// Waits until the log holds `head` entries.
    async fn logged(&self, head: Version) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.log.head() < head {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log stayed at {} short of {head}",
                self.log.head()
            );
            tokio::time::sleep(StdDuration::from_millis(2)).await;
        }
    }
}

impl TestPeer {
    /// The next answer, decoded, with the version it waits for.
    async fn answer(&mut self) -> (Version, Message) {
        let outgoing = tokio::time::timeout(WAIT, self.answers.recv())
            .await
            .expect("an answer in time")
            .expect("the sequencer is running");
        assert_eq!(outgoing.frames.len(), 1, "{outgoing:?}");
        (
            outgoing.after,
            Message::decode(&outgoing.frames[0]).unwrap(),
        )
    }
}

#[tokio::test]
async fn admission_refuses_a_full_relay_a_wrong_secret_and_a_log_it_does_not_have() {
    let h = start(config()).await;
    let peers = [h.join().await, h.join().await, h.join().await];
    assert_eq!(h.standing.borrow().peers, 3);
    let full = h.try_join(None).await.err().unwrap();
    assert_eq!(full.code, close::FULL, "{}", full.reason);
    // A place frees when one leaves; its id resumes with its secret only.
    let leaving = peers[0].joined;
    let leave = Command::Leave {
        peer: leaving.peer,
        socket: leaving.socket,
    };
    h.commands.send(leave).await.unwrap();
    let wrong = Resume {
        peer: leaving.peer,
        secret: ResumeSecret([9; 16]),
    };
    let refused = h.try_join(Some(wrong)).await.err().unwrap();
    assert_eq!(refused.code, close::UNKNOWN_PEER, "{}", refused.reason);
    let right = Resume {
        peer: leaving.peer,
        secret: leaving.secret,
    };
    let resumed = h.try_join(Some(right)).await.unwrap();
    assert!(resumed.joined.resumed && resumed.joined.peer == leaving.peer);
    // Asking for the log from past its head.
    h.commands
        .send(Command::Leave {
            peer: leaving.peer,
            socket: resumed.joined.socket,
        })
        .await
        .unwrap();
    let (outbox, _answers) = mpsc::channel(1);
    let (kick, _kick) = oneshot::channel();
    let (reply, answer) = oneshot::channel();
    let join = Command::Join {
        resume: None,
        from: Version(5),
        outbox,
        kick,
        reply,
    };
    h.commands.send(join).await.unwrap();
    let ahead = answer.await.unwrap().err().unwrap();
    assert_eq!(ahead.code, close::AHEAD_OF_LOG, "{}", ahead.reason);
}

#[tokio::test]
async fn a_contribution_is_durable_before_it_is_accepted_and_stale_ones_are_rejected() {
    let h = start(config()).await;
    let mut peer = h.join().await;
    let mut subscription = h.log.subscribe(Version(0));
    for counter in 0..10 {
        h.contribute(&peer, counter, counter, 3).await;
        // Its acceptance is its entry in the log as peers are sent it, and that entry is on
        // disk by then.
        let chunk = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("the entry in time")
            .unwrap();
        assert_eq!(chunk.first, Version(counter));
        let entry = chunk.entries[0];
        assert_eq!(
            (entry.peer, entry.counter),
            (peer.joined.peer, Counter(counter))
        );
        let on_disk: i64 = rusqlite::Connection::open(&h.path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert!(on_disk as u64 > counter);
    }
    assert!(
        peer.answers.try_recv().is_err(),
        "an accepted contribution is not answered besides"
    );
    // Computed at version 1 with the log at 10: 9 behind, the bound is 8.
    h.contribute(&peer, 10, 1, 3).await;
    let (_, answer) = peer.answer().await;
    assert!(
        matches!(
            answer,
            Message::Rejected {
                reason: RejectReason::Stale,
                ..
            }
        ),
        "{answer:?}"
    );
    // A counter that does not increase.
    h.contribute(&peer, 9, 10, 3).await;
    let (_, answer) = peer.answer().await;
    assert!(
        matches!(
            answer,
            Message::Rejected {
                reason: RejectReason::CounterNotIncreasing,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(h.log.head(), Version(10));
}

#[tokio::test]
async fn a_subscriber_never_sees_an_entry_before_it_is_durable() {
    let mut config = config();
    // Everything sent at once: none of it stale.
    config.staleness_bound = 1 << 20;
    let h = start(config).await;
    let mut subscription = h.log.subscribe(Version(0));
    let peers = [h.join().await, h.join().await];
    let contributing = async {
        for counter in 0..200 {
            for peer in &peers {
                h.contribute(peer, counter, h.log.head().0, 1).await;
            }
        }
    };
    let watching = async {
        let file = rusqlite::Connection::open(&h.path).unwrap();
        let mut seen = 0u64;
        while seen < 400 {
            let chunk = subscription.next().await.unwrap();
            seen = chunk.first.0 + chunk.entries.len() as u64;
            let on_disk: i64 = file
                .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
                .unwrap();
            assert!(
                on_disk as u64 >= seen,
                "{seen} published, {on_disk} on disk"
            );
        }
    };
    tokio::join!(contributing, watching);
}

#[tokio::test]
async fn a_paused_job_rejects_contributions_and_says_so_to_the_sockets() {
    let h = start(config()).await;
    let mut peer = h.join().await;
    h.pause(true).await;
    assert!(h.standing.borrow().paused);
    h.contribute(&peer, 0, 0, 3).await;
    let (_, answer) = peer.answer().await;
    assert!(
        matches!(
            answer,
            Message::Rejected {
                reason: RejectReason::Paused,
                ..
            }
        ),
        "{answer:?}"
    );
    h.pause(false).await;
    assert!(!h.standing.borrow().paused);
    h.contribute(&peer, 0, 0, 3).await;
    h.logged(Version(1)).await;
}

#[tokio::test]
async fn an_outsized_contribution_is_logged_clipped() {
    let mut config = config();
    config.influence.clip_factor = 4.0;
    config.staleness_bound = 1 << 20;
    let h = start(config).await;
    let mut peers = [h.join().await, h.join().await, h.join().await];
    // Honest peers set the typical magnitude: level 10.
    for counter in 0..40 {
        for peer in &mut peers[..2] {
            h.contribute(peer, counter, 0, 10).await;
        }
    }
    h.logged(Version(80)).await;
    let outsized = 127u8;
    h.contribute(&peers[2], 0, 0, outsized).await;
    h.logged(Version(81)).await;
    let logged = h.log.read(Version(80), Version(81)).await.unwrap()[0];
    assert_eq!(logged.peer, peers[2].joined.peer);
    let q = Quantizer::default();
    assert!(
        q.magnitude(logged.byte) < q.magnitude(outsized),
        "logged {} for {outsized}",
        logged.byte
    );
    assert_eq!(h.stats.clipped.load(Relaxed), 1);
}

#[tokio::test]
async fn committee_votes_are_logged_once_decided_under_the_shared_id() {
    let mut config = config();
    config.committee_size = Some(3);
    let h = start(config).await;
    let mut peers = [h.join().await, h.join().await, h.join().await];
    // Each member is assigned rounds as it joins; all hold the first round once three joined.
    let mut rounds = Vec::new();
    for peer in &mut peers {
        let mut mine = Vec::new();
        while let Ok(Some(outgoing)) =
            tokio::time::timeout(StdDuration::from_millis(300), peer.answers.recv()).await
        {
            for frame in outgoing.frames {
                if let Message::Assign { round } = Message::decode(&frame).unwrap() {
                    mine.push(round);
                }
            }
        }
        rounds.push(mine);
    }
    let shared = rounds[0]
        .iter()
        .find(|r| rounds[1].contains(r) && rounds[2].contains(r))
        .copied()
        .expect("a round all three hold");
    for (peer, byte) in peers.iter().zip([5u8, 6, 7]) {
        let vote = Command::Propose {
            peer: peer.joined.peer,
            proposed: Proposed::Vote(shared),
            base: Serial::of(0),
            floor: Version(0),
            byte,
        };
        h.commands.send(vote).await.unwrap();
    }
    let mut accepted = 0;
    for peer in &mut peers {
        loop {
            let (_, answer) = peer.answer_any().await;
            if let Message::Accepted { counter, .. } = answer {
                assert_eq!(counter, shared);
                accepted += 1;
                break;
            }
        }
    }
    assert_eq!(accepted, 3);
    let logged = h.log.read(Version(0), Version(1)).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (logged[0].peer, logged[0].counter, logged[0].byte),
        (PeerId::COMMITTEE, shared, 6)
    );
}

impl TestPeer {
    /// The next message among its answers (a tick's answers may be several frames).
    async fn answer_any(&mut self) -> (Version, Message) {
        let outgoing = tokio::time::timeout(WAIT, self.answers.recv())
            .await
            .expect("an answer in time")
            .expect("the sequencer is running");
        let accepted = outgoing
            .frames
            .iter()
            .map(|f| Message::decode(f).unwrap())
            .find(|m| matches!(m, Message::Accepted { .. }));
        let message = accepted.unwrap_or_else(|| Message::decode(&outgoing.frames[0]).unwrap());
        (outgoing.after, message)
    }
}
