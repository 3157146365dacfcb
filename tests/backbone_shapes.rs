//! Backbone output shapes and strides, frozen layers, and quantization registration.
use lbwnet::config::{Backbone, ModelConfig};
use lbwnet::nn::backbones::{build_backbone, BackboneParts, LayerQuant};
use lbwnet::nn::weights::freeze_by_prefix;
use lbwnet::nn::QuantRegistry;
use lbwnet::quant::{Method, QuantSpec};
use std::collections::HashMap;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn model_config(backbone: Backbone) -> ModelConfig {
    let mut cfg = ModelConfig {
        backbone,
        small_width: 8,
        ..Default::default()
    };
    cfg.roi.head_hidden = 64;
    cfg
}

fn build(
    vs: &nn::VarStore,
    cfg: &ModelConfig,
    quant: &LayerQuant,
) -> (BackboneParts, QuantRegistry) {
    let registry = QuantRegistry::default();
    let parts = build_backbone(&(vs.root() / "backbone"), cfg, quant, &registry).unwrap();
    (parts, registry)
}

/// Every layer quantized except the first conv.
fn quantized_but_first_conv() -> LayerQuant {
    let spec = QuantSpec {
        method: Method::Lbw,
        bits: 6,
        c: 7.2,
    };
    LayerQuant {
        spec: Some(spec),
        float_first_conv: true,
    }
}

/// The registered layers that stay float.
fn float_layers(registry: &QuantRegistry) -> Vec<String> {
    registered(registry)
        .into_iter()
        .filter(|(_, spec)| spec.is_none())
        .map(|(name, _)| name)
        .collect()
}

fn image(h: i64, w: i64) -> Tensor {
    Tensor::randn([1, 3, h, w], (Kind::Float, Device::Cpu))
}

