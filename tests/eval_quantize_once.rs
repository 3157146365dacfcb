//! Q(W) once per evaluation (issue 28, item 2): an evaluation fills every quantized layer's
//! slot with one pass before its forwards and empties the slots afterwards. The forwards
//! give the same bits as quantizing on every forward, training after an evaluation is the
//! same as training without one, and `lbwnet bench inference` reports the comparison.
mod common;

use common::{assert_success, lbwnet_command};
use lbwnet::config::ExperimentConfig;
use lbwnet::data::loader::{load_sample, LoaderConfig};
use lbwnet::data::synthetic::ensure_synthetic;
use lbwnet::data::voc::VocDataset;
use lbwnet::detect::faster_rcnn::{FasterRcnn, InferencePass};
use lbwnet::detect::image_list::{ImageBatch, ImageTarget};
use lbwnet::nn::{FlatParameters, QuantRegistry};
use lbwnet::train::evaluate::evaluate_model;
use lbwnet::train::setup::build_model;
use lbwnet::train::sgd::Sgd;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Tensor};

const TINY: &str = r#"
name: quantize-once
data:
  min_size: 96
  max_size: 128
  loader_threads: 1
  synthetic: {train: 4, test: 3, seed: 11, width: 128, height: 96}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [32, 64]
  rpn: {channels: 16, pre_nms_top_n_train: 200, post_nms_top_n_train: 50, pre_nms_top_n_test: 100, post_nms_top_n_test: 20, min_size: 2}
  roi: {batch_size_per_image: 32, head_hidden: 32}
quant: {bits: 6, method: lbw}
eval: {score_thresh: 0.0}
train: {device: cpu, threads: 1, seed: 3}
"#;

/// The tiny config with its data set under `root` and the overrides `sets`.
fn tiny(root: &Path, sets: &[&str]) -> ExperimentConfig {
    let mut all = vec![
        format!("data.root={}", root.join("data").display()),
        format!("train.output_dir={}", root.join("runs").display()),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    let cfg = ExperimentConfig::from_yaml_str(TINY, &all, Path::new("test.yaml")).unwrap();
    ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref()).unwrap();
    cfg
}

fn open(cfg: &ExperimentConfig, split: &str) -> Arc<VocDataset> {
    Arc::new(VocDataset::open(&cfg.data.root, split, cfg.data.classes.as_deref()).unwrap())
}

fn model(cfg: &ExperimentConfig, classes: usize) -> (tch::nn::VarStore, FasterRcnn) {
    tch::set_num_threads(1);
    tch::manual_seed(cfg.train.seed as i64);
    build_model(cfg, classes, Device::Cpu, true).unwrap()
}

fn all_slots_empty(registry: &QuantRegistry) -> bool {
    registry.with_layers(|layers| layers.iter().all(|l| l.slot.get().is_none()))
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

fn same_pass(a: &InferencePass, b: &InferencePass) -> bool {
    same(&a.features, &b.features)
        && same(&a.class_logits, &b.class_logits)
        && same(&a.box_deltas, &b.box_deltas)
        && a.detections.iter().zip(&b.detections).all(|(x, y)| {
            same(&x.boxes, &y.boxes) && same(&x.scores, &y.scores) && same(&x.labels, &y.labels)
        })
}

/// On every test image, for several quantizers and bit-widths (the first conv and the
/// predictors float or not), the forwards with the slots filled once equal the forwards
/// quantizing on their own, bit for bit; the guard empties exactly the slots it filled.
#[test]
fn filled_slots_give_the_same_bits_as_quantizing_per_forward() {
    let dir = tempfile::tempdir().unwrap();
    for sets in [
        &["quant.bits=6"][..],
        &["quant.bits=2"],
        &[
            "quant.bits=4",
            "quant.float_first_conv=false",
            "quant.float_predictors=false",
        ],
        &["quant.bits=5", "quant.method=exact"],
        &["quant.bits=32"],
    ] {
        let cfg = tiny(dir.path(), sets);
        let test = open(&cfg, &cfg.data.test_split);
        let (_vs, model) = model(&cfg, test.classes.len());
        let loader = LoaderConfig::from_data_config(&cfg.data, false, 0);
        let quantized_layers = model
            .registry
            .with_layers(|l| l.iter().filter(|l| l.spec.is_some()).count());
        for index in 0..test.ids.len() {
            let sample = load_sample(&test, index, false, &loader).unwrap();
            let batch = ImageBatch::new(&[sample.image], vec![sample.scale]);
            let per_forward = model.inference_pass(&batch, &cfg.eval);
            let frozen = model.registry.quantize_frozen();
            assert_eq!(frozen.layers(), quantized_layers, "{sets:?}");
            let once = model.inference_pass(&batch, &cfg.eval);
            drop(frozen);
            assert!(all_slots_empty(&model.registry), "{sets:?}");
            assert!(same_pass(&per_forward, &once), "{sets:?} image {index}");
            assert!(
                once.detections
                    .iter()
                    .map(|d| d.scores.size()[0])
                    .sum::<i64>()
                    > 0,
                "{sets:?}: no detections to compare"
            );
        }
    }
}

/// Within a training step's pass (slots already filled), an evaluation's guard takes
/// nothing over and leaves the step's Q(W) in place when it is dropped.
#[test]
fn a_pass_inside_a_training_step_leaves_the_steps_slots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path(), &[]);
    let (vs, model) = model(&cfg, 3);
    let params = FlatParameters::new(vs.variables(), &model.registry).unwrap();
    let step = params.quantize_weights();
    let frozen = model.registry.quantize_frozen();
    assert_eq!(frozen.layers(), 0);
    drop(frozen);
    assert!(model
        .registry
        .with_layers(|l| l.iter().all(|l| l.spec.is_none() || l.slot.get().is_some())));
    drop(step);
    assert!(all_slots_empty(&model.registry));
}

