//! Inference benchmark: the median time of one test-time forward pass (`detect`: trunk,
//! RPN, proposal layer, RoI head, per-class NMS) of a model in float and quantized to b
//! bits, with the same random weights and the same input, alternated in one process so
//! both see the same machine load, and their ratio.
//!
//! The quantized model runs as an evaluation runs it (`train::evaluate`): one quantization
//! pass fills every layer's Q(W) before the forwards ([`QuantRegistry::quantize_frozen`]),
//! and the forwards reuse it. That pass is timed separately (`quantize_pass_ms`): an
//! evaluation pays it once, whatever its number of images. `--per-forward` also times a
//! second copy of the quantized model without it (every layer quantizing its weight on
//! every forward, as evaluations did before) and checks that both give the same
//! detections, bit for bit.
//!
//! [`QuantRegistry::quantize_frozen`]: crate::nn::QuantRegistry::quantize_frozen
use super::train_step::{model_name, proposal_count, synthetic_batch};
use super::{elapsed_ms, median, peak_rss_mib};
use crate::config::ExperimentConfig;
use crate::detect::faster_rcnn::{FasterRcnn, InferencePass};
use crate::detect::image_list::ImageBatch;
use crate::train::setup::build_model;
use anyhow::{ensure, Result};
use serde::Serialize;
use tch::{Device, Tensor};

/// What to time: the quantized model's bit-width, the input size, timed forwards per
/// model, the device, and whether to time the per-forward quantization too.
#[derive(Debug, Clone, Copy)]
pub struct InferenceOptions {
    pub bits: u32,
    pub height: i64,
    pub width: i64,
    pub repeats: usize,
    pub device: Device,
    pub per_forward: bool,
}

/// What `bench inference` measured.
#[derive(Debug, Clone, Serialize)]
pub struct InferenceTiming {
    pub model: String,
    pub image: (i64, i64),
    pub bits: u32,
    /// libtorch's CPU threads.
    pub threads: i32,
    pub repeats: usize,
    /// Median forward of the float model.
    pub float_ms: f64,
    /// Median forward of the quantized model with its Q(W) computed beforehand.
    pub quantized_ms: f64,
    /// quantized / float.
    pub ratio: f64,
    /// The median over rounds of quantized / float within a round (the two forwards run
    /// back to back, so a slow stretch of a shared machine hits both).
    pub paired_ratio: f64,
    /// The same medians and ratio in CPU time of the process (user + system) rather than
    /// wall time: what the forward computed, less the time other processes took the core.
    /// At one thread this is the steadier figure on a shared machine; with more threads it
    /// includes libtorch's workers spinning. `None` off the CPU.
    pub float_cpu_ms: Option<f64>,
    pub quantized_cpu_ms: Option<f64>,
    pub cpu_ratio: Option<f64>,
    /// Median of one quantization pass over every quantized layer (paid once per
    /// evaluation, not per image).
    pub quantize_pass_ms: f64,
    /// Quantized layers the pass filled.
    pub quantized_layers: usize,
    /// (quantize pass + `images` forwards) / (`images` float forwards) for an evaluation
    /// of 1, 10 and 100 images, from the medians.
    pub amortized_ratio: [(usize, f64); 3],
    /// With `--per-forward`: the quantized model's median forward quantizing every layer
    /// on the way (no pass beforehand), its ratio to float, and whether its detections
    /// were bit-identical to the forwards with the pass in every round.
    pub per_forward_ms: Option<f64>,
    pub per_forward_ratio: Option<f64>,
    pub per_forward_identical: Option<bool>,
    pub per_forward_cpu_ratio: Option<f64>,
    /// Every timed forward and pass, in order.
    pub float_forwards_ms: Vec<f64>,
    pub quantized_forwards_ms: Vec<f64>,
    pub quantize_passes_ms: Vec<f64>,
    pub per_forward_forwards_ms: Vec<f64>,
    /// Every timed forward's CPU time (empty off the CPU).
    pub float_forwards_cpu_ms: Vec<f64>,
    pub quantized_forwards_cpu_ms: Vec<f64>,
    pub per_forward_forwards_cpu_ms: Vec<f64>,
    /// Proposals each model's RPN passed on (both keep exactly their post-NMS top-n) and
    /// detections after the head, in the last round.
    pub float_proposals: i64,
    pub quantized_proposals: i64,
    pub float_detections: i64,
    pub quantized_detections: i64,
    pub peak_rss_mib: Option<f64>,
    pub c: Option<f64>,
    pub float_first_conv: bool,
    pub float_predictors: bool,
}

/// One model of the comparison, with its variables.
struct Side {
    vs: tch::nn::VarStore,
    model: FasterRcnn,
}

