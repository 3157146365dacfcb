//! Helpers the integration tests share: running the built binary, reading the committed
//! fixtures, reading checkpoint weights. Each test crate uses a subset.
#![allow(dead_code)]
pub mod fuzz;
pub mod onnx;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use tch::Tensor;

/// The built `lbwnet` binary, ready for arguments.
pub fn lbwnet_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lbwnet"))
}

/// Runs `lbwnet args` and returns its output, whatever the exit.
pub fn lbwnet(args: &[&str]) -> Output {
    lbwnet_command()
        .args(args)
        .output()
        .expect("running lbwnet")
}

/// Fails the test, with the command's stderr, unless `out` is a successful exit.
pub fn assert_success(out: Output) -> Output {
    assert!(
        out.status.success(),
        "lbwnet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `yaml` as `dir/tiny.yaml` and trains it in `dir` with `--set sets`, which must
/// succeed.
pub fn train_tiny_in(dir: &Path, yaml: &str, sets: &[&str]) {
    std::fs::write(dir.join("tiny.yaml"), yaml).unwrap();
    let mut args = vec!["--quiet", "train", "--config", "tiny.yaml"];
    for set in sets {
        args.extend(["--set", set]);
    }
    assert_success(
        lbwnet_command()
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap(),
    );
}

/// Runs `lbwnet args`, which must succeed.
pub fn lbwnet_ok(args: &[&str]) -> Output {
    assert_success(lbwnet(args))
}

/// Runs a command that must fail: non-zero exit, no panic, `names` in its error; the error.
pub fn lbwnet_fails(args: &[&str], names: &str) -> String {
    let out = lbwnet(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "lbwnet {args:?} succeeded: {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "lbwnet {args:?} panicked: {stderr}"
    );
    assert!(
        stderr.contains(names),
        "lbwnet {args:?}: `{names}` not in {stderr}"
    );
    stderr
}

/// A path as a command-line argument.
pub fn path_arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The experiment config `yaml` with its data set and runs under `root` (`root/data`,
/// `root/runs`), as `--set` overrides.
pub fn config_under(root: &Path, yaml: &str) -> lbwnet::config::ExperimentConfig {
    let sets = [
        format!("data.root={}", root.join("data").display()),
        format!("train.output_dir={}", root.join("runs").display()),
    ];
    lbwnet::config::ExperimentConfig::from_yaml_str(yaml, &sets, Path::new("test.yaml")).unwrap()
}

/// A JSON fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("number array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("integer array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// The tensors of a safetensors file, sorted by name.
pub fn read_weights(path: &Path) -> Vec<(String, Tensor)> {
    let mut tensors = Tensor::read_safetensors(path).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The shipped default sweep under `--quick` with two seeds, run by the binary in a
/// temporary working directory (its data and results land there).
pub struct QuickSweep {
    pub workdir: tempfile::TempDir,
}

impl QuickSweep {
    pub fn new() -> Self {
        Self {
            workdir: tempfile::tempdir().unwrap(),
        }
    }

    /// `lbwnet -q sweep --config <repo sweep> --quick --seeds 2 --set output_dir=<out> args`.
    pub fn command(&self, out: &str, args: &[&str]) -> Command {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps/default.yaml");
        let mut command = lbwnet_command();
        command
            .current_dir(self.workdir.path())
            .args(["-q", "sweep", "--config", config.to_str().unwrap()])
            .args([
                "--quick",
                "--seeds",
                "2",
                "--set",
                &format!("output_dir={out}"),
            ])
            .args(args);
        command
    }

    pub fn run(&self, out: &str, args: &[&str]) -> Output {
        self.command(out, args).output().expect("running lbwnet")
    }

    /// The results directory of the sweep run with `output_dir=<out>`.
    pub fn results(&self, out: &str) -> std::path::PathBuf {
        self.workdir.path().join(out).join("default-quick")
    }

    /// `table.json` without what legitimately differs between executors and output
    /// directories: wall-clock seconds and run directories.
    pub fn comparable_table(&self, out: &str) -> Value {
        let path = self.results(out).join("table.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let mut table: Value = serde_json::from_str(&text).unwrap();
        table.as_object_mut().unwrap().remove("seconds");
        for row in table["rows"].as_array_mut().unwrap() {
            let row = row.as_object_mut().unwrap();
            row.remove("run_dirs");
            row.remove("train_seconds");
        }
        table
    }
}

impl QuickSweep {
    /// The bytes of the newest checkpoint's weights of job `id` (its run directory under
    /// the results), so two executors' runs can be compared exactly.
    pub fn final_weights(&self, out: &str, id: &str) -> Vec<u8> {
        use lbwnet::train::checkpoint;
        let run = self.results(out).join(id);
        let state = checkpoint::latest(&run)
            .unwrap()
            .unwrap_or_else(|| panic!("{run:?} has no checkpoint"));
        let weights = checkpoint::read_state(&state).unwrap().weights;
        std::fs::read(checkpoint::checkpoint_dir(&run).join(weights)).unwrap()
    }

    /// Asserts every job of the sweep trained the same weights, byte for byte, under
    /// `out` as under `reference`.
    pub fn assert_same_weights(&self, out: &str, reference: &str) {
        let plan = self.run(out, &["--plan", "--json"]);
        let plan: Value = serde_json::from_slice(&assert_success(plan).stdout).unwrap();
        for job in plan["jobs"].as_array().unwrap() {
            let id = job["id"].as_str().unwrap();
            assert!(
                self.final_weights(out, id) == self.final_weights(reference, id),
                "{id}: weights differ between {out} and {reference}"
            );
        }
    }
}

/// The COCO numbers in pycocotools' `stats` order (the fixtures' `stats_order`).
pub const COCO_KEYS: [&str; 9] = [
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
];

/// Asserts every `ours[k]` is within `tolerance` of pycocotools' `reference[k]`; returns the
/// largest difference.
pub fn assert_matches_pycocotools(
    what: &str,
    ours: &[f64],
    reference: &[f64],
    tolerance: f64,
) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}");
    let mut worst = 0f64;
    for (k, (a, b)) in ours.iter().zip(reference).enumerate() {
        let diff = (a - b).abs();
        assert!(
            diff <= tolerance,
            "{what}[{k}]: ours {a}, pycocotools {b}\nours {ours:?}\nref  {reference:?}"
        );
        worst = worst.max(diff);
    }
    worst
}
