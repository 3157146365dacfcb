//! What RoIAlign and RoIPool share: the shape checks of features and RoIs, and the
//! reduction of each output bin's feature-map pixels (a weighted sum or a max) as one
//! `embedding_bag` over the channels-last feature table.
use tch::Tensor;

/// Sizes `[N, C, H, W]` of a feature map; panics (a caller bug) on any other rank.
pub(crate) fn feature_dims(input: &Tensor, op: &str) -> [i64; 4] {
    match input.size()[..] {
        [n, c, h, w] => [n, c, h, w],
        ref other => panic!("{op}: input must be [N, C, H, W], got {other:?}"),
    }
}

/// Checks `rois [K, 5]` and brings them to the features' dtype and device, detached:
/// as in torchvision, no gradient flows to the box coordinates.
pub(crate) fn prepare_rois(rois: &Tensor, input: &Tensor, op: &str) -> Tensor {
    let size = rois.size();
    assert!(
        size.len() == 2 && size[1] == 5,
        "{op}: rois must be [K, 5] (batch index, x1, y1, x2, y2), got {size:?}"
    );
    rois.detach()
        .to_device(input.device())
        .to_kind(input.kind())
}

/// Reduces bags of consecutive entries of `pixel_index` (flat `n*H*W + y*W + x` into
/// `input`; bag `b` starts at `offsets[b]`) to one value per channel, one bag per
/// `(roi, ph, pw)` bin: `[K, C, oh, ow]` (contiguous). `weights` apply to sum mode only;
/// an empty bag gives 0.
pub(crate) fn pool_bins(
    input: &Tensor,
    pixel_index: &Tensor,
    offsets: &Tensor,
    max_mode: bool,
    weights: Option<&Tensor>,
    out_shape: [i64; 3],
) -> Tensor {
    let [n, c, h, w] = feature_dims(input, "pool_bins");
    let [k, oh, ow] = out_shape;
    let table = input
        .permute([0, 2, 3, 1])
        .contiguous()
        .view([n * h * w, c]);
    const SUM: i64 = 0;
    const MAX: i64 = 2;
    let mode = if max_mode { MAX } else { SUM };
    let (pooled, _, _, _) = Tensor::embedding_bag(
        &table,
        &pixel_index.reshape([-1]),
        offsets,
        false,
        mode,
        false,
        weights.map(|w| w.reshape([-1])).as_ref(),
        false,
    );
    pooled
        .view([k, oh, ow, c])
        .permute([0, 3, 1, 2])
        .contiguous()
}
