//! End-to-end parity of the assembled Faster R-CNN with torchvision 0.26's `FasterRCNN`
//! built around the same backbone (tests/fixtures/detector.json, written by
//! tests/fixtures/make_detector_fixtures.py), for the small backbone, ResNet-50 C4 and
//! VGG-16 (RoIPool, fc6/fc7 with their dropouts), in float: anchors, RPN objectness and deltas, proposals after NMS, the sampled anchors and
//! RPN losses, the sampled RoIs with their labels and targets and the head losses (training
//! mode), then proposals and detections (eval mode).
//!
//! Weights: every parameter and buffer is the same closed-form function of its name and
//! shape on both sides (`formula_tensor`, exact float64 arithmetic), so ResNet-50 and
//! VGG-16 need no committed weights. Sampling: both draw torch's global generator in the
//! same order, so seeding it identically before the training pass picks the same anchors and
//! RoIs; the picks are compared as sets (torchvision keeps them in index order, we in draw
//! order). VGG-16's head dropout draws from the same generator after the sampling; the
//! script draws its masks over the RoIs in our order, so the training losses match too.
//!
//! Our config is set to torchvision's conventions where they differ from py-faster-rcnn's
//! (see `config_for`). Values are compared to `TOL * max(1, |torchvision|)`: absolute for
//! values up to 1 (losses, logits, deltas, scores), relative above (box coordinates in
//! pixels).
mod common;

use common::{f64s, fixture, i64s};
use lbwnet::config::{Backbone, ExperimentConfig, Pooler};
use lbwnet::detect::faster_rcnn::FasterRcnn;
use lbwnet::detect::image_list::{ImageBatch, ImageTarget};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-4;

/// The sampling draws from tch's global generator, and building a model draws from it too:
/// one case at a time.
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

// --- the weight formula (keep in sync with tests/fixtures/make_detector_fixtures.py) ---

const ALPHA: f64 = 0.618_033_988_749_894_9;

/// The gain of VGG-16's convs (see the script's `VGG_CONV_GAIN`).
const VGG_CONV_GAIN: f64 = 1.22;

/// The gain of a conv / fc weight: VGG-16's convs (`backbone.features.<index>.weight`)
/// theirs, the predictors theirs (by the name's second-to-last part), 1 elsewhere.
fn weight_gain(name: &str) -> f64 {
    let parts: Vec<&str> = name.split('.').collect();
    if let ["backbone", "features", index, "weight"] = parts.as_slice() {
        if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
            return VGG_CONV_GAIN;
        }
    }
    match parts.iter().rev().nth(1) {
        Some(&"cls_logits") => 4.0,
        Some(&"cls_score") => 2.0,
        Some(&"bbox_pred") => 0.5,
        _ => 1.0,
    }
}

/// A per-tensor offset in [0, 1) from the bytes of the tensor's name.
fn name_phase(name: &str) -> f64 {
    let h: u64 = name
        .bytes()
        .enumerate()
        .map(|(j, b)| (j as u64 + 1) * b as u64)
        .sum();
    (h as f64 * ALPHA) % 1.0
}

/// `u_i = frac(i^2 * ALPHA + phase)` over the flat index, mapped by the tensor's role
/// (see the script's `formula_tensor`).
fn formula_tensor(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    // In place: ResNet-50 C4 has 35M values, and fresh f64 buffers cost more than the math.
    let mut u = Tensor::arange(n, (Kind::Double, Device::Cpu));
    let _ = u.square_();
    let _ = u.g_mul_scalar_(ALPHA);
    let _ = u.g_add_scalar_(name_phase(name));
    let _ = u.frac_();
    if name.ends_with("running_var") {
        let _ = u.g_add_scalar_(0.5);
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        let _ = u.g_sub_scalar_(0.5);
        let _ = u.g_mul_scalar_(0.2);
    } else if shape.len() == 1 {
        let _ = u.g_mul_scalar_(0.5);
        let _ = u.g_add_scalar_(0.5);
    } else {
        let gain = weight_gain(name);
        let scale = 3f64.sqrt() * gain / ((n / shape[0]) as f64).sqrt();
        let _ = u.g_mul_scalar_(2.0);
        let _ = u.g_sub_scalar_(1.0);
        let _ = u.g_mul_scalar_(scale);
    }
    u.to_kind(Kind::Float).reshape(shape)
}

// --- fixture access ---

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn int(v: &Value) -> i64 {
    v.as_i64().expect("integer")
}

