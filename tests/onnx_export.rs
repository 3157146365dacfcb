//! `lbwnet export --onnx` checked by onnxruntime (through the project's Python
//! environment, `tests/onnx_check.py` and `scripts/onnx-detect.py`): the ONNX checker and
//! the size rules, the pooling and NMS operators against the torchvision fixtures, the
//! graph fed lbwnet's own intermediates stage by stage with its decoded weights equal to
//! Q(W) bit for bit, and end to end on trained small models at 2, 4 and 6 bits against
//! `lbwnet detect` and `eval --model`.
mod common;

use common::onnx::{
    check, listing, narrow_random_model, parse_detections, picture, python, random_config,
    random_model, repo, run_python, trained_model, Found,
};
use common::{lbwnet_fails, lbwnet_ok, path_arg};
use lbwnet::config::ExperimentConfig;
use lbwnet::deploy::format::ModelFile;
use lbwnet::deploy::model::{decode_weights, DeployedModel};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// `lbwnet export --model lbw --onnx onnx args`, then the checker and size rules.
fn export_onnx(lbw: &Path, onnx: &Path, args: &[&str]) -> Value {
    let mut all = vec![
        "-q",
        "export",
        "--model",
        path_arg(lbw),
        "--onnx",
        path_arg(onnx),
    ];
    all.extend_from_slice(args);
    lbwnet_ok(&all);
    let file = ModelFile::read(lbw).unwrap();
    let float_bytes: usize = file
        .tensors
        .values()
        .filter(|t| t.dtype == safetensors::tensor::Dtype::F32)
        .map(|t| t.data.len())
        .sum();
    check(&[
        "model",
        path_arg(onnx),
        "--lbw-bytes",
        &file.file_bytes.to_string(),
        "--lbw-float-bytes",
        &float_bytes.to_string(),
    ])
}

/// lbwnet's intermediates for `image` (the names of `lbwnet::deploy::onnx::STAGES`,
/// the final `boxes` / `scores` / `labels` in the image's pixels before rounding, and
/// `weight/<name>`: each quantized weight's Q(W)), written as `npz`.
fn write_stages(lbw: &Path, overrides: &[String], image: &Path, npz: &Path) {
    let model = DeployedModel::load(lbw, Device::Cpu, overrides).unwrap();
    let picture = image::open(image).unwrap().to_rgb8();
    let (pass, scale) = model.inference_pass(&picture, &model.config.eval).unwrap();
    let dets = &pass.detections[0];
    let (width, height) = picture.dimensions();
    let limits = Tensor::from_slice(&[width, height, width, height].map(f64::from));
    let boxes = (dets.boxes.to_kind(Kind::Double) / scale)
        .clamp_min(0.0)
        .minimum(&limits);
    let (network_input, _) = model.network_input(&picture).unwrap();
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("network_input".into(), network_input.unsqueeze(0)),
        ("features".into(), pass.features.shallow_clone()),
        ("rpn_objectness".into(), pass.rpn.objectness.get(0)),
        ("rpn_deltas".into(), pass.rpn.deltas.get(0)),
        ("proposals".into(), pass.rpn.proposals[0].shallow_clone()),
        ("class_logits".into(), pass.class_logits.shallow_clone()),
        ("box_deltas".into(), pass.box_deltas.shallow_clone()),
        ("boxes".into(), boxes),
        ("scores".into(), dets.scores.shallow_clone()),
        ("labels".into(), dets.labels.to_kind(Kind::Int64)),
    ];
    let file = ModelFile::read(lbw).unwrap();
    let weights = decode_weights(&file).unwrap();
    for layer in &file.meta.layers {
        tensors.push((
            format!("weight/{}", layer.name),
            weights[&layer.name].shallow_clone(),
        ));
    }
    Tensor::write_npz(&tensors, npz).unwrap();
}

