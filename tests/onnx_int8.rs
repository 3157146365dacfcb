//! `lbwnet export --onnx --int8` checked by onnxruntime (through the project's Python
//! environment, `tests/onnx_int8_check.py`, `scripts/onnx-map.py` and
//! `scripts/onnx-detect.py`): every quantized conv and fc on the integer kernels after
//! onnxruntime's optimizations, the int8 weights equal to the float export's Q(W), the
//! integer convolutions requantized exactly as onnxruntime's kernels do, detections that
//! track the float export on a trained model, and the models int8 cannot hold refused.
mod common;

use common::onnx::{
    checker, listing, narrow_random_model, parse_detections, picture, random_config, random_model,
    random_model_with, repo, run_python, trained_model,
};
use common::{lbwnet, lbwnet_fails, lbwnet_ok, path_arg};
use lbwnet::deploy::format::ModelFile;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// `tests/onnx_int8_check.py args`.
fn check8(args: &[&str]) -> Value {
    checker("tests/onnx_int8_check.py", args)
}

/// The small backbone at the configs' small input size.
const SMALL: &str = "  backbone: small\n  small_width: 16\n  anchor_sizes: [32, 64]\n  rpn: {channels: 64, pre_nms_top_n_test: 200, post_nms_top_n_test: 30}\n  roi: {head_hidden: 256, sampling_ratio: 2}";

/// A large backbone with the RPN's proposals cut (RoI heads on few boxes).
fn large(backbone: &str) -> String {
    format!("  backbone: {backbone}\n  rpn: {{pre_nms_top_n_test: 300, post_nms_top_n_test: 24}}")
}

/// The RPN's 1x1 predictors: quantized convs that run as `QGemm`.
const RPN_PREDICTORS: [&str; 2] = ["rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight"];

/// The model file's quantized layers: (convs other than the RPN's predictors, fcs, all).
fn quantized_layers(lbw: &Path) -> (usize, usize, usize) {
    let layers = ModelFile::read(lbw).unwrap().meta.layers;
    let predictors = layers
        .iter()
        .filter(|l| RPN_PREDICTORS.contains(&l.name.as_str()) && l.shape.len() == 4)
        .count();
    assert_eq!(predictors, 2, "the RPN's predictors are not both quantized");
    let convs = layers.iter().filter(|l| l.shape.len() == 4).count() - predictors;
    let fcs = layers.iter().filter(|l| l.shape.len() == 2).count();
    assert_eq!(convs + predictors + fcs, layers.len());
    (convs, fcs, layers.len())
}

/// `lbwnet export --model lbw --onnx onnx` with `extra` arguments.
fn export(lbw: &Path, onnx: &Path, extra: &[&str]) {
    let mut args = vec![
        "-q",
        "export",
        "--model",
        path_arg(lbw),
        "--onnx",
        path_arg(onnx),
    ];
    args.extend_from_slice(extra);
    lbwnet_ok(&args);
}

/// `lbwnet export --model lbw --onnx onnx --int8 --calibration-images images`.
fn export_int8(lbw: &Path, onnx: &Path, images: usize) {
    export(
        lbw,
        onnx,
        &["--int8", "--calibration-images", &images.to_string()],
    );
}

/// A random-weight model `name` under `root` at `quant` (the config's `quant` mapping),
/// its variables changed by `adjust`, and its int8 export with 4 calibration images (all
/// of the synthetic training split): the `.lbw` and the `.onnx`.
fn random_int8(
    root: &Path,
    name: &str,
    model: &str,
    quant: &str,
    adjust: impl Fn(&HashMap<String, Tensor>),
) -> (PathBuf, PathBuf) {
    let cfg = random_config(root, model, quant);
    let lbw = random_model_with(root, &cfg, name, adjust);
    // The run directory's float checkpoint is not needed again (VGG-16's is 0.5 GB).
    std::fs::remove_dir_all(root.join(name)).unwrap();
    let onnx = root.join(format!("{name}-int8.onnx"));
    export_int8(&lbw, &onnx, 4);
    (lbw, onnx)
}

