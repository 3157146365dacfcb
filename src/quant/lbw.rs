//! LBW-Net's semi-analytical thresholding for b >= 3 (SPEC §1.3), also defined for b = 2:
//! `alpha = c * mean|W|`, then every weight goes to its nearest level of `alpha * Q_b`
//! (`levels::pow2_codes`).
//!
//! The sum behind the mean is exact up to a fixed rounding, so it does not depend on the
//! order of the additions: the CPU's blocked loop, a CUDA reduction and a reduction over many
//! layers at once all give the same alpha. With `2^E` the power of two just above max|W|
//! (`E` the frexp exponent), each |w| is rounded (half to even) to a multiple of `2^(E - 44)`:
//! the integer `round(|w| * 2^(44 - E))` below 2^44. The rounding moves each |w| by at most
//! `max|W| * 2^-45`. The CPU kernel ([`exact_sum_abs`]) sums these integers as integers.
//!
//! The tensor path (CUDA's) never needs a weight-sized float64 or a per-weight scale: it
//! views the weights as rows of [`CHUNK`] entries (a segment, one layer, starts at a multiple
//! of [`CHUNK`], zeros in the padding), and splits `|w| * 2^(15 - E)` in float32 into three
//! integer-valued limbs of [`TENSOR_LIMB_BITS`] (15, 15, 14) bits: the first rounded, each
//! next one the signed remainder times `2^bits` rounded. Float32 scales by powers of two,
//! rounds and subtracts a value's own rounding exactly, and the last rounding decides parity
//! just as one rounding of `|w| * 2^(44 - E)` would (the limbs above it are even), so
//! `limb0 * 2^29 + limb1 * 2^14 + limb2` is the CPU kernel's integer. Every limb is at most
//! 2^15 in magnitude, so a sum of [`SUM_ROW`] (512) of them stays an integer of at most 2^24:
//! float32 adds them exactly in any order. Those sums go to int64 (per chunk, then per
//! segment by differences of a cumulative sum), and one float64 rounding of the 44-bit total
//! gives the CPU kernel's float64 sum bit for bit. Every reduction is over rows in parallel
//! (row maxima, row sums) or over tensors of one entry per chunk: nothing runs per segment.
use super::cpu;
use tch::{Kind, Tensor};

/// The CPU kernel's grid: `round(|w| * 2^(2 * LIMB_BITS - E))`.
const LIMB_BITS: i32 = 22;
/// The most weights one exact sum takes (the tensor path's per-segment limb sums stay below
/// 2^53 far beyond it; the CPU kernel sums in 128 bits).
pub(crate) const MAX_EXACT_SUM_LEN: i64 = 1 << (53 - LIMB_BITS);

/// Entries per chunk of the tensor path: segments start at multiples of it, each chunk is one
/// row of the reductions and gets one scale. 4096 float32 entries, 16 KiB.
pub(crate) const CHUNK: i64 = 4096;
/// Entries per float32 limb sum: `SUM_ROW * 2^15 <= 2^24` keeps every partial sum exact.
const SUM_ROW: i64 = 512;
/// The tensor path's limbs, most significant first; together the CPU kernel's 44 bits.
const TENSOR_LIMB_BITS: [i64; 3] = [15, 15, 14];
const _: () = {
    assert!(
        TENSOR_LIMB_BITS[0] + TENSOR_LIMB_BITS[1] + TENSOR_LIMB_BITS[2] == 2 * LIMB_BITS as i64
    );
    assert!(SUM_ROW << TENSOR_LIMB_BITS[0] <= 1 << 24);
    assert!(CHUNK % SUM_ROW == 0);
};

