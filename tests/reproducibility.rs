//! `train.seed` fixes everything on CPU: the binary run twice, in two processes and two
//! working directories, writes byte-identical checkpoints, metrics and detections, and
//! another seed starts from other initial weights.
mod common;

use common::{lbwnet_command, read_weights, train_tiny_in};
use std::path::Path;

/// A tiny config with relative paths, so two working directories give the same bytes
/// (metrics.json and config.yaml name the run directory).
const TINY: &str = r#"
name: repro
data:
  root: data
  min_size: 96
  max_size: 128
  loader_threads: 2
  synthetic: {train: 6, test: 3, seed: 7, width: 128, height: 96}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [32, 64]
  rpn: {channels: 16, pre_nms_top_n_train: 200, post_nms_top_n_train: 50, pre_nms_top_n_test: 100, post_nms_top_n_test: 20, min_size: 2}
  roi: {batch_size_per_image: 32, head_hidden: 32}
quant: {bits: 6, method: lbw}
train:
  iterations: 4
  lr: 0.005
  lr_steps: [3]
  warmup_iterations: 1
  batch_size: 2
  checkpoint_interval: 2
  output_dir: runs
  device: cpu  # byte-identical runs are the CPU's guarantee (SPEC §3.5); CUDA kernels may not be
  threads: 1
"#;

/// Trains the tiny config in `dir` with `sets` and returns the run directory.
fn train_in(dir: &Path, sets: &[&str]) -> std::path::PathBuf {
    train_tiny_in(dir, TINY, sets);
    dir.join("runs/repro/w6-lbw-c7.2")
}

/// Every file under `dir`, relative path and bytes, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_in_two_processes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (run_a, run_b) = (train_in(a.path(), &[]), train_in(b.path(), &[]));
    let (files_a, files_b) = (files(&run_a), files(&run_b));
    // Only wall-clock figures may differ: the timing file, the checkpoint markers'
    // seconds, the summary's speed line and the log's images/s and elapsed seconds.
    // Everything else is compared byte for byte (the curves too).
    let timing_free = |files: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .filter(|(name, _)| name != "timing.json")
            .map(|(name, bytes)| {
                let text = || String::from_utf8(bytes.clone()).unwrap();
                let kept = if name == "summary.md" {
                    let lines: Vec<String> = text()
                        .lines()
                        .filter(|l| !l.contains("images/s"))
                        .map(String::from)
                        .collect();
                    assert_eq!(lines.len() + 1, text().lines().count(), "one speed line");
                    lines.join("\n").into_bytes()
                } else if name == "log.jsonl" {
                    let lines: Vec<String> = text()
                        .lines()
                        .map(|line| {
                            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
                            if record["type"] == "iteration" {
                                let map = record.as_object_mut().unwrap();
                                for key in ["images_per_second", "elapsed_seconds"] {
                                    assert!(map.remove(key).is_some(), "{line} has no {key}");
                                }
                            }
                            record.to_string()
                        })
                        .collect();
                    lines.join("\n").into_bytes()
                } else if name.starts_with("checkpoints") && name.ends_with(".json") {
                    let mut marker: serde_json::Value = serde_json::from_str(&text()).unwrap();
                    let seconds = marker.as_object_mut().unwrap().remove("train_seconds");
                    assert!(seconds.is_some(), "{name} has no train_seconds");
                    marker.to_string().into_bytes()
                } else {
                    bytes.clone()
                };
                (name.clone(), kept)
            })
            .collect()
    };
    let names: Vec<&str> = files_a.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "metrics.json",
        "config.yaml",
        "log.jsonl",
        "curves.png",
        "checkpoints/iter_0000002.safetensors",
        "checkpoints/iter_0000004.safetensors",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    assert!(names
        .iter()
        .any(|n| n.starts_with("detections/comp4_det_test_")));
    assert_records_the_machine(&run_a);
    let (kept_a, kept_b) = (timing_free(&files_a), timing_free(&files_b));
    assert_eq!(
        kept_a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        kept_b.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, bytes_a), (_, bytes_b)) in kept_a.iter().zip(&kept_b) {
        assert!(
            bytes_a == bytes_b,
            "{name} differs between two runs of one config"
        );
    }
}

