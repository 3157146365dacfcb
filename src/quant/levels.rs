//! Level sets (SPEC §1.1) and the kernels shared by the quantizers: nearest power-of-two
//! level codes for a given scale, and codes back to `alpha * q`.
//!
//! A code is a signed integer: `±k` stands for `±magnitude(k)`, 0 for zero. Contiguous
//! float32 CPU tensors go through fused Rust loops (one pass over memory instead of the
//! ~10 that torch's element-wise ops would take); other devices use tensor ops with the
//! same IEEE arithmetic, so CPU and CUDA give identical codes.
use super::cpu;
use tch::{Device, Kind, Tensor};

/// The magnitudes a quantizer may use besides zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelSet {
    /// `{0, ±2^(1-n), …, ±1/2, ±1}`: code `±k` (k = 1..=n) is `±2^(k-n)`.
    PowersOfTwo { n: u32 },
    /// `{0, ±1, …, ±steps}`: code `±k` is `±k`; alpha is the grid step.
    Uniform { steps: u32 },
}

impl LevelSet {
    /// LBW's set for `bits` in 2..=8: `n = 2^(bits-2)` magnitudes.
    pub fn powers_of_two(bits: u32) -> LevelSet {
        assert!(
            (2..=8).contains(&bits),
            "power-of-two levels need bits in 2..=8, got {bits}"
        );
        LevelSet::PowersOfTwo { n: 1 << (bits - 2) }
    }

    /// The symmetric uniform set for `bits` in 2..=8: `2^(bits-1) - 1` positive levels.
    pub fn uniform(bits: u32) -> LevelSet {
        assert!(
            (2..=8).contains(&bits),
            "uniform levels need bits in 2..=8, got {bits}"
        );
        LevelSet::Uniform {
            steps: (1 << (bits - 1)) - 1,
        }
    }

    /// The largest code (the number of nonzero magnitudes).
    pub fn max_code(self) -> u32 {
        match self {
            LevelSet::PowersOfTwo { n } => n,
            LevelSet::Uniform { steps } => steps,
        }
    }

    /// The magnitude of code `±k`; 0 for k = 0.
    pub fn magnitude(self, k: u32) -> f64 {
        assert!(k <= self.max_code(), "code {k} is outside {self:?}");
        match self {
            _ if k == 0 => 0.0,
            LevelSet::PowersOfTwo { n } => 2f64.powi(k as i32 - n as i32),
            LevelSet::Uniform { .. } => k as f64,
        }
    }

    /// Magnitudes of codes 0..=max_code, ascending.
    pub fn magnitudes(self) -> Vec<f64> {
        (0..=self.max_code()).map(|k| self.magnitude(k)).collect()
    }

    /// `magnitudes()` as a float32 tensor built on `device` (no host-to-device copy).
    fn magnitude_table(self, device: Device) -> Tensor {
        match self {
            LevelSet::PowersOfTwo { n } => {
                // 2^(k-n) straight from its IEEE bits: exact on every device.
                let k = Tensor::arange(i64::from(n) + 1, (Kind::Int, device));
                let powers = ((&k + (127 - i64::from(n))) * (1i64 << 23)).view_dtype(Kind::Float);
                powers * k.gt(0)
            }
            LevelSet::Uniform { steps } => {
                Tensor::arange(i64::from(steps) + 1, (Kind::Float, device))
            }
        }
    }
}

/// `alpha` with 0 replaced by +inf, so that `|w| / alpha` is 0 (code 0) for an all-zero
/// tensor instead of NaN.
fn nonzero_scale(alpha: f32) -> f32 {
    if alpha > 0.0 {
        alpha
    } else {
        f32::INFINITY
    }
}

pub(crate) fn nonzero_scale_tensor(alpha: &Tensor) -> Tensor {
    alpha.where_scalarother(&alpha.gt(0), f64::INFINITY)
}

