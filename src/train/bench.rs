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
