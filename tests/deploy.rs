//! The exported model end to end on a tiny trained 6-bit run: `export` → `inspect` →
//! `detect` → `eval --model`; the file's size against the sweep table's storage figure;
//! comp4 detections byte-identical to the run's own evaluation; bad input refused with
//! the file named, never a panic.
mod common;

use common::{config_under, lbwnet_fails, lbwnet_ok, path_arg};
use lbwnet::config::ExperimentConfig;
use lbwnet::deploy::format::ModelFile;
use lbwnet::deploy::DeployedModel;
use lbwnet::detect::image_list::ImageBatch;
use lbwnet::train::checkpoint;
use lbwnet::train::setup::build_model;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A 6-bit run with c = 0.5: at so low a c many weights lie above 2 alpha and are
/// clipped, which is where `W + (Q(W) - W)` differs from `Q(W)` in float arithmetic (at
/// the default c = 7.2 hardly a weight of a short run does), so the identical-detections
/// checks see the case that needs the evaluation path's exactness.
/// The model is just large enough (0.5 MB packed) that the file's header stays a small
/// part of it, as for real models.
fn tiny_config(root: &Path) -> ExperimentConfig {
    let yaml = r#"
name: deploy
data:
  min_size: 96
  max_size: 128
  loader_threads: 1
  synthetic: {train: 6, test: 4, seed: 7, width: 128, height: 96}
model:
  backbone: small
  small_width: 16
  anchor_sizes: [32, 64]
  rpn: {channels: 32, pre_nms_top_n_train: 200, post_nms_top_n_train: 50, pre_nms_top_n_test: 100, post_nms_top_n_test: 20, min_size: 2}
  roi: {batch_size_per_image: 32, head_hidden: 64}
quant: {bits: 6, method: lbw, c: 0.5}
train:
  iterations: 6
  lr: 0.005
  lr_steps: [4]
  warmup_iterations: 2
  checkpoint_interval: 0
  log_interval: 2
  device: cpu
  threads: 1
"#;
    config_under(root, yaml)
}

struct Trained {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cfg: ExperimentConfig,
    model: PathBuf,
}

/// One trained run and its export, shared by the tests of this file.
fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let cfg = tiny_config(&root);
        lbwnet::train::trainer::train(&cfg, None).unwrap();
        let model = root.join("model").join("tiny.lbw");
        lbwnet_ok(&[
            "export",
            "--run",
            cfg.run_dir().to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ]);
        Trained {
            _dir: dir,
            root,
            cfg,
            model,
        }
    })
}

fn read_dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn exported_file_is_within_two_percent_of_the_table_figure_and_reproducible() {
    let t = trained();
    let bytes = std::fs::metadata(&t.model).unwrap().len();
    let figure = lbwnet::experiments::table::measure_run(&t.cfg)
        .unwrap()
        .storage_bytes;
    let ratio = bytes as f64 / figure as f64;
    assert!(
        (1.0..=1.02).contains(&ratio),
        "file {bytes} bytes, table figure {figure} bytes: ratio {ratio}"
    );
    // The float checkpoint is several times larger.
    let weights = checkpoint::resolve_weights(&t.cfg.run_dir()).unwrap();
    assert!(std::fs::metadata(&weights).unwrap().len() > 8 * bytes);

    // Exporting again gives the same bytes.
    let again = t.root.join("again.lbw");
    lbwnet_ok(&[
        "export",
        "--run",
        path_arg(&t.cfg.run_dir()),
        "--out",
        path_arg(&again),
    ]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&t.model).unwrap()
    );

    // inspect: every quantized layer at 6 bits, sizes adding up.
    let out = lbwnet_ok(&["inspect", path_arg(&t.model), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["file_bytes"], bytes);
    assert_eq!(report["storage_bytes"], figure);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 12, "{report}");
    let mut layer_bytes = 0;
    for layer in layers {
        assert_eq!(layer["bits"], 6, "{layer}");
        let counts: u64 = layer["level_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counts, layer["numel"].as_u64().unwrap());
        assert_eq!(layer["level_counts"].as_array().unwrap().len(), 17);
        layer_bytes += layer["bytes"].as_u64().unwrap();
    }
    let float_bytes = 4 * report["other_float_params"].as_u64().unwrap();
    assert_eq!(layer_bytes + float_bytes, figure);
    assert_eq!(
        report["provenance"]["iteration"], 6,
        "{}",
        report["provenance"]
    );
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.cfg.run_dir().join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["provenance"]["map"], metrics["map"]);
    let text = String::from_utf8(lbwnet_ok(&["inspect", path_arg(&t.model)]).stdout).unwrap();
    assert!(text.contains("backbone.features.0.conv.weight") && text.contains("float32"));
}