/// A random-weight 4-bit model of `backbone` (at the configs' small input size, score
/// threshold 0: random weights leave no detection above 0.05), checked stage by stage.
fn random_backbone_matches_lbwnet_stage_by_stage(backbone: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = random_config(
        root,
        &format!(
            "  backbone: {backbone}\n  rpn: {{pre_nms_top_n_test: 300, post_nms_top_n_test: 24}}"
        ),
        "{bits: 4, method: lbw}",
    );
    let lbw = random_model(root, &cfg, backbone);
    let onnx = root.join(format!("{backbone}.onnx"));
    let overrides = ["eval.score_thresh=0".to_string()];
    let summary = export_onnx(&lbw, &onnx, &["--set", &overrides[0]]);
    eprintln!("{backbone} 4-bit: {summary}");
    let image = root.join("picture.png");
    picture(&image, 150, 110);
    let npz = root.join("stages.npz");
    write_stages(&lbw, &overrides, &image, &npz);
    let report = check(&["stages", path_arg(&onnx), path_arg(&npz), path_arg(&image)]);
    eprintln!("{backbone} 4-bit stages: {report}");
    assert!(report["proposal_count"].as_u64().unwrap() >= 10, "{report}");
    assert!(report["detections"].as_u64().unwrap() >= 10, "{report}");
}

#[test]
fn resnet50_c4_at_4_bits_matches_lbwnet_stage_by_stage() {
    random_backbone_matches_lbwnet_stage_by_stage("resnet50");
}

#[test]
fn vgg16_at_4_bits_matches_lbwnet_stage_by_stage() {
    random_backbone_matches_lbwnet_stage_by_stage("vgg16");
}

#[test]
fn pooling_variants_bit_widths_and_quantizers_match_lbwnet_and_the_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = root.join("picture.png");
    // Resized to the configs' 120 pixels on the short side.
    picture(&image, 150, 110);
    let small = "  backbone: small\n  small_width: 16\n  anchor_sizes: [32, 64]\n  rpn: {channels: 64, pre_nms_top_n_test: 200, post_nms_top_n_test: 30}\n  roi: {head_hidden: 256, ";
    // With the trained 2, 4 and 6 bits: every bit-width and field grouping the packing
    // has, both level sets (powers of two and the uniform grid), float.
    for (name, roi, quant) in [
        ("roi_pool", "pooler: roi_pool}", "{bits: 3, method: lbw}"),
        (
            "aligned",
            "aligned: true, sampling_ratio: 0}",
            "{bits: 5, method: uniform}",
        ),
        (
            "seven_bits",
            "sampling_ratio: 2}",
            "{bits: 7, method: pow2}",
        ),
        (
            "eight_bits",
            "sampling_ratio: 2}",
            "{bits: 8, method: exact}",
        ),
        (
            "ternary",
            "sampling_ratio: 2}",
            "{bits: 2, method: ternary}",
        ),
        ("float", "sampling_ratio: 2}", "{bits: 32}"),
    ] {
        let cfg = random_config(root, &format!("{small}{roi}"), quant);
        let lbw = random_model(root, &cfg, name);
        let onnx = root.join(format!("{name}.onnx"));
        let overrides = ["eval.score_thresh=0".to_string()];
        export_onnx(&lbw, &onnx, &["--set", &overrides[0]]);
        let npz = root.join(format!("{name}.npz"));
        write_stages(&lbw, &overrides, &image, &npz);
        let report = check(&["stages", path_arg(&onnx), path_arg(&npz), path_arg(&image)]);
        eprintln!("{name}: {report}");
        // Two empty lists would agree: there must be something to compare.
        assert!(
            report["proposal_count"].as_u64().unwrap() >= 10,
            "{name}: {report}"
        );
        assert!(
            report["detections"].as_u64().unwrap() >= 10,
            "{name}: {report}"
        );
        let quantized = ModelFile::read(&lbw).unwrap().meta.layers.len();
        assert_eq!(quantized > 0, name != "float");
        assert_eq!(report["weights_bit_identical"], quantized, "{report}");
        let ops = check(&["ops", path_arg(&onnx), path_arg(&repo("tests/fixtures"))]);
        eprintln!("{name} operators: {ops}");
        // onnxruntime ran the graph's own pooling node, whose attributes are the config's.
        let (size, roi) = (lbwnet::nn::backbones::small::POOL_SIZE, &cfg.model.roi);
        let scale = 1.0 / cfg.model.feature_stride as f64;
        let pooling = match name {
            "roi_pool" => format!("max_roi_pool {size}x{size} scale {scale}"),
            _ => format!(
                "roi_align {} {size}x{size} sampling {} scale {scale}",
                if roi.aligned {
                    "half_pixel"
                } else {
                    "output_half_pixel"
                },
                roi.sampling_ratio
            ),
        };
        assert_eq!(
            (name == "roi_pool", name == "aligned"),
            (roi.pooler == lbwnet::config::Pooler::RoiPool, roi.aligned)
        );
        assert!(ops.get(&pooling).is_some(), "{pooling} not in {ops}");
    }
}

