//! The same detector on the same image gives the same proposals and detections on CUDA as
//! on the CPU: the rows of each side are paired one to one (each row at most once) within
//! 1e-4 in every coordinate, score and label, and at least 99% of the CPU's rows and 99% of
//! CUDA's have a partner (convolutions round differently between the two). The torchvision
//! parity tests run on the CPU only; this closes the gap. Skipped without CUDA; the pairing
//! itself is tested on the CPU.
use lbwnet::config::ExperimentConfig;
use lbwnet::detect::image_list::ImageBatch;
use lbwnet::train::determinism::seed_torch;
use lbwnet::train::setup::build_model;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// A one-to-one pairing of two sets of rows.
#[derive(Debug, PartialEq)]
struct Pairing {
    matched: usize,
    /// Rows of the first set without a partner.
    unmatched_a: usize,
    /// Rows of the second set without a partner.
    unmatched_b: usize,
}

impl Pairing {
    /// The fractions of the first and of the second set's rows that have a partner (1 for
    /// an empty set).
    fn fractions(&self) -> (f64, f64) {
        let of = |unmatched: usize| {
            let total = self.matched + unmatched;
            if total == 0 {
                1.0
            } else {
                self.matched as f64 / total as f64
            }
        };
        (of(self.unmatched_a), of(self.unmatched_b))
    }
}

/// Pairs rows of `a` with rows of `b` one to one: candidate pairs are those within `tol`
/// in every column (max |difference|), taken greedily from the closest, each row at most
/// once. Matching rather than comparing row by row: where two scores are within rounding of
/// each other, the devices may order them, and so the NMS and top-n cuts, differently.
fn pair_rows(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) -> Pairing {
    let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            assert_eq!(x.len(), y.len(), "rows of different widths");
            let distance = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            if distance <= tol {
                candidates.push((distance, i, j));
            }
        }
    }
    candidates.sort_by(|p, q| p.0.total_cmp(&q.0).then((p.1, p.2).cmp(&(q.1, q.2))));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    let mut matched = 0;
    for (_, i, j) in candidates {
        if !used_a[i] && !used_b[j] {
            used_a[i] = true;
            used_b[j] = true;
            matched += 1;
        }
    }
    Pairing {
        matched,
        unmatched_a: a.len() - matched,
        unmatched_b: b.len() - matched,
    }
}

/// The rows of a `[N, K]` tensor (K > 0) on any device, as f64.
fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double);
    let width = t.size2().unwrap().1 as usize;
    let flat = Vec::<f64>::try_from(t.reshape([-1])).unwrap();
    flat.chunks(width).map(<[f64]>::to_vec).collect()
}

#[test]
fn pairing_is_one_to_one_and_counts_both_sides() {
    let row = |v: [f64; 3]| v.to_vec();
    let r = row([1.0, 2.0, 0.5]);
    let one = std::slice::from_ref(&r);
    // Three copies of one row on one side find one partner, not three.
    let p = pair_rows(&[r.clone(), r.clone(), r.clone()], one, TOLERANCE);
    assert_eq!(
        p,
        Pairing {
            matched: 1,
            unmatched_a: 2,
            unmatched_b: 0
        }
    );
    assert_eq!(p.fractions(), (1.0 / 3.0, 1.0));
    // And the other way round.
    let p = pair_rows(one, &[r.clone(), r.clone()], TOLERANCE);
    assert_eq!((p.matched, p.unmatched_a, p.unmatched_b), (1, 0, 1));
    assert_eq!(p.fractions(), (1.0, 0.5));
    // Within the tolerance in every column, or not at all.
    let near = row([1.0 + 0.5e-4, 2.0 - 0.9e-4, 0.5]);
    let far = row([1.0, 2.0, 0.5 + 2e-4]);
    assert_eq!(pair_rows(one, &[near], TOLERANCE).matched, 1);
    assert_eq!(pair_rows(one, &[far], TOLERANCE).matched, 0);
    // The closest pairs first: `a0` could take either row of `b`, `a1` only `b1`; the
    // greedy pairing gives `a0` the nearer `b0`, so both are paired.
    let a0 = row([0.0, 0.0, 0.0]);
    let a1 = row([0.0, 0.0, 1.5e-4]);
    let b0 = row([0.0, 0.0, 0.1e-4]);
    let b1 = row([0.0, 0.0, 0.9e-4]);
    let p = pair_rows(&[a0, a1], &[b1, b0], TOLERANCE);
    assert_eq!((p.matched, p.unmatched_a, p.unmatched_b), (2, 0, 0));
    // Empty sets.
    assert_eq!(pair_rows(&[], &[], TOLERANCE).fractions(), (1.0, 1.0));
    assert_eq!(pair_rows(&[], one, TOLERANCE).fractions(), (1.0, 0.0));
    // From tensors.
    let t = Tensor::from_slice(&[1.0f32, 2.0, 0.5, 3.0, 4.0, 0.25]).reshape([2, 3]);
    assert_eq!(rows(&t), vec![r, row([3.0, 4.0, 0.25])]);
    assert!(rows(&Tensor::zeros([0, 4], (Kind::Float, Device::Cpu))).is_empty());
}

