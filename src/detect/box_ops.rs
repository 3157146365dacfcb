//! Box arithmetic on `[N, 4]` tensors of `(x1, y1, x2, y2)`, as torchvision.ops (no `+1`).
use tch::{Kind, Tensor};

/// `(x2 - x1) * (y2 - y1)` per box: `[N, 4] -> [N]`.
pub fn box_area(boxes: &Tensor) -> Tensor {
    let w = boxes.select(1, 2) - boxes.select(1, 0);
    let h = boxes.select(1, 3) - boxes.select(1, 1);
    w * h
}

/// Pairwise intersection over union: `a [N, 4]`, `b [M, 4]` -> `[N, M]`.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area_a = box_area(a);
    let area_b = box_area(b);
    let a = a.unsqueeze(1);
    let b = b.unsqueeze(0);
    let left_top = a.narrow(2, 0, 2).maximum(&b.narrow(2, 0, 2));
    let right_bottom = a.narrow(2, 2, 2).minimum(&b.narrow(2, 2, 2));
    let wh = (right_bottom - left_top).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = area_a.unsqueeze(1) + area_b.unsqueeze(0) - &inter;
    inter / union
}

/// Clamps x to `[0, width]` and y to `[0, height]` (differentiable).
pub fn clip_boxes_to_image(boxes: &Tensor, height: i64, width: i64) -> Tensor {
    let x = boxes.slice(1, 0, 4, 2).clamp(0.0, width as f64);
    let y = boxes.slice(1, 1, 4, 2).clamp(0.0, height as f64);
    Tensor::stack(&[x, y], 2).reshape([-1, 4])
}

/// Indices (i64) of the boxes whose width and height are both `>= min_size`.
pub fn remove_small_boxes(boxes: &Tensor, min_size: f64) -> Tensor {
    let w = boxes.select(1, 2) - boxes.select(1, 0);
    let h = boxes.select(1, 3) - boxes.select(1, 1);
    let keep = w.ge(min_size).logical_and(&h.ge(min_size));
    keep.nonzero().squeeze_dim(1).to_kind(Kind::Int64)
}
