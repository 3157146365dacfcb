//! `train.tf32` reaches libtorch's flags and the run's record: PyTorch's defaults when on
//! (cuDNN convolutions may use TF32, cuBLAS matmuls may not), both off when off or under
//! `train.deterministic`, as `metrics.json`'s machine record and `config.yaml` show. The
//! flags exist without a GPU, so this runs on the CPU.
mod common;

use common::{lbwnet_fails, lbwnet_ok, train_tiny_in};
use lbwnet::config::ExperimentConfig;
use std::path::Path;

const TINY: &str = r#"
name: tf32
data:
  root: data
  min_size: 96
  max_size: 128
  loader_threads: 1
  synthetic: {train: 2, test: 2, seed: 7, width: 128, height: 96}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [32, 64]
  rpn: {channels: 16, pre_nms_top_n_train: 200, post_nms_top_n_train: 50, pre_nms_top_n_test: 100, post_nms_top_n_test: 20, min_size: 2}
  roi: {batch_size_per_image: 32, head_hidden: 32}
train:
  iterations: 1
  warmup_iterations: 0
  lr_steps: []
  checkpoint_interval: 0
  output_dir: runs
  device: cpu
  threads: 1
"#;

/// Trains the tiny config in `dir` with `sets`; the run's machine record and config.yaml.
fn train(dir: &Path, sets: &[&str]) -> (serde_json::Value, String) {
    train_tiny_in(dir, TINY, sets);
    let run = dir.join("runs/tf32/fp32");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    (metrics["machine"].clone(), config)
}

fn flags(machine: &serde_json::Value) -> (bool, bool, bool) {
    (
        machine["tf32_cudnn"].as_bool().unwrap(),
        machine["tf32_cublas"].as_bool().unwrap(),
        machine["deterministic"].as_bool().unwrap(),
    )
}

#[test]
fn the_setting_reaches_libtorch_and_the_runs_record() {
    let dir = tempfile::tempdir().unwrap();
    // Default: PyTorch's TF32 defaults, and config.yaml reads as before the key.
    let (machine, config) = train(dir.path(), &[]);
    assert_eq!(flags(&machine), (true, false, false), "{machine}");
    assert!(!config.contains("  tf32:"), "{config}");
    let (machine, config) = train(dir.path(), &["train.tf32=false"]);
    assert_eq!(flags(&machine), (false, false, false), "{machine}");
    assert!(config.contains("  tf32: false"), "{config}");
    // Deterministic runs use IEEE float32 whatever train.tf32 says.
    let (machine, _) = train(dir.path(), &["train.deterministic=true", "train.tf32=true"]);
    assert_eq!(flags(&machine), (false, false, true), "{machine}");
}

#[test]
fn config_keys_are_checked_and_default_as_pytorch() {
    let cfg = ExperimentConfig::from_yaml_str(TINY, &[], Path::new("tiny.yaml")).unwrap();
    assert!(cfg.train.tf32);
    assert!(lbwnet::train::determinism::tf32_for(&cfg.train));
    let off =
        ExperimentConfig::from_yaml_str(TINY, &["train.tf32=false".into()], Path::new("t.yaml"))
            .unwrap();
    assert!(!off.train.tf32);
    // Reads back from its own YAML.
    let again =
        ExperimentConfig::from_yaml_str(&off.to_yaml().unwrap(), &[], Path::new("t.yaml")).unwrap();
    assert_eq!(again, off);
    for (set, key) in [
        ("train.tf32=maybe", "train.tf32"),
        ("model.rpn.nms_backend=gpu", "model.rpn.nms_backend"),
    ] {
        let err =
            ExperimentConfig::from_yaml_str(TINY, &[set.into()], Path::new("t.yaml")).unwrap_err();
        assert!(format!("{err:#}").contains(key), "{set}: {err:#}");
    }
    let blocks = ExperimentConfig::from_yaml_str(
        TINY,
        &["model.rpn.nms_backend=blocks".into()],
        Path::new("t.yaml"),
    )
    .unwrap();
    assert!(blocks.to_yaml().unwrap().contains("nms_backend: blocks"));
    assert!(!cfg.to_yaml().unwrap().contains("nms_backend"));
    // And through the binary, with the key named.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.yaml");
    std::fs::write(&path, TINY).unwrap();
    let path = path.to_str().unwrap();
    lbwnet_fails(
        &["train", "--config", path, "--set", "train.tf32=2"],
        "train.tf32",
    );
}

#[test]
fn info_reports_libtorchs_defaults() {
    let out = lbwnet_ok(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tf32: cudnn true, cublas false"), "{text}");
}