/// What decided the run's bits besides its config is in `metrics.json` and `summary.md`.
fn assert_records_the_machine(run: &Path) {
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let machine = &metrics["machine"];
    for field in ["cpu", "aten_cpu_capability", "onednn_isa", "lbwnet"] {
        assert!(
            !machine[field].as_str().unwrap_or_default().is_empty(),
            "machine.{field} missing: {machine}"
        );
    }
    assert!(
        machine["torch"].as_str().unwrap().starts_with("2.11"),
        "{machine}"
    );
    assert_eq!(
        machine["threads"], 1,
        "the config's train.threads: {machine}"
    );
    assert_eq!(machine["device"], "cpu");
    assert!(machine["tf32_cudnn"].is_boolean() && machine["deterministic"].is_boolean());
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    let cpu = machine["cpu"].as_str().unwrap();
    assert!(
        summary.contains("## Machine") && summary.contains(cpu) && summary.contains("1 thread(s)"),
        "{summary}"
    );
}

#[test]
fn another_seed_starts_from_other_weights() {
    // One iteration at a negligible learning rate: the checkpoint is the initialization.
    let init = [
        "train.iterations=1",
        "train.lr=1e-12",
        "train.lr_steps=[]",
        "train.warmup_iterations=0",
    ];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut with_seed_1 = init.to_vec();
    with_seed_1.push("train.seed=1");
    let weights =
        |run: std::path::PathBuf| read_weights(&run.join("checkpoints/iter_0000001.safetensors"));
    let (seed0, seed1) = (
        weights(train_in(a.path(), &init)),
        weights(train_in(b.path(), &with_seed_1)),
    );
    let mut convs = 0;
    for ((name, w0), (_, w1)) in seed0.iter().zip(&seed1) {
        // Randomly initialized weights (biases and norms start constant).
        if name.ends_with(".weight") && w0.dim() > 1 && !name.starts_with("optimizer.") {
            convs += 1;
            let diff = (w0 - w1).abs().max().double_value(&[]);
            assert!(
                diff > 1e-3,
                "{name} is the same under seeds 0 and 1 (max diff {diff})"
            );
        }
    }
    assert!(convs > 5, "only {convs} weight tensors compared");
}

#[test]
fn a_fresh_run_removes_the_stale_results_of_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_in(dir.path(), &[]);
    assert!(run.join("metrics.json").is_file());
    // A fresh run of another config is killed once it has logged its first iteration:
    // the old results must be gone by then. (A missing test split is refused before
    // anything is written, so it cannot stop the run here.)
    std::fs::write(dir.path().join("tiny.yaml"), TINY).unwrap();
    let mut child = lbwnet_command()
        .args(["--quiet", "train", "--config", "tiny.yaml"])
        .args([
            "--set",
            "train.iterations=1000000",
            "--set",
            "train.log_interval=1",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let first_logged = || {
        std::fs::read_to_string(run.join("log.jsonl"))
            .is_ok_and(|log| log.starts_with(r#"{"type":"iteration","iteration":1,"#))
    };
    while !first_logged() {
        assert!(
            child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 60,
            "the fresh run never logged its first iteration"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for stale in [
        "metrics.json",
        "timing.json",
        "summary.md",
        "detections",
        "curves.png",
    ] {
        assert!(
            !run.join(stale).exists(),
            "stale {stale} survived a fresh run"
        );
    }
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(config.contains("iterations: 1000000"), "{config}");
    // The log is the new run's alone: its iterations from 1, no evaluation.
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    for (i, line) in log.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["type"], "iteration", "{log}");
        assert_eq!(record["iteration"], i + 1, "{log}");
    }
}
