//! `lbwnet train`: train from a config, or continue an interrupted run.
use super::ConfigArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue the run in this directory from its latest checkpoint (its saved config is used).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let cfg = args.config.load()?;
    let (metrics, report) = crate::train::trainer::train(&cfg, args.resume.as_deref())?;
    eprintln!("{}", report.to_markdown());
    eprintln!("results in {}", metrics.run_dir.display());
    println!("mAP ({}): {:.4}", metrics.metric, metrics.map);
    Ok(())
}
