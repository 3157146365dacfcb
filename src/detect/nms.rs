//! Greedy non-maximum suppression, identical to torchvision's CPU `nms` kernel: boxes are
//! visited by descending score (stable, so equal scores keep index order) and a box is
//! dropped when its IoU with an already kept box is `> iou_threshold` (areas without `+1`,
//! IoU computed in f32). CPU tensors run a greedy scan over host copies; on a GPU the
//! pairwise suppression mask is computed on the device (the quadratic part), packed into
//! bits, and only the cheap greedy scan over it runs on the host, as torchvision's CUDA
//! kernel does. Both give the same indices. Indices return on the input device.
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
    if device != Device::Cpu {
        return suppression_mask_nms(boxes, scores, classes, iou_threshold, max_keep);
    }
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

/// Rows of the suppression mask computed per device pass: bounds its temporaries to
/// `ROW_CHUNK * N` elements each (12000 proposals: 96 MB per f32 temporary).
const ROW_CHUNK: i64 = 2048;

/// NMS through the pairwise suppression mask, as tensor ops on the boxes' device: boxes in
/// descending score order (stable), `mask[i][j]` = box i suppresses box j (IoU with the
/// CPU kernel's f32 operations and `std::max` / `std::min` semantics, same class), packed
/// 8 columns a byte and copied to the host, where the greedy scan keeps a box unless a
/// kept one suppresses it. The same result as the CPU path; the device path of [`nms`],
/// public so that tests run it on the CPU too.
pub fn suppression_mask_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    max_keep: Option<usize>,
) -> Tensor {
    let device = boxes.device();
    let n = scores.numel() as i64;
    assert_eq!(
        boxes.size(),
        [n, 4],
        "nms: boxes must be [N, 4] with N = scores.len()"
    );
    let max_keep = max_keep.unwrap_or(usize::MAX);
    if n == 0 || max_keep == 0 {
        return Tensor::zeros([0], (Kind::Int64, device));
    }
    let (_, order) = scores
        .detach()
        .to_kind(Kind::Float)
        .sort_stable(true, 0, true);
    let sorted = boxes.detach().to_kind(Kind::Float).index_select(0, &order);
    let class = classes.map(|c| c.to_kind(Kind::Int64).index_select(0, &order));
    let (x1, y1, x2, y2) = (
        sorted.select(1, 0),
        sorted.select(1, 1),
        sorted.select(1, 2),
        sorted.select(1, 3),
    );
    let area = (&x2 - &x1) * (&y2 - &y1);
    let threshold = f64::from(f32_threshold(iou_threshold));
    let columns = (n + 7) / 8 * 8;
    let bit_values = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).to_device(device);
    let mut packed_rows = Vec::new();
    for start in (0..n).step_by(ROW_CHUNK as usize) {
        let rows = ROW_CHUNK.min(n - start);
        let row = |t: &Tensor| t.narrow(0, start, rows).unsqueeze(1);
        let col = |t: &Tensor| t.unsqueeze(0);
        // Row box i is the kept one (`a` in the CPU kernel), column box j the candidate.
        let w =
            positive_part(&(tensor_min(&row(&x2), &col(&x2)) - tensor_max(&row(&x1), &col(&x1))));
        let h =
            positive_part(&(tensor_min(&row(&y2), &col(&y2)) - tensor_max(&row(&y1), &col(&y1))));
        let inter = w * h;
        let iou = &inter / (row(&area) + col(&area) - &inter);
        let mut suppresses = iou.gt(threshold);
        if let Some(class) = &class {
            suppresses = suppresses.logical_and(&row(class).eq_tensor(&col(class)));
        }
        let padded = suppresses.constant_pad_nd([0, columns - n]);
        let packed = (padded.view([rows, columns / 8, 8]).to_kind(Kind::Uint8) * &bit_values)
            .sum_dim_intlist(2, false, Kind::Uint8);
        packed_rows.push(packed);
    }
    let mask = Vec::<u8>::try_from(
        Tensor::cat(&packed_rows, 0)
            .to_device(Device::Cpu)
            .view([-1]),
    )
    .expect("nms: suppression mask is u8");
    let order = host_vec::<i64>(&order, Kind::Int64);
    let keep = scan_suppression_mask(&mask, (columns / 8) as usize, &order, max_keep);
    Tensor::from_slice(&keep).to_device(device)
}

/// The greedy scan over a packed suppression mask (`row_bytes` bytes a row, rows and
/// columns in score order): keeps `order[i]` unless a kept box's row has bit i set.
fn scan_suppression_mask(
    mask: &[u8],
    row_bytes: usize,
    order: &[i64],
    max_keep: usize,
) -> Vec<i64> {
    let mut removed = vec![0u8; row_bytes];
    let mut keep = Vec::new();
    for (i, &index) in order.iter().enumerate() {
        if keep.len() >= max_keep {
            break;
        }
        if removed[i / 8] & (1 << (i % 8)) != 0 {
            continue;
        }
        keep.push(index);
        let row = &mask[i * row_bytes..(i + 1) * row_bytes];
        for (r, m) in removed.iter_mut().zip(row) {
            *r |= m;
        }
    }
    keep
}

/// `std::max(a, b)` element-wise: `a < b ? b : a` (NaN operands as in the CPU kernel).
fn tensor_max(a: &Tensor, b: &Tensor) -> Tensor {
    b.where_self(&a.lt_tensor(b), a)
}

/// `std::min(a, b)` element-wise: `b < a ? b : a`.
fn tensor_min(a: &Tensor, b: &Tensor) -> Tensor {
    b.where_self(&b.lt_tensor(a), a)
}

/// `std::max(0, x)`: `0 < x ? x : 0`.
fn positive_part(x: &Tensor) -> Tensor {
    x.where_scalarother(&x.gt(0.0), 0.0)
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

    /// The device path (suppression mask, several row chunks) keeps exactly what the greedy
    /// CPU scan keeps, with and without classes and caps, on clustered boxes with ties.
    #[test]
    fn suppression_mask_path_equals_the_greedy_scan() {
        tch::manual_seed(9);
        let n = 2500;
        let opts = (Kind::Float, Device::Cpu);
        let centres = (Tensor::rand([n, 2], opts) * 60.0).round();
        let sizes = Tensor::rand([n, 2], opts) * 30.0 + 1.0;
        let boxes = Tensor::cat(&[&centres - &sizes, &centres + &sizes], 1);
        // Rounded scores: many ties, which both paths break by index.
        let scores = (Tensor::rand([n], opts) * 50.0).round();
        let classes = Tensor::randint(3, [n], (Kind::Int64, Device::Cpu));
        for threshold in [0.3, 0.5, 0.7] {
            for cap in [None, Some(7), Some(300)] {
                let greedy = run(&boxes, &scores, None, threshold, cap);
                let mask = suppression_mask_nms(&boxes, &scores, None, threshold, cap);
                assert!(greedy.equal(&mask), "threshold {threshold}, cap {cap:?}");
                let greedy = run(&boxes, &scores, Some(&classes), threshold, cap);
                let mask = suppression_mask_nms(&boxes, &scores, Some(&classes), threshold, cap);
                assert!(
                    greedy.equal(&mask),
                    "classes, threshold {threshold}, cap {cap:?}"
                );
            }
        }
    }
}
