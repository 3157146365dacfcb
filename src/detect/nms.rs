//! Greedy non-maximum suppression, identical to torchvision's CPU `nms` kernel: boxes are
//! visited by descending score (stable, so equal scores keep index order) and a box is
//! dropped when its IoU with an already kept box is `> iou_threshold` (areas without `+1`,
//! IoU computed in f32). Three implementations give the same indices ([`NmsBackend`]):
//! a greedy scan over host copies (`host`); the pairwise suppression mask computed on the
//! boxes' device (the quadratic part), packed into bits, and scanned greedily on the host,
//! as torchvision's CUDA kernel does (`mask`); and the same block by block, each block
//! tested on the device against the boxes kept so far and within itself, stopping once
//! `max_keep` boxes are kept (`blocks`). CPU tensors use `host` unless told otherwise, GPU
//! tensors `mask` (README "GPU"). Indices return on the input device.
pub use crate::config::NmsBackend;
use tch::{Device, Kind, Tensor};

impl NmsBackend {
    /// The implementation that runs for tensors on `device` (`auto` resolved): `auto` is
    /// `host` for CPU tensors and `mask` for GPU tensors, the choice from before `blocks`
    /// existed, kept until a device times the three in one run (`tests/proposal_nms.rs`);
    /// the one measurement so far, on an H200, put the mask at 16.3 ms in VGG-16's proposal
    /// layer against 11.6 ms for the host scan, and `blocks` has not run on a GPU.
    pub fn resolve(self, device: Device) -> Self {
        match self {
            Self::Auto if device == Device::Cpu => Self::Host,
            Self::Auto => Self::Mask,
            other => other,
        }
    }
}

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
    nms_top_k_with(boxes, scores, iou_threshold, max_keep, NmsBackend::Auto)
}

/// [`nms_top_k`] through the given implementation (the same indices from each).
pub fn nms_top_k_with(
    boxes: &Tensor,
    scores: &Tensor,
    iou_threshold: f64,
    max_keep: Option<usize>,
    backend: NmsBackend,
) -> Tensor {
    run(boxes, scores, None, iou_threshold, max_keep, backend)
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
    run(
        boxes,
        scores,
        Some(idxs),
        iou_threshold,
        max_keep,
        NmsBackend::Auto,
    )
}

