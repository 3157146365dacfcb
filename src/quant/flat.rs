//! One quantization pass over many tensors that lie back to back in one flat buffer (the
//! layers of a model that share a [`QuantSpec`]): every segment gets its own alpha and its
//! own `alpha * q`, exactly as [`quantize`] would give it tensor by tensor.
//!
//! On a GPU the per-tensor quantizer is ~20 small kernels per layer, so a model's pass is
//! launch-bound; here lbw and pow2 take a fixed number of operations for any number of
//! segments, and every one of them is parallel over the weights or over chunks of them. Each
//! segment starts at a multiple of [`CHUNK`] entries (4096) with zeros up to the next one,
//! which change no maximum and no sum (the means divide by the segments' own sizes), so the
//! buffer is a matrix of `[chunks, CHUNK]`: the scales come from row reductions (maxima and
//! exact integer limb sums, `lbw`'s module docs) and small reductions from chunks to
//! segments, and each chunk's alpha is broadcast over its row in one element-wise pass for
//! the values. On the CPU the fused kernels run segment by segment. The other methods
//! quantize each segment on its own.
use super::{baselines, cpu, lbw, levels, quantize, Method, QuantSpec};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// Entries every variable's start in a flat buffer is a multiple of (64 bytes), as a
/// separately allocated tensor's would be: convolution kernels run slower on weights at odd
/// addresses.
pub const ALIGN: i64 = 16;

/// `numel` rounded up to a multiple of [`ALIGN`]: what a variable that is not quantized in
/// a flat pass takes in a flat buffer.
pub fn aligned(numel: i64) -> i64 {
    (numel + ALIGN - 1) / ALIGN * ALIGN
}

/// Entries per chunk: the segments of a [`FlatSegments`] start at multiples of it.
pub const CHUNK: i64 = lbw::CHUNK;

/// `numel` rounded up to a multiple of [`CHUNK`]: what a segment of a [`FlatSegments`] takes
/// in its buffer.
pub fn chunked(numel: i64) -> i64 {
    lbw::chunked(numel)
}

/// Where the tensors of one spec lie in a flat buffer, and their quantizer.
#[derive(Debug)]
pub struct FlatSegments {
    spec: QuantSpec,
    /// Weights per segment, in buffer order.
    numels: Vec<i64>,
    /// Entries per segment with its padding ([`chunked`]); the segments lie back to back
    /// from the start of the buffer.
    extents: Vec<i64>,
    /// The segment of each chunk (int64 on the buffer's device).
    segment_of_chunk: Tensor,
    /// The first chunk of each segment, then the number of chunks (int64 on the device).
    bounds: Tensor,
    /// The weights per segment as float64 on the device: the denominators of the means.
    counts: Tensor,
    total: i64,
}

impl FlatSegments {
    /// Segments of `numels` weights each, laid out from the start of a flat float32 buffer
    /// on `device` at [`chunked`] extents (zeros between them), quantized by `spec`.
    pub fn new(spec: QuantSpec, numels: Vec<i64>, device: Device) -> Result<Self> {
        for &numel in &numels {
            ensure!(
                (0..=lbw::MAX_EXACT_SUM_LEN).contains(&numel),
                "a quantized tensor of {numel} weights: at most {} are supported",
                lbw::MAX_EXACT_SUM_LEN
            );
        }
        let extents: Vec<i64> = numels.iter().map(|&n| chunked(n)).collect();
        let mut segment_of_chunk = Vec::new();
        let mut bounds = vec![0];
        for (segment, &extent) in extents.iter().enumerate() {
            let chunks = extent / CHUNK;
            segment_of_chunk.extend(std::iter::repeat_n(segment as i64, chunks as usize));
            bounds.push(bounds[segment] + chunks);
        }
        let counts = Tensor::from_slice(&numels)
            .to_device(device)
            .to_kind(Kind::Double);
        Ok(FlatSegments {
            spec,
            total: extents.iter().sum(),
            numels,
            extents,
            segment_of_chunk: Tensor::from_slice(&segment_of_chunk).to_device(device),
            bounds: Tensor::from_slice(&bounds).to_device(device),
            counts,
        })
    }

    /// Where each segment starts in the buffer.
    pub fn offsets(&self) -> Vec<i64> {
        self.extents
            .iter()
            .scan(0, |start, &extent| {
                let offset = *start;
                *start += extent;
                Some(offset)
            })
            .collect()
    }

