//! Box regression targets, as torchvision's `BoxCoder` (py-faster-rcnn's parametrisation).
use crate::torch_ext::divide;
use tch::Tensor;

/// Encodes boxes relative to reference boxes as `(dx, dy, dw, dh)` scaled by `weights`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    /// Multipliers for `(dx, dy, dw, dh)`, e.g. `(10, 10, 5, 5)` in the RoI head.
    pub weights: [f64; 4],
    /// Upper clamp of the decoded `dw`, `dh` before `exp`, so huge deltas cannot overflow.
    pub bbox_xform_clip: f64,
}

/// Widths, heights and centres of `[N, 4]` boxes, each `[N]`.
fn centre_form(boxes: &Tensor) -> [Tensor; 4] {
    let widths = boxes.select(1, 2) - boxes.select(1, 0);
    let heights = boxes.select(1, 3) - boxes.select(1, 1);
    let ctr_x = boxes.select(1, 0) + &widths * 0.5;
    let ctr_y = boxes.select(1, 1) + &heights * 0.5;
    [widths, heights, ctr_x, ctr_y]
}

impl BoxCoder {
    /// torchvision's default clip, `ln(1000 / 16)`.
    pub fn new(weights: [f64; 4]) -> Self {
        BoxCoder {
            weights,
            bbox_xform_clip: (1000.0f64 / 16.0).ln(),
        }
    }

    /// Regression targets `[N, 4]` that move `proposals [N, 4]` onto `matched_gt [N, 4]`.
    pub fn encode(&self, matched_gt: &Tensor, proposals: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let [ex_w, ex_h, ex_x, ex_y] = centre_form(proposals);
        let [gt_w, gt_h, gt_x, gt_y] = centre_form(matched_gt);
        let dx = (gt_x - &ex_x) * wx / &ex_w;
        let dy = (gt_y - &ex_y) * wy / &ex_h;
        let dw = (gt_w / ex_w).log() * ww;
        let dh = (gt_h / ex_h).log() * wh;
        Tensor::stack(&[dx, dy, dw, dh], 1)
    }

    /// Applies `rel_codes [N, 4K]` (K sets of deltas, e.g. one per class) to `boxes [N, 4]`:
    /// `[N, K, 4]` in `rel_codes`' dtype.
    pub fn decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let size = rel_codes.size();
        let codes = rel_codes.reshape([size[0], size[1] / 4, 4]);
        let boxes = boxes.to_kind(rel_codes.kind());
        let [widths, heights, ctr_x, ctr_y] = centre_form(&boxes);
        let (widths, heights) = (widths.unsqueeze(1), heights.unsqueeze(1));
        // Decoded boxes are clamped, compared by NMS and thresholded: exact quotients.
        let dx = divide(&codes.select(2, 0), wx);
        let dy = divide(&codes.select(2, 1), wy);
        let dw = divide(&codes.select(2, 2), ww).clamp_max(self.bbox_xform_clip);
        let dh = divide(&codes.select(2, 3), wh).clamp_max(self.bbox_xform_clip);
        let pred_x = dx * &widths + ctr_x.unsqueeze(1);
        let pred_y = dy * &heights + ctr_y.unsqueeze(1);
        let half_w = dw.exp() * widths * 0.5;
        let half_h = dh.exp() * heights * 0.5;
        Tensor::stack(
            &[
                &pred_x - &half_w,
                &pred_y - &half_h,
                pred_x + half_w,
                pred_y + half_h,
            ],
            2,
        )
    }
}
