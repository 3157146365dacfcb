//! Every quantizer's device-generic tensor-op path (the one CUDA runs) gives the CPU
//! kernels' scales, codes and values bit for bit: on the CPU through `with_tensor_ops`,
//! and on CUDA itself when a device is present. Every spec and shape is checked and all
//! mismatches are listed, not just the first.
use lbwnet::quant::{quantize, quantize_codes, with_tensor_ops, Method, QuantSpec, Quantized};
use tch::{Device, Kind, Tensor};

fn specs() -> Vec<QuantSpec> {
    let mut specs = vec![
        QuantSpec::new(Method::Ternary, 2, None).unwrap(),
        QuantSpec::new(Method::Twn, 2, None).unwrap(),
    ];
    for bits in 2..=8 {
        for method in [Method::Lbw, Method::Exact, Method::Pow2, Method::Uniform] {
            specs.push(QuantSpec::new(method, bits, None).unwrap());
        }
    }
    specs
}

fn weights() -> Vec<Tensor> {
    tch::manual_seed(12);
    let opts = (Kind::Float, Device::Cpu);
    let mut weights: Vec<Tensor> = [vec![1], vec![64, 3, 7, 7], vec![256, 256, 3, 3]]
        .iter()
        .map(|shape| Tensor::randn(shape.as_slice(), opts) * 0.05)
        .collect();
    // Exact level cuts, ties, signed zeros, a subnormal and an outlier.
    weights.push(Tensor::from_slice(&[
        0.75f32, -0.375, 0.5, 0.0, -0.0, 1e-40, 3.0, -0.09375, 0.1, 7.0,
    ]));
    weights
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.to_device(Device::Cpu)
        .view_dtype(Kind::Int)
        .equal(&b.to_device(Device::Cpu).view_dtype(Kind::Int))
}

/// What differs between the reference and the other path, one line per spec and weight.
fn mismatches(
    other: impl Fn(&Tensor, &QuantSpec) -> (Quantized, Tensor),
    device: Device,
) -> Vec<String> {
    let mut found = Vec::new();
    for w in weights() {
        let on_device = w.to_device(device);
        for spec in &specs() {
            let (expected, expected_values) = (quantize_codes(&w, spec), quantize(&w, spec));
            let (got, got_values) = other(&on_device, spec);
            let what = format!("{spec:?}, shape {:?}", w.size());
            if expected.alpha().to_bits() != got.alpha().to_bits() {
                found.push(format!(
                    "{what}: alpha {} vs {}",
                    expected.alpha(),
                    got.alpha()
                ));
            }
            if !expected.codes.equal(&got.codes.to_device(Device::Cpu)) {
                found.push(format!("{what}: codes differ"));
            }
            if !same_bits(&expected.dequantize(), &got.dequantize()) {
                found.push(format!("{what}: dequantized values differ"));
            }
            if !same_bits(&expected_values, &got_values) {
                found.push(format!("{what}: quantize() values differ"));
            }
            assert_eq!(got_values.device(), device);
        }
    }
    found
}

#[test]
fn tensor_op_path_matches_cpu_kernels_on_the_cpu() {
    let found = mismatches(
        |w, spec| with_tensor_ops(|| (quantize_codes(w, spec), quantize(w, spec))),
        Device::Cpu,
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn cpu_and_cuda_agree() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    // IEEE float32 throughout, as every CPU-vs-CUDA test (the quantizers use no convolution
    // or matmul today, so TF32 cannot reach them; this keeps it so).
    lbwnet::train::determinism::set_tf32(false);
    let found = mismatches(
        |w, spec| (quantize_codes(w, spec), quantize(w, spec)),
        Device::Cuda(0),
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}
