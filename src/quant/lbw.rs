//! LBW-Net's semi-analytical thresholding for b >= 3 (SPEC §1.3), also defined for b = 2:
//! `alpha = c * mean|W|`, then every weight goes to its nearest level of `alpha * Q_b`
//! (`levels::pow2_codes`).
use super::cpu;
use tch::{Device, Kind, Tensor};

/// LBW's scale `c * mean|w|`, and TWN's threshold: `factor * mean|w|` as a 0-d float32 tensor on `w`'s device (`w` float32, non-empty).
/// The sum runs in float64 on every device, so CPU and CUDA agree on the float32 result.
pub(crate) fn scaled_mean_abs(w: &Tensor, factor: f64) -> Tensor {
    let scale = factor / w.numel() as f64;
    if w.device() == Device::Cpu {
        let w = w.contiguous();
        let values = cpu::slice::<f32>(&w);
        let sum: f64 = cpu::map_blocks(values.len(), |range| sum_abs(&values[range]))
            .into_iter()
            .sum();
        Tensor::from((sum * scale) as f32)
    } else {
        (w.abs().sum(Kind::Double) * scale).to_kind(Kind::Float)
    }
}

/// Σ|x| in float64 with eight independent accumulators (vectorizes; one block is small
/// enough that the order does not matter at float32 precision).
fn sum_abs(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|x| f64::from(x.abs())).sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(x.abs());
        }
    }
    lanes.iter().sum::<f64>() + tail
}
