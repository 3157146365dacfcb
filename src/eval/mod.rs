//! PASCAL VOC evaluation (SPEC §3): comp4 detection files and per-class AP exactly as
//! py-faster-rcnn's `voc_eval`, both the 11-point (VOC2007) and the area (VOC2010+)
//! metric.
//!
//! The detector evaluates through [`write_and_evaluate`]: it writes the comp4 files and
//! scores what it reads back, so `lbwnet eval` and `lbwnet eval-dets` on the same files
//! give the same numbers (the files round scores to 3 decimals).
pub mod detections;
pub mod voc_ap;

pub use detections::{comp4_path, read_comp4, write_comp4, Detection};
pub use voc_ap::{class_ap, voc_ap, ClassAp, ImageGroundTruth};

use crate::config::ApMetric;
use crate::data::voc::{VocAnnotation, VocDataset};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Per-class AP and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub metric: ApMetric,
    /// Mean over all classes (a class without ground truth counts with AP 0).
    pub map: f64,
    /// `(class, AP)` in class order.
    pub ap: Vec<(String, f64)>,
    /// Non-difficult ground-truth objects per class, in class order.
    pub npos: Vec<usize>,
}

impl EvalReport {
    /// `{"metric": .., "map": .., "ap": {"<class>": ..}}`, classes in order.
    pub fn to_json(&self) -> serde_json::Value {
        let ap: serde_json::Map<String, serde_json::Value> = self
            .ap
            .iter()
            .map(|(class, ap)| (class.clone(), serde_json::json!(ap)))
            .collect();
        serde_json::json!({ "metric": self.metric.name(), "map": self.map, "ap": ap })
    }

    /// A per-class table with the ground-truth counts and the mAP row.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "| class | objects | AP ({}) |\n|:--|--:|--:|\n",
            self.metric.name()
        );
        for ((class, ap), npos) in self.ap.iter().zip(&self.npos) {
            let _ = writeln!(out, "| {class} | {npos} | {ap:.4} |");
        }
        let _ = writeln!(
            out,
            "| **mAP** | {} | **{:.4}** |",
            self.npos.iter().sum::<usize>(),
            self.map
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
    if classes.len() != per_class.len() {
        bail!(
            "{} classes but detections for {}",
            classes.len(),
            per_class.len()
        );
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
    })
}

/// Reads `dets_dir`'s comp4 files for the data set's split and classes and scores them.
pub fn evaluate_comp4(
    dataset: &VocDataset,
    dets_dir: &Path,
    metric: ApMetric,
) -> Result<EvalReport> {
    let per_class = read_comp4(dets_dir, &dataset.split, &dataset.classes)?;
    evaluate(&dataset.annotations, &dataset.classes, &per_class, metric)
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
