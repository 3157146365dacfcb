//! The same detector on the same image gives the same proposals and detections on CUDA as
//! on the CPU: at least 99% of the CPU's are found on CUDA within 1e-4 in every coordinate,
//! score and label (convolutions round differently between the two). The
//! torchvision parity tests run on the CPU only; this closes the gap. Skipped without CUDA.
use lbwnet::config::ExperimentConfig;
use lbwnet::detect::image_list::ImageBatch;
use lbwnet::train::determinism::seed_torch;
use lbwnet::train::setup::build_model;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The fraction of `cpu`'s rows (`[N, K]`) that some row of `cuda` matches within 1e-4 in
/// every column. Matching rather than comparing row by row: where two scores are within
/// rounding of each other, the devices may order them, and so the NMS and top-n cuts,
/// differently.
fn matched_fraction(cpu: &Tensor, cuda: &Tensor) -> f64 {
    let (cpu, cuda) = (
        cpu.to_kind(Kind::Double),
        cuda.to_device(Device::Cpu).to_kind(Kind::Double),
    );
    if cpu.size()[0] == 0 {
        return if cuda.size()[0] == 0 { 1.0 } else { 0.0 };
    }
    let difference = (cpu.unsqueeze(1) - cuda.unsqueeze(0))
        .abs()
        .amax([2].as_slice(), false);
    let matched = difference.le(1e-4).any_dim(1, false);
    matched
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

#[test]
fn cuda_proposals_and_detections_equal_the_cpus() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.yaml");
    // 6-bit lbw so the quantizers' device path is part of it; a low score threshold so a
    // randomly initialized head still detects.
    let overrides = [
        "quant.bits=6".to_string(),
        "eval.score_thresh=0.0".to_string(),
    ];
    let cfg = ExperimentConfig::load(&config, &overrides).unwrap();
    seed_torch(3);
    let (vs_cpu, cpu) = build_model(&cfg, 6, Device::Cpu, false).unwrap();
    // A freshly initialized detector scores thousands of anchors and boxes within rounding
    // of each other, so which ones pass a top-n or NMS cut would be decided by rounding.
    // Scaled-up score layers spread the scores far apart, as training does.
    tch::no_grad(|| {
        for (name, mut var) in vs_cpu.variables() {
            if name.ends_with("cls_logits.weight") || name.ends_with("cls_score.weight") {
                let _ = var.g_mul_scalar_(100.0);
            }
        }
    });
    let (mut vs_cuda, cuda) = build_model(&cfg, 6, Device::Cuda(0), false).unwrap();
    vs_cuda.copy(&vs_cpu).unwrap();
    let image = Tensor::rand([3, 240, 320], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let on = |device: Device| ImageBatch::new(&[image.to_device(device)], vec![1.0]);
    let (a, b) = (
        cpu.inference_pass(&on(Device::Cpu), &cfg.eval),
        cuda.inference_pass(&on(Device::Cuda(0)), &cfg.eval),
    );
    let (da, db) = (&a.detections[0], &b.detections[0]);
    assert!(da.boxes.size()[0] > 0, "no detections to compare");
    let rows = |d: &lbwnet::detect::roi_head::Detections| {
        Tensor::cat(
            &[
                d.boxes.shallow_clone(),
                d.scores.unsqueeze(1),
                d.labels.to_kind(Kind::Float).unsqueeze(1),
            ],
            1,
        )
    };
    let proposals = matched_fraction(&a.rpn.proposals[0], &b.rpn.proposals[0]);
    let detections = matched_fraction(&rows(da), &rows(db));
    // Where a stage's inputs already differ, which stage it was.
    let head =
        |x: &Tensor, y: &Tensor| (x - y.to_device(Device::Cpu)).abs().max().double_value(&[]);
    let context = format!(
        "RPN objectness differs by up to {}, deltas by {}; {} CPU and {} CUDA proposals",
        head(&a.rpn.objectness, &b.rpn.objectness),
        head(&a.rpn.deltas, &b.rpn.deltas),
        a.rpn.proposals[0].size()[0],
        b.rpn.proposals[0].size()[0]
    );
    assert!(
        proposals >= 0.99,
        "{proposals} of the CPU's proposals found on CUDA; {context}"
    );
    assert!(
        detections >= 0.99,
        "{detections} of the CPU's detections found on CUDA; {context}"
    );
}
