//! The detector a config describes, as data: every layer in order with its VarStore name,
//! shapes and settings, without allocating a weight. A model file's tensors are checked
//! against it before the model is built (so a stored config cannot size an allocation the
//! file does not back), and the ONNX export walks it to write the graph.
//! `tests/architecture.rs` checks it against the VarStore that `FasterRcnn::new` builds.
use crate::config::{Backbone, ExperimentConfig, TRUNK_STRIDE};
use crate::nn::backbones::{resnet, small, vgg};
use anyhow::{bail, ensure, Context, Result};

/// A conv or fc layer: `{name}.weight` (and `{name}.bias`).
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub name: String,
    /// `[out, in, k, k]` for a conv, `[out, in]` for an fc.
    pub shape: Vec<i64>,
    pub bias: bool,
    /// Whether the weight is quantized on forward.
    pub quantized: bool,
}

/// One step of a layer sequence, at inference.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv {
        weight: Weighted,
        stride: i64,
        padding: i64,
    },
    Linear(Weighted),
    /// `{name}.weight` and `{name}.bias`, `[channels]`.
    GroupNorm {
        name: String,
        groups: i64,
        channels: i64,
    },
    /// `{name}.{weight,bias,running_mean,running_var}`, `[channels]`, eps 1e-5.
    FrozenBatchNorm {
        name: String,
        channels: i64,
    },
    Relu,
    MaxPool {
        kernel: i64,
        stride: i64,
        padding: i64,
    },
    /// `[K, C, H, W]` -> `[K, C * H * W]`.
    Flatten,
    /// Mean over the two spatial axes.
    SpatialMean,
    /// `relu(body(x) + shortcut(x))`; an empty shortcut is the identity.
    Residual {
        body: Vec<Layer>,
        shortcut: Vec<Layer>,
    },
}

/// The whole detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// Image -> stride-16 features.
    pub trunk: Vec<Layer>,
    pub trunk_channels: i64,
    /// Pooled RoIs `[K, trunk_channels, pool_size, pool_size]` -> `[K, head_dim]`.
    pub head: Vec<Layer>,
    pub head_dim: i64,
    pub pool_size: i64,
    /// The RPN's 3x3 conv (a ReLU follows) and its two 1x1 predictors.
    pub rpn_conv: Layer,
    pub rpn_objectness: Layer,
    pub rpn_deltas: Layer,
    /// The box predictor's fcs.
    pub cls_score: Layer,
    pub bbox_pred: Layer,
}

/// A backbone's share of [`Architecture`].
struct BackboneLayers {
    trunk: Vec<Layer>,
    trunk_channels: i64,
    head: Vec<Layer>,
    head_dim: i64,
    pool_size: i64,
}