#[test]
fn eval_model_writes_the_runs_own_comp4_detections_byte_for_byte() {
    let t = trained();
    let out_dir = t.root.join("eval-model");
    let out = lbwnet_ok(&[
        "eval",
        "--model",
        path_arg(&t.model),
        "--out",
        path_arg(&out_dir),
        "--json",
    ]);
    let from_model: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = lbwnet_ok(&[
        "eval",
        "--run",
        path_arg(&t.cfg.run_dir()),
        "--out",
        path_arg(&t.root.join("eval-run")),
        "--json",
    ]);
    let from_run: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(from_model, from_run);
    let own = read_dir_bytes(&t.cfg.run_dir().join("detections"));
    let exported = read_dir_bytes(&out_dir.join("detections"));
    assert!(own.iter().map(|(_, b)| b.len()).sum::<usize>() > 0);
    assert_eq!(own, exported, "comp4 files differ from the run's own");
}

#[test]
fn decoded_model_computes_exactly_what_the_training_time_model_evaluates() {
    let t = trained();
    let weights = checkpoint::resolve_weights(&t.cfg.run_dir()).unwrap();
    let deployed = DeployedModel::load(&t.model, tch::Device::Cpu, &[]).unwrap();
    let (vs, training) =
        build_model(&t.cfg, deployed.meta.classes.len(), tch::Device::Cpu, false).unwrap();
    checkpoint::load_weights(&weights, &vs).unwrap();

    // The case the evaluation path must get right exists in this model: weights whose
    // straight-through sum `W + (Q(W) - W)` is not Q(W) in float.
    let spec = t.cfg.quant_spec().unwrap().unwrap();
    let inexact: i64 = training.registry.with_layers(|layers| {
        layers
            .iter()
            .map(|l| {
                let q = lbwnet::quant::quantize(&l.weight.detach(), &spec);
                let sum = l.weight.detach() + (&q - l.weight.detach());
                sum.ne_tensor(&q).sum(tch::Kind::Int64).int64_value(&[])
            })
            .sum()
    });
    assert!(
        inexact > 0,
        "no weight exercises the inexact straight-through sum"
    );

    let dataset = lbwnet::data::voc::VocDataset::open(
        &t.cfg.data.root,
        &t.cfg.data.test_split,
        Some(&deployed.meta.classes),
    )
    .unwrap();
    let loader = lbwnet::data::loader::LoaderConfig::from_data_config(&t.cfg.data, false, 0);
    for index in 0..dataset.len() {
        let sample = lbwnet::data::loader::load_sample(&dataset, index, false, &loader).unwrap();
        let batch = ImageBatch::new(&[sample.image], vec![sample.scale]);
        let a = training.inference_pass(&batch, &t.cfg.eval);
        let b = deployed.model.inference_pass(&batch, &t.cfg.eval);
        assert!(a.rpn.proposals[0].equal(&b.rpn.proposals[0]));
        let (a, b) = (&a.detections[0], &b.detections[0]);
        assert!(a.boxes.numel() > 0);
        assert!(a.boxes.equal(&b.boxes) && a.scores.equal(&b.scores) && a.labels.equal(&b.labels));
    }
}

