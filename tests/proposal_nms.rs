//! The proposal layer's NMS implementations (`model.rpn.nms_backend`: `host`, `mask`,
//! `blocks`) keep the same proposals, on the CPU and on CUDA where available; and, ignored
//! by default, their times in VGG-16's proposal layer at 600x1000 (12000 pre-NMS boxes,
//! 2000 kept), alternated in one process, on CUDA where available:
//! `cargo test --release --test proposal_nms -- --ignored --nocapture` (the GPU check runs
//! it with `--include-ignored`). It prints one `proposal_nms {json}` line with the medians;
//! `auto` should name the fastest (README "GPU").
use lbwnet::config::ExperimentConfig;
use lbwnet::detect::box_coder::BoxCoder;
use lbwnet::detect::box_ops::{clip_boxes_to_image, remove_small_boxes};
use lbwnet::detect::faster_rcnn::FasterRcnn;
use lbwnet::detect::image_list::ImageBatch;
use lbwnet::detect::nms::{blocked_nms, nms_top_k_with, NmsBackend};
use lbwnet::train::determinism::seed_torch;
use lbwnet::train::setup::build_model;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const BACKENDS: [NmsBackend; 3] = [NmsBackend::Host, NmsBackend::Mask, NmsBackend::Blocks];

fn device() -> Device {
    Device::cuda_if_available()
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A randomly initialized model of `config` (with `sets`) on `device`.
fn model(config: &str, sets: &[&str], device: Device) -> (tch::nn::VarStore, FasterRcnn) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(config);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let cfg = ExperimentConfig::load(&path, &sets).unwrap();
    seed_torch(5);
    build_model(&cfg, 21, device, false).unwrap()
}

/// The RPN's objectness, deltas and anchors for one random image of `height x width`.
fn rpn_outputs(model: &FasterRcnn, height: i64, width: i64, device: Device) -> [Tensor; 3] {
    let image = Tensor::rand([3, height, width], (Kind::Float, device)) * 2.0 - 1.0;
    let batch = ImageBatch::new(&[image], vec![1.0]);
    let pass = tch::no_grad(|| model.inference_pass(&batch, &Default::default()));
    [
        pass.rpn.objectness.get(0),
        pass.rpn.deltas.get(0),
        pass.rpn.anchors,
    ]
}

/// The proposal layer at training top-n (`pre_nms`, `post_nms`) with `backend`.
fn propose(
    model: &mut FasterRcnn,
    backend: NmsBackend,
    [objectness, deltas, anchors]: &[Tensor; 3],
    size: (i64, i64),
    (pre_nms, post_nms): (usize, usize),
) -> Tensor {
    model.rpn_config_mut().nms_backend = backend;
    let (_, rpn, _) = model.parts();
    tch::no_grad(|| rpn.propose(objectness, deltas, anchors, size, 1.0, pre_nms, post_nms))
}

#[test]
fn every_backend_gives_the_same_proposals() {
    let device = device();
    let (_vs, mut model) = model("default.yaml", &[], device);
    let outputs = rpn_outputs(&model, 240, 320, device);
    for top_n in [(12000, 2000), (600, 50), (6000, 300)] {
        let reference = propose(&mut model, NmsBackend::Auto, &outputs, (240, 320), top_n);
        assert!(
            reference.size()[0] > 10,
            "{top_n:?}: {:?}",
            reference.size()
        );
        for backend in BACKENDS {
            let proposals = propose(&mut model, backend, &outputs, (240, 320), top_n);
            assert!(
                proposals.equal(&reference),
                "{backend} on {device:?}, top-n {top_n:?}: {:?} against {:?} proposals",
                proposals.size(),
                reference.size()
            );
        }
    }
}

