//! `lbwnet bench detect`: images/s of an exported model against the training-time model in
//! evaluation mode, load times, and the model file's size against the checkpoint; then
//! the exported model from decoded pixels (resize and normalization included) against the
//! same model exported as ONNX in onnxruntime, one thread and all threads.
use super::onnxruntime::{quantize_static, time_onnxruntime, OnnxruntimeTiming};
use super::{elapsed_ms, median};
use crate::config::{ExperimentConfig, SplitRole};
use crate::data::dataset::Dataset;
use crate::data::loader::{load_sample, LoaderConfig};
use crate::data::transforms::decode_rgb_annotated;
use crate::deploy::calibrate::{calibrate_file, CalibrationRule};
use crate::deploy::onnx::{export_onnx, export_onnx_int8, STAGES};
use crate::deploy::{export_run, DeployedModel, ModelFile};
use crate::detect::faster_rcnn::FasterRcnn;
use crate::detect::image_list::ImageBatch;
use crate::train::checkpoint;
use crate::train::setup::build_model;
use anyhow::{ensure, Context, Result};
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What to time: the run (and a checkpoint of it instead of its latest), the model file
/// (default: the checkpoint exported to a temporary file), test images per pass, timed
/// passes per model, the device.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    pub run: PathBuf,
    pub checkpoint: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub images: usize,
    pub repeats: usize,
    pub device: Device,
    /// The Python with onnxruntime to time the ONNX export in; none: not timed.
    pub onnxruntime_python: Option<PathBuf>,
    /// Also time the int8 export (and onnxruntime's `quantize_static` of the float one)
    /// against the float export.
    pub int8: Option<Int8BenchOptions>,
}

#[derive(Debug, Clone)]
pub struct Int8BenchOptions {
    /// Training images that calibrate both int8 models.
    pub calibration_images: usize,
    /// The int8 export's calibration rule (onnxruntime's quantizer uses its MinMax).
    pub calibration_rule: CalibrationRule,
    /// Time onnxruntime's `quantize_static` of the float export too.
    pub quantize_static: bool,
}

/// One ONNX model of the int8 comparison, timed whole and up to the trunk's features.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxVariant {
    /// `float` (`export --onnx`), `int8` (`export --onnx --int8`) or `quantize_static`
    /// (onnxruntime's quantizer on the float export).
    pub variant: String,
    pub file_bytes: u64,
    /// One thread, then onnxruntime's default.
    pub whole: Vec<OnnxruntimeTiming>,
    /// The same, up to the `features` value (the backbone, preprocessing included).
    pub backbone: Vec<OnnxruntimeTiming>,
}

/// The int8 models against the float export.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Comparison {
    pub calibration_images: usize,
    pub variants: Vec<OnnxVariant>,
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
    /// Median images/s of the exported model from decoded pixels (resize and
    /// normalization included, the work the ONNX graph does), with one thread and with
    /// one per hardware thread.
    pub exported_from_pixels_images_per_s: [f64; 2],
    /// The ONNX export's size, when it was timed.
    pub onnx_file_bytes: Option<u64>,
    /// onnxruntime with one thread and with its default (all physical cores).
    pub onnxruntime: Vec<OnnxruntimeTiming>,
    /// Why onnxruntime was not timed, when it was not.
    pub onnxruntime_skipped: Option<String>,
    /// With `--int8`: the int8 exports against the float one.
    pub int8: Option<Int8Comparison>,
    /// Hardware threads of the machine.
    pub machine_threads: usize,
}