/// PNG copies (decoded by lbwnet's own image reader, so no JPEG decoder differs) of the
/// test split's images; (id, path) in split order.
fn png_copies(cfg: &ExperimentConfig, dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    let split = cfg.data.root.join("ImageSets/Main/test.txt");
    std::fs::read_to_string(split)
        .unwrap()
        .split_whitespace()
        .map(|id| {
            let jpeg = cfg.data.root.join("JPEGImages").join(format!("{id}.jpg"));
            let png = dir.join(format!("{id}.png"));
            image::open(&jpeg).unwrap().to_rgb8().save(&png).unwrap();
            (id.to_string(), png)
        })
        .collect()
}

/// How many of `want` have a distinct partner in `got`: same class, every coordinate
/// within 0.01 px (+1e-6: both sides round to 0.01) and score within 1e-4.
fn matched(want: &[Found], got: &[Found]) -> usize {
    let mut used = vec![false; got.len()];
    want.iter()
        .filter(|w| {
            let partner = got.iter().enumerate().position(|(i, g)| {
                !used[i]
                    && g.class == w.class
                    && (g.score - w.score).abs() <= 1e-4
                    && g.bbox
                        .iter()
                        .zip(&w.bbox)
                        .all(|(a, b)| (a - b).abs() <= 0.01 + 1e-6)
            });
            partner.map(|i| used[i] = true).is_some()
        })
        .count()
}

fn map_of(stdout: &[u8]) -> f64 {
    let v: Value = serde_json::from_slice(stdout).unwrap();
    v["map"].as_f64().unwrap()
}

