//! The relay's command line: help a newcomer can read, and clear errors for bad input.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onebyte-relay"))
}

#[test]
fn help_names_the_main_options() {
    let out = relay().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--job",
        "--store",
        "--listen",
        "--join-token",
        "--tls-cert",
        "--allow-origin",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn an_invalid_job_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.toml");
    std::fs::write(&job, "[job]\nname = \"x\"\n[hyper]\nlearning_rate = -1.0\n").unwrap();
    let out = relay()
        .arg("--job")
        .arg(&job)
        .arg("--store")
        .arg(dir.path().join("s.db"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("learning_rate"),
        "{err}"
    );
}

#[test]
fn a_store_of_another_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.db");
    let run = |name: &str| {
        let job = dir.path().join(format!("{name}.toml"));
        std::fs::write(&job, format!("[job]\nname = \"{name}\"\n")).unwrap();
        // `--listen` on a port that cannot be bound makes the relay stop right after opening
        // the store, so the first run does not serve forever.
        relay()
            .arg("--job")
            .arg(&job)
            .arg("--store")
            .arg(&store)
            .args(["--listen", "192.0.2.1:1"])
            .output()
            .unwrap()
    };
    let first = run("alpha");
    assert!(String::from_utf8_lossy(&first.stderr).contains("could not listen"));
    let second = run("beta");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("holds job `alpha`"), "{err}");
}
