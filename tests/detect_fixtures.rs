//! The Faster R-CNN building blocks against torchvision 0.26 fixtures
//! (`tests/fixtures/make_fixtures.py`). Runs on CUDA when available, else on the CPU.
mod common;

use common::{f64s, fixture as load, i64s};
use lbwnet::detect::anchors::{base_anchors, grid_anchors};
use lbwnet::detect::box_coder::BoxCoder;
use lbwnet::detect::box_ops::{box_area, box_iou, clip_boxes_to_image, remove_small_boxes};
use lbwnet::detect::matcher::Matcher;
use lbwnet::detect::nms::{batched_nms, batched_nms_top_k, nms, nms_top_k, suppression_mask_nms};
use lbwnet::detect::roi_align::roi_align;
use lbwnet::detect::roi_pool::roi_pool;
use lbwnet::detect::sampler::BalancedSampler;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn device() -> Device {
    Device::cuda_if_available()
}

/// A `{"shape", "data"}` fixture as an f32 tensor on the test device.
fn tensor(v: &Value) -> Tensor {
    let shape = i64s(&v["shape"]);
    Tensor::from_slice(&f64s(&v["data"]))
        .to_kind(Kind::Float)
        .reshape(shape)
        .to_device(device())
}

fn assert_close(actual: &Tensor, expected: &Value, what: &str) {
    let expected_t = tensor(expected);
    assert_eq!(actual.size(), expected_t.size(), "{what}: shape");
    let diff = (actual.to_kind(Kind::Double) - expected_t.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff <= TOL, "{what}: max abs difference {diff}");
}

fn indices(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_device(Device::Cpu)).expect("i64 indices")
}

fn pair(v: &Value) -> (i64, i64) {
    let p = i64s(v);
    (p[0], p[1])
}

#[test]
fn roi_align_matches_torchvision_outputs_and_gradients() {
    let f = load("roi_align.json");
    let rois = tensor(&f["rois"]);
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let aligned = case["aligned"].as_bool().unwrap();
        let ratio = case["sampling_ratio"].as_i64().unwrap();
        let size = pair(&case["output_size"]);
        let what = format!("roi_align aligned={aligned} ratio={ratio} size={size:?}");
        let input = tensor(&f["input"]).set_requires_grad(true);
        let out = roi_align(
            &input,
            &rois,
            size,
            case["spatial_scale"].as_f64().unwrap(),
            ratio,
            aligned,
        );
        assert_close(&out, &case["output"], &what);
        (out * tensor(&case["upstream"]))
            .sum(Kind::Float)
            .backward();
        assert_close(
            &input.grad(),
            &case["input_grad"],
            &format!("{what} gradient"),
        );
    }
}

#[test]
fn roi_pool_matches_torchvision_outputs_and_gradients() {
    let f = load("roi_pool.json");
    let rois = tensor(&f["rois"]);
    for case in f["cases"].as_array().unwrap() {
        let size = pair(&case["output_size"]);
        let what = format!("roi_pool size={size:?}");
        let input = tensor(&f["input"]).set_requires_grad(true);
        let out = roi_pool(&input, &rois, size, case["spatial_scale"].as_f64().unwrap());
        assert_close(&out, &case["output"], &what);
        (out * tensor(&case["upstream"]))
            .sum(Kind::Float)
            .backward();
        assert_close(
            &input.grad(),
            &case["input_grad"],
            &format!("{what} gradient"),
        );
    }
}

#[test]
fn empty_roi_sets_give_empty_outputs() {
    let input = Tensor::ones([1, 3, 4, 5], (Kind::Float, device()));
    let rois = Tensor::zeros([0, 5], (Kind::Float, device()));
    assert_eq!(
        roi_align(&input, &rois, (7, 7), 0.25, 2, false).size(),
        [0, 3, 7, 7]
    );
    assert_eq!(
        roi_align(&input, &rois, (7, 7), 0.25, 0, true).size(),
        [0, 3, 7, 7]
    );
    assert_eq!(roi_pool(&input, &rois, (2, 3), 0.25).size(), [0, 3, 2, 3]);
}

