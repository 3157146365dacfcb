//! RoIAlign, identical to `torchvision.ops.roi_align` (both `aligned` modes, adaptive
//! sampling), built from ATen ops so autograd gives the gradient w.r.t. the features.
//!
//! Every output bin is a weighted sum of feature-map pixels: the bilinear taps of its
//! sampling points, each weighted by its interpolation weight over the number of samples.
//! All bins of all RoIs become one `embedding_bag` (weighted sum of rows of the
//! channels-last feature table): one fused kernel whose memory is the output's size, where
//! gathering the taps first would need 16x the output per bin.
use crate::detect::roi_pooling::{feature_dims, pool_bins, prepare_rois};
use crate::torch_ext::divide;
use tch::{Kind, Tensor};

/// Bilinear taps along one axis for every (RoI, bin, sample): pixel coordinate
/// `[K, bins, 2 * grid_max]` (i64, low and high neighbour per sample) and weight (input
/// dtype), with torchvision's `bilinear_interpolate` rules. Samples with `i >= grid[k]`
/// (adaptive grids smaller than `grid_max`) and samples outside `[-1, size]` get weight 0;
/// coordinates in `[-1, 0]` read pixel 0 and those in `[size - 1, size]` read pixel
/// `size - 1`. Weights are divided by the RoI's sample count along the axis, so the bin sum
/// is the average.
fn axis_taps(
    start: &Tensor,
    bin: &Tensor,
    grid: &Tensor,
    bins: i64,
    grid_max: i64,
    size: i64,
) -> (Tensor, Tensor) {
    let options = (start.kind(), start.device());
    let bin_pos = Tensor::arange(bins, options).view([1, bins, 1]);
    let sample = Tensor::arange(grid_max, options).view([1, 1, grid_max]);
    let (start, bin, grid) = (
        start.view([-1, 1, 1]),
        bin.view([-1, 1, 1]),
        grid.view([-1, 1, 1]),
    );
    // Same operation order as torchvision: start + p * bin + (i + 0.5) * bin / grid.
    let coord = (&start + &bin_pos * &bin) + (&sample + 0.5) * &bin / &grid;
    let valid = coord
        .ge(-1.0)
        .logical_and(&coord.le(size as f64))
        .logical_and(&sample.lt_tensor(&grid));
    // Invalid samples (possibly NaN/inf from an empty grid) read pixel 0 with weight 0.
    let last = (size - 1) as f64;
    let coord = coord
        .where_self(&valid, &coord.zeros_like())
        .clamp(0.0, last);
    let low = coord.floor();
    let frac = &coord - &low;
    let high = (&low + 1.0).clamp_max(last);
    let norm = valid.to_kind(start.kind()) / grid.clamp_min(1.0);
    let weight =
        Tensor::stack(&[(-&frac + 1.0) * &norm, frac * &norm], 3).view([-1, bins, 2 * grid_max]);
    let index = Tensor::stack(&[low, high], 3)
        .to_kind(Kind::Int64)
        .view([-1, bins, 2 * grid_max]);
    (index, weight)
}

/// `torchvision.ops.roi_align`: `input [N, C, H, W]`, `rois [K, 5]` as
/// `(batch_index, x1, y1, x2, y2)` in image coordinates, `spatial_scale` mapping them onto
/// the map, `sampling_ratio` points per bin side (`<= 0`: `ceil(roi_size / bins)` per RoI),
/// `aligned` shifting by half a pixel (otherwise RoIs are at least 1x1). Returns
/// `[K, C, oh, ow]`, differentiable w.r.t. `input` (not `rois`).
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output_size: (i64, i64),
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Tensor {
    let [_, c, h, w] = feature_dims(input, "roi_align");
    let rois = prepare_rois(rois, input, "roi_align");
    let (oh, ow) = output_size;
    let k = rois.size()[0];
    if k == 0 {
        return Tensor::zeros([0, c, oh, ow], (input.kind(), input.device()));
    }
    let offset = if aligned { 0.5 } else { 0.0 };
    let corner = |col: i64| rois.select(1, col) * spatial_scale - offset;
    let (start_x, start_y) = (corner(1), corner(2));
    let mut extent_x = corner(3) - &start_x;
    let mut extent_y = corner(4) - &start_y;
    if !aligned {
        extent_x = extent_x.clamp_min(1.0);
        extent_y = extent_y.clamp_min(1.0);
    }
    // Ceiled (adaptive grids) and floored (taps) below: exact quotients on every device.
    let bin_x = divide(&extent_x, ow as f64);
    let bin_y = divide(&extent_y, oh as f64);
    let (grid_x, grid_y, grid_x_max, grid_y_max) = if sampling_ratio > 0 {
        let grid = bin_x.full_like(sampling_ratio as f64);
        (grid.shallow_clone(), grid, sampling_ratio, sampling_ratio)
    } else {
        let (gx, gy) = (bin_x.ceil(), bin_y.ceil());
        // One host sync for the padded grid; at least one slot so all-empty grids work.
        let gx_max = (gx.max().double_value(&[]) as i64).max(1);
        let gy_max = (gy.max().double_value(&[]) as i64).max(1);
        (gx, gy, gx_max, gy_max)
    };
    let (iy, wy) = axis_taps(&start_y, &bin_y, &grid_y, oh, grid_y_max, h);
    let (ix, wx) = axis_taps(&start_x, &bin_x, &grid_x, ow, grid_x_max, w);
    let (taps_y, taps_x) = (2 * grid_y_max, 2 * grid_x_max);
    let image = rois.select(1, 0).to_kind(Kind::Int64).view([k, 1, 1, 1, 1]);
    let row = iy.view([k, oh, 1, taps_y, 1]);
    let col = ix.view([k, 1, ow, 1, taps_x]);
    let pixel_index = image * (h * w) + row * w + col;
    let weights = wy.view([k, oh, 1, taps_y, 1]) * wx.view([k, 1, ow, 1, taps_x]);
    let bag_len = taps_y * taps_x;
    let bins = k * oh * ow;
    if sampling_ratio > 0 {
        let offsets =
            Tensor::arange_start_step(0, bins * bag_len, bag_len, (Kind::Int64, input.device()));
        return pool_bins(
            input,
            &pixel_index,
            &offsets,
            false,
            Some(&weights),
            [k, oh, ow],
        );
    }
    // Adaptive grids are padded to the largest RoI's; dropping the zero-weight taps (padding,
    // samples off the map) leaves torchvision's per-RoI work and changes no sum or gradient.
    let nonzero = weights.ne(0.0);
    let counts = nonzero
        .view([bins, bag_len])
        .sum_dim_intlist(1, false, Kind::Int64);
    let offsets = counts.cumsum(0, Kind::Int64) - &counts;
    let pixel_index = pixel_index.masked_select(&nonzero);
    let weights = weights.masked_select(&nonzero);
    pool_bins(
        input,
        &pixel_index,
        &offsets,
        false,
        Some(&weights),
        [k, oh, ow],
    )
}