fn run(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    max_keep: Option<usize>,
    backend: NmsBackend,
) -> Tensor {
    let device = boxes.device();
    match backend.resolve(device) {
        NmsBackend::Mask => {
            return suppression_mask_nms(boxes, scores, classes, iou_threshold, max_keep)
        }
        NmsBackend::Blocks => {
            return blocked_nms(boxes, scores, classes, iou_threshold, max_keep, NMS_BLOCK)
        }
        NmsBackend::Host | NmsBackend::Auto => {}
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

/// Boxes per block of [`blocked_nms`] through [`NmsBackend::Blocks`]: each block costs one
/// device-to-host copy of its `B x B` bit mask (2048: 512 KiB) and one host-to-device copy
/// of the indices it keeps; 12000 proposals make 6 blocks.
pub const NMS_BLOCK: usize = 2048;

/// The boxes in descending score order (stable: ties by index, NaN first, as
/// `scores.sort(stable=True, descending=True)`), on their device.
struct Sorted {
    /// `[n]` i64: input index of each sorted box.
    order: Tensor,
    /// `[n, 5]` f32: x1, y1, x2, y2 and the area `(x2 - x1) * (y2 - y1)`.
    geometry: Tensor,
    /// `[n]` i64 classes, for batched NMS.
    class: Option<Tensor>,
}

impl Sorted {
    fn new(boxes: &Tensor, scores: &Tensor, classes: Option<&Tensor>) -> Self {
        let (_, order) = scores
            .detach()
            .to_kind(Kind::Float)
            .sort_stable(true, 0, true);
        let sorted = boxes.detach().to_kind(Kind::Float).index_select(0, &order);
        let area = (sorted.select(1, 2) - sorted.select(1, 0))
            * (sorted.select(1, 3) - sorted.select(1, 1));
        let class = classes.map(|c| c.to_kind(Kind::Int64).index_select(0, &order));
        Self {
            geometry: Tensor::cat(&[sorted, area.unsqueeze(1)], 1),
            order,
            class,
        }
    }

    /// Boxes `start..start + len` of the order (views, no copy).
    fn narrow(&self, start: i64, len: i64) -> Self {
        Self {
            order: self.order.narrow(0, start, len),
            geometry: self.geometry.narrow(0, start, len),
            class: self.class.as_ref().map(|c| c.narrow(0, start, len)),
        }
    }

    /// The boxes at sorted positions `positions`.
    fn index_select(&self, positions: &Tensor) -> Self {
        Self {
            order: self.order.index_select(0, positions),
            geometry: self.geometry.index_select(0, positions),
            class: self.class.as_ref().map(|c| c.index_select(0, positions)),
        }
    }

    /// `self` followed by `other`.
    fn cat(&self, other: &Self) -> Self {
        Self {
            order: Tensor::cat(&[&self.order, &other.order], 0),
            geometry: Tensor::cat(&[&self.geometry, &other.geometry], 0),
            class: match (&self.class, &other.class) {
                (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)),
                _ => None,
            },
        }
    }
}

/// `[r, c]` bool: row box `i` suppresses column box `j` (same class, IoU `> threshold`),
/// with the CPU kernel's f32 operations and `std::max` / `std::min` semantics; the row box
/// is the kept one (`a` in the CPU kernel), the column box the candidate.
fn suppression(rows: &Sorted, cols: &Sorted, threshold: f64) -> Tensor {
    let row = |k: i64| rows.geometry.select(1, k).unsqueeze(1);
    let col = |k: i64| cols.geometry.select(1, k).unsqueeze(0);
    let w = positive_part(&(tensor_min(&row(2), &col(2)) - tensor_max(&row(0), &col(0))));
    let h = positive_part(&(tensor_min(&row(3), &col(3)) - tensor_max(&row(1), &col(1))));
    let inter = w * h;
    let iou = &inter / (row(4) + col(4) - &inter);
    let suppresses = iou.gt(threshold);
    match (&rows.class, &cols.class) {
        (Some(a), Some(b)) => suppresses.logical_and(&a.unsqueeze(1).eq_tensor(&b.unsqueeze(0))),
        _ => suppresses,
    }
}

/// `[r, c]` bool packed into `[r, ceil(c / 8)]` u8: column `j` is bit `j % 8` of byte `j / 8`.
fn pack_bits(mask: &Tensor) -> Tensor {
    let (rows, cols) = mask.size2().expect("a 2-d mask");
    let columns = (cols + 7) / 8 * 8;
    let bit_values = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).to_device(mask.device());
    (mask
        .constant_pad_nd([0, columns - cols])
        .view([rows, columns / 8, 8])
        .to_kind(Kind::Uint8)
        * bit_values)
        .sum_dim_intlist(2, false, Kind::Uint8)
}

/// Checks what every NMS entry point requires; `n`.
fn box_count(boxes: &Tensor, scores: &Tensor) -> i64 {
    let n = scores.numel() as i64;
    assert_eq!(
        boxes.size(),
        [n, 4],
        "nms: boxes must be [N, 4] with N = scores.len()"
    );
    n
}

/// What both device paths start from: the box count, the cap, the boxes in descending
/// score order and the threshold as float32 compares it; none when nothing can be kept.
struct DeviceNms {
    n: i64,
    max_keep: usize,
    sorted: Sorted,
    threshold: f64,
}

impl DeviceNms {
    fn new(
        boxes: &Tensor,
        scores: &Tensor,
        classes: Option<&Tensor>,
        iou_threshold: f64,
        max_keep: Option<usize>,
    ) -> Option<Self> {
        let n = box_count(boxes, scores);
        let max_keep = max_keep.unwrap_or(usize::MAX);
        (n > 0 && max_keep > 0).then(|| DeviceNms {
            n,
            max_keep,
            sorted: Sorted::new(boxes, scores, classes),
            threshold: f64::from(f32_threshold(iou_threshold)),
        })
    }
}

