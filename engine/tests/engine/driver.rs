//! The peer driver (`engine::driver`) against a scripted relay and a clock that jumps: the turns
//! of a peer's life that a real network cannot make happen on cue. `client-wasm/tests/wasm.rs`
//! runs the first scenario inside WebAssembly too.

use engine::driver::scripted::{
    JumpingClock, SECRET, ScriptedHost, ScriptedRelay, frame, lost_connection_scenario,
};
use engine::driver::{Clock, Driver, DriverConfig, Incoming, Stop};
use engine::{Job, PeerState, Replica, block_on, cpu_device};
use protocol::{Counter, LogCursor, Message, PeerId, Resume, ResumeSecret, Version, close};
use std::sync::Arc;

#[test]
fn the_driver_resumes_its_peer_id_after_a_lost_connection() {
    let outcome = block_on(lost_connection_scenario("sesame"));
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(outcome.reconnects, 1);
    assert_eq!(outcome.sent.len(), 2, "two connections");
    // The first Hello asks for the log from 0 as nobody; the second resumes peer 5 from 300.
    assert!(matches!(
        &outcome.sent[0][0],
        Message::Hello { resume: None, from: Version(0), token, .. } if token == "sesame"
    ));
    assert!(matches!(
        &outcome.sent[1][0],
        Message::Hello {
            resume: Some(Resume {
                peer: PeerId(5),
                secret: SECRET
            }),
            from: Version(300),
            ..
        }
    ));
    // One backoff between the connections, 0.1 s plus jitter of up to as much again.
    let backoffs: Vec<f64> = outcome
        .slept
        .iter()
        .copied()
        .filter(|&ms| ms >= 100.0)
        .collect();
    assert!(
        backoffs.len() == 1 && backoffs[0] < 200.0,
        "{:?}",
        outcome.slept
    );
    // Hashes at both boundaries, reported to the relay on the connection that crossed them.
    let reported: Vec<u64> = outcome.host.hashes.iter().map(|(v, _)| v.0).collect();
    assert_eq!(reported, [256, 512]);
    let reports = |conn: &[Message]| -> Vec<u64> {
        conn.iter()
            .filter_map(|m| match m {
                Message::HashReport { version, .. } => Some(version.0),
                _ => None,
            })
            .collect()
    };
    assert_eq!(reports(&outcome.sent[0]), [256]);
    assert_eq!(reports(&outcome.sent[1]), [512]);
    assert_eq!(outcome.host.hashes[1].1, outcome.expected_hash);
    // Caught up, it contributed exactly its budget on the weights at 512, and nothing before:
    // two steps back to back, sent as one run (counters 0 and 1), and logged.
    let contributed: Vec<(u16, u16, usize)> = outcome
        .sent
        .iter()
        .flatten()
        .filter_map(|m| match m {
            Message::Contribute {
                counter,
                base_version,
                bytes,
            } => Some((counter.0, base_version.0, bytes.len())),
            _ => None,
        })
        .collect();
    assert_eq!(contributed, [(0, 512, 2)]);
    assert_eq!(outcome.peer.accepted, 2);
    assert_eq!(outcome.peer.replica.version(), Version(514));
}

fn peer_on(job: &Arc<Job>) -> (PeerState, Vec<u8>) {
    let snapshot = block_on(Replica::new(job.clone(), cpu_device()).snapshot()).unwrap();
    let replica = Replica::from_snapshot(job.clone(), cpu_device(), &snapshot).unwrap();
    (PeerState::new(replica), snapshot)
}

fn closed(code: u16, reason: &str) -> Vec<Incoming> {
    vec![Incoming::Closed {
        code,
        reason: reason.into(),
    }]
}

/// Runs `peer` against one script per connection with the default config: the driver's
/// result, what it sent on each connection, and how often it reconnected.
fn drive(
    job: Arc<Job>,
    peer: &mut PeerState,
    scripts: Vec<Vec<Incoming>>,
    snapshot: Vec<u8>,
) -> (Result<(), Stop>, Vec<Vec<Message>>, u64) {
    let relay = ScriptedRelay::new(scripts, snapshot);
    let sent = relay.sent.clone();
    let mut host = ScriptedHost::new(job, 1);
    let mut driver = Driver::new(
        &mut host,
        relay,
        JumpingClock::default(),
        DriverConfig::default(),
    );
    let result = block_on(driver.run(peer));
    let reconnects = driver.tally().reconnects;
    drop(driver);
    (result, sent.take(), reconnects)
}

