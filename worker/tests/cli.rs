//! `onebyte simulate` and `onebyte pretrain` as a person runs them: real processes, their exit
//! codes, their messages and their JSON lines.

use std::process::Command;

fn onebyte() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onebyte"))
}

#[test]
fn simulate_reports_accuracy_hashes_and_bytes_as_json() {
    let out = onebyte()
        .args([
            "simulate",
            "--peers",
            "3",
            "--contributions",
            "600",
            "--json",
        ])
        .output()
        .expect("run onebyte");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("some output");
    let report: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(report["version"], 600);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let hashes = report["hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 3);
    assert!(
        hashes
            .iter()
            .all(|h| h == &hashes[0] && h.as_str().unwrap().len() == 64)
    );
    let exchanged = report["bytes_exchanged"].as_u64().unwrap();
    assert!(exchanged > 0 && report["fp32_allreduce_bytes"].as_u64().unwrap() > exchanged);
}

#[test]
fn simulate_trains_on_a_csv_file() {
    let dir = std::env::temp_dir().join(format!("onebyte-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("blobs.csv");
    let mut text = String::from("x,y,label\n");
    for i in 0..400 {
        let (cx, cy, label) = if i % 2 == 0 {
            (-1.0, -1.0, "a")
        } else {
            (1.0, 1.0, "b")
        };
        let jitter = (i as f64 * 0.618).fract() - 0.5;
        text += &format!("{},{},{label}\n", cx + jitter, cy - jitter);
    }
    std::fs::write(&csv, text).unwrap();
    let out = onebyte()
        .args([
            "simulate",
            "--peers",
            "2",
            "--contributions",
            "400",
            "--json",
            "--dataset",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(report["accuracy"].as_f64().unwrap() > 0.9, "{report}");
}

#[test]
fn with_no_job_file_simulate_sizes_the_mlp_to_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("three.csv");
    // Three features and three classes: the demo job (2 features, 2 classes) cannot read it.
    let mut text = String::from("a,b,c,kind\n");
    for i in 0..300 {
        let class = i % 3;
        let jitter = (i as f64 * 0.618).fract() - 0.5;
        let mut x = [jitter * 0.3; 3];
        x[class] += 2.0;
        text += &format!("{},{},{},k{class}\n", x[0], x[1], x[2]);
    }
    std::fs::write(&csv, text).unwrap();
    let out = onebyte()
        .args([
            "simulate",
            "--peers",
            "2",
            "--contributions",
            "300",
            "--json",
            "--dataset",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 features, 3 classes"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(report["accuracy"].as_f64().unwrap() > 0.5, "{report}");
}

#[test]
fn a_char_lm_trains_on_a_text_file_and_refuses_points() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("lm.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"text\"\n[model]\nkind = \"char_lm\"\nembedding = 4\nhidden = [16]\n\
         [task]\nfeatures = 4\nclasses = 256\ndataset = \"tales\"\n",
    )
    .unwrap();
    let text = dir.path().join("poem.txt");
    std::fs::write(
        &text,
        "so much depends upon a red wheel barrow. ".repeat(40),
    )
    .unwrap();
    let run = |dataset: &std::path::Path| {
        onebyte()
            .args([
                "simulate",
                "--peers",
                "2",
                "--contributions",
                "200",
                "--job",
            ])
            .arg(&job)
            .arg("--dataset")
            .arg(dataset)
            .output()
            .unwrap()
    };
    let out = run(&text);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("held-out bits per character"), "{stdout}");
    let out = run(std::path::Path::new("spirals"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a character language model"), "{stderr}");
}

#[test]
fn bad_arguments_get_clear_messages() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["simulate", "--dataset", "swirls"],
            "unknown dataset `swirls`",
        ),
        (
            &["simulate", "--dataset", "/no/such.csv"],
            "cannot read /no/such.csv",
        ),
        (&["simulate", "--peers", "0"], "--peers must be at least 1"),
        (
            &["simulate", "--job", "/no/job.toml"],
            "cannot read job file",
        ),
    ];
    for (args, needle) in cases {
        let out = onebyte().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A shipped job file.
fn shipped_job(name: &str) -> String {
    format!("{}/../deploy/jobs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `onebyte pretrain ARGS…`: its exit status, stdout and stderr.
fn pretrain(args: &[&str]) -> (bool, String, String) {
    let out = onebyte()
        .arg("pretrain")
        .args(args)
        .output()
        .expect("run onebyte");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pretrain_writes_a_gpt2_checkpoint_and_reports_the_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let job = shipped_job("tiny-lm.toml");
    let (ok, stdout, stderr) = pretrain(&[
        "--job",
        &job,
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON");
    assert_eq!(report["steps"], 40, "{report}");
    assert_eq!(report["interrupted"], false, "{report}");
    let (before, after) = (
        report["held_out_loss_before"].as_f64().unwrap(),
        report["held_out_loss"].as_f64().unwrap(),
    );
    assert!(after < before - 1.0, "{report}");
    // Hugging Face's GPT-2 names, and the metadata `transformers` looks for.
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        tensors.tensor("h.1.attn.c_attn.weight").unwrap().shape(),
        [64, 192]
    );
    // No partial file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["model.safetensors"]);
}

#[test]
fn pretrain_refuses_a_bad_init_or_out_with_a_message_and_keeps_the_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    std::fs::write(&out, "precious").unwrap();
    let out = out.to_str().unwrap();
    let lm = shipped_job("tiny-lm.toml");

    // A checkpoint of another model (the spirals MLP) as the transformer's --init.
    let mlp = dir.path().join("mlp.safetensors");
    let (ok, _, stderr) = pretrain(&[
        "--job",
        &shipped_job("private-spirals.toml"),
        "--steps",
        "2",
        "--out",
        mlp.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = pretrain(&[
        "--job",
        &lm,
        "--init",
        mlp.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out,
    ]);
    assert!(!ok);
    assert!(stderr.contains("does not fit"), "{stderr}");
    // Not a checkpoint at all.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, "not a checkpoint").unwrap();
    let (ok, _, stderr) = pretrain(&[
        "--job",
        &lm,
        "--init",
        junk.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out,
    ]);
    assert!(!ok);
    assert!(stderr.contains("--init"), "{stderr}");
    // An --out nobody can write: said before any training.
    let nowhere = dir.path().join("no-such-folder/model.safetensors");
    let (ok, _, stderr) = pretrain(&[
        "--job",
        &lm,
        "--steps",
        "2",
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("cannot write --out"), "{stderr}");
    assert!(!stderr.contains("held-out"), "no training first: {stderr}");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "precious");
}

/// Runs `onebyte ARGS…`: its exit status, stdout and stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let out = onebyte().args(args).output().expect("run onebyte");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn export_writes_peft_adapters_or_the_merged_gpt2_and_refuses_another_jobs_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = "[model]\nkind = \"transformer\"\npreset = \"tiny\"\n\
                 [task]\nfeatures = 16\nclasses = 256\ndataset = \"tales\"\n";
    // A base: the tiny transformer after two first-order steps.
    std::fs::write(
        path("whole.toml"),
        format!("[job]\nname = \"whole\"\n{model}"),
    )
    .unwrap();
    let (ok, _, stderr) = run(&[
        "pretrain",
        "--job",
        &path("whole.toml"),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--out",
        &path("base.safetensors"),
    ]);
    assert!(ok, "{stderr}");
    let base_bytes = std::fs::read(path("base.safetensors")).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&base_bytes));
    std::fs::write(
        path("lora.toml"),
        format!(
            "[job]\nname = \"lora\"\ninit = \"base.safetensors\"\n{model}\
             [hyper]\nlearning_rate = 0.01\n\
             [train]\nparameters = \"lora\"\nrank = 4\nbase_sha256 = \"{sha}\"\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = run(&[
        "simulate",
        "--job",
        &path("lora.toml"),
        "--peers",
        "1",
        "--contributions",
        "30",
        "--save-checkpoint",
        &path("snapshot.safetensors"),
    ]);
    assert!(ok, "{stderr}");

    // The adapters alone, as PEFT names and shapes them.
    let (ok, stdout, stderr) = run(&[
        "export",
        "--job",
        &path("lora.toml"),
        "--snapshot",
        &path("snapshot.safetensors"),
        "--out",
        &path("adapter"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("at version 30"), "{stdout}");
    let bytes = std::fs::read(dir.path().join("adapter/adapter_model.safetensors")).unwrap();
    let adapters = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(adapters.len(), 8);
    let b = adapters
        .tensor("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [64, 4]);
    assert!(
        b.data().iter().any(|&byte| byte != 0),
        "B has moved from zero"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64()),
        (Some("LORA"), Some(4))
    );

    // Merged: the base with only the adapted products changed, and a config to load it by.
    let (ok, _, stderr) = run(&[
        "export",
        "--job",
        &path("lora.toml"),
        "--snapshot",
        &path("snapshot.safetensors"),
        "--out",
        &path("merged"),
        "--merge",
    ]);
    assert!(ok, "{stderr}");
    let merged_bytes = std::fs::read(dir.path().join("merged/model.safetensors")).unwrap();
    let merged = safetensors::SafeTensors::deserialize(&merged_bytes).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base_bytes).unwrap();
    for name in ["wte.weight", "h.0.ln_1.weight", "h.1.mlp.c_fc.weight"] {
        assert_eq!(
            merged.tensor(name).unwrap().data(),
            base.tensor(name).unwrap().data()
        );
    }
    let adapted = "h.1.attn.c_proj.weight";
    assert_ne!(
        merged.tensor(adapted).unwrap().data(),
        base.tensor(adapted).unwrap().data()
    );
    assert!(dir.path().join("merged/config.json").exists());
    let mut names: Vec<_> = std::fs::read_dir(dir.path().join("merged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.json", "model.safetensors"],
        "no partial file is left"
    );

    // Another job's snapshot is refused by name, and nothing is written.
    let (ok, _, stderr) = run(&[
        "export",
        "--job",
        &path("whole.toml"),
        "--snapshot",
        &path("snapshot.safetensors"),
        "--out",
        &path("wrong"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not of the job `whole`"), "{stderr}");
    assert!(!dir.path().join("wrong").exists());
}
