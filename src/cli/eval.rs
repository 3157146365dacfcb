//! `lbwnet eval`: evaluate a run's latest checkpoint, any checkpoint with a config, or an
//! exported model file on the test split.
use super::ConfigArgs;
use crate::config::{ExperimentConfig, SplitRole};
use crate::data::synthetic::ensure_synthetic;
use crate::data::Dataset;
use crate::deploy::{DeployedModel, ModelFile};
use crate::train::checkpoint;
use crate::train::evaluate::evaluate_model;
use crate::train::setup::{build_model, configure_threads, select_device};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A training run directory (its config.yaml and latest checkpoint are used).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "checkpoint")]
    pub run: Option<PathBuf>,
    /// A checkpoint (.safetensors or its .json state); the model comes from --config.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// An exported model file (`lbwnet export`): its own config is used, with the --set
    /// overrides (e.g. `--set data.root=DIR`); --config is ignored.
    #[arg(long, value_name = "MODEL.lbw", conflicts_with_all = ["run", "checkpoint"])]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Where the comp4 detections (and images) go: `DIR/detections/` (default: the run's
    /// `eval/`, or `<MODEL stem>-eval/` beside the model file).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also write this many test images with boxes drawn (PNG).
    #[arg(long, default_value_t = 0)]
    pub save_images: usize,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(model) = &args.model {
        return run_model(&args, model);
    }
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
    let out_dir = args.out.clone().unwrap_or(out_dir);
    cfg.check_data_path()?;
    ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let device = select_device(cfg.train.device)?;
    configure_threads(cfg.train.threads);
    let test_set = Arc::new(Dataset::from_config(
        &cfg.data,
        SplitRole::Test,
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
    print_report(&report, &cfg, &out_dir, args.json)
}

/// `--model`: the exported model with its stored config and class list.
fn run_model(args: &EvalArgs, path: &Path) -> Result<()> {
    let file = ModelFile::read(path)?;
    let cfg = file.config(&args.config.overrides)?;
    let device = select_device(cfg.train.device)?;
    let deployed = DeployedModel::from_file(&file, device, &args.config.overrides)
        .with_context(|| format!("model file {}", path.display()))?;
    drop(file);
    cfg.check_data_path()?;
    ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    configure_threads(cfg.train.threads);
    let test_set = Arc::new(Dataset::from_config(
        &cfg.data,
        SplitRole::Test,
        Some(&deployed.meta.classes),
    )?);
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        path.with_file_name(format!("{stem}-eval"))
    });
    let report = evaluate_model(
        &deployed.model,
        test_set,
        &cfg.data,
        &cfg.eval,
        device,
        &out_dir.join("detections"),
        args.save_images,
    )?;
    print_report(&report, &cfg, &out_dir, args.json)
}

fn print_report(
    report: &crate::eval::EvalReport,
    cfg: &ExperimentConfig,
    out_dir: &Path,
    json: bool,
) -> Result<()> {
    if json {
        println!("{}", report.to_json());
    } else {
        eprintln!("{}", report.to_markdown());
        eprintln!("detections in {}", out_dir.join("detections").display());
        println!("mAP ({}): {:.4}", cfg.eval.metric.name(), report.map);
    }
    Ok(())
}