/// Median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
#[ignore]
fn time_proposal_layer_nms_backends() {
    let device = device();
    let (height, width, top_n) = (600, 1000, (12000, 2000));
    let (_vs, mut model) = model("voc07_vgg16.yaml", &["model.backbone_weights=null"], device);
    let outputs = rpn_outputs(&model, height, width, device);
    // The CPU only rehearses (the mask is 12000 x 12000 there): one round, no warm-up.
    let (repeats, first) = if device == Device::Cpu {
        (1, 1)
    } else {
        (15, 0)
    };
    let reference = propose(
        &mut model,
        NmsBackend::Host,
        &outputs,
        (height, width),
        top_n,
    );
    let mut layer: Vec<Vec<f64>> = vec![Vec::new(); BACKENDS.len()];
    for round in first..=repeats {
        // Alternated, so drift on a shared machine reaches every backend alike; round 0 warms up.
        for (b, &backend) in BACKENDS.iter().enumerate() {
            sync(device);
            let start = Instant::now();
            let proposals = propose(&mut model, backend, &outputs, (height, width), top_n);
            sync(device);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert!(proposals.equal(&reference), "{backend}: other proposals");
            if round > 0 {
                layer[b].push(ms);
            }
        }
    }
    // NMS alone on the layer's pre-NMS boxes, and the blocks' size.
    let [objectness, deltas, anchors] = &outputs;
    let (scores, top) = objectness.topk(top_n.0 as i64, 0, true, true);
    let boxes = BoxCoder::new([1.0; 4])
        .decode(
            &deltas.index_select(0, &top),
            &anchors.index_select(0, &top),
        )
        .view([-1, 4]);
    let boxes = clip_boxes_to_image(&boxes, height, width);
    let keep = remove_small_boxes(&boxes, 16.0);
    let (boxes, scores) = (boxes.index_select(0, &keep), scores.index_select(0, &keep));
    let kept = nms_top_k_with(&boxes, &scores, 0.7, Some(top_n.1), NmsBackend::Host);
    let variants: Vec<(String, Box<dyn Fn() -> Tensor>)> = BACKENDS
        .iter()
        .map(|&backend| {
            let (boxes, scores) = (boxes.shallow_clone(), scores.shallow_clone());
            let run: Box<dyn Fn() -> Tensor> =
                Box::new(move || nms_top_k_with(&boxes, &scores, 0.7, Some(top_n.1), backend));
            (backend.name().to_string(), run)
        })
        .chain([512, 1024, 4096].into_iter().map(|block| {
            let (boxes, scores) = (boxes.shallow_clone(), scores.shallow_clone());
            let run: Box<dyn Fn() -> Tensor> =
                Box::new(move || blocked_nms(&boxes, &scores, None, 0.7, Some(top_n.1), block));
            (format!("blocks_{block}"), run)
        }))
        .collect();
    let mut alone: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in first..=repeats {
        for (v, (name, run)) in variants.iter().enumerate() {
            sync(device);
            let start = Instant::now();
            let result = run();
            sync(device);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert!(result.equal(&kept), "NMS {name}: other boxes kept");
            if round > 0 {
                alone[v].push(ms);
            }
        }
    }
    let mut report = serde_json::Map::new();
    report.insert("device".into(), format!("{device:?}").into());
    report.insert("model".into(), "vgg16 600x1000, random weights".into());
    report.insert("pre_nms".into(), boxes.size()[0].into());
    report.insert("kept".into(), reference.size()[0].into());
    report.insert("repeats".into(), repeats.into());
    let auto = NmsBackend::Auto.resolve(device);
    report.insert("auto".into(), auto.name().into());
    let mut fastest = (f64::INFINITY, "");
    for (b, backend) in BACKENDS.iter().enumerate() {
        let ms = median(&mut layer[b]);
        if ms < fastest.0 {
            fastest = (ms, backend.name());
        }
        report.insert(format!("layer_{}_ms", backend.name()), ms.into());
    }
    for (v, (name, _)) in variants.iter().enumerate() {
        report.insert(format!("nms_{name}_ms"), median(&mut alone[v]).into());
    }
    report.insert("fastest".into(), fastest.1.into());
    println!("proposal_nms {}", serde_json::Value::Object(report));
    if fastest.1 != auto.name() {
        println!(
            "note: `auto` runs {} on {device:?}, but {} was fastest here",
            auto.name(),
            fastest.1
        );
    }
}
