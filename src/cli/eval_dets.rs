//! `lbwnet eval-dets`: score comp4 detection files against a VOC-layout data set's
//! annotations or a COCO instances file (no images needed).
use crate::config::ApMetric;
use crate::data::Dataset;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct EvalDetsArgs {
    /// VOC-layout root (Annotations/, ImageSets/Main/, optional labels.txt).
    #[arg(long, required_unless_present = "coco", conflicts_with = "coco")]
    pub data: Option<PathBuf>,
    /// A COCO instances JSON instead of --data: its image ids name the images in the
    /// comp4 files, its categories (in id order) the classes; the COCO metrics are
    /// scored against its own boxes, as pycocotools does.
    #[arg(long, value_name = "INSTANCES.json")]
    pub coco: Option<PathBuf>,
    /// Image set to score, `ImageSets/Main/<split>.txt` (with --coco: the split name in
    /// the comp4 file names).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Folder with `comp4_det_<split>_<class>.txt` files (a missing file: no detections).
    #[arg(long)]
    pub dets: PathBuf,
    /// `voc07`, `area`, or `coco` (map = COCO AP@[.5:.95]); the COCO metrics are
    /// reported with every metric.
    #[arg(long, value_enum, default_value_t = ApMetric::Voc07)]
    pub metric: ApMetric,
    /// Print one JSON line `{"metric":..,"map":..,"ap":{"<class>":..},"coco":{"ap":..,
    /// "ap50":..,"ap75":..,"ap_small":..,"ap_medium":..,"ap_large":..,"ar1":..,"ar10":..,
    /// "ar100":..}}` instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalDetsArgs) -> Result<()> {
    let dataset = match (&args.data, &args.coco) {
        (_, Some(json)) => {
            let images = json.parent().unwrap_or(Path::new("."));
            Dataset::open_coco(json, images, &args.split, None, false)?
        }
        (Some(root), None) => Dataset::open(root, &args.split, None)?,
        (None, None) => bail!("say which data set: --data VOC_ROOT or --coco INSTANCES.json"),
    };
    let report = crate::eval::evaluate_comp4(&dataset, &args.dets, args.metric)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
        println!("mAP ({}): {:.4}", report.metric.name(), report.map);
    }
    Ok(())
}