/// Times `repeats` passes of both models over the first `images` test images of the run's
/// data set (decoded once, beforehand), alternating the models, after one warm-up pass
/// each.
pub fn bench_detect(options: &DetectOptions) -> Result<DetectTiming> {
    ensure!(options.images >= 1, "--images must be at least 1");
    ensure!(options.repeats >= 1, "--repeats must be at least 1");
    let run_dir = options.run.as_path();
    let cfg = ExperimentConfig::load(&run_dir.join("config.yaml"), &[])
        .with_context(|| format!("{} is not a training run directory", run_dir.display()))?;
    let weights = checkpoint::resolve_weights(options.checkpoint.as_deref().unwrap_or(run_dir))?;
    let tmp = tempfile::tempdir()?;
    let model_path = model_file_for(options, tmp.path())?;
    let file = ModelFile::read(&model_path)?;
    let classes = file.meta.classes.clone();
    let loaded = time_loads(&cfg, &weights, &model_path, classes.len(), options.device)?;
    let (batches, pictures) = test_images(&cfg, &classes, options.images, options.device)?;
    let models = [&loaded.training, &loaded.deployed.model];
    let (mut rates, identical) = race(models, &batches, &cfg, options);
    let [mut training_loads, mut exported_loads] = loaded.load_ms;
    let training_rate = median(&mut rates[0]);
    let exported_rate = median(&mut rates[1]);
    let machine_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = tch::get_num_threads();
    let mut from_pixels = [0.0; 2];
    for (rate, n) in from_pixels.iter_mut().zip([1, machine_threads]) {
        tch::set_num_threads(n as i32);
        *rate = pixel_rate(&loaded.deployed, &pictures, options.repeats)?;
    }
    tch::set_num_threads(threads);
    let (onnx_file_bytes, onnxruntime, int8, onnxruntime_skipped) =
        match &options.onnxruntime_python {
            None => (None, Vec::new(), None, Some("--no-onnxruntime".to_string())),
            Some(python) => match time_onnx(&file, &cfg, &pictures, python, options, tmp.path()) {
                Ok((float, int8)) => (Some(float.file_bytes), float.whole, int8, None),
                Err(e) => {
                    tracing::warn!("onnxruntime not timed: {e:#}");
                    (None, Vec::new(), None, Some(format!("{e:#}")))
                }
            },
        };
    Ok(DetectTiming {
        run: run_dir.to_path_buf(),
        model_file: options.model.clone(),
        device: format!("{:?}", options.device),
        threads,
        images: batches.len(),
        repeats: options.repeats,
        training_images_per_s: training_rate,
        exported_images_per_s: exported_rate,
        speedup: exported_rate / training_rate,
        training_load_ms: median(&mut training_loads),
        exported_load_ms: median(&mut exported_loads),
        identical_detections: identical,
        checkpoint_bytes: std::fs::metadata(&weights)?.len(),
        model_file_bytes: file.file_bytes,
        float32_bytes: 4 * file.meta.params,
        storage_bytes: file.meta.storage_bytes,
        exported_from_pixels_images_per_s: from_pixels,
        onnx_file_bytes,
        onnxruntime,
        onnxruntime_skipped,
        int8,
        machine_threads,
    })
}

/// Median images/s of `model` on decoded images: `repeats` passes after a warm-up.
fn pixel_rate(model: &DeployedModel, pictures: &[RgbImage], repeats: usize) -> Result<f64> {
    let mut rates = Vec::with_capacity(repeats);
    for round in 0..=repeats {
        let (done, ms) = elapsed_ms(model.device, || {
            pictures
                .iter()
                .try_for_each(|p| model.detect_image(p, &model.config.eval).map(drop))
        });
        done?;
        if round > 0 {
            rates.push(pictures.len() as f64 / (ms / 1e3));
        }
    }
    Ok(median(&mut rates))
}