/// `cfg` in float and at `bits` (lbw, default c), `quantized_copies` times, every quantized
/// one with the float one's weights, all scoring exactly `post_nms_top_n_test` proposals
/// (no RPN NMS, no minimum size) so their heads do the same work although their outputs
/// differ.
fn float_and_quantized(
    cfg: &ExperimentConfig,
    bits: u32,
    device: Device,
    quantized_copies: usize,
) -> Result<(Vec<Side>, Option<f64>)> {
    let mut float_cfg = cfg.clone();
    float_cfg.quant.bits = crate::quant::FLOAT_BITS;
    let mut quant_cfg = cfg.clone();
    quant_cfg.quant.bits = bits;
    quant_cfg.quant.method = crate::quant::Method::Lbw;
    quant_cfg.quant.c = None;
    let num_classes = 20;
    let build = |c: &ExperimentConfig| -> Result<Side> {
        let (vs, mut model) = build_model(c, num_classes, device, true)?;
        let rpn = model.rpn_config_mut();
        rpn.nms_thresh = 1.0;
        rpn.pre_nms_top_n_test = rpn.post_nms_top_n_test;
        rpn.min_size = 0.0;
        Ok(Side { vs, model })
    };
    tch::manual_seed(cfg.train.seed as i64);
    let mut sides = vec![build(&float_cfg)?];
    for _ in 0..quantized_copies {
        let mut quantized = build(&quant_cfg)?;
        quantized.vs.copy(&sides[0].vs)?;
        sides.push(quantized);
    }
    Ok((sides, quant_cfg.effective_c()))
}

/// This process's CPU time (user + system, all threads) in ms.
fn process_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// One forward pass, its wall time and its CPU time in ms.
fn forward(
    side: &Side,
    batch: &ImageBatch,
    cfg: &ExperimentConfig,
    device: Device,
) -> (InferencePass, f64, f64) {
    let cpu = process_cpu_ms();
    let (pass, ms) = elapsed_ms(device, || side.model.inference_pass(batch, &cfg.eval));
    (pass, ms, process_cpu_ms() - cpu)
}

