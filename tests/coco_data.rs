//! COCO-format data sets (issue 30, SPEC §3 "COCO-format input"):
//! - the COCO metrics of a COCO file equal pycocotools' on it (non-contiguous category ids,
//!   float boxes, `area`s from segmentations, crowds, an image without annotations;
//!   `tests/fixtures/coco_format.json`, made by `make_coco_fixtures.py`);
//! - the synthetic set written as COCO trains and evaluates to the same bytes as its VOC
//!   copy, and the model trained on it exports, detects, evaluates and converts to ONNX
//!   with the COCO file's class names;
//! - every bad input is refused with the file and the entry named, a non-zero exit, and
//!   nothing written.
mod common;

use common::{assert_matches_pycocotools, lbwnet, lbwnet_ok, path_arg, COCO_KEYS as KEYS};
use lbwnet::config::ApMetric;
use lbwnet::data::Dataset;
use lbwnet::eval::{evaluate_comp4, write_comp4, Detection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const TOLERANCE: f64 = 1e-12;

fn repr_numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse::<f64>().unwrap())
        .collect()
}

fn compare(what: &str, ours: &[f64], reference: &[f64]) {
    assert_matches_pycocotools(what, ours, reference, TOLERANCE);
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(value).unwrap()).unwrap();
}

#[test]
fn coco_metrics_of_a_coco_file_equal_pycocotools() {
    let fixture = common::fixture("coco_format.json");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("annotations").join("instances_val.json");
    write_json(&json_path, &fixture["instances"]);
    let classes: Vec<String> = fixture["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();

    // Read as a data set: classes in category-id order, images in id order, the empty
    // image kept, crowds difficult, boxes by SPEC §3's rule.
    let dataset = Dataset::open_coco(&json_path, dir.path(), "val", None, false).unwrap();
    assert_eq!(dataset.classes, classes);
    let ids: Vec<i64> = dataset.ids.iter().map(|i| i.parse().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let empty = fixture["empty_image"].as_i64().unwrap().to_string();
    let e = dataset.ids.iter().position(|i| *i == empty).unwrap();
    assert!(dataset.annotations[e].objects.is_empty());
    let instances = &fixture["instances"];
    let anns = instances["annotations"].as_array().unwrap();
    assert_eq!(
        dataset
            .annotations
            .iter()
            .map(|a| a.objects.len())
            .sum::<usize>(),
        anns.len()
    );
    let crowds = anns.iter().filter(|a| a["iscrowd"] == 1).count();
    assert!(crowds > 0);
    assert_eq!(
        dataset
            .annotations
            .iter()
            .flat_map(|a| &a.objects)
            .filter(|o| o.difficult)
            .count(),
        crowds
    );
    // Each image's objects in file order, boxes `(x + 1, y + 1, x + w, y + h)`.
    for (image, annotation) in dataset.ids.iter().zip(&dataset.annotations) {
        let own: Vec<&Value> = anns
            .iter()
            .filter(|a| a["image_id"].as_i64().unwrap().to_string() == *image)
            .collect();
        assert_eq!(own.len(), annotation.objects.len());
        for (a, o) in own.iter().zip(&annotation.objects) {
            let b: Vec<f64> = a["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let expected = [b[0] + 1.0, b[1] + 1.0, b[0] + b[2], b[1] + b[3]].map(|v| v as f32);
            assert_eq!(o.bbox, expected);
            let category = a["category_id"].as_i64().unwrap();
            let cats = instances["categories"].as_array().unwrap();
            let name = cats.iter().find(|c| c["id"] == category).unwrap()["name"]
                .as_str()
                .unwrap();
            assert_eq!(classes[o.class_index], name);
        }
    }

    // Detections through comp4 files, as the detector writes them.
    let detections: Vec<Vec<Detection>> = fixture["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|dets| {
            dets.as_array()
                .unwrap()
                .iter()
                .map(|d| Detection {
                    image_id: d[0].as_str().unwrap().to_string(),
                    score: d[1].as_f64().unwrap(),
                    bbox: [2, 3, 4, 5].map(|k| d[k].as_f64().unwrap()),
                })
                .collect()
        })
        .collect();
    let dets_dir = dir.path().join("dets");
    write_comp4(&dets_dir, "val", &classes, &detections).unwrap();
    let stats = repr_numbers(&fixture["stats"]);
    let class_ap = repr_numbers(&fixture["class_ap"]);
    assert!(class_ap.contains(&-1.0), "a class without ground truth");
    for metric in [ApMetric::Voc07, ApMetric::Coco] {
        let report = evaluate_comp4(&dataset, &dets_dir, metric).unwrap();
        let c = &report.coco;
        let ours = [
            c.ap,
            c.ap50,
            c.ap75,
            c.ap_small,
            c.ap_medium,
            c.ap_large,
            c.ar1,
            c.ar10,
            c.ar100,
        ];
        compare("stats", &ours, &stats);
        if metric == ApMetric::Coco {
            let ap: Vec<f64> = report.ap.iter().map(|(_, v)| *v).collect();
            compare("class AP", &ap, &class_ap);
        } else {
            // VOC-style AP beside it, over the classes with ground truth.
            assert!(report.map > 0.0 && report.map < 1.0, "{}", report.map);
        }
    }
    // The file's own areas matter: the VOC boxes converted back (area w * h) would
    // sort some objects into other area ranges.
    let converted =
        lbwnet::eval::coco_evaluate(&dataset.annotations, &dataset.classes, &detections)
            .unwrap()
            .0;
    assert_ne!(converted.ap_small, stats[3]);

    // The same through `lbwnet eval-dets --coco`.
    let out = lbwnet_ok(&[
        "-q",
        "eval-dets",
        "--coco",
        path_arg(&json_path),
        "--split",
        "val",
        "--dets",
        path_arg(&dets_dir),
        "--metric",
        "coco",
        "--json",
    ]);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<f64> = KEYS
        .iter()
        .map(|k| value["coco"][*k].as_f64().unwrap())
        .collect();
    compare("eval-dets stats", &ours, &stats);
    let ap: Vec<f64> = classes
        .iter()
        .map(|c| value["ap"][c].as_f64().unwrap())
        .collect();
    compare("eval-dets class AP", &ap, &class_ap);
}

/// A small synthetic set made by `lbwnet gen-data --format coco`, shared by the tests of
/// this file (they only read it).
struct Generated {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn generated() -> &'static Generated {
    static SET: OnceLock<Generated> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shapes");
        let out = lbwnet_ok(&[
            "-q",
            "gen-data",
            "--out",
            path_arg(&root),
            "--train",
            "4",
            "--test",
            "2",
            "--seed",
            "5",
            "--size",
            "96x64",
            "--format",
            "coco",
        ]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("instances_trainval.json"), "{text}");
        Generated { _dir: dir, root }
    })
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A config reading COCO files `train`/`test` with images under `images`, runs under
/// `runs`.
fn coco_config_yaml(train: &Path, test: &Path, images: &Path, runs: &Path) -> String {
    format!(
        r#"
name: coco
data:
  format: coco
  coco: {{train: {train}, test: {test}, images: {images}}}
  min_size: 64
  max_size: 96
  loader_threads: 1
model:
  backbone: small
  small_width: 2
  anchor_sizes: [16, 32]
  anchor_ratios: [1.0]
  rpn: {{channels: 4, pre_nms_top_n_train: 50, post_nms_top_n_train: 10, pre_nms_top_n_test: 20, post_nms_top_n_test: 5, min_size: 1}}
  roi: {{batch_size_per_image: 8, head_hidden: 8}}
train:
  iterations: 2
  batch_size: 1
  checkpoint_interval: 0
  output_dir: {runs}
  device: cpu
  threads: 1
"#,
        train = train.display(),
        test = test.display(),
        images = images.display(),
        runs = runs.display()
    )
}

/// Runs `lbwnet train` on `train` (a changed copy of the generated training file; the
/// test file too when `bad_test`) and checks that it fails naming the file and
/// `names`, writes no run, and leaves the data as it was.
fn refused(name: &str, bad: Value, bad_test: bool, images: Option<&Path>, names: &[&str]) {
    let set = generated();
    let dir = tempfile::tempdir().unwrap();
    let good_train = DataPaths::train(&set.root);
    let good_test = DataPaths::test(&set.root);
    let bad_path = dir.path().join(format!("{name}.json"));
    write_json(&bad_path, &bad);
    let (train, test) = if bad_test {
        (good_train, bad_path.clone())
    } else {
        (bad_path.clone(), good_test)
    };
    let runs = dir.path().join("runs");
    let config = dir.path().join("coco.yaml");
    let images = images.map_or_else(|| set.root.clone(), Path::to_path_buf);
    std::fs::write(&config, coco_config_yaml(&train, &test, &images, &runs)).unwrap();
    let before = listing(&set.root);
    let out = lbwnet(&["train", "--config", path_arg(&config)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name}: training succeeded");
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    assert!(
        stderr.contains(path_arg(&bad_path)),
        "{name}: the file is not named: {stderr}"
    );
    for needle in names {
        assert!(
            stderr.contains(needle),
            "{name}: `{needle}` not in {stderr}"
        );
    }
    assert!(!runs.exists(), "{name}: a run directory was written");
    assert_eq!(listing(&set.root), before, "{name}: the data set changed");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{name}: {left:?}");
}

/// Every file under `root` with its size.
fn listing(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let size = std::fs::metadata(&path).unwrap().len();
                out.push((path, size));
            }
        }
    }
    out.sort();
    out
}

