//! RoIPool, identical to `torchvision.ops.roi_pool`: RoI corners rounded (half away from
//! zero) onto the map, integer bins `[floor(p * bin), ceil((p + 1) * bin))` clipped to the
//! map, max per bin, 0 for empty bins. Differentiable w.r.t. the features: the gradient
//! goes to each bin's first maximum in row-major order, as in torchvision.
use crate::detect::roi_pooling::{feature_dims, pool_bins, prepare_rois};
use crate::torch_ext::divide;
use tch::{Kind, Tensor};

/// C's `round`: half away from zero (ATen's `round` is half to even).
fn round_half_away(x: &Tensor) -> Tensor {
    let whole = x.trunc();
    let half_or_more = (x - &whole).abs().ge(0.5).to_kind(x.kind());
    whole + half_or_more * x.sign()
}

/// Pixel ranges `[start, end)` (i64, `[K, bins]`, clipped to `[0, size]`) of the bins along
/// one axis for RoIs from `roi_start` to `roi_end` (map pixels, rounded).
fn bin_ranges(
    roi_start: &Tensor,
    roi_end: &Tensor,
    bins: i64,
    size: i64,
    kind: Kind,
) -> (Tensor, Tensor) {
    let extent = (roi_end - roi_start + 1).clamp_min(1);
    // Floored and ceiled below, so the quotient must be exact on every device.
    let bin = divide(&extent.to_kind(kind).view([-1, 1]), bins as f64);
    let pos = Tensor::arange(bins, (kind, roi_start.device())).view([1, bins]);
    let start = (&pos * &bin).floor().to_kind(Kind::Int64);
    let end = ((pos + 1.0) * bin).ceil().to_kind(Kind::Int64);
    let offset = roi_start.view([-1, 1]);
    (
        (start + &offset).clamp(0, size),
        (end + offset).clamp(0, size),
    )
}

/// `torchvision.ops.roi_pool`: `input [N, C, H, W]`, `rois [K, 5]` as
/// `(batch_index, x1, y1, x2, y2)` in image coordinates -> `[K, C, oh, ow]`.
///
/// Each bin is one bag of exactly its pixels (row-major, so ties resolve to the first
/// maximum as in torchvision) of a max-mode `embedding_bag`.
pub fn roi_pool(
    input: &Tensor,
    rois: &Tensor,
    output_size: (i64, i64),
    spatial_scale: f64,
) -> Tensor {
    let [_, c, h, w] = feature_dims(input, "roi_pool");
    let rois = prepare_rois(rois, input, "roi_pool");
    let (oh, ow) = output_size;
    let k = rois.size()[0];
    if k == 0 {
        return Tensor::zeros([0, c, oh, ow], (input.kind(), input.device()));
    }
    let corner =
        |col: i64| round_half_away(&(rois.select(1, col) * spatial_scale)).to_kind(Kind::Int64);
    let (row_start, row_end) = bin_ranges(&corner(2), &corner(4), oh, h, input.kind());
    let (col_start, col_end) = bin_ranges(&corner(1), &corner(3), ow, w, input.kind());
    let rows = (row_end - &row_start).clamp_min(0).view([k, oh, 1]);
    let cols = (col_end - &col_start).clamp_min(0).view([k, 1, ow]);
    let pixels = (&rows * &cols).view([-1]);
    // Entry e of the ragged bag list belongs to bin `bag[e]` at position `e - offsets[bag]`.
    let bag = Tensor::repeat_interleave(&pixels, None);
    let offsets = pixels.cumsum(0, Kind::Int64) - &pixels;
    let pos = Tensor::arange(bag.size()[0], (Kind::Int64, input.device()))
        - offsets.index_select(0, &bag);
    let per_entry = |t: &Tensor| {
        t.expand([k, oh, ow], false)
            .reshape([-1])
            .index_select(0, &bag)
    };
    let width = per_entry(&cols);
    let row = per_entry(&row_start.view([k, oh, 1])) + pos.floor_divide(&width);
    let col = per_entry(&col_start.view([k, 1, ow])) + pos.remainder_tensor(&width);
    let image = per_entry(&rois.select(1, 0).to_kind(Kind::Int64).view([k, 1, 1]));
    let pixel_index = image * (h * w) + row * w + col;
    let pooled = pool_bins(input, &pixel_index, &offsets, true, None, [k, oh, ow]);
    // Empty bins pool nothing (0); the mask also keeps any backend from routing them a gradient.
    let filled = pixels.gt(0).to_kind(input.kind()).view([k, 1, oh, ow]);
    pooled * filled
}