/// Frozen BatchNorms with statistics that differ by channel (a fresh ResNet's are the
/// identity, so every channel's folded scale would be the same): gamma times U(0.6, 1.4),
/// beta and the mean U(-0.1, 0.1), the variance U(0.5, 2).
fn spread_norms(vars: &HashMap<String, Tensor>) {
    // In name order: the draws are the seed's.
    let mut norms: Vec<&str> = vars
        .keys()
        .filter_map(|name| name.strip_suffix(".running_var"))
        .collect();
    norms.sort();
    for norm in norms {
        let var = |p: &str| vars[&format!("{norm}.{p}")].shallow_clone();
        let gamma = var("weight");
        let _ = var("weight").g_mul_(&(gamma.rand_like() * 0.8 + 0.6));
        let _ = var("bias").uniform_(-0.1, 0.1);
        let _ = var("running_mean").uniform_(-0.1, 0.1);
        let _ = var("running_var").uniform_(0.5, 2.0);
    }
}

fn seconds(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

#[test]
fn int8_graphs_run_on_integer_kernels() {
    let all = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = root.join("picture.png");
    picture(&image, 150, 110);
    // Every backbone at every bit-width int8 holds.
    let models = [
        ("small", SMALL.to_string()),
        ("resnet50", large("resnet50")),
        ("vgg16", large("vgg16")),
    ];
    for ((backbone, model), bits) in models.iter().flat_map(|m| [2, 3, 4].map(|bits| (m, bits))) {
        let name = format!("{backbone}{bits}");
        let name = name.as_str();
        let quant = format!("{{bits: {bits}, method: lbw}}");
        let quant = quant.as_str();
        let start = Instant::now();
        let (lbw, onnx) = random_int8(root, name, model, quant, |_| {});
        let exported = seconds(start);
        let (convs, fcs, _) = quantized_layers(&lbw);
        let optimized = root.join(format!("{name}-optimized.onnx"));
        let report = check8(&[
            "kernels",
            path_arg(&onnx),
            "--convs",
            &convs.to_string(),
            "--fcs",
            &fcs.to_string(),
            "--images",
            "4",
            "--picture",
            path_arg(&image),
            "--optimized",
            path_arg(&optimized),
        ]);
        eprintln!(
            "{name} {quant}: {convs} quantized convs + 2 RPN predictors, {fcs} fcs; \
             optimized: {} QLinearConv, {} QGemm, {} QLinearAdd, {} detections; ops {}; \
             original {}; calibration {}; built and exported in {exported}, total {}",
            report["qlinearconv"],
            report["qgemm"],
            report["qlinearadd"],
            report["detections"],
            report["optimized"],
            report["original"],
            report["int8"],
            seconds(start)
        );
        // The codes stay packed in the file: it is the `.lbw`'s size, not a byte a weight.
        let (lbw_bytes, onnx_bytes) = (
            std::fs::metadata(&lbw).unwrap().len(),
            std::fs::metadata(&onnx).unwrap().len(),
        );
        assert!(
            onnx_bytes as f64 <= 1.15 * lbw_bytes as f64,
            "{name}: int8 ONNX {onnx_bytes} B against the .lbw's {lbw_bytes} B"
        );
        // ResNet-50 C4's 13 trunk blocks and 3 res5 blocks each end in a fused sum.
        let sums = if *backbone == "resnet50" { 16 } else { 0 };
        assert_eq!(report["qlinearadd"], sums, "{name}: {report}");
        assert_eq!(report["qlinearconv"], convs, "{name}: {report}");
        assert_eq!(report["qgemm"], fcs + 2, "{name}: {report}");
        for path in [&lbw, &onnx, &optimized] {
            std::fs::remove_file(path).unwrap();
        }
    }
    eprintln!("int8_graphs_run_on_integer_kernels: {}", seconds(all));
}

#[test]
fn int8_integers_are_exact() {
    let all = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = root.join("picture.png");
    picture(&image, 150, 110);
    for (name, model, folded) in [
        ("small4", SMALL.to_string(), false),
        ("resnet50", large("resnet50"), true),
    ] {
        let start = Instant::now();
        let (lbw, int8) = random_int8(root, name, &model, "{bits: 4, method: lbw}", |vars| {
            if folded {
                spread_norms(vars)
            }
        });
        let float = root.join(format!("{name}-float.onnx"));
        export(&lbw, &float, &[]);
        let exported = seconds(start);
        let (convs, fcs, layers) = quantized_layers(&lbw);

        // (a) The int8 weights are the float export's Q(W).
        let weights = check8(&[
            "weights",
            path_arg(&int8),
            path_arg(&float),
            "--bits",
            "4",
            "--picture",
            path_arg(&image),
        ]);
        eprintln!("{name} weights: {weights}");
        let count = |key: &str| weights[key].as_u64().unwrap() as usize;
        let (plain, with_norm) = (count("plain_layers"), count("folded_layers"));
        assert_eq!(
            plain + with_norm,
            layers,
            "{name}: {plain} + {with_norm} int8 weights checked, {layers} quantized layers"
        );
        if folded {
            // Every conv of the trunk and the head has its BatchNorm folded; the RPN's conv,
            // its predictors and the box predictor's fcs have none.
            assert!(
                with_norm == convs - 1 && plain == fcs + 3,
                "{name}: {with_norm} folded ({convs} convs), {plain} per-tensor ({fcs} fcs): \
                 {weights}"
            );
        } else {
            assert_eq!(with_norm, 0, "{name}: {weights}");
        }
        let levels: Vec<i64> = weights["levels_seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert!(
            levels.iter().all(|l| [0, 1, 2, 4, 8].contains(&l.abs())),
            "{name}: int8 values {levels:?} outside the 4-bit LBW levels"
        );
        assert!(
            levels.contains(&8) || levels.contains(&-8),
            "{name}: the largest level never occurs: {levels:?}"
        );

        // (b) The integer convolutions, requantized as onnxruntime does.
        let requant = check8(&[
            "requantization",
            path_arg(&int8),
            "--picture",
            path_arg(&image),
        ]);
        eprintln!("{name} requantization: {requant}");
        let nodes = requant["nodes"].as_array().unwrap();
        assert!(nodes.len() >= 2, "{name}: {requant}");
        assert_eq!(requant["qlinearconv_nodes"], convs, "{name}: {requant}");
        let compared = requant["compared"].as_u64().unwrap();
        assert!(compared >= 10_000, "{name}: {compared} values compared");
        assert!(
            requant["max_abs_acc"].as_u64().unwrap() < 1 << 24,
            "{name}: {requant}"
        );
        if folded {
            assert!(
                nodes.iter().any(|n| n["per_channel_scale"] == true),
                "{name}: no per-channel node compared: {requant}"
            );
        }
        // Values strictly between 0 and 255 in every node compared: neither all clamped
        // (a ReLU's zeros, saturation) nor constant, so the rounding had work to do.
        for node in nodes {
            for level in ["disabled", "all"] {
                let run = &node[level];
                let interior = run["interior"].as_u64().unwrap();
                let values = run["values"].as_u64().unwrap();
                assert!(
                    interior * 10 >= values,
                    "{name}: node {node} ({level}): {interior} of {values} outputs inside (0, 255)"
                );
            }
        }
        eprintln!(
            "{name}: exported in {exported}, {compared} requantized outputs equal (two \
             kernels), total {}",
            seconds(start)
        );
        for path in [&lbw, &int8, &float] {
            std::fs::remove_file(path).unwrap();
        }
    }
    eprintln!("int8_integers_are_exact: {}", seconds(all));
}

#[test]
fn int8_detections_track_the_float_export_and_onnx_detect_runs_them() {
    let all = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (cfg, lbw) = trained_model(root, 4);
    let trained = seconds(all);
    let float = root.join("model.onnx");
    export(&lbw, &float, &[]);
    let start = Instant::now();
    let int8 = root.join("model-int8.onnx");
    export_int8(&lbw, &int8, 40);
    let calibrated = seconds(start);

    let start = Instant::now();
    let data = path_arg(&cfg.data.root);
    let out = run_python(&[
        path_arg(&repo("scripts/onnx-map.py")),
        path_arg(&float),
        path_arg(&int8),
        "--data",
        data,
        "--split",
        "test",
        "--lbwnet",
        env!("CARGO_BIN_EXE_lbwnet"),
        "--out",
        path_arg(&root.join("comp4")),
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (float_map, int8_map) = (
        lines[0]["map"].as_f64().unwrap(),
        lines[1]["map"].as_f64().unwrap(),
    );
    let vs = &lines[1]["vs_first"];
    let matched = vs["matched_fraction"].as_f64().unwrap();
    let mean_iou = vs["mean_iou"].as_f64().unwrap();
    eprintln!(
        "trained 4-bit: mAP float ONNX {float_map:.4}, int8 {int8_map:.4} (difference \
         {:+.4}); int8 vs float: matched_fraction {matched:.4}, mean_iou {mean_iou:.4}, \
         mean_abs_score_diff {}; detections {} / {} on {} images",
        int8_map - float_map,
        vs["mean_abs_score_diff"],
        lines[0]["detections"],
        lines[1]["detections"],
        lines[1]["images"]
    );
    let onnx_map = seconds(start);
    assert!(float_map > 0.02, "the run learned nothing: mAP {float_map}");
    assert!(
        lines[0]["detections"].as_u64().unwrap() >= 50,
        "too few detections to compare: {out}"
    );
    assert!(
        matched >= 0.8,
        "matched_fraction {matched} < 0.8 (int8 vs float): {out}"
    );
    assert!(mean_iou >= 0.85, "mean_iou {mean_iou} < 0.85: {out}");
    assert!(
        (int8_map - float_map).abs() <= 0.05,
        "mAP int8 {int8_map} vs float {float_map}"
    );

    // The deployment script runs the int8 model as it is.
    let ids = std::fs::read_to_string(cfg.data.root.join("ImageSets/Main/test.txt")).unwrap();
    let images: Vec<PathBuf> = ids
        .split_whitespace()
        .take(2)
        .map(|id| cfg.data.root.join("JPEGImages").join(format!("{id}.jpg")))
        .collect();
    let thresh = cfg.eval.score_thresh.to_string();
    let out = run_python(&[
        path_arg(&repo("scripts/onnx-detect.py")),
        "--model",
        path_arg(&int8),
        "--score-thresh",
        &thresh,
        path_arg(&images[0]),
        path_arg(&images[1]),
    ]);
    let found = parse_detections(&out);
    assert_eq!(found.len(), 2, "{out}");
    let classes = ModelFile::read(&lbw).unwrap().meta.classes;
    for (line, ((width, height), dets)) in out.lines().zip(&found) {
        let v: Value = serde_json::from_str(line).unwrap();
        let path = v["path"].as_str().unwrap();
        assert!(images.iter().any(|p| path_arg(p) == path), "{line}");
        let decoded = image::open(path).unwrap();
        assert_eq!((*width, *height), (decoded.width(), decoded.height()));
        for d in dets {
            assert!(classes.contains(&d.class), "{line}");
            assert!(d.score >= cfg.eval.score_thresh, "{line}");
            assert!(d.bbox[0] <= d.bbox[2] && d.bbox[1] <= d.bbox[3], "{line}");
            assert!(d.bbox[2] <= f64::from(*width) && d.bbox[3] <= f64::from(*height));
        }
    }
    let total: usize = found.iter().map(|(_, d)| d.len()).sum();
    eprintln!("onnx-detect.py on 2 images with the int8 model: {total} detections\n{out}");
    assert!(total >= 1, "no detection on two test images: {out}");
    eprintln!(
        "int8_detections_track_the_float_export_and_onnx_detect_runs_them: trained in \
         {trained}, int8 export (40 calibration images) {calibrated}, onnx-map {onnx_map}, \
         total {}",
        seconds(all)
    );
}

#[test]
fn int8_refuses_what_int8_cannot_hold() {
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (_, six, out_dir) = narrow_random_model(root, "{bits: 6, method: lbw}", "six");
    let onnx = out_dir.join("model.onnx");
    let onnx_arg = path_arg(&onnx);

    // LBW at 6 bits: levels up to 2^15 times the smallest, no int8 holds them.
    let stderr = lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&six),
            "--onnx",
            onnx_arg,
            "--int8",
        ],
        "--int8",
    );
    let layers = ModelFile::read(&six).unwrap().meta.layers;
    assert!(
        layers.iter().any(|l| stderr.contains(&l.name)),
        "no layer named in: {stderr}"
    );
    assert!(
        stderr.contains("6-bit") && stderr.contains("int8"),
        "{stderr}"
    );
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
    // The same export without --int8 succeeds: it was the int8 that was refused.
    lbwnet_ok(&[
        "-q",
        "export",
        "--model",
        path_arg(&six),
        "--onnx",
        onnx_arg,
    ]);
    std::fs::remove_file(&onnx).unwrap();

    // --int8 needs --onnx (here the run's .lbw export alone is asked for).
    let run = root.join("six");
    let weights = run.join("checkpoints/random.safetensors");
    let lbw = out_dir.join("six.lbw");
    let args = [
        "export",
        "--run",
        path_arg(&run),
        "--checkpoint",
        path_arg(&weights),
        "--out",
        path_arg(&lbw),
    ];
    let stderr = lbwnet_fails(&[&args[..], &["--int8"][..]].concat(), "--onnx");
    assert!(stderr.contains("--int8"), "{stderr}");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
    let out = lbwnet(&[&["-q"][..], &args[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&lbw).unwrap();

    // A float model has no low-bit integers to keep.
    let (_, float, _) = narrow_random_model(root, "{bits: 32}", "float");
    let stderr = lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&float),
            "--onnx",
            onnx_arg,
            "--int8",
        ],
        "no quantized layer",
    );
    assert!(stderr.contains("--int8"), "{stderr}");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));

    // No calibration image: refused by name.
    let (_, four, _) = narrow_random_model(root, "{bits: 4, method: lbw}", "four");
    let stderr = lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&four),
            "--onnx",
            onnx_arg,
            "--int8",
            "--calibration-images",
            "0",
        ],
        "--calibration-images",
    );
    assert!(stderr.contains("at least 1"), "{stderr}");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
    eprintln!("int8_refuses_what_int8_cannot_hold: {}", seconds(start));
}

