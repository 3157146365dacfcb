//! A run's training log and curves: `log.jsonl` holds exactly the logged iterations and
//! the evaluation, `curves.png` decodes and `summary.md` links both; a resumed run's log
//! continues without a repeated or missing iteration, whether the lines after its
//! checkpoint were left by a SIGKILL or planted; Ctrl-C (SIGTERM) draws the curves.
mod common;

use common::{assert_success, lbwnet_command, path_arg};
use lbwnet::config::ExperimentConfig;
use lbwnet::train::checkpoint;
use lbwnet::train::curves::{read_log, Record, CURVES_FILE, LOG_FILE};
use lbwnet::train::schedule::learning_rate;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `iterations` of the tiny model with a checkpoint every 3 and a log line every 2.
fn tiny_yaml(root: &Path, iterations: usize) -> String {
    format!(
        r#"
name: curves
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
quant: {{bits: 6, method: lbw}}
train:
  iterations: {iterations}
  lr: 0.005
  lr_steps: [5]
  warmup_iterations: 2
  checkpoint_interval: 3
  log_interval: 2
  output_dir: {runs}
  device: cpu
  threads: 1
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    )
}

/// Writes the tiny config into `root` and loads it.
fn tiny_config(root: &Path, iterations: usize) -> (PathBuf, ExperimentConfig) {
    let path = root.join("tiny.yaml");
    std::fs::write(&path, tiny_yaml(root, iterations)).unwrap();
    let cfg = ExperimentConfig::load(&path, &[]).unwrap();
    (path, cfg)
}

/// The log's lines without their wall-clock fields (which every iteration line has):
/// what two runs of one config agree on.
fn timing_free(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join(LOG_FILE)).unwrap();
    text.lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if value["type"] == "iteration" {
                let map = value.as_object_mut().unwrap();
                for key in ["images_per_second", "elapsed_seconds"] {
                    assert!(map.remove(key).is_some(), "no {key} in {line}");
                }
            }
            value
        })
        .collect()
}

fn iterations_logged(run_dir: &Path) -> Vec<usize> {
    read_log(&run_dir.join(LOG_FILE))
        .unwrap()
        .iter()
        .filter(|r| matches!(r, Record::Iteration(_)))
        .map(Record::iteration)
        .collect()
}

/// The PNG decodes, is the curves' size and is a picture, not a blank.
fn assert_curves_png(run_dir: &Path) {
    let path = run_dir.join(CURVES_FILE);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 20_000,
        "{} is {} bytes",
        path.display(),
        bytes.len()
    );
    let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(image.width(), 1000);
    assert!(image.height() >= 1000, "{}", image.height());
    let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "{} colours", colours.len());
}

fn resume(run_dir: &Path) {
    assert_success(
        lbwnet_command()
            .args(["--quiet", "train", "--resume", path_arg(run_dir)])
            .output()
            .unwrap(),
    );
}

#[test]
fn the_log_holds_the_logged_iterations_and_a_resume_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cfg) = tiny_config(dir.path(), 7);
    let (metrics, _) = lbwnet::train::trainer::train(&cfg, None).unwrap();
    let run_dir = cfg.run_dir();

    // Every `log_interval`-th iteration and the last, then the evaluation.
    let records = read_log(&run_dir.join(LOG_FILE)).unwrap();
    assert_eq!(iterations_logged(&run_dir), vec![2, 4, 6, 7]);
    for record in &records[..4] {
        let Record::Iteration(r) = record else {
            panic!("{record:?}")
        };
        assert_eq!(r.lr, learning_rate(&cfg.train, r.iteration - 1));
        let names: Vec<&str> = r.losses.keys().map(String::as_str).collect();
        assert_eq!(names, ["rpn_cls", "rpn_box", "cls", "box"]);
        let sum: f64 = r.losses.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - r.loss).abs() < 1e-4 * r.loss.max(1.0), "{r:?}");
        assert!(
            r.images_per_second > 0.0 && r.elapsed_seconds > 0.0,
            "{r:?}"
        );
    }
    let Record::Evaluation(eval) = &records[4] else {
        panic!("{:?}", records[4])
    };
    assert_eq!(records.len(), 5);
    assert_eq!((eval.iteration, eval.map), (7, metrics.map));
    assert_eq!(eval.metric, metrics.metric);
    assert_eq!(eval.coco_ap, metrics.coco["ap"].as_f64().unwrap());
    assert_curves_png(&run_dir);
    let summary = std::fs::read_to_string(run_dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("](curves.png)") && summary.contains("](log.jsonl)"),
        "{summary}"
    );
    let reference = timing_free(&run_dir);
    let reference_png = std::fs::read(run_dir.join(CURVES_FILE)).unwrap();

    // A kill after iteration 7 had been logged but before its checkpoint, cutting the
    // next line short: the resume from 6 (the older checkpoints are not kept) drops 7
    // (logged again), the evaluation and the broken line.
    let marker = checkpoint::checkpoint_dir(&run_dir).join("iter_0000007.json");
    std::fs::remove_file(marker).unwrap();
    let log_path = run_dir.join(LOG_FILE);
    let mut text = std::fs::read_to_string(&log_path).unwrap();
    text.push_str(r#"{"type":"iteration","iteration":8,"lo"#);
    std::fs::write(&log_path, text).unwrap();
    resume(&run_dir);
    assert_eq!(iterations_logged(&run_dir), vec![2, 4, 6, 7]);
    assert_eq!(timing_free(&run_dir), reference);
    // The curves of the resumed run are the uninterrupted run's.
    assert!(std::fs::read(run_dir.join(CURVES_FILE)).unwrap() == reference_png);

    // Resuming the finished run evaluates it again: its evaluation is not repeated.
    resume(&run_dir);
    assert_eq!(timing_free(&run_dir), reference);

    // Resuming it to train longer keeps the evaluation at 7 and adds 8, 9 and one at 9.
    assert_success(
        lbwnet_command()
            .args(["--quiet", "train", "--resume", path_arg(&run_dir)])
            .args(["--set", "train.iterations=9"])
            .output()
            .unwrap(),
    );
    let longer = timing_free(&run_dir);
    assert_eq!(longer[..5], reference[..]);
    let tail: Vec<(&str, u64)> = longer[5..]
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap(),
                v["iteration"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [("iteration", 8), ("iteration", 9), ("evaluation", 9)]
    );
    assert_curves_png(&run_dir);
}

