//! The character language model end to end: through a real relay with two workers, and
//! fine-tuning a checkpoint (pre-trained on one text) on another.

use e2e::{Relay, Worker, onebyte};
use std::path::Path;

/// A small char LM: 8 bytes of context, 8-wide embeddings, one hidden layer of 64.
fn lm_job(name: &str, dataset: &str, init: Option<&str>) -> String {
    let init = init.map_or(String::new(), |i| format!("init = \"{i}\"\n"));
    format!(
        "[job]\nname = \"{name}\"\n{init}\n[model]\nkind = \"char_lm\"\nembedding = 8\n\
         hidden = [64]\n\n[task]\nfeatures = 8\nclasses = 256\ndataset = \"{dataset}\"\n\n\
         [hyper]\nlearning_rate = 0.002\nepsilon = 0.001\nbatch_size = 64\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The held-out figures of a replica at exactly `version` (a follower that contributes nothing).
fn at_version(relay: &Relay, data: &str, version: u64) -> serde_json::Value {
    let v = version.to_string();
    Worker::start(
        &relay.url(),
        &[
            "--data",
            data,
            "--contributions",
            "0",
            "--until-version",
            &v,
            "--seed",
            "1",
        ],
    )
    .unwrap()
    .finish()
    .unwrap()
}

/// Two workers (seeds 1 and 2) train on `data` up to exactly `version`; their reports, after
/// checking that they hold the same weights.
fn two_workers_until(relay: &Relay, data: &str, version: u64) -> Vec<serde_json::Value> {
    let v = version.to_string();
    let workers: Vec<Worker> = ["1", "2"]
        .iter()
        .map(|seed| {
            let args = ["--data", data, "--until-version", &v, "--seed", seed];
            Worker::start(&relay.url(), &args).unwrap()
        })
        .collect();
    let reports: Vec<_> = workers.into_iter().map(|w| w.finish().unwrap()).collect();
    assert_eq!(reports[0]["hash"], reports[1]["hash"], "{reports:?}");
    reports
}

#[test]
fn a_char_lm_learns_through_a_relay_with_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(dir.path(), "tales.toml", &lm_job("tales-lm", "tales", None));
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &["--job", job.to_str().unwrap()],
    )
    .unwrap();
    let before = at_version(&relay, "builtin:tales", 0);
    let reports = two_workers_until(&relay, "builtin:tales", 3000);
    let initial = before["bits_per_char"].as_f64().unwrap();
    // Worker 1 evaluates on the same held-out text as the version-0 follower (seed 1).
    let trained = reports[0]["bits_per_char"].as_f64().unwrap();
    assert!(
        trained <= 0.7 * initial,
        "bits per character went from {initial:.3} to {trained:.3}: less than a 30 % fall"
    );
}

#[test]
fn fine_tuning_from_a_checkpoint_lowers_the_loss_on_new_text() {
    let dir = tempfile::tempdir().unwrap();
    // Pre-train on tales (text A) in one process; the checkpoint is what the swarm starts from.
    let pretrain = write(
        dir.path(),
        "pretrain.toml",
        &lm_job("tales-pretrain", "tales", None),
    );
    let checkpoint = dir.path().join("tales.safetensors");
    let stdout = onebyte([
        "simulate",
        "--job",
        pretrain.to_str().unwrap(),
        "--dataset",
        "tales",
        "--peers",
        "2",
        "--contributions",
        "4000",
        "--json",
        "--save-checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    let pretrained: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let checkpoint_hash = pretrained["hashes"][0].clone();

    // Fine-tune on recipes (text B) through a relay, starting from the checkpoint.
    let job = write(
        dir.path(),
        "recipes.toml",
        &lm_job("recipes-finetune", "recipes", Some("tales.safetensors")),
    );
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &["--job", job.to_str().unwrap()],
    )
    .unwrap();
    let start = at_version(&relay, "builtin:recipes", 0);
    assert_eq!(
        start["hash"], checkpoint_hash,
        "version 0 is not the checkpoint"
    );
    let reports = two_workers_until(&relay, "builtin:recipes", 2000);
    let (before, after) = (
        start["test_loss"].as_f64().unwrap(),
        reports[0]["test_loss"].as_f64().unwrap(),
    );
    assert!(
        after < before,
        "loss on recipes went from {before:.4} to {after:.4}"
    );
}

/// The reference tokenizer the engine's BPE test holds to Hugging Face's (400 tokens).
const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../engine/tests/reference/bpe-tokenizer.json"
);