/// The model file exported as ONNX into `tmp` and timed in onnxruntime on `pictures`
/// with one thread and with all; with `options.int8`, the int8 exports too, and every
/// model (the float one included) timed up to its features as well.
fn time_onnx(
    file: &ModelFile,
    cfg: &ExperimentConfig,
    pictures: &[RgbImage],
    python: &Path,
    options: &DetectOptions,
    tmp: &Path,
) -> Result<(OnnxVariant, Option<Int8Comparison>)> {
    let images = tmp.join("images.npz");
    let tensors: Vec<(String, Tensor)> = pictures
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (w, h) = p.dimensions();
            let t = Tensor::from_slice(p.as_raw()).view([i64::from(h), i64::from(w), 3]);
            (format!("image{i:05}"), t)
        })
        .collect();
    Tensor::write_npz(&tensors, &images).context("writing the test images for onnxruntime")?;
    let onnx = tmp.join("model.onnx");
    export_onnx(file, &file.config(&[])?, &onnx)?;
    let mut models = vec![("float", onnx.clone())];
    let mut calibration_images = 0;
    if let Some(int8) = &options.int8 {
        let int8_onnx = tmp.join("model-int8.onnx");
        let calibration =
            calibrate_file(file, int8.calibration_images, None, int8.calibration_rule)?;
        calibration_images = calibration.images;
        export_onnx_int8(file, &file.config(&[])?, &calibration, &int8_onnx)?;
        models.push(("int8", int8_onnx));
        if int8.quantize_static {
            let generic = tmp.join("model-quantize-static.onnx");
            let count = int8.calibration_images;
            quantize_static(python, &onnx, &generic, &cfg.data.root, count, tmp)?;
            models.push(("quantize_static", generic));
        }
    }
    // All models in one run per thread count and output, pass by pass in turn.
    let paths: Vec<&Path> = models.iter().map(|(_, p)| p.as_path()).collect();
    let time = |output: Option<&str>| -> Result<Vec<Vec<OnnxruntimeTiming>>> {
        let by_threads = [1, 0]
            .into_iter()
            .map(|threads| {
                time_onnxruntime(
                    python,
                    &paths,
                    &images,
                    threads,
                    options.repeats,
                    output,
                    tmp,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // [threads][model] -> [model][threads]
        Ok((0..paths.len())
            .map(|m| by_threads.iter().map(|t| t[m].clone()).collect())
            .collect())
    };
    let whole = time(None)?;
    let backbone = if options.int8.is_some() {
        time(Some(STAGES[1]))?
    } else {
        vec![Vec::new(); paths.len()]
    };
    let variants = models
        .iter()
        .zip(whole)
        .zip(backbone)
        .map(|(((name, path), whole), backbone)| {
            Ok(OnnxVariant {
                variant: name.to_string(),
                file_bytes: std::fs::metadata(path)?.len(),
                whole,
                backbone,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let float = variants[0].clone();
    let int8 = options.int8.as_ref().map(|_| Int8Comparison {
        calibration_images,
        variants,
    });
    Ok((float, int8))
}

/// The model file to time: the given one, or the checkpoint exported into `tmp`.
fn model_file_for(options: &DetectOptions, tmp: &Path) -> Result<PathBuf> {
    match &options.model {
        Some(path) => Ok(path.clone()),
        None => {
            let path = tmp.join("model.lbw");
            export_run(&options.run, options.checkpoint.as_deref(), &path)?;
            Ok(path)
        }
    }
}

/// Both models, loaded three times each, with the load times in ms (training-time model
/// and checkpoint; model file).
struct LoadedModels {
    training: FasterRcnn,
    /// Keeps the training-time model's variables alive.
    _vs: tch::nn::VarStore,
    deployed: DeployedModel,
    load_ms: [Vec<f64>; 2],
}

fn time_loads(
    cfg: &ExperimentConfig,
    weights: &Path,
    model_path: &Path,
    classes: usize,
    device: Device,
) -> Result<LoadedModels> {
    let mut load_ms = [Vec::new(), Vec::new()];
    let mut loaded = None;
    for _ in 0..3 {
        let start = Instant::now();
        let (vs, model) = build_model(cfg, classes, device, false)?;
        checkpoint::load_weights(weights, &vs)?;
        load_ms[0].push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let deployed = DeployedModel::load(model_path, device, &[])?;
        load_ms[1].push(start.elapsed().as_secs_f64() * 1e3);
        loaded = Some((vs, model, deployed));
    }
    let (vs, training, deployed) = loaded.expect("loaded three times");
    Ok(LoadedModels {
        training,
        _vs: vs,
        deployed,
        load_ms,
    })
}

/// The first `images` test images of the run's data set: as network inputs on `device`
/// (decoded, resized and normalized beforehand), and decoded only.
fn test_images(
    cfg: &ExperimentConfig,
    classes: &[String],
    images: usize,
    device: Device,
) -> Result<(Vec<ImageBatch>, Vec<RgbImage>)> {
    cfg.check_data_path()?;
    crate::data::synthetic::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let dataset = Dataset::from_config(&cfg.data, SplitRole::Test, Some(classes))?;
    let loader_cfg = LoaderConfig::from_data_config(&cfg.data, false, 0);
    let count = images.min(dataset.len());
    ensure!(
        count > 0,
        "the test split of {} is empty",
        cfg.data.root.display()
    );
    (0..count)
        .map(|i| {
            let sample = load_sample(&dataset, i, false, &loader_cfg)?;
            let batch = ImageBatch::new(&[sample.image.to_device(device)], vec![sample.scale]);
            // The frame the loader used (the annotation's), so both models see one image.
            let annotation = &dataset.annotations[i];
            let (width, height) = (annotation.width, annotation.height);
            Ok((
                batch,
                decode_rgb_annotated(&dataset.image_path(i), width, height)?,
            ))
        })
        .collect::<Result<Vec<_>>>()
        .map(|pairs| pairs.into_iter().unzip())
}

/// One pass of `model` over `batches`: seconds, and per image its detections as one
/// `[N, 6]` tensor (box, score, label).
fn timed_pass(
    model: &FasterRcnn,
    batches: &[ImageBatch],
    cfg: &ExperimentConfig,
    device: Device,
) -> (f64, Vec<Tensor>) {
    let (outputs, ms) = elapsed_ms(device, || {
        let mut outputs = Vec::with_capacity(batches.len());
        for batch in batches {
            if let Some(d) = model.detect(batch, &cfg.eval).into_iter().next() {
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
        outputs
    });
    (ms / 1e3, outputs)
}

/// Alternating timed passes of the two models (after one warm-up round): images/s per
/// model, and whether their detections were identical in every round.
fn race(
    models: [&FasterRcnn; 2],
    batches: &[ImageBatch],
    cfg: &ExperimentConfig,
    options: &DetectOptions,
) -> ([Vec<f64>; 2], bool) {
    let mut rates = [Vec::new(), Vec::new()];
    let mut identical = true;
    for round in 0..=options.repeats {
        let mut outputs = Vec::new();
        for (i, model) in models.iter().enumerate() {
            let (seconds, dets) = timed_pass(model, batches, cfg, options.device);
            if round > 0 {
                rates[i].push(batches.len() as f64 / seconds);
            }
            outputs.push(dets);
        }
        identical &= outputs[0].len() == outputs[1].len()
            && outputs[0].iter().zip(&outputs[1]).all(|(a, b)| a.equal(b));
    }
    (rates, identical)
}

impl DetectTiming {
    /// A Markdown table of both models (load ms, images/s, file size) and the ratios.
    pub fn table(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let mut out = format!(
            "detect on {} test images, {} ({} thread(s)), medians of {} passes:\n\n",
            self.images, self.device, self.threads, self.repeats
        );
        out += "| model | load ms | images/s | file |\n|:--|--:|--:|--:|\n";
        out += &format!(
            "| training-time (checkpoint, quantize on forward) | {:.1} | {:.2} | {:.2} MB |\n",
            self.training_load_ms,
            self.training_images_per_s,
            mb(self.checkpoint_bytes)
        );
        out += &format!(
            "| exported (packed codes, decoded at load) | {:.1} | {:.2} | {:.2} MB |\n",
            self.exported_load_ms,
            self.exported_images_per_s,
            mb(self.model_file_bytes)
        );
        out + &format!(
            "\nexported / training-time: {:.3}x images/s; file {:.2}x smaller than the checkpoint, {:.2}x smaller than float32 weights ({:.2} MB); the table's storage figure {:.2} MB (file / figure {:.4}); identical detections: {}\n",
            self.speedup,
            self.checkpoint_bytes as f64 / self.model_file_bytes as f64,
            self.float32_bytes as f64 / self.model_file_bytes as f64,
            mb(self.float32_bytes),
            mb(self.storage_bytes),
            self.model_file_bytes as f64 / self.storage_bytes as f64,
            if self.identical_detections { "yes" } else { "no" }
        ) + &self.onnxruntime_table()
    }

    /// The exported model from decoded pixels next to onnxruntime's runs of its ONNX
    /// export (or why those did not run).
    fn onnxruntime_table(&self) -> String {
        let mut out = format!(
            "\nfrom decoded pixels (resize and normalization included), medians of {} passes:\n\n| runtime | threads | load ms | images/s | file |\n|:--|--:|--:|--:|--:|\n",
            self.repeats,
        );
        for (rate, threads) in self
            .exported_from_pixels_images_per_s
            .iter()
            .zip([1, self.machine_threads])
        {
            out += &format!(
                "| lbwnet (.lbw) | {threads} | {:.1} | {rate:.2} | {:.2} MB |\n",
                self.exported_load_ms,
                self.model_file_bytes as f64 / 1e6
            );
        }
        for t in &self.onnxruntime {
            let threads = if t.threads == 0 {
                "default (1 per core)".to_string()
            } else {
                t.threads.to_string()
            };
            out += &format!(
                "| onnxruntime {} (.onnx) | {threads} | {:.1} | {:.2} | {:.2} MB |\n",
                t.onnxruntime,
                t.load_ms,
                t.images_per_s,
                self.onnx_file_bytes.unwrap_or(0) as f64 / 1e6
            );
        }
        if let Some(reason) = &self.onnxruntime_skipped {
            out += &format!("\nonnxruntime not timed: {reason}\n");
        }
        if let Some(int8) = &self.int8 {
            out += &int8.table();
        }
        out
    }
}

impl Int8Comparison {
    /// images/s of every model, whole and backbone, and the ratios to the float export's.
    fn table(&self) -> String {
        let mut out = format!(
            "\nint8 against the float export (calibrated on {} training images), images/s:\n\n| model | file | threads | whole | x float | backbone | x float |\n|:--|--:|--:|--:|--:|--:|--:|\n",
            self.calibration_images
        );
        let float = &self.variants[0];
        for v in &self.variants {
            for (i, whole) in v.whole.iter().enumerate() {
                let threads = if whole.threads == 0 {
                    "default".to_string()
                } else {
                    whole.threads.to_string()
                };
                let ratio = |mine: &[OnnxruntimeTiming], float: &[OnnxruntimeTiming]| match (
                    mine.get(i),
                    float.get(i),
                ) {
                    (Some(m), Some(f)) => (
                        format!("{:.2}", m.images_per_s),
                        format!("{:.2}", m.images_per_s / f.images_per_s),
                    ),
                    _ => ("-".into(), "-".into()),
                };
                let (whole_rate, whole_ratio) = ratio(&v.whole, &float.whole);
                let (backbone_rate, backbone_ratio) = ratio(&v.backbone, &float.backbone);
                out += &format!(
                    "| {} | {:.2} MB | {threads} | {whole_rate} | {whole_ratio} | {backbone_rate} | {backbone_ratio} |\n",
                    v.variant,
                    v.file_bytes as f64 / 1e6
                );
            }
        }
        out
    }
}
