//! One quantization pass over many tensors that lie back to back in one flat buffer (the
//! layers of a model that share a [`QuantSpec`]): every segment gets its own alpha and its
//! own `alpha * q`, exactly as [`quantize`] would give it tensor by tensor.
//!
//! On a GPU the per-tensor quantizer is ~20 small kernels per layer, so a model's pass is
//! launch-bound; here lbw and pow2 take a fixed number of operations for any number of
//! segments (segmented reductions for the scales, one element-wise pass for the values).
//! On the CPU the fused kernels run segment by segment. The other methods quantize each
//! segment on its own.
use super::{baselines, cpu, lbw, levels, quantize, Method, QuantSpec};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// Where the tensors of one spec lie in a flat buffer, and their quantizer.
#[derive(Debug)]
pub struct FlatSegments {
    spec: QuantSpec,
    /// Entries per segment, in buffer order (the segments are contiguous and start at 0).
    lengths: Vec<i64>,
    /// The lengths on the buffer's device (int64), for the segmented reductions.
    lengths_tensor: Tensor,
    /// The lengths as float64 on the device: the denominators of the means.
    counts: Tensor,
    total: i64,
}

impl FlatSegments {
    /// Segments of `lengths` entries each, back to back from the start of a flat float32
    /// buffer on `device`, quantized by `spec`.
    pub fn new(spec: QuantSpec, lengths: Vec<i64>, device: Device) -> Result<Self> {
        for &len in &lengths {
            ensure!(
                (0..=lbw::MAX_EXACT_SUM_LEN).contains(&len),
                "a quantized tensor of {len} weights: at most {} are supported",
                lbw::MAX_EXACT_SUM_LEN
            );
        }
        let lengths_tensor = Tensor::from_slice(&lengths).to_device(device);
        let counts = lengths_tensor.to_kind(Kind::Double);
        Ok(FlatSegments {
            spec,
            total: lengths.iter().sum(),
            lengths,
            lengths_tensor,
            counts,
        })
    }

    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    /// Entries in all segments together.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Writes `Q(segment)` for every segment of `values` (1-D float32, exactly the
    /// segments) into `out` (1-D float32 of the same size and device): bit for bit what
    /// [`quantize`] gives each segment.
    pub fn quantize_into(&self, values: &Tensor, out: &mut Tensor) {
        assert_eq!(values.size(), [self.total], "flat buffer size");
        assert_eq!(out.size(), [self.total], "flat output size");
        match self.spec.method {
            Method::Lbw | Method::Pow2 if cpu::uses_cpu_kernels(values) => {
                self.pow2_methods_cpu(values, out)
            }
            Method::Lbw | Method::Pow2 => {
                out.copy_(&self.pow2_methods_tensor(values));
            }
            _ => self.each_segment(values, out),
        }
    }

    /// lbw and pow2 on the CPU: the scale and the fused value kernel segment by segment,
    /// reading and writing the buffers in place.
    fn pow2_methods_cpu(&self, values: &Tensor, out: &mut Tensor) {
        let n = self.spec.levels().max_code();
        let values = values.contiguous();
        let weights = cpu::slice::<f32>(&values);
        let outputs = cpu::slice_mut::<f32>(out);
        let mut start = 0;
        for &len in &self.lengths {
            let range = start..start + len as usize;
            start = range.end;
            let segment = &weights[range.clone()];
            if segment.is_empty() {
                continue;
            }
            let alpha = match self.spec.method {
                Method::Lbw => {
                    lbw::scale_from_sum(lbw::exact_sum_abs(segment), self.spec.c, segment.len())
                }
                _ => baselines::pow2_scale_of_max_f32(lbw::max_abs(segment)),
            };
            levels::pow2_values_into(segment, alpha, n, &mut outputs[range]);
        }
    }

    /// lbw and pow2 as tensor ops: per-segment scales from segmented reductions, spread to
    /// one scale per weight, then one element-wise pass.
    fn pow2_methods_tensor(&self, values: &Tensor) -> Tensor {
        let magnitudes = values.abs();
        let alpha = match self.spec.method {
            Method::Lbw => lbw::scaled_mean_abs_segments(
                &magnitudes,
                &self.lengths_tensor,
                &self.counts,
                self.spec.c,
            ),
            _ => baselines::pow2_scale_of_max(&lbw::segment_reduce(
                &magnitudes,
                "max",
                &self.lengths_tensor,
            )),
        };
        let per_weight = alpha.repeat_interleave_self_tensor(&self.lengths_tensor, 0, self.total);
        levels::pow2_values_tensor(values, &per_weight, self.spec.levels().max_code())
    }

    /// The methods without a segmented form: [`quantize`] per segment.
    fn each_segment(&self, values: &Tensor, out: &mut Tensor) {
        let mut start = 0;
        for &len in &self.lengths {
            if len > 0 {
                let q = quantize(&values.narrow(0, start, len), &self.spec);
                out.narrow(0, start, len).copy_(&q);
            }
            start += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method on both paths: the flat pass equals `quantize` on each segment bit for
    /// bit, over segments of very different sizes and scales (an empty and an all-zero one).
    #[test]
    fn flat_pass_equals_per_tensor_quantize() {
        tch::manual_seed(17);
        let opts = (Kind::Float, Device::Cpu);
        let parts = [
            Tensor::randn([64, 3, 7, 7], opts) * 0.05,
            Tensor::zeros([0], opts),
            Tensor::randn([5], opts),
            Tensor::zeros([9], opts),
            Tensor::randn([130_000], opts) * 1e-3,
            Tensor::randn([300], opts) * 4.0,
        ];
        let lengths: Vec<i64> = parts.iter().map(|p| p.numel() as i64).collect();
        let flat = Tensor::cat(
            &parts.iter().map(|p| p.reshape([-1])).collect::<Vec<_>>(),
            0,
        );
        let mut specs = vec![
            QuantSpec::new(Method::Ternary, 2, None).unwrap(),
            QuantSpec::new(Method::Twn, 2, None).unwrap(),
        ];
        for bits in [2, 3, 4, 6, 8] {
            for method in [Method::Lbw, Method::Pow2, Method::Uniform, Method::Exact] {
                specs.push(QuantSpec::new(method, bits, None).unwrap());
            }
        }
        specs.push(QuantSpec::new(Method::Lbw, 4, Some(0.3)).unwrap());
        for tensor_ops in [false, true] {
            let run = |f: &dyn Fn()| {
                if tensor_ops {
                    cpu::with_tensor_ops(f)
                } else {
                    f()
                }
            };
            for spec in &specs {
                run(&|| {
                    let segments = FlatSegments::new(*spec, lengths.clone(), Device::Cpu).unwrap();
                    let mut out = Tensor::full([flat.numel() as i64], f64::NAN, opts);
                    segments.quantize_into(&flat, &mut out);
                    let mut start = 0;
                    for (part, &len) in parts.iter().zip(&lengths) {
                        let expected = quantize(part, spec).reshape([-1]);
                        let got = out.narrow(0, start, len);
                        assert!(
                            bits_equal(&got, &expected),
                            "{spec:?}, tensor ops {tensor_ops}: segment of {len} differs"
                        );
                        start += len;
                    }
                });
            }
        }
    }

    fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
        a.view_dtype(Kind::Int).equal(&b.view_dtype(Kind::Int))
    }
}
