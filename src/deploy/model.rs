//! Inference from a packed model file: the weights are decoded once at load
//! (`alpha * level(code)`, exactly the Q(W) the training-time forward computes) into a
//! Faster R-CNN built in float, so the forward pass never quantizes.
use super::format::{ModelFile, ModelMeta};
use crate::config::{EvalConfig, ExperimentConfig};
use crate::data::transforms::{resize_normalize_into, resize_scale, scaled_size};
use crate::detect::faster_rcnn::{FasterRcnn, InferencePass};
use crate::detect::image_list::ImageBatch;
use crate::quant::{unpack, FLOAT_BITS};
use anyhow::{anyhow, bail, ensure, Context, Result};
use image::RgbImage;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// One detection in the original image's pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in the original image's continuous pixel coordinates (the
    /// top-left corner of the top-left pixel is 0, 0; the bottom-right corner of the image
    /// is width, height), as torchvision returns them. A comp4 / VOC annotation box of
    /// the same object is these plus 1.
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
}

/// A model file loaded for inference.
pub struct DeployedModel {
    pub path: PathBuf,
    pub meta: ModelMeta,
    /// The experiment config (with the caller's overrides).
    pub config: ExperimentConfig,
    pub file_bytes: u64,
    pub device: Device,
    /// The variables behind `model` (kept alive with it).
    pub vs: VarStore,
    /// The detector, built in float and holding the decoded weights.
    pub model: FasterRcnn,
}

impl DeployedModel {
    /// Reads, checks and decodes `path` onto `device`. `overrides` are `--set` values for
    /// the stored config (data and eval settings; the model's shape is the file's).
    pub fn load(path: &Path, device: Device, overrides: &[String]) -> Result<Self> {
        let file = ModelFile::read(path)?;
        Self::from_file(&file, device, overrides)
            .with_context(|| format!("model file {}", path.display()))
    }