impl Weighted {
    fn new(name: String, shape: Vec<i64>, bias: bool, quantized: bool) -> Self {
        Weighted {
            name,
            shape,
            bias,
            quantized,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    name: String,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    bias: bool,
    quantized: bool,
) -> Layer {
    Layer::Conv {
        weight: Weighted::new(name, vec![c_out, c_in, kernel, kernel], bias, quantized),
        stride,
        padding,
    }
}

fn linear(name: String, c_in: i64, c_out: i64, quantized: bool) -> Layer {
    Layer::Linear(Weighted::new(name, vec![c_out, c_in], true, quantized))
}

impl Architecture {
    /// The detector `cfg` builds for `num_classes` classes (without background). The
    /// config's own checks bound its keys; sizes here are only multiplied in
    /// [`Architecture::parameters`], with checked arithmetic.
    pub fn of(cfg: &ExperimentConfig, num_classes: usize) -> Result<Self> {
        let m = &cfg.model;
        ensure!(
            m.feature_stride == TRUNK_STRIDE,
            "key `model.feature_stride`: {} is not supported; every backbone has stride {TRUNK_STRIDE}",
            m.feature_stride
        );
        let quantized = cfg.quant_spec()?.is_some();
        let first_quantized = quantized && !cfg.quant.float_first_conv;
        let predictor_quantized = quantized && !cfg.quant.float_predictors;
        let BackboneLayers {
            trunk,
            trunk_channels,
            head,
            head_dim,
            pool_size,
        } = match m.backbone {
            Backbone::Small => {
                small_parts(m.small_width, m.roi.head_hidden, quantized, first_quantized)?
            }
            Backbone::Vgg16 => vgg_parts(quantized, first_quantized),
            Backbone::Resnet50 => resnet_parts(quantized, first_quantized),
        };
        let anchors = i64::try_from(m.anchor_sizes.len() * m.anchor_ratios.len())?;
        let classes = i64::try_from(num_classes)
            .ok()
            .and_then(|n| n.checked_add(1))
            .context("too many classes")?;
        let rpn = "rpn.head";
        let channels = m.rpn.channels;
        Ok(Architecture {
            trunk,
            trunk_channels,
            head,
            head_dim,
            pool_size,
            rpn_conv: conv(
                format!("{rpn}.conv"),
                trunk_channels,
                channels,
                3,
                1,
                1,
                true,
                quantized,
            ),
            rpn_objectness: conv(
                format!("{rpn}.cls_logits"),
                channels,
                anchors,
                1,
                1,
                0,
                true,
                predictor_quantized,
            ),
            rpn_deltas: conv(
                format!("{rpn}.bbox_pred"),
                channels,
                anchors.checked_mul(4).context("too many anchors")?,
                1,
                1,
                0,
                true,
                predictor_quantized,
            ),
            cls_score: linear(
                "roi_heads.box_predictor.cls_score".into(),
                head_dim,
                classes,
                predictor_quantized,
            ),
            bbox_pred: linear(
                "roi_heads.box_predictor.bbox_pred".into(),
                head_dim,
                classes.checked_mul(4).context("too many classes")?,
                predictor_quantized,
            ),
        })
    }

    /// Every layer with parameters, in forward order (a residual block's body before its
    /// shortcut).
    pub fn layers(&self) -> Vec<&Layer> {
        fn walk<'a>(layers: &'a [Layer], out: &mut Vec<&'a Layer>) {
            for layer in layers {
                match layer {
                    Layer::Residual { body, shortcut } => {
                        walk(body, out);
                        walk(shortcut, out);
                    }
                    Layer::Relu | Layer::MaxPool { .. } | Layer::Flatten | Layer::SpatialMean => {}
                    _ => out.push(layer),
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.trunk, &mut out);
        walk(&self.head, &mut out);
        out.extend([
            &self.rpn_conv,
            &self.rpn_objectness,
            &self.rpn_deltas,
            &self.cls_score,
            &self.bbox_pred,
        ]);
        out
    }

    /// Every parameter's full VarStore name and shape.
    pub fn parameters(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        for layer in self.layers() {
            match layer {
                Layer::Conv { weight, .. } | Layer::Linear(weight) => {
                    out.push((format!("{}.weight", weight.name), weight.shape.clone()));
                    if weight.bias {
                        out.push((format!("{}.bias", weight.name), vec![weight.shape[0]]));
                    }
                }
                Layer::GroupNorm { name, channels, .. } => {
                    for p in ["weight", "bias"] {
                        out.push((format!("{name}.{p}"), vec![*channels]));
                    }
                }
                Layer::FrozenBatchNorm { name, channels } => {
                    for p in ["weight", "bias", "running_mean", "running_var"] {
                        out.push((format!("{name}.{p}"), vec![*channels]));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The quantized weights' full names (`{layer}.weight`).
    pub fn quantized_weights(&self) -> Vec<String> {
        self.layers()
            .into_iter()
            .filter_map(|layer| match layer {
                Layer::Conv { weight, .. } | Layer::Linear(weight) if weight.quantized => {
                    Some(format!("{}.weight", weight.name))
                }
                _ => None,
            })
            .collect()
    }

    /// Elements of every parameter, or an error where a count does not fit in 64 bits.
    pub fn parameter_count(&self) -> Result<u64> {
        self.parameters()
            .iter()
            .try_fold(0u64, |total, (name, shape)| {
                let numel = shape.iter().try_fold(1u64, |n, &d| {
                    u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
                });
                numel
                    .and_then(|n| total.checked_add(n))
                    .with_context(|| format!("parameter {name} of shape {shape:?} is too large"))
            })
    }
}

fn small_parts(
    width: i64,
    head_hidden: i64,
    quantized: bool,
    first_quantized: bool,
) -> Result<BackboneLayers> {
    if width < 1 {
        bail!("key `model.small_width`: {width} is not allowed; must be at least 1");
    }
    if head_hidden < 1 {
        bail!("key `model.roi.head_hidden`: {head_hidden} is not allowed; must be at least 1");
    }
    let mut trunk = Vec::new();
    let mut c_in = 3;
    let mut index = 0;
    for (blocks, multiplier) in small::BLOCKS_PER_STAGE.into_iter().zip(small::STAGE_WIDTHS) {
        let c_out = width
            .checked_mul(multiplier)
            .context("key `model.small_width` is too large")?;
        for block in 0..blocks {
            let stride = if block == 0 { 2 } else { 1 };
            let q = if index == 0 {
                first_quantized
            } else {
                quantized
            };
            trunk.push(conv(
                format!("backbone.features.{index}.conv"),
                c_in,
                c_out,
                3,
                stride,
                1,
                false,
                q,
            ));
            trunk.push(Layer::GroupNorm {
                name: format!("backbone.features.{index}.norm"),
                groups: small::norm_groups(c_out),
                channels: c_out,
            });
            trunk.push(Layer::Relu);
            c_in = c_out;
            index += 1;
        }
    }
    let pool = small::POOL_SIZE;
    let flat = c_in
        .checked_mul(pool * pool)
        .context("key `model.small_width` is too large")?;
    let head = vec![
        Layer::Flatten,
        linear("backbone.classifier.0".into(), flat, head_hidden, quantized),
        Layer::Relu,
        linear(
            "backbone.classifier.2".into(),
            head_hidden,
            head_hidden,
            quantized,
        ),
        Layer::Relu,
    ];
    Ok(BackboneLayers {
        trunk,
        trunk_channels: c_in,
        head,
        head_dim: head_hidden,
        pool_size: pool,
    })
}

fn vgg_parts(quantized: bool, first_quantized: bool) -> BackboneLayers {
    let mut trunk = Vec::new();
    let mut c_in = 3;
    // torchvision's `features` index: a conv and its ReLU take two, a max-pool one.
    let mut index = 0;
    for layer in vgg::FEATURES {
        match layer {
            Some(c_out) => {
                let q = if index == 0 {
                    first_quantized
                } else {
                    quantized
                };
                trunk.push(conv(
                    format!("backbone.features.{index}"),
                    c_in,
                    c_out,
                    3,
                    1,
                    1,
                    true,
                    q,
                ));
                trunk.push(Layer::Relu);
                c_in = c_out;
                index += 2;
            }
            None => {
                trunk.push(Layer::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                });
                index += 1;
            }
        }
    }
    let flat = vgg::TRUNK_CHANNELS * vgg::POOL_SIZE * vgg::POOL_SIZE;
    // Dropout is the identity at inference.
    let head = vec![
        Layer::Flatten,
        linear(
            "backbone.classifier.0".into(),
            flat,
            vgg::HEAD_DIM,
            quantized,
        ),
        Layer::Relu,
        linear(
            "backbone.classifier.3".into(),
            vgg::HEAD_DIM,
            vgg::HEAD_DIM,
            quantized,
        ),
        Layer::Relu,
    ];
    BackboneLayers {
        trunk,
        trunk_channels: vgg::TRUNK_CHANNELS,
        head,
        head_dim: vgg::HEAD_DIM,
        pool_size: vgg::POOL_SIZE,
    }
}

fn resnet_parts(quantized: bool, first_quantized: bool) -> BackboneLayers {
    let stem = resnet::STEM_CHANNELS;
    let mut trunk = vec![
        conv(
            "backbone.conv1".into(),
            3,
            stem,
            7,
            2,
            3,
            false,
            first_quantized,
        ),
        Layer::FrozenBatchNorm {
            name: "backbone.bn1".into(),
            channels: stem,
        },
        Layer::Relu,
        Layer::MaxPool {
            kernel: 3,
            stride: 2,
            padding: 1,
        },
    ];
    let mut channels = stem;
    let mut stages = Vec::new();
    for (name, planes, blocks, stride) in resnet::STAGES {
        let mut layers = Vec::new();
        for block in 0..blocks {
            let path = format!("backbone.{name}.{block}");
            let stride = if block == 0 { stride } else { 1 };
            let c_out = planes * resnet::EXPANSION;
            let bn = |suffix: &str, channels| Layer::FrozenBatchNorm {
                name: format!("{path}.{suffix}"),
                channels,
            };
            let body = vec![
                conv(
                    format!("{path}.conv1"),
                    channels,
                    planes,
                    1,
                    1,
                    0,
                    false,
                    quantized,
                ),
                bn("bn1", planes),
                Layer::Relu,
                conv(
                    format!("{path}.conv2"),
                    planes,
                    planes,
                    3,
                    stride,
                    1,
                    false,
                    quantized,
                ),
                bn("bn2", planes),
                Layer::Relu,
                conv(
                    format!("{path}.conv3"),
                    planes,
                    c_out,
                    1,
                    1,
                    0,
                    false,
                    quantized,
                ),
                bn("bn3", c_out),
            ];
            let shortcut = if stride != 1 || channels != c_out {
                vec![
                    conv(
                        format!("{path}.downsample.0"),
                        channels,
                        c_out,
                        1,
                        stride,
                        0,
                        false,
                        quantized,
                    ),
                    bn("downsample.1", c_out),
                ]
            } else {
                Vec::new()
            };
            layers.push(Layer::Residual { body, shortcut });
            channels = c_out;
        }
        stages.push(layers);
    }
    let layer4 = stages.pop().expect("four stages");
    trunk.extend(stages.into_iter().flatten());
    let mut head = layer4;
    head.push(Layer::SpatialMean);
    BackboneLayers {
        trunk,
        trunk_channels: resnet::TRUNK_CHANNELS,
        head,
        head_dim: resnet::HEAD_DIM,
        pool_size: resnet::POOL_SIZE,
    }
}
