//! The quantization error that sweep tables and `lbwnet quantize` report: a mean of
//! squared differences added in float64, in index order, on a host copy. ATen's `mean`
//! splits its additions by thread count and SIMD width, so its last digits moved with
//! `--jobs` and with the machine's vector unit; a reported number must not.
use super::cpu;
use tch::{Device, Kind, Tensor};

/// Mean over entries of `(a - b)^2` for two tensors of the same shape (any device; values
/// taken as float32, as weights are). Each difference of two float32 values is exact in
/// float64; 0 for empty tensors.
pub fn mean_squared_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "mean_squared_error of different shapes");
    let (a, b) = (host_f32(a), host_f32(b));
    mean_of(
        cpu::slice::<f32>(&a)
            .iter()
            .zip(cpu::slice::<f32>(&b))
            .map(|(&x, &y)| f64::from(x) - f64::from(y)),
    )
}

/// Mean over entries of `a^2` (as [`mean_squared_error`] against zero).
pub fn mean_square(a: &Tensor) -> f64 {
    let a = host_f32(a);
    mean_of(cpu::slice::<f32>(&a).iter().map(|&x| f64::from(x)))
}

fn host_f32(t: &Tensor) -> Tensor {
    t.detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
}

/// Σ d² / n, one addition after another (a fold the compiler may not reorder).
fn mean_of(differences: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = differences.len();
    if n == 0 {
        return 0.0;
    }
    differences.fold(0.0, |sum, d| sum + d * d) / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_index_order_whatever_the_thread_count() {
        // Values whose sum depends on the order of the additions: large and tiny alternate.
        let values: Vec<f32> = (0..300_000)
            .map(|i| {
                if i % 3 == 0 {
                    1e4
                } else {
                    1e-3 * (i % 7) as f32
                }
            })
            .collect();
        let a = Tensor::from_slice(&values);
        let b = Tensor::zeros_like(&a);
        let sequential = values
            .iter()
            .fold(0.0f64, |s, &x| s + f64::from(x) * f64::from(x))
            / values.len() as f64;
        let threads = tch::get_num_threads();
        let mut seen = Vec::new();
        for n in [1, 2] {
            tch::set_num_threads(n);
            seen.push(mean_squared_error(&a, &b).to_bits());
            seen.push(mean_square(&a).to_bits());
        }
        tch::set_num_threads(threads);
        assert!(seen.iter().all(|&bits| bits == sequential.to_bits()));
    }

    #[test]
    fn differences_are_exact_and_empty_is_zero() {
        let a = Tensor::from_slice(&[1.0f32, 1e-8, -3.0]);
        let b = Tensor::from_slice(&[1.0f32 + f32::EPSILON, 0.0, -1.0]);
        let expected =
            (f64::from(f32::EPSILON).powi(2) + 1e-8f32 as f64 * 1e-8f32 as f64 + 4.0) / 3.0;
        assert_eq!(mean_squared_error(&a, &b), expected);
        let empty = Tensor::zeros([0], (Kind::Float, Device::Cpu));
        assert_eq!(mean_squared_error(&empty, &empty), 0.0);
        assert_eq!(mean_square(&empty), 0.0);
    }
}