#[test]
fn cuda_proposals_and_detections_equal_the_cpus() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.yaml");
    // 6-bit lbw so the quantizers' device path is part of it; a low score threshold so a
    // randomly initialized head still detects; no TF32 (its 10-bit mantissa alone moves the
    // RPN's objectness by ~1e-3), which `build_model` applies from the config.
    let overrides = [
        "quant.bits=6".to_string(),
        "eval.score_thresh=0.0".to_string(),
        "train.tf32=false".to_string(),
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
    assert_eq!(
        lbwnet::torch_ext::tf32_allowed(),
        (false, false),
        "TF32 is off"
    );
    vs_cuda.copy(&vs_cpu).unwrap();
    let image = Tensor::rand([3, 240, 320], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let on = |device: Device| ImageBatch::new(&[image.to_device(device)], vec![1.0]);
    let (a, b) = (
        cpu.inference_pass(&on(Device::Cpu), &cfg.eval),
        cuda.inference_pass(&on(Device::Cuda(0)), &cfg.eval),
    );
    let (da, db) = (&a.detections[0], &b.detections[0]);
    assert!(da.boxes.size()[0] > 0, "no detections to compare");
    let det_rows = |d: &lbwnet::detect::roi_head::Detections| {
        Tensor::cat(
            &[
                d.boxes.shallow_clone(),
                d.scores.unsqueeze(1),
                d.labels.to_kind(Kind::Float).unsqueeze(1),
            ],
            1,
        )
    };
    let proposals = pair_rows(
        &rows(&a.rpn.proposals[0]),
        &rows(&b.rpn.proposals[0]),
        TOLERANCE,
    );
    let detections = pair_rows(&rows(&det_rows(da)), &rows(&det_rows(db)), TOLERANCE);
    // Where a stage's inputs already differ, which stage it was.
    let head =
        |x: &Tensor, y: &Tensor| (x - y.to_device(Device::Cpu)).abs().max().double_value(&[]);
    // Stage by stage from the input, so the first op that differs is named: trunk features,
    // then the RPN head's two convolutions.
    let context = format!(
        "trunk features differ by up to {}, RPN objectness by {}, deltas by {}; {} CPU and {} CUDA proposals",
        head(&a.features, &b.features),
        head(&a.rpn.objectness, &b.rpn.objectness),
        head(&a.rpn.deltas, &b.rpn.deltas),
        a.rpn.proposals[0].size()[0],
        b.rpn.proposals[0].size()[0]
    );
    eprintln!("{context}");
    for (what, pairing) in [("proposals", &proposals), ("detections", &detections)] {
        let (cpu_found, cuda_found) = pairing.fractions();
        eprintln!("{what}: {pairing:?}");
        assert!(
            cpu_found >= 0.99 && cuda_found >= 0.99,
            "{what}: {} paired one to one, {} of the CPU's and {} of CUDA's without a \
             partner ({cpu_found} and {cuda_found} paired); {context}",
            pairing.matched,
            pairing.unmatched_a,
            pairing.unmatched_b
        );
    }
}