struct DataPaths;

impl DataPaths {
    fn train(root: &Path) -> PathBuf {
        root.join("annotations").join("instances_trainval.json")
    }

    fn test(root: &Path) -> PathBuf {
        root.join("annotations").join("instances_test.json")
    }
}

/// The generated training file with `change` applied.
fn changed(change: impl FnOnce(&mut Value)) -> Value {
    let mut value = read_json(&DataPaths::train(&generated().root));
    change(&mut value);
    value
}

#[test]
fn the_generated_copy_is_valid_and_trains() {
    // The baseline of the refusals below: the same config on the unchanged files works.
    let set = generated();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let config = dir.path().join("coco.yaml");
    std::fs::write(
        &config,
        coco_config_yaml(
            &DataPaths::train(&set.root),
            &DataPaths::test(&set.root),
            &set.root,
            &runs,
        ),
    )
    .unwrap();
    lbwnet_ok(&["-q", "train", "--config", path_arg(&config)]);
    assert!(runs.join("coco/fp32/metrics.json").is_file());
    let train = read_json(&DataPaths::train(&set.root));
    assert_eq!(train["images"].as_array().unwrap().len(), 4);
    assert_eq!(train["categories"].as_array().unwrap().len(), 7);
    assert_eq!(train["images"][0]["file_name"], "JPEGImages/000001.jpg");
}

