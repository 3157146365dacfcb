//! The same detector on the same image gives the same proposals and detections on CUDA as
//! on the CPU (within 1e-4: convolutions round differently between the two). The
//! torchvision parity tests run on the CPU only; this closes the gap. Skipped without CUDA.
use lbwnet::config::ExperimentConfig;
use lbwnet::detect::image_list::ImageBatch;
use lbwnet::train::determinism::seed_torch;
use lbwnet::train::setup::build_model;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn max_abs_difference(name: &str, cpu: &Tensor, cuda: &Tensor) -> f64 {
    let cuda = cuda.to_device(Device::Cpu);
    assert_eq!(cpu.size(), cuda.size(), "{name}: shapes differ");
    if cpu.numel() == 0 {
        return 0.0;
    }
    (cpu.to_kind(Kind::Double) - cuda.to_kind(Kind::Double))
        .abs()
        .max()
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
    let (mut vs_cuda, cuda) = build_model(&cfg, 6, Device::Cuda(0), false).unwrap();
    vs_cuda.copy(&vs_cpu).unwrap();
    let image = Tensor::rand([3, 240, 320], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let on = |device: Device| ImageBatch::new(&[image.to_device(device)], vec![1.0]);
    let (a, b) = (
        cpu.inference_pass(&on(Device::Cpu), &cfg.eval),
        cuda.inference_pass(&on(Device::Cuda(0)), &cfg.eval),
    );
    let mut worst = Vec::new();
    worst.push((
        "proposals",
        max_abs_difference("proposals", &a.rpn.proposals[0], &b.rpn.proposals[0]),
    ));
    let (da, db) = (&a.detections[0], &b.detections[0]);
    assert!(da.boxes.size()[0] > 0, "no detections to compare");
    worst.push(("boxes", max_abs_difference("boxes", &da.boxes, &db.boxes)));
    worst.push((
        "scores",
        max_abs_difference("scores", &da.scores, &db.scores),
    ));
    assert!(
        da.labels.equal(&db.labels.to_device(Device::Cpu)),
        "labels differ"
    );
    for (what, difference) in worst {
        assert!(
            difference <= 1e-4,
            "{what}: CPU and CUDA differ by {difference}"
        );
    }
}
