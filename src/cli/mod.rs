//! Command-line interface: one file per subcommand, each with its clap arguments and a
//! `run` function.
mod bench;
mod detect;
mod eval;
mod eval_dets;
mod export;
mod gen_data;
mod info;
mod inspect;
mod quantize;
mod sweep;
mod train;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "lbwnet",
    version,
    about = "Faster R-CNN with low bit-width (zero or power-of-two) weights"
)]
pub struct Cli {
    /// Only warnings and errors on stderr (RUST_LOG still wins when set).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Versions, libtorch, CUDA devices and CPU threads.
    Info,
    /// Quantize a float32 .npy weight tensor with one of the quantizers.
    Quantize(quantize::QuantizeArgs),
    /// Generate the synthetic data set in the PASCAL VOC layout.
    GenData(gen_data::GenDataArgs),
    /// Evaluate comp4 detection files against a VOC-layout data set.
    EvalDets(eval_dets::EvalDetsArgs),
    /// Train a Faster R-CNN from an experiment config.
    Train(train::TrainArgs),
    /// Evaluate a trained run, a checkpoint or an exported model on the test split.
    Eval(eval::EvalArgs),
    /// Export a run's checkpoint as one packed low-bit model file.
    Export(export::ExportArgs),
    /// Run an exported model on images: detections.json and PNGs with the boxes drawn.
    Detect(detect::DetectArgs),
    /// Per-layer bits, alpha, sparsity, level histogram and bytes of a model file.
    Inspect(inspect::InspectArgs),
    /// Run a bit-width / threshold sweep and write its tables and plots.
    Sweep(sweep::SweepArgs),
    /// Benchmarks (quantizers, loader, training steps, exported-model detection).
    Bench(bench::BenchArgs),
}

/// `--config FILE` plus repeated `--set key.path=value` overrides, shared by every
/// subcommand that reads an experiment config.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Experiment config (YAML).
    #[arg(long, default_value = "configs/default.yaml")]
    pub config: PathBuf,
    /// Override one config value, e.g. `--set quant.bits=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<crate::config::ExperimentConfig> {
        crate::config::ExperimentConfig::load(&self.config, &self.overrides)
    }
}

pub fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => info::run(),
        Command::Quantize(args) => quantize::run(args),
        Command::GenData(args) => gen_data::run(args),
        Command::EvalDets(args) => eval_dets::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
