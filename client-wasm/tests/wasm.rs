//! The client inside WebAssembly (run by `wasm-bindgen-test-runner` under Node.js).
#![cfg(target_family = "wasm")]

use client_wasm::{load_dataset, webgpu_available};
use engine::reference::{REFERENCE_HASH, REFERENCE_LEN, REFERENCE_SEED, synthetic_log};
use engine::{Job, PeerState, Received, Replica, Session, cpu_device};
use protocol::{Counter, LogCursor, Message, PeerId, Version};
use std::sync::Arc;
use wasm_bindgen_test::wasm_bindgen_test;

/// Bit-identical replicas: the CPU backend inside wasm reaches the hash the native CPU replica
/// reaches (`engine/tests/engine/invariants.rs` asserts the same constant natively).
#[wasm_bindgen_test]
async fn replicas_are_bit_identical_between_wasm_and_native_cpu() {
    let mut replica = Replica::new(Arc::new(Job::demo()), cpu_device());
    replica.apply(&synthetic_log(REFERENCE_LEN, REFERENCE_SEED));
    assert_eq!(
        replica.weight_hash().await.unwrap().to_hex(),
        REFERENCE_HASH
    );
}

/// The protocol state machine the page runs: a snapshot round trip, then the log through
/// `Session`, reporting the reference hash's prefix at 256 and 512.
#[wasm_bindgen_test]
async fn the_session_in_wasm_follows_the_log_and_reports_hashes() {
    let job = Arc::new(Job::demo());
    let fresh = Replica::new(job.clone(), cpu_device());
    let snapshot = fresh.snapshot().await.unwrap();
    let replica = Replica::from_snapshot(job.clone(), cpu_device(), &snapshot).unwrap();
    let mut peer = PeerState::new(replica);
    let mut session = Session::new(&peer, "", 1);
    let welcome = Message::Welcome {
        peer: PeerId(1),
        job: job.id,
        version: Version(REFERENCE_LEN as u64),
        next_counter: Counter(0),
        secret: protocol::ResumeSecret([1; 16]),
        rate_limit: 0,
    };
    session.receive(&mut peer, welcome).await.unwrap();
    let mut cursor = LogCursor::new(Version(0), []);
    session
        .receive(&mut peer, cursor.table_message())
        .await
        .unwrap();
    let log = synthetic_log(REFERENCE_LEN, REFERENCE_SEED);
    let mut reported = Vec::new();
    for chunk in log.chunks(100) {
        // Through the wire format, as the relay would send it.
        let bytes = cursor.pack(chunk).encode();
        let msg = Message::decode(&bytes).unwrap();
        if let Received::Applied { hashes, .. } = session.receive(&mut peer, msg).await.unwrap() {
            reported.extend(hashes);
        }
    }
    assert_eq!(
        reported.iter().map(|(v, _)| v.0).collect::<Vec<_>>(),
        [256, 512]
    );
    let mut check = Replica::new(job, cpu_device());
    check.apply(&log[..512]);
    assert_eq!(reported[1].1, check.weight_hash().await.unwrap());
    assert_eq!(
        peer.replica.weight_hash().await.unwrap().to_hex(),
        REFERENCE_HASH
    );
    assert!(!session.catching_up(&peer));
}

/// Without `navigator.gpu` (Node has none) the client says why it falls back to the CPU.
#[wasm_bindgen_test]
async fn without_webgpu_the_reason_is_given() {
    let why = webgpu_available().await.unwrap_err();
    assert!(why.contains("navigator.gpu"), "{why}");
}

#[wasm_bindgen_test]
fn a_bad_csv_gets_a_clear_error_and_a_good_one_loads() {
    let job = Job::demo();
    let err = load_dataset(&job, "spirals", Some("a,b\n1,x\n"), Some("mine.csv"), 1).unwrap_err();
    assert!(err.starts_with("mine.csv: "), "{err}");
    let rows: String = (0..40)
        .map(|i| format!("{},{},{}\n", i, i * 2, i % 2))
        .collect();
    let data = load_dataset(&job, "spirals", Some(&rows), Some("mine.csv"), 1).unwrap();
    assert_eq!(data.features(), 2);
    assert_eq!(data.train.len() + data.test.len(), 40);
    let spirals = load_dataset(&job, "spirals", None, None, 3).unwrap();
    assert_eq!(spirals.train.len(), 4_000);
    assert!(load_dataset(&job, "nope", None, None, 1).is_err());
    let text = load_dataset(&job, "tales", None, None, 1).unwrap_err();
    assert!(text.contains("classifies points"), "{text}");
}

/// The peer driver the page runs, inside WebAssembly: the scenario
/// `engine/tests/engine/driver.rs` runs natively (a lost connection, a resumed id, hashes at
/// both boundaries, two contributions accepted) ends the same way here.
#[wasm_bindgen_test]
async fn the_peer_driver_in_wasm_resumes_after_a_lost_connection() {
    let outcome = engine::driver::scripted::lost_connection_scenario("").await;
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(outcome.reconnects, 1);
    assert!(matches!(
        &outcome.sent[1][0],
        Message::Hello {
            resume: Some(protocol::Resume {
                peer: PeerId(5),
                secret: engine::driver::scripted::SECRET
            }),
            from: Version(300),
            ..
        }
    ));
    let reported: Vec<u64> = outcome.host.hashes.iter().map(|(v, _)| v.0).collect();
    assert_eq!(reported, [256, 512]);
    assert_eq!(outcome.host.hashes[1].1, outcome.expected_hash);
    assert_eq!(outcome.peer.accepted, 2);
}

/// Determinism pinned: `D` for the default quantizer inside wasm is, bit for bit, the table the
/// native suite pins (`protocol/src/quant.rs`: `d_of_the_default_quantizer_is_pinned_bit_for_bit`).
#[wasm_bindgen_test]
fn d_of_the_default_quantizer_is_the_same_bits_in_wasm() {
    let hex: String = protocol::Quantizer::default()
        .decode_table_digest()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, protocol::quant::DEFAULT_DECODE_DIGEST);
}
