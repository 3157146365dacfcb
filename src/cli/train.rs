//! `lbwnet train`: train from a config, or continue an interrupted run.
use super::ConfigArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue the run in this directory from its latest checkpoint, with the config it was
    /// trained with (`--set` still applies on top; `--config` is not read).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let cfg = match &args.resume {
        Some(run_dir) => crate::train::trainer::resume_config(run_dir, &args.config.overrides)?,
        None => args.config.load()?,
    };
    let (metrics, report) = crate::train::trainer::train(&cfg, args.resume.as_deref())?;
    eprintln!("{}", report.to_markdown());
    eprintln!("results in {}", metrics.run_dir.display());
    println!("mAP ({}): {:.4}", metrics.metric, metrics.map);
    Ok(())
}
