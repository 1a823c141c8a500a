//! `cargo xtask fuzz`: coverage-guided fuzzing of the wire codec, the log stream and the
//! peer's session with libFuzzer, outside CI. Each target runs for the given time; the figures libFuzzer prints at
//! the end (executions, coverage) are summed up per target.

use crate::tools::{cargo, root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The fuzz targets in `tests/fuzz/src/bin`.
const TARGETS: [&str; 3] = ["message", "log_stream", "session"];

/// The stable flags cargo-fuzz passes for a build without a sanitizer: libFuzzer's coverage
/// counters and comparison tracing, and `cfg(fuzzing)`.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

pub fn fuzz(seconds: u64) -> Result<()> {
    let dir = root().join("tests").join("fuzz");
    let target = target_dir().join("fuzz");
    // With an explicit target the flags reach only the targets' code, not build scripts (which
    // would not link without libFuzzer).
    let host = host_triple()?;
    let mut build = cargo();
    build
        .current_dir(&dir)
        .args(["build", "--release", "--bins", "--target", &host])
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", COVERAGE_FLAGS);
    run(
        "the fuzz targets, instrumented for coverage (libFuzzer)",
        build,
    )?;
    let mut summary = Vec::new();
    for name in TARGETS {
        // A corpus per target, kept between runs so each run goes on from the last.
        let corpus = target.join("corpus").join(name);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        eprintln!(
            "\n==> fuzzing `{name}` for {seconds} s (corpus {})",
            corpus.display()
        );
        let out = Command::new(target.join(&host).join("release").join(name))
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .arg("-max_len=4096")
            .output()
            .with_context(|| format!("could not start the fuzz target {name}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{log}");
            bail!(
                "the fuzz target {name} found a failure ({}); its input is in the current directory",
                out.status
            );
        }
        let stat = |key: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split(':').nth(1))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        // The last status line, e.g. `#81920 DONE cov: 412 ft: 1190 corp: 96/2173b …`.
        let coverage = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" cov: "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        summary.push(format!(
            "{name}: {} executions in {seconds} s ({} per second), {coverage} coverage points, \
             corpus of {} inputs",
            stat("stat::number_of_executed_units"),
            stat("stat::average_exec_per_sec"),
            std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        ));
    }
    eprintln!("\n==> fuzzing found no failure");
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// The machine's own target triple, as rustc names it.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("could not run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}
