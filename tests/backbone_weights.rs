//! Loading safetensors weights by name, and parity with torchvision's VGG-16 and
//! ResNet-50 on weights exported by `scripts/export_torchvision_weights.py` (skipped when
//! the torch virtualenv is not there).
use lbwnet::config::{Backbone, ModelConfig};
use lbwnet::nn::backbones::{build_backbone, LayerQuant};
use lbwnet::nn::weights::load_by_name;
use lbwnet::nn::QuantRegistry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

fn write(path: &Path, tensors: &[(&str, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

#[test]
fn load_by_name_copies_matches_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let conv = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
    write(
        &file,
        &[
            ("conv.weight", conv.copy()),
            ("fc.weight", Tensor::ones([4], (Kind::Float, Device::Cpu))),
        ],
    );

    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let weight = (&root / "backbone" / "conv").zeros("weight", &[2, 3]);
    let _bias = (&root / "backbone" / "conv").zeros("bias", &[2]);
    let _outside = (&root / "rpn").zeros("weight", &[2, 3]);
    let report = load_by_name(&vs, &file, "backbone.").unwrap();
    assert_eq!(report.loaded, ["conv.weight"]);
    assert_eq!(
        report.missing,
        ["conv.bias"],
        "variables outside the prefix are not missing"
    );
    assert_eq!(report.unused, ["fc.weight"]);
    assert!(weight.equal(&conv));
    assert!(
        weight.requires_grad(),
        "loading keeps the variable trainable"
    );
}

#[test]
fn shape_mismatch_names_tensor_file_and_shapes_and_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.safetensors");
    let ones = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, Device::Cpu));
    write(
        &file,
        &[("a.weight", ones(&[2])), ("b.weight", ones(&[5, 3]))],
    );

    let vs = nn::VarStore::new(Device::Cpu);
    let a = (vs.root() / "m" / "a").zeros("weight", &[2]);
    let _b = (vs.root() / "m" / "b").zeros("weight", &[3, 5]);
    let err = format!("{:#}", load_by_name(&vs, &file, "m.").unwrap_err());
    for needle in ["b.weight", "bad.safetensors", "[5, 3]", "[3, 5]"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    assert_eq!(
        a.sum(Kind::Float).double_value(&[]),
        0.0,
        "a failed load copies nothing"
    );
}

#[test]
fn unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let missing = dir.path().join("nope.safetensors");
    let err = format!("{:#}", load_by_name(&vs, &missing, "").unwrap_err());
    assert!(err.contains("nope.safetensors"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = format!("{:#}", load_by_name(&vs, &garbage, "").unwrap_err());
    assert!(err.contains("garbage.safetensors"), "{err}");
}

/// The torch virtualenv's python: `$LBWNET_TORCH_ENV/bin/python`, else the default cache.
fn torch_python() -> Option<PathBuf> {
    let env = std::env::var_os("LBWNET_TORCH_ENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/lbwnet/torch-2.11.0"))
        })?;
    let python = env.join("bin/python");
    python.is_file().then_some(python)
}

/// Exports torchvision `arch` with random weights plus reference outputs; `None` (and a
/// note) when there is no torch python.
fn export_random(arch: &str, dir: &Path) -> Option<(PathBuf, HashMap<String, Tensor>)> {
    let Some(python) = torch_python() else {
        eprintln!("skipping the torchvision {arch} comparison: no torch virtualenv (set LBWNET_TORCH_ENV)");
        return None;
    };
    let weights = dir.join(format!("{arch}.safetensors"));
    let reference = dir.join(format!("{arch}-reference.safetensors"));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/export_torchvision_weights.py");
    let output = Command::new(python)
        .arg(script)
        .args([
            arch,
            weights.to_str().unwrap(),
            "--random",
            "--seed",
            "7",
            "--reference",
        ])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference = Tensor::read_safetensors(&reference)
        .unwrap()
        .into_iter()
        .collect();
    Some((weights, reference))
}

fn assert_close(name: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{name} shape");
    let scale = reference.abs().max().double_value(&[]);
    let error = (ours - reference).abs().max().double_value(&[]);
    assert!(scale > 0.0, "{name}: the reference is all zeros");
    assert!(
        error <= 1e-4 * scale,
        "{name}: max error {error} against max |ref| {scale}"
    );
}

/// Loads torchvision's random `arch` into our backbone and compares trunk and head.
fn check_against_torchvision(arch: &str, backbone: Backbone, unused: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let Some((weights, reference)) = export_random(arch, dir.path()) else {
        return;
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone,
        ..Default::default()
    };
    let registry = QuantRegistry::default();
    let parts = build_backbone(
        &(vs.root() / "backbone"),
        &cfg,
        &LayerQuant::default(),
        &registry,
    )
    .unwrap();
    let report = load_by_name(&vs, &weights, "backbone.").unwrap();
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert_eq!(report.unused, unused);
    assert_eq!(report.loaded.len(), vs.variables().len());

    tch::no_grad(|| {
        let trunk = parts.trunk.forward_t(&reference["input"], false);
        assert_close(&format!("{arch} trunk"), &trunk, &reference["trunk"]);
        let head = parts.head.forward_t(&reference["head_input"], false);
        assert_close(&format!("{arch} head"), &head, &reference["head"]);
    });
}

#[test]
fn resnet50_c4_matches_torchvision_on_its_exported_weights() {
    check_against_torchvision("resnet50", Backbone::Resnet50, &["fc.bias", "fc.weight"]);
}

#[test]
fn vgg16_matches_torchvision_on_its_exported_weights() {
    check_against_torchvision(
        "vgg16",
        Backbone::Vgg16,
        &["classifier.6.bias", "classifier.6.weight"],
    );
}
