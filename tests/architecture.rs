//! The architecture a config describes (`detect::architecture`, what model files are
//! checked against before anything is allocated and what the ONNX export writes) names
//! exactly the variables, shapes and quantized weights that `FasterRcnn::new` builds.
use lbwnet::config::ExperimentConfig;
use lbwnet::detect::architecture::Architecture;
use lbwnet::detect::faster_rcnn::FasterRcnn;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::Device;

fn config(model: &str, quant: &str) -> ExperimentConfig {
    let yaml = format!("name: arch\nmodel: {{{model}}}\nquant: {{{quant}}}\n");
    ExperimentConfig::from_yaml_str(&yaml, &[], Path::new("architecture.yaml")).unwrap()
}

fn check(cfg: &ExperimentConfig, classes: usize) {
    let described = Architecture::of(cfg, classes).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = FasterRcnn::new(&vs.root(), cfg, classes).unwrap();
    let built: BTreeMap<String, Vec<i64>> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect();
    let params = described.parameters();
    let listed: BTreeMap<String, Vec<i64>> = params.iter().cloned().collect();
    assert_eq!(listed.len(), params.len(), "a parameter is listed twice");
    assert_eq!(listed, built, "{:?}", cfg.model.backbone);
    let count: i64 = built.values().map(|s| s.iter().product::<i64>()).sum();
    assert_eq!(described.parameter_count().unwrap(), count as u64);
    let mut quantized: Vec<String> = model.registry.with_layers(|layers| {
        layers
            .iter()
            .filter(|l| l.spec.is_some())
            .map(|l| l.name.clone())
            .collect()
    });
    let mut listed_quantized = described.quantized_weights();
    quantized.sort();
    listed_quantized.sort();
    assert_eq!(listed_quantized, quantized, "{:?}", cfg.model.backbone);
}

#[test]
fn small_backbone_at_several_widths_and_quantizer_settings() {
    for (model, quant) in [
        (
            "backbone: small, small_width: 8, roi: {head_hidden: 32}",
            "bits: 4",
        ),
        (
            "backbone: small, small_width: 12, anchor_sizes: [32], roi: {head_hidden: 16}",
            "bits: 32",
        ),
        (
            "backbone: small, small_width: 5, rpn: {channels: 7}",
            "bits: 2, float_first_conv: false, float_predictors: true",
        ),
    ] {
        check(&config(model, quant), 3);
    }
}

#[test]
fn vgg16_and_resnet50_c4() {
    check(&config("backbone: vgg16", "bits: 6"), 20);
    check(
        &config("backbone: resnet50", "bits: 4, float_first_conv: false"),
        2,
    );
}

#[test]
fn sizes_that_overflow_are_an_error() {
    // Past what the config's own checks admit: the arithmetic must hold on its own.
    let mut cfg = config("backbone: small", "bits: 4");
    cfg.model.small_width = 1 << 61;
    let err = Architecture::of(&cfg, 3)
        .and_then(|a| a.parameter_count())
        .unwrap_err();
    assert!(format!("{err:#}").contains("too large"), "{err:#}");
}
