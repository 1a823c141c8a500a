//! `onebyte`: the command-line peer.

mod data;
mod export;
mod join;
mod pretrain;
mod simulate;

use clap::{Parser, Subcommand};

/// onebyte: train one model from many peers, one byte per gradient estimate.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run N peers in this process through an in-memory log, then report accuracy, every
    /// replica's weight hash and the bytes they exchanged.
    Simulate(simulate::Args),
    /// Join a relay as a peer: train on local data, send one byte per gradient estimate,
    /// follow the shared log. Stops at --contributions or --until-version, or on Ctrl-C.
    Join(join::Args),
    /// Train a job's model first-order (backpropagation, AdamW) on this machine and write the
    /// checkpoint a job's `init` reads: the pre-trained model a swarm fine-tunes.
    Pretrain(pretrain::Args),
    /// Write a job's trained weights (from a relay, or a snapshot file) as files other tools
    /// load: a Hugging Face GPT-2 folder, or a LoRA job's adapters in PEFT's form.
    Export(export::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    engine::host_memory::keep_freed_memory();
    match Cli::parse().command {
        Command::Simulate(args) => simulate::run(args),
        Command::Join(args) => join::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Export(args) => export::run(args),
    }
}