#[test]
fn rois_off_the_map_pool_to_zero() {
    let input = Tensor::ones([1, 3, 4, 5], (Kind::Float, device())).set_requires_grad(true);
    let far = [
        0.0f32, 100.0, 100.0, 140.0, 120.0, 0.0, -90.0, -80.0, -50.0, -60.0,
    ];
    let rois = Tensor::from_slice(&far).view([2, 5]).to_device(device());
    for out in [
        roi_align(&input, &rois, (2, 2), 0.25, 2, false),
        roi_align(&input, &rois, (2, 2), 0.25, 0, true),
        roi_pool(&input, &rois, (2, 2), 0.25),
    ] {
        assert_eq!(out.size(), [2, 3, 2, 2]);
        assert_eq!(out.abs().sum(Kind::Float).double_value(&[]), 0.0);
        out.sum(Kind::Float).backward();
        assert_eq!(input.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

#[test]
fn nms_matches_torchvision_including_ties_and_threshold_equality() {
    let f = load("nms.json");
    let boxes = tensor(&f["boxes"]);
    let scores = tensor(&f["scores"]);
    for case in f["cases"].as_array().unwrap() {
        let threshold = case["iou_threshold"].as_f64().unwrap();
        let expected = i64s(&case["keep"]);
        let keep = nms(&boxes, &scores, threshold);
        assert_eq!(keep.device(), boxes.device());
        assert_eq!(indices(&keep), expected, "nms threshold {threshold}");
        // The device path (the suppression mask), run here whatever the device.
        let by_mask = suppression_mask_nms(&boxes, &scores, None, threshold, None);
        assert_eq!(
            indices(&by_mask),
            expected,
            "mask nms threshold {threshold}"
        );
        for cap in [
            0,
            1,
            5,
            expected.len() / 2,
            expected.len(),
            expected.len() + 3,
        ] {
            let capped = indices(&nms_top_k(&boxes, &scores, threshold, Some(cap)));
            assert_eq!(
                capped,
                expected[..cap.min(expected.len())],
                "nms_top_k {cap} at {threshold}"
            );
            let capped = suppression_mask_nms(&boxes, &scores, None, threshold, Some(cap));
            assert_eq!(indices(&capped), expected[..cap.min(expected.len())]);
        }
    }
    let none = nms(&boxes.narrow(0, 0, 0), &scores.narrow(0, 0, 0), 0.5);
    assert_eq!(none.size(), [0]);
    assert_eq!(none.kind(), Kind::Int64);
}

/// torchvision's per-class path (over 1000 boxes on the CPU) orders its result with an
/// unstable sort, so equal scores come out in an unspecified order; `batched_nms` orders
/// them by index like the offset path and plain `nms`. Compare in that canonical order.
fn canonical_order(keep: &[i64], scores: &[f64]) -> Vec<i64> {
    let mut keep = keep.to_vec();
    keep.sort_by(|&a, &b| {
        scores[b as usize]
            .total_cmp(&scores[a as usize])
            .then(a.cmp(&b))
    });
    keep
}

#[test]
fn batched_nms_matches_torchvision() {
    let f = load("nms.json");
    for case in f["batched"].as_array().unwrap() {
        let boxes = tensor(&case["boxes"]);
        let scores = tensor(&case["scores"]);
        let idxs = Tensor::from_slice(&i64s(&case["idxs"])).to_device(device());
        let threshold = case["iou_threshold"].as_f64().unwrap();
        let expected = canonical_order(&i64s(&case["keep"]), &f64s(&case["scores"]["data"]));
        assert_eq!(
            indices(&batched_nms(&boxes, &scores, &idxs, threshold)),
            expected,
            "{} boxes",
            expected.len()
        );
        let capped = indices(&batched_nms_top_k(
            &boxes,
            &scores,
            &idxs,
            threshold,
            Some(100),
        ));
        assert_eq!(capped, expected[..100]);
        let by_mask = suppression_mask_nms(&boxes, &scores, Some(&idxs), threshold, None);
        assert_eq!(indices(&by_mask), expected, "mask path");
    }
}

#[test]
fn box_coder_matches_torchvision() {
    let f = load("boxes.json");
    let proposals = tensor(&f["proposals"]);
    let gt = tensor(&f["gt"]);
    let rel_codes = tensor(&f["rel_codes"]);
    for coder_case in f["coders"].as_array().unwrap() {
        let w = f64s(&coder_case["weights"]);
        let coder = BoxCoder::new([w[0], w[1], w[2], w[3]]);
        assert_close(
            &coder.encode(&gt, &proposals),
            &coder_case["encoded"],
            &format!("encode {w:?}"),
        );
        assert_close(
            &coder.decode(&rel_codes, &proposals),
            &coder_case["decoded"],
            &format!("decode {w:?}"),
        );
        // Decoding the encoded targets recovers the matched boxes.
        let round_trip = coder
            .decode(&coder.encode(&gt, &proposals), &proposals)
            .squeeze_dim(1);
        let err = (round_trip - &gt).abs().max().double_value(&[]);
        assert!(err < 1e-3, "round trip error {err}");
    }
    let empty =
        BoxCoder::new([1.0; 4]).decode(&rel_codes.narrow(0, 0, 0), &proposals.narrow(0, 0, 0));
    assert_eq!(empty.size(), [0, 3, 4]);
}

#[test]
fn box_ops_match_torchvision() {
    let f = load("boxes.json");
    let a = tensor(&f["iou_a"]);
    let b = tensor(&f["iou_b"]);
    assert_close(&box_area(&a), &f["area_a"], "box_area");
    assert_close(&box_iou(&a, &b), &f["iou"], "box_iou");
    let wide = tensor(&f["clip_boxes"]);
    let (h, w) = (
        f["clip_height"].as_i64().unwrap(),
        f["clip_width"].as_i64().unwrap(),
    );
    assert_close(
        &clip_boxes_to_image(&wide, h, w),
        &f["clipped"],
        "clip_boxes_to_image",
    );
    let keep = remove_small_boxes(&wide, f["min_size"].as_f64().unwrap());
    assert_eq!(indices(&keep), i64s(&f["small_keep"]));
}

#[test]
fn anchors_match_torchvision() {
    let f = load("anchors.json");
    for case in f["cases"].as_array().unwrap() {
        let sizes = f64s(&case["sizes"]);
        let base = base_anchors(&sizes, &f64s(&case["ratios"]));
        assert_eq!(base.device(), Device::Cpu);
        assert_close(
            &base.to_device(device()),
            &case["base"],
            &format!("base anchors {sizes:?}"),
        );
        let grid = grid_anchors(
            &base.to_device(device()),
            case["feat_h"].as_i64().unwrap(),
            case["feat_w"].as_i64().unwrap(),
            case["stride"].as_i64().unwrap(),
        );
        assert_eq!(grid.device(), device());
        assert_close(&grid, &case["grid"], &format!("grid anchors {sizes:?}"));
    }
}

#[test]
fn matcher_matches_torchvision() {
    let f = load("matcher.json");
    let fixture_iou = tensor(&f["iou"]);
    let iou = box_iou(&tensor(&f["gt"]), &tensor(&f["anchors"]));
    assert_close(&iou, &f["iou"], "matcher iou");
    for case in f["cases"].as_array().unwrap() {
        let matcher = Matcher {
            high: case["high"].as_f64().unwrap(),
            low: case["low"].as_f64().unwrap(),
            allow_low_quality_matches: case["allow_low_quality_matches"].as_bool().unwrap(),
        };
        let expected = i64s(&case["matches"]);
        assert_eq!(
            indices(&matcher.matches(&fixture_iou)),
            expected,
            "{matcher:?}"
        );
        assert_eq!(
            indices(&matcher.matches(&iou)),
            expected,
            "{matcher:?} on box_iou"
        );
    }
    let matcher = Matcher {
        high: 0.7,
        low: 0.3,
        allow_low_quality_matches: true,
    };
    let no_gt = matcher.matches(&Tensor::zeros([0, 4], (Kind::Float, device())));
    assert_eq!(indices(&no_gt), [-1, -1, -1, -1]);
}

/// torchvision's sampler draws from torch's CPU generator; the same seed through
/// `tch::manual_seed` must select the same anchors.
#[test]
fn sampler_reproduces_torchvision_selection_for_a_seed() {
    let f = load("sampler.json");
    let labels = Tensor::from_slice(&i64s(&f["labels"]));
    for case in f["cases"].as_array().unwrap() {
        let sampler = BalancedSampler {
            batch_size_per_image: case["batch_size_per_image"].as_u64().unwrap() as usize,
            positive_fraction: case["positive_fraction"].as_f64().unwrap(),
        };
        tch::manual_seed(case["seed"].as_i64().unwrap());
        let (pos, neg) = sampler.sample(&labels);
        let sorted = |t: &Tensor| indices(&t.sort(0, false).0);
        assert_eq!(sorted(&pos), i64s(&case["pos"]), "{sampler:?} positives");
        assert_eq!(sorted(&neg), i64s(&case["neg"]), "{sampler:?} negatives");
    }
}
