//! onnxruntime's side of `lbwnet bench detect`: the exported ONNX model timed by
//! `scripts/onnx-bench.py` (carried in the binary) in a Python with onnxruntime, by
//! default the project's environment the binary was built from (`make setup` installs
//! onnxruntime there).
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

const BENCH_SCRIPT: &str = include_str!("../../scripts/onnx-bench.py");
const QUANTIZE_STATIC_SCRIPT: &str = include_str!("../../scripts/onnx-quantize-static.py");
/// The module the quantizer script imports from its own folder.
const COMMON_MODULE: &str = include_str!("../../scripts/onnx_common.py");

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

/// Times `models` on the images of `images_npz` with `threads` intra-op threads
/// (`repeats` passes after a warm-up, the models in turn pass by pass), the whole graph or
/// up to the value `output`; one timing per model. The script is written into `workdir`.
pub fn time_onnxruntime(
    python: &Path,
    models: &[&Path],
    images_npz: &Path,
    threads: usize,
    repeats: usize,
    output: Option<&str>,
    workdir: &Path,
) -> Result<Vec<OnnxruntimeTiming>> {
    let (first, others) = models.split_first().context("no model to time")?;
    let mut command = Command::new(python);
    command
        .arg(script(workdir, "onnx-bench.py", BENCH_SCRIPT)?)
        .arg(first)
        .arg(images_npz)
        .args(["--threads", &threads.to_string()])
        .args(["--repeats", &repeats.to_string()]);
    if let Some(output) = output {
        command.args(["--output", output]);
    }
    if !others.is_empty() {
        command.arg("--against").args(others);
    }
    let stdout = run_script(python, &mut command, "time the ONNX model")?;
    let timings = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line.trim())
                .with_context(|| format!("reading onnxruntime's timing from: {line}"))
        })
        .collect::<Result<Vec<OnnxruntimeTiming>>>()?;
    ensure!(
        timings.len() == models.len(),
        "onnxruntime timed {} of {} models",
        timings.len(),
        models.len()
    );
    Ok(timings)
}

/// onnxruntime's own `quantize_static` of the float export `float` into `out` (the
/// generic route `export --int8` is compared with), calibrated on `count` images of the
/// VOC-layout data set at `calibration`.
pub fn quantize_static(
    python: &Path,
    float: &Path,
    out: &Path,
    calibration: &Path,
    count: usize,
    workdir: &Path,
) -> Result<()> {
    script(workdir, "onnx_common.py", COMMON_MODULE)?;
    let mut command = Command::new(python);
    command
        .arg(script(
            workdir,
            "onnx-quantize-static.py",
            QUANTIZE_STATIC_SCRIPT,
        )?)
        .arg(float)
        .arg(out)
        .arg("--calibration")
        .arg(calibration)
        .args(["--count", &count.to_string()]);
    run_script(python, &mut command, "quantize the ONNX model").map(drop)
}

/// `text` written as `workdir/name` (once).
fn script(workdir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = workdir.join(name);
    if !path.exists() {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Runs `command` (a script in `python`), its stdout; an error with the last line of its
/// stderr when it fails.
fn run_script(python: &Path, command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} could not {what} (onnxruntime installed? `make setup` installs it): {}",
            python.display(),
            stderr.lines().last().unwrap_or("").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
