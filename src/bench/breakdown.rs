//! The training step phase by phase (`lbwnet bench train-step --breakdown`): per-phase
//! medians of instrumented steps in float and at b bits, with the ordinary step beside.
use super::elapsed_ms;
use super::median;
use super::train_step::{model_name, prepare, BenchRun, Prepared, TrainStepOptions};
use crate::config::{Backbone, ExperimentConfig};
use crate::detect::image_list::{ImageBatch, ImageTarget};
use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind};

/// One phase of [`bench_breakdown`]: medians over the repeats, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTiming {
    pub phase: &'static str,
    pub float_ms: f64,
    pub quantized_ms: f64,
    /// Derived as the difference of two timed sections (may be slightly off, or below 0,
    /// in noise), not timed on its own.
    pub derived: bool,
}

/// What `--breakdown` measured: per-phase medians in float and quantized, their sums, and
/// the ordinary step of the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct StepBreakdown {
    pub model: String,
    pub image: (i64, i64),
    pub bits: u32,
    pub threads: i32,
    pub lr: f64,
    pub repeats: usize,
    pub phases: Vec<PhaseTiming>,
    /// Median of the phases' sum (the instrumented step re-runs the RPN forward and the
    /// RoI pooling for its differences, so its own wall time is longer).
    pub float_sum_ms: f64,
    pub quantized_sum_ms: f64,
    /// Median of an ordinary, uninstrumented step in the same rounds.
    pub float_step_ms: f64,
    pub quantized_step_ms: f64,
}

/// Phase names of [`breakdown_step`], in order, and whether each is derived.
const PHASES: [(&str, bool); 11] = [
    ("trunk forward", false),
    ("RPN head forward (conv + predictors)", true),
    ("proposal layer (decode, top-k, clip, NMS)", false),
    ("RPN loss (anchor matching, sampling, loss)", true),
    ("RoI sampling (matching, sampling)", false),
    ("RoI pooling (RoIAlign / RoIPool)", false),
    ("box head + predictors + head losses", true),
    ("backward: RPN + RoI head", false),
    ("backward: trunk", false),
    ("optimizer (zero_grad + SGD step)", false),
    ("quantization pass Q(W) of every layer", false),
];

/// One training step run phase by phase, with a wall-clock timer around each (and a
/// device sync after each on CUDA). The trunk's output is detached into a leaf so the
/// backward splits into the heads' part and the trunk's (the trunk's gets the leaf's
/// gradient through `sum(features * grad)`, one extra multiply). The RPN is run twice,
/// without and with targets, for the RPN loss by difference; the proposal layer is
/// `Rpn::propose` run again on the RPN's outputs (the RPN head is the rest of the first
/// run); the RoI pooling is run once more on its own (the box head is the rest of the
/// head's loss). The quantization pass runs first, as in training. Returns the phase
/// times in [`PHASES`]' order. `cfg` is the model's config.
fn breakdown_step(
    cfg: &ExperimentConfig,
    run: &mut BenchRun,
    batch: &ImageBatch,
    targets: &[ImageTarget],
    lr: f64,
    device: Device,
) -> Vec<f64> {
    let (quantized, quant_ms) = elapsed_ms(device, || run.params.quantize_weights());
    let (trunk, rpn, roi_head) = run.model.parts();
    let sgd = &mut run.sgd;
    let rpn_cfg = &cfg.model.rpn;
    let (features, trunk_ms) = elapsed_ms(device, || trunk.forward_t(&batch.images, true));
    let leaf = features.detach().set_requires_grad(true);
    let (plain, rpn_plain_ms) = elapsed_ms(device, || {
        rpn.forward(&leaf, &batch.sizes, &batch.scales, None, true)
    });
    let (_, propose_ms) = elapsed_ms(device, || {
        tch::no_grad(|| {
            for (i, &size) in batch.sizes.iter().enumerate() {
                let _proposals = rpn.propose(
                    &plain.objectness.get(i as i64),
                    &plain.deltas.get(i as i64),
                    &plain.anchors,
                    size,
                    batch.scales[i],
                    rpn_cfg.pre_nms_top_n_train,
                    rpn_cfg.post_nms_top_n_train,
                );
            }
        })
    });
    drop(plain);
    let (rpn_out, rpn_full_ms) = elapsed_ms(device, || {
        rpn.forward(&leaf, &batch.sizes, &batch.scales, Some(targets), true)
    });
    let (rois, sample_ms) = elapsed_ms(device, || roi_head.sample(&rpn_out.proposals, targets));
    let pool_size = match cfg.model.backbone {
        Backbone::Small => crate::nn::backbones::small::POOL_SIZE,
        Backbone::Vgg16 => crate::nn::backbones::vgg::POOL_SIZE,
        Backbone::Resnet50 => crate::nn::backbones::resnet::POOL_SIZE,
    };
    let roi_cfg = &cfg.model.roi;
    let scale = 1.0 / cfg.model.feature_stride as f64;
    let (_, pool_ms) = elapsed_ms(device, || match roi_cfg.pooler {
        crate::config::Pooler::RoiAlign => crate::detect::roi_align::roi_align(
            &leaf,
            &rois.rois,
            (pool_size, pool_size),
            scale,
            roi_cfg.sampling_ratio,
            roi_cfg.aligned,
        ),
        crate::config::Pooler::RoiPool => {
            crate::detect::roi_pool::roi_pool(&leaf, &rois.rois, (pool_size, pool_size), scale)
        }
    });
    let (head, head_ms) = elapsed_ms(device, || roi_head.loss(&leaf, &rois));
    let rpn_losses = rpn_out.losses.as_ref().expect("targets were given");
    let loss = &rpn_losses.objectness + &rpn_losses.box_reg + head.classifier + head.box_reg;
    let (_, optim_zero_ms) = elapsed_ms(device, || sgd.zero_grad());
    let (_, heads_backward_ms) = elapsed_ms(device, || loss.backward());
    let (_, trunk_backward_ms) = elapsed_ms(device, || {
        (&features * leaf.grad()).sum(Kind::Float).backward()
    });
    drop(quantized);
    let (_, step_ms) = elapsed_ms(device, || sgd.step(lr));
    vec![
        trunk_ms,
        rpn_plain_ms - propose_ms,
        propose_ms,
        rpn_full_ms - rpn_plain_ms,
        sample_ms,
        pool_ms,
        head_ms - pool_ms,
        heads_backward_ms,
        trunk_backward_ms,
        optim_zero_ms + step_ms,
        quant_ms,
    ]
}

