//! COCO-style box metrics beside VOC's (SPEC §3 `coco`): AP@[.5:.95], AP50, AP75, AP for
//! small/medium/large objects and AR@1/10/100, computed as pycocotools' `COCOeval` with
//! `iouType='bbox'` and its default parameters, down to numpy's floats.
//!
//! A COCO-format data set is scored against its file's own boxes, areas and crowds
//! ([`coco_evaluate_with`]); its images and classes are in pycocotools' order (ascending
//! image and category ids), so the numbers are pycocotools' for the file.
//!
//! VOC data becomes COCO data by a fixed rule: a ground-truth box or a detection
//! `(xmin, ymin, xmax, ymax)` (1-based inclusive pixels) is the COCO box
//! `[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]` with area `w * h`, and a
//! `difficult` object is a crowd (`iscrowd: 1`) annotation. Image `i` of the split is COCO
//! image id `i + 1` and class `c` category id `c + 1`, so images and classes keep their
//! order; within an image and class, ground truth keeps the annotation's order and
//! detections the order of the input list.
//!
//! What `COCOeval` does, and this module with it:
//! - per image and class, detections are ranked by descending score (a stable sort) and
//!   cut to the largest `maxDets` (100); ground truth is reordered so that the ignored
//!   objects (crowds, and objects whose area is outside the range) come last;
//! - IoU as `maskUtils.iou`: the intersection is taken over the detection's own area
//!   (not the union) for a crowd;
//! - at each IoU threshold `t` the detections, best first, take the gt with the highest
//!   IoU `>= t` (a later gt wins a tie) that is still free or a crowd, never moving from a
//!   regular gt to an ignored one; a detection matched to an ignored gt is ignored, and so
//!   is an unmatched one whose own area is outside the range;
//! - per class, area range and `maxDet` the detections of all images are merged by
//!   descending score (stable, images in order), precision `tp / (fp + tp + eps)` is made
//!   monotone from the right and read at the 101 recall thresholds with
//!   `searchsorted(side='left')` (0 past the last detection); recall is the final
//!   `tp / npig`. A class without a non-ignored gt in the range gets -1 there;
//! - each summary number is numpy's mean (pairwise summation) over the entries above -1,
//!   or -1 when there are none.
use super::detections::Detection;
use super::voc_ap::numpy_mean;
use crate::data::coco::CocoBox;
use crate::data::voc::VocAnnotation;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;

/// The summary of `COCOeval.summarize()` for boxes (its first nine `stats`). Each value is
/// -1 when no class has a non-ignored ground-truth object in the setting.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoMetrics {
    /// AP@[.5:.95], all areas, 100 detections per image.
    pub ap: f64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP@[.5:.95] for objects of area below 32².
    pub ap_small: f64,
    /// AP@[.5:.95] for objects of area between 32² and 96².
    pub ap_medium: f64,
    /// AP@[.5:.95] for objects of area above 96².
    pub ap_large: f64,
    /// AR@[.5:.95] with 1 detection per image.
    pub ar1: f64,
    /// AR@[.5:.95] with 10 detections per image.
    pub ar10: f64,
    /// AR@[.5:.95] with 100 detections per image.
    pub ar100: f64,
}

/// `maxDets`, ascending.
pub const MAX_DETS: [usize; 3] = [1, 10, 100];

/// `areaRng` (inclusive bounds): all, small, medium, large.
pub const AREA_RANGES: [(f64, f64); 4] =
    [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];

const T: usize = 10;
const R: usize = 101;
const A: usize = AREA_RANGES.len();
const M: usize = MAX_DETS.len();

/// `np.linspace(start, stop, num)` as numpy computes it: `i * step + start` with
/// `step = (stop - start) / (num - 1)`, the last value set to `stop`.
fn numpy_linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut values: [f64; N] = std::array::from_fn(|i| i as f64 * step + start);
    values[N - 1] = stop;
    values
}

/// `iouThrs`: `np.linspace(.5, .95, 10)`.
pub fn iou_thresholds() -> [f64; 10] {
    numpy_linspace(0.5, 0.95)
}

/// `recThrs`: `np.linspace(0, 1, 101)`.
pub fn recall_thresholds() -> [f64; 101] {
    numpy_linspace(0.0, 1.0)
}

/// The COCO box `[x, y, w, h]` of a VOC box `(xmin, ymin, xmax, ymax)` (the inverse of
/// how a COCO-format data set is read).
pub use crate::data::coco::voc_to_coco_box;