/// Nearest level index of `r >= 0` in the power-of-two set with `n` magnitudes (ties go
/// up, magnitudes above 1 clip to 1). `r < 2^-n` is 0; otherwise the index is
/// `floor(log2(4r/3)) + n` clamped to 1..=n: the cut between `2^e` and `2^(e+1)` is
/// `1.5 * 2^e`, so adding half a mantissa to r's bits carries into the exponent exactly
/// when r is past the cut.
#[inline(always)]
pub(crate) fn pow2_index(r: f32, n: i32, smallest_cut: f32) -> i32 {
    let biased_exponent = (r.to_bits().wrapping_add(1 << 22) >> 23) as i32;
    let index = (biased_exponent - 127 + n).clamp(1, n);
    if r >= smallest_cut {
        index
    } else {
        0
    }
}

/// Signed codes of the nearest power-of-two levels of `w / alpha` (`w` float32, `alpha` a
/// 0-d float32 tensor on `w`'s device; alpha 0 gives all-zero codes). Int8, `w`'s shape.
pub(crate) fn pow2_codes(w: &Tensor, alpha: &Tensor, n: u32) -> Tensor {
    if !cpu::uses_cpu_kernels(w) {
        return pow2_codes_tensor(w, alpha, n);
    }
    let w = w.contiguous();
    let mut codes = Tensor::empty(w.size(), (Kind::Int8, Device::Cpu));
    let rule = Pow2Rule::new(alpha.double_value(&[]) as f32, n);
    cpu::zip_blocks(
        cpu::slice::<f32>(&w),
        cpu::slice_mut::<i8>(&mut codes),
        |src, dst| rule.fill_codes(src, dst),
    );
    codes
}

/// `dequantize(alpha, pow2_codes(w, alpha, n))`, in one pass on the CPU (the training
/// forward's hot path).
pub(crate) fn pow2_values(w: &Tensor, alpha: &Tensor, n: u32) -> Tensor {
    if !cpu::uses_cpu_kernels(w) {
        return pow2_values_tensor(w, alpha, n);
    }
    let w = w.contiguous();
    let mut values = Tensor::empty(w.size(), (Kind::Float, Device::Cpu));
    pow2_values_into(
        cpu::slice::<f32>(&w),
        alpha.double_value(&[]) as f32,
        n,
        cpu::slice_mut::<f32>(&mut values),
    );
    values
}

/// The CPU kernel of [`pow2_values`] on slices: `values[i]` from `weights[i]` at scale `alpha`.
pub(crate) fn pow2_values_into(weights: &[f32], alpha: f32, n: u32, values: &mut [f32]) {
    let rule = Pow2Rule::new(alpha, n);
    cpu::zip_blocks(weights, values, |src, dst| rule.fill_values(src, dst));
}

/// [`pow2_values`] as tensor ops (CUDA's path); `alpha` is 0-d or broadcasts against `w`
/// (one scale per row of a `[chunks, C]` view, say).
pub(crate) fn pow2_values_tensor(w: &Tensor, alpha: &Tensor, n: u32) -> Tensor {
    dequantize_tensor(
        alpha,
        &pow2_codes_tensor(w, alpha, n),
        LevelSet::PowersOfTwo { n },
    )
}

/// The per-weight nearest-level rule of the CPU kernels at one scale. The kernels take
/// it by value, so its fields stay in registers and their loops vectorize.
#[derive(Clone, Copy)]
struct Pow2Rule {
    alpha: f32,
    divisor: f32,
    n: i32,
    smallest_cut: f32,
}

impl Pow2Rule {
    fn new(alpha: f32, n: u32) -> Self {
        let n = n as i32;
        Pow2Rule {
            alpha,
            divisor: nonzero_scale(alpha),
            n,
            smallest_cut: 2f32.powi(-n),
        }
    }

    fn fill_codes(self, weights: &[f32], codes: &mut [i8]) {
        for (code, &x) in codes.iter_mut().zip(weights) {
            *code = self.code(x) as i8;
        }
    }

