//! onnxruntime's side of `lbwnet bench detect`: the exported ONNX model timed by
//! `scripts/onnx-bench.py` (carried in the binary) in a Python with onnxruntime, by
//! default the project's environment the binary was built from (`make setup` installs
//! onnxruntime there).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

const BENCH_SCRIPT: &str = include_str!("../../scripts/onnx-bench.py");

/// One onnxruntime configuration's timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnnxruntimeTiming {
    /// intra-op threads; 0 is onnxruntime's default (one per physical core).
    pub threads: usize,
    /// Creating the session, which folds the weight decoding.
    pub load_ms: f64,
    /// Median images/s over the timed passes.
    pub images_per_s: f64,
    /// onnxruntime's version.
    pub onnxruntime: String,
}

/// The interpreter of the Python environment the binary was built against, else
/// `python3` from `PATH`.
pub fn default_python() -> PathBuf {
    PathBuf::from(option_env!("LBWNET_PYTHON").unwrap_or("python3"))
}

/// Times `model` on the images of `images_npz` with `threads` intra-op threads
/// (`repeats` passes after a warm-up); the script is written into `workdir`.
pub fn time_onnxruntime(
    python: &Path,
    model: &Path,
    images_npz: &Path,
    threads: usize,
    repeats: usize,
    workdir: &Path,
) -> Result<OnnxruntimeTiming> {
    let script = workdir.join("onnx-bench.py");
    if !script.exists() {
        std::fs::write(&script, BENCH_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
    }
    let out = Command::new(python)
        .arg(&script)
        .arg(model)
        .arg(images_npz)
        .args(["--threads", &threads.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} could not time the ONNX model (onnxruntime installed? `make setup` installs it): {}",
            python.display(),
            stderr.lines().last().unwrap_or("").trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("reading onnxruntime's timing from: {line}"))
}
