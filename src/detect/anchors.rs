//! Anchor boxes, as torchvision's `AnchorGenerator` with a single feature map.
use tch::{Device, Kind, Tensor};

/// Zero-centred anchors `[A, 4]` (f32, CPU), ratio-major then size: for each aspect ratio
/// `r = h / w` and size `s`, `w = s / sqrt(r)`, `h = s * sqrt(r)`, box `(-w, -h, w, h) / 2`
/// rounded half to even (torchvision's `generate_anchors`, computed in f32 the same way).
pub fn base_anchors(sizes: &[f64], ratios: &[f64]) -> Tensor {
    let options = (Kind::Float, Device::Cpu);
    let scales = Tensor::from_slice(sizes).to_kind(Kind::Float);
    let ratios = Tensor::from_slice(ratios).to_kind(Kind::Float);
    let h_ratios = ratios.sqrt();
    let w_ratios = Tensor::ones([1], options) / &h_ratios;
    let ws = (w_ratios.unsqueeze(1) * scales.unsqueeze(0)).reshape([-1]);
    let hs = (h_ratios.unsqueeze(1) * scales.unsqueeze(0)).reshape([-1]);
    let corners = Tensor::stack(&[-&ws, -&hs, ws, hs], 1) / 2.0;
    corners.round()
}

/// All anchors of a `feat_h x feat_w` map with `stride` pixels between cells, `[H*W*A, 4]`,
/// location-major (row-major cells) and anchor-minor, on `base`'s device and dtype.
pub fn grid_anchors(base: &Tensor, feat_h: i64, feat_w: i64, stride: i64) -> Tensor {
    let options = (base.kind(), base.device());
    let shifts_x = Tensor::arange(feat_w, options) * stride;
    let shifts_y = Tensor::arange(feat_h, options) * stride;
    let shift_x = shifts_x
        .unsqueeze(0)
        .expand([feat_h, feat_w], false)
        .reshape([-1]);
    let shift_y = shifts_y
        .unsqueeze(1)
        .expand([feat_h, feat_w], false)
        .reshape([-1]);
    let shifts = Tensor::stack(&[&shift_x, &shift_y, &shift_x, &shift_y], 1);
    (shifts.unsqueeze(1) + base.unsqueeze(0)).reshape([-1, 4])
}