    fn fill_values(self, weights: &[f32], values: &mut [f32]) {
        for (value, &x) in values.iter_mut().zip(weights) {
            *value = self.value(x);
        }
    }

    #[inline(always)]
    fn code(self, x: f32) -> i32 {
        let index = pow2_index(x.abs() / self.divisor, self.n, self.smallest_cut);
        if x < 0.0 {
            -index
        } else {
            index
        }
    }

    /// `alpha * 2^(index - n)` with the weight's sign, +0 for index 0 (as `dequantize`);
    /// written with selects only, so the loop vectorizes.
    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        let index = pow2_index(x.abs() / self.divisor, self.n, self.smallest_cut);
        let power = f32::from_bits(((index - self.n + 127) as u32) << 23);
        let (magnitude, sign) = if index > 0 {
            (self.alpha * power, x.to_bits() & 0x8000_0000)
        } else {
            (0.0, 0)
        };
        f32::from_bits(magnitude.to_bits() | sign)
    }
}

/// The same rule as tensor ops, for devices other than the CPU: `r = m * 2^e` with
/// `m` in [0.5, 1) gives index `e - 1 + n + (m >= 0.75)`. `alpha` is 0-d or broadcasts
/// against `w`.
fn pow2_codes_tensor(w: &Tensor, alpha: &Tensor, n: u32) -> Tensor {
    let n = i64::from(n);
    let r = w.abs() / nonzero_scale_tensor(alpha);
    let (mantissa, exponent) = r.frexp();
    let index = (exponent + (n - 1) + mantissa.ge(0.75).to_kind(Kind::Int)).clamp(1, n);
    let index = (index * r.ge(2f64.powi(-(n as i32)))).to_kind(Kind::Int8);
    with_signs_of(&index, w)
}

/// `index` negated where `w < 0` (NaN counts as non-negative).
pub(crate) fn with_signs_of(index: &Tensor, w: &Tensor) -> Tensor {
    index.neg().where_self(&w.lt(0), index)
}

/// `alpha * level(code)` as float32 on the codes' device.
pub(crate) fn dequantize(alpha: &Tensor, codes: &Tensor, levels: LevelSet) -> Tensor {
    if cpu::uses_cpu_kernels(codes) {
        dequantize_cpu(alpha.double_value(&[]) as f32, codes, levels)
    } else {
        dequantize_tensor(alpha, codes, levels)
    }
}

fn dequantize_cpu(alpha: f32, codes: &Tensor, levels: LevelSet) -> Tensor {
    let codes = codes.contiguous();
    let max_code = levels.max_code() as i32;
    // table[code + max_code] = alpha * (±magnitude), the same f32 products as on device.
    let table: Vec<f32> = (-max_code..=max_code)
        .map(|code| {
            let scaled = alpha * levels.magnitude(code.unsigned_abs()) as f32;
            if code < 0 {
                -scaled
            } else {
                scaled
            }
        })
        .collect();
    let mut out = Tensor::empty(codes.size(), (Kind::Float, Device::Cpu));
    cpu::zip_blocks(
        cpu::slice::<i8>(&codes),
        cpu::slice_mut::<f32>(&mut out),
        |src, dst| look_up(src, dst, &table, max_code),
    );
    out
}

/// `values[i] = table[codes[i] + max_code]`, with the scalars as arguments so they stay in
/// registers.
fn look_up(codes: &[i8], values: &mut [f32], table: &[f32], max_code: i32) {
    for (value, &code) in values.iter_mut().zip(codes) {
        *value = table[(i32::from(code) + max_code) as usize];
    }
}

