//! `cargo xtask stress`: the end-to-end and browser suites, run again and again beside a CPU hog
//! on every core, to show that no test decides by wall-clock luck on a busy machine.

use crate::tools::{cargo_linted, ensure_debs, run, target_dir};
use crate::web;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Instant;

/// `stress-ng --cpu N` for as long as it lives; killed when dropped.
struct Hog(Child);

impl Hog {
    fn start() -> Result<Hog> {
        ensure_debs(&["stress-ng"], "a CPU hog beside the tests")?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        eprintln!("==> a CPU hog on all {cores} cores: stress-ng --cpu {cores}");
        let child = Command::new("stress-ng")
            .args(["--cpu", &cores.to_string(), "--quiet"])
            .spawn()
            .context("could not start stress-ng")?;
        Ok(Hog(child))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: stress-ng then ends the workers it forked, one per core.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Builds the tests as `cargo xtask test` does (`--workspace`: `--test e2e` alone would resolve
/// other features and rebuild dependencies) and returns the end-to-end suite's executable.
fn e2e_executable() -> Result<PathBuf> {
    eprintln!("\n==> building the tests (cargo test --workspace --no-run)");
    let mut build = cargo_linted(&["test", "--workspace", "--no-run", "--message-format=json"]);
    let out = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run cargo")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    // One JSON object a line; the e2e test target's artifact names its executable. (A plain
    // text search: the xtask needs no JSON parser for this one field.)
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.contains(r#""reason":"compiler-artifact""#)
                && line.contains(r#""kind":["test"]"#)
                && line.contains(r#""name":"e2e""#)
        })
        .find_map(|line| {
            let start = line.find(r#""executable":""#)? + r#""executable":""#.len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .context("cargo built no `e2e` test executable")
}

/// Copies the binaries the suites run into `target/stress/` (the e2e suite into its `deps/`,
/// where it looks for them one folder up), so that building meanwhile changes nothing under
/// test. Returns that folder and the copied suite.
fn snapshot_binaries(e2e_suite: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    let debug = target_dir().join("debug");
    let dir = target_dir().join("stress");
    std::fs::create_dir_all(dir.join("deps"))?;
    for name in ["onebyte", "onebyte-relay"] {
        let name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
        std::fs::copy(debug.join(&name), dir.join(&name))
            .with_context(|| format!("copying {name} into {}", dir.display()))?;
    }
    let suite = dir
        .join("deps")
        .join(e2e_suite.file_name().context("a file")?);
    std::fs::copy(e2e_suite, &suite).context("copying the e2e suite")?;
    Ok((dir, suite))
}

/// Which suites to repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    E2e,
    Browser,
    Both,
}

/// Builds what the suites need (at rest), then runs each `runs` times beside the hog, stopping
/// at the first failure; prints every run's time.
pub fn stress(runs: u32, suite: Suite) -> Result<()> {
    let e2e = matches!(suite, Suite::E2e | Suite::Both);
    let browser = matches!(suite, Suite::Browser | Suite::Both);
    let e2e_suite = e2e_executable()?;
    run(
        "the relay and worker binaries",
        cargo_linted(&["build", "--workspace", "--bins"]),
    )?;
    if browser {
        web::build_web()?;
        web::ensure_chromium()?;
    }
    let (bin_dir, e2e_suite) = snapshot_binaries(&e2e_suite)?;
    let _hog = Hog::start()?;
    let mut times = Vec::new();
    for (name, wanted) in [("e2e", e2e), ("browser", browser)] {
        if !wanted {
            continue;
        }
        for i in 1..=runs {
            let started = Instant::now();
            let suite = if name == "e2e" {
                let mut suite = Command::new(&e2e_suite);
                // Where cargo runs a package's tests: in the package.
                suite.current_dir(crate::tools::root().join("tests"));
                suite
            } else {
                let mut suite = web::browser_test_command()?;
                suite.env("ONEBYTE_BIN_DIR", &bin_dir);
                suite
            };
            let outcome = run(
                &format!("{name} suite, run {i} of {runs}, under load"),
                suite,
            );
            let seconds = started.elapsed().as_secs_f64();
            times.push(format!("{name} run {i}: {seconds:.0} s"));
            if let Err(e) = outcome {
                eprintln!("\n{}", times.join("\n"));
                bail!("{e:#}");
            }
        }
    }
    eprintln!(
        "\nall runs passed under load ({}):\n{}",
        target_dir().display(),
        times.join("\n")
    );
    Ok(())
}