#[tokio::test(flavor = "multi_thread")]
async fn a_bpe_job_hands_its_tokenizer_to_workers_keeps_it_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(TOKENIZER, dir.path().join("tokenizer.json")).unwrap();
    let job = write(
        dir.path(),
        "tales-bpe.toml",
        "[job]\nname = \"tales-bpe\"\n\n[model]\nkind = \"char_lm\"\nembedding = 8\n\
         hidden = [64]\n\n[task]\nfeatures = 8\nclasses = 400\ndataset = \"tales\"\n\
         tokenizer = \"tokenizer.json\"\n\n[hyper]\nlearning_rate = 0.002\nepsilon = 0.001\n\
         batch_size = 64\n",
    );
    let store = dir.path().join("relay.db");
    let mut relay = Relay::start(&store, &["--job", job.to_str().unwrap()]).unwrap();
    // The workers know the job only from the relay: its tokenizer comes from /api/tokenizer.
    let before = at_version(&relay, "builtin:tales", 0);
    let reports = two_workers_until(&relay, "builtin:tales", 8000);
    // A BPE job's figure is bits per token, and only that.
    assert!(before["bits_per_char"].is_null(), "{before}");
    let initial = before["bits_per_token"].as_f64().unwrap();
    let trained = reports[0]["bits_per_token"].as_f64().unwrap();
    eprintln!("bits per token: {initial:.3} at version 0, {trained:.3} at 8 000");
    // Measured: 8.69 → 4.77 (log2 400 = 8.64 is a uniform guess).
    assert!(
        trained <= 0.7 * initial,
        "bits per token went from {initial:.3} to {trained:.3}: less than a 30 % fall"
    );

    // Restarted without the job file, the relay still serves the same tokenizer.
    relay.kill();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let relay = Relay::start(&store, &[]).unwrap();
    let served = reqwest::get(format!("{}/api/tokenizer", relay.url()))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        served.as_ref(),
        std::fs::read(TOKENIZER).unwrap().as_slice()
    );
    let after = at_version(&relay, "builtin:tales", 8000);
    assert_eq!(after["hash"], reports[0]["hash"]);
}

#[test]
fn a_transformer_over_a_bpe_tokenizer_learns_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(TOKENIZER, dir.path().join("tokenizer.json")).unwrap();
    // A small GPT-2 over the reference tokenizer's 400 tokens, from random weights.
    let job = write(
        dir.path(),
        "tales-gpt.toml",
        "[job]\nname = \"tales-gpt\"\n\n[model]\nkind = \"transformer\"\nlayers = 1\n\
         width = 32\nheads = 2\ncontext = 16\n\n[task]\nfeatures = 16\nclasses = 400\n\
         dataset = \"tales\"\ntokenizer = \"tokenizer.json\"\n\n[hyper]\n\
         learning_rate = 5e-4\nepsilon = 0.001\nbatch_size = 32\nstaleness_bound = 64\n",
    );
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &["--job", job.to_str().unwrap()],
    )
    .unwrap();
    let before = at_version(&relay, "builtin:tales", 0);
    let reports = two_workers_until(&relay, "builtin:tales", 1500);
    let initial = before["bits_per_token"].as_f64().unwrap();
    let trained = reports[0]["bits_per_token"].as_f64().unwrap();
    eprintln!("bits per token: {initial:.3} at version 0, {trained:.3} at 1 500");
    // Measured: 8.63 -> 7.45 (log2 400 = 8.64 is a uniform guess).
    assert!(
        trained <= initial - 0.5,
        "bits per token went from {initial:.3} to {trained:.3}"
    );
}

/// The tiny transformer over bytes with only its biases and LayerNorms training (BitFit) on a
/// base made from the job's seed; `init` pins a checkpoint base instead.
fn bitfit_job(init: Option<(&str, &str)>) -> String {
    let (init, pin) = init.map_or((String::new(), String::new()), |(file, sha)| {
        (
            format!("init = \"{file}\"\n"),
            format!("base_sha256 = \"{sha}\"\n"),
        )
    });
    format!(
        "[job]\nname = \"bitfit-tales\"\n{init}\n[model]\nkind = \"transformer\"\n\
         preset = \"tiny\"\n\n[task]\nfeatures = 32\nclasses = 256\ndataset = \"tales\"\n\n\
         [hyper]\nlearning_rate = 0.03\nepsilon = 0.001\nbatch_size = 32\nstaleness_bound = 64\n\n\
         [train]\nparameters = \"bitfit\"\n{pin}"
    )
}

