//! Greedy non-maximum suppression, identical to torchvision's CPU `nms` kernel: boxes are
//! visited by descending score (stable, so equal scores keep index order) and a box is
//! dropped when its IoU with an already kept box is `> iou_threshold` (areas without `+1`,
//! IoU computed in f32). Runs on the CPU over f32 copies; indices return on the input device.
use tch::{Device, Kind, Tensor};

/// Indices (i64) of the boxes kept by NMS, by descending score.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Tensor {
    nms_top_k(boxes, scores, iou_threshold, None)
}

/// [`nms`] that stops once `max_keep` boxes are kept: the first `max_keep` of `nms`'s result.
pub fn nms_top_k(
    boxes: &Tensor,
    scores: &Tensor,
    iou_threshold: f64,
    max_keep: Option<usize>,
) -> Tensor {
    run(boxes, scores, None, iou_threshold, max_keep)
}

/// NMS applied independently per class `idxs [N]`; the kept indices of all classes together,
/// by descending score (torchvision's `batched_nms`).
pub fn batched_nms(boxes: &Tensor, scores: &Tensor, idxs: &Tensor, iou_threshold: f64) -> Tensor {
    batched_nms_top_k(boxes, scores, idxs, iou_threshold, None)
}

/// [`batched_nms`] that stops once `max_keep` boxes are kept (a prefix of its result).
pub fn batched_nms_top_k(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &Tensor,
    iou_threshold: f64,
    max_keep: Option<usize>,
) -> Tensor {
    run(boxes, scores, Some(idxs), iou_threshold, max_keep)
}

fn run(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    max_keep: Option<usize>,
) -> Tensor {
    let device = boxes.device();
    let boxes = host_vec::<f32>(boxes, Kind::Float);
    let scores = host_vec::<f32>(scores, Kind::Float);
    let classes = classes.map(|c| host_vec::<i64>(c, Kind::Int64));
    let keep = greedy_nms(
        &boxes,
        &scores,
        classes.as_deref(),
        iou_threshold,
        max_keep.unwrap_or(usize::MAX),
    );
    Tensor::from_slice(&keep).to_device(device)
}

/// The tensor's values as a flat host vector of `kind`.
fn host_vec<T>(t: &Tensor, kind: Kind) -> Vec<T>
where
    for<'a> Vec<T>: TryFrom<&'a Tensor, Error = tch::TchError>,
{
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(kind)
        .contiguous()
        .view([-1]);
    Vec::<T>::try_from(&flat).unwrap_or_else(|e| panic!("nms: cannot read a {kind:?} tensor: {e}"))
}

/// Largest f32 `t` with `t <= threshold`: for f32 `x`, `x > t` exactly when
/// `x as f64 > threshold`, so the hot loop can compare in f32 (torchvision compares the f32
/// IoU with the f64 threshold).
fn f32_threshold(threshold: f64) -> f32 {
    let rounded = threshold as f32;
    if rounded as f64 > threshold {
        rounded.next_down()
    } else {
        rounded
    }
}

/// Kept boxes of one class in structure-of-arrays form, for a vectorizable overlap scan.
#[derive(Default)]
struct KeptBoxes {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

/// Kept boxes are scanned in blocks without early exit inside a block, so the block loop
/// compiles to SIMD; between blocks the scan stops at the first suppressing box.
const SCAN_BLOCK: usize = 64;

impl KeptBoxes {
    fn push(&mut self, b: &[f32], area: f32) {
        self.x1.push(b[0]);
        self.y1.push(b[1]);
        self.x2.push(b[2]);
        self.y2.push(b[3]);
        self.area.push(area);
    }

    /// Whether any kept box has IoU `> threshold` with box `b` (`threshold` from
    /// [`f32_threshold`]), with torchvision's operation order: `inter / (area_kept + area_b - inter)`.
    fn suppresses(&self, b: &[f32], area: f32, threshold: f32) -> bool {
        let (bx1, by1, bx2, by2) = (b[0], b[1], b[2], b[3]);
        let mut start = 0;
        while start < self.area.len() {
            let end = (start + SCAN_BLOCK).min(self.area.len());
            let x1 = &self.x1[start..end];
            let n = x1.len();
            let (y1, x2, y2, kept_area) = (
                &self.y1[start..start + n],
                &self.x2[start..start + n],
                &self.y2[start..start + n],
                &self.area[start..start + n],
            );
            let mut hit = false;
            for i in 0..n {
                let w = max(0.0, min(x2[i], bx2) - max(x1[i], bx1));
                let h = max(0.0, min(y2[i], by2) - max(y1[i], by1));
                let inter = w * h;
                hit |= inter / (kept_area[i] + area - inter) > threshold;
            }
            if hit {
                return true;
            }
            start = end;
        }
        false
    }
}

/// `std::max` / `std::min` (also for NaN operands), which torchvision's kernel uses.
fn max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

fn min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// Score order of torchvision's `scores.sort(stable=True, descending=True)`: NaN first, then
/// descending, ties (including `-0.0 == 0.0`) by index.
fn descending_score_order(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (scores[i], scores[j]);
        match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (false, false) => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
        }
    });
    order
}

/// Greedy NMS over `boxes` (`4 * n` f32) and `scores` (`n`); with `classes`, boxes only
/// suppress boxes of their own class. A box is suppressed exactly when a kept box of higher
/// rank overlaps it too much, so checking each box against the kept ones in rank order gives
/// the classic algorithm's result and can stop after `max_keep` boxes.
fn greedy_nms(
    boxes: &[f32],
    scores: &[f32],
    classes: Option<&[i64]>,
    iou_threshold: f64,
    max_keep: usize,
) -> Vec<i64> {
    let n = scores.len();
    assert_eq!(
        boxes.len(),
        4 * n,
        "nms: boxes must be [N, 4] with N = scores.len()"
    );
    if let Some(c) = classes {
        assert_eq!(c.len(), n, "batched_nms: idxs must have one class per box");
    }
    let threshold = f32_threshold(iou_threshold);
    let mut kept_per_class: std::collections::HashMap<i64, KeptBoxes> =
        std::collections::HashMap::new();
    let mut keep = Vec::new();
    for i in descending_score_order(scores) {
        if keep.len() >= max_keep {
            break;
        }
        let b = &boxes[4 * i..4 * i + 4];
        let area = (b[2] - b[0]) * (b[3] - b[1]);
        let class = classes.map_or(0, |c| c[i]);
        let kept = kept_per_class.entry(class).or_default();
        if !kept.suppresses(b, area, threshold) {
            kept.push(b, area);
            keep.push(i as i64);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_threshold_matches_f64_comparison() {
        for threshold in [0.7, 0.3, 0.5, 0.1, 1.0 / 3.0, 0.0, 1.0] {
            let t = f32_threshold(threshold);
            let below = t;
            let above = t.next_up();
            assert!((below as f64) <= threshold);
            assert!((above as f64) > threshold);
        }
    }

    #[test]
    fn cap_gives_a_prefix() {
        let boxes: Vec<f32> = (0..40)
            .flat_map(|i| {
                let x = (i % 7) as f32 * 3.0;
                let y = (i / 7) as f32 * 2.5;
                [x, y, x + 10.0, y + 8.0]
            })
            .collect();
        let scores: Vec<f32> = (0..40).map(|i| ((i * 37) % 40) as f32 / 40.0).collect();
        let all = greedy_nms(&boxes, &scores, None, 0.4, usize::MAX);
        assert!(all.len() > 3);
        for cap in 0..all.len() {
            assert_eq!(greedy_nms(&boxes, &scores, None, 0.4, cap), all[..cap]);
        }
    }
}