fn registered(registry: &QuantRegistry) -> Vec<(String, Option<QuantSpec>)> {
    registry.with_layers(|layers| layers.iter().map(|l| (l.name.clone(), l.spec)).collect())
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

/// One forward/backward/SGD step (with weight decay) of `loss`.
fn sgd_step(vs: &nn::VarStore, loss: Tensor) {
    let mut opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(vs, 0.1)
    .unwrap();
    opt.backward_step(&loss);
}

#[test]
fn vgg16_is_stride_16_with_torchvision_names_and_frozen_conv1_conv2() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let (parts, registry) = build(
        &vs,
        &model_config(Backbone::Vgg16),
        &quantized_but_first_conv(),
    );
    assert_eq!(
        (parts.trunk_channels, parts.head_dim, parts.pool_size),
        (512, 4096, 7)
    );
    let features = tch::no_grad(|| parts.trunk.forward_t(&image(64, 96), false));
    assert_eq!(features.size(), [1, 512, 4, 6]);
    let features = tch::no_grad(|| parts.trunk.forward_t(&image(100, 70), false));
    assert_eq!(features.size(), [1, 512, 6, 4]);
    let rois = Tensor::randn([3, 512, 7, 7], (Kind::Float, Device::Cpu));
    let pooled = tch::no_grad(|| parts.head.forward_t(&rois, true));
    assert_eq!(pooled.size(), [3, 4096]);

    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    let mut expected: Vec<String> = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
        .iter()
        .map(|i| format!("features.{i}"))
        .chain(["classifier.0".into(), "classifier.3".into()])
        .flat_map(|layer| {
            [
                format!("backbone.{layer}.weight"),
                format!("backbone.{layer}.bias"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(registered(&registry).len(), 15);
    assert_eq!(float_layers(&registry), ["backbone.features.0.weight"]);
    assert_eq!(
        parts.frozen_prefixes,
        [
            "backbone.features.0.",
            "backbone.features.2.",
            "backbone.features.5.",
            "backbone.features.7."
        ]
    );

    let frozen = freeze_by_prefix(&vs, &parts.frozen_prefixes);
    let expected: Vec<String> = [0, 2, 5, 7]
        .iter()
        .flat_map(|i| {
            [
                format!("backbone.features.{i}.bias"),
                format!("backbone.features.{i}.weight"),
            ]
        })
        .collect();
    assert_eq!(
        frozen, expected,
        "`features.2.` must not match `features.21.`"
    );

    let before = snapshot(&vs);
    sgd_step(
        &vs,
        parts
            .trunk
            .forward_t(&image(48, 48), true)
            .square()
            .mean(Kind::Float),
    );
    let after = vs.variables();
    for name in &frozen {
        assert!(after[name].equal(&before[name]), "{name} changed");
    }
    for name in ["backbone.features.10.weight", "backbone.features.28.weight"] {
        assert!(!after[name].equal(&before[name]), "{name} did not train");
    }
}

#[test]
fn resnet50_c4_is_stride_16_and_layer4_halves_the_pooled_rois() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let (parts, registry) = build(
        &vs,
        &model_config(Backbone::Resnet50),
        &quantized_but_first_conv(),
    );
    assert_eq!(
        (parts.trunk_channels, parts.head_dim, parts.pool_size),
        (1024, 2048, 14)
    );
    let features = tch::no_grad(|| parts.trunk.forward_t(&image(64, 96), false));
    assert_eq!(features.size(), [1, 1024, 4, 6]);
    let features = tch::no_grad(|| parts.trunk.forward_t(&image(70, 50), false));
    assert_eq!(features.size(), [1, 1024, 5, 4]);
    let rois = Tensor::randn([2, 1024, 14, 14], (Kind::Float, Device::Cpu));
    assert_eq!(
        tch::no_grad(|| parts.head.forward_t(&rois, true)).size(),
        [2, 2048]
    );

    // 1 stem conv, 3 per bottleneck (3 + 4 + 6 + 3 blocks), 4 downsample convs.
    let layers = registered(&registry);
    assert_eq!(layers.len(), 1 + 3 * 16 + 4);
    assert_eq!(layers[0].0, "backbone.conv1.weight");
    assert_eq!(float_layers(&registry), ["backbone.conv1.weight"]);
    assert_eq!(layers.last().unwrap().0, "backbone.layer4.2.conv3.weight");
    let variables = vs.variables();
    for name in [
        "backbone.bn1.running_var",
        "backbone.layer1.0.downsample.0.weight",
        "backbone.layer1.0.downsample.1.running_mean",
        "backbone.layer3.5.bn3.bias",
        "backbone.layer4.0.downsample.1.weight",
    ] {
        assert!(variables.contains_key(name), "{name} missing");
    }
    assert!(!variables.contains_key("backbone.layer1.1.downsample.0.weight"));
    assert_eq!(
        parts.frozen_prefixes,
        ["backbone.conv1.", "backbone.bn1.", "backbone.layer1."]
    );
}

#[test]
fn frozen_batch_norm_is_unchanged_by_backward_and_sgd() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let (parts, registry) = build(
        &vs,
        &model_config(Backbone::Resnet50),
        &LayerQuant::default(),
    );
    // Only the convs are trainable; the norms' four tensors are buffers.
    assert_eq!(vs.trainable_variables().len(), registered(&registry).len());
    // Non-trivial statistics, so that a change would show.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("bn") || name.contains("downsample.1") {
                t.copy_(&(t.rand_like() + 0.5));
            }
        }
    });
    let before = snapshot(&vs);
    let features = parts.trunk.forward_t(&image(64, 64), true);
    let rois = features.upsample_bilinear2d([14, 14], false, None, None);
    sgd_step(
        &vs,
        parts.head.forward_t(&rois, true).square().mean(Kind::Float),
    );

    let after = vs.variables();
    let mut norms = 0;
    for (name, t) in &after {
        let is_norm = !registered(&registry).iter().any(|(conv, _)| conv == name);
        if is_norm {
            norms += 1;
            assert!(t.equal(&before[name]), "{name} changed");
            assert!(!t.requires_grad(), "{name} requires grad");
        }
    }
    assert_eq!(norms, 4 * (1 + 3 * 16 + 4));
    for name in ["backbone.conv1.weight", "backbone.layer4.2.conv3.weight"] {
        assert!(!after[name].equal(&before[name]), "{name} did not train");
    }
}