/// A `{"shape", "data"}` fixture as an f64 tensor.
fn tensor(v: &Value) -> Tensor {
    Tensor::from_slice(&f64s(&v["data"])).reshape(i64s(&v["shape"]))
}

fn to_i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64).reshape([-1])).expect("i64 values")
}

/// Largest difference per quantity, checked against the tolerance at the end.
#[derive(Default)]
struct Report {
    worst: BTreeMap<String, f64>,
    failures: Vec<String>,
}

impl Report {
    /// `|actual - expected| / max(1, |expected|)`, elementwise, worst case.
    fn close(&mut self, what: &str, actual: &Tensor, expected: &Value) {
        let expected = tensor(expected);
        let actual = actual.to_kind(Kind::Double).to_device(Device::Cpu);
        if actual.size() != expected.size() {
            self.failures.push(format!(
                "{what}: shape {:?}, torchvision {:?}",
                actual.size(),
                expected.size()
            ));
            return;
        }
        let diff = if expected.numel() == 0 {
            0.0
        } else {
            ((&actual - &expected).abs() / expected.abs().clamp_min(1.0))
                .max()
                .double_value(&[])
        };
        let entry = self.worst.entry(what.to_string()).or_insert(0.0);
        *entry = entry.max(diff);
        if diff.is_nan() || diff > TOL {
            self.failures
                .push(format!("{what}: difference {diff:e} > {TOL:e}"));
        }
    }

    fn scalar(&mut self, what: &str, actual: &Tensor, expected: &Value) {
        let expected = serde_json::json!({"shape": [], "data": [num(expected)]});
        self.close(what, actual, &expected);
    }

    fn equal(&mut self, what: &str, actual: &[i64], expected: &[i64]) {
        if actual != expected {
            self.failures
                .push(format!("{what}: {actual:?}, torchvision {expected:?}"));
        }
    }