/// `numel` rounded up to a whole number of [`CHUNK`]s.
pub(crate) fn chunked(numel: i64) -> i64 {
    (numel + CHUNK - 1) / CHUNK * CHUNK
}

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
    // One segment: the weights padded with zeros to whole chunks.
    let flat = w.reshape([-1]);
    let numel = flat.numel() as i64;
    let rows = flat
        .constant_pad_nd([0, chunked(numel) - numel])
        .view([-1, CHUNK]);
    let device = w.device();
    let chunks = rows.size()[0];
    let segment_of_chunk = Tensor::zeros([chunks], (Kind::Int64, device));
    let bounds = Tensor::from_slice(&[0, chunks]).to_device(device);
    let layout = ChunkLayout {
        segment_of_chunk: &segment_of_chunk,
        bounds: &bounds,
    };
    sum_abs_segments(&rows, &layout).reshape(Vec::<i64>::new())
}

/// Where segments lie in a buffer viewed as rows of [`CHUNK`] entries: each segment is a run
/// of whole chunks, the segments in order (a segment may have no chunk).
pub(crate) struct ChunkLayout<'a> {
    /// The segment of each chunk (int64, one per row, non-decreasing).
    pub segment_of_chunk: &'a Tensor,
    /// The first chunk of each segment, then the number of chunks (int64, segments + 1).
    pub bounds: &'a Tensor,
}

impl ChunkLayout<'_> {
    fn segments(&self) -> i64 {
        self.bounds.size()[0] - 1
    }
}

/// Per segment of `rows` (weights as float32 `[chunks, CHUNK]`, laid out as `layout` says,
/// zeros in the padding), `factor * mean|w|` as float32 (`counts`: the segments' weights as
/// float64), in a number of operations that does not depend on the number of segments.
pub(crate) fn scaled_mean_abs_segments(
    rows: &Tensor,
    layout: &ChunkLayout,
    counts: &Tensor,
    factor: f64,
) -> Tensor {
    (sum_abs_segments(rows, layout) * factor / counts).to_kind(Kind::Float)
}

/// Per segment, max of `magnitudes` (|w| as float32 `[chunks, CHUNK]`) as float32: 0 for a
/// segment without chunks, NaN if any of its entries is NaN.
pub(crate) fn segment_max(magnitudes: &Tensor, layout: &ChunkLayout) -> Tensor {
    // Row maxima, then a maximum over the chunks of each segment on their bits: non-negative
    // floats, +inf and NaNs order like their bits as int32 once the sign bit is cleared (a
    // NaN from a vectorized maximum may carry it), and an integer maximum is exact on every
    // device.
    let chunk_bits = magnitudes
        .amax([1], false)
        .view_dtype(Kind::Int)
        .bitwise_and(i64::from(i32::MAX));
    Tensor::zeros([layout.segments()], (Kind::Int, magnitudes.device()))
        .internal_scatter_reduce(0, layout.segment_of_chunk, &chunk_bits, "amax", true)
        .view_dtype(Kind::Float)
}

