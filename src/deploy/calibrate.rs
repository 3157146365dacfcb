//! Activation ranges for the int8 ONNX export (`export --onnx --int8`): the detector run
//! layer by layer in float, with the model file's decoded weights, on calibration images,
//! recording the smallest and largest value at every point where the int8 graph
//! quantizes an activation, then a range per point by a [`CalibrationRule`]. With the LBW
//! weights exact, the only approximation is the activations' rounding to 255 steps of
//! that range (and their saturation outside it).
use super::model::catch_panic;
use super::{DeployedModel, ModelFile};
use crate::config::{ExperimentConfig, Pooler, SplitRole};
use crate::data::dataset::Dataset;
use crate::data::transforms::decode_rgb_annotated;
use crate::detect::architecture::{Architecture, Layer, Weighted};
use crate::detect::{roi_align::roi_align, roi_pool::roi_pool};
use anyhow::{ensure, Context, Result};
use image::RgbImage;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The smallest and largest value seen at one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// Ranges by point: `<layer>.input` (a conv / fc layer's input), `<layer>.output` (its
/// output, after the frozen BatchNorm that follows it when one does, before any ReLU)
/// and `<block>.sum` (a residual block's output, after its ReLU; the block is named by
/// its first layer).
pub type Ranges = BTreeMap<String, Range>;

pub fn input_point(weight: &Weighted) -> String {
    format!("{}.input", weight.name)
}

pub fn output_point(weight: &Weighted) -> String {
    format!("{}.output", weight.name)
}

/// The point of a residual block's output.
pub fn sum_point(body: &[Layer]) -> String {
    let first = body.iter().find_map(|layer| match layer {
        Layer::Conv { weight, .. } | Layer::Linear(weight) => Some(weight.name.as_str()),
        _ => None,
    });
    format!("{}.sum", first.unwrap_or("residual"))
}

/// What the int8 export's activation scales come from.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Calibration images used.
    pub images: usize,
    pub rule: CalibrationRule,
    pub ranges: Ranges,
}

/// What the int8 graph's metadata says of its calibration.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSummary {
    pub images: usize,
    pub rule: CalibrationRule,
    pub points: usize,
}

impl Calibration {
    pub fn summary(&self) -> CalibrationSummary {
        CalibrationSummary {
            images: self.images,
            rule: self.rule,
            points: self.ranges.len(),
        }
    }
}

/// How the calibration images' values at a point become its range (its uint8 scale
/// covers the range, with zero point 0 where nothing is negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationRule {
    /// The smallest and largest value over all images.
    MinMax,
    /// The mean over the images of each image's smallest and largest value (rarer
    /// extremes saturate; finer steps for the rest).
    MeanMinMax,
}

/// Calibrates `file`'s model on `count` images of its training split (its config's data
/// set, or the one at `data_root`), on the CPU.
pub fn calibrate_file(
    file: &ModelFile,
    count: usize,
    data_root: Option<&Path>,
    rule: CalibrationRule,
) -> Result<Calibration> {
    let model = DeployedModel::from_file(file, Device::Cpu, &[])?;
    let arch = Architecture::of(&model.config, model.meta.classes.len())?;
    let mut data_cfg = model.config.clone();
    if let Some(root) = data_root {
        data_cfg.data.root = root.to_path_buf();
    }
    let images = calibration_images(&data_cfg, &model.meta.classes, count)?;
    let ranges = calibrate(&model, &arch, &images, rule)?;
    Ok(Calibration {
        images: images.len(),
        rule,
        ranges,
    })
}

