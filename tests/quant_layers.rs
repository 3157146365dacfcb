//! Quantize-on-forward layers (SPEC §1.5): the forward sees Q(W), the gradient reaches
//! the float master weight as if it were W_q (straight-through), and the registry's
//! per-layer statistics.
use lbwnet::nn::{qconv2d, qlinear, QuantRegistry};
use lbwnet::quant::{quantize, quantize_codes, Method, QuantSpec, FLOAT_BITS};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "{what}: max difference {diff}");
}

#[test]
fn linear_gradient_is_the_gradient_at_the_quantized_weight() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let registry = QuantRegistry::default();
    let spec = QuantSpec::new(Method::Lbw, 3, None).unwrap();
    let fc = qlinear(
        &(vs.root() / "fc"),
        &registry,
        Some(spec),
        16,
        6,
        Default::default(),
    );
    let x = Tensor::randn([5, 16], (Kind::Float, Device::Cpu));
    let upstream = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));

    let y = fc.forward(&x);
    let quantized = tch::no_grad(|| quantize(&fc.weight, &spec));
    assert!(
        !quantized.equal(&fc.weight.detach()),
        "the test needs Q(W) != W"
    );
    assert_close(&y, &x.linear(&quantized, fc.bias.as_ref()), "forward");
    (&y * &upstream).sum(Kind::Float).backward();

    // The same loss with W_q as a leaf of its own.
    let leaf = quantized.detach().set_requires_grad(true);
    (x.linear(&leaf, fc.bias.as_ref().map(Tensor::detach).as_ref()) * &upstream)
        .sum(Kind::Float)
        .backward();
    assert_close(&fc.weight.grad(), &leaf.grad(), "d loss / d W");
    assert_close(
        &fc.weight.grad(),
        &upstream.transpose(0, 1).matmul(&x),
        "d loss / d W by hand",
    );
    assert_close(
        &fc.bias.as_ref().unwrap().grad(),
        &upstream.sum_dim_intlist(0, false, Kind::Float),
        "d loss / d bias",
    );
}

#[test]
fn conv_gradient_is_the_gradient_at_the_quantized_weight() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let registry = QuantRegistry::default();
    let spec = QuantSpec::new(Method::Exact, 4, None).unwrap();
    let config = nn::ConvConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let conv = qconv2d(
        &(vs.root() / "conv"),
        &registry,
        Some(spec),
        3,
        8,
        3,
        config,
    );
    let x = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
    let y = conv.forward(&x);
    let upstream = Tensor::randn(y.size(), (Kind::Float, Device::Cpu));
    (&y * &upstream).sum(Kind::Float).backward();

    let quantized = tch::no_grad(|| quantize(&conv.weight, &spec));
    let leaf = quantized.detach().set_requires_grad(true);
    let reference = x.conv2d(
        &leaf,
        conv.bias.as_ref().map(Tensor::detach).as_ref(),
        [2, 2],
        [1, 1],
        [1, 1],
        1,
    );
    assert_close(&y, &reference, "forward");
    (reference * &upstream).sum(Kind::Float).backward();
    assert_close(&conv.weight.grad(), &leaf.grad(), "d loss / d W");
}

#[test]
fn registry_lists_alpha_sparsity_and_levels_per_layer() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let registry = QuantRegistry::default();
    let spec = QuantSpec::new(Method::Lbw, 4, None).unwrap();
    let conv = qconv2d(
        &(vs.root() / "conv"),
        &registry,
        Some(spec),
        4,
        8,
        3,
        Default::default(),
    );
    let _head = qlinear(
        &(vs.root() / "head"),
        &registry,
        None,
        8,
        3,
        Default::default(),
    );
    let stats = registry.stats();
    assert_eq!(stats.len(), 2);

    let (q, f) = (&stats[0], &stats[1]);
    assert_eq!(
        (q.name.as_str(), q.shape.clone(), q.numel, q.bits),
        ("conv.weight", vec![8, 4, 3, 3], 288, 4)
    );
    let expected = quantize_codes(&conv.weight, &spec);
    assert_eq!(q.alpha, expected.alpha());
    assert_eq!(q.level_counts, expected.level_counts());
    assert_eq!(q.level_counts.len(), 5);
    assert_eq!(q.level_counts.iter().sum::<u64>(), 288);
    assert!((q.nonzero_fraction - (288 - q.level_counts[0]) as f64 / 288.0).abs() < 1e-12);

    assert_eq!(
        (f.name.as_str(), f.bits, f.alpha, f.nonzero_fraction),
        ("head.weight", FLOAT_BITS, 1.0, 1.0)
    );
    assert!(f.level_counts.is_empty());
    assert!(serde_json::to_string(&stats)
        .unwrap()
        .contains("\"level_counts\":["));
}

#[test]
fn qlinear_without_bias_has_no_bias_variable() {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let registry = QuantRegistry::default();
    let config = tch::nn::LinearConfig {
        bias: false,
        ..Default::default()
    };
    let layer = qlinear(&(vs.root() / "fc"), &registry, None, 3, 2, config);
    assert!(layer.bias.is_none());
    assert_eq!(vs.variables().keys().collect::<Vec<_>>(), vec!["fc.weight"]);
    let x = tch::Tensor::ones([1, 3], (tch::Kind::Float, tch::Device::Cpu));
    let expected = layer
        .weight
        .sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float);
    let y = tch::nn::Module::forward(&layer, &x).view([-1]);
    assert!(y.allclose(&expected, 1e-6, 1e-6, false));
}
