//! Training-step benchmark: the median time of one SGD step (forward, backward, update) of
//! a model in float and quantized to b bits, measured alternately in one process so both
//! see the same machine load, and their ratio.
use super::{elapsed_ms, median, peak_rss_mib};
use crate::config::{Backbone, ExperimentConfig};
use crate::detect::faster_rcnn::{FasterRcnn, TrainingPass};
use crate::detect::image_list::{ImageBatch, ImageTarget};
use crate::nn::FlatParameters;
use crate::train::setup::build_model;
use crate::train::sgd::Sgd;
use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// What to time: the quantized model's bit-width, the input size, timed steps per model,
/// the device and the learning rate of the timed steps.
#[derive(Debug, Clone, Copy)]
pub struct TrainStepOptions {
    pub bits: u32,
    pub height: i64,
    pub width: i64,
    pub repeats: usize,
    pub device: Device,
    pub lr: f64,
}

/// What `bench train-step` measured: every timed step of both models, their medians and
/// ratio, the proposals and RoIs each step scored, inference passes and peak memory.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub model: String,
    pub image: (i64, i64),
    pub bits: u32,
    /// libtorch's CPU threads.
    pub threads: i32,
    /// The SGD learning rate of the timed steps (0: the model never changes, so every step
    /// does the same work).
    pub lr: f64,
    pub float_ms: f64,
    pub quantized_ms: f64,
    /// quantized / float.
    pub ratio: f64,
    pub repeats: usize,
    /// Every timed step, in order.
    pub float_steps_ms: Vec<f64>,
    pub quantized_steps_ms: Vec<f64>,
    /// Proposals after NMS (all images) and RoIs sampled for the head, per timed step.
    pub float_proposals: Vec<i64>,
    pub float_rois: Vec<i64>,
    pub quantized_proposals: Vec<i64>,
    pub quantized_rois: Vec<i64>,
    /// Test-time forward passes (`detect`: RPN, head, NMS) on the same image after the
    /// training steps, per pass, with Q(W) computed once before them as an evaluation does
    /// (not timed; `bench inference` times it), and the proposals each one scored: the RPN
    /// keeps its post_nms_top_n_test best-scored boxes without NMS, so models with
    /// different random weights score the same number.
    pub float_inference_ms: Vec<f64>,
    pub quantized_inference_ms: Vec<f64>,
    pub float_inference_proposals: Vec<i64>,
    pub quantized_inference_proposals: Vec<i64>,
    /// The process's peak resident memory (both models, their optimizer state and every
    /// step so far), MiB; none where the OS does not report it.
    pub peak_rss_mib: Option<f64>,
    /// What was built, so a reference implementation can mirror it: the model and eval
    /// settings, the quantized model's c and which layers it keeps in float.
    pub model_config: crate::config::ModelConfig,
    pub eval_config: crate::config::EvalConfig,
    pub c: Option<f64>,
    pub float_first_conv: bool,
    pub float_predictors: bool,
}

/// A fixed random image with three boxes, so every step does the same work.
pub(super) fn synthetic_batch(
    height: i64,
    width: i64,
    device: Device,
) -> (ImageBatch, Vec<ImageTarget>) {
    tch::manual_seed(0);
    let image = Tensor::randn([3, height, width], (Kind::Float, device));
    let (h, w) = (height as f32, width as f32);
    let boxes = Tensor::from_slice(&[
        0.1 * w,
        0.1 * h,
        0.4 * w,
        0.5 * h, //
        0.5 * w,
        0.2 * h,
        0.9 * w,
        0.7 * h, //
        0.3 * w,
        0.6 * h,
        0.6 * w,
        0.95 * h,
    ])
    .view([3, 4])
    .to_device(device);
    let labels = Tensor::from_slice(&[1i64, 2, 3]).to_device(device);
    (
        ImageBatch::new(&[image], vec![1.0]),
        vec![ImageTarget { boxes, labels }],
    )
}

pub(super) fn model_name(cfg: &ExperimentConfig) -> String {
    match cfg.model.backbone {
        Backbone::Small => "small".into(),
        Backbone::Vgg16 => "vgg16".into(),
        Backbone::Resnet50 => "resnet50-c4".into(),
    }
}

/// The model, its variables (in flat buffers) and its optimizer.
pub(super) struct BenchRun {
    _vs: tch::nn::VarStore,
    pub(super) model: FasterRcnn,
    pub(super) params: FlatParameters,
    pub(super) sgd: Sgd,
}

impl BenchRun {
    /// One training step as the trainer runs it: quantization pass, forward, backward,
    /// SGD step.
    pub(super) fn step(
        &mut self,
        batch: &ImageBatch,
        targets: &[ImageTarget],
        lr: f64,
    ) -> TrainingPass {
        let quantized = self.params.quantize_weights();
        let pass = self.model.training_pass(batch, targets);
        let loss = pass.losses.total();
        self.sgd.zero_grad();
        loss.backward();
        drop(quantized);
        self.sgd.step(lr);
        pass
    }
}

/// `cfg` in float and at `bits` (lbw, default c), each built with its SGD optimizer
/// (momentum 0.9, weight decay 1e-4) over every variable; and the quantized model's c.
pub(super) fn float_and_quantized(
    cfg: &ExperimentConfig,
    bits: u32,
    device: Device,
) -> Result<(Vec<BenchRun>, Option<f64>)> {
    let num_classes = 20;
    let mut float_cfg = cfg.clone();
    float_cfg.quant.bits = crate::quant::FLOAT_BITS;
    let mut quant_cfg = cfg.clone();
    quant_cfg.quant.bits = bits;
    quant_cfg.quant.method = crate::quant::Method::Lbw;
    quant_cfg.quant.c = None;
    let mut runs = Vec::new();
    for c in [&float_cfg, &quant_cfg] {
        let (vs, model) = build_model(c, num_classes, device, true)?;
        let params = FlatParameters::new(vs.variables(), &model.registry)?;
        let sgd = Sgd::new(&params, 0.9, 1e-4);
        runs.push(BenchRun {
            _vs: vs,
            model,
            params,
            sgd,
        });
    }
    Ok((runs, quant_cfg.effective_c()))
}