/// `count` training images of `cfg`'s data set, evenly spaced over the split (all of them
/// when it has fewer), decoded in the frame their annotations give.
pub fn calibration_images(
    cfg: &ExperimentConfig,
    classes: &[String],
    count: usize,
) -> Result<Vec<RgbImage>> {
    ensure!(count >= 1, "--calibration-images must be at least 1");
    cfg.check_data_path()?;
    crate::data::synthetic::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let dataset = Dataset::from_config(&cfg.data, SplitRole::Train, Some(classes))
        .context("the calibration images are the model's training split")?;
    ensure!(
        !dataset.is_empty(),
        "the training split of {} is empty: no calibration images",
        cfg.data.root.display()
    );
    let count = count.min(dataset.len());
    (0..count)
        .map(|k| {
            let i = k * dataset.len() / count;
            let annotation = &dataset.annotations[i];
            decode_rgb_annotated(&dataset.image_path(i), annotation.width, annotation.height)
        })
        .collect()
}

/// The ranges of every quantization point of `arch` over `images`, with `model`'s weights
/// (the proposals the RoI head sees are the model's own).
pub fn calibrate(
    model: &DeployedModel,
    arch: &Architecture,
    images: &[RgbImage],
    rule: CalibrationRule,
) -> Result<Ranges> {
    ensure!(!images.is_empty(), "no calibration images");
    let variables = model.vs.variables();
    let mut recorder = Recorder {
        variables: &variables,
        ranges: Ranges::new(),
    };
    let cfg = &model.config;
    // Per point: the sums of the per-image minima and maxima, and the images that reached it.
    let mut totals: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    let mut overall = Ranges::new();
    for image in images {
        let (pass, _) = model.inference_pass(image, &cfg.eval)?;
        let proposals = pass
            .rpn
            .proposals
            .first()
            .context("the detector returned no image")?;
        let (input, _) = model.network_input(image)?;
        catch_panic(|| tch::no_grad(|| recorder.image(arch, cfg, &input.unsqueeze(0), proposals)))?;
        for (point, range) in std::mem::take(&mut recorder.ranges) {
            let total = totals.entry(point.clone()).or_insert((0.0, 0.0, 0));
            total.0 += f64::from(range.min);
            total.1 += f64::from(range.max);
            total.2 += 1;
            merge(&mut overall, point, range);
        }
    }
    Ok(match rule {
        CalibrationRule::MinMax => overall,
        CalibrationRule::MeanMinMax => totals
            .into_iter()
            .map(|(point, (min, max, n))| {
                let range = Range {
                    min: (min / n as f64) as f32,
                    max: (max / n as f64) as f32,
                };
                (point, range)
            })
            .collect(),
    })
}

/// Widens `point`'s range in `ranges` to cover `range`.
fn merge(ranges: &mut Ranges, point: String, range: Range) {
    ranges
        .entry(point)
        .and_modify(|r| {
            r.min = r.min.min(range.min);
            r.max = r.max.max(range.max);
        })
        .or_insert(range);
}

/// The float interpreter of [`Architecture`] that records the ranges.
struct Recorder<'a> {
    variables: &'a HashMap<String, Tensor>,
    ranges: Ranges,
}