#[test]
fn workers_train_only_the_biases_and_norms_of_a_base_they_fetch_from_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    // The base: the job's model from its seed, written as any checkpoint is.
    let whole = write(
        dir.path(),
        "whole.toml",
        &bitfit_job(None).replace("[train]\nparameters = \"bitfit\"\n", ""),
    );
    let base = dir.path().join("base.safetensors");
    onebyte([
        "simulate",
        "--job",
        whole.to_str().unwrap(),
        "--peers",
        "1",
        "--contributions",
        "0",
        "--save-checkpoint",
        base.to_str().unwrap(),
    ]);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&base).unwrap(),
    ));
    let job = write(
        dir.path(),
        "bitfit.toml",
        &bitfit_job(Some(("base.safetensors", &sha))),
    );
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &["--job", job.to_str().unwrap()],
    )
    .unwrap();
    // Every worker fetches the base from the relay and checks it against the pin.
    let before = at_version(&relay, "builtin:tales", 0);
    let reports = two_workers_until(&relay, "builtin:tales", 600);
    let initial = before["bits_per_char"].as_f64().unwrap();
    let trained = reports[0]["bits_per_char"].as_f64().unwrap();
    // 1 792 of the 120 576 parameters train. Measured in `onebyte simulate --peers 2` over
    // 600 contributions: 8.02 -> 7.45 bits per character.
    assert!(
        trained <= initial - 0.25,
        "bits per character went from {initial:.3} to {trained:.3}"
    );
}

/// LoRA rank 8 on the tiny transformer's attention over a base made from the job's seed.
fn lora_job() -> String {
    "[job]\nname = \"lora-tales\"\n\n[model]\nkind = \"transformer\"\npreset = \"tiny\"\n\n\
     [task]\nfeatures = 32\nclasses = 256\ndataset = \"tales\"\n\n\
     [hyper]\nlearning_rate = 0.01\nepsilon = 0.001\nbatch_size = 32\nstaleness_bound = 64\n\n\
     [train]\nparameters = \"lora\"\n"
        .to_string()
}

#[test]
fn workers_train_lora_adapters_through_a_relay_and_the_host_exports_them() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(dir.path(), "lora.toml", &lora_job());
    let relay = Relay::start(
        &dir.path().join("relay.db"),
        &["--job", job.to_str().unwrap(), "--snapshot-every", "100"],
    )
    .unwrap();
    let before = at_version(&relay, "builtin:tales", 0);
    let reports = two_workers_until(&relay, "builtin:tales", 400);
    let initial = before["bits_per_char"].as_f64().unwrap();
    let trained = reports[0]["bits_per_char"].as_f64().unwrap();
    eprintln!("LoRA through the relay: {initial:.3} -> {trained:.3} bits per character");
    // 6 144 of the 120 576 parameters train. Measured here: 8.02 -> 7.60 and 7.61 in two runs;
    // in `onebyte simulate --peers 2`, 7.58 after 300 contributions and 7.57 after 600 (at η
    // 0.02 and above it does not learn; at 0.005 it reaches 7.55 by 600).
    assert!(
        trained <= initial - 0.2,
        "bits per character went from {initial:.3} to {trained:.3}"
    );

    // The host takes the adapters away in PEFT's form, and the merged model as GPT-2.
    let adapter = dir.path().join("adapter");
    let said = onebyte([
        "export",
        "--relay",
        &relay.url(),
        "--out",
        adapter.to_str().unwrap(),
    ]);
    assert!(said.contains("job `lora-tales` at version"), "{said}");
    assert!(
        !said.contains("at version 0 "),
        "a snapshot after training: {said}"
    );
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let adapters = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(adapters.len(), 8, "A and B of two layers in two blocks");
    assert!(adapter.join("adapter_config.json").exists());
    let merged = dir.path().join("merged");
    onebyte([
        "export",
        "--relay",
        &relay.url(),
        "--out",
        merged.to_str().unwrap(),
        "--merge",
    ]);
    let bytes = std::fs::read(merged.join("model.safetensors")).unwrap();
    let whole = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        whole.tensor("h.0.attn.c_attn.weight").unwrap().shape(),
        [64, 192]
    );
    assert!(merged.join("config.json").exists());
}
