//! `lbwnet gen-data`: write the synthetic data set in the PASCAL VOC layout, from flags or
//! from an experiment config's `data.root` and `data.synthetic` (explicit flags win); with
//! `--format coco` also as COCO instances files beside it (same images and boxes).
use crate::config::{DataConfig, DataFormat, ExperimentConfig, SyntheticConfig};
use crate::data::synthetic::{self, Existing};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GenDataArgs {
    /// Output folder (the VOC-layout root); defaults to the config's `data.root`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images in trainval (split 4:1 into train and val).
    #[arg(long)]
    pub train: Option<usize>,
    /// Images in test.
    #[arg(long)]
    pub test: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image size WIDTHxHEIGHT, e.g. 320x240.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Take the output folder and settings from this experiment config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config value, e.g. `--set data.synthetic.seed=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub overrides: Vec<String>,
    /// Replace an existing synthetic data set made with other settings.
    #[arg(long)]
    pub force: bool,
    /// `coco`: also write `annotations/instances_<split>.json` for every split (the same
    /// images and boxes, read back by `data.format: coco`). Default: the config's
    /// `data.format`, else voc.
    #[arg(long, value_enum)]
    pub format: Option<DataFormat>,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    parsed.ok_or_else(|| format!("`{text}` is not a size like 320x240"))
}

pub fn run(args: GenDataArgs) -> Result<()> {
    let mut format = args.format;
    let (config_root, mut spec) = match &args.config {
        Some(path) => {
            let config = ExperimentConfig::load(path, &args.overrides)?;
            format = format.or(Some(config.data.format));
            let spec = config.data.synthetic.with_context(|| {
                format!(
                    "config {}: key `data.synthetic` is not set, so the config reads real data",
                    path.display()
                )
            })?;
            (Some(config.data.root), spec)
        }
        None => (None, SyntheticConfig::default()),
    };
    let Some(out) = args.out.or(config_root) else {
        bail!("say where to write the data set: --out DIR, or --config FILE with data.root");
    };
    spec.train = args.train.unwrap_or(spec.train);
    spec.test = args.test.unwrap_or(spec.test);
    spec.seed = args.seed.unwrap_or(spec.seed);
    if let Some((width, height)) = args.size {
        (spec.width, spec.height) = (width, height);
    }
    let described = format!(
        "{} trainval + {} test images of {}x{}, seed {}",
        spec.train, spec.test, spec.width, spec.height, spec.seed
    );
    let coco = format == Some(DataFormat::Coco);
    match synthetic::inspect(&out, &spec)? {
        Existing::Same if !args.force => {
            println!(
                "{} already holds the synthetic data set ({described})",
                out.display()
            );
            if coco {
                synthetic::ensure_coco(&out)?;
                print_coco_files(&out);
            }
            return Ok(());
        }
        Existing::Different(found) if !args.force => {
            bail!(
                "{} holds a synthetic data set made with {found}; pass --force to replace it",
                out.display()
            )
        }
        Existing::Missing => synthetic::generate(&out, &spec)?,
        _ => synthetic::regenerate(&out, &spec)?,
    }
    println!("wrote {} ({described})", out.display());
    if coco {
        synthetic::ensure_coco(&out)?;
        print_coco_files(&out);
    }
    Ok(())
}

/// Where the COCO copy is, as `data.coco` keys (their defaults under `data.root`).
fn print_coco_files(root: &Path) {
    println!(
        "COCO format: {} and {} (file names relative to {}; data.format: coco reads them from data.root)",
        DataConfig::default_coco_json(root, "trainval").display(),
        DataConfig::default_coco_json(root, "test").display(),
        root.display()
    );
}