impl Recorder<'_> {
    fn image(
        &mut self,
        arch: &Architecture,
        cfg: &ExperimentConfig,
        input: &Tensor,
        proposals: &Tensor,
    ) -> Result<()> {
        let features = self.run(&arch.trunk, input.shallow_clone())?;
        let hidden = self.run(
            std::slice::from_ref(&arch.rpn_conv),
            features.shallow_clone(),
        )?;
        let hidden = hidden.relu();
        self.record_inputs(&[&arch.rpn_objectness, &arch.rpn_deltas], &hidden);
        if proposals.size()[0] == 0 {
            return Ok(());
        }
        // All in image 0: `[K, 5]` rows of (batch index, box).
        let proposals = Tensor::cat(
            &[
                proposals.zeros_like().narrow(1, 0, 1),
                proposals.shallow_clone(),
            ],
            1,
        );
        let proposals = &proposals;
        let roi = &cfg.model.roi;
        let size = (arch.pool_size, arch.pool_size);
        let scale = 1.0 / cfg.model.feature_stride as f64;
        let pooled = match roi.pooler {
            Pooler::RoiAlign => roi_align(
                &features,
                proposals,
                size,
                scale,
                roi.sampling_ratio,
                roi.aligned,
            ),
            Pooler::RoiPool => roi_pool(&features, proposals, size, scale),
        };
        let hidden = self.run(&arch.head, pooled)?;
        self.record_inputs(&[&arch.cls_score, &arch.bbox_pred], &hidden);
        Ok(())
    }

    /// The predictors' inputs (their float outputs need no range).
    fn record_inputs(&mut self, predictors: &[&Layer], x: &Tensor) {
        for predictor in predictors {
            if let Layer::Conv { weight, .. } | Layer::Linear(weight) = predictor {
                self.record(input_point(weight), x);
            }
        }
    }

    fn record(&mut self, point: String, t: &Tensor) {
        if t.numel() == 0 {
            return;
        }
        let (min, max) = (
            t.min().double_value(&[]) as f32,
            t.max().double_value(&[]) as f32,
        );
        merge(&mut self.ranges, point, Range { min, max });
    }

    fn variable(&self, name: &str) -> Result<&Tensor> {
        self.variables
            .get(name)
            .with_context(|| format!("tensor {name} is not a variable of the model"))
    }

    /// `layers` on `x`, recording; a frozen BatchNorm right after a conv counts as part of
    /// the conv's output (the int8 graph folds it into the conv).
    fn run(&mut self, layers: &[Layer], mut x: Tensor) -> Result<Tensor> {
        let mut i = 0;
        while i < layers.len() {
            x = match &layers[i] {
                Layer::Conv {
                    weight,
                    stride,
                    padding,
                } => {
                    self.record(input_point(weight), &x);
                    let w = self.variable(&format!("{}.weight", weight.name))?;
                    let b = if weight.bias {
                        Some(self.variable(&format!("{}.bias", weight.name))?)
                    } else {
                        None
                    };
                    let mut y = x.conv2d(w, b, [*stride; 2], [*padding; 2], [1, 1], 1);
                    if let Some(norm @ Layer::FrozenBatchNorm { .. }) = layers.get(i + 1) {
                        y = self.layer(norm, y)?;
                        i += 1;
                    }
                    self.record(output_point(weight), &y);
                    y
                }
                Layer::Linear(weight) => {
                    self.record(input_point(weight), &x);
                    let w = self.variable(&format!("{}.weight", weight.name))?;
                    let b = self.variable(&format!("{}.bias", weight.name))?;
                    let y = x.linear(w, Some(b));
                    self.record(output_point(weight), &y);
                    y
                }
                Layer::Residual { body, shortcut } => {
                    let y = self.run(body, x.shallow_clone())?;
                    let s = self.run(shortcut, x)?;
                    let sum = (y + s).relu();
                    self.record(sum_point(body), &sum);
                    sum
                }
                other => self.layer(other, x)?,
            };
            i += 1;
        }
        Ok(x)
    }

    /// A layer without weights to quantize.
    fn layer(&mut self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        Ok(match layer {
            Layer::GroupNorm { name, groups, .. } => {
                let w = self.variable(&format!("{name}.weight"))?;
                let b = self.variable(&format!("{name}.bias"))?;
                x.group_norm(*groups, Some(w), Some(b), 1e-5, false)
            }
            Layer::FrozenBatchNorm { name, .. } => {
                let v = |p: &str| self.variable(&format!("{name}.{p}"));
                let scale = v("weight")?
                    * (v("running_var")? + crate::nn::backbones::frozen_bn::EPS).rsqrt();
                let shift = v("bias")? - v("running_mean")? * &scale;
                x * scale.view([1, -1, 1, 1]) + shift.view([1, -1, 1, 1])
            }
            Layer::Relu => x.relu(),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => x.max_pool2d([*kernel; 2], [*stride; 2], [*padding; 2], [1, 1], false),
            Layer::Flatten => x.flatten(1, -1),
            Layer::SpatialMean => x.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
            Layer::Conv { .. } | Layer::Linear(_) | Layer::Residual { .. } => {
                self.run(std::slice::from_ref(layer), x)?
            }
        })
    }
}