#[test]
fn small_backbone_is_stride_16_with_documented_names() {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = model_config(Backbone::Small);
    let (parts, _) = build(&vs, &cfg, &LayerQuant::default());
    assert_eq!(
        (parts.trunk_channels, parts.head_dim, parts.pool_size),
        (64, 64, 7)
    );
    assert!(parts.frozen_prefixes.is_empty());
    let batch = Tensor::randn([2, 3, 240, 320], (Kind::Float, Device::Cpu));
    assert_eq!(parts.trunk.forward_t(&batch, true).size(), [2, 64, 15, 20]);
    assert_eq!(
        parts.trunk.forward_t(&image(100, 130), false).size(),
        [1, 64, 7, 9]
    );
    let rois = Tensor::randn([5, 64, 7, 7], (Kind::Float, Device::Cpu));
    let pooled = parts.head.forward_t(&rois, true);
    assert_eq!(pooled.size(), [5, 64]);
    assert!(
        pooled.min().double_value(&[]) >= 0.0,
        "the head ends in a ReLU"
    );

    let variables = vs.variables();
    for name in [
        "backbone.features.0.conv.weight",
        "backbone.features.0.norm.weight",
        "backbone.features.0.norm.bias",
        "backbone.classifier.0.weight",
        "backbone.classifier.2.bias",
    ] {
        assert!(variables.contains_key(name), "{name} missing");
    }
    assert_eq!(
        variables["backbone.features.0.conv.weight"].size(),
        [8, 3, 3, 3]
    );
    assert_eq!(
        variables["backbone.classifier.0.weight"].size(),
        [64, 64 * 49]
    );
}

#[test]
fn small_backbone_trains_at_batch_one() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let (parts, _) = build(&vs, &model_config(Backbone::Small), &LayerQuant::default());
    let before = snapshot(&vs);
    let features = parts.trunk.forward_t(&image(64, 64), true);
    let rois = features.upsample_bilinear2d([7, 7], false, None, None);
    sgd_step(&vs, parts.head.forward_t(&rois, true).mean(Kind::Float));
    let after = vs.variables();
    for (name, t) in &after {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{name} is not finite"
        );
        assert!(!t.equal(&before[name]), "{name} did not train");
    }
}

#[test]
fn quantized_small_backbone_registers_every_conv_and_fc() {
    let spec = QuantSpec {
        method: Method::Lbw,
        bits: 4,
        c: 3.7,
    };
    for float_first_conv in [false, true] {
        let vs = nn::VarStore::new(Device::Cpu);
        let quant = LayerQuant {
            spec: Some(spec),
            float_first_conv,
        };
        let (_, registry) = build(&vs, &model_config(Backbone::Small), &quant);
        let layers = registered(&registry);
        let weights: usize = vs
            .variables()
            .keys()
            .filter(|n| n.ends_with(".weight") && !n.contains(".norm."))
            .count();
        assert_eq!(layers.len(), weights, "every conv/fc weight is registered");
        assert_eq!(layers[0].0, "backbone.features.0.conv.weight");
        assert_eq!(
            layers[0].1,
            if float_first_conv { None } else { Some(spec) }
        );
        assert!(
            layers[1..].iter().all(|(_, s)| *s == Some(spec)),
            "{layers:?}"
        );
        assert!(layers
            .iter()
            .any(|(n, _)| n == "backbone.classifier.2.weight"));
    }
}

#[test]
fn bad_small_width_and_stride_are_refused_with_the_key() {
    let vs = nn::VarStore::new(Device::Cpu);
    let registry = QuantRegistry::default();
    let root = vs.root() / "backbone";
    let cfg = ModelConfig {
        backbone: Backbone::Small,
        small_width: 0,
        ..Default::default()
    };
    let err = build_backbone(&root, &cfg, &LayerQuant::default(), &registry)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.small_width"), "{err}");
    let cfg = ModelConfig {
        backbone: Backbone::Small,
        feature_stride: 8,
        ..Default::default()
    };
    let err = build_backbone(&root, &cfg, &LayerQuant::default(), &registry)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.feature_stride"), "{err}");
}

/// Forward + backward of the small trunk (small_width 32) on one 240x320 image.
/// `cargo test --release --test backbone_shapes -- --ignored --nocapture small_trunk_speed`
#[test]
#[ignore = "timing; run by hand"]
fn small_trunk_speed() {
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone: Backbone::Small,
        ..Default::default()
    };
    let (parts, _) = build(&vs, &cfg, &LayerQuant::default());
    let x = image(240, 320);
    let step = || {
        let loss = parts.trunk.forward_t(&x, true).square().mean(Kind::Float);
        loss.backward();
    };
    for _ in 0..3 {
        step();
    }
    // The minimum is the least disturbed by other processes on a shared machine.
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let start = std::time::Instant::now();
            step();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "small trunk (width 32) forward+backward at 240x320: min {:.1} ms, median {:.1} ms, {} threads",
        times[0],
        times[times.len() / 2],
        tch::get_num_threads()
    );
}