/// Times `repeats` training steps of `cfg`'s model in float and at `bits` (lbw, default
/// c), alternating the two, after one warm-up step each, at learning rate `lr`.
pub fn bench_train_step(cfg: &ExperimentConfig, options: &TrainStepOptions) -> Result<StepTiming> {
    let TrainStepOptions {
        bits,
        height,
        width,
        repeats,
        device,
        lr,
    } = *options;
    let Prepared {
        batch,
        targets,
        mut runs,
        c: runs_c,
    } = prepare(cfg, options)?;
    let mut times = [Vec::new(), Vec::new()];
    let mut proposals = [Vec::new(), Vec::new()];
    let mut rois = [Vec::new(), Vec::new()];
    for round in 0..=repeats {
        for (i, run) in runs.iter_mut().enumerate() {
            tch::manual_seed(round as i64);
            let (pass, ms) = elapsed_ms(device, || run.step(&batch, &targets, lr));
            if round > 0 {
                times[i].push(ms);
                proposals[i].push(proposal_count(&pass.rpn));
                rois[i].push(pass.rois.rois.size()[0]);
            }
        }
    }
    // Random weights leave different numbers of boxes after the RPN's NMS, so the box head
    // would do different work on each side; with NMS off and pre-NMS top-n = post-NMS
    // top-n both score exactly post_nms_top_n_test proposals.
    for run in runs.iter_mut() {
        let rpn = run.model.rpn_config_mut();
        rpn.nms_thresh = 1.0;
        rpn.pre_nms_top_n_test = rpn.post_nms_top_n_test;
        rpn.min_size = 0.0;
    }
    // As in an evaluation, each model's Q(W) is computed once for all its inference passes.
    let frozen: Vec<_> = runs
        .iter()
        .map(|run| run.model.registry.quantize_frozen())
        .collect();
    let mut inference_ms = [Vec::new(), Vec::new()];
    let mut inference_proposals = [Vec::new(), Vec::new()];
    for round in 0..=repeats {
        for (i, run) in runs.iter().enumerate() {
            let (pass, ms) = elapsed_ms(device, || run.model.inference_pass(&batch, &cfg.eval));
            if round > 0 {
                inference_ms[i].push(ms);
                inference_proposals[i].push(proposal_count(&pass.rpn));
            }
        }
    }
    drop(frozen);
    let [float_inference_ms, quantized_inference_ms] = inference_ms;
    let [float_inference_proposals, quantized_inference_proposals] = inference_proposals;
    let [float_steps_ms, quantized_steps_ms] = times;
    let float_ms = median(&mut float_steps_ms.clone());
    let quantized_ms = median(&mut quantized_steps_ms.clone());
    let [float_proposals, quantized_proposals] = proposals;
    let [float_rois, quantized_rois] = rois;
    Ok(StepTiming {
        model: model_name(cfg),
        image: (height, width),
        bits,
        threads: tch::get_num_threads(),
        lr,
        float_ms,
        quantized_ms,
        ratio: quantized_ms / float_ms,
        repeats,
        float_steps_ms,
        quantized_steps_ms,
        float_proposals,
        float_rois,
        quantized_proposals,
        quantized_rois,
        float_inference_ms,
        quantized_inference_ms,
        float_inference_proposals,
        quantized_inference_proposals,
        peak_rss_mib: peak_rss_mib(),
        model_config: cfg.model.clone(),
        eval_config: cfg.eval.clone(),
        c: runs_c,
        float_first_conv: cfg.quant.float_first_conv,
        float_predictors: cfg.quant.float_predictors,
    })
}

/// What a step benchmark steps: a fixed batch, the two models (float, then quantized) and
/// the quantized model's c.
pub(super) struct Prepared {
    pub(super) batch: ImageBatch,
    pub(super) targets: Vec<ImageTarget>,
    pub(super) runs: Vec<BenchRun>,
    pub(super) c: Option<f64>,
}

pub(super) fn prepare(cfg: &ExperimentConfig, options: &TrainStepOptions) -> Result<Prepared> {
    let (batch, targets) = synthetic_batch(options.height, options.width, options.device);
    let (runs, c) = float_and_quantized(cfg, options.bits, options.device)?;
    Ok(Prepared {
        batch,
        targets,
        runs,
        c,
    })
}

/// Proposals the RPN passed on, over all images.
pub(super) fn proposal_count(rpn: &crate::detect::rpn::RpnOutput) -> i64 {
    rpn.proposals.iter().map(|p| p.size()[0]).sum()
}

impl StepTiming {
    /// One line: the medians of both models with their min-max, their ratio, and the RoIs
    /// each step scored.
    pub fn summary(&self, device: Device) -> String {
        let spread = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{min:.1}-{max:.1}")
        };
        format!(
            "train step, {} {}x{} on {:?}, {} thread(s): float {:.1} ms ({}), {}-bit {:.1} ms ({}), ratio {:.3} (medians of {}, min-max in parentheses); RoIs per step float {:?}, {}-bit {:?}",
            self.model,
            self.image.0,
            self.image.1,
            device,
            self.threads,
            self.float_ms,
            spread(&self.float_steps_ms),
            self.bits,
            self.quantized_ms,
            spread(&self.quantized_steps_ms),
            self.ratio,
            self.repeats,
            self.float_rois,
            self.bits,
            self.quantized_rois
        )
    }
}