/// The whole path for one bit-width: train, export both files, compare onnxruntime with
/// `lbwnet detect` image by image and with `eval --model` by mAP, then stage by stage.
/// Works in `root`; returns the run directory.
fn onnxruntime_reproduces_lbwnet_at(bits: u32, root: &Path) -> PathBuf {
    let (cfg, lbw) = trained_model(root, bits);
    let onnx = root.join("model.onnx");
    let summary = export_onnx(&lbw, &onnx, &[]);
    eprintln!("{bits}-bit: {summary}");

    let images = png_copies(&cfg, &root.join("png"));
    let paths: Vec<&str> = images.iter().map(|(_, p)| path_arg(p)).collect();
    let thresh = cfg.eval.score_thresh.to_string();
    let mut detect = vec![
        "-q",
        "detect",
        "--model",
        path_arg(&lbw),
        "--json",
        "--score-thresh",
        &thresh,
    ];
    detect.extend(&paths);
    let ours = parse_detections(&String::from_utf8(lbwnet_ok(&detect).stdout).unwrap());
    let script = repo("scripts/onnx-detect.py");
    let mut ort_args = vec![
        path_arg(&script),
        "--model",
        path_arg(&onnx),
        "--score-thresh",
        &thresh,
    ];
    ort_args.extend(&paths);
    let theirs = parse_detections(&run_python(&ort_args));
    assert_eq!(ours.len(), images.len());
    assert_eq!(theirs.len(), images.len());
    let (mut total, mut found, mut total_ort, mut found_ort) = (0, 0, 0, 0);
    for ((size, a), (size_ort, b)) in ours.iter().zip(&theirs) {
        assert_eq!(size, size_ort);
        total += a.len();
        found += matched(a, b);
        total_ort += b.len();
        found_ort += matched(b, a);
    }
    eprintln!(
        "{bits}-bit: {found} of lbwnet's {total} detections matched by onnxruntime, \
         {found_ort} of its {total_ort} by lbwnet's"
    );
    assert!(total >= 50, "too few detections to compare: {total}");
    assert!(
        found as f64 >= 0.99 * total as f64,
        "{found} of {total} matched"
    );
    assert!(
        found_ort as f64 >= 0.99 * total_ort as f64,
        "{found_ort} of {total_ort} matched"
    );

    // onnxruntime's detections as comp4 files (VOC's 1-based pixels), scored by eval-dets.
    let classes = ModelFile::read(&lbw).unwrap().meta.classes;
    let mut per_class = vec![Vec::new(); classes.len()];
    for ((id, _), ((width, height), found)) in images.iter().zip(&theirs) {
        for f in found {
            let limits = [*width, *height, *width, *height];
            per_class[classes.iter().position(|c| *c == f.class).unwrap()].push(
                lbwnet::eval::Detection {
                    image_id: id.clone(),
                    score: f.score,
                    bbox: std::array::from_fn(|i| {
                        (f.bbox[i] + 1.0).clamp(1.0, f64::from(limits[i]))
                    }),
                },
            );
        }
    }
    let comp4 = root.join("ort-comp4");
    std::fs::create_dir_all(&comp4).unwrap();
    lbwnet::eval::write_comp4(&comp4, "test", &classes, &per_class).unwrap();
    let data = path_arg(&cfg.data.root);
    let ort_map = map_of(
        &lbwnet_ok(&[
            "-q",
            "eval-dets",
            "--data",
            data,
            "--dets",
            path_arg(&comp4),
            "--json",
        ])
        .stdout,
    );
    let eval_out = root.join("eval");
    let lbwnet_map = map_of(
        &lbwnet_ok(&[
            "-q",
            "eval",
            "--model",
            path_arg(&lbw),
            "--set",
            &format!("data.root={data}"),
            "--json",
            "--out",
            path_arg(&eval_out),
        ])
        .stdout,
    );
    eprintln!("{bits}-bit: mAP onnxruntime {ort_map:.6}, eval --model {lbwnet_map:.6}");
    assert!(
        lbwnet_map > 0.02,
        "the run learned nothing: mAP {lbwnet_map}"
    );
    assert!(
        (ort_map - lbwnet_map).abs() <= 1e-3,
        "{ort_map} vs {lbwnet_map}"
    );

    let npz = root.join("stages.npz");
    write_stages(&lbw, &[], &images[0].1, &npz);
    let report = check(&[
        "stages",
        path_arg(&onnx),
        path_arg(&npz),
        path_arg(&images[0].1),
    ]);
    eprintln!("{bits}-bit stages: {report}");
    assert!(report["proposal_count"].as_u64().unwrap() >= 10, "{report}");
    assert!(report["detections"].as_u64().unwrap() >= 10, "{report}");
    check(&["ops", path_arg(&onnx), path_arg(&repo("tests/fixtures"))]);
    cfg.run_dir()
}