    /// `tensors` (float32, one per segment, of the segments' sizes) as this layout's flat
    /// buffer: each flattened at its segment's offset, zeros in the padding.
    pub fn lay_out(&self, tensors: &[Tensor]) -> Tensor {
        assert_eq!(tensors.len(), self.numels.len(), "one tensor per segment");
        let padded: Vec<Tensor> = tensors
            .iter()
            .zip(self.numels.iter().zip(&self.extents))
            .map(|(t, (&numel, &extent))| {
                assert_eq!(
                    t.numel() as i64,
                    numel,
                    "tensor size differs from its segment"
                );
                t.reshape([-1]).constant_pad_nd([0, extent - numel])
            })
            .collect();
        if padded.is_empty() {
            return Tensor::zeros([0], (Kind::Float, self.counts.device()));
        }
        Tensor::cat(&padded, 0)
    }

    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    /// Entries in all segments together, padding included.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Writes `Q(segment)` for every segment of `values` (1-D float32, exactly the
    /// segments with their padding, which must be zero) into `out` (1-D float32 of the same
    /// size and device; its padding becomes zero): bit for bit what [`quantize`] gives each
    /// segment.
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
        for (&numel, &extent) in self.numels.iter().zip(&self.extents) {
            // The padding is zero: it changes no sum or maximum, and its values are zero.
            let range = start..start + numel as usize;
            start += extent as usize;
            outputs[range.end..start].fill(0.0);
            let segment = &weights[range.clone()];
            if segment.is_empty() {
                continue;
            }
            let alpha = match self.spec.method {
                Method::Lbw => {
                    lbw::scale_from_sum(lbw::exact_sum_abs(segment), self.spec.c, numel as usize)
                }
                _ => baselines::pow2_scale_of_max_f32(lbw::max_abs(segment)),
            };
            levels::pow2_values_into(segment, alpha, n, &mut outputs[range]);
        }
    }

    /// lbw and pow2 as tensor ops on the buffer as `[chunks, CHUNK]`: per-segment scales
    /// from row reductions and reductions over the chunks, one scale per chunk, broadcast
    /// over its row in the element-wise pass for the values.
    fn pow2_methods_tensor(&self, values: &Tensor) -> Tensor {
        let rows = values.view([-1, CHUNK]);
        let layout = lbw::ChunkLayout {
            segment_of_chunk: &self.segment_of_chunk,
            bounds: &self.bounds,
        };
        let alpha = match self.spec.method {
            Method::Lbw => lbw::scaled_mean_abs_segments(&rows, &layout, &self.counts, self.spec.c),
            _ => baselines::pow2_scale_of_max(&lbw::segment_max(&rows.abs(), &layout)),
        };
        let per_chunk = alpha.index_select(0, &self.segment_of_chunk).unsqueeze(1);
        levels::pow2_values_tensor(&rows, &per_chunk, self.spec.levels().max_code()).view([-1])
    }

    /// The methods without a segmented form: [`quantize`] per segment.
    fn each_segment(&self, values: &Tensor, out: &mut Tensor) {
        let _ = out.zero_();
        let mut start = 0;
        for (&numel, &extent) in self.numels.iter().zip(&self.extents) {
            if numel > 0 {
                let q = quantize(&values.narrow(0, start, numel), &self.spec);
                out.narrow(0, start, numel).copy_(&q);
            }
            start += extent;
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
        // Each part at its chunk's offset, zeros between (the layout is the same for any spec).
        let flat = FlatSegments::new(
            QuantSpec::new(Method::Lbw, 6, None).unwrap(),
            lengths.clone(),
            Device::Cpu,
        )
        .unwrap()
        .lay_out(&parts);
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
                        let padding = out.narrow(0, start + len, chunked(len) - len);
                        assert_eq!(padding.count_nonzero(None).int64_value(&[]), 0);
                        start += chunked(len);
                    }
                });
            }
        }
    }

    /// The tensor-op pass (CUDA's) launches nothing per segment: no `segment_reduce` (one
    /// CUDA thread per segment) or `repeat_interleave` (one scale per weight) at any depth,
    /// and the same operations for 3 segments as for 300.
    #[test]
    fn tensor_pass_has_no_per_segment_work() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        for method in [Method::Lbw, Method::Pow2] {
            let spec = QuantSpec::new(method, 6, None).unwrap();
            let mut top_level = Vec::new();
            for layers in [3usize, 300] {
                // Sizes from a few weights to several chunks.
                let numels: Vec<i64> = (0..layers)
                    .map(|i| [9 * (i as i64 % 7 + 1), 3 * CHUNK + 5, 27 * 64][i % 3])
                    .collect();
                let parts: Vec<Tensor> = numels.iter().map(|&n| Tensor::randn([n], opts)).collect();
                let segments = FlatSegments::new(spec, numels, Device::Cpu).unwrap();
                let flat = segments.lay_out(&parts);
                let mut out = flat.zeros_like();
                let ((), ops) = cpu::with_tensor_ops(|| {
                    crate::torch_ext::record_ops(|| segments.quantize_into(&flat, &mut out))
                });
                for op in &ops {
                    assert!(
                        !op.name.contains("segment_reduce")
                            && !op.name.contains("repeat_interleave"),
                        "{method}, {layers} layers: {} at depth {}",
                        op.name,
                        op.depth
                    );
                }
                let names: Vec<String> = ops
                    .iter()
                    .filter(|op| op.depth == 0)
                    .map(|op| op.name.clone())
                    .collect();
                println!(
                    "{method}, {layers} layers: {} top-level ops: {names:?}",
                    names.len()
                );
                top_level.push(names);
                let mut start = 0;
                for (part, &offset) in parts.iter().zip(&segments.offsets()) {
                    assert_eq!(offset, start);
                    let got = out.narrow(0, offset, part.numel() as i64);
                    assert!(
                        bits_equal(&got, &quantize(part, &spec)),
                        "{method}, {layers} layers"
                    );
                    start += chunked(part.numel() as i64);
                }
            }
            assert!(!top_level[0].is_empty());
            assert_eq!(
                top_level[0], top_level[1],
                "{method}: 3 layers vs 300 layers"
            );
        }
    }

    fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
        a.view_dtype(Kind::Int).equal(&b.view_dtype(Kind::Int))
    }
}
