//! The exact ternary quantizer (SPEC §1.2): sort |W| descending, prefix sums `s_t`,
//! `t* = argmax s_t^2 / t` (first maximum), `alpha = s_t* / t*`, the t* largest |W| keep
//! their sign. Sums run in float64. CPU tensors use a radix sort and one scan; other
//! devices the same steps as tensor ops.
use super::{cpu, levels, LevelSet, Quantized};
use tch::{Device, Kind, Tensor};

pub(crate) fn quantize(w: &Tensor) -> Quantized {
    if cpu::uses_cpu_kernels(w) {
        quantize_cpu(w)
    } else {
        quantize_tensor(w)
    }
}

// Ties never straddle t* (a tied next value would have raised s^2/t), so keeping
// `|W| >= |W|_(t*)` keeps exactly the t* largest.

fn quantize_cpu(w: &Tensor) -> Quantized {
    let w = w.contiguous();
    let values = cpu::slice::<f32>(&w);
    let (mut sum, mut best_score, mut best_alpha, mut threshold) = (0.0, 0.0, 0.0, f32::INFINITY);
    for (rank, &magnitude) in cpu::sorted_magnitudes(values).iter().rev().enumerate() {
        let count = (rank + 1) as f64;
        sum += f64::from(magnitude);
        let score = sum * sum / count;
        if score > best_score {
            best_score = score;
            best_alpha = sum / count;
            threshold = magnitude;
        }
    }
    let mut codes = Tensor::empty(w.size(), (Kind::Int8, Device::Cpu));
    cpu::zip_blocks(values, cpu::slice_mut::<i8>(&mut codes), |src, dst| {
        threshold_codes(src, dst, threshold)
    });
    Quantized {
        alpha: Tensor::from(best_alpha as f32),
        codes,
        levels: LevelSet::powers_of_two(2),
    }
}

/// ±1 where `|w| >= threshold` (sign of w), else 0; the threshold is an argument so it
/// stays in a register.
fn threshold_codes(weights: &[f32], codes: &mut [i8], threshold: f32) {
    for (code, &x) in codes.iter_mut().zip(weights) {
        *code = match x {
            x if x >= threshold => 1,
            x if x <= -threshold => -1,
            _ => 0,
        };
    }
}

fn quantize_tensor(w: &Tensor) -> Quantized {
    let magnitudes = w.abs();
    let (sorted, _) = magnitudes.flatten(0, -1).sort(0, true);
    let prefix = sorted.cumsum(0, Kind::Double);
    let counts = Tensor::arange_start(1, sorted.numel() as i64 + 1, (Kind::Double, w.device()));
    let best = (&prefix * &prefix / &counts).argmax(0, false).reshape([1]);
    let alpha = (prefix.index_select(0, &best) / (&best + 1))
        .to_kind(Kind::Float)
        .reshape(Vec::<i64>::new());
    // An all-zero tensor has threshold 0 and keeps nothing.
    let threshold = sorted.index_select(0, &best).reshape(Vec::<i64>::new());
    let keep = magnitudes
        .ge_tensor(&threshold)
        .logical_and(&magnitudes.gt(0));
    let codes = levels::with_signs_of(&keep.to_kind(Kind::Int8), w);
    Quantized {
        alpha,
        codes,
        levels: LevelSet::powers_of_two(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor-op path (used on CUDA) gives the CPU path's alpha and codes; run here
    /// on CPU tensors, where both sum in the same order.
    #[test]
    fn tensor_path_matches_cpu_path() {
        tch::manual_seed(3);
        for (size, scale) in [(1usize, 1.0), (7, 0.3), (5000, 0.02), (100_000, 1.0)] {
            let w = Tensor::randn([size as i64], (Kind::Float, Device::Cpu)) * scale;
            let ties = Tensor::from_slice(&[0.5f32, -0.5, 0.5, 0.0, -0.0]);
            for w in [
                w.shallow_clone(),
                Tensor::cat(&[&w, &ties], 0),
                Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            ] {
                let (a, b) = (quantize_cpu(&w), quantize_tensor(&w));
                assert_eq!(
                    a.alpha.double_value(&[]),
                    b.alpha.double_value(&[]),
                    "alpha, size {size}"
                );
                assert!(a.codes.equal(&b.codes), "codes, size {size}");
            }
        }
    }
}
