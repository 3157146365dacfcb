//! LBW-Net's semi-analytical thresholding for b >= 3 (SPEC §1.3), also defined for b = 2:
//! `alpha = c * mean|W|`, then every weight goes to its nearest level of `alpha * Q_b`
//! (`levels::pow2_codes`).
//!
//! The sum behind the mean is exact up to a fixed rounding, so it does not depend on the
//! order of the additions: the CPU's blocked loop, a CUDA reduction and a segmented reduction
//! over many layers at once all give the same alpha. With `2^E` the power of two just above
//! max|W|, each |w| is rounded to a multiple of `2^(E - 44)` and split into [`LIMBS`] integer
//! limbs of about [`LIMB_BITS`] bits (`|w| * 2^(LIMB_BITS - E)` rounded, then the rounded
//! remainder times `2^LIMB_BITS`); every partial sum of a limb is an integer below 2^53 for
//! up to [`MAX_EXACT_SUM_LEN`] weights, so float64 adds them exactly in any order. The
//! rounding moves each |w| by at most `max|W| * 2^-45`. The CPU kernel sums the same rounded
//! values as 44-bit integers.
use super::cpu;
use tch::{Kind, Tensor};

const LIMB_BITS: i32 = 22;
const LIMBS: usize = 2;
/// The most weights one exact sum takes: `2^(53 - LIMB_BITS)` keeps every limb sum exact.
pub(crate) const MAX_EXACT_SUM_LEN: i64 = 1 << (53 - LIMB_BITS);

/// LBW's scale `c * mean|w|`, and TWN's threshold: `factor * mean|w|` as a 0-d float32
/// tensor on `w`'s device (`w` float32, non-empty).
pub(crate) fn scaled_mean_abs(w: &Tensor, factor: f64) -> Tensor {
    let n = w.numel();
    if cpu::uses_cpu_kernels(w) {
        let w = w.contiguous();
        Tensor::from(scale_from_sum(
            exact_sum_abs(cpu::slice::<f32>(&w)),
            factor,
            n,
        ))
    } else {
        let counts = Tensor::scalar_tensor(n as f64, (Kind::Double, w.device()));
        (sum_abs(w) * factor / counts).to_kind(Kind::Float)
    }
}

/// `factor * sum / n` rounded to float32: the same float64 operations as the tensor path.
pub(crate) fn scale_from_sum(sum: f64, factor: f64, n: usize) -> f32 {
    (sum * factor / n as f64) as f32
}

/// Σ|w| ([`exact_sum_abs`]) as a 0-d float64 tensor on `w`'s device (`w` float32).
pub(crate) fn sum_abs(w: &Tensor) -> Tensor {
    if cpu::uses_cpu_kernels(w) {
        let w = w.contiguous();
        return Tensor::from(exact_sum_abs(cpu::slice::<f32>(&w)));
    }
    let flat = w.reshape([-1]);
    let lengths =
        Tensor::scalar_tensor(flat.numel() as i64, (Kind::Int64, w.device())).reshape([1]);
    sum_abs_segments(&flat.abs(), &lengths).reshape(Vec::<i64>::new())
}

/// Per segment of `magnitudes` (|w|, 1-D float32; segment `i` has `lengths[i]` entries,
/// int64 on the same device), `factor * mean` as float32 (`counts`: the lengths as
/// float64), in a number of operations that does not depend on the number of segments.
pub(crate) fn scaled_mean_abs_segments(
    magnitudes: &Tensor,
    lengths: &Tensor,
    counts: &Tensor,
    factor: f64,
) -> Tensor {
    (sum_abs_segments(magnitudes, lengths) * factor / counts).to_kind(Kind::Float)
}

