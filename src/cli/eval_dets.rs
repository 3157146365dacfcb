//! `lbwnet eval-dets`: score comp4 detection files against a VOC-layout data set's
//! annotations (no images needed).
use crate::config::ApMetric;
use crate::data::voc::VocDataset;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalDetsArgs {
    /// VOC-layout root (Annotations/, ImageSets/Main/, optional labels.txt).
    #[arg(long)]
    pub data: PathBuf,
    /// Image set to score, `ImageSets/Main/<split>.txt`.
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
    let dataset = VocDataset::open(&args.data, &args.split, None)?;
    let report = crate::eval::evaluate_comp4(&dataset, &args.dets, args.metric)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
        println!("mAP ({}): {:.4}", report.metric.name(), report.map);
    }
    Ok(())
}
