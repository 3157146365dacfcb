//! RoIPool, identical to `torchvision.ops.roi_pool`: RoI corners rounded (half away from
//! zero) onto the map, integer bins `[floor(p * bin), ceil((p + 1) * bin))` clipped to the
//! map, max per bin, 0 for empty bins. Differentiable w.r.t. the features: the gradient
//! goes to each bin's first maximum in row-major order, as in torchvision.
use crate::detect::roi_align::{feature_dims, pool_bins, prepare_rois};
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
    let bin = extent.to_kind(kind).view([-1, 1]) / bins as f64;
    let pos = Tensor::arange(bins, (kind, roi_start.device())).view([1, bins]);
    let start = (&pos * &bin).floor().to_kind(Kind::Int64);
    let end = ((pos + 1.0) * bin).ceil().to_kind(Kind::Int64);
    let offset = roi_start.view([-1, 1]);
    (
        (start + &offset).clamp(0, size),
        (end + offset).clamp(0, size),
    )
}

/// Pixel indices `[K, bins, span_max]` covering each bin's range, the range's last pixel
/// repeated as padding (a repeat never changes a max nor its first position).
fn bin_pixels(start: &Tensor, end: &Tensor, span_max: i64, size: i64) -> Tensor {
    let step = Tensor::arange(span_max, (Kind::Int64, start.device())).view([1, 1, span_max]);
    let last = (end - 1).unsqueeze(2);
    (start.unsqueeze(2) + step)
        .minimum(&last)
        .clamp(0, size - 1)
}

/// `torchvision.ops.roi_pool`: `input [N, C, H, W]`, `rois [K, 5]` as
/// `(batch_index, x1, y1, x2, y2)` in image coordinates -> `[K, C, oh, ow]`.
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
    let (h_start, h_end) = bin_ranges(&corner(2), &corner(4), oh, h, input.kind());
    let (w_start, w_end) = bin_ranges(&corner(1), &corner(3), ow, w, input.kind());
    let h_span = &h_end - &h_start;
    let w_span = &w_end - &w_start;
    let empty = h_span
        .le(0)
        .view([k, oh, 1])
        .logical_or(&w_span.le(0).view([k, 1, ow]));
    // One host sync for the padded bin size.
    let h_span_max = h_span.max().int64_value(&[]).max(1);
    let w_span_max = w_span.max().int64_value(&[]).max(1);
    let rows = bin_pixels(&h_start, &h_end, h_span_max, h);
    let cols = bin_pixels(&w_start, &w_end, w_span_max, w);
    let image = rois.select(1, 0).to_kind(Kind::Int64).view([k, 1, 1, 1, 1]);
    let pixel_index = image * (h * w)
        + rows.view([k, oh, 1, h_span_max, 1]) * w
        + cols.view([k, 1, ow, 1, w_span_max]);
    let pooled = pool_bins(
        input,
        &pixel_index,
        h_span_max * w_span_max,
        true,
        None,
        [k, oh, ow],
    );
    let filled = empty
        .logical_not()
        .to_kind(input.kind())
        .view([k, 1, oh, ow]);
    pooled * filled
}
