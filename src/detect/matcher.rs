//! Ground-truth assignment by IoU thresholds, as torchvision's detection `Matcher`.
use tch::{Kind, Tensor};

/// Match value for predictions whose best IoU is below `low`.
pub const BELOW_LOW: i64 = -1;
/// Match value for predictions whose best IoU is in `[low, high)`.
pub const BETWEEN: i64 = -2;

/// Assigns each prediction the ground truth it overlaps most, when that IoU is `>= high`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matcher {
    pub high: f64,
    pub low: f64,
    /// Also match, for every ground truth, all predictions tying its best IoU (even a low
    /// one) to their own best ground truth: every gt then gets at least one prediction.
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    /// `iou [G, N]` (ground truths x predictions) -> `[N]` i64: a gt index, `BELOW_LOW` or
    /// `BETWEEN`. With no ground truth every prediction is `BELOW_LOW`.
    pub fn matches(&self, iou: &Tensor) -> Tensor {
        let size = iou.size();
        let (num_gt, num_pred) = (size[0], size[1]);
        if num_gt == 0 || num_pred == 0 {
            return Tensor::full([num_pred], BELOW_LOW, (Kind::Int64, iou.device()));
        }
        let (best_iou, best_gt) = iou.max_dim(0, false);
        let below = best_iou.lt(self.low);
        let between = best_iou.ge(self.low).logical_and(&best_iou.lt(self.high));
        let matches = best_gt
            .masked_fill(&below, BELOW_LOW)
            .masked_fill(&between, BETWEEN);
        if !self.allow_low_quality_matches {
            return matches;
        }
        let (best_per_gt, _) = iou.max_dim(1, true);
        let ties_a_gt_best = iou.eq_tensor(&best_per_gt).any_dim(0, false);
        best_gt.where_self(&ties_a_gt_best, &matches)
    }
}
