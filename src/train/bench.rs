//! Training-step benchmark: the median time of one SGD step (forward, backward, update) of
//! a model in float and quantized to b bits, measured alternately in one process so both
//! see the same machine load, and their ratio.
use crate::config::{Backbone, ExperimentConfig};
use crate::detect::image_list::{ImageBatch, ImageTarget};
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
    pub float_ms: f64,
    pub quantized_ms: f64,
    /// quantized / float.
    pub ratio: f64,
    pub repeats: usize,
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

/// Times `repeats` training steps of `cfg`'s model in float and at `bits` (lbw, default
/// c), alternating the two, after one warm-up step each.
pub fn bench_train_step(
    cfg: &ExperimentConfig,
    bits: u32,
    height: i64,
    width: i64,
    repeats: usize,
    device: Device,
) -> Result<StepTiming> {
    let num_classes = 20;
    let mut float_cfg = cfg.clone();
    float_cfg.quant.bits = crate::quant::FLOAT_BITS;
    let mut quant_cfg = cfg.clone();
    quant_cfg.quant.bits = bits;
    quant_cfg.quant.method = crate::quant::Method::Lbw;
    quant_cfg.quant.c = None;
    let (batch, targets) = synthetic_batch(height, width, device);
    let mut runs = Vec::new();
    for c in [&float_cfg, &quant_cfg] {
        let (vs, model) = build_model(c, num_classes, device, true)?;
        let sgd = Sgd::new(vs.variables(), 0.9, 1e-4);
        runs.push((vs, model, sgd));
    }
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..=repeats {
        for (i, (_, model, sgd)) in runs.iter_mut().enumerate() {
            tch::manual_seed(round as i64);
            let start = Instant::now();
            let loss = model.losses(&batch, &targets).total();
            sgd.zero_grad();
            loss.backward();
            sgd.step(1e-4);
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            if round > 0 {
                times[i].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let float_ms = median(&mut times[0]);
    let quantized_ms = median(&mut times[1]);
    Ok(StepTiming {
        model: match cfg.model.backbone {
            Backbone::Small => "small".into(),
            Backbone::Vgg16 => "vgg16".into(),
            Backbone::Resnet50 => "resnet50-c4".into(),
        },
        image: (height, width),
        bits,
        float_ms,
        quantized_ms,
        ratio: quantized_ms / float_ms,
        repeats,
    })
}