#[test]
fn straight_through_is_q_of_w_in_training_and_evaluation() {
    tch::manual_seed(3);
    let spec = lbwnet::quant::QuantSpec::new(lbwnet::quant::Method::Lbw, 6, Some(0.5)).unwrap();
    let w =
        tch::Tensor::randn([64, 32], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let q = tch::no_grad(|| lbwnet::quant::quantize(&w, &spec));
    // The case where the textbook `W + (Q(W) - W)` is not Q(W) in float is present.
    let sum = tch::no_grad(|| &w + (&q - &w));
    assert!(sum.ne_tensor(&q).any().int64_value(&[]) == 1);
    // Training: Q(W) bit for bit, and the identity gradient.
    let st = lbwnet::nn::qlayers::straight_through(&w, Some(&spec));
    assert!(st.requires_grad() && st.detach().equal(&q));
    let upstream = tch::Tensor::randn([64, 32], (tch::Kind::Float, tch::Device::Cpu));
    (&st * &upstream).sum(tch::Kind::Float).backward();
    assert!(w.grad().equal(&upstream));
    // Evaluation: Q(W) itself.
    let eval = tch::no_grad(|| lbwnet::nn::qlayers::straight_through(&w, Some(&spec)));
    assert!(eval.equal(&q));
}

/// One comp4 line's numbers.
struct Comp4 {
    score: f64,
    bbox: [f64; 4],
}

#[test]
fn detect_runs_on_files_and_directories_in_original_pixels() {
    let t = trained();
    let images = t.cfg.data.root.join("JPEGImages");
    let dataset = lbwnet::data::voc::VocDataset::open(&t.cfg.data.root, "test", None).unwrap();
    let first = dataset.image_path(0);
    // The test images are 128x96; also a grayscale PNG, an RGBA PNG and a larger copy.
    let extra = t.root.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let rgb = image::open(&first).unwrap();
    rgb.to_luma8().save(extra.join("gray.png")).unwrap();
    rgb.to_rgba8().save(extra.join("rgba.png")).unwrap();
    rgb.resize_exact(400, 300, image::imageops::FilterType::Triangle)
        .to_rgb8()
        .save(extra.join("large.jpg"))
        .unwrap();

    let out_dir = t.root.join("detect");
    let test_files: Vec<PathBuf> = (0..dataset.len()).map(|i| dataset.image_path(i)).collect();
    let mut args = vec![
        "detect".to_string(),
        "--model".into(),
        path_arg(&t.model).into(),
        "--device".into(),
        "cpu".into(),
        "--out".into(),
        path_arg(&out_dir).into(),
        "--score-thresh".into(),
        t.cfg.eval.score_thresh.to_string(),
        path_arg(&extra).into(),
    ];
    args.extend(test_files.iter().map(|p| path_arg(p).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lbwnet_ok(&args);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("detections.json")).unwrap())
            .unwrap();
    let records = json["images"].as_array().unwrap();
    assert_eq!(records.len(), 3 + test_files.len());
    assert!(json["failed"].as_array().unwrap().is_empty());
    for r in records {
        let png = PathBuf::from(r["image"].as_str().unwrap());
        let drawn = image::open(&png).unwrap();
        assert_eq!(
            (drawn.width(), drawn.height()),
            (
                r["width"].as_u64().unwrap() as u32,
                r["height"].as_u64().unwrap() as u32
            )
        );
        for d in r["detections"].as_array().unwrap() {
            let b: Vec<f64> = d["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let (w, h) = (r["width"].as_f64().unwrap(), r["height"].as_f64().unwrap());
            assert!(b[0] >= 0.0 && b[0] <= b[2] && b[2] <= w, "{d}");
            assert!(b[1] >= 0.0 && b[1] <= b[3] && b[3] <= h, "{d}");
            assert!(dataset
                .classes
                .contains(&d["class"].as_str().unwrap().to_string()));
        }
    }
    let large = records
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("large.jpg"))
        .unwrap();
    assert_eq!(
        (large["width"].as_u64(), large["height"].as_u64()),
        (Some(400), Some(300))
    );

    // On the test images, detect finds what the evaluation wrote (comp4 boxes are the same
    // boxes in 1-based pixels, to 3 and 1 decimals).
    let mut comp4: HashMap<(String, String), Vec<Comp4>> = HashMap::new();
    for class in &dataset.classes {
        let path = t
            .cfg
            .run_dir()
            .join("detections")
            .join(format!("comp4_det_test_{class}.txt"));
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let v: Vec<f64> = f[1..].iter().map(|x| x.parse().unwrap()).collect();
            comp4
                .entry((f[0].to_string(), class.clone()))
                .or_default()
                .push(Comp4 {
                    score: v[0],
                    bbox: [v[1], v[2], v[3], v[4]],
                });
        }
    }
    let mut matched = 0;
    for (r, path) in records
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with(path_arg(&images)))
        .zip(&test_files)
    {
        assert_eq!(r["path"].as_str().unwrap(), path_arg(path));
        let id = path.file_stem().unwrap().to_str().unwrap();
        let dets = r["detections"].as_array().unwrap();
        let expected: usize = comp4
            .iter()
            .filter(|((image, _), _)| image == id)
            .map(|(_, v)| v.len())
            .sum();
        assert_eq!(dets.len(), expected, "{id}");
        for d in dets {
            let key = (id.to_string(), d["class"].as_str().unwrap().to_string());
            let score = d["score"].as_f64().unwrap();
            // 1-based, and (as VOC pixels) at most the image's width and height.
            let (w, h) = (r["width"].as_f64().unwrap(), r["height"].as_f64().unwrap());
            let b: Vec<f64> = d["box"]
                .as_array()
                .unwrap()
                .iter()
                .zip([w, h, w, h])
                .map(|(v, limit)| (v.as_f64().unwrap() + 1.0).min(limit))
                .collect();
            let found = comp4[&key].iter().any(|c| {
                (c.score - score).abs() <= 0.0005 + 1e-9
                    && c.bbox.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 0.06)
            });
            assert!(found, "{id}: {d} not among the comp4 detections");
            matched += 1;
        }
    }
    assert!(matched > 0);

    // --json: one line per image on stdout, nothing written.
    let out = lbwnet_ok(&[
        "detect",
        "--model",
        path_arg(&t.model),
        "--device",
        "cpu",
        "--json",
        path_arg(&extra),
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| l["detections"].is_array() && l.get("image").is_none()));
}