    /// Builds the float model and decodes `file`'s weights into it.
    pub fn from_file(file: &ModelFile, device: Device, overrides: &[String]) -> Result<Self> {
        let config = file.config(overrides)?;
        if !overrides.is_empty() {
            file.check_architecture(&config)?;
        }
        let meta = file.meta.clone();
        ensure!(!meta.classes.is_empty(), "the class list is empty");
        // The same network with every layer in float: the weights are already Q(W).
        let mut float_cfg = config.clone();
        float_cfg.quant.bits = FLOAT_BITS;
        float_cfg.model.backbone_weights = None;
        float_cfg.train.init_from = None;
        let mut vs = VarStore::new(device);
        // A stored config can ask for layers too large to allocate: libtorch's refusal is an
        // error here, not a panic.
        let model = catch_panic(|| FasterRcnn::new(&vs.root(), &float_cfg, meta.classes.len()))
            .context("building the model its config describes")?;
        let weights = decode_weights(file)?;
        let mut variables = vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, value) in &weights {
                let mut var = variables.remove(name).with_context(|| {
                    format!("tensor {name} is not a variable of the model its config describes")
                })?;
                ensure!(
                    var.size() == value.size(),
                    "tensor {name} has shape {:?}, the model expects {:?}",
                    value.size(),
                    var.size()
                );
                var.copy_(value);
            }
            Ok(())
        })?;
        if let Some(name) = variables.keys().next() {
            bail!(
                "no weights for model variable {name} ({} missing)",
                variables.len()
            );
        }
        vs.freeze();
        Ok(DeployedModel {
            path: file.path.clone(),
            meta,
            config,
            file_bytes: file.file_bytes,
            device,
            vs,
            model,
        })
    }

    /// The network's input for `image`: normalized `[3, h, w]` pixels on the model's
    /// device, resized as the data loader resizes, and the scale (resized / original).
    pub fn network_input(&self, image: &RgbImage) -> Result<(Tensor, f64)> {
        let (width, height) = image.dimensions();
        ensure!(
            width > 0 && height > 0,
            "the image is empty ({width}x{height})"
        );
        let input = self.meta.input;
        let scale = resize_scale(width, height, input.min_size, input.max_size);
        let (new_width, new_height) = scaled_size(width, height, scale);
        let mut pixels = vec![0f32; 3 * new_width as usize * new_height as usize];
        resize_normalize_into(
            image,
            new_width,
            new_height,
            false,
            input.normalization,
            &mut pixels,
        );
        let tensor = catch_panic(|| {
            Ok(Tensor::from_slice(&pixels)
                .view([3, i64::from(new_height), i64::from(new_width)])
                .to_device(self.device))
        })?;
        Ok((tensor, scale))
    }

    /// The whole test-time pass on one image, intermediates included (boxes in the
    /// network input's pixels), and the scale from the image to the network input.
    pub fn inference_pass(
        &self,
        image: &RgbImage,
        eval: &EvalConfig,
    ) -> Result<(InferencePass, f64)> {
        let (tensor, scale) = self.network_input(image)?;
        let batch = ImageBatch::new(&[tensor], vec![scale]);
        let pass = catch_panic(|| Ok(self.model.inference_pass(&batch, eval)))?;
        Ok((pass, scale))
    }

    /// Detections on one decoded image, in its own pixels, with scores above
    /// `eval.score_thresh` (NMS and the per-image cap as `eval` says).
    pub fn detect_image(&self, image: &RgbImage, eval: &EvalConfig) -> Result<Vec<Detection>> {
        let (width, height) = image.dimensions();
        let (pass, scale) = self.inference_pass(image, eval)?;
        let (boxes, scores, labels) = catch_panic(|| {
            let dets = pass
                .detections
                .into_iter()
                .next()
                .context("the detector returned no image")?;
            Ok((
                Vec::<f32>::try_from(dets.boxes.to_device(Device::Cpu).flatten(0, -1))?,
                Vec::<f32>::try_from(dets.scores.to_device(Device::Cpu))?,
                Vec::<i64>::try_from(dets.labels.to_device(Device::Cpu).to_kind(Kind::Int64))?,
            ))
        })?;
        let to_image = |v: f32, limit: u32| {
            let v = (f64::from(v) / scale).clamp(0.0, f64::from(limit));
            (v * 100.0).round() / 100.0
        };
        boxes
            .chunks_exact(4)
            .zip(scores)
            .zip(labels)
            .map(|((b, score), label)| {
                let class = usize::try_from(label - 1)
                    .ok()
                    .and_then(|i| self.meta.classes.get(i))
                    .with_context(|| format!("label {label} outside the class list"))?;
                Ok(Detection {
                    class: class.clone(),
                    score,
                    bbox: [
                        to_image(b[0], width),
                        to_image(b[1], height),
                        to_image(b[2], width),
                        to_image(b[3], height),
                    ],
                })
            })
            .collect()
    }
}

/// Every tensor of the file as the model's float32 value: quantized layers decoded to
/// `alpha * level(code)`, the rest as stored.
pub fn decode_weights(file: &ModelFile) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut packed_names = std::collections::HashSet::new();
    for layer in &file.meta.layers {
        let packed = file.packed(layer)?;
        let q = unpack(&packed).with_context(|| format!("decoding layer {}", layer.name))?;
        out.insert(layer.name.clone(), q.dequantize());
        packed_names.insert(format!("{}{}", layer.name, super::format::CODES_SUFFIX));
        packed_names.insert(format!("{}{}", layer.name, super::format::ALPHA_SUFFIX));
    }
    for (name, tensor) in &file.tensors {
        if packed_names.contains(name) {
            continue;
        }
        let values = tensor.to_f32().with_context(|| format!("tensor {name}"))?;
        let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
        ensure!(
            out.insert(name.clone(), Tensor::from_slice(&values).reshape(&shape))
                .is_none(),
            "tensor {name} is stored twice"
        );
    }
    Ok(out)
}

/// Runs `f`, turning a libtorch error (which tch raises as a panic) into an error. The
/// panic's message is kept off stderr for this thread; other threads' panics still report.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    type Hook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send;
    let previous: std::sync::Arc<Hook> = std::sync::Arc::from(std::panic::take_hook());
    let this_thread = std::thread::current().id();
    let others = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != this_thread {
            others(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| previous(info)));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            let first = message.lines().next().unwrap_or_default().to_string();
            Err(anyhow!("the detector failed: {first}"))
        }
    }
}
