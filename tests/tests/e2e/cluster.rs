//! A relay spread over processes: a NATS JetStream cluster of three, one sequencer, two edges,
//! workers split across the edges.

use e2e::nats::Nats;
use e2e::{Relay, SequencerProcess, Worker};
use std::path::Path;

fn edge(dir: &Path, name: &str, nats: &Nats) -> Relay {
    Relay::start(
        &dir.join(format!("{name}.db")),
        &["--nats", &nats.urls(), "--role", "edge"],
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
}