/// Per segment, Σ of `magnitudes` as float64: the tensor-op form of [`exact_sum_abs`].
fn sum_abs_segments(magnitudes: &Tensor, lengths: &Tensor) -> Tensor {
    let total = magnitudes.numel() as i64;
    let max = segment_reduce(magnitudes, "max", lengths);
    let (_, exponent) = max.frexp();
    let exponent = exponent.to_kind(Kind::Int64);
    let scale = power_of_two(&(-&exponent + i64::from(LIMB_BITS)))
        .repeat_interleave_self_tensor(lengths, 0, total);
    let mut rest = magnitudes.to_kind(Kind::Double) * scale;
    let mut sum = Tensor::zeros_like(&max).to_kind(Kind::Double);
    for limb in 0..LIMBS {
        // Half to even, as the CPU kernel; the high limb times 2^22 is even, so the limbs
        // add up to the rounded 44-bit value.
        let whole = rest.round();
        let limb_sum = segment_reduce(&whole, "sum", lengths);
        let weight = power_of_two(&(&exponent - i64::from(LIMB_BITS) * (limb as i64 + 1)));
        sum += limb_sum * weight;
        if limb + 1 < LIMBS {
            rest = (rest - whole) * 2f64.powi(LIMB_BITS);
        }
    }
    // An infinite or NaN weight makes the sum what max|w| is.
    sum.where_self(&max.isfinite(), &max.to_kind(Kind::Double))
}

/// `reduce` ("max", "sum") over consecutive segments of the 1-D `data`, 0 for an empty one.
pub(crate) fn segment_reduce(data: &Tensor, reduce: &str, lengths: &Tensor) -> Tensor {
    // `unsafe`: the lengths are ours and sum to the data's size; checking them would cost
    // a device sync.
    Tensor::segment_reduce(data, reduce, Some(lengths), None, None, 0, true, 0.0)
}

/// `2^k` as float64 for an int64 tensor `k` in float64's normal range, built from its bits
/// (exact on every device, unlike `pow`).
fn power_of_two(k: &Tensor) -> Tensor {
    ((k + 1023i64) * (1i64 << 52)).view_dtype(Kind::Double)
}

/// `2^k` as f64 (`k` in float64's normal range).
fn power_of_two_f64(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// The exponent `E` of `x` as `frexp` gives it: `x = m * 2^E`, `m` in [0.5, 1); 0 for 0.
fn frexp_exponent(x: f32) -> i32 {
    if x == 0.0 {
        return 0;
    }
    // Through float64 so subnormal floats have a normal exponent field.
    (((f64::from(x).to_bits() >> 52) & 0x7ff) as i32) - 1022
}

/// Σ|w| with the rounding described in the module docs; max|w| if that is not finite.
pub(crate) fn exact_sum_abs(values: &[f32]) -> f64 {
    assert!(
        values.len() as i64 <= MAX_EXACT_SUM_LEN,
        "a tensor of {} weights is beyond the exact sum's {MAX_EXACT_SUM_LEN}",
        values.len()
    );
    let max = cpu::map_blocks(values.len(), |range| max_abs(&values[range]))
        .into_iter()
        .fold(0.0f32, |a, b| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        });
    if !max.is_finite() {
        return f64::from(max);
    }
    let exponent = frexp_exponent(max);
    let total: u128 = cpu::map_blocks(values.len(), |range| {
        fixed_point_sum(&values[range], exponent)
    })
    .into_iter()
    .map(u128::from)
    .sum();
    // The tensor path adds its two exact limb sums in float64: one rounding of this same
    // integer, scaled by a power of two (exact).
    total as f64 * power_of_two_f64(exponent - 2 * LIMB_BITS)
}