#[test]
fn calibration_rules_nest_and_agree_on_one_image() {
    use lbwnet::deploy::calibrate::{calibrate_file, CalibrationRule};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = random_config(root, SMALL, "{bits: 4, method: lbw}");
    let lbw = random_model(root, &cfg, "rules");
    let file = ModelFile::read(&lbw).unwrap();
    let rules = |images| {
        [CalibrationRule::MinMax, CalibrationRule::MeanMinMax]
            .map(|rule| calibrate_file(&file, images, None, rule).unwrap())
    };
    // Over several images the means of the per-image extremes lie within the extremes,
    // strictly somewhere; on one image the two rules are the same.
    let [widest, mean] = rules(4);
    assert_eq!(widest.images, 4);
    assert_eq!(
        widest.ranges.keys().collect::<Vec<_>>(),
        mean.ranges.keys().collect::<Vec<_>>()
    );
    let mut narrower = 0;
    for (point, w) in &widest.ranges {
        let m = mean.ranges[point];
        assert!(
            w.min <= m.min && m.max <= w.max,
            "{point}: {m:?} not within {w:?}"
        );
        narrower += usize::from(w.min < m.min || m.max < w.max);
    }
    assert!(narrower > 0, "no range differs over 4 images");
    let [widest, mean] = rules(1);
    assert_eq!(widest.ranges, mean.ranges);
    eprintln!(
        "{} points, {narrower} narrower under mean-min-max",
        widest.ranges.len()
    );
}