/// Per segment, Σ|w| of `rows` (weights as float32 `[chunks, CHUNK]`, laid out as `layout`
/// says) as float64: the tensor-op form of [`exact_sum_abs`], bit for bit (module docs).
fn sum_abs_segments(rows: &Tensor, layout: &ChunkLayout) -> Tensor {
    let chunks = rows.size()[0];
    let mut rest = rows.abs();
    let max = segment_max(&rest, layout);
    let finite = max.isfinite();
    // max = m * 2^E, m in [0.5, 1) (E = 0 for 0); a non-finite max gets E = 0 here and its
    // sum is replaced at the end.
    let exponent = max.frexp().1.where_scalarother(&finite, 0);
    // |w| * 2^(15 - E) < 2^15, with 2^(15 - E) as two float32 factors: it can be beyond
    // float32's range (E down to -148), each half is not, and both halves scale the same
    // way (up, or down), so neither product leaves float32's range or rounds unless the
    // final one is below 2^-126, which rounds to zero in every limb anyway.
    let shift = exponent.index_select(0, layout.segment_of_chunk).neg() + TENSOR_LIMB_BITS[0];
    let half = shift.divide_scalar_mode(2, "floor");
    let other_half = &shift - &half;
    for factor in [&half, &other_half] {
        rest *= power_of_two_f32(factor).unsqueeze(1);
    }
    // Limb sums over rows of SUM_ROW: exact float32 integers.
    let mut limb_sums = Vec::with_capacity(TENSOR_LIMB_BITS.len());
    for (limb, &bits) in TENSOR_LIMB_BITS.iter().enumerate() {
        if limb > 0 {
            rest *= 2f64.powi(bits as i32);
        }
        let whole = if limb + 1 < TENSOR_LIMB_BITS.len() {
            // Half to even, as the CPU kernel; the remainder is exact.
            let whole = rest.round();
            rest -= &whole;
            whole
        } else {
            rest.round_()
        };
        limb_sums.push(
            whole
                .view([chunks, CHUNK / SUM_ROW, SUM_ROW])
                .sum_dim_intlist(&[2i64][..], false, Kind::Float),
        );
    }
    // [chunks, limbs] int64 sums (a non-finite segment's NaN and inf become 0: its sum is
    // replaced below), then per segment as differences of the cumulative sum at the segments'
    // first chunks (all integers far below 2^63).
    let per_chunk = Tensor::stack(&limb_sums, 2)
        .nan_to_num(0.0, 0.0, 0.0)
        .to_kind(Kind::Int64)
        .sum_dim_intlist(&[1i64][..], false, Kind::Int64);
    let at_bounds = per_chunk
        .cumsum(0, Kind::Int64)
        .constant_pad_nd([0, 0, 1, 0])
        .index_select(0, layout.bounds);
    let segments = layout.segments();
    let limbs = at_bounds.narrow(0, 1, segments) - at_bounds.narrow(0, 0, segments);
    // limb0 * 2^29 + limb1 * 2^14 + limb2 as top * 2^29 + low, low in [0, 2^29): the sum of
    // two exact float64 values, rounded once, as the CPU kernel's integer is.
    let low_bits = TENSOR_LIMB_BITS[1] + TENSOR_LIMB_BITS[2];
    let below = limbs.select(1, 1) * (1i64 << TENSOR_LIMB_BITS[2]) + limbs.select(1, 2);
    let carry = below.divide_scalar_mode(1i64 << low_bits, "floor");
    let low = &below - &carry * (1i64 << low_bits);
    let top = limbs.select(1, 0) + carry;
    let total = top.to_kind(Kind::Double) * 2f64.powi(low_bits as i32) + low.to_kind(Kind::Double);
    let sum = total * power_of_two(&(exponent.to_kind(Kind::Int64) - i64::from(2 * LIMB_BITS)));
    // An infinite or NaN weight makes the sum what max|w| is.
    sum.where_self(&finite, &max.to_kind(Kind::Double))
}

/// `2^k` as float64 for an int64 tensor `k` in float64's normal range, built from its bits
/// (exact on every device, unlike `pow`).
fn power_of_two(k: &Tensor) -> Tensor {
    ((k + 1023i64) * (1i64 << 52)).view_dtype(Kind::Double)
}

