//! `cargo xtask`: the project's commands, runnable on a fresh machine.
//!
//! Each step says what it is doing before it does it, and installs what it needs when missing.

mod fuzz;
mod steps;
mod stress;
mod tools;
mod web;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "onebyte project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every check and test: rustfmt, clippy (warnings are errors), the browser client's wasm
    /// build and wasm tests, all native tests (GPU ones on lavapipe), the relay end to end, and
    /// the page in headless Chromium (WebGPU and CPU).
    Test,
    /// Build the page's wasm client, start the relay with the built-in demo job on localhost
    /// (serving the page), plus two native workers, and print the URL. `--job lm` hosts the
    /// tiny transformer pre-trained on its corpus, `--job sentiment` the same pre-trained on
    /// reviews and fine-tuned to classify them by prompt (`onebyte pretrain`, once, cached
    /// under target/demo-NAME/); `--job FILE` any job file.
    Demo {
        /// Arguments passed to `onebyte-relay`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: figures and ratios measured in one run, printed.
    Bench,
    /// Coverage-guided fuzzing (libFuzzer) of the wire codec and the log stream, each target
    /// for SECONDS; not part of `test`. Prints executions and coverage per target.
    Fuzz {
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// The end-to-end and browser suites, each RUNS times in a row beside a CPU hog on every
    /// core (stress-ng): no test may depend on the machine being idle. Not part of `test`.
    Stress {
        #[arg(default_value_t = 10)]
        runs: u32,
        /// Which suites: e2e, browser or both.
        #[arg(long, value_enum, default_value_t = stress::Suite::Both)]
        suite: stress::Suite,
    },
    /// Build only the page: the wasm client into web/pkg and uPlot into web/vendor (what a
    /// relay's `--web web` serves; the container recipe uses it).
    Web,
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Test => steps::test(),
        Command::Demo { args } => steps::demo(&args),
        Command::Bench => steps::bench(),
        Command::Fuzz { seconds } => fuzz::fuzz(seconds),
        Command::Stress { runs, suite } => stress::stress(runs, suite),
        Command::Web => web::build_web(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