/// `maskUtils.iou` of one detection and one ground-truth box (`bbIou`).
fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let (da, ga) = (d[2] * d[3], g[2] * g[3]);
    let inter = w * h;
    inter / if crowd { da } else { da + ga - inter }
}

struct Gt {
    bbox: [f64; 4],
    area: f64,
    crowd: bool,
}

struct Dt {
    bbox: [f64; 4],
    area: f64,
    score: f64,
}

/// One kept detection (rank `< 100` within its image) of one class, in image order then
/// rank order: its evaluation at every area range and IoU threshold.
struct DtEval {
    score: f64,
    rank: usize,
    /// `dtm != 0` and `dtIgnore`, `[area][threshold]`.
    matched: [[bool; T]; A],
    ignored: [[bool; T]; A],
}

/// Descending score, ties equal (numpy's mergesort of `-score` is stable).
fn by_descending_score(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// `evaluateImg` of one image and class for every area range: appends the kept
/// detections to `out` and adds the non-ignored gt counts to `npig`.
fn evaluate_image(
    gts: &[Gt],
    dts: &mut Vec<&Dt>,
    iou_thrs: &[f64; T],
    out: &mut Vec<DtEval>,
    npig: &mut [usize; A],
) {
    dts.sort_by(|a, b| by_descending_score(a.score, b.score));
    dts.truncate(MAX_DETS[M - 1]);
    // ious[d][g], ground truth in its own order.
    let ious: Vec<Vec<f64>> = dts
        .iter()
        .map(|d| {
            gts.iter()
                .map(|g| box_iou(&d.bbox, &g.bbox, g.crowd))
                .collect()
        })
        .collect();
    let first = out.len();
    out.extend(dts.iter().enumerate().map(|(rank, d)| DtEval {
        score: d.score,
        rank,
        matched: [[false; T]; A],
        ignored: [[false; T]; A],
    }));
    let evals = &mut out[first..];
    for (a, &(lo, hi)) in AREA_RANGES.iter().enumerate() {
        let outside = |area: f64| area < lo || area > hi;
        let gt_ignored: Vec<bool> = gts.iter().map(|g| g.crowd || outside(g.area)).collect();
        npig[a] += gt_ignored.iter().filter(|i| !**i).count();
        // Non-ignored first, each group in its own order.
        let mut order: Vec<usize> = (0..gts.len()).collect();
        order.sort_by_key(|&g| gt_ignored[g]);
        for (t, &thr) in iou_thrs.iter().enumerate() {
            let mut taken = vec![false; gts.len()];
            for (d, eval) in evals.iter_mut().enumerate() {
                let mut best = thr.min(1.0 - 1e-10);
                let mut matched: Option<usize> = None;
                for &g in &order {
                    if taken[g] && !gts[g].crowd {
                        continue;
                    }
                    if matched.is_some_and(|m| !gt_ignored[m]) && gt_ignored[g] {
                        break;
                    }
                    if ious[d][g] < best {
                        continue;
                    }
                    best = ious[d][g];
                    matched = Some(g);
                }
                if let Some(g) = matched {
                    taken[g] = true;
                    eval.matched[a][t] = true;
                    eval.ignored[a][t] = gt_ignored[g];
                } else {
                    eval.ignored[a][t] = outside(dts[d].area);
                }
            }
        }
    }
}

/// `accumulate` and `summarize`'s means: the per-class arrays.
struct Accumulated {
    /// `precision[t][r][k][a][m]`, numpy's C order.
    precision: Vec<f64>,
    /// `recall[t][k][a][m]`.
    recall: Vec<f64>,
    classes: usize,
}

impl Accumulated {
    fn p_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        (((t * R + r) * self.classes + k) * A + a) * M + m
    }

    fn r_index(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        ((t * self.classes + k) * A + a) * M + m
    }

    /// `_summarize(ap=1, iouThr, areaRng, maxDets)`, optionally for one class.
    fn mean_precision(&self, t: Option<usize>, a: usize, m: usize, class: Option<usize>) -> f64 {
        let ts = t.map_or(0..T, |t| t..t + 1);
        let ks = class.map_or(0..self.classes, |k| k..k + 1);
        let mut values = Vec::new();
        for t in ts {
            for r in 0..R {
                for k in ks.clone() {
                    values.push(self.precision[self.p_index(t, r, k, a, m)]);
                }
            }
        }
        mean_above_minus_one(values)
    }

    /// `_summarize(ap=0, areaRng, maxDets)` over all thresholds.
    fn mean_recall(&self, a: usize, m: usize) -> f64 {
        let mut values = Vec::new();
        for t in 0..T {
            for k in 0..self.classes {
                values.push(self.recall[self.r_index(t, k, a, m)]);
            }
        }
        mean_above_minus_one(values)
    }
}