#[test]
fn invalid_json_is_refused() {
    let text = std::fs::read_to_string(DataPaths::train(&generated().root)).unwrap();
    // Cut in the middle: a syntax error; a number where an image belongs, a string for a
    // width, a missing list: the entry is named.
    refused_text(
        "cut",
        &text[..text.len() / 2],
        &["not a valid instances file"],
    );
    refused_text("trailing", &format!("{text} x"), &["not valid JSON"]);
    refused(
        "wrong-type",
        changed(|v| v["images"][1] = json!(5)),
        false,
        None,
        &["images[1]", "not a valid instances file"],
    );
    refused(
        "string-width",
        changed(|v| v["images"][2]["width"] = json!("96")),
        false,
        None,
        &["images[2].width"],
    );
    refused(
        "no-categories",
        changed(|v| {
            v.as_object_mut().unwrap().remove("categories");
        }),
        false,
        None,
        &["missing field `categories`"],
    );
}

#[test]
fn an_oversized_file_is_refused_unread() {
    // A sparse file one byte over the limit: refused by its size, before it is read.
    let set = generated();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(lbwnet::data::coco::MAX_JSON_BYTES + 1)
        .unwrap();
    drop(file);
    let err = lbwnet::data::Dataset::open_coco(&big, &set.root, "train", None, true).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains(path_arg(&big)) && err.contains("over the 1073741824-byte limit"),
        "{err}"
    );
}