/// The median of the element-wise quotients `a / b`.
fn paired_median(a: &[f64], b: &[f64]) -> f64 {
    median(&mut a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
}

/// Whether two passes gave the same detections and head outputs, bit for bit.
fn same_output(a: &InferencePass, b: &InferencePass) -> bool {
    let same = |x: &Tensor, y: &Tensor| x.size() == y.size() && x.equal(y);
    same(&a.class_logits, &b.class_logits)
        && same(&a.box_deltas, &b.box_deltas)
        && a.detections.len() == b.detections.len()
        && a.detections.iter().zip(&b.detections).all(|(x, y)| {
            same(&x.boxes, &y.boxes) && same(&x.scores, &y.scores) && same(&x.labels, &y.labels)
        })
}

fn detection_count(pass: &InferencePass) -> i64 {
    pass.detections.iter().map(|d| d.scores.size()[0]).sum()
}

/// Times `repeats` forwards of `cfg`'s model in float and at `bits` (lbw, default c) after
/// one warm-up round, rotating which model goes first from round to round.
///
/// As in an evaluation, the quantized model's pass fills its layers' Q(W) once and every
/// forward reuses it: the pass is timed `repeats` times up front (after a warm-up), and
/// the last one's Q(W) stays for all the forwards. With `per_forward`, a second quantized
/// model with the same weights runs without the pass, quantizing on every forward.
pub fn bench_inference(
    cfg: &ExperimentConfig,
    options: &InferenceOptions,
) -> Result<InferenceTiming> {
    let InferenceOptions {
        bits,
        height,
        width,
        repeats,
        device,
        per_forward,
    } = *options;
    ensure!(repeats >= 1, "repeats must be at least 1");
    let (batch, _) = synthetic_batch(height, width, device);
    let (sides, c) = float_and_quantized(cfg, bits, device, 1 + usize::from(per_forward))?;
    let registry = &sides[1].model.registry;
    let mut pass_ms = Vec::new();
    let mut frozen = None;
    for round in 0..=repeats {
        drop(frozen.take());
        let (guard, ms) = elapsed_ms(device, || registry.quantize_frozen());
        if round > 0 {
            pass_ms.push(ms);
        }
        frozen = Some(guard);
    }
    let frozen = frozen.expect("the pass ran");
    let quantized_layers = frozen.layers();
    let mut times = vec![Vec::new(); sides.len()];
    let mut cpu_times = vec![Vec::new(); sides.len()];
    let mut identical = true;
    let mut last: Vec<Option<InferencePass>> = (0..sides.len()).map(|_| None).collect();
    for round in 0..=repeats {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let (pass, ms, cpu_ms) = forward(&sides[i], &batch, cfg, device);
            if round > 0 {
                times[i].push(ms);
                cpu_times[i].push(cpu_ms);
            }
            last[i] = Some(pass);
        }
        if let (Some(Some(with_pass)), Some(Some(reference))) = (last.get(1), last.get(2)) {
            identical &= same_output(with_pass, reference);
        }
    }
    drop(frozen);
    let mut last = last.into_iter().map(|p| p.expect("every model ran"));
    let (float_last, quantized_last) = (last.next().unwrap(), last.next().unwrap());
    let mut times = times.into_iter();
    let float_ms = times.next().unwrap();
    let quantized_ms = times.next().unwrap();
    let per_forward_ms = times.next().unwrap_or_default();
    let on_cpu = device == Device::Cpu;
    let mut cpu_times = cpu_times
        .into_iter()
        .map(|t| if on_cpu { t } else { Vec::new() });
    let float_cpu = cpu_times.next().unwrap();
    let quantized_cpu = cpu_times.next().unwrap();
    let per_forward_cpu = cpu_times.next().unwrap_or_default();
    let float_cpu_median = on_cpu.then(|| median(&mut float_cpu.clone()));
    let quantized_cpu_median = on_cpu.then(|| median(&mut quantized_cpu.clone()));
    let cpu_ratio = float_cpu_median
        .zip(quantized_cpu_median)
        .map(|(f, q)| q / f);
    let per_forward_cpu_ratio = (on_cpu && per_forward)
        .then(|| median(&mut per_forward_cpu.clone()) / float_cpu_median.unwrap_or(f64::NAN));
    let float_median = median(&mut float_ms.clone());
    let quantized_median = median(&mut quantized_ms.clone());
    let pass_median = median(&mut pass_ms.clone());
    let per_forward_median = per_forward.then(|| median(&mut per_forward_ms.clone()));
    let amortized = |images: usize| {
        let n = images as f64;
        (
            images,
            (pass_median + n * quantized_median) / (n * float_median),
        )
    };
    Ok(InferenceTiming {
        model: model_name(cfg),
        image: (height, width),
        bits,
        threads: tch::get_num_threads(),
        repeats,
        float_ms: float_median,
        quantized_ms: quantized_median,
        ratio: quantized_median / float_median,
        paired_ratio: paired_median(&quantized_ms, &float_ms),
        float_cpu_ms: float_cpu_median,
        quantized_cpu_ms: quantized_cpu_median,
        cpu_ratio,
        quantize_pass_ms: pass_median,
        quantized_layers,
        amortized_ratio: [amortized(1), amortized(10), amortized(100)],
        per_forward_ms: per_forward_median,
        per_forward_ratio: per_forward_median.map(|ms| ms / float_median),
        per_forward_identical: per_forward.then_some(identical),
        per_forward_cpu_ratio,
        float_forwards_ms: float_ms,
        quantized_forwards_ms: quantized_ms,
        quantize_passes_ms: pass_ms,
        per_forward_forwards_ms: per_forward_ms,
        float_forwards_cpu_ms: float_cpu,
        quantized_forwards_cpu_ms: quantized_cpu,
        per_forward_forwards_cpu_ms: per_forward_cpu,
        float_proposals: proposal_count(&float_last.rpn),
        quantized_proposals: proposal_count(&quantized_last.rpn),
        float_detections: detection_count(&float_last),
        quantized_detections: detection_count(&quantized_last),
        peak_rss_mib: peak_rss_mib(),
        c,
        float_first_conv: cfg.quant.float_first_conv,
        float_predictors: cfg.quant.float_predictors,
    })
}

impl InferenceTiming {
    /// Medians with min-max, the ratio, the pass, and the per-forward path when timed.
    pub fn summary(&self, device: Device) -> String {
        let spread = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{min:.1}-{max:.1}")
        };
        let mut out = format!(
            "inference, {} {}x{} on {:?}, {} thread(s): float {:.1} ms ({}), {}-bit {:.1} ms ({}), ratio {:.3}; quantization pass {:.1} ms ({}, {} layers, once per evaluation); medians of {}, min-max in parentheses\n",
            self.model,
            self.image.0,
            self.image.1,
            device,
            self.threads,
            self.float_ms,
            spread(&self.float_forwards_ms),
            self.bits,
            self.quantized_ms,
            spread(&self.quantized_forwards_ms),
            self.ratio,
            self.quantize_pass_ms,
            spread(&self.quantize_passes_ms),
            self.quantized_layers,
            self.repeats,
        );
        out += &format!("median of the rounds' ratios {:.3}", self.paired_ratio);
        if let (Some(f), Some(q), Some(r)) =
            (self.float_cpu_ms, self.quantized_cpu_ms, self.cpu_ratio)
        {
            out += &format!(
                "; CPU time float {f:.1} ms, {}-bit {q:.1} ms, ratio {r:.3}",
                self.bits
            );
        }
        out += "\n";
        if let (Some(ms), Some(ratio), Some(identical)) = (
            self.per_forward_ms,
            self.per_forward_ratio,
            self.per_forward_identical,
        ) {
            out += &format!(
                "quantizing on every forward instead: {ms:.1} ms ({}), ratio {ratio:.3}; identical detections: {identical}\n",
                spread(&self.per_forward_forwards_ms)
            );
        }
        out
    }
}