fn mean_above_minus_one(mut values: Vec<f64>) -> f64 {
    values.retain(|v| *v > -1.0);
    if values.is_empty() {
        -1.0
    } else {
        numpy_mean(&values)
    }
}

/// Fills class `k`'s entries of `acc` from its evaluated detections (image order, then
/// rank) and non-ignored gt counts.
fn accumulate_class(acc: &mut Accumulated, k: usize, evals: &[DtEval], npig: &[usize; A]) {
    let rec_thrs = recall_thresholds();
    // One stable sort serves every maxDet: a subset keeps its relative order.
    let mut order: Vec<usize> = (0..evals.len()).collect();
    order.sort_by(|&a, &b| by_descending_score(evals[a].score, evals[b].score));
    let mut rc = Vec::with_capacity(order.len());
    let mut pr = Vec::with_capacity(order.len());
    for (a, &npig) in npig.iter().enumerate() {
        if npig == 0 {
            continue;
        }
        for (m, &max_det) in MAX_DETS.iter().enumerate() {
            for t in 0..T {
                rc.clear();
                pr.clear();
                let (mut tp, mut fp) = (0u64, 0u64);
                for e in order.iter().map(|&j| &evals[j]) {
                    if e.rank >= max_det {
                        continue;
                    }
                    if !e.ignored[a][t] {
                        if e.matched[a][t] {
                            tp += 1;
                        } else {
                            fp += 1;
                        }
                    }
                    let (tp, fp) = (tp as f64, fp as f64);
                    rc.push(tp / npig as f64);
                    pr.push(tp / (fp + tp + f64::EPSILON));
                }
                let ri = acc.r_index(t, k, a, m);
                acc.recall[ri] = rc.last().copied().unwrap_or(0.0);
                for i in (1..pr.len()).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for (r, &thr) in rec_thrs.iter().enumerate() {
                    let i = rc.partition_point(|&v| v < thr);
                    let pi = acc.p_index(t, r, k, a, m);
                    acc.precision[pi] = pr.get(i).copied().unwrap_or(0.0);
                }
            }
        }
    }
}

/// COCO metrics of `per_class[c]` (detections of `classes[c]`) against the annotations
/// of every image of the split, and each class's AP@[.5:.95] (-1 for a class without a
/// non-difficult object, which the mean leaves out). A detection on an image outside the
/// split, or with a non-finite score or coordinate, is an error.
pub fn coco_evaluate(
    annotations: &[VocAnnotation],
    classes: &[String],
    per_class: &[Vec<Detection>],
) -> Result<(CocoMetrics, Vec<f64>)> {
    coco_evaluate_with(annotations, None, classes, per_class)
}

