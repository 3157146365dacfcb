//! `lbwnet eval`: evaluate a run's latest checkpoint (or any checkpoint with a config) on
//! the test split.
use super::ConfigArgs;
use crate::config::ExperimentConfig;
use crate::data::synthetic::ensure_synthetic;
use crate::data::voc::VocDataset;
use crate::train::checkpoint;
use crate::train::evaluate::evaluate_model;
use crate::train::setup::{build_model, configure_threads, select_device};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A training run directory (its config.yaml and latest checkpoint are used).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "checkpoint")]
    pub run: Option<PathBuf>,
    /// A checkpoint (.safetensors or its .json state); the model comes from --config.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also write this many test images with boxes drawn (PNG).
    #[arg(long, default_value_t = 0)]
    pub save_images: usize,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (cfg, weights, out_dir) = match (&args.run, &args.checkpoint) {
        (Some(run), _) => {
            let config_path = run.join("config.yaml");
            if !config_path.is_file() {
                bail!(
                    "{} is not a training run directory (no config.yaml)",
                    run.display()
                );
            }
            let cfg = ExperimentConfig::load(&config_path, &args.config.overrides)?;
            (cfg, checkpoint::resolve_weights(run)?, run.join("eval"))
        }
        (None, Some(ckpt)) => {
            let cfg = args.config.load()?;
            let weights = checkpoint::resolve_weights(ckpt)?;
            let out = weights
                .parent()
                .map(|p| p.join("eval"))
                .unwrap_or_else(|| PathBuf::from("eval"));
            (cfg, weights, out)
        }
        (None, None) => {
            // The run that `lbwnet train` with the same config and overrides produced.
            let cfg = args.config.load()?;
            let run = cfg.run_dir();
            let weights = checkpoint::resolve_weights(&run).with_context(|| {
                format!(
                    "no --run or --checkpoint given, and no trained run at {}",
                    run.display()
                )
            })?;
            (cfg, weights, run.join("eval"))
        }
    };
    cfg.check_data_path()?;
    ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let device = select_device(cfg.train.device)?;
    configure_threads(cfg.train.threads);
    let test_set = Arc::new(VocDataset::open(
        &cfg.data.root,
        &cfg.data.test_split,
        cfg.data.classes.as_deref(),
    )?);
    let (vs, model) = build_model(&cfg, test_set.classes.len(), device, false)?;
    checkpoint::load_weights(&weights, &vs)?;
    let report = evaluate_model(
        &model,
        test_set,
        &cfg.data,
        &cfg.eval,
        device,
        &out_dir.join("detections"),
        args.save_images,
    )?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        eprintln!("{}", report.to_markdown());
        eprintln!("detections in {}", out_dir.join("detections").display());
        println!("mAP ({}): {:.4}", cfg.eval.metric.name(), report.map);
    }
    Ok(())
}
