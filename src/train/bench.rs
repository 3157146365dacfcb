//! Training-step benchmark: the median time of one SGD step (forward, backward, update) of
//! a model in float and quantized to b bits, measured alternately in one process so both
//! see the same machine load, and their ratio.
use crate::config::{Backbone, ExperimentConfig};
use crate::detect::faster_rcnn::{FasterRcnn, TrainingPass};
use crate::detect::image_list::{ImageBatch, ImageTarget};
use crate::nn::FlatParameters;
use crate::train::setup::build_model;
use crate::train::sgd::Sgd;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
    /// training steps, per pass, and the proposals each one scored: the RPN keeps its
    /// post_nms_top_n_test best-scored boxes without NMS, so models with different random
    /// weights score the same number.
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

/// Peak resident set size of this process in MiB (Linux reports KiB).
pub fn peak_rss_mib() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
        // SAFETY: initialized by the successful call.
        ok.then(|| unsafe { usage.assume_init() }.ru_maxrss as f64 / 1024.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A fixed random image with three boxes, so every step does the same work.
fn synthetic_batch(height: i64, width: i64, device: Device) -> (ImageBatch, Vec<ImageTarget>) {
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

fn model_name(cfg: &ExperimentConfig) -> String {
    match cfg.model.backbone {
        Backbone::Small => "small".into(),
        Backbone::Vgg16 => "vgg16".into(),
        Backbone::Resnet50 => "resnet50-c4".into(),
    }
}

/// The model, its variables (in flat buffers) and its optimizer.
struct BenchRun {
    _vs: tch::nn::VarStore,
    model: FasterRcnn,
    params: FlatParameters,
    sgd: Sgd,
}

impl BenchRun {
    /// One training step as the trainer runs it: quantization pass, forward, backward,
    /// SGD step.
    fn step(&mut self, batch: &ImageBatch, targets: &[ImageTarget], lr: f64) -> TrainingPass {
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
fn float_and_quantized(
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

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `repeats` training steps of `cfg`'s model in float and at `bits` (lbw, default
/// c), alternating the two, after one warm-up step each, at learning rate `lr`.
pub fn bench_train_step(
    cfg: &ExperimentConfig,
    bits: u32,
    height: i64,
    width: i64,
    repeats: usize,
    device: Device,
    lr: f64,
) -> Result<StepTiming> {
    let (batch, targets) = synthetic_batch(height, width, device);
    let (mut runs, runs_c) = float_and_quantized(cfg, bits, device)?;
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

/// Proposals the RPN passed on, over all images.
fn proposal_count(rpn: &crate::detect::rpn::RpnOutput) -> i64 {
    rpn.proposals.iter().map(|p| p.size()[0]).sum()
}

fn elapsed_ms<T>(device: Device, f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    sync(device);
    (out, start.elapsed().as_secs_f64() * 1e3)
}

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
    bits: u32,
    height: i64,
    width: i64,
    repeats: usize,
    device: Device,
    lr: f64,
) -> Result<StepBreakdown> {
    let (batch, targets) = synthetic_batch(height, width, device);
    let (mut runs, _) = float_and_quantized(cfg, bits, device)?;
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
        image: (height, width),
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

/// What `lbwnet bench detect` measured: the exported model against the training-time
/// model (quantize-on-forward, in evaluation mode) on the same test images, in one process.
#[derive(Debug, Clone, Serialize)]
pub struct DetectTiming {
    pub run: std::path::PathBuf,
    /// The model file timed; none when the checkpoint was exported to a temporary file.
    pub model_file: Option<std::path::PathBuf>,
    pub device: String,
    pub threads: i32,
    pub images: usize,
    pub repeats: usize,
    /// Median images/s of the training-time model.
    pub training_images_per_s: f64,
    /// Median images/s of the exported model.
    pub exported_images_per_s: f64,
    /// exported / training-time images/s.
    pub speedup: f64,
    /// Median ms to build the training-time model and read its checkpoint.
    pub training_load_ms: f64,
    /// Median ms to read, check and decode the model file and build the model.
    pub exported_load_ms: f64,
    /// The two models' detections agree exactly (boxes, scores, labels) on every image.
    pub identical_detections: bool,
    pub checkpoint_bytes: u64,
    pub model_file_bytes: u64,
    pub float32_bytes: u64,
    /// The sweep table's storage figure for the model.
    pub storage_bytes: u64,
}

/// Times `repeats` passes of both models over the first `images` test images of the run's
/// data set (decoded once, beforehand), alternating the models, after one warm-up pass
/// each. `model_file` is exported from the checkpoint when not given.
pub fn bench_detect(
    run_dir: &std::path::Path,
    checkpoint_path: Option<&std::path::Path>,
    model_file: Option<&std::path::Path>,
    images: usize,
    repeats: usize,
    device: Device,
) -> Result<DetectTiming> {
    use crate::data::loader::{load_sample, LoaderConfig};
    use crate::data::voc::VocDataset;
    use crate::deploy::{export_run, DeployedModel, ModelFile};
    use crate::train::checkpoint;
    use anyhow::{ensure, Context};

    ensure!(images >= 1, "--images must be at least 1");
    ensure!(repeats >= 1, "--repeats must be at least 1");
    let cfg = ExperimentConfig::load(&run_dir.join("config.yaml"), &[])
        .with_context(|| format!("{} is not a training run directory", run_dir.display()))?;
    let weights = checkpoint::resolve_weights(checkpoint_path.unwrap_or(run_dir))?;
    let tmp = tempfile::tempdir()?;
    let model_path = match model_file {
        Some(path) => path.to_path_buf(),
        None => {
            let path = tmp.path().join("model.lbw");
            export_run(run_dir, checkpoint_path, &path)?;
            path
        }
    };
    let file = ModelFile::read(&model_path)?;
    let classes = file.meta.classes.clone();

    let mut load_times = [Vec::new(), Vec::new()];
    let mut loaded = None;
    for _ in 0..3 {
        let start = Instant::now();
        let (vs, model) = build_model(&cfg, classes.len(), device, false)?;
        checkpoint::load_weights(&weights, &vs)?;
        load_times[0].push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let deployed = DeployedModel::load(&model_path, device, &[])?;
        load_times[1].push(start.elapsed().as_secs_f64() * 1e3);
        loaded = Some(((vs, model), deployed));
    }
    let ((_vs, training), deployed) = loaded.expect("loaded three times");

    cfg.check_data_path()?;
    crate::data::synthetic::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let dataset = VocDataset::open(&cfg.data.root, &cfg.data.test_split, Some(&classes))?;
    let loader_cfg = LoaderConfig::from_data_config(&cfg.data, false, 0);
    let count = images.min(dataset.len());
    ensure!(
        count > 0,
        "the test split of {} is empty",
        cfg.data.root.display()
    );
    let batches: Vec<ImageBatch> = (0..count)
        .map(|i| {
            let sample = load_sample(&dataset, i, false, &loader_cfg)?;
            Ok(ImageBatch::new(
                &[sample.image.to_device(device)],
                vec![sample.scale],
            ))
        })
        .collect::<Result<_>>()?;
    let models = [&training, &deployed.model];
    let pass = |model: &crate::detect::faster_rcnn::FasterRcnn| -> (f64, Vec<Tensor>) {
        let start = Instant::now();
        let mut outputs = Vec::with_capacity(batches.len());
        for batch in &batches {
            let dets = model.detect(batch, &cfg.eval).into_iter().next();
            if let Some(d) = dets {
                outputs.push(Tensor::cat(
                    &[
                        d.boxes,
                        d.scores.unsqueeze(1),
                        d.labels.to_kind(Kind::Float).unsqueeze(1),
                    ],
                    1,
                ));
            }
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        (start.elapsed().as_secs_f64(), outputs)
    };
    let mut rates = [Vec::new(), Vec::new()];
    let mut identical = true;
    for round in 0..=repeats {
        let mut outputs = Vec::new();
        for (i, model) in models.iter().enumerate() {
            let (seconds, dets) = pass(model);
            if round > 0 {
                rates[i].push(count as f64 / seconds);
            }
            outputs.push(dets);
        }
        identical &= outputs[0].len() == outputs[1].len()
            && outputs[0].iter().zip(&outputs[1]).all(|(a, b)| a.equal(b));
    }
    let training_rate = median(&mut rates[0]);
    let exported_rate = median(&mut rates[1]);
    Ok(DetectTiming {
        run: run_dir.to_path_buf(),
        model_file: model_file.map(|p| p.to_path_buf()),
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        images: count,
        repeats,
        training_images_per_s: training_rate,
        exported_images_per_s: exported_rate,
        speedup: exported_rate / training_rate,
        training_load_ms: median(&mut load_times[0]),
        exported_load_ms: median(&mut load_times[1]),
        identical_detections: identical,
        checkpoint_bytes: std::fs::metadata(&weights)?.len(),
        model_file_bytes: file.file_bytes,
        float32_bytes: 4 * file.meta.params,
        storage_bytes: file.meta.storage_bytes,
    })
}
