//! Baselines for the comparison tables (SPEC §1.4): ternary weight networks, INQ-style
//! power-of-two with a fixed power-of-two scale, and symmetric uniform. Tensor ops on
//! `w`'s device; reductions that order can change run in float64 or are exact.
use super::{lbw, levels, LevelSet, Quantized};
use crate::torch_ext::divide;
use tch::{Kind, Tensor};

/// TWN: `delta = 0.7 * mean|W|`, keep `|W| > delta`, `alpha = mean` of the kept |W|.
pub(crate) fn twn(w: &Tensor) -> Quantized {
    let magnitudes = w.abs();
    let delta = lbw::scaled_mean_abs(w, 0.7);
    let keep = magnitudes.gt_tensor(&delta);
    let kept_sum = lbw::sum_abs(&(&magnitudes * &keep));
    let kept = keep.sum(Kind::Double).clamp_min(1.0);
    let alpha = (kept_sum / kept).to_kind(Kind::Float);
    let codes = levels::with_signs_of(&keep.to_kind(Kind::Int8), w);
    Quantized {
        alpha,
        codes,
        levels: LevelSet::powers_of_two(2),
    }
}

/// INQ-style scale `2^floor(log2(4/3 * max|W|))` (weights then go to the nearest level).
pub(crate) fn pow2_scale(w: &Tensor) -> Tensor {
    pow2_scale_of_max(&w.abs().max())
}

/// `2^floor(log2(4/3 * max))` for float32 maxima (any shape): rounds to a power of two with
/// the cut at 1.5 * 2^e, which is adding the first mantissa bit into the exponent and
/// clearing the mantissa: exact.
pub(crate) fn pow2_scale_of_max(max: &Tensor) -> Tensor {
    let rounded_bits = (max.view_dtype(Kind::Int) + (1i64 << 22)).bitwise_and(-(1i64 << 23));
    rounded_bits.view_dtype(Kind::Float)
}

/// [`pow2_scale_of_max`] of one float32 maximum.
pub(crate) fn pow2_scale_of_max_f32(max: f32) -> f32 {
    f32::from_bits((max.to_bits().wrapping_add(1 << 22)) & !((1 << 23) - 1))
}

/// Symmetric uniform: `2^(b-1) - 1` positive levels, step `max|W| / (2^(b-1) - 1)`,
/// rounding half to even.
pub(crate) fn uniform(w: &Tensor, bits: u32) -> Quantized {
    let levels = LevelSet::uniform(bits);
    let steps = i64::from(levels.max_code());
    let magnitudes = w.abs();
    // The codes round |w| / alpha: the step must be the exact quotient on every device.
    let alpha = divide(&magnitudes.max(), steps as f64);
    let index = (magnitudes / levels::nonzero_scale_tensor(&alpha))
        .round()
        .clamp(0, steps)
        .to_kind(Kind::Int8);
    let codes = levels::with_signs_of(&index, w);
    Quantized {
        alpha,
        codes,
        levels,
    }
}
