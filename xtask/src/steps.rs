//! The steps behind each command.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, announcing it first and timing it.
fn run(what: &str, mut cmd: Command) -> Result<()> {
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

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes sure a rustup component is installed (rustfmt, clippy).
fn ensure_component(name: &str, probe: &[&str]) -> Result<()> {
    let ok = cargo()
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("==> {name} is missing; installing it with rustup");
    let status = Command::new("rustup")
        .args(["component", "add", name])
        .status()
        .with_context(|| format!("rustup is needed to install {name}"))?;
    if !status.success() {
        bail!("could not install the rustup component {name}");
    }
    Ok(())
}

pub fn test() -> Result<()> {
    let start = Instant::now();
    ensure_component("rustfmt", &["fmt", "--version"])?;
    ensure_component("clippy", &["clippy", "--version"])?;
    ensure_lavapipe()?;

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("formatting (cargo fmt --check)", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("lints (clippy, warnings are errors)", clippy)?;

    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    run("native tests (protocol, engine, worker)", tests)?;

    eprintln!(
        "\nall checks passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn demo(args: &[String]) -> Result<()> {
    eprintln!(
        "The relay is not built yet: the demo runs a swarm of simulated peers in one process,\n\
         through the same engine and an in-memory log."
    );
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "onebyte-worker", "--", "simulate"]);
    if args.is_empty() {
        cmd.args(["--peers", "8"]);
    } else {
        cmd.args(args);
    }
    run("onebyte simulate", cmd)
}

pub fn bench() -> Result<()> {
    ensure_lavapipe()?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "onebyte-engine",
        "--features",
        "wgpu",
        "--example",
        "bench",
    ]);
    run("engine benchmarks (CPU backend and wgpu)", cmd)
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
fn ensure_debs(packages: &[&str], why: &str) -> Result<()> {
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

/// Mesa's lavapipe: a software Vulkan driver, so wgpu tests have an adapter without a GPU.
fn ensure_lavapipe() -> Result<()> {
    ensure_debs(
        &["mesa-vulkan-drivers", "libvulkan1"],
        "GPU kernel tests on software Vulkan (lavapipe)",
    )
}