#[test]
fn a_fatal_close_code_ends_the_driver_and_any_other_is_retried() {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    let scripts = vec![
        closed(close::GOING_AWAY, "the relay is shutting down"),
        closed(close::DROPPED, "dropped by the relay's host"),
        closed(close::GOING_AWAY, "never reached"),
    ];
    let (result, sent, reconnects) = drive(job, &mut peer, scripts, snapshot);
    assert_eq!(reconnects, 1);
    match result {
        Err(Stop::Refused(why)) => {
            assert!(why.contains("dropped by the relay's host"), "{why}");
            assert!(why.contains("4013"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(sent.len(), 2, "the third connection was never opened");
}

#[test]
fn an_unreachable_relay_is_given_up_on_after_the_limit() {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    // No scripted connection at all: every connect fails.
    let relay = ScriptedRelay::new(vec![], snapshot);
    let mut host = ScriptedHost::new(job, 1);
    let config = DriverConfig {
        give_up_after_ms: Some(30_000.0),
        ..DriverConfig::default()
    };
    let clock = JumpingClock::default();
    let slept = clock.slept.clone();
    let mut driver = Driver::new(&mut host, relay, clock, config);
    match block_on(driver.run(&mut peer)) {
        Err(Stop::Unreachable(why)) => assert!(why.contains("gave up after 30 s"), "{why}"),
        other => panic!("expected to give up, got {other:?}"),
    }
    // Backoff grows from 0.1 s and never exceeds 3 s plus as much again.
    let slept = slept.borrow();
    assert!(
        slept[0] < 200.0 && slept.iter().all(|&ms| ms < 6_000.0),
        "{slept:?}"
    );
    assert!(slept.iter().any(|&ms| ms >= 3_000.0), "{slept:?}");
}

#[test]
fn a_resync_reloads_the_snapshot_and_rejoins_from_its_version() {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    let welcome = Message::Welcome {
        peer: PeerId(2),
        job: job.id,
        version: Version(100),
        next_counter: Counter(0),
        secret: ResumeSecret([2; 16]),
        rate_limit: 0,
    };
    let mut cursor = LogCursor::new(Version(0), []);
    let log = engine::reference::synthetic_log(100, 3);
    let first = vec![
        frame(&welcome),
        frame(&cursor.table_message()),
        frame(&cursor.pack(&log[..50])),
        frame(&Message::Resync {
            version: Version(50),
            reason: "hash mismatch at 50".into(),
        }),
    ];
    let relay = ScriptedRelay::new(vec![first, vec![]], snapshot);
    let sent = relay.sent.clone();
    let mut host = ScriptedHost::new(job, 1);
    // The host leaves once the second connection has said Hello.
    let mut driver = Driver::new(
        &mut host,
        relay,
        JumpingClock::default(),
        DriverConfig::default(),
    );
    let result = block_on(async {
        // The second connection's script is empty: it waits for ever, so stop it by turns.
        driver.run(&mut peer).await
    });
    assert_eq!(result, Ok(()), "left after too many idle turns");
    assert_eq!(
        driver.tally().reconnects,
        0,
        "a resync is not a lost connection"
    );
    let sent = sent.borrow();
    assert_eq!(sent.len(), 2);
    // The snapshot (version 0) replaced the replica that had applied 50 entries.
    assert!(matches!(
        &sent[1][0],
        Message::Hello {
            resume: Some(Resume {
                peer: PeerId(2),
                secret
            }),
            from: Version(0),
            ..
        } if *secret == ResumeSecret([2; 16])
    ));
    assert_eq!(peer.replica.version(), Version(0));
}

#[test]
fn an_unknown_peer_id_is_dropped_and_the_peer_joins_afresh() {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    // An id from an earlier life that the relay has since given to someone else.
    peer.id = Some(PeerId(3));
    peer.secret = Some(SECRET);
    let scripts = vec![
        closed(close::UNKNOWN_PEER, "peer 3 is not known to this relay"),
        closed(close::DROPPED, "ends the test"),
    ];
    let (result, sent, _) = drive(job, &mut peer, scripts, snapshot);
    assert!(matches!(result, Err(Stop::Refused(_))), "{result:?}");
    assert!(matches!(
        &sent[0][0],
        Message::Hello {
            resume: Some(Resume {
                peer: PeerId(3),
                ..
            }),
            ..
        }
    ));
    assert!(
        matches!(&sent[1][0], Message::Hello { resume: None, .. }),
        "the second Hello asks for a new id: {:?}",
        sent[1][0]
    );
    assert_eq!(peer.id, None);
}

/// A relay's opening on an empty log: peer 4 welcomed with `rate_limit`, then the table.
fn welcome_to_an_empty_log(job: &Job, rate_limit: u32) -> Vec<Incoming> {
    let welcome = Message::Welcome {
        peer: PeerId(4),
        job: job.id,
        version: Version(0),
        next_counter: Counter(0),
        secret: ResumeSecret([4; 16]),
        rate_limit,
    };
    vec![
        frame(&welcome),
        frame(&LogCursor::new(Version(0), []).table_message()),
    ]
}

/// Time the driver spent waiting (ms) while `budget` contributions were accepted by a relay
/// whose `Welcome` gave `rate_limit`.
fn waited_for(rate_limit: u32, budget: u64) -> (f64, u64) {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    let script = welcome_to_an_empty_log(&job, rate_limit);
    let relay = ScriptedRelay::new(vec![script], snapshot);
    let clock = JumpingClock::default();
    let slept = clock.slept.clone();
    let mut host = ScriptedHost::new(job, budget);
    let mut driver = Driver::new(&mut host, relay, clock, DriverConfig::default());
    assert_eq!(block_on(driver.run(&mut peer)), Ok(()));
    let waited = slept.borrow().iter().sum();
    (waited, peer.accepted)
}

#[test]
fn a_peer_paces_itself_below_the_relay_rate_limit() {
    // Steps take no time on a jumping clock: only pacing makes the driver wait.
    let (waited, accepted) = waited_for(100, 60);
    assert_eq!(accepted, 60);
    // 60 at 95 % of 100 a second is 632 ms, less the 100 ms it may run ahead.
    assert!((500.0..700.0).contains(&waited), "waited {waited} ms");
    let (unlimited, accepted) = waited_for(0, 60);
    assert_eq!(accepted, 60);
    assert!(unlimited < 50.0, "waited {unlimited} ms without a limit");
}

#[test]
fn contributions_left_unanswered_for_long_start_the_connection_over() {
    let job = Arc::new(Job::demo());
    let (mut peer, snapshot) = peer_on(&job);
    let script = || welcome_to_an_empty_log(&job, 0);
    // The first connection swallows what it is sent and stays open.
    let relay = ScriptedRelay::new(vec![script(), script()], snapshot).losing_contributions(1);
    let sent = relay.sent.clone();
    let clock = JumpingClock::default();
    let now = clock.clone();
    let mut host = ScriptedHost::new(job, 3);
    let config = DriverConfig {
        window: 2,
        ..DriverConfig::default()
    };
    let mut driver = Driver::new(&mut host, relay, clock, config);
    assert_eq!(block_on(driver.run(&mut peer)), Ok(()));
    assert_eq!(driver.tally().reconnects, 1);
    drop(driver);
    let sent = sent.take();
    assert_eq!(sent.len(), 2, "a second connection");
    let contributions = |conn: &[Message]| {
        conn.iter()
            .filter_map(|m| match m {
                Message::Contribute { bytes, .. } => Some(bytes.len()),
                _ => None,
            })
            .sum::<usize>()
    };
    // A full window on the first, never answered; the budget on the second.
    assert_eq!(contributions(&sent[0]), 2);
    assert_eq!(contributions(&sent[1]), 3);
    assert_eq!(peer.accepted, 3);
    // It waited the half minute, not much longer.
    assert!(
        (30_000.0..40_000.0).contains(&now.now_ms()),
        "{}",
        now.now_ms()
    );
}
