//! Average precision exactly as py-faster-rcnn's `voc_eval` / `voc_ap` (SPEC §3),
//! including numpy's float behaviour: the 11 recall thresholds are `k * 0.1` (the floats
//! of `np.arange(0., 1.1, 0.1)`, so 0.3, 0.6 and 0.7 sit one ulp above the decimal),
//! sums use numpy's pairwise summation, and `max` propagates NaN.
use super::detections::Detection;
use crate::config::ApMetric;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Strict IoU threshold: a match needs `IoU > 0.5`.
pub const IOU_THRESHOLD: f64 = 0.5;

/// Ground truth of one class in one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageGroundTruth {
    /// Annotation boxes, 1-based inclusive pixels.
    pub boxes: Vec<[f64; 4]>,
    pub difficult: Vec<bool>,
}

/// One class's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassAp {
    pub ap: f64,
    /// Non-difficult ground-truth objects.
    pub npos: usize,
}

/// AP of one class. `ground_truth` holds every image of the split (images without an
/// object of the class too); a detection on an image outside it is an error.
///
/// Detections are ranked by descending score with ties kept in input order (numpy's
/// `argsort` leaves tie order to its sorting algorithm; a stable order is the
/// reproducible choice). A class without non-difficult ground truth has AP 0: numpy gives
/// `rec = 0/0 = NaN`, which makes the 11-point AP 0 and the area AP 0 without detections
/// but NaN with some; 0 keeps the mean a number, and like py-faster-rcnn the mean still
/// counts every class.
pub fn class_ap(
    ground_truth: &HashMap<&str, ImageGroundTruth>,
    detections: &[Detection],
    metric: ApMetric,
) -> Result<ClassAp> {
    if metric == ApMetric::Coco {
        bail!("`coco` is not a VOC AP metric (see eval::coco)");
    }
    let npos = ground_truth
        .values()
        .map(|g| g.difficult.iter().filter(|d| !**d).count())
        .sum();
    for d in detections {
        if !(d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite())) {
            bail!(
                "detection on image `{}` has a non-finite score or coordinate",
                d.image_id
            );
        }
    }
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let mut taken: HashMap<&str, Vec<bool>> = HashMap::new();
    let mut tp = Vec::with_capacity(order.len());
    let mut fp = Vec::with_capacity(order.len());
    for &d in &order {
        let det = &detections[d];
        let Some(gt) = ground_truth.get(det.image_id.as_str()) else {
            bail!(
                "a detection names image `{}`, which is not in the image set",
                det.image_id
            );
        };
        let (overlap, best) = best_overlap(det.bbox, &gt.boxes);
        let (mut is_tp, mut is_fp) = (0.0, 0.0);
        if overlap > IOU_THRESHOLD {
            if !gt.difficult[best] {
                let used = taken
                    .entry(det.image_id.as_str())
                    .or_insert_with(|| vec![false; gt.boxes.len()]);
                if used[best] {
                    is_fp = 1.0;
                } else {
                    is_tp = 1.0;
                    used[best] = true;
                }
            }
        } else {
            is_fp = 1.0;
        }
        tp.push(is_tp);
        fp.push(is_fp);
    }
    if npos == 0 {
        return Ok(ClassAp { ap: 0.0, npos });
    }
    cumsum(&mut tp);
    cumsum(&mut fp);
    let rec: Vec<f64> = tp.iter().map(|t| t / npos as f64).collect();
    let prec: Vec<f64> = tp
        .iter()
        .zip(&fp)
        .map(|(t, f)| t / (t + f).max(f64::EPSILON))
        .collect();
    Ok(ClassAp {
        ap: voc_ap(&rec, &prec, metric),
        npos,
    })
}

/// Highest IoU (`+1` pixel areas) of `bb` with `boxes` and the first box reaching it, as
/// `np.max` / `np.argmax`; NaN when any IoU is NaN, -inf without boxes.
fn best_overlap(bb: [f64; 4], boxes: &[[f64; 4]]) -> (f64, usize) {
    let mut best = (f64::NEG_INFINITY, 0);
    for (j, g) in boxes.iter().enumerate() {
        let iw = (bb[2].min(g[2]) - bb[0].max(g[0]) + 1.0).max(0.0);
        let ih = (bb[3].min(g[3]) - bb[1].max(g[1]) + 1.0).max(0.0);
        let inter = iw * ih;
        let union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
            + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0)
            - inter;
        let iou = inter / union;
        if iou.is_nan() {
            return (f64::NAN, j);
        }
        if iou > best.0 {
            best = (iou, j);
        }
    }
    best
}

fn cumsum(values: &mut [f64]) {
    let mut acc = 0.0;
    for v in values {
        acc += *v;
        *v = acc;
    }
}

/// `voc_ap(rec, prec, use_07_metric)`. `coco` is no VOC curve metric ([`class_ap`]
/// refuses it); here it falls back to the area rule.
pub fn voc_ap(rec: &[f64], prec: &[f64], metric: ApMetric) -> f64 {
    match metric {
        ApMetric::Voc07 => {
            let mut ap = 0.0;
            for k in 0..=10 {
                let t = k as f64 * 0.1;
                let p = rec
                    .iter()
                    .zip(prec)
                    .filter(|(r, _)| **r >= t)
                    .map(|(_, p)| *p)
                    .reduce(numpy_maximum)
                    .unwrap_or(0.0);
                ap += p / 11.0;
            }
            ap
        }
        ApMetric::Area | ApMetric::Coco => {
            let mrec: Vec<f64> = std::iter::once(0.0)
                .chain(rec.iter().copied())
                .chain(std::iter::once(1.0))
                .collect();
            let mut mpre: Vec<f64> = std::iter::once(0.0)
                .chain(prec.iter().copied())
                .chain(std::iter::once(0.0))
                .collect();
            for i in (1..mpre.len()).rev() {
                mpre[i - 1] = numpy_maximum(mpre[i - 1], mpre[i]);
            }
            let terms: Vec<f64> = (0..mrec.len() - 1)
                .filter(|&i| mrec[i + 1] != mrec[i])
                .map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1])
                .collect();
            numpy_sum(&terms)
        }
    }
}

/// `np.maximum`: NaN wins.
fn numpy_maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// `np.sum` of a contiguous float64 array: numpy's pairwise summation (8-way unrolled
/// blocks of at most 128), so results match to the last bit.
pub fn numpy_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        return values.iter().fold(0.0, |sum, v| sum + v);
    }
    if n <= 128 {
        let mut r: [f64; 8] = std::array::from_fn(|j| values[j]);
        let full = n - n % 8;
        for block in values[8..full].chunks_exact(8) {
            for j in 0..8 {
                r[j] += block[j];
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &values[full..] {
            sum += v;
        }
        return sum;
    }
    let mut half = n / 2;
    half -= half % 8;
    numpy_sum(&values[..half]) + numpy_sum(&values[half..])
}

/// `np.mean`: pairwise sum divided by the count.
pub fn numpy_mean(values: &[f64]) -> f64 {
    numpy_sum(values) / values.len() as f64
}