/// Iterations of the complete checkpoints in `run_dir`.
fn checkpoints(run_dir: &Path) -> Vec<usize> {
    let found = checkpoint::find_latest(run_dir);
    match found {
        Ok(found) => found
            .complete
            .map(|(_, s)| vec![s.iteration])
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn spawn_train(config: &Path, overrides: &[&str]) -> std::process::Child {
    let mut command = lbwnet_command();
    command.args(["--quiet", "train", "--config", path_arg(config)]);
    for set in overrides {
        command.args(["--set", set]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_run_sigkilled_after_logging_past_its_checkpoint_resumes_its_log() {
    const ITERATIONS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (config, cfg) = tiny_config(dir.path(), ITERATIONS);
    let run_dir = cfg.run_dir();
    let log_every = ["train.log_interval=1"];

    // The uninterrupted reference, in a directory of its own.
    let reference_runs = dir.path().join("reference");
    let reference_out = format!("train.output_dir={}", reference_runs.display());
    let mut reference = spawn_train(&config, &[log_every[0], &reference_out]);
    assert!(reference.wait().unwrap().success());
    let reference_dir = reference_runs.join("curves").join(cfg.quant_tag());

    // Killed once the log is ahead of the newest checkpoint (which is before the end).
    let started = Instant::now();
    let (at, logged) = loop {
        assert!(started.elapsed() < Duration::from_secs(120), "never caught");
        std::fs::remove_dir_all(&run_dir).ok();
        let mut child = spawn_train(&config, &log_every);
        let caught = loop {
            if child.try_wait().unwrap().is_some() {
                break false; // finished first: try again
            }
            let at = checkpoints(&run_dir).last().copied().unwrap_or(0);
            let logged = std::fs::read_to_string(run_dir.join(LOG_FILE))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if at > 0 && logged > at && at < ITERATIONS {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let at = checkpoints(&run_dir).last().copied().unwrap_or(0);
        let logged = iterations_logged(&run_dir);
        if caught && at < ITERATIONS && logged.last().is_some_and(|&l| l > at) {
            break (at, logged);
        }
    };
    // The kill left iterations past the checkpoint, which the resume logs again, once.
    assert_eq!(logged, (1..=logged.len()).collect::<Vec<_>>());
    resume(&run_dir);
    assert_eq!(
        iterations_logged(&run_dir),
        (1..=ITERATIONS).collect::<Vec<_>>(),
        "killed at a checkpoint at {at} with {logged:?} logged"
    );
    assert_eq!(timing_free(&run_dir), timing_free(&reference_dir));
    assert!(
        std::fs::read(run_dir.join(CURVES_FILE)).unwrap()
            == std::fs::read(reference_dir.join(CURVES_FILE)).unwrap()
    );
}

#[test]
fn sigterm_draws_the_curves_of_the_logged_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cfg) = tiny_config(dir.path(), 1_000_000);
    let run_dir = cfg.run_dir();
    let mut child = spawn_train(&config, &["train.checkpoint_interval=0"]);
    let started = Instant::now();
    while iterations_logged_or_none(&run_dir) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(!child.wait().unwrap().success());
    let at = checkpoints(&run_dir)[0];
    let logged = iterations_logged(&run_dir);
    assert!(
        logged.len() >= 2 && *logged.last().unwrap() <= at,
        "{logged:?}, checkpoint {at}"
    );
    assert_curves_png(&run_dir);
}

/// Lines in the run's log so far (0 before it exists).
fn iterations_logged_or_none(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join(LOG_FILE))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}