    fn finish(self, case: &str) {
        eprintln!("{case}: largest difference per quantity (relative above 1, else absolute)");
        for (what, diff) in &self.worst {
            eprintln!("  {what:32} {diff:.2e}");
        }
        assert!(
            self.failures.is_empty(),
            "{case}: {} mismatches with torchvision:\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// Our config, set to the torchvision model's settings. Where torchvision's conventions
/// differ from py-faster-rcnn's (our defaults), the comment names both.
fn config_for(s: &Value) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::from_yaml_str(
        "name: detector-parity\n",
        &[],
        Path::new("tests/detector_parity.rs"),
    )
    .unwrap();
    let m = &mut cfg.model;
    match s["backbone"].as_str().unwrap() {
        "small" => {
            m.backbone = Backbone::Small;
            m.small_width = int(&s["small_width"]);
            m.roi.head_hidden = int(&s["head_hidden"]);
        }
        "resnet50" => m.backbone = Backbone::Resnet50,
        "vgg16" => m.backbone = Backbone::Vgg16,
        other => panic!("unknown backbone {other}"),
    }
    m.anchor_sizes = f64s(&s["anchor_sizes"]);
    m.anchor_ratios = f64s(&s["anchor_ratios"]);
    m.feature_stride = int(&s["feature_stride"]);

    // torchvision's RPNHead conv keeps the trunk's width; ours is `rpn.channels` (512).
    m.rpn.channels = int(&s["rpn_channels"]);
    m.rpn.fg_iou = num(&s["rpn_fg_iou"]);
    m.rpn.bg_iou = num(&s["rpn_bg_iou"]);
    m.rpn.batch_size_per_image = int(&s["rpn_batch_size_per_image"]) as usize;
    m.rpn.positive_fraction = num(&s["rpn_positive_fraction"]);
    // Top-n: torchvision 2000/2000 (train), 1000/1000 (test); py-faster-rcnn 12000/2000,
    // 6000/300. The fixture uses small values on both sides.
    m.rpn.pre_nms_top_n_train = int(&s["rpn_pre_nms_top_n_train"]) as usize;
    m.rpn.post_nms_top_n_train = int(&s["rpn_post_nms_top_n_train"]) as usize;
    m.rpn.pre_nms_top_n_test = int(&s["rpn_pre_nms_top_n_test"]) as usize;
    m.rpn.post_nms_top_n_test = int(&s["rpn_post_nms_top_n_test"]) as usize;
    m.rpn.nms_thresh = num(&s["rpn_nms_thresh"]);
    // Minimum proposal side: torchvision 1e-3 px at network-input scale (only empty boxes
    // go); py-faster-rcnn 16 px at original-image scale. The batch's scales are 1 below.
    m.rpn.min_size = num(&s["rpn_min_size"]);
    // Smooth-L1: torchvision beta 1/9 in both losses; py-faster-rcnn sigma 3 (beta 1/9) in
    // the RPN but sigma 1 (beta 1) in the head. beta = 1 / sigma^2.
    m.rpn.smooth_l1_sigma = 1.0 / num(&s["rpn_smooth_l1_beta"]).sqrt();
    m.roi.smooth_l1_sigma = 1.0 / num(&s["roi_smooth_l1_beta"]).sqrt();

    // RoIAlign unless the case says RoIPool (VGG-16, as in py-faster-rcnn).
    m.roi.pooler = match s.get("pooler").map(|p| p.as_str().unwrap()) {
        None | Some("roi_align") => Pooler::RoiAlign,
        Some("roi_pool") => Pooler::RoiPool,
        Some(other) => panic!("unknown pooler {other}"),
    };
    m.roi.sampling_ratio = int(&s["roi_sampling_ratio"]);
    m.roi.aligned = false;
    // RoIs per image: torchvision 512, py-faster-rcnn 128 (small here on both sides).
    m.roi.batch_size_per_image = int(&s["roi_batch_size_per_image"]) as usize;
    m.roi.positive_fraction = num(&s["roi_positive_fraction"]);
    m.roi.fg_iou = num(&s["roi_fg_iou"]);
    // Background band [0, 0.5): torchvision's, and our default (py-faster-rcnn's end-to-end
    // setting); `roi.bg_iou_lo` raises the lower end.
    m.roi.bg_iou_hi = num(&s["roi_bg_iou"]);
    m.roi.bg_iou_lo = 0.0;
    let w = f64s(&s["roi_box_weights"]);
    m.roi.box_weights = [w[0], w[1], w[2], w[3]];

    cfg.eval.score_thresh = num(&s["score_thresh"]);
    // Per-class NMS at test time: torchvision 0.5, py-faster-rcnn 0.3.
    cfg.eval.nms_thresh = num(&s["nms_thresh"]);
    cfg.eval.detections_per_image = int(&s["detections_per_image"]) as usize;
    assert!(cfg.quant.is_float());
    cfg.validate().unwrap();
    cfg
}

/// Builds our model and gives every variable the formula's value; checks the variable
/// names, shapes and values against the fixture's list of torchvision's tensors.
fn build(case: &Value, cfg: &ExperimentConfig) -> (nn::VarStore, FasterRcnn) {
    let vs = nn::VarStore::new(Device::Cpu);
    let num_classes = int(&case["settings"]["num_classes"]) as usize;
    let model = FasterRcnn::new(&vs.root(), cfg, num_classes).unwrap();
    let mut ours: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    ours.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = case["params"].as_array().unwrap();
    let ours_names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    let their_names: Vec<&str> = expected
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        ours_names, their_names,
        "our variables and torchvision's state_dict (renamed) differ"
    );
    for ((name, var), p) in ours.iter().zip(expected) {
        let shape = var.size();
        assert_eq!(shape, i64s(&p["shape"]), "{name}: shape");
        let value = formula_tensor(name, &shape);
        tch::no_grad(|| var.shallow_clone().copy_(&value));
        let sum = value.sum(Kind::Double).double_value(&[]);
        let abs_sum = num(&p["abs_sum"]);
        assert!(
            (sum - num(&p["sum"])).abs() <= 1e-9 * abs_sum.max(1.0),
            "{name}: the weight formula differs from the script's (sum {sum}, expected {})",
            p["sum"]
        );
    }
    (vs, model)
}

fn batch(f: &Value) -> (ImageBatch, Vec<ImageTarget>) {
    let images: Vec<Tensor> = f["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f["image_sizes"].as_array().unwrap())
        .map(|(pixels, size)| {
            let hw = i64s(size);
            let pixels = Tensor::from_slice(&i64s(pixels)).to_kind(Kind::Float);
            ((pixels - 128.0) / 64.0).reshape([3, hw[0], hw[1]])
        })
        .collect();
    let targets = f["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let boxes: Vec<f64> = t["boxes"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f64s)
                .collect();
            ImageTarget {
                boxes: Tensor::from_slice(&boxes)
                    .to_kind(Kind::Float)
                    .reshape([-1, 4]),
                labels: Tensor::from_slice(&i64s(&t["labels"])),
            }
        })
        .collect();
    let scales = vec![1.0; images.len()];
    (ImageBatch::new(&images, scales), targets)
}

fn check_case(name: &str) {
    let _rng = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    // One libtorch thread: on a busy 2-core machine (make test runs two tests at a time)
    // two threads wait on each other's barriers and take several times longer.
    tch::set_num_threads(1);
    let f = fixture("detector.json");
    let case = &f["cases"][name];
    let cfg = config_for(&case["settings"]);
    let mut report = Report::default();
    let (_vs, model) = build(case, &cfg);
    let (batch, targets) = batch(&f);
    let n = targets.len();

    // Training mode, sampling from the same seeded generator as torchvision.
    let train = &case["train"];
    tch::manual_seed(int(&case["seed"]));
    let pass = model.training_pass(&batch, &targets);
    let rpn = &pass.rpn;
    report.close("anchors", &rpn.anchors, &case["anchors"]);
    report.close("rpn objectness", &rpn.objectness, &train["objectness"]);
    report.close("rpn deltas", &rpn.deltas, &train["deltas"]);
    for (i, p) in rpn.proposals.iter().enumerate() {
        report.close("proposals (train)", p, &train["proposals"][i]);
    }
    let rpn_losses = rpn.losses.as_ref().unwrap();
    let mut pos = to_i64s(&rpn_losses.sampled_positive);
    let mut neg = to_i64s(&rpn_losses.sampled_negative);
    pos.sort_unstable();
    neg.sort_unstable();
    report.equal(
        "rpn sampled foreground",
        &pos,
        &i64s(&train["rpn_sampled_positive"]),
    );
    report.equal(
        "rpn sampled background",
        &neg,
        &i64s(&train["rpn_sampled_negative"]),
    );
    report.scalar(
        "rpn objectness loss",
        &pass.losses.rpn_objectness,
        &train["rpn_objectness_loss"],
    );
    report.scalar(
        "rpn box loss",
        &pass.losses.rpn_box_reg,
        &train["rpn_box_loss"],
    );

    // The sampled RoIs, image by image in torchvision's (ascending candidate) order.
    let rois = &pass.rois;
    let image_of = to_i64s(&rois.rois.select(1, 0));
    let candidate = to_i64s(&rois.candidate_index);
    for i in 0..n {
        let mut rows: Vec<usize> = (0..candidate.len())
            .filter(|&r| image_of[r] == i as i64)
            .collect();
        rows.sort_by_key(|&r| candidate[r]);
        let picked: Vec<i64> = rows.iter().map(|&r| candidate[r]).collect();
        report.equal(
            &format!("roi sample of image {i}"),
            &picked,
            &i64s(&train["roi_sampled"][i]),
        );
        let rows = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        report.close(
            "roi boxes",
            &rois.rois.index_select(0, &rows).narrow(1, 1, 4),
            &train["roi_boxes"][i],
        );
        report.equal(
            &format!("roi labels of image {i}"),
            &to_i64s(&rois.labels.index_select(0, &rows)),
            &i64s(&train["roi_labels"][i]),
        );
        report.close(
            "roi regression targets",
            &rois.regression_targets.index_select(0, &rows),
            &train["roi_regression_targets"][i],
        );
    }
    report.scalar(
        "head classifier loss",
        &pass.losses.classifier,
        &train["classifier_loss"],
    );
    report.scalar("head box loss", &pass.losses.box_reg, &train["box_loss"]);

    // Eval mode.
    let eval = &case["eval"];
    let inference = model.inference_pass(&batch, &cfg.eval);
    for (i, p) in inference.rpn.proposals.iter().enumerate() {
        report.close("proposals (eval)", p, &eval["proposals"][i]);
    }
    for (i, d) in inference.detections.iter().enumerate() {
        report.close("detection boxes", &d.boxes, &eval["boxes"][i]);
        report.close("detection scores", &d.scores, &eval["scores"][i]);
        report.equal(
            &format!("detection labels of image {i}"),
            &to_i64s(&d.labels),
            &i64s(&eval["labels"][i]),
        );
    }
    report.finish(name);
}

#[test]
fn small_backbone_detector_matches_torchvision() {
    check_case("small");
}

#[test]
fn resnet50_c4_detector_matches_torchvision() {
    check_case("resnet50_c4");
}

#[test]
fn vgg16_detector_matches_torchvision() {
    check_case("vgg16");
}