/// `2^k` as float32 for an int32 tensor `k` in float32's normal range, from its bits.
fn power_of_two_f32(k: &Tensor) -> Tensor {
    ((k + 127i64) * (1i64 << 23)).view_dtype(Kind::Float)
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
    // The tensor path rounds this same integer once to float64 (from its exact limb sums),
    // then scales it by a power of two (exact).
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
/// in magnitude; rounding half to even): the tensor path's limbs as one integer below
/// 2^44 each. Summed in float64, which is exact for a sub-block of 256 of them (below 2^52), so
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
        let (rows, segment_of_chunk, bounds) = chunk_rows(&parts);
        let layout = ChunkLayout {
            segment_of_chunk: &segment_of_chunk,
            bounds: &bounds,
        };
        let segments = scaled_mean_abs_segments(
            &rows,
            &layout,
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

    /// The tensor path's float32 limbs give the CPU kernel's sum bit for bit at the edges of
    /// their argument: maxima near float32's top and among its subnormals (the limb scale
    /// beyond float32's range), ties on the 44-bit grid and at the limbs' boundaries,
    /// segments of many chunks, an empty one and a NaN; and the segments' maxima.
    #[test]
    fn tensor_limbs_match_the_cpu_kernel_at_the_edges() {
        tch::manual_seed(9);
        let opts = (Kind::Float, Device::Cpu);
        // Odd multiples of 2^-45 (max 0.75, E = 0): halfway between grid points, rounding up
        // and down; and values whose first or second limb is a tie.
        let ties: Vec<f32> = (0..2000)
            .map(|k| (2 * k + 1) as f32 * 2f32.powi(-45))
            .chain([
                0.75,
                2f32.powi(-16),
                1.5 * 2f32.powi(-15),
                2.5 * 2f32.powi(-15),
            ])
            .chain((0..50).map(|k| (2 * k + 1) as f32 * 2f32.powi(-31)))
            .collect();
        let subnormal: Vec<f32> = (1..3000)
            .map(|k| f32::from_bits(k * 1237 % 0x7f_ffff))
            .collect();
        let parts = [
            Tensor::randn([300_001], opts) * 0.02,
            Tensor::from_slice(&ties),
            Tensor::zeros([0], opts),
            Tensor::randn([10_000], opts) * 1e37,
            Tensor::from_slice(&subnormal),
            Tensor::from_slice(&[f32::from_bits(1), f32::from_bits(3), 0.0]),
            Tensor::randn([5000], opts) * 1e-20,
            Tensor::from_slice(&[1.0f32, f32::NAN, f32::INFINITY]),
            -Tensor::rand([CHUNK * 3], opts),
        ];
        let (rows, segment_of_chunk, bounds) = chunk_rows(&parts);
        let layout = ChunkLayout {
            segment_of_chunk: &segment_of_chunk,
            bounds: &bounds,
        };
        let sums = sum_abs_segments(&rows, &layout);
        let maxima = segment_max(&rows.abs(), &layout);
        for (i, part) in parts.iter().enumerate() {
            let values = Vec::<f32>::try_from(part).unwrap();
            let expected = exact_sum_abs(&values);
            let got = sums.double_value(&[i as i64]);
            assert!(
                got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan()),
                "segment {i}: {got:e} vs {expected:e}"
            );
            let max = max_abs(&values);
            let got = maxima.double_value(&[i as i64]) as f32;
            assert!(
                got.to_bits() == max.to_bits() || (got.is_nan() && max.is_nan()),
                "segment {i}: max {got:e} vs {max:e}"
            );
            // One segment alone (sum_abs pads it to whole chunks itself).
            let alone = cpu::with_tensor_ops(|| sum_abs(part)).double_value(&[]);
            assert!(alone.to_bits() == expected.to_bits() || (alone.is_nan() && expected.is_nan()));
        }
        assert!(sums.double_value(&[7]).is_nan());
    }

    /// `parts` flattened into rows of `CHUNK` (each padded to whole chunks), the segment of
    /// each chunk and the segments' chunk bounds.
    fn chunk_rows(parts: &[Tensor]) -> (Tensor, Tensor, Tensor) {
        let mut padded = Vec::new();
        let mut segment_of_chunk = Vec::new();
        let mut bounds = vec![0i64];
        for (i, part) in parts.iter().enumerate() {
            let numel = part.numel() as i64;
            padded.push(
                part.reshape([-1])
                    .constant_pad_nd([0, chunked(numel) - numel]),
            );
            let chunks = chunked(numel) / CHUNK;
            segment_of_chunk.extend(std::iter::repeat_n(i as i64, chunks as usize));
            bounds.push(bounds.last().unwrap() + chunks);
        }
        (
            Tensor::cat(&padded, 0).view([-1, CHUNK]),
            Tensor::from_slice(&segment_of_chunk),
            Tensor::from_slice(&bounds),
        )
    }
}
