//! COCO metrics (SPEC §3 `coco`) against pycocotools 2.0.11 / numpy 2.4.6 fixtures
//! (`tests/fixtures/make_coco_fixtures.py`): the library, `evaluate` with
//! `ApMetric::Coco`, and `lbwnet eval-dets --metric coco` on comp4 files.
mod common;

use common::{assert_matches_pycocotools, assert_success, COCO_KEYS as KEYS};
use lbwnet::config::ApMetric;
use lbwnet::data::voc::{VocAnnotation, VocObject};
use lbwnet::eval::{coco_evaluate, evaluate, write_comp4, CocoMetrics, Detection};
use serde_json::Value;
use std::path::Path;

const TOLERANCE: f64 = 1e-9;

struct Case {
    name: String,
    classes: Vec<String>,
    annotations: Vec<VocAnnotation>,
    detections: Vec<Vec<Detection>>,
    stats: Vec<f64>,
    class_ap: Vec<f64>,
}

fn fixture() -> Vec<Case> {
    let path = format!(
        "{}/tests/fixtures/coco_eval.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let root: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(root["stats_order"], serde_json::json!(KEYS));
    let f = |v: &Value| v.as_f64().unwrap();
    root["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let annotations = case["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|img| VocAnnotation {
                    id: img["id"].as_str().unwrap().to_string(),
                    width: img["width"].as_u64().unwrap() as u32,
                    height: img["height"].as_u64().unwrap() as u32,
                    objects: img["objects"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|o| VocObject {
                            class_index: o[0].as_u64().unwrap() as usize,
                            bbox: [
                                f(&o[1]) as f32,
                                f(&o[2]) as f32,
                                f(&o[3]) as f32,
                                f(&o[4]) as f32,
                            ],
                            difficult: o[5].as_u64().unwrap() == 1,
                            truncated: false,
                        })
                        .collect(),
                })
                .collect();
            let detections = case["detections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|dets| {
                    dets.as_array()
                        .unwrap()
                        .iter()
                        .map(|d| Detection {
                            image_id: d[0].as_str().unwrap().to_string(),
                            score: f(&d[1]),
                            bbox: [f(&d[2]), f(&d[3]), f(&d[4]), f(&d[5])],
                        })
                        .collect()
                })
                .collect();
            // Reference results are repr strings (serde_json's float parsing may be one
            // ulp off for 17 digits; the inputs are short decimals, parsed exactly).
            let numbers = |v: &Value| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            };
            Case {
                name: case["name"].as_str().unwrap().to_string(),
                classes: case["classes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect(),
                annotations,
                detections,
                stats: numbers(&case["stats"]),
                class_ap: numbers(&case["class_ap"]),
            }
        })
        .collect()
}

fn as_array(m: &CocoMetrics) -> [f64; 9] {
    [
        m.ap,
        m.ap50,
        m.ap75,
        m.ap_small,
        m.ap_medium,
        m.ap_large,
        m.ar1,
        m.ar10,
        m.ar100,
    ]
}

/// Largest |ours - reference|, after checking each against the tolerance.
fn compare(what: &str, ours: &[f64], reference: &[f64]) -> f64 {
    assert_matches_pycocotools(what, ours, reference, TOLERANCE)
}

#[test]
fn metrics_match_pycocotools() {
    let cases = fixture();
    assert!(cases.len() >= 4);
    let mut worst = 0f64;
    for case in &cases {
        let (metrics, class_ap) =
            coco_evaluate(&case.annotations, &case.classes, &case.detections).unwrap();
        worst = worst.max(compare(
            &format!("{} stats", case.name),
            &as_array(&metrics),
            &case.stats,
        ));
        worst = worst.max(compare(
            &format!("{} class AP", case.name),
            &class_ap,
            &case.class_ap,
        ));
    }
    eprintln!("largest difference from pycocotools: {worst:e}");
}

#[test]
fn fixture_exercises_the_edge_cases() {
    let cases = fixture();
    let mixed = cases.iter().find(|c| c.name == "mixed").unwrap();
    let per_image = |dets: &[Detection], id: &str| dets.iter().filter(|d| d.image_id == id).count();
    assert!(mixed
        .annotations
        .iter()
        .any(|a| per_image(&mixed.detections[0], &a.id) > 100));
    assert!(mixed.detections[3].is_empty() && mixed.class_ap[3] == 0.0);
    assert!(!mixed.detections[4].is_empty() && mixed.class_ap[4] == -1.0);
    assert!(mixed.annotations.iter().any(|a| a.objects.is_empty()));
    let all: Vec<&VocObject> = cases
        .iter()
        .flat_map(|c| c.annotations.iter().flat_map(|a| &a.objects))
        .collect();
    let area = |o: &VocObject| (o.bbox[2] - o.bbox[0] + 1.0) * (o.bbox[3] - o.bbox[1] + 1.0);
    for (lo, hi) in [(0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)] {
        assert!(all.iter().any(|o| area(o) > lo && area(o) < hi));
    }
    assert!(all.iter().any(|o| area(o) == 1024.0) && all.iter().any(|o| area(o) == 9216.0));
    assert!(all.iter().any(|o| o.difficult));
    let no_gt = cases.iter().find(|c| c.name == "no_ground_truth").unwrap();
    assert!(no_gt.stats.iter().all(|v| *v == -1.0));
}

