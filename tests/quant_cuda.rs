//! CPU and CUDA give identical codes, scales and values (skipped without CUDA).
use lbwnet::quant::{quantize_codes, Method, QuantSpec};
use tch::{Device, Kind, Tensor};

#[test]
fn cpu_and_cuda_agree() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    let cuda = Device::Cuda(0);
    tch::manual_seed(12);
    let mut specs = vec![
        QuantSpec::new(Method::Ternary, 2, None).unwrap(),
        QuantSpec::new(Method::Twn, 2, None).unwrap(),
    ];
    for bits in 2..=8 {
        for method in [Method::Lbw, Method::Exact, Method::Pow2, Method::Uniform] {
            specs.push(QuantSpec::new(method, bits, None).unwrap());
        }
    }
    for shape in [vec![1], vec![64, 3, 7, 7], vec![256, 256, 3, 3]] {
        let w = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.05;
        let w_cuda = w.to_device(cuda);
        for spec in &specs {
            let (on_cpu, on_cuda) = (quantize_codes(&w, spec), quantize_codes(&w_cuda, spec));
            assert_eq!(on_cuda.codes.device(), cuda);
            assert_eq!(on_cpu.alpha(), on_cuda.alpha(), "{spec:?}, shape {shape:?}");
            assert!(
                on_cpu.codes.equal(&on_cuda.codes.to_device(Device::Cpu)),
                "{spec:?}, shape {shape:?}: codes differ"
            );
            let values = on_cuda.dequantize();
            assert_eq!(values.device(), cuda);
            assert!(
                on_cpu.dequantize().equal(&values.to_device(Device::Cpu)),
                "{spec:?}: values differ"
            );
        }
    }
}
