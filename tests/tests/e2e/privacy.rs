//! A private job end to end: workers clip and noise their estimates, account for what they
//! spent, and the swarm still learns.

use crate::relay::store;
use e2e::{Relay, Worker};

/// The shipped private job file.
const PRIVATE_JOB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/jobs/private-spirals.toml"
);

#[tokio::test(flavor = "multi_thread")]
async fn private_workers_learn_spirals_and_report_the_privacy_they_spent() {
    let (_dir, store) = store();
    let relay = Relay::start(&store, &["--job", PRIVATE_JOB]).unwrap();
    let workers: Vec<Worker> = (1..=4)
        .map(|seed| {
            let seed = seed.to_string();
            Worker::start(&relay.url(), &["--until-version", "16000", "--seed", &seed]).unwrap()
        })
        .collect();
    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    let hashes: Vec<_> = reports.iter().map(|r| r["hash"].clone()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    for r in &reports {
        let accuracy = r["accuracy"].as_f64().unwrap();
        let privacy = &r["privacy"];
        let (epsilon, released) = (
            privacy["epsilon"].as_f64().unwrap(),
            privacy["released"].as_u64().unwrap(),
        );
        eprintln!("private worker: test accuracy {accuracy}, ε {epsilon:.2} over {released}");
        assert!(accuracy >= 0.90, "test accuracy {accuracy} < 0.90: {r}");
        // Every contribution sent counts, accepted or not; with 4 000 examples, batches of 32
        // and σ = 1, a few thousand cost a single-digit ε at δ = 1e-5.
        assert!(released >= r["accepted"].as_u64().unwrap(), "{r}");
        assert!(epsilon > 0.5 && epsilon < 8.0, "ε = {epsilon}: {r}");
        assert_eq!(privacy["delta"], 1e-5, "{r}");
    }
}