/// NMS through the pairwise suppression mask, as tensor ops on the boxes' device: boxes in
/// descending score order (stable), `mask[i][j]` = box i suppresses box j (IoU with the
/// CPU kernel's f32 operations and `std::max` / `std::min` semantics, same class), packed
/// 8 columns a byte and copied to the host, where the greedy scan keeps a box unless a
/// kept one suppresses it. The same result as the CPU path; the `mask` backend, public so
/// that tests run it on the CPU too.
pub fn suppression_mask_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    max_keep: Option<usize>,
) -> Tensor {
    let device = boxes.device();
    let Some(DeviceNms {
        n,
        max_keep,
        sorted,
        threshold,
    }) = DeviceNms::new(boxes, scores, classes, iou_threshold, max_keep)
    else {
        return Tensor::zeros([0], (Kind::Int64, device));
    };
    let mut packed_rows = Vec::new();
    for start in (0..n).step_by(ROW_CHUNK as usize) {
        let rows = sorted.narrow(start, ROW_CHUNK.min(n - start));
        packed_rows.push(pack_bits(&suppression(&rows, &sorted, threshold)));
    }
    let mask = Vec::<u8>::try_from(
        Tensor::cat(&packed_rows, 0)
            .to_device(Device::Cpu)
            .view([-1]),
    )
    .expect("nms: suppression mask is u8");
    let row_bytes = (n as usize).div_ceil(8);
    let order = host_vec::<i64>(&sorted.order, Kind::Int64);
    let kept = scan_suppression_mask(&mask, row_bytes, vec![0; row_bytes], max_keep);
    let keep: Vec<i64> = kept.iter().map(|&i| order[i]).collect();
    Tensor::from_slice(&keep).to_device(device)
}

/// NMS block by block on the boxes' device: boxes in descending score order (stable) are
/// taken `block` at a time; the device computes which of the block's boxes a box kept from
/// the earlier blocks suppresses, and the block's own suppression mask (`block x block`),
/// packed into bits; one copy brings both to the host, whose greedy scan over the block
/// decides what it keeps; those boxes join the kept ones on the device. It stops as soon as
/// `max_keep` boxes are kept, so its work is `N x (kept + block)` pairs, not `N x N`. The
/// same result as the other paths (each box is tested against exactly the kept boxes ranked
/// before it); the `blocks` backend, public so that tests run it on the CPU too.
pub fn blocked_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    max_keep: Option<usize>,
    block: usize,
) -> Tensor {
    assert!(block > 0, "nms: the block size must be positive");
    let device = boxes.device();
    let Some(DeviceNms {
        n,
        max_keep,
        sorted,
        threshold,
    }) = DeviceNms::new(boxes, scores, classes, iou_threshold, max_keep)
    else {
        return Tensor::zeros([0], (Kind::Int64, device));
    };
    let mut kept: Option<Sorted> = None;
    let mut kept_count = 0;
    for start in (0..n).step_by(block) {
        let rows = (block as i64).min(n - start);
        let row_bytes = (rows as usize).div_ceil(8);
        let candidates = sorted.narrow(start, rows);
        let within = pack_bits(&suppression(&candidates, &candidates, threshold));
        let by_kept = match &kept {
            Some(kept) => pack_bits(&suppression(kept, &candidates, threshold).any_dim(0, true)),
            None => Tensor::zeros([1, row_bytes as i64], (Kind::Uint8, device)),
        };
        let host = Vec::<u8>::try_from(
            Tensor::cat(&[by_kept, within], 0)
                .to_device(Device::Cpu)
                .view([-1]),
        )
        .expect("nms: suppression mask is u8");
        let (removed, mask) = host.split_at(row_bytes);
        let new = scan_suppression_mask(mask, row_bytes, removed.to_vec(), max_keep - kept_count);
        if new.is_empty() {
            continue;
        }
        kept_count += new.len();
        let positions: Vec<i64> = new.iter().map(|&i| start + i as i64).collect();
        let chosen = sorted.index_select(&Tensor::from_slice(&positions).to_device(device));
        kept = Some(match kept {
            Some(kept) => kept.cat(&chosen),
            None => chosen,
        });
        if kept_count >= max_keep {
            break;
        }
    }
    match kept {
        Some(kept) => kept.order,
        None => Tensor::zeros([0], (Kind::Int64, device)),
    }
}