/// Per-phase medians of `repeats` instrumented steps in float and at `bits`, alternating,
/// after one warm-up each; with each round's ordinary step for reference.
pub fn bench_breakdown(
    cfg: &ExperimentConfig,
    options: &TrainStepOptions,
) -> Result<StepBreakdown> {
    let TrainStepOptions {
        bits,
        repeats,
        device,
        lr,
        ..
    } = *options;
    let Prepared {
        batch,
        targets,
        mut runs,
        ..
    } = prepare(cfg, options)?;
    let rows = PHASES.len();
    let mut phase_times = vec![[Vec::new(), Vec::new()]; rows];
    let mut sums = [Vec::new(), Vec::new()];
    let mut steps = [Vec::new(), Vec::new()];
    let cfgs = {
        let mut q = cfg.clone();
        q.quant.bits = bits;
        [cfg.clone(), q]
    };
    for round in 0..=repeats {
        for (i, run) in runs.iter_mut().enumerate() {
            tch::manual_seed(round as i64);
            let phases = breakdown_step(&cfgs[i], run, &batch, &targets, lr, device);
            tch::manual_seed(round as i64);
            let (_, step_ms) = elapsed_ms(device, || drop(run.step(&batch, &targets, lr)));
            if round > 0 {
                sums[i].push(phases.iter().sum::<f64>());
                for (row, t) in phases.into_iter().enumerate() {
                    phase_times[row][i].push(t);
                }
                steps[i].push(step_ms);
            }
        }
    }
    let phases = phase_times
        .iter_mut()
        .zip(PHASES)
        .map(|([f, q], (phase, derived))| PhaseTiming {
            phase,
            float_ms: median(f),
            quantized_ms: median(q),
            derived,
        })
        .collect();
    Ok(StepBreakdown {
        model: model_name(cfg),
        image: (options.height, options.width),
        bits,
        threads: tch::get_num_threads(),
        lr,
        repeats,
        phases,
        float_sum_ms: median(&mut sums[0]),
        quantized_sum_ms: median(&mut sums[1]),
        float_step_ms: median(&mut steps[0]),
        quantized_step_ms: median(&mut steps[1]),
    })
}

impl StepBreakdown {
    /// A Markdown table of the phases (ms and share of the sum, float and quantized), the
    /// sum and the ordinary step, and how the phases were timed.
    pub fn table(&self, device: Device) -> String {
        let share = |ms: f64, sum: f64| format!("{:.1}", 100.0 * ms / sum);
        let mut out = format!(
            "train-step breakdown, {} {}x{} on {:?}, {} thread(s), lr {}, medians of {} instrumented steps:\n\n",
            self.model, self.image.0, self.image.1, device, self.threads, self.lr, self.repeats
        );
        out += &format!(
            "| phase | float ms | {}-bit ms | float % | {}-bit % |\n|:--|--:|--:|--:|--:|\n",
            self.bits, self.bits
        );
        for p in &self.phases {
            out += &format!(
                "| {}{} | {:.1} | {:.1} | {} | {} |\n",
                p.phase,
                if p.derived { " *" } else { "" },
                p.float_ms,
                p.quantized_ms,
                share(p.float_ms, self.float_sum_ms),
                share(p.quantized_ms, self.quantized_sum_ms)
            );
        }
        out += &format!(
            "| sum of phases | {:.1} | {:.1} | 100 | 100 |\n",
            self.float_sum_ms, self.quantized_sum_ms
        );
        out += &format!(
            "| ordinary step, same rounds | {:.1} | {:.1} | | |\n",
            self.float_step_ms, self.quantized_step_ms
        );
        out + "\n* by difference of two timed sections (RPN head = RPN forward without targets - proposal layer; RPN loss = RPN forward with targets - without; box head = head loss - RoI pooling). Backward is timed in two parts only (heads, trunk): per-layer backward would need autograd hooks. The quantization pass runs before the forward, as in training, so the forward rows use its Q(W).\n"
    }
}
