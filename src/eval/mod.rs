//! PASCAL VOC evaluation (SPEC §3): comp4 detection files and per-class AP exactly as
//! py-faster-rcnn's `voc_eval`, both the 11-point (VOC2007) and the area (VOC2010+)
//! metric, and beside them COCO-style metrics exactly as pycocotools' `COCOeval`
//! ([`coco`]), computed on every evaluation.
//!
//! The detector evaluates through [`write_and_evaluate`]: it writes the comp4 files and
//! scores what it reads back, so `lbwnet eval` and `lbwnet eval-dets` on the same files
//! give the same numbers (the files round scores to 3 decimals).
pub mod coco;
pub mod detections;
pub mod voc_ap;

pub use coco::{coco_evaluate, CocoMetrics};
pub use detections::{comp4_path, read_comp4, write_comp4, Detection};
pub use voc_ap::{class_ap, voc_ap, ClassAp, ImageGroundTruth};

use crate::config::ApMetric;
use crate::data::coco::CocoBox;
use crate::data::voc::{VocAnnotation, VocDataset};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Per-class AP and their mean, and the COCO metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub metric: ApMetric,
    /// VOC metrics: mean over all classes (a class without ground truth counts with AP
    /// 0). `coco`: AP@[.5:.95] (`coco.ap`).
    pub map: f64,
    /// `(class, AP)` in class order. `coco`: each class's AP@[.5:.95], -1 for a class
    /// without non-difficult ground truth (pycocotools' value; `map` leaves it out).
    pub ap: Vec<(String, f64)>,
    /// Non-difficult ground-truth objects per class, in class order.
    pub npos: Vec<usize>,
    /// COCO-style metrics, whatever `metric` is.
    pub coco: CocoMetrics,
}

impl EvalReport {
    /// `{"metric": .., "map": .., "ap": {"<class>": ..}, "coco": {"ap": .., "ap50": ..,
    /// "ap75": .., "ap_small": .., "ap_medium": .., "ap_large": .., "ar1": .., "ar10": ..,
    /// "ar100": ..}}`, classes in order.
    pub fn to_json(&self) -> serde_json::Value {
        let ap: serde_json::Map<String, serde_json::Value> = self
            .ap
            .iter()
            .map(|(class, ap)| (class.clone(), serde_json::json!(ap)))
            .collect();
        serde_json::json!({
            "metric": self.metric.name(),
            "map": self.map,
            "ap": ap,
            "coco": self.coco,
        })
    }

    /// A per-class table with the ground-truth counts and the mAP row.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "| class | objects | AP ({}) |\n|:--|--:|--:|\n",
            self.metric.name()
        );
        for ((class, ap), npos) in self.ap.iter().zip(&self.npos) {
            if *ap < 0.0 {
                // `coco`: no ground truth, left out of the mean.
                let _ = writeln!(out, "| {class} | {npos} | n/a |");
            } else {
                let _ = writeln!(out, "| {class} | {npos} | {ap:.4} |");
            }
        }
        let _ = writeln!(
            out,
            "| **mAP** | {} | **{:.4}** |",
            self.npos.iter().sum::<usize>(),
            self.map
        );
        let c = &self.coco;
        let _ = write!(
            out,
            "\nCOCO (pycocotools bbox; -1: no ground truth)\n\n\
             | AP | AP50 | AP75 | APs | APm | APl | AR1 | AR10 | AR100 |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|--:|\n\
             | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            c.ap, c.ap50, c.ap75, c.ap_small, c.ap_medium, c.ap_large, c.ar1, c.ar10, c.ar100
        );
        out
    }
}

/// Scores `per_class[c]` (detections of `classes[c]`) against the annotations of every
/// image of the split. A detection on an image outside the split is an error.
pub fn evaluate(
    annotations: &[VocAnnotation],
    classes: &[String],
    per_class: &[Vec<Detection>],
    metric: ApMetric,
) -> Result<EvalReport> {
    evaluate_with(annotations, None, classes, per_class, metric)
}

/// [`evaluate`] with the COCO metrics against a COCO-format data set's own boxes
/// ([`coco::coco_evaluate_with`]).
pub fn evaluate_with(
    annotations: &[VocAnnotation],
    coco_boxes: Option<&[Vec<CocoBox>]>,
    classes: &[String],
    per_class: &[Vec<Detection>],
    metric: ApMetric,
) -> Result<EvalReport> {
    if classes.len() != per_class.len() {
        bail!(
            "{} classes but detections for {}",
            classes.len(),
            per_class.len()
        );
    }
    let (coco, coco_class_ap) =
        coco::coco_evaluate_with(annotations, coco_boxes, classes, per_class)?;
    if metric == ApMetric::Coco {
        let npos = (0..classes.len())
            .map(|c| {
                annotations
                    .iter()
                    .flat_map(|a| &a.objects)
                    .filter(|o| o.class_index == c && !o.difficult)
                    .count()
            })
            .collect();
        return Ok(EvalReport {
            metric,
            map: coco.ap,
            ap: classes.iter().cloned().zip(coco_class_ap).collect(),
            npos,
            coco,
        });
    }
    let mut ap = Vec::with_capacity(classes.len());
    let mut npos = Vec::with_capacity(classes.len());
    for (c, (class, detections)) in classes.iter().zip(per_class).enumerate() {
        let ground_truth: HashMap<&str, ImageGroundTruth> = annotations
            .iter()
            .map(|a| {
                let mut gt = ImageGroundTruth::default();
                for o in a.objects.iter().filter(|o| o.class_index == c) {
                    gt.boxes.push(o.bbox.map(f64::from));
                    gt.difficult.push(o.difficult);
                }
                (a.id.as_str(), gt)
            })
            .collect();
        let result = class_ap(&ground_truth, detections, metric)
            .with_context(|| format!("class `{class}`"))?;
        if result.npos == 0 {
            tracing::warn!("class `{class}` has no non-difficult ground truth in this split; its AP counts as 0");
        }
        ap.push((class.clone(), result.ap));
        npos.push(result.npos);
    }
    let values: Vec<f64> = ap.iter().map(|(_, v)| *v).collect();
    Ok(EvalReport {
        metric,
        map: voc_ap::numpy_mean(&values),
        ap,
        npos,
        coco,
    })
}

/// Reads `dets_dir`'s comp4 files for the data set's split and classes and scores them.
pub fn evaluate_comp4(
    dataset: &VocDataset,
    dets_dir: &Path,
    metric: ApMetric,
) -> Result<EvalReport> {
    let per_class = read_comp4(dets_dir, &dataset.split, &dataset.classes)?;
    let coco_boxes = dataset.coco.as_ref().map(|c| c.boxes.as_slice());
    evaluate_with(
        &dataset.annotations,
        coco_boxes,
        &dataset.classes,
        &per_class,
        metric,
    )
    .with_context(|| format!("evaluating the detections in {}", dets_dir.display()))
}

/// Writes the comp4 files into `dets_dir`, then scores what was written.
pub fn write_and_evaluate(
    dataset: &VocDataset,
    dets_dir: &Path,
    per_class: &[Vec<Detection>],
    metric: ApMetric,
) -> Result<EvalReport> {
    write_comp4(dets_dir, &dataset.split, &dataset.classes, per_class)?;
    evaluate_comp4(dataset, dets_dir, metric)
}
