//! Helpers of the ONNX tests (`onnx_export`, `onnx_int8`): the project's Python
//! environment and its checker scripts, random-weight and briefly trained models, test
//! pictures, `lbwnet detect --json` / `scripts/onnx-detect.py` output.
use super::{config_under, lbwnet_ok, path_arg};
use image::RgbImage;
use lbwnet::config::ExperimentConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use tch::{Device, Tensor};

/// The project's Python environment (`make setup`): onnx, onnxruntime, numpy, pillow.
pub fn python() -> PathBuf {
    let env = std::env::var_os("LBWNET_TORCH_ENV").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/lbwnet/torch-2.11.0"),
        PathBuf::from,
    );
    env.join("bin/python")
}

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the Python environment on `args`, which must succeed; its stdout.
pub fn run_python(args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the checker `script` (a path in the repository) on `args`, which must succeed;
/// its one line of JSON.
pub fn checker(script: &str, args: &[&str]) -> Value {
    let script = repo(script);
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_python(&all);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// `tests/onnx_check.py args`.
pub fn check(args: &[&str]) -> Value {
    checker("tests/onnx_check.py", args)
}

/// A config for a model with random weights (never trained): `backbone` and its sizes.
/// `quant` is the config's `quant` mapping, e.g. `{bits: 4, method: lbw}`.
pub fn random_config(root: &Path, model: &str, quant: &str) -> ExperimentConfig {
    let yaml = format!(
        r#"
name: random
data:
  min_size: 120
  max_size: 160
  synthetic: {{train: 4, test: 2, seed: 3, width: 160, height: 120}}
model:
{model}
quant: {quant}
train:
  device: cpu
  threads: 2
"#
    );
    config_under(root, &yaml)
}

/// A run directory holding `cfg` and freshly initialized weights (seeded), exported as
/// `.lbw`; its path.
pub fn random_model(root: &Path, cfg: &ExperimentConfig, name: &str) -> PathBuf {
    random_model_with(root, cfg, name, |_| {})
}

/// [`random_model`] with its variables changed by `adjust` (without gradients, in the
/// seeded section, so that random changes are the seed's too) before they are saved.
pub fn random_model_with(
    root: &Path,
    cfg: &ExperimentConfig,
    name: &str,
    adjust: impl Fn(&HashMap<String, Tensor>),
) -> PathBuf {
    // tch's RNG is global: one initialization at a time, so the weights are the seed's.
    static SEEDED: Mutex<()> = Mutex::new(());
    let _one = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(11);
    let classes = cfg.data.synthetic.as_ref().unwrap().shapes.len();
    let (vs, _model) = lbwnet::train::setup::build_model(cfg, classes, Device::Cpu, false).unwrap();
    // Each residual branch's last norm scaled down (as zero-init-residual schemes do), so
    // that a random ResNet's activations stay of order one and its RPN proposes many boxes.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.ends_with("bn3.weight") {
                let _ = var.g_mul_scalar_(0.2);
            }
        }
        adjust(&vs.variables());
    });
    let run = root.join(name);
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join("config.yaml"), cfg.to_yaml().unwrap()).unwrap();
    let weights = run.join("checkpoints").join("random.safetensors");
    vs.save(&weights).unwrap();
    let lbw = root.join(format!("{name}.lbw"));
    lbwnet_ok(&[
        "-q",
        "export",
        "--run",
        path_arg(&run),
        "--checkpoint",
        path_arg(&weights),
        "--out",
        path_arg(&lbw),
    ]);
    lbw
}

/// A random-weight small model (width 8) at `quant` under `root`, exported as
/// `{name}.lbw` (for the refusal tests, whose outputs must not appear): its config, the
/// file, and an empty folder `root/out` for those outputs.
pub fn narrow_random_model(
    root: &Path,
    quant: &str,
    name: &str,
) -> (ExperimentConfig, PathBuf, PathBuf) {
    let cfg = random_config(root, "  backbone: small\n  small_width: 8", quant);
    let lbw = random_model(root, &cfg, name);
    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    (cfg, lbw, out_dir)
}

/// A deterministic test picture with edges and texture (any content serves random weights).
pub fn picture(path: &Path, width: u32, height: u32) {
    let image = RgbImage::from_fn(width, height, |x, y| {
        let v = |k: u32| ((x * k + y * (k + 3) + (x * y) % 29) % 256) as u8;
        image::Rgb([
            v(3),
            v(5),
            if (x / 20 + y / 20) % 2 == 0 { 40 } else { 210 },
        ])
    });
    image.save(path).unwrap();
}

/// A small model trained briefly (seconds) at `bits`: enough for detections above the
/// default score threshold of 0.05 and a non-trivial mAP. The images are resized (x1.2),
/// so the graph's Resize is part of what is compared.
pub fn trained_config(root: &Path, bits: u32) -> ExperimentConfig {
    let yaml = format!(
        r#"
name: onnx{bits}
data:
  min_size: 180
  max_size: 240
  loader_threads: 1
  synthetic: {{train: 40, test: 12, seed: 5, width: 200, height: 150}}
model:
  backbone: small
  small_width: 16
  anchor_sizes: [32, 64, 128]
  rpn: {{channels: 64, pre_nms_top_n_test: 600, post_nms_top_n_test: 100}}
  roi: {{batch_size_per_image: 64, head_hidden: 256}}
quant: {{bits: {bits}, method: lbw}}
train:
  iterations: 120
  lr: 0.02
  lr_steps: [100]
  warmup_iterations: 20
  checkpoint_interval: 0
  log_interval: 40
  device: cpu
  threads: 1
"#
    );
    config_under(root, &yaml)
}

/// [`trained_config`] at `bits` under `root`, trained by the binary (its RNG is its own,
/// not shared with the other tests') and exported as `root/model.lbw`: the config and
/// the model file.
pub fn trained_model(root: &Path, bits: u32) -> (ExperimentConfig, PathBuf) {
    let cfg = trained_config(root, bits);
    let config = root.join("onnx.yaml");
    std::fs::write(&config, cfg.to_yaml().unwrap()).unwrap();
    lbwnet_ok(&["-q", "train", "--config", path_arg(&config)]);
    let lbw = root.join("model.lbw");
    lbwnet_ok(&[
        "-q",
        "export",
        "--run",
        path_arg(&cfg.run_dir()),
        "--out",
        path_arg(&lbw),
    ]);
    (cfg, lbw)
}

/// One detection of `lbwnet detect --json` / `scripts/onnx-detect.py`.
#[derive(Debug, Clone)]
pub struct Found {
    pub class: String,
    pub score: f64,
    pub bbox: [f64; 4],
}

/// Per image (in input order): its size and detections, from JSON lines.
pub fn parse_detections(stdout: &str) -> Vec<((u32, u32), Vec<Found>)> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let size = (
                v["width"].as_u64().unwrap() as u32,
                v["height"].as_u64().unwrap() as u32,
            );
            let found = v["detections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| Found {
                    class: d["class"].as_str().unwrap().to_string(),
                    score: d["score"].as_f64().unwrap(),
                    bbox: std::array::from_fn(|i| d["box"][i].as_f64().unwrap()),
                })
                .collect();
            (size, found)
        })
        .collect()
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