#[test]
fn bad_inputs_are_refused_with_the_file_named() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&t.model).unwrap();

    // Truncated, a flipped byte in the weights, an unknown format version, and a
    // safetensors file that is a training checkpoint rather than a model.
    let truncated = dir.path().join("truncated.lbw");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupted = dir.path().join("corrupted.lbw");
    let mut flipped = bytes.clone();
    let at = bytes.len() - 1000;
    flipped[at] ^= 0x10;
    std::fs::write(&corrupted, &flipped).unwrap();
    // The model with one edit to its metadata (the tensors and their checksum unchanged).
    let edited = |name: &str, edit: &dyn Fn(&mut lbwnet::deploy::format::ModelMeta)| {
        let mut file = ModelFile::read(&t.model).unwrap();
        edit(&mut file.meta);
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            lbwnet::deploy::format::encode(&file.meta, &file.tensors).unwrap(),
        )
        .unwrap();
        path
    };
    let future = edited("future.lbw", &|m| m.format_version = 99);
    // A parameter count the tensors do not hold (sizes derived from it would wrap).
    let inflated = edited("inflated.lbw", &|m| m.params = u64::MAX / 2);
    // A class name that is a path (`eval --model` names comp4 files after classes).
    let escaping = edited("escaping.lbw", &|m| m.classes[0] = "../../escaped".into());
    // Input sizes past the config's bounds (each image would be resized to 100000 px).
    let huge_input = edited("huge-input.lbw", &|m| {
        m.input.min_size = 100_000;
        m.input.max_size = 100_000;
    });
    // A stored config asking for layers far larger than the tensors (finding 2 of #21):
    // refused from the shapes alone, before anything is allocated.
    let oversized = edited("oversized.lbw", &|m| {
        m.config["model"]["small_width"] = 1024.into();
        m.config["model"]["roi"]["head_hidden"] = 65536.into();
    });
    // A config whose model is another backbone than the tensors'.
    let other_backbone = edited("other-backbone.lbw", &|m| {
        m.config["model"]["backbone"] = "resnet50".into();
    });
    // One byte of the metadata edited in place: the checksum covers the metadata too.
    let meta_edited = dir.path().join("meta-edited.lbw");
    let mut edited_bytes = bytes.clone();
    let key = b"small_width";
    let at = edited_bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the stored config has small_width");
    // Its value 16, past the (escaped) quote and colon, becomes 17.
    let digit = at + edited_bytes[at..].iter().position(|&b| b == b'6').unwrap();
    edited_bytes[digit] = b'7';
    std::fs::write(&meta_edited, &edited_bytes).unwrap();
    let weights = checkpoint::resolve_weights(&t.cfg.run_dir()).unwrap();
    let image = dataset_image(t);
    for (path, why) in [
        (&truncated, "truncated"),
        (&corrupted, "checksum"),
        (&future, "version 99"),
        (&inflated, "parameters"),
        (&escaping, "../../escaped"),
        (&huge_input, "input sizes"),
        (&oversized, "has shape"),
        (&other_backbone, "Resnet50 backbone"),
        (&meta_edited, "checksum"),
        (&weights, "lbwnet export"),
        (&dir.path().join("missing.lbw"), "reading model file"),
    ] {
        let err = lbwnet_fails(&["inspect", path_arg(path)], path_arg(path));
        assert!(err.contains(why), "{err}");
        let out = dir.path().join("out");
        let err = lbwnet_fails(
            &[
                "detect",
                "--model",
                path_arg(path),
                "--device",
                "cpu",
                "--out",
                path_arg(&out),
                path_arg(&image),
            ],
            path_arg(path),
        );
        assert!(err.contains(why), "{err}");
        assert!(!out.exists(), "detect wrote output for a bad model");
        lbwnet_fails(
            &["eval", "--model", path_arg(path), "--out", path_arg(&out)],
            path_arg(path),
        );
    }

    // A batch: good images are still processed and written; the bad ones are listed, and
    // the exit status says something failed.
    let not_image = dir.path().join("notes.jpg");
    std::fs::write(&not_image, b"not an image").unwrap();
    // Cut inside the JPEG header (the decoder fills in a cut-off scan, which counts as
    // readable).
    let half_jpeg = dir.path().join("half.jpg");
    let jpeg = std::fs::read(&image).unwrap();
    std::fs::write(&half_jpeg, &jpeg[..200]).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing.png");
    let out = dir.path().join("batch");
    let err = lbwnet_fails(
        &[
            "detect",
            "--model",
            path_arg(&t.model),
            "--device",
            "cpu",
            "--out",
            path_arg(&out),
            path_arg(&not_image),
            path_arg(&image),
            path_arg(&empty),
            path_arg(&half_jpeg),
            path_arg(&missing),
        ],
        "4 of 5 inputs",
    );
    for bad in [&not_image, &empty, &half_jpeg, &missing] {
        assert!(err.contains(path_arg(bad)), "{bad:?} not listed: {err}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detections.json")).unwrap())
            .unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 1);
    assert_eq!(json["failed"].as_array().unwrap().len(), 4);
    let written: Vec<String> = read_dir_bytes(&out).into_iter().map(|(n, _)| n).collect();
    let stem = image.file_stem().unwrap().to_str().unwrap();
    assert_eq!(
        written,
        [format!("{stem}.png"), "detections.json".to_string()]
    );

    // Only an empty directory: refused, non-zero.
    lbwnet_fails(
        &[
            "detect",
            "--model",
            path_arg(&t.model),
            "--device",
            "cpu",
            "--json",
            path_arg(&empty),
        ],
        path_arg(&empty),
    );
    // Export from something that is not a run: refused, nothing written.
    let model = dir.path().join("never.lbw");
    lbwnet_fails(
        &[
            "export",
            "--run",
            path_arg(&empty),
            "--out",
            path_arg(&model),
        ],
        path_arg(&empty),
    );
    assert!(!model.exists());
}