/// Every variable's values by name.
type NamedWeights = Vec<(String, Vec<f32>)>;
/// Every detection file's bytes by name.
type NamedFiles = Vec<(String, Vec<u8>)>;

/// Trains `steps[0]` steps, evaluates (when `evaluate_between`), trains `steps[1]` more and
/// evaluates: the final weights (every variable's bytes) and the last evaluation's
/// detection files and report.
fn train_evaluate(
    cfg: &ExperimentConfig,
    out: &Path,
    evaluate_between: bool,
) -> (NamedWeights, NamedFiles, String) {
    let train = open(cfg, &cfg.data.train_split);
    let test = open(cfg, &cfg.data.test_split);
    let (vs, model) = model(cfg, train.classes.len());
    let params = FlatParameters::new(vs.variables(), &model.registry).unwrap();
    let mut sgd = Sgd::new(&params, 0.9, 1e-4);
    let loader = LoaderConfig::from_data_config(&cfg.data, false, 0);
    let samples: Vec<_> = (0..train.ids.len())
        .map(|i| load_sample(&train, i, false, &loader).unwrap())
        .collect();
    let mut step = |i: usize| {
        let sample = &samples[i % samples.len()];
        let batch = ImageBatch::new(&[sample.image.shallow_clone()], vec![sample.scale]);
        let targets = [ImageTarget {
            boxes: sample.boxes.shallow_clone(),
            labels: sample.labels.shallow_clone(),
        }];
        tch::manual_seed(1000 + i as i64);
        let quantized = params.quantize_weights();
        let loss = model.losses(&batch, &targets).total();
        sgd.zero_grad();
        loss.backward();
        drop(quantized);
        sgd.step(0.01);
    };
    let evaluate = |dir: &str| {
        let report = evaluate_model(
            &model,
            test.clone(),
            &cfg.data,
            &cfg.eval,
            Device::Cpu,
            &out.join(dir),
            0,
        )
        .unwrap();
        assert!(all_slots_empty(&model.registry), "slots left filled");
        report
    };
    for i in 0..3 {
        step(i);
    }
    if evaluate_between {
        let report = evaluate("between");
        assert!(report.map.is_finite());
    }
    for i in 3..6 {
        step(i);
    }
    let report = evaluate("last");
    let mut weights: Vec<(String, Vec<f32>)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(out.join("last"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    (weights, files, report.to_json().to_string())
}

/// An evaluation in the middle of training changes nothing after it: the weights and the
/// final evaluation (detection files and report) are the same bytes as with no evaluation
/// in between; a slot left filled would have served the second evaluation stale Q(W).
#[test]
fn training_after_an_evaluation_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path(), &[]);
    let (weights_a, files_a, report_a) = train_evaluate(&cfg, &dir.path().join("a"), true);
    let (weights_b, files_b, report_b) = train_evaluate(&cfg, &dir.path().join("b"), false);
    assert_eq!(weights_a.len(), weights_b.len());
    for ((name, a), (_, b)) in weights_a.iter().zip(&weights_b) {
        assert!(
            a.iter()
                .map(|v| v.to_bits())
                .eq(b.iter().map(|v| v.to_bits())),
            "{name}"
        );
    }
    assert!(!files_a.is_empty());
    assert_eq!(files_a, files_b);
    assert_eq!(report_a, report_b);
}

/// `lbwnet bench inference --json` on a tiny model: one JSON line with positive times, a
/// ratio that is their quotient, the pass timed apart, and (`--per-forward`) detections
/// identical to quantizing on every forward.
#[test]
fn bench_inference_smoke() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.yaml"), TINY).unwrap();
    let out = assert_success(
        lbwnet_command()
            .args([
                "--quiet",
                "bench",
                "inference",
                "--config",
                "tiny.yaml",
                "--size",
                "96x128",
                "--repeats",
                "2",
                "--threads",
                "1",
                "--per-forward",
                "--json",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap(),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "float_ms",
        "quantized_ms",
        "ratio",
        "quantize_pass_ms",
        "paired_ratio",
        "float_cpu_ms",
        "quantized_cpu_ms",
        "cpu_ratio",
        "per_forward_ms",
        "per_forward_cpu_ratio",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    let ratio = v["quantized_ms"].as_f64().unwrap() / v["float_ms"].as_f64().unwrap();
    assert!((v["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    assert_eq!(v["repeats"], 2);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["quantized_forwards_ms"].as_array().unwrap().len(), 2);
    assert!(v["quantized_layers"].as_u64().unwrap() > 0);
    assert_eq!(v["per_forward_identical"], true);
    assert_eq!(v["float_proposals"], v["quantized_proposals"]);
}