/// max|x|; NaN if any entry is NaN (as a tensor max). Eight lanes of selects and a NaN
/// flag per lane, so the loop vectorizes.
#[inline(always)]
pub(crate) fn max_abs(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut max = [0.0f32; LANES];
    let mut nan = [0u32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut step = |lane: usize, x: f32| {
        let m = x.abs();
        nan[lane] |= u32::from(m.to_bits() > f32::INFINITY.to_bits());
        max[lane] = if m > max[lane] { m } else { max[lane] };
    };
    for chunk in chunks {
        for (lane, &x) in chunk.iter().enumerate() {
            step(lane, x);
        }
    }
    for &x in tail {
        step(0, x);
    }
    if nan.iter().any(|&n| n != 0) {
        return f32::NAN;
    }
    max.into_iter().fold(0.0, f32::max)
}

/// Σ `round(|x| * 2^(2 * LIMB_BITS - exponent))` over `values` (all below `2^exponent`
/// in magnitude; rounding half to even): the tensor path's two limbs as one integer below
/// 2^44. Summed in float64, which is exact for a sub-block of 256 of them (below 2^52), so
/// the loop vectorizes; the sub-block sums are added as integers.
#[inline(always)]
fn fixed_point_sum(values: &[f32], exponent: i32) -> u64 {
    const LANES: usize = 8;
    const SUB_BLOCK: usize = 256;
    let scale = power_of_two_f64(2 * LIMB_BITS - exponent);
    let mut total = 0u64;
    for sub_block in values.chunks(SUB_BLOCK) {
        let mut lanes = [0.0; LANES];
        let chunks = sub_block.chunks_exact(LANES);
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&x| fixed_point(x, scale))
            .sum();
        for chunk in chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += fixed_point(x, scale);
            }
        }
        total += (lanes.iter().sum::<f64>() + tail) as u64;
    }
    total
}

/// `round(|x| * scale)` (half to even) for `|x| * scale < 2^51`: adding and subtracting
/// 2^52 rounds to an integer in the current (nearest-even) mode.
#[inline(always)]
fn fixed_point(x: f32, scale: f64) -> f64 {
    const SHIFT: f64 = 4_503_599_627_370_496.0; // 2^52
    (f64::from(x.abs()) * scale + SHIFT) - SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The exact sum is the float64 sum within its rounding, does not depend on the
    /// order of the weights, and the tensor path (one segment or many) gives the same scale.
    #[test]
    fn exact_sum_is_order_independent_and_matches_the_tensor_path() {
        tch::manual_seed(5);
        let w = Tensor::randn([300_001], (Kind::Float, Device::Cpu)) * 0.03;
        let values = Vec::<f32>::try_from(&w).unwrap();
        let sum = exact_sum_abs(&values);
        let plain: f64 = values.iter().map(|x| f64::from(x.abs())).sum();
        assert!((sum - plain).abs() <= plain * 1e-12, "{sum} vs {plain}");
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(exact_sum_abs(&reversed).to_bits(), sum.to_bits());
        let cpu = scaled_mean_abs(&w, 3.7);
        let tensor = cpu::with_tensor_ops(|| scaled_mean_abs(&w, 3.7));
        assert_eq!(cpu.double_value(&[]), tensor.double_value(&[]));
        assert_eq!(
            f64::from(scale_from_sum(sum, 3.7, values.len())),
            cpu.double_value(&[])
        );
        // Segments of very different scales, an all-zero one, a tiny one and an infinite one.
        let parts = [
            w.narrow(0, 0, 1000),
            Tensor::zeros([7], (Kind::Float, Device::Cpu)),
            w.narrow(0, 1000, 50_000) * 1e-30,
            Tensor::from_slice(&[3.0f32, f32::INFINITY]),
            w.narrow(0, 51_000, 3),
        ];
        let lengths: Vec<i64> = parts.iter().map(|p| p.numel() as i64).collect();
        let segments = scaled_mean_abs_segments(
            &Tensor::cat(&parts, 0).abs(),
            &Tensor::from_slice(&lengths),
            &Tensor::from_slice(&lengths).to_kind(Kind::Double),
            0.7,
        );
        for (i, part) in parts.iter().enumerate() {
            let one = scaled_mean_abs(part, 0.7).double_value(&[]);
            let many = segments.double_value(&[i as i64]);
            assert!(
                one.to_bits() == many.to_bits() || (one.is_nan() && many.is_nan()),
                "segment {i}: {one} vs {many}"
            );
        }
        assert_eq!(segments.double_value(&[1]), 0.0);
        assert!(segments.double_value(&[3]).is_infinite());
    }
}