#[test]
fn version_1_files_load_with_a_warning() {
    use lbwnet::deploy::format::{legacy_checksum, LEGACY_FORMAT_VERSION, METADATA_KEY};
    let t = trained();
    let file = ModelFile::read(&t.model).unwrap();
    let mut meta = file.meta.clone();
    meta.format_version = LEGACY_FORMAT_VERSION;
    meta.crc32 = legacy_checksum(&file.tensors);
    let views: Vec<_> = file
        .tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data);
            (name.clone(), view.unwrap())
        })
        .collect();
    let info = HashMap::from([(
        METADATA_KEY.to_string(),
        serde_json::to_string(&meta).unwrap(),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1.lbw");
    std::fs::write(
        &v1,
        safetensors::tensor::serialize(views, &Some(info)).unwrap(),
    )
    .unwrap();
    let out = lbwnet_ok(&["inspect", path_arg(&v1)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("format version 1"), "{stderr}");
    // Its tensors still load, bit for bit.
    assert_eq!(ModelFile::read(&v1).unwrap().tensors, file.tensors);
    // A version 1 file with a flipped tensor byte is still refused.
    let mut bytes = std::fs::read(&v1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&v1, &bytes).unwrap();
    let err = lbwnet_fails(&["inspect", path_arg(&v1)], path_arg(&v1));
    assert!(err.contains("checksum"), "{err}");
}

fn dataset_image(t: &Trained) -> PathBuf {
    lbwnet::data::voc::VocDataset::open(&t.cfg.data.root, "test", None)
        .unwrap()
        .image_path(0)
}

#[test]
fn a_libtorch_error_during_detection_is_an_error_not_a_panic() {
    let err = lbwnet::deploy::model::catch_panic(|| {
        let t = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        Ok(t.view([3]).numel())
    })
    .unwrap_err();
    assert!(format!("{err}").contains("the detector failed"), "{err}");
    // The panic hook is restored: later panics report as usual (and are caught here).
    assert!(std::panic::catch_unwind(|| panic!("still reported")).is_err());
}