#[test]
fn evaluate_reports_coco_with_every_metric() {
    for case in fixture() {
        for metric in [ApMetric::Voc07, ApMetric::Area, ApMetric::Coco] {
            let report =
                evaluate(&case.annotations, &case.classes, &case.detections, metric).unwrap();
            compare(&case.name, &as_array(&report.coco), &case.stats);
            if metric == ApMetric::Coco {
                assert_eq!(report.map, report.coco.ap);
                let ap: Vec<f64> = report.ap.iter().map(|(_, v)| *v).collect();
                compare(&case.name, &ap, &case.class_ap);
            }
            let json = report.to_json();
            let coco = json["coco"].as_object().unwrap();
            assert_eq!(coco.keys().collect::<Vec<_>>(), KEYS);
            assert_eq!(json["metric"], metric.name());
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let case = fixture().into_iter().next().unwrap();
    let mut dets = case.detections.clone();
    dets[0][0].image_id = "zzz".into();
    let err = coco_evaluate(&case.annotations, &case.classes, &dets).unwrap_err();
    assert!(format!("{err:#}").contains("`zzz`"), "{err:#}");
    let mut dets = case.detections.clone();
    dets[1][0].score = f64::NAN;
    let err = coco_evaluate(&case.annotations, &case.classes, &dets).unwrap_err();
    assert!(format!("{err:#}").contains("non-finite"), "{err:#}");
    assert!(coco_evaluate(&case.annotations, &case.classes, &dets[..2]).is_err());
}

#[test]
fn two_hundred_images_take_well_under_a_second() {
    // 200 images with 5 objects and 100 detections each, over 20 classes.
    let classes: Vec<String> = (0..20).map(|c| format!("c{c}")).collect();
    let mut state = 12345u64;
    let mut next = move |n: u32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as f64
    };
    let mut annotations = Vec::new();
    let mut per_class = vec![Vec::new(); 20];
    for i in 0..200 {
        let id = format!("{i:06}");
        let mut objects = Vec::new();
        for _ in 0..5 {
            let (x, y, s) = (1.0 + next(300), 1.0 + next(200), 8.0 + next(150));
            objects.push(VocObject {
                class_index: next(20) as usize,
                bbox: [x as f32, y as f32, (x + s) as f32, (y + s) as f32],
                difficult: next(10) == 0.0,
                truncated: false,
            });
        }
        for _ in 0..100 {
            let (x, y, s) = (1.0 + next(300), 1.0 + next(200), 8.0 + next(150));
            per_class[next(20) as usize].push(Detection {
                image_id: id.clone(),
                score: next(1000) / 1000.0,
                bbox: [x, y, x + s, y + s],
            });
        }
        annotations.push(VocAnnotation {
            id,
            width: 500,
            height: 400,
            objects,
        });
    }
    let start = std::time::Instant::now();
    coco_evaluate(&annotations, &classes, &per_class).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!("200 images x 100 detections: {seconds:.3} s");
    // Loose: the machine may be shared; a release build takes a few milliseconds.
    assert!(seconds < 2.0, "{seconds} s");
}

fn xml(annotation: &VocAnnotation, classes: &[String]) -> String {
    let mut objects = String::new();
    for o in &annotation.objects {
        let [xmin, ymin, xmax, ymax] = o.bbox;
        objects += &format!(
            "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>",
            classes[o.class_index],
            u8::from(o.difficult)
        );
    }
    format!(
        "<annotation><size><width>{}</width><height>{}</height></size>{objects}</annotation>",
        annotation.width, annotation.height
    )
}

fn write_voc(root: &Path, case: &Case) {
    std::fs::create_dir_all(root.join("Annotations")).unwrap();
    std::fs::create_dir_all(root.join("ImageSets/Main")).unwrap();
    std::fs::write(root.join("labels.txt"), case.classes.join("\n") + "\n").unwrap();
    let ids: Vec<&str> = case.annotations.iter().map(|a| a.id.as_str()).collect();
    std::fs::write(root.join("ImageSets/Main/test.txt"), ids.join("\n") + "\n").unwrap();
    for a in &case.annotations {
        std::fs::write(
            root.join(format!("Annotations/{}.xml", a.id)),
            xml(a, &case.classes),
        )
        .unwrap();
    }
}

#[test]
fn eval_dets_command_prints_coco_json() {
    let cases = fixture();
    for name in ["mixed", "crowd_ties_bounds"] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (root, dets) = (dir.path().join("voc"), dir.path().join("dets"));
        write_voc(&root, case);
        write_comp4(&dets, "test", &case.classes, &case.detections).unwrap();
        let run = |extra: &[&str]| {
            let out = assert_success(
                common::lbwnet_command()
                    .args(["-q", "eval-dets", "--metric", "coco", "--data"])
                    .arg(&root)
                    .arg("--dets")
                    .arg(&dets)
                    .args(extra)
                    .output()
                    .unwrap(),
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let json = run(&["--json"]);
        assert_eq!(json.lines().count(), 1, "{json}");
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["metric"], "coco");
        let coco = value["coco"].as_object().unwrap();
        assert_eq!(coco.keys().collect::<Vec<_>>(), KEYS);
        let ours: Vec<f64> = KEYS.iter().map(|k| coco[*k].as_f64().unwrap()).collect();
        compare(name, &ours, &case.stats);
        compare(name, &[value["map"].as_f64().unwrap()], &case.stats[..1]);
        let ap: Vec<f64> = case
            .classes
            .iter()
            .map(|c| value["ap"][c].as_f64().unwrap())
            .collect();
        compare(name, &ap, &case.class_ap);

        let table = run(&[]);
        assert!(
            table.contains("AP50") && table.contains(&format!("{:.4}", case.stats[1])),
            "{table}"
        );
        assert!(
            table.contains(&format!("mAP (coco): {:.4}", case.stats[0])),
            "{table}"
        );
    }
}