/// [`refused`] for a file whose text is not JSON.
fn refused_text(name: &str, text: &str, names: &[&str]) {
    let set = generated();
    let dir = tempfile::tempdir().unwrap();
    let bad_path = dir.path().join(format!("{name}.json"));
    std::fs::write(&bad_path, text).unwrap();
    let runs = dir.path().join("runs");
    let config = dir.path().join("coco.yaml");
    std::fs::write(
        &config,
        coco_config_yaml(&bad_path, &DataPaths::test(&set.root), &set.root, &runs),
    )
    .unwrap();
    let out = lbwnet(&["train", "--config", path_arg(&config)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(stderr.contains(path_arg(&bad_path)), "{name}: {stderr}");
    for needle in names {
        assert!(
            stderr.contains(needle),
            "{name}: `{needle}` not in {stderr}"
        );
    }
    assert!(!runs.exists(), "{name}: a run directory was written");
}

#[test]
fn unknown_image_or_category_is_refused() {
    refused(
        "unknown-image",
        changed(|v| v["annotations"][2]["image_id"] = json!(999)),
        false,
        None,
        &[
            "annotations[2] (id 3, image_id 999",
            "image_id 999 is not among the images",
        ],
    );
    refused(
        "unknown-category",
        changed(|v| v["annotations"][1]["category_id"] = json!(42)),
        false,
        None,
        &[
            "annotations[1] (id 2,",
            "category_id 42 is not among the categories",
        ],
    );
    // In the test split too: refused before training starts, so nothing is written.
    let mut test = read_json(&DataPaths::test(&generated().root));
    test["annotations"][0]["category_id"] = json!(0);
    refused(
        "unknown-category-in-test",
        test,
        true,
        None,
        &[
            "data.coco.test",
            "annotations[0]",
            "category_id 0 is not among the categories",
        ],
    );
}

#[test]
fn bad_boxes_are_refused() {
    for (name, bbox, needle) in [
        (
            "negative-width",
            json!([10.0, 10.0, -4.0, 8.0]),
            "zero or negative width or height",
        ),
        (
            "zero-height",
            json!([10.0, 10.0, 4.0, 0.0]),
            "zero or negative width or height",
        ),
        (
            "right-of-image",
            json!([96.0, 10.0, 4.0, 8.0]),
            "lies outside the 96x64 image",
        ),
        (
            "above-image",
            json!([10.0, -20.0, 4.0, 8.0]),
            "lies outside the 96x64 image",
        ),
    ] {
        refused(
            name,
            changed(|v| v["annotations"][0]["bbox"] = bbox),
            false,
            None,
            &["annotations[0] (id 1, image_id 1", needle],
        );
    }
    refused(
        "three-numbers",
        changed(|v| v["annotations"][3]["bbox"] = json!([1, 2, 3])),
        false,
        None,
        &["annotations[3].bbox"],
    );
    refused(
        "crowd-2",
        changed(|v| v["annotations"][0]["iscrowd"] = json!(2)),
        false,
        None,
        &["annotations[0]", "iscrowd is 2"],
    );
}

#[test]
fn bad_images_are_refused() {
    refused(
        "duplicate-image-id",
        changed(|v| v["images"][2]["id"] = json!(1)),
        false,
        None,
        &["images[2] (id 1)", "image id 1 is used twice"],
    );
    refused(
        "duplicate-category-id",
        changed(|v| v["categories"][3]["id"] = json!(2)),
        false,
        None,
        &["categories[3]", "category id 2 is used twice"],
    );
    refused(
        "absolute-file-name",
        changed(|v| v["images"][1]["file_name"] = json!("/etc/passwd")),
        false,
        None,
        &["images[1] (id 2)", "is absolute"],
    );
    refused(
        "escaping-file-name",
        changed(|v| v["images"][0]["file_name"] = json!("JPEGImages/../../outside.jpg")),
        false,
        None,
        &["images[0] (id 1)", "leaves the image folder (`..`)"],
    );
    refused(
        "missing-image",
        changed(|v| v["images"][3]["file_name"] = json!("JPEGImages/nope.jpg")),
        false,
        None,
        &["images[3] (id 4)", "nope.jpg does not exist"],
    );
    refused(
        "huge-width",
        changed(|v| v["images"][0]["width"] = json!(100000)),
        false,
        None,
        &["images[0] (id 1)", "width 100000 is not allowed"],
    );
    refused(
        "bad-class-name",
        changed(|v| v["categories"][0]["name"] = json!("../x")),
        false,
        None,
        &["categories[0] (id 1): name", "is not allowed as a name"],
    );
    // Images read from another folder than the one their file names are relative to.
    let elsewhere = tempfile::tempdir().unwrap();
    refused(
        "wrong-image-folder",
        changed(|_| {}),
        false,
        Some(elsewhere.path()),
        &["images[0] (id 1)", "does not exist"],
    );
}

/// The first 6 positions of `lines` sorted, with their image ids replaced by `f(id)`.
fn comp4_lines(dir: &Path, rename: impl Fn(&str) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let (id, rest) = line.split_once(' ').unwrap();
            out.push(format!("{} {rest}", rename(id)));
        }
    }
    out
}

