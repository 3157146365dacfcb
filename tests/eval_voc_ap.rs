//! VOC AP on small hand-computed cases (SPEC §3), comp4 files, and `lbwnet eval-dets`.
mod common;

use common::assert_success;
use lbwnet::config::ApMetric;
use lbwnet::data::voc::{VocAnnotation, VocObject};
use lbwnet::eval::{evaluate, read_comp4, write_comp4, Detection, EvalReport};
use std::path::Path;

fn gt(class_index: usize, bbox: [f32; 4], difficult: bool) -> VocObject {
    VocObject {
        class_index,
        bbox,
        difficult,
        truncated: false,
    }
}

fn image(id: &str, objects: Vec<VocObject>) -> VocAnnotation {
    VocAnnotation {
        id: id.into(),
        width: 500,
        height: 500,
        objects,
    }
}

fn det(image_id: &str, score: f64, bbox: [f64; 4]) -> Detection {
    Detection {
        image_id: image_id.into(),
        score,
        bbox,
    }
}

fn classes(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn run(
    annotations: &[VocAnnotation],
    names: &[&str],
    dets: Vec<Vec<Detection>>,
    metric: ApMetric,
) -> EvalReport {
    evaluate(annotations, &classes(names), &dets, metric).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn duplicate_detections_are_false_positives() {
    let images = [image(
        "a",
        vec![
            gt(0, [1.0, 1.0, 10.0, 10.0], false),
            gt(0, [101.0, 1.0, 110.0, 10.0], false),
        ],
    )];
    let dets = vec![vec![
        det("a", 0.9, [1.0, 1.0, 10.0, 10.0]),
        det("a", 0.8, [1.0, 1.0, 10.0, 10.0]),
        det("a", 0.7, [101.0, 1.0, 110.0, 10.0]),
    ]];
    // rec [.5, .5, 1], prec [1, .5, 2/3].
    let r07 = run(&images, &["x"], dets.clone(), ApMetric::Voc07);
    assert!(close(r07.map, 28.0 / 33.0), "{}", r07.map);
    assert_eq!(r07.map, 0.8484848484848483, "numpy's bits");
    let area = run(&images, &["x"], dets, ApMetric::Area);
    assert!(close(area.map, 5.0 / 6.0), "{}", area.map);
    assert_eq!(area.npos, vec![2]);
}

#[test]
fn difficult_objects_are_neither_counted_nor_penalized() {
    let images = [image(
        "a",
        vec![
            gt(0, [1.0, 1.0, 10.0, 10.0], false),
            gt(0, [51.0, 51.0, 80.0, 80.0], true),
        ],
    )];
    let dets = vec![vec![
        det("a", 0.9, [51.0, 51.0, 80.0, 80.0]),
        det("a", 0.85, [52.0, 51.0, 80.0, 80.0]),
        det("a", 0.8, [1.0, 1.0, 10.0, 10.0]),
    ]];
    for metric in [ApMetric::Voc07, ApMetric::Area] {
        let r = run(&images, &["x"], dets.clone(), metric);
        assert_eq!(r.npos, vec![1]);
        assert!(close(r.map, 1.0), "{metric:?}: {}", r.map);
    }
    // Without the difficult flag the two high-scoring detections are a TP and a duplicate.
    let plain = [image(
        "a",
        vec![
            gt(0, [1.0, 1.0, 10.0, 10.0], false),
            gt(0, [51.0, 51.0, 80.0, 80.0], false),
        ],
    )];
    // TP, FP, TP over 2 gts: recall 0.5, 0.5, 1 at precision 1, 0.5, 2/3; 11-point AP
    // (6 * 1 + 5 * 2/3) / 11 = 28/33.
    let r = run(&plain, &["x"], dets, ApMetric::Voc07);
    assert!(close(r.map, 28.0 / 33.0), "{}", r.map);
}

#[test]
fn class_without_ground_truth_scores_zero_and_counts_in_the_mean() {
    let images = [image(
        "a",
        vec![
            gt(0, [1.0, 1.0, 10.0, 10.0], false),
            gt(1, [20.0, 20.0, 40.0, 40.0], true),
        ],
    )];
    for metric in [ApMetric::Voc07, ApMetric::Area] {
        let dets = vec![
            vec![det("a", 0.9, [1.0, 1.0, 10.0, 10.0])],
            vec![det("a", 0.5, [20.0, 20.0, 40.0, 40.0])],
        ];
        let r = run(&images, &["x", "y"], dets, metric);
        // The 11-point sum of eleven 1/11 is 1.0000000000000002, in numpy too.
        assert!(
            close(r.ap[0].1, 1.0) && r.ap[1] == ("y".to_string(), 0.0),
            "{:?}",
            r.ap
        );
        assert_eq!(r.npos, vec![1, 0]);
        assert!(close(r.map, 0.5));
        let none = run(&images, &["x", "y"], vec![vec![], vec![]], metric);
        assert_eq!(none.map, 0.0);
    }
}

/// Ten objects; detections in the order TP TP TP FP TP TP TP FP TP FP, so recall lands
/// exactly on 3/10, 6/10 and 7/10, each just below numpy's thresholds `k * 0.1`.
#[test]
fn recall_on_point_three_six_seven_follows_the_float_thresholds() {
    let boxes: Vec<[f32; 4]> = (0..10)
        .map(|k| [1.0 + 40.0 * k as f32, 1.0, 30.0 + 40.0 * k as f32, 30.0])
        .collect();
    let images = [image("a", boxes.iter().map(|b| gt(0, *b, false)).collect())];
    let pattern = [
        true, true, true, false, true, true, true, false, true, false,
    ];
    let mut next_gt = 0;
    let dets: Vec<Detection> = pattern
        .iter()
        .enumerate()
        .map(|(k, &hit)| {
            let score = 1.0 - 0.05 * k as f64;
            if hit {
                next_gt += 1;
                det("a", score, boxes[next_gt - 1].map(f64::from))
            } else {
                det("a", score, [1.0, 400.0, 20.0, 420.0])
            }
        })
        .collect();
    let r07 = run(&images, &["x"], vec![dets.clone()], ApMetric::Voc07);
    // t = 0, .1, .2 -> 1; t = .3 (> 3/10), .4, .5 -> 6/7; t = .6 (> 6/10) -> 7/9;
    // t = .7 (> 7/10) and above -> 0.
    assert!(
        close(r07.map, (3.0 + 3.0 * 6.0 / 7.0 + 7.0 / 9.0) / 11.0),
        "{}",
        r07.map
    );
    assert_eq!(r07.map, 0.5772005772005773, "numpy's bits");
    let naive = (4.0 + 3.0 * 6.0 / 7.0 + 7.0 / 9.0 + 7.0 / 9.0) / 11.0;
    assert!(!close(r07.map, naive));
    let area = run(&images, &["x"], vec![dets], ApMetric::Area);
    assert!(
        close(area.map, 0.3 + 0.3 * 6.0 / 7.0 + 0.1 * 7.0 / 9.0),
        "{}",
        area.map
    );
    assert_eq!(area.map, 0.6349206349206349, "numpy's bits");
}

#[test]
fn overlap_must_exceed_one_half() {
    // gt area 100 (+1 convention); a 10x20 detection covering it has IoU exactly 0.5.
    let images = [image("a", vec![gt(0, [1.0, 1.0, 10.0, 10.0], false)])];
    let at_half = run(
        &images,
        &["x"],
        vec![vec![det("a", 0.9, [1.0, 1.0, 10.0, 20.0])]],
        ApMetric::Voc07,
    );
    assert_eq!(at_half.map, 0.0);
    let above = run(
        &images,
        &["x"],
        vec![vec![det("a", 0.9, [1.0, 1.0, 10.0, 19.0])]],
        ApMetric::Voc07,
    );
    assert!(close(above.map, 1.0));
}

#[test]
fn bad_detections_are_errors() {
    let images = [image("a", vec![gt(0, [1.0, 1.0, 10.0, 10.0], false)])];
    let names = classes(&["x"]);
    let err = evaluate(
        &images,
        &names,
        &[vec![det("zzz", 0.9, [1.0, 1.0, 10.0, 10.0])]],
        ApMetric::Voc07,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("`zzz`"), "{err:#}");
    let err = evaluate(
        &images,
        &names,
        &[vec![det("a", f64::NAN, [1.0, 1.0, 10.0, 10.0])]],
        ApMetric::Voc07,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("non-finite"), "{err:#}");
    assert!(evaluate(&images, &names, &[], ApMetric::Voc07).is_err());
}

#[test]
fn report_json_keeps_class_order() {
    let images = [image("a", vec![gt(1, [1.0, 1.0, 10.0, 10.0], false)])];
    let r = run(
        &images,
        &["zebra", "apple"],
        vec![vec![], vec![det("a", 0.9, [1.0, 1.0, 10.0, 10.0])]],
        ApMetric::Area,
    );
    assert_eq!(
        r.to_json().to_string(),
        concat!(
            r#"{"metric":"area","map":0.5,"ap":{"zebra":0.0,"apple":1.0},"#,
            // pycocotools' numbers: precision is 1 / (1 + eps), one ulp below 1.
            r#""coco":{"ap":0.9999999999999998,"ap50":0.9999999999999999,"#,
            r#""ap75":0.9999999999999999,"ap_small":0.9999999999999998,"ap_medium":-1.0,"#,
            r#""ap_large":-1.0,"ar1":1.0,"ar10":1.0,"ar100":1.0}}"#
        )
    );
    let table = r.to_markdown();
    assert!(
        table.contains("| zebra | 0 | 0.0000 |") && table.contains("| apple | 1 | 1.0000 |"),
        "{table}"
    );
    assert!(table.contains("**0.5000**"), "{table}");
}

#[test]
fn comp4_files_round_trip_with_py_faster_rcnn_precision() {
    let dir = tempfile::tempdir().unwrap();
    let names = classes(&["x", "y", "z"]);
    let per_class = vec![
        vec![
            det("000001", 0.98765, [1.04, 2.06, 30.0, 40.55]),
            det("000002", 0.5, [5.0, 5.0, 9.0, 9.0]),
        ],
        vec![],
        vec![det("000003", 0.0625, [1.0, 1.0, 2.0, 2.0])],
    ];
    write_comp4(dir.path(), "test", &names, &per_class).unwrap();
    let text = std::fs::read_to_string(dir.path().join("comp4_det_test_x.txt")).unwrap();
    assert_eq!(
        text,
        "000001 0.988 1.0 2.1 30.0 40.5\n000002 0.500 5.0 5.0 9.0 9.0\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("comp4_det_test_y.txt")).unwrap(),
        ""
    );
    let back = read_comp4(dir.path(), "test", &names).unwrap();
    assert_eq!(back[0][0], det("000001", 0.988, [1.0, 2.1, 30.0, 40.5]));
    assert_eq!(back[2], vec![det("000003", 0.062, [1.0, 1.0, 2.0, 2.0])]);
    // A missing file means no detections.
    std::fs::remove_file(dir.path().join("comp4_det_test_z.txt")).unwrap();
    assert!(read_comp4(dir.path(), "test", &names).unwrap()[2].is_empty());
}

#[test]
fn malformed_comp4_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let names = classes(&["x"]);
    let path = dir.path().join("comp4_det_val_x.txt");
    for (text, needle) in [
        ("a 0.5 1 1 2 2\n\nb 0.5 1 1 2\n", "line 3"),
        ("a 0.5 1 1 2 nan\n", "line 1"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", read_comp4(dir.path(), "val", &names).unwrap_err());
        assert!(
            err.contains("comp4_det_val_x.txt") && err.contains(needle),
            "{err}"
        );
    }
}

fn write_tiny_voc(root: &Path) {
    std::fs::create_dir_all(root.join("Annotations")).unwrap();
    std::fs::create_dir_all(root.join("ImageSets/Main")).unwrap();
    std::fs::write(root.join("labels.txt"), "cat\ndog\n").unwrap();
    std::fs::write(root.join("ImageSets/Main/test.txt"), "im1\nim2\n").unwrap();
    let xml = |objects: &str| {
        format!(
            "<annotation><size><width>100</width><height>100</height></size>{objects}</annotation>"
        )
    };
    let obj = |name: &str, b: [u32; 4]| {
        format!(
            "<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
            b[0], b[1], b[2], b[3]
        )
    };
    std::fs::write(
        root.join("Annotations/im1.xml"),
        xml(&(obj("cat", [1, 1, 20, 20]) + &obj("dog", [50, 50, 90, 90]))),
    )
    .unwrap();
    std::fs::write(
        root.join("Annotations/im2.xml"),
        xml(&obj("cat", [10, 10, 30, 30])),
    )
    .unwrap();
}

#[test]
fn eval_dets_command_prints_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (root, dets) = (dir.path().join("voc"), dir.path().join("dets"));
    write_tiny_voc(&root);
    std::fs::create_dir_all(&dets).unwrap();
    // cat: one of two found; dog: no file at all.
    std::fs::write(
        dets.join("comp4_det_test_cat.txt"),
        "im1 0.900 1.0 1.0 20.0 20.0\nim2 0.100 60.0 60.0 70.0 70.0\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = assert_success(
            common::lbwnet_command()
                .args(["-q", "eval-dets", "--data"])
                .arg(&root)
                .arg("--dets")
                .arg(&dets)
                .args(extra)
                .output()
                .unwrap(),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = run(&["--json", "--metric", "voc07"]);
    assert_eq!(json.lines().count(), 1);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // cat: rec [.5, .5], prec [1, .5] -> 6/11; dog: 0.
    let cat = value["ap"]["cat"].as_f64().unwrap();
    assert!(close(cat, 6.0 / 11.0), "{cat}");
    assert_eq!(value["ap"]["dog"].as_f64(), Some(0.0));
    assert_eq!(value["metric"], "voc07");
    assert!(close(value["map"].as_f64().unwrap(), 3.0 / 11.0));
    let table = run(&["--split", "test", "--metric", "area"]);
    assert!(
        table.contains("| cat | 2 | 0.5000 |") && table.contains("mAP (area): 0.2500"),
        "{table}"
    );

    std::fs::write(dets.join("comp4_det_test_dog.txt"), "im9 0.5 1 1 2 2\n").unwrap();
    let out = common::lbwnet_command()
        .args(["-q", "eval-dets", "--data"])
        .arg(&root)
        .arg("--dets")
        .arg(&dets)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`im9`"));
}