#[test]
fn onnxruntime_reproduces_lbwnet_at_2_bits() {
    let dir = tempfile::tempdir().unwrap();
    let run = onnxruntime_reproduces_lbwnet_at(2, dir.path());
    // The benchmark times the same model in onnxruntime next to ours, and its int8
    // export and onnxruntime's quantize_static of the float one against the float export
    // (speed is not asserted: these machines are shared).
    let out = lbwnet_ok(&[
        "-q",
        "bench",
        "detect",
        "--run",
        path_arg(&run),
        "--images",
        "2",
        "--repeats",
        "1",
        "--int8",
        "--calibration-images",
        "4",
        "--quantize-static",
        "--json",
    ]);
    let timing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let positive_rates = |runs: &Value| {
        let runs = runs.as_array().unwrap();
        assert_eq!(runs.len(), 2, "{timing}");
        assert_eq!(runs[0]["threads"], 1);
        assert_eq!(runs[1]["threads"], 0);
        assert!(
            runs.iter()
                .all(|r| r["images_per_s"].as_f64().unwrap() > 0.0),
            "{timing}"
        );
    };
    positive_rates(&timing["onnxruntime"]);
    assert!(timing["onnx_file_bytes"].as_u64().unwrap() > 0);
    let int8 = &timing["int8"];
    assert_eq!(int8["calibration_images"], 4, "{timing}");
    let variants = int8["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["float", "int8", "quantize_static"], "{timing}");
    for variant in variants {
        positive_rates(&variant["whole"]);
        positive_rates(&variant["backbone"]);
        assert!(variant["file_bytes"].as_u64().unwrap() > 0);
    }
    // The float variant is the float export timed above.
    assert_eq!(variants[0]["whole"], timing["onnxruntime"]);
}

#[test]
fn onnxruntime_reproduces_lbwnet_at_4_bits() {
    onnxruntime_reproduces_lbwnet_at(4, tempfile::tempdir().unwrap().path());
}

#[test]
fn onnxruntime_reproduces_lbwnet_at_6_bits() {
    onnxruntime_reproduces_lbwnet_at(6, tempfile::tempdir().unwrap().path());
}

#[test]
fn bad_exports_fail_with_the_input_named_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (cfg, lbw, out_dir) = narrow_random_model(root, "{bits: 4, method: lbw}", "small");
    let onnx = out_dir.join("model.onnx");
    let onnx_arg = path_arg(&onnx);

    let missing = root.join("no-such-run");
    lbwnet_fails(
        &["export", "--run", path_arg(&missing), "--onnx", onnx_arg],
        path_arg(&missing),
    );
    // A run that has not written a checkpoint yet.
    let fresh = root.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("config.yaml"), cfg.to_yaml().unwrap()).unwrap();
    lbwnet_fails(
        &["export", "--run", path_arg(&fresh), "--onnx", onnx_arg],
        "no complete checkpoint",
    );
    // A truncated and a bit-flipped model file.
    let bytes = std::fs::read(&lbw).unwrap();
    let truncated = root.join("truncated.lbw");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&truncated),
            "--onnx",
            onnx_arg,
        ],
        "truncated.lbw",
    );
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10;
    let corrupt = root.join("corrupt.lbw");
    std::fs::write(&corrupt, &flipped).unwrap();
    lbwnet_fails(
        &["export", "--model", path_arg(&corrupt), "--onnx", onnx_arg],
        "corrupt.lbw",
    );
    // Settings that would change the model's shape.
    lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&lbw),
            "--onnx",
            onnx_arg,
            "--set",
            "model.small_width=16",
        ],
        "model.small_width",
    );
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));

    // Output paths that cannot be written: under a regular file, and a directory.
    let under_file = lbw.join("model.onnx");
    lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&lbw),
            "--onnx",
            path_arg(&under_file),
        ],
        path_arg(&under_file),
    );
    let before = listing(root);
    lbwnet_fails(
        &[
            "export",
            "--model",
            path_arg(&lbw),
            "--onnx",
            path_arg(&out_dir),
        ],
        path_arg(&out_dir),
    );
    assert_eq!(listing(root), before, "a temporary file was left behind");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));

    // The deployment script refuses a file that is not an ONNX model, naming it.
    let image = root.join("picture.png");
    picture(&image, 40, 30);
    let script = repo("scripts/onnx-detect.py");
    let out = Command::new(python())
        .args([
            path_arg(&script),
            "--model",
            path_arg(&lbw),
            path_arg(&image),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(path_arg(&lbw)) && !stderr.contains("Traceback"),
        "{stderr}"
    );
}
