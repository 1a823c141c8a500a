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
