//! What the fuzz targets check, as plain functions (each target's `fuzz_target!` calls one).

use engine::{Builtin, CommitteeSpec, Job, PeerState, Replica, Session, Split};
use protocol::{LogCursor, Message};
use std::sync::{Arc, OnceLock};

/// Any bytes: decoding never panics, and whatever decodes re-encodes to bytes that decode to
/// the same message (compared by encoding, so a NaN loss compares equal to itself).
pub fn message_round_trips(bytes: &[u8]) {
    let Ok(msg) = Message::decode(bytes) else {
        return;
    };
    let encoded = msg.encode();
    let again = Message::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(again.encode(), encoded, "{msg:?}");
}

/// Any bytes as a stream of messages (each prefixed by a one-byte length): counter tables and
/// log batches drive a cursor as a peer's session does. Nothing panics, and every batch the
/// cursor accepts packs back, from the cursor it started at, into the same entries.
pub fn log_stream_is_consistent(mut bytes: &[u8]) {
    let mut cursor: Option<LogCursor> = None;
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len).min(rest.len());
        let (frame, rest) = rest.split_at(len);
        bytes = rest;
        match Message::decode(frame) {
            Ok(Message::CounterTable { version, entries }) => {
                cursor = Some(LogCursor::from_table(version, &entries));
            }
            Ok(Message::LogBatch {
                first_version,
                entries,
            }) => {
                let Some(c) = cursor.as_mut() else { continue };
                let before = c.clone();
                let Ok(unpacked) = c.unpack(first_version, &entries) else {
                    continue;
                };
                assert_eq!(unpacked.len(), entries.len());
                // Packed again from the same start, the entries unpack to themselves, and both
                // cursors end in the same place.
                let mut packer = before.clone();
                let Message::LogBatch {
                    entries: repacked, ..
                } = packer.pack(&unpacked)
                else {
                    unreachable!("pack makes a LogBatch")
                };
                let mut reader = before;
                let again = reader
                    .unpack(first_version, &repacked)
                    .expect("a packed batch unpacks");
                assert_eq!(again, unpacked);
                assert_eq!(reader, *c);
                assert_eq!(packer, *c);
            }
            _ => {}
        }
    }
}

/// The jobs a fuzzed session runs: the demo, and the demo decided by committees of three.
fn jobs() -> &'static [Arc<Job>; 2] {
    static JOBS: OnceLock<[Arc<Job>; 2]> = OnceLock::new();
    JOBS.get_or_init(|| {
        let mut committee = Job::demo().config;
        committee.committee = Some(CommitteeSpec { size: 3 });
        [
            Arc::new(Job::demo()),
            Arc::new(Job::new(committee).expect("a valid job")),
        ]
    })
}

/// The batch a fuzzed peer proposes on.
fn batch() -> &'static Split {
    static BATCH: OnceLock<Split> = OnceLock::new();
    BATCH.get_or_init(|| Builtin::Spirals.generate(16, 1, 1).train)
}

/// Proposal steps a session takes at most per input, so that no input runs for long.
const MAX_STEPS: usize = 16;

/// Any bytes as what a relay sends one peer: the first byte picks the job (plain or committee),
/// the window and the lanes; the rest is a stream of messages (each prefixed by a one-byte
/// length), and after each one the peer proposes whenever its session says it may, as a
/// worker does. Nothing panics; the session ends with an error or goes on; its window is never
/// overfilled; the replica never moves backwards; and everything it sends encodes to bytes
/// that decode to the same message.
pub fn session_survives_any_relay(bytes: &[u8]) {
    let Some((&setup, mut bytes)) = bytes.split_first() else {
        return;
    };
    let job = jobs()[usize::from(setup & 1)].clone();
    let window = usize::from((setup >> 1) & 7);
    let mut peer = PeerState::new(Replica::new(job, engine::cpu_device()));
    peer.lanes = usize::from(setup >> 4) % 4 + 1;
    let mut session = Session::new(&peer, "fuzz", window);
    let mut steps = 0;
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len).min(rest.len());
        let (frame, rest) = rest.split_at(len);
        bytes = rest;
        let Ok(msg) = Message::decode(frame) else {
            continue;
        };
        let before = peer.replica.version();
        if engine::block_on(session.receive(&mut peer, msg)).is_err() {
            return;
        }
        assert!(peer.replica.version() >= before, "the replica went back");
        while steps < MAX_STEPS && session.ready_to_contribute(&peer) {
            steps += 1;
            if engine::block_on(session.contribute(&mut peer, batch())).is_err() {
                return;
            }
        }
        assert!(
            session.in_flight() <= session.window(),
            "{} in flight, window {}",
            session.in_flight(),
            session.window()
        );
        for sent in session.take_outbox() {
            let encoded = sent.encode();
            let again = Message::decode(&encoded).expect("what a session sends decodes");
            assert_eq!(again.encode(), encoded, "{sent:?}");
        }
    }
}
