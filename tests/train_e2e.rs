//! End to end on a tiny generated data set: train with checkpoints, resume from an earlier
//! checkpoint and land on the same weights, evaluate a finished run.
mod common;

use common::{lbwnet_ok, path_arg, read_weights};
use lbwnet::config::ExperimentConfig;
use lbwnet::train::checkpoint;
use lbwnet::train::trainer::train;
use std::path::Path;

fn tiny_config(root: &Path, bits: u32) -> ExperimentConfig {
    let yaml = format!(
        r#"
name: tiny
data:
  root: {data}
  min_size: 96
  max_size: 128
  loader_threads: 1
  synthetic: {{train: 6, test: 3, seed: 7, width: 128, height: 96}}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [32, 64]
  rpn: {{channels: 16, pre_nms_top_n_train: 200, post_nms_top_n_train: 50, pre_nms_top_n_test: 100, post_nms_top_n_test: 20, min_size: 2}}
  roi: {{batch_size_per_image: 32, head_hidden: 32}}
quant: {{bits: {bits}, method: lbw}}
train:
  iterations: 6
  lr: 0.005
  lr_steps: [4]
  warmup_iterations: 2
  checkpoint_interval: 3
  log_interval: 2
  output_dir: {runs}
  device: cpu
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    );
    ExperimentConfig::from_yaml_str(&yaml, &[], Path::new("tiny.yaml")).unwrap()
}

/// The iteration a resume's log (`resumed <run> at iteration N`) says it continued from.
fn resumed_at(log: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains("resumed "))?;
    let at = line.find(" at iteration ")? + " at iteration ".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn train_checkpoint_resume_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 6);
    let (metrics, report) = train(&cfg, None).unwrap();
    let run_dir = cfg.run_dir();
    assert!(
        run_dir.ends_with("tiny/w6-lbw-c7.2"),
        "{}",
        run_dir.display()
    );
    assert!(!report.ap.is_empty());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("metrics.json")).unwrap())
            .unwrap();
    // What the run reports is what it wrote and what its evaluation computed.
    assert_eq!(json["map"].as_f64(), Some(metrics.map));
    assert_eq!(metrics.map, report.map);
    // And what its comp4 files score when read back by `eval-dets` in another process.
    let dets_dir = run_dir.join("detections");
    let out = lbwnet_ok(&[
        "-q",
        "eval-dets",
        "--data",
        path_arg(&cfg.data.root),
        "--split",
        &cfg.data.test_split,
        "--dets",
        path_arg(&dets_dir),
        "--json",
    ]);
    let rescored: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("eval-dets output: {e}"));
    let map = json["map"].as_f64().unwrap();
    assert_eq!(rescored["metric"], json["metric"]);
    assert_eq!(
        rescored["map"].as_f64(),
        Some(map),
        "eval-dets on the run's comp4 files: {rescored}, metrics.json: {json}"
    );
    assert_eq!(rescored["ap"], json["ap"]);
    eprintln!("mAP {map} (eval-dets {})", rescored["map"]);
    // Six iterations on six images detect next to nothing (0.0049 when written): a mAP
    // near 1 would be an evaluator counting wrongly, not learning.
    assert!(map.is_finite() && (0.0..0.5).contains(&map), "mAP {map}");
    for key in [
        "map",
        "metric",
        "ap",
        "bits",
        "method",
        "c",
        "iterations",
        "seed",
        "coco",
    ] {
        assert!(json.get(key).is_some(), "metrics.json lacks {key}: {json}");
    }
    let timing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("timing.json")).unwrap())
            .unwrap();
    for key in ["train_seconds", "images_per_second"] {
        assert!(
            timing.get(key).is_some(),
            "timing.json lacks {key}: {timing}"
        );
    }
    assert_eq!(json["bits"], 6);
    assert!(run_dir.join("summary.md").is_file());
    let dets = std::fs::read_dir(run_dir.join("detections"))
        .unwrap()
        .count();
    assert!(dets > 0, "no comp4 files written");

    // Drop the final checkpoint, resume from iteration 3, and land on the same bits.
    let last = checkpoint::latest(&run_dir).unwrap().unwrap();
    let state = checkpoint::read_state(&last).unwrap();
    assert_eq!(state.iteration, 6);
    let final_weights = read_weights(&checkpoint::checkpoint_dir(&run_dir).join(&state.weights));
    std::fs::remove_file(&last).unwrap();
    let resumed_from =
        checkpoint::read_state(&checkpoint::latest(&run_dir).unwrap().unwrap()).unwrap();
    assert_eq!(resumed_from.iteration, 3);
    // By the binary, whose log says where it continued: a retraining from scratch would
    // land on the same weights too (CPU training is deterministic).
    let out = lbwnet_ok(&["train", "--resume", path_arg(&run_dir)]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(resumed_at(&log), Some(3), "{log}");
    let state = checkpoint::read_state(&checkpoint::latest(&run_dir).unwrap().unwrap()).unwrap();
    let resumed_weights = read_weights(&checkpoint::checkpoint_dir(&run_dir).join(&state.weights));
    assert_eq!(final_weights.len(), resumed_weights.len());
    for ((name, a), (_, b)) in final_weights.iter().zip(&resumed_weights) {
        assert!(a.equal(b), "{name} differs after resume");
    }
}

#[test]
fn evaluate_command_reads_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 32);
    train(&cfg, None).unwrap();
    let out = lbwnet_ok(&[
        "eval",
        "--run",
        cfg.run_dir().to_str().unwrap(),
        "--json",
        "--save-images",
        "2",
    ]);
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    // Evaluating the finished run again gives the numbers its training wrote.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.run_dir().join("metrics.json")).unwrap())
            .unwrap();
    for key in ["metric", "map", "ap", "coco"] {
        assert_eq!(json[key], written[key], "{key}: eval --run vs metrics.json");
    }
    let images = std::fs::read_dir(cfg.run_dir().join("eval").join("images"))
        .unwrap()
        .count();
    assert_eq!(images, 2);
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_the_run_resumes_from_the_command_line() {
    interrupt_checkpoints_and_resumes("INT");
}

/// SIGTERM is what `kill`, `scancel` and a Slurm time limit send.
#[test]
fn sigterm_writes_a_checkpoint_and_the_run_resumes() {
    interrupt_checkpoints_and_resumes("TERM");
}

fn interrupt_checkpoints_and_resumes(signal: &str) {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path(), 4);
    cfg.train.iterations = 1_000_000;
    cfg.train.checkpoint_interval = 0;
    let config_path = dir.path().join("tiny.yaml");
    std::fs::write(&config_path, cfg.to_yaml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_lbwnet");
    let mut child = std::process::Command::new(bin)
        .args(["train", "--config", config_path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("training tiny") {
        assert!(
            stderr.read_line(&mut log).unwrap() > 0,
            "training never started: {log}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!status.success());
    assert!(
        rest.contains("interrupted at iteration") && rest.contains("--resume"),
        "{rest}"
    );
    let run_dir = cfg.run_dir();
    let state = checkpoint::read_state(&checkpoint::latest(&run_dir).unwrap().unwrap()).unwrap();
    assert!(state.iteration > 0);

    let target = state.iteration + 3;
    let out = lbwnet_ok(&[
        "train",
        "--resume",
        run_dir.to_str().unwrap(),
        "--set",
        &format!("train.iterations={target}"),
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(resumed_at(&log), Some(state.iteration), "{log}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["iterations"], target);
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("mAP (voc07): "));
}
