//! Running commands and installing what they need: the workspace, cargo (linted as it
//! builds), announced and timed steps, Debian packages. Every command of the xtask uses these.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// For the test runs: the CPU backend in each process keeps to one thread. Tests already run
/// many at once (test threads, relays, workers, Chromium, lavapipe) on two cores, and every
/// process's matrix products spreading over both only adds contention (measured: the engine's
/// integration tests took 191 s with the CPU backend's threads, 110 s without).
pub const ONE_CPU_THREAD: (&str, &str) = ("RAYON_NUM_THREADS", "1");

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative to the workspace, as
/// cargo reads it), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    target_dir_for(std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_for(cargo_target_dir: Option<std::ffi::OsString>) -> PathBuf {
    match cargo_target_dir {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Lints the workspace's crates as they compile, warnings as errors. `cargo clippy` is `cargo
/// check` with clippy-driver as `RUSTC_WORKSPACE_WRAPPER` and its flags in `CLIPPY_ARGS`; doing
/// the same on the real builds lints every target (lib, bins, tests, examples; natively and for
/// wasm32, where the client is not empty) without a second, check-only compile of every
/// dependency. Every cargo build of the xtask sets it, so they all share artifacts.
pub fn lint_while_building(cmd: &mut Command) {
    let driver = Command::new("rustup")
        .args(["which", "clippy-driver"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match driver {
        Some(driver) => {
            cmd.env("RUSTC_WORKSPACE_WRAPPER", driver).env(
                "CLIPPY_ARGS",
                "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
            );
        }
        None => eprintln!("    (clippy is not installed: this build is not linted)"),
    }
}

/// A native cargo command, linted as it builds (see [`lint_while_building`]).
pub fn cargo_linted(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(args);
    lint_while_building(&mut cmd);
    cmd
}

/// Runs a command, announcing it first and timing it.
pub fn run(what: &str, mut cmd: Command) -> Result<()> {
    eprintln!("\n==> {what}");
    eprintln!("    $ {}", describe(&cmd));
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    eprintln!("    ok in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Debian packages missing from this machine, of those named.
fn missing_debs(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs Debian packages when running as root; otherwise says what to install.
pub fn ensure_debs(packages: &[&str], why: &str) -> Result<()> {
    let missing = missing_debs(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs the Debian packages {}; install them (sudo apt-get install {}) and rerun",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run(&format!("{why}: refreshing Debian's package lists"), update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(
        &format!("{why}: installing {}", missing.join(", ")),
        install,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_is_the_workspace_target_unless_cargo_is_told_otherwise() {
        assert_eq!(target_dir_for(None), root().join("target"));
        assert_eq!(target_dir_for(Some("".into())), root().join("target"));
        assert_eq!(
            target_dir_for(Some("/elsewhere/tgt".into())),
            PathBuf::from("/elsewhere/tgt")
        );
        assert_eq!(target_dir_for(Some("tgt".into())), root().join("tgt"));
    }
}
