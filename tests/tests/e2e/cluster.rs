//! A relay spread over processes: a NATS JetStream cluster of three, one sequencer, two edges,
//! workers split across the edges.

use e2e::nats::Nats;
use e2e::raw::RawPeer;
use e2e::{Relay, SequencerProcess, Worker};
use protocol::Counter;
use relay::log::StreamPlace;
use std::collections::HashMap;
use std::path::Path;

const ADMIN: &str = "host-secret";

fn edge(dir: &Path, name: &str, nats: &Nats) -> Relay {
    Relay::start(
        &dir.join(format!("{name}.db")),
        &[
            "--nats",
            &nats.urls(),
            "--role",
            "edge",
            "--admin-token",
            ADMIN,
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_on_two_edges_train_spirals_with_equal_hashes() {
    let nats = Nats::cluster(3).expect("a three-server NATS cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let _sequencer =
        SequencerProcess::start(&dir.path().join("sequencer.db"), &["--nats", &nats.urls()])
            .unwrap();
    let edges = [edge(dir.path(), "a", &nats), edge(dir.path(), "b", &nats)];
    let workers: Vec<Worker> = (1..=4)
        .map(|seed| {
            let relay = &edges[seed % 2];
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
    // Both edges serve the one log.
    assert_eq!(edges[0].log().await.unwrap(), edges[1].log().await.unwrap());
    // The host pauses through one edge; the sequencer decides it, and every edge hears it.
    set_paused(&edges[1], &edges[0], true).await;
    set_paused(&edges[0], &edges[1], false).await;
}

/// The host pauses (or resumes) the job through the admin API of `through`; waits until
/// `heard_by` reports it.
async fn set_paused(through: &Relay, heard_by: &Relay, paused: bool) {
    let path = if paused {
        "/api/admin/pause"
    } else {
        "/api/admin/resume"
    };
    assert_eq!(through.admin_post(path, ADMIN).await.unwrap(), 200);
    heard_by
        .wait_for_status(e2e::WAIT, &format!("paused = {paused}"), |s| {
            s["paused"] == paused
        })
        .await
        .unwrap();
}

/// A hand-driven peer on `relay` sends contributions (byte = its n-th contribution mod 8) and
/// records each acknowledgement, until `enough` are acknowledged or the relay closes it.
async fn contribute_until(peer: &mut RawPeer, sent: &mut u32, enough: usize) -> bool {
    while peer.accepted.len() < enough {
        if *sent < peer.accepted.len() as u32 + peer.rejected as u32 + 16 {
            if peer.contribute((*sent % 8) as u8).await.is_err() {
                return false;
            }
            *sent += 1;
        } else if !peer.pump().await.unwrap_or(false) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn write_ahead_across_the_cluster_every_accepted_contribution_survives_kills() {
    let mut nats = Nats::cluster(3).expect("a three-server NATS cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let cluster = ["--nats", &nats.urls(), "--rate-limit", "100000"];
    let mut sequencer =
        SequencerProcess::start(&dir.path().join("sequencer.db"), &cluster).unwrap();
    let edge_args = [&cluster[..], &["--role", "edge"]].concat();
    let mut edges = [
        Relay::start(&dir.path().join("a.db"), &edge_args).unwrap(),
        Relay::start(&dir.path().join("b.db"), &edge_args).unwrap(),
    ];
    let job = edges[0].job().await.unwrap();
    let workers: Vec<Worker> = (1..=4)
        .map(|seed| {
            Worker::start(
                &edges[seed % 2].url(),
                // A narrow window keeps them training through all three kills.
                &[
                    "--until-version",
                    "12000",
                    "--seed",
                    &seed.to_string(),
                    "--window",
                    "2",
                ],
            )
            .unwrap()
        })
        .collect();

    // A hand-driven peer on edge b records every acknowledgement it gets.
    let mut peer = RawPeer::join(&edges[1].ws_url(), job.id, "").await.unwrap();
    let id = peer.id;
    let first_counter = peer.next_counter.0;
    let mut sent = 0u32;
    assert!(contribute_until(&mut peer, &mut sent, 200).await);

    // 1. The LOG stream's leader: its nats-server is SIGKILLed.
    let place = StreamPlace {
        jetstream: relay::cluster::connect(&nats.urls())
            .await
            .unwrap()
            .jetstream,
        job: job.id,
        replicas: 3,
    };
    let leader = e2e::nats::stream_leader(&place.jetstream, &place.stream_name()).await;
    nats.server(&leader).unwrap().kill();
    // The peer may be closed when its edge moves to another server; what it saw counts.
    contribute_until(&mut peer, &mut sent, 400).await;

    // 2. An edge, SIGKILLed and started again on its port (its workers reconnect to it).
    edges[0].restart().unwrap();

    // 3. The sequencer, SIGKILLed and started again: a new epoch, every socket resumes.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    sequencer.restart().unwrap();
    while peer.pump().await.unwrap_or(false) {}
    let accepted = peer.accepted.clone();
    assert!(accepted.len() >= 200, "{} accepted", accepted.len());

    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    for r in &reports {
        assert_eq!(r["version"], 12000, "{r}");
        assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
    }
    let hashes: Vec<_> = reports.iter().map(|r| r["hash"].clone()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    let log = edges[1].log().await.unwrap();
    assert_eq!(log, edges[0].log().await.unwrap(), "one log on every edge");
    for (counter, version) in &accepted {
        let entry = log[version.0 as usize];
        let n = (counter.0 - first_counter) as u32;
        assert_eq!(
            (entry.peer, entry.counter, entry.byte),
            (id, *counter, (n % 8) as u8),
            "at version {version}"
        );
    }
    // No contribution is in the log twice: every peer's counters increase along it.
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
async fn a_standby_sequencer_takes_over_when_the_active_one_is_killed() {
    let nats = Nats::cluster(3).expect("a three-server NATS cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let cluster = ["--nats", &nats.urls()];
    let mut candidates = [
        SequencerProcess::start(&dir.path().join("s1.db"), &cluster).unwrap(),
        SequencerProcess::start(&dir.path().join("s2.db"), &cluster).unwrap(),
    ];
    let edges = [edge(dir.path(), "a", &nats), edge(dir.path(), "b", &nats)];
    let job = edges[0].job().await.unwrap();
    let workers: Vec<Worker> = (1..=4)
        .map(|seed| {
            Worker::start(
                &edges[seed % 2].url(),
                &[
                    "--until-version",
                    "16000",
                    "--seed",
                    &seed.to_string(),
                    "--window",
                    "2",
                ],
            )
            .unwrap()
        })
        .collect();
    edges[0]
        .wait_for_status(e2e::WAIT, "training under way", |s| {
            s["version"].as_u64().unwrap_or(0) >= 2000
        })
        .await
        .unwrap();
    // A peer that contributed and left: its id is reserved for it (its resume secret).
    let mut early = RawPeer::join(&edges[1].ws_url(), job.id, "").await.unwrap();
    let mut sent = 0;
    assert!(contribute_until(&mut early, &mut sent, 1).await);
    let (early_id, early_secret) = (early.id, early.secret);
    drop(early);
    let connection = relay::cluster::connect(&nats.urls()).await.unwrap();
    let names = relay::cluster::Names::new(job.id);
    let holder = relay::cluster::lease::holder(&connection, &names, 3)
        .await
        .unwrap()
        .expect("a candidate holds the lease");
    let active = candidates
        .iter()
        .position(|c| holder.starts_with(&format!("pid {} ", c.pid())))
        .expect("the holder is one of ours");
    candidates[active].kill();

    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    for r in &reports {
        assert_eq!(r["version"], 16000, "{r}");
        assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
    }
    let hashes: Vec<_> = reports.iter().map(|r| r["hash"].clone()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let now = relay::cluster::lease::holder(&connection, &names, 3)
        .await
        .unwrap()
        .expect("the standby holds the lease");
    let standby = candidates[1 - active].pid();
    assert!(now.starts_with(&format!("pid {standby} ")), "{now}");
    // The standby reads the registry its predecessor kept in JetStream: the peer that left
    // before the takeover resumes its id with its secret.
    let mut socket = e2e::raw::connect(&edges[0].ws_url(), None).await.unwrap();
    let hello = protocol::Message::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        job: job.id,
        resume: Some(protocol::Resume {
            peer: early_id,
            secret: early_secret,
        }),
        from: protocol::Version(0),
        token: String::new(),
    };
    e2e::raw::send(&mut socket, &hello).await.unwrap();
    match e2e::raw::receive(&mut socket).await {
        e2e::raw::Received::Message(protocol::Message::Welcome { peer, .. }) => {
            assert_eq!(peer, early_id)
        }
        other => panic!("the peer could not resume its id after the takeover: {other:?}"),
    }
    drop(socket);

    // The host's pause outlives a takeover: the next sequencer reads it from JetStream.
    set_paused(&edges[0], &edges[1], true).await;
    let third = SequencerProcess::start(&dir.path().join("s3.db"), &cluster).unwrap();
    candidates[1 - active].kill();
    let deadline = tokio::time::Instant::now() + e2e::WAIT;
    loop {
        let now = relay::cluster::lease::holder(&connection, &names, 3)
            .await
            .unwrap();
        if now.is_some_and(|h| h.starts_with(&format!("pid {} ", third.pid()))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no third sequencer");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A contribution now, at the head, is refused as paused. Until the edges hear the new
    // sequencer, a join may be closed (1001) or go unanswered: try again.
    let head = edges[1].status().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    let verdict = async {
        loop {
            let attempt = async {
                let mut peer = RawPeer::join(&edges[1].ws_url(), job.id, "").await.ok()?;
                while peer.cursor.version().0 < head {
                    if !peer.pump().await.ok()? {
                        return None;
                    }
                }
                peer.contribute(0).await.ok()?;
                loop {
                    if !peer.pump().await.ok()? {
                        return None;
                    }
                    if let Some(reason) = peer.last_rejection {
                        return Some(Some(reason));
                    }
                    if !peer.accepted.is_empty() {
                        return Some(None);
                    }
                }
            };
            let timeout = std::time::Duration::from_secs(10);
            if let Ok(Some(verdict)) = tokio::time::timeout(timeout, attempt).await {
                return verdict;
            }
        }
    };
    let verdict = tokio::time::timeout(e2e::WAIT, verdict)
        .await
        .expect("a peer joins the third sequencer's job");
    assert_eq!(
        verdict,
        Some(protocol::RejectReason::Paused),
        "the job stays paused after the takeover"
    );
}
