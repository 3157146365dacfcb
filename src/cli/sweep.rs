//! `lbwnet sweep`: for each seed, train the float model, retrain every (bits, method, c)
//! cell from it, and write the tables (spread over seeds) and plots.
use crate::experiments::sweep::{run_sweep, SweepConfig};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Sweep config (YAML), e.g. configs/sweeps/default.yaml.
    #[arg(long, default_value = "configs/sweeps/default.yaml")]
    pub config: PathBuf,
    /// A smoke run with tiny data and few iterations (results go to `<name>-quick/`).
    #[arg(long)]
    pub quick: bool,
    /// Print the paper-style table (best c per bit-width) instead of every cell.
    #[arg(long)]
    pub paper_table: bool,
    /// Train every run under seeds 0..N instead of the config's `seeds`.
    #[arg(long, value_name = "N")]
    pub seeds: Option<usize>,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let mut sweep = SweepConfig::load(&args.config)?;
    if let Some(count) = args.seeds {
        sweep.set_seed_count(count)?;
    }
    let table = run_sweep(&sweep, args.quick)?;
    let text = if args.paper_table {
        table.paper_table_markdown()
    } else {
        table.to_markdown()
    };
    println!("{text}");
    eprintln!(
        "tables and plots in {}",
        sweep.results_dir(args.quick).display()
    );
    Ok(())
}
