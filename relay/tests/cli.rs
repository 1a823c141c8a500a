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

/// The `--flags` a deploy recipe passes to the relay, each of which `--help` must list.
fn flags_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

fn deploy_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_systemd_unit_verifies_and_passes_options_the_relay_has() {
    let unit = deploy_file("onebyte-relay.service");
    let installed = "/usr/local/bin/onebyte-relay";
    assert!(unit.contains(&format!("ExecStart={installed} ")), "{unit}");
    // systemd-analyze checks that the command exists: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("onebyte-relay.service");
    std::fs::write(
        &path,
        unit.replace(installed, env!("CARGO_BIN_EXE_onebyte-relay")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A bad value is only a warning to systemd: any output at all fails the test.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    let help =
        String::from_utf8_lossy(&relay().arg("--help").output().unwrap().stdout).into_owned();
    let exec: String = unit
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart="))
        .take_while(|l| l.ends_with('\\') || l.starts_with("ExecStart=") || l.starts_with("    --"))
        .collect();
    let flags = flags_in(&exec);
    assert!(flags.len() >= 3, "{exec}");
    for flag in flags {
        assert!(
            help.contains(&flag),
            "the unit passes {flag}, which the relay lacks"
        );
    }
}

#[test]
fn the_container_recipe_runs_the_relay_with_options_it_has() {
    let recipe = deploy_file("Containerfile");
    let entrypoint = recipe
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    let args: Vec<String> =
        serde_json::from_str(entrypoint.trim_start_matches("ENTRYPOINT").trim())
            .expect("ENTRYPOINT in exec form (a JSON array), so signals reach the relay");
    assert_eq!(args[0], "/usr/local/bin/onebyte-relay");
    assert!(
        recipe.contains(
            "COPY --from=build /src/target/release/onebyte-relay /usr/local/bin/onebyte-relay"
        ),
        "the binary the entrypoint runs is the one built"
    );
    let help =
        String::from_utf8_lossy(&relay().arg("--help").output().unwrap().stdout).into_owned();
    for flag in flags_in(&args[1..].join(" ")) {
        assert!(
            help.contains(&flag),
            "the recipe passes {flag}, which the relay lacks"
        );
    }
    // The build stage's Rust is at least the workspace's rust-version.
    let workspace = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
    )
    .unwrap();
    let wanted = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"'))
        .expect("rust-version in Cargo.toml");
    let image = recipe
        .lines()
        .find_map(|l| l.strip_prefix("FROM docker.io/library/rust:"))
        .and_then(|l| l.split('-').next())
        .expect("a rust build image");
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        version(image) >= version(wanted),
        "rust:{image} < rust-version {wanted}"
    );
}
