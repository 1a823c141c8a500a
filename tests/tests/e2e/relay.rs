//! The relay and native workers end to end: real processes on 127.0.0.1, real websockets, a
//! real SQLite store file.

use e2e::raw::{self, RawPeer, Received};
use e2e::{Relay, WAIT, Worker};
use protocol::{Counter, Message, RejectReason, Resume, ResumeSecret, Version, close};
use std::collections::HashMap;
use std::time::Duration;

/// A fresh directory and the path of a relay store in it.
pub(crate) fn store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relay.db");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_train_spirals_with_equal_hashes() {
    let (_dir, store) = store();
    let relay = Relay::start(&store, &[]).unwrap();
    let workers: Vec<Worker> = (1..=4)
        .map(|seed| {
            let seed = seed.to_string();
            Worker::start(&relay.url(), &["--until-version", "16000", "--seed", &seed]).unwrap()
        })
        .collect();
    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    for r in &reports {
        assert_eq!(r["version"], 16000, "{r}");
        assert!(
            r["accepted"].as_u64().unwrap() > 1000,
            "every worker contributed: {r}"
        );
        let accuracy = r["accuracy"].as_f64().unwrap();
        assert!(accuracy >= 0.97, "test accuracy {accuracy} < 0.97: {r}");
    }
    let hashes: Vec<_> = reports.iter().map(|r| r["hash"].clone()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let status = relay.status().await.unwrap();
    assert!(
        status["consistency"]["hashes_checked"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert_eq!(status["consistency"]["hashes_diverged"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn late_joiner_catches_up_from_snapshot_and_tail() {
    let (_dir, store) = store();
    let relay = Relay::start(&store, &["--snapshot-every", "1000"]).unwrap();
    let early: Vec<Worker> = (1..=2)
        .map(|seed| {
            Worker::start(
                &relay.url(),
                &["--until-version", "6500", "--seed", &seed.to_string()],
            )
            .unwrap()
        })
        .collect();
    let early: Vec<_> = early.into_iter().map(|w| w.finish().unwrap()).collect();
    relay
        .wait_for_status(WAIT, "the follower's snapshot at 6000", |status| {
            status["consistency"]["snapshot_version"] == 6000
        })
        .await
        .unwrap();
    let late = Worker::start(
        &relay.url(),
        &["--until-version", "6500", "--contributions", "0"],
    )
    .unwrap()
    .finish()
    .unwrap();
    assert_eq!(
        late["started_from"], 6000,
        "joined from the snapshot: {late}"
    );
    assert_eq!(late["version"], 6500);
    assert_eq!(late["hash"], early[0]["hash"]);
    assert_eq!(early[0]["hash"], early[1]["hash"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_mid_training_loses_no_accepted_contribution() {
    let (_dir, store) = store();
    let mut relay = Relay::start(&store, &["--rate-limit", "100000"]).unwrap();
    let job = relay.job().await.unwrap();
    let workers: Vec<Worker> = (1..=2)
        .map(|seed| {
            Worker::start(
                &relay.url(),
                // A narrow window keeps the workers below full speed, so they are still
                // training when the relay is killed.
                &[
                    "--until-version",
                    "6000",
                    "--seed",
                    &seed.to_string(),
                    "--window",
                    "2",
                ],
            )
            .unwrap()
        })
        .collect();

    // A hand-driven peer records every acknowledgement it gets until the relay dies.
    let mut peer = RawPeer::join(&relay.ws_url(), job.id, "").await.unwrap();
    let id = peer.id;
    let first_counter = peer.next_counter.0;
    let mut sent = 0u32;
    while peer.accepted.len() < 300 {
        if sent < peer.accepted.len() as u32 + peer.rejected as u32 + 16 {
            peer.contribute((sent % 8) as u8).await.unwrap();
            sent += 1;
        } else {
            assert!(peer.pump().await.unwrap(), "relay closed early");
        }
    }
    // Keep contributions in flight while the relay is killed.
    for i in 0..16u8 {
        peer.contribute(i).await.unwrap();
    }
    relay.kill();
    while peer.pump().await.unwrap_or(false) {}
    let accepted = peer.accepted.clone();
    relay.restart().unwrap();

    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    assert!(
        reports
            .iter()
            .all(|r| r["reconnects"].as_u64().unwrap() >= 1),
        "{reports:?}"
    );
    assert_eq!(reports[0]["version"], 6000);
    assert_eq!(reports[0]["hash"], reports[1]["hash"]);

    let log = relay.log().await.unwrap();
    for (counter, version) in &accepted {
        let entry = log[version.0 as usize];
        // The peer sent byte `n % 8` as its n-th contribution, then `i` for the last 16.
        let n = (counter.0 - first_counter) as u32;
        let sent_byte = if n < sent {
            (n % 8) as u8
        } else {
            (n - sent) as u8
        };
        assert_eq!(
            (entry.peer, entry.counter, entry.byte),
            (id, *counter, sent_byte),
            "at version {version}"
        );
    }
    // Across the restart every peer's counters still increase along the log.
    let mut per_peer: HashMap<_, Vec<Counter>> = HashMap::new();
    for e in &log {
        per_peer.entry(e.peer).or_default().push(e.counter);
    }
    for counters in per_peer.values() {
        assert!(
            counters.windows(2).all(|w| w[0] < w[1]),
            "counters increase per peer"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_close_codes_and_the_relay_keeps_serving() {
    let (_dir, store) = store();
    let mut relay = Relay::start(
        &store,
        &[
            "--join-token",
            "sesame",
            "--max-frame",
            "1024",
            "--admin-token",
            "root",
        ],
    )
    .unwrap();
    let job = relay.job().await.unwrap();
    let ws = relay.ws_url();
    let mut good = RawPeer::join(&ws, job.id, "sesame").await.unwrap();

    let close_after = |frames: Vec<tokio_tungstenite::tungstenite::Message>, origin| {
        let ws = ws.clone();
        async move {
            let mut s = raw::connect(&ws, origin).await.unwrap();
            for f in frames {
                use futures_util::SinkExt;
                let _ = s.send(f).await;
            }
            raw::expect_close(&mut s).await.unwrap()
        }
    };
    use tokio_tungstenite::tungstenite::Message as Ws;
    let hello = |token: &str| Ws::Binary(raw::hello(job.id, Version(0), token).encode().into());
    let cases = [
        (
            "malformed",
            vec![Ws::Binary(vec![0x01, 0xff].into())],
            None,
            close::MALFORMED,
        ),
        (
            "unknown tag",
            vec![Ws::Binary(vec![0x7f].into())],
            None,
            close::MALFORMED,
        ),
        (
            "oversized",
            vec![Ws::Binary(vec![0; 4096].into())],
            None,
            close::TOO_BIG,
        ),
        (
            "text",
            vec![Ws::Text("hello".into())],
            None,
            close::NOT_BINARY,
        ),
        (
            "contribute before hello",
            vec![Ws::Binary(
                Message::Contribute {
                    counter: protocol::Serial(0),
                    base_version: protocol::Serial(0),
                    bytes: vec![1],
                }
                .encode()
                .into(),
            )],
            None,
            close::UNEXPECTED,
        ),
        (
            "second hello",
            vec![hello("sesame"), hello("sesame")],
            None,
            close::UNEXPECTED,
        ),
        (
            "wrong token",
            vec![hello("guess")],
            None,
            close::UNAUTHORIZED,
        ),
        ("no token", vec![hello("")], None, close::UNAUTHORIZED),
        (
            "wrong job",
            vec![Ws::Binary(
                raw::hello(protocol::JobId(job.id.0 ^ 1), Version(0), "sesame")
                    .encode()
                    .into(),
            )],
            None,
            close::WRONG_JOB,
        ),
        (
            "ahead of the log",
            vec![Ws::Binary(
                raw::hello(job.id, Version(1 << 40), "sesame")
                    .encode()
                    .into(),
            )],
            None,
            close::AHEAD_OF_LOG,
        ),
        (
            "foreign origin",
            vec![hello("sesame")],
            Some("http://evil.example"),
            close::FORBIDDEN_ORIGIN,
        ),
    ];
    for (what, frames, origin, code) in cases {
        let (got, reason) = close_after(frames, origin).await;
        assert_eq!(got, code, "{what}: closed with {got} ({reason})");
        assert!(!reason.is_empty(), "{what}: the close has a reason");
    }

    // The well-behaved peer was never disturbed.
    for byte in 0..20u8 {
        good.contribute(byte).await.unwrap();
    }
    while good.accepted.len() < 20 {
        assert!(good.pump().await.unwrap());
    }

    // Pausing needs the admin token; while paused, contributions are rejected as such.
    let http = reqwest::Client::new();
    let pause = format!("{}/api/admin/pause", relay.url());
    let denied = http.post(&pause).bearer_auth("guess").send().await.unwrap();
    assert_eq!(denied.status(), 401);
    // Every admin route is behind the same gate.
    for (method, path) in [
        (reqwest::Method::GET, "/api/admin/peers"),
        (reqwest::Method::POST, "/api/admin/resume"),
        (reqwest::Method::POST, "/api/admin/peers/1/drop"),
        (reqwest::Method::POST, "/api/admin/peers/1/release"),
    ] {
        let url = format!("{}{path}", relay.url());
        let denied = http.request(method, &url).send().await.unwrap();
        assert_eq!(denied.status(), 401, "{path} without a token");
    }
    let ok = http.post(&pause).bearer_auth("root").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    good.contribute(1).await.unwrap();
    let reason = loop {
        match raw::receive(&mut good.socket).await {
            Received::Message(Message::Rejected { reason, .. }) => break reason,
            Received::Message(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reason, RejectReason::Paused);
    let resume = format!("{}/api/admin/resume", relay.url());
    let admin = |url: &str| {
        let request = http.post(url).bearer_auth("root").send();
        async move { request.await.unwrap().error_for_status().unwrap() }
    };
    admin(&resume).await;
    good.contribute(2).await.unwrap();
    while good.accepted.len() < 21 {
        assert!(good.pump().await.unwrap());
    }
    let status = relay.status().await.unwrap();
    assert_eq!(status["peers"], 1, "{status}");

    // A pause survives a crash of the relay (SIGKILL, then a restart on the same store).
    admin(&pause).await;
    relay.restart().unwrap();
    let status = relay.status().await.unwrap();
    assert_eq!(status["paused"], true, "{status}");
    admin(&resume).await;
    assert_eq!(relay.status().await.unwrap()["paused"], false);
}

/// A relay that closes a socket still holding unread bytes from the peer must not reset the
/// connection: after a reset the peer cannot answer the pings it has not read yet, and its
/// websocket fails before it reaches the close frame behind them. The relay reads (and drops)
/// what is in flight until the peer answers its close.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_peer_reads_the_close_code_though_its_frames_were_still_arriving() {
    let (_dir, store) = store();
    let relay = Relay::start(&store, &["--idle-timeout", "2"]).unwrap();
    let job = relay.job().await.unwrap();
    let mut peer = RawPeer::join(&relay.ws_url(), job.id, "").await.unwrap();
    // Loss reports are not training: the relay closes this peer as idle after 2 s, while its
    // reports keep arriving and its pings wait unread.
    let report = Message::LossReport {
        version: Version(0),
        loss: 1.0,
    };
    let sending = std::time::Instant::now();
    while sending.elapsed() < Duration::from_secs(3) {
        if raw::send(&mut peer.socket, &report).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (code, reason) = raw::expect_close(&mut peer.socket).await.unwrap();
    assert_eq!(code, close::IDLE, "{reason}");
}

/// Resume secrets: a disconnected peer's id comes back only with the secret its `Welcome`
/// handed out; anyone else naming the id is refused, and learns nothing about whether it is
/// connected.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_id_resumes_only_with_its_secret() {
    let (_dir, store) = store();
    let relay = Relay::start(&store, &[]).unwrap();
    let job = relay.job().await.unwrap();
    let ws = relay.ws_url();
    let owner = RawPeer::join(&ws, job.id, "").await.unwrap();
    let (id, secret) = (owner.id, owner.secret);
    let resume = |secret: ResumeSecret| Message::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        job: job.id,
        resume: Some(Resume { peer: id, secret }),
        from: Version(0),
        token: String::new(),
    };
    let refused = |hello: Message| {
        let ws = ws.clone();
        async move {
            let mut socket = raw::connect(&ws, None).await.unwrap();
            raw::send(&mut socket, &hello).await.unwrap();
            raw::expect_close(&mut socket).await.unwrap()
        }
    };
    // While the owner is connected, a guess is refused for the secret, not for the connection.
    let mut guess = secret;
    guess.0[0] ^= 1;
    let (code, reason) = refused(resume(guess)).await;
    assert_eq!(code, close::UNKNOWN_PEER);
    assert!(reason.contains("resume secret"), "{reason}");
    let (code, reason) = refused(resume(secret)).await;
    assert_eq!(code, close::PEER_UNAVAILABLE);
    assert!(reason.contains("connected on another socket"), "{reason}");
    // Once it has left, the guess is still refused and the owner's secret resumes its id.
    drop(owner);
    let deadline = std::time::Instant::now() + WAIT;
    let resumed = loop {
        let mut socket = raw::connect(&ws, None).await.unwrap();
        raw::send(&mut socket, &resume(secret)).await.unwrap();
        match raw::receive(&mut socket).await {
            Received::Message(Message::Welcome {
                peer,
                secret: again,
                ..
            }) => break (peer, again),
            // The relay may not have seen the old socket close yet.
            other => assert!(
                std::time::Instant::now() < deadline,
                "the owner could not resume: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed, (id, secret));
    let (code, _) = refused(resume(guess)).await;
    assert_eq!(code, close::UNKNOWN_PEER);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_peer_stays_gone_though_it_missed_its_close() {
    // A peer the host drops reads `DROPPED` and stops; one that missed the close frame (a
    // busy machine, a send that failed first) comes back with its id and secret: refused too.
    let (_dir, store) = store();
    let relay = Relay::start(&store, &["--admin-token", "root"]).unwrap();
    let job = relay.job().await.unwrap();
    let ws = relay.ws_url();
    let mut peer = RawPeer::join(&ws, job.id, "").await.unwrap();
    let (id, secret) = (peer.id, peer.secret);
    let path = format!("/api/admin/peers/{}/drop", id.0);
    assert_eq!(relay.admin_post(&path, "root").await.unwrap(), 200);
    let (code, _) = raw::expect_close(&mut peer.socket).await.unwrap();
    assert_eq!(code, close::DROPPED);
    let mut socket = raw::connect(&ws, None).await.unwrap();
    let hello = Message::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        job: job.id,
        resume: Some(Resume { peer: id, secret }),
        from: Version(0),
        token: String::new(),
    };
    raw::send(&mut socket, &hello).await.unwrap();
    let (code, reason) = raw::expect_close(&mut socket).await.unwrap();
    assert_eq!(code, close::DROPPED, "{reason}");
    // Anyone may still join afresh (the id may be handed out again, with a secret of its
    // own); the dropped secret stays refused.
    let fresh = RawPeer::join(&ws, job.id, "").await.unwrap();
    assert_ne!(fresh.secret, secret);
    drop(fresh);
    let mut socket = raw::connect(&ws, None).await.unwrap();
    raw::send(&mut socket, &hello).await.unwrap();
    let (code, reason) = raw::expect_close(&mut socket).await.unwrap();
    assert_eq!(code, close::DROPPED, "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_stops_reading_is_dropped_and_others_continue() {
    let (_dir, store) = store();
    let relay = Relay::start(
        &store,
        &[
            "--peer-queue",
            "8",
            "--send-buffer",
            "4096",
            "--rate-limit",
            "100000",
            "--tick-ms",
            "1",
        ],
    )
    .unwrap();
    let job = relay.job().await.unwrap();

    let mut stalled = raw::connect_with_small_buffer(relay.addr).await.unwrap();
    raw::send(&mut stalled, &raw::hello(job.id, Version(0), ""))
        .await
        .unwrap();
    // Joined before anything else happens: otherwise "one peer left" could be seen before the
    // stalled peer ever counted.
    match raw::receive(&mut stalled).await {
        Received::Message(Message::Welcome { .. }) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    let mut fast = RawPeer::join(&relay.ws_url(), job.id, "").await.unwrap();
    assert_eq!(relay.status().await.unwrap()["peers"], 2);

    // Contribute until the relay has dropped the peer that does not read.
    let mut sent = 0u64;
    let dropped = async {
        loop {
            let status = relay.status().await.unwrap();
            if status["peers"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let drive = async {
        loop {
            let in_flight = sent - fast.accepted.len() as u64 - fast.rejected;
            if in_flight < 64 {
                fast.contribute((sent % 8) as u8).await.unwrap();
                sent += 1;
            } else {
                assert!(fast.pump().await.unwrap());
            }
        }
    };
    tokio::select! {
        _ = dropped => {},
        _ = drive => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(120)) => panic!("the stalled peer was never dropped"),
    }
    let before = fast.accepted.len();
    for byte in 0..50u8 {
        fast.contribute(byte).await.unwrap();
        sent += 1;
    }
    while fast.accepted.len() + (fast.rejected as usize) < sent as usize {
        assert!(fast.pump().await.unwrap());
    }
    assert!(
        fast.accepted.len() >= before + 50,
        "the reading peer kept going"
    );
    let (code, reason) = raw::expect_close(&mut stalled).await.unwrap();
    assert_eq!(code, close::SLOW_CONSUMER, "{reason}");
    let metrics = reqwest::get(format!("{}/metrics", relay.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("onebyte_slow_consumers_dropped_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_trains_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = e2e::tls::self_signed_chain(dir.path()).unwrap();
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(relay.scheme, "https");
    let report = Worker::start(
        &relay.url(),
        &["--contributions", "50", "--ca-cert", ca.to_str().unwrap()],
    )
    .unwrap()
    .finish()
    .unwrap();
    assert_eq!(report["accepted"], 50, "{report}");
    // Without the CA the worker refuses the relay's certificate rather than training.
    let refused = std::process::Command::new(e2e::binary("onebyte"))
        .args([
            "join",
            "--relay",
            &relay.url(),
            "--contributions",
            "1",
            "--retry-for",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(!refused.status.success(), "{stderr}");
    // It failed for the certificate, not for anything else (a wrong URL fails too).
    assert!(stderr.contains("certificate"), "{stderr}");
    // Nothing more was logged: the relay's status, read over TLS trusting the test's CA.
    let pem = std::fs::read(&ca).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let status = trusting
        .get(format!("{}/api/status", relay.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["version"], 50, "{status}");
}