/// `level(code) * alpha` as tensor ops; `alpha` is 0-d or broadcasts against the codes.
fn dequantize_tensor(alpha: &Tensor, codes: &Tensor, levels: LevelSet) -> Tensor {
    let magnitudes = levels.magnitude_table(codes.device());
    let signed = Tensor::cat(
        &[magnitudes.slice(0, 1, None, 1).flip([0]).neg(), magnitudes],
        0,
    );
    let index = codes.flatten(0, -1).to_kind(Kind::Int64) + i64::from(levels.max_code());
    // `(-m) * alpha` is `-(m * alpha)` bit for bit, and code 0 gives +0: the CPU's values.
    signed.index_select(0, &index).reshape(codes.size()) * alpha
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor-op path (used on CUDA) must give the CPU kernel's codes and values
    /// bit for bit; run here on CPU tensors.
    #[test]
    fn tensor_path_matches_cpu_kernel() {
        tch::manual_seed(7);
        let mut w = Tensor::randn([20_000], (Kind::Float, Device::Cpu)) * 0.05;
        // Exact cut points, zeros, a negative zero and tiny values.
        let specials = Tensor::from_slice(&[
            0.0f32, -0.0, 0.75, -0.375, 1.5, 3.0, 1e-30, -1e-38, 0.5, 0.25,
        ]);
        w = Tensor::cat(&[w, specials], 0);
        for bits in 2..=8 {
            let LevelSet::PowersOfTwo { n } = LevelSet::powers_of_two(bits) else {
                unreachable!()
            };
            for alpha in [0.1f32, 1.0, 0.0, 0.0123] {
                let alpha_t = Tensor::from(alpha);
                let cpu_codes = pow2_codes(&w, &alpha_t, n);
                let tensor_codes = pow2_codes_tensor(&w, &alpha_t, n);
                assert!(
                    cpu_codes.equal(&tensor_codes),
                    "codes differ at bits {bits}, alpha {alpha}"
                );
                let levels = LevelSet::PowersOfTwo { n };
                let a = dequantize_cpu(alpha, &cpu_codes, levels);
                let b = dequantize_tensor(&alpha_t, &cpu_codes, levels);
                assert!(a.equal(&b), "values differ at bits {bits}, alpha {alpha}");
                let fused = Vec::<f32>::try_from(&pow2_values(&w, &alpha_t, n)).unwrap();
                let two_step = Vec::<f32>::try_from(&a).unwrap();
                assert!(
                    fused
                        .iter()
                        .zip(&two_step)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "fused values differ at bits {bits}, alpha {alpha}"
                );
            }
        }
        let codes = Tensor::from_slice(&[-3i8, 0, 2, 3, -1]);
        let alpha = 0.3f32;
        let levels = LevelSet::uniform(3);
        assert!(
            dequantize_cpu(alpha, &codes, levels).equal(&dequantize_tensor(
                &Tensor::from(alpha),
                &codes,
                levels
            ))
        );
    }

    #[test]
    fn level_sets_match_spec() {
        assert_eq!(LevelSet::powers_of_two(2).magnitudes(), vec![0.0, 1.0]);
        assert_eq!(LevelSet::powers_of_two(3).magnitudes(), vec![0.0, 0.5, 1.0]);
        assert_eq!(
            LevelSet::powers_of_two(4).magnitudes(),
            vec![0.0, 0.125, 0.25, 0.5, 1.0]
        );
        let b6 = LevelSet::powers_of_two(6).magnitudes();
        assert_eq!((b6.len(), b6[1], b6[16]), (17, 2f64.powi(-15), 1.0));
        assert_eq!(LevelSet::powers_of_two(8).max_code(), 64);
        assert_eq!(
            LevelSet::uniform(4).magnitudes(),
            (0..=7).map(f64::from).collect::<Vec<_>>()
        );
        let table = LevelSet::powers_of_two(5).magnitude_table(Device::Cpu);
        let expected: Vec<f32> = LevelSet::powers_of_two(5)
            .magnitudes()
            .iter()
            .map(|&m| m as f32)
            .collect();
        assert_eq!(Vec::<f32>::try_from(&table).unwrap(), expected);
    }
}