/// The greedy scan over a packed suppression mask (`row_bytes` bytes a row, rows and
/// columns in score order, `removed` the columns already suppressed): the rows it keeps,
/// at most `max_keep`; row `i` is kept unless a kept row has bit `i` set.
fn scan_suppression_mask(
    mask: &[u8],
    row_bytes: usize,
    mut removed: Vec<u8>,
    max_keep: usize,
) -> Vec<usize> {
    assert_eq!(removed.len(), row_bytes);
    let rows = mask.len() / row_bytes;
    let mut keep = Vec::new();
    for i in 0..rows {
        if keep.len() >= max_keep {
            break;
        }
        if removed[i / 8] & (1 << (i % 8)) != 0 {
            continue;
        }
        keep.push(i);
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

    /// The device paths (suppression mask in several row chunks; blocks of several sizes,
    /// one larger than the input) keep exactly what the greedy CPU scan keeps, with and
    /// without classes and caps, on clustered boxes with ties.
    #[test]
    fn device_paths_equal_the_greedy_scan() {
        tch::manual_seed(9);
        let n = 2500;
        let opts = (Kind::Float, Device::Cpu);
        let centres = (Tensor::rand([n, 2], opts) * 60.0).round();
        let sizes = Tensor::rand([n, 2], opts) * 30.0 + 1.0;
        let boxes = Tensor::cat(&[&centres - &sizes, &centres + &sizes], 1);
        // Rounded scores: many ties, which every path breaks by index.
        let scores = (Tensor::rand([n], opts) * 50.0).round();
        let classes = Tensor::randint(3, [n], (Kind::Int64, Device::Cpu));
        for threshold in [0.3, 0.5, 0.7] {
            for cap in [None, Some(7), Some(300)] {
                for class in [None, Some(&classes)] {
                    let what = format!(
                        "threshold {threshold}, cap {cap:?}, classes {}",
                        class.is_some()
                    );
                    let greedy = run(&boxes, &scores, class, threshold, cap, NmsBackend::Host);
                    assert!(greedy.size()[0] > 1, "{what}");
                    let mask = suppression_mask_nms(&boxes, &scores, class, threshold, cap);
                    assert!(greedy.equal(&mask), "mask, {what}");
                    for block in [97, 1000, 4096] {
                        let blocks = blocked_nms(&boxes, &scores, class, threshold, cap, block);
                        assert!(greedy.equal(&blocks), "blocks of {block}, {what}");
                    }
                }
            }
        }
    }

    /// Blocks of one box and of a few: every box tested against the kept ones only.
    #[test]
    fn tiny_blocks_equal_the_greedy_scan() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let centres = (Tensor::rand([150, 2], opts) * 30.0).round();
        let sizes = Tensor::rand([150, 2], opts) * 15.0 + 1.0;
        let boxes = Tensor::cat(&[&centres - &sizes, &centres + &sizes], 1);
        let scores = (Tensor::rand([150], opts) * 20.0).round();
        let classes = Tensor::randint(2, [150], (Kind::Int64, Device::Cpu));
        for class in [None, Some(&classes)] {
            let greedy = run(&boxes, &scores, class, 0.5, None, NmsBackend::Host);
            for block in [1, 2, 7, 8, 9] {
                let blocks = blocked_nms(&boxes, &scores, class, 0.5, None, block);
                assert!(greedy.equal(&blocks), "blocks of {block}");
            }
        }
    }

    #[test]
    fn every_backend_through_the_public_entry_point() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let xy = Tensor::rand([300, 2], opts) * 100.0;
        let boxes = Tensor::cat(
            &[&xy, &(&xy + Tensor::rand([300, 2], opts) * 40.0 + 1.0)],
            1,
        );
        let scores = Tensor::rand([300], opts);
        let expected = nms_top_k(&boxes, &scores, 0.5, Some(40));
        assert_eq!(expected.size(), [40]);
        for backend in NmsBackend::ALL {
            let kept = nms_top_k_with(&boxes, &scores, 0.5, Some(40), backend);
            assert!(kept.equal(&expected), "{backend}");
            let empty = nms_top_k_with(
                &boxes.narrow(0, 0, 0),
                &scores.narrow(0, 0, 0),
                0.5,
                None,
                backend,
            );
            assert_eq!(empty.size(), [0], "{backend}");
            assert_eq!(
                nms_top_k_with(&boxes, &scores, 0.5, Some(0), backend).size(),
                [0]
            );
        }
        assert_eq!(NmsBackend::Auto.resolve(Device::Cpu), NmsBackend::Host);
        assert_eq!(NmsBackend::Auto.resolve(Device::Cuda(0)), NmsBackend::Mask);
        assert_eq!(
            NmsBackend::Blocks.resolve(Device::Cuda(0)),
            NmsBackend::Blocks
        );
        assert_eq!(NmsBackend::Host.resolve(Device::Cuda(0)), NmsBackend::Host);
    }
}
