//! Balanced foreground/background sampling, as torchvision's
//! `BalancedPositiveNegativeSampler`, drawing from tch's global RNG.
use tch::{Kind, Tensor};

/// Picks up to `batch_size_per_image` labels with at most `positive_fraction` foreground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancedSampler {
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
}

impl BalancedSampler {
    /// `labels [N]` (i64: `>= 1` foreground, `0` background, `-1` ignored) -> indices (i64,
    /// on the labels' device) of the sampled foreground and background, in random order.
    /// Draws `randperm` for the positives, then for the negatives, as torchvision does, so
    /// a `tch::manual_seed` reproduces torchvision's selection.
    pub fn sample(&self, labels: &Tensor) -> (Tensor, Tensor) {
        let positive = labels.ge(1).nonzero().squeeze_dim(1);
        let negative = labels.eq(0).nonzero().squeeze_dim(1);
        let wanted_pos = (self.batch_size_per_image as f64 * self.positive_fraction) as i64;
        let num_pos = positive.size()[0].min(wanted_pos);
        let num_neg = negative.size()[0].min(self.batch_size_per_image as i64 - num_pos);
        (
            pick_random(&positive, num_pos),
            pick_random(&negative, num_neg),
        )
    }
}

/// The first `count` entries of a random permutation of `candidates`.
fn pick_random(candidates: &Tensor, count: i64) -> Tensor {
    let perm = Tensor::randperm(candidates.size()[0], (Kind::Int64, candidates.device()));
    candidates.index_select(0, &perm.narrow(0, 0, count.max(0)))
}