/// [`coco_evaluate`] of a COCO-format data set against its file's own boxes and areas:
/// `originals[i][k]` is object `k` of image `i` as the file gives it (a VOC box converted
/// back would differ in the last bits of non-integer coordinates, and the area ranges read
/// the file's `area`, as pycocotools does). `None`: the VOC boxes converted.
pub fn coco_evaluate_with(
    annotations: &[VocAnnotation],
    originals: Option<&[Vec<CocoBox>]>,
    classes: &[String],
    per_class: &[Vec<Detection>],
) -> Result<(CocoMetrics, Vec<f64>)> {
    if let Some(originals) = originals {
        let fits = originals.len() == annotations.len()
            && originals
                .iter()
                .zip(annotations)
                .all(|(o, a)| o.len() == a.objects.len());
        if !fits {
            bail!("the COCO boxes do not match the annotations they belong to");
        }
    }
    if classes.len() != per_class.len() {
        bail!(
            "{} classes but detections for {}",
            classes.len(),
            per_class.len()
        );
    }
    let mut image_index: HashMap<&str, usize> = HashMap::with_capacity(annotations.len());
    for (i, a) in annotations.iter().enumerate() {
        image_index.entry(a.id.as_str()).or_insert(i);
    }
    let n_images = annotations.len();
    let n_classes = classes.len();
    // gts[k][i]
    let mut gts: Vec<Vec<Vec<Gt>>> = (0..n_classes)
        .map(|_| (0..n_images).map(|_| Vec::new()).collect())
        .collect();
    for (i, a) in annotations.iter().enumerate() {
        for (k, o) in a.objects.iter().enumerate() {
            let Some(per_image) = gts.get_mut(o.class_index) else {
                bail!(
                    "image `{}` has an object of class {} but there are {n_classes} classes",
                    a.id,
                    o.class_index
                );
            };
            let (bbox, area) = match originals {
                Some(originals) => (originals[i][k].bbox, originals[i][k].area),
                None => {
                    let bbox = voc_to_coco_box(o.bbox.map(f64::from));
                    (bbox, bbox[2] * bbox[3])
                }
            };
            per_image[i].push(Gt {
                bbox,
                area,
                crowd: o.difficult,
            });
        }
    }
    let iou_thrs = iou_thresholds();
    let mut acc = Accumulated {
        precision: vec![-1.0; T * R * n_classes * A * M],
        recall: vec![-1.0; T * n_classes * A * M],
        classes: n_classes,
    };
    for (k, (class, detections)) in classes.iter().zip(per_class).enumerate() {
        let mut dts: Vec<Vec<Dt>> = (0..n_images).map(|_| Vec::new()).collect();
        for d in detections {
            if !(d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite())) {
                bail!(
                    "class `{class}`: detection on image `{}` has a non-finite score or coordinate",
                    d.image_id
                );
            }
            let Some(&i) = image_index.get(d.image_id.as_str()) else {
                bail!(
                    "class `{class}`: a detection names image `{}`, which is not in the image set",
                    d.image_id
                );
            };
            let bbox = voc_to_coco_box(d.bbox);
            dts[i].push(Dt {
                bbox,
                area: bbox[2] * bbox[3],
                score: d.score,
            });
        }
        let mut evals = Vec::new();
        let mut npig = [0usize; A];
        let mut ranked: Vec<&Dt> = Vec::new();
        for (image_gts, image_dts) in gts[k].iter().zip(&dts) {
            ranked.clear();
            ranked.extend(image_dts.iter());
            evaluate_image(image_gts, &mut ranked, &iou_thrs, &mut evals, &mut npig);
        }
        accumulate_class(&mut acc, k, &evals, &npig);
    }
    let at = |thr: f64| iou_thrs.iter().position(|&t| t == thr);
    let all = MAX_DETS.len() - 1;
    // `_summarize` with a threshold that is not in `iouThrs` selects nothing: -1.
    let precision_at = |thr: f64| match at(thr) {
        Some(t) => acc.mean_precision(Some(t), 0, all, None),
        None => -1.0,
    };
    let metrics = CocoMetrics {
        ap: acc.mean_precision(None, 0, all, None),
        ap50: precision_at(0.5),
        ap75: precision_at(0.75),
        ap_small: acc.mean_precision(None, 1, all, None),
        ap_medium: acc.mean_precision(None, 2, all, None),
        ap_large: acc.mean_precision(None, 3, all, None),
        ar1: acc.mean_recall(0, 0),
        ar10: acc.mean_recall(0, 1),
        ar100: acc.mean_recall(0, 2),
    };
    let class_ap = (0..n_classes)
        .map(|k| acc.mean_precision(None, 0, all, Some(k)))
        .collect();
    Ok((metrics, class_ap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpys() {
        let iou = iou_thresholds();
        assert_eq!(iou[0], 0.5);
        assert_eq!(iou[5], 0.75);
        assert_eq!(iou[9], 0.95);
        let rec = recall_thresholds();
        assert_eq!((rec[0], rec[100]), (0.0, 1.0));
        // np.linspace(0, 1, 101)[3] is 0.03 (3 * 0.01), not 0.030000000000000002.
        assert_eq!(rec[3], 3.0 * 0.01);
    }

    #[test]
    fn crowd_iou_divides_by_the_detection_area() {
        let g = [0.0, 0.0, 10.0, 10.0];
        let d = [0.0, 0.0, 5.0, 10.0];
        assert_eq!(box_iou(&d, &g, false), 0.5);
        assert_eq!(box_iou(&d, &g, true), 1.0);
        assert_eq!(box_iou(&[20.0, 0.0, 5.0, 5.0], &g, false), 0.0);
    }
}