/// The default pipeline on a small synthetic set and on that set written as COCO (a
/// user's export: its own category names, read from files outside the set), same config
/// otherwise: the same weights, detections and numbers. The model trained on COCO data
/// then exports, inspects, detects, evaluates and converts to ONNX with the COCO names.
#[test]
fn coco_copy_trains_to_the_same_bytes_as_the_voc_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let runs = root.join("runs");
    let base = format!(
        r#"
name: shapes
data:
  root: {data}
  min_size: 120
  max_size: 160
  loader_threads: 1
  synthetic: {{train: 24, test: 8, seed: 11, width: 160, height: 120, shapes: [circle, square, triangle], objects: [1, 3]}}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [16, 32, 64]
  rpn: {{channels: 32, pre_nms_top_n_train: 300, post_nms_top_n_train: 100, pre_nms_top_n_test: 200, post_nms_top_n_test: 50, min_size: 2}}
  roi: {{batch_size_per_image: 64, head_hidden: 64}}
quant: {{bits: 4, method: lbw}}
train:
  iterations: 150
  batch_size: 2
  lr: 0.02
  lr_steps: [120]
  warmup_iterations: 30
  clip_grad_norm: 10.0
  checkpoint_interval: 0
  log_interval: 50
  output_dir: {runs}
  device: cpu
  threads: 1
"#,
        data = data.display(),
        runs = runs.display()
    );
    let voc_config = root.join("voc.yaml");
    std::fs::write(&voc_config, &base).unwrap();
    lbwnet_ok(&["-q", "train", "--config", path_arg(&voc_config)]);
    let voc_run = runs.join("shapes/w4-lbw-c3.7");

    // `gen-data --format coco` with the config: the set is there, its COCO files are added.
    let out = lbwnet_ok(&[
        "gen-data",
        "--config",
        path_arg(&voc_config),
        "--format",
        "coco",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already holds"));
    // A user's export: the files elsewhere, categories renamed, images in the set.
    let export = root.join("export");
    let rename = |name: &str| format!("my {name}");
    for (from, to) in [("trainval", "train"), ("test", "val")] {
        let mut v = read_json(&data.join(format!("annotations/instances_{from}.json")));
        for c in v["categories"].as_array_mut().unwrap() {
            c["name"] = json!(rename(c["name"].as_str().unwrap()));
        }
        write_json(&export.join(format!("instances_{to}.json")), &v);
    }
    let coco_yaml = base.replacen(
        &format!("  root: {}\n", data.display()),
        &format!(
            "  format: coco\n  coco: {{train: {}, test: {}, images: {}}}\n",
            export.join("instances_train.json").display(),
            export.join("instances_val.json").display(),
            data.display()
        ),
        1,
    );
    let coco_yaml = coco_yaml
        .replacen(
            "  synthetic: {train: 24, test: 8, seed: 11, width: 160, height: 120, shapes: [circle, square, triangle], objects: [1, 3]}\n",
            "",
            1,
        )
        .replacen("name: shapes", "name: shapes-coco", 1);
    let coco_config = root.join("coco.yaml");
    std::fs::write(&coco_config, &coco_yaml).unwrap();
    lbwnet_ok(&["-q", "train", "--config", path_arg(&coco_config)]);
    let coco_run = runs.join("shapes-coco/w4-lbw-c3.7");

    // Same weights, same detections (image `000007` is COCO image 7), same numbers.
    let weights = |run: &Path| {
        std::fs::read(lbwnet::train::checkpoint::resolve_weights(run).unwrap()).unwrap()
    };
    assert!(
        weights(&voc_run) == weights(&coco_run),
        "the weights differ"
    );
    let voc_dets = comp4_lines(&voc_run.join("detections"), |id| {
        id.parse::<u64>().unwrap().to_string()
    });
    let coco_dets = comp4_lines(&coco_run.join("detections"), str::to_string);
    assert!(!voc_dets.is_empty());
    assert_eq!(voc_dets, coco_dets);
    let voc_metrics = read_json(&voc_run.join("metrics.json"));
    let coco_metrics = read_json(&coco_run.join("metrics.json"));
    eprintln!(
        "mAP: VOC {} COCO {}",
        voc_metrics["map"], coco_metrics["map"]
    );
    assert_eq!(voc_metrics["map"], coco_metrics["map"]);
    assert_eq!(voc_metrics["coco"], coco_metrics["coco"]);
    let ap = |m: &Value| -> Vec<(String, Value)> {
        m["ap"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let renamed: Vec<(String, Value)> = ap(&voc_metrics)
        .into_iter()
        .map(|(k, v)| (rename(&k), v))
        .collect();
    assert_eq!(renamed, ap(&coco_metrics));
    assert!(voc_metrics["map"].as_f64().unwrap() > 0.0);

    // The VOC-trained run evaluated on the synthetic set read as COCO (its files written
    // on demand under data.root): the same number.
    std::fs::remove_dir_all(data.join("annotations")).unwrap();
    let out = lbwnet_ok(&[
        "-q",
        "eval",
        "--run",
        path_arg(&voc_run),
        "--set",
        "data.format=coco",
        "--json",
    ]);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["map"], voc_metrics["map"]);
    assert_eq!(value["coco"], voc_metrics["coco"]);
    assert!(DataPaths::test(&data).is_file());

    // The COCO-trained model: export, inspect, eval --model, detect, ONNX.
    let model = root.join("coco.lbw");
    lbwnet_ok(&[
        "-q",
        "export",
        "--run",
        path_arg(&coco_run),
        "--out",
        path_arg(&model),
    ]);
    let names: Vec<String> = ["circle", "square", "triangle"]
        .iter()
        .map(|c| rename(c))
        .collect();
    let out = lbwnet_ok(&["inspect", path_arg(&model), "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["classes"], json!(names), "{report}");
    let out = lbwnet_ok(&["-q", "eval", "--model", path_arg(&model), "--json"]);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["map"], coco_metrics["map"]);
    let image = data.join("JPEGImages/000025.jpg");
    let out = lbwnet_ok(&[
        "-q",
        "detect",
        "--model",
        path_arg(&model),
        "--score-thresh",
        "0.0",
        "--json",
        path_arg(&image),
    ]);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dets = line["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "{line}");
    for d in dets {
        let class = d["class"].as_str().unwrap();
        assert!(names.iter().any(|n| n == class), "{d}");
    }
    let onnx = root.join("coco.onnx");
    lbwnet_ok(&[
        "-q",
        "export",
        "--model",
        path_arg(&model),
        "--onnx",
        path_arg(&onnx),
    ]);
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
}
