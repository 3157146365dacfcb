//! Faster R-CNN: backbone trunk (stride 16) → RPN → RoI head, with every conv and fc
//! weight going through the quantize-on-forward layers (SPEC §1.5, §2).
use crate::config::{EvalConfig, ExperimentConfig};
use crate::detect::roi_head::{Detections, RoiHead};
use crate::detect::rpn::Rpn;
use crate::nn::backbones::{build_backbone, LayerQuant};
use crate::nn::QuantRegistry;
use anyhow::Result;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Ground truth of one image, in network-input coordinates.
pub struct ImageTarget {
    /// `[K, 4]` x1, y1, x2, y2.
    pub boxes: Tensor,
    /// `[K]` 1..=num_classes.
    pub labels: Tensor,
}

/// The four training losses; their sum is what is minimized.
pub struct LossTerms {
    pub rpn_objectness: Tensor,
    pub rpn_box_reg: Tensor,
    pub classifier: Tensor,
    pub box_reg: Tensor,
}

impl LossTerms {
    pub fn total(&self) -> Tensor {
        &self.rpn_objectness + &self.rpn_box_reg + &self.classifier + &self.box_reg
    }

    /// (name, value) pairs for logs and progress bars.
    pub fn values(&self) -> [(&'static str, f64); 4] {
        [
            ("rpn_cls", self.rpn_objectness.double_value(&[])),
            ("rpn_box", self.rpn_box_reg.double_value(&[])),
            ("cls", self.classifier.double_value(&[])),
            ("box", self.box_reg.double_value(&[])),
        ]
    }
}

/// A batch of images padded to one size, with what the detector needs to undo it.
pub struct ImageBatch {
    /// `[N, 3, H, W]`, zero-padded at the bottom and right.
    pub images: Tensor,
    /// (height, width) of each image before padding.
    pub sizes: Vec<(i64, i64)>,
    /// Resize factor of each image from its original size.
    pub scales: Vec<f64>,
}

impl ImageBatch {
    pub fn new(images: &[Tensor], scales: Vec<f64>) -> Self {
        let sizes: Vec<(i64, i64)> = images
            .iter()
            .map(|im| {
                let s = im.size();
                (s[1], s[2])
            })
            .collect();
        let max_h = sizes.iter().map(|s| s.0).max().unwrap_or(0);
        let max_w = sizes.iter().map(|s| s.1).max().unwrap_or(0);
        let padded: Vec<Tensor> = images
            .iter()
            .zip(&sizes)
            .map(|(im, &(h, w))| {
                if h == max_h && w == max_w {
                    im.shallow_clone()
                } else {
                    im.constant_pad_nd([0, max_w - w, 0, max_h - h])
                }
            })
            .collect();
        Self {
            images: Tensor::stack(&padded, 0),
            sizes,
            scales,
        }
    }
}

pub struct FasterRcnn {
    trunk: Box<dyn ModuleT>,
    rpn: Rpn,
    roi_head: RoiHead,
    /// Every conv / fc weight, with its quantizer, for stats and export.
    pub registry: QuantRegistry,
    /// VarStore name prefixes that do not train when pretrained weights are loaded.
    pub frozen_prefixes: Vec<String>,
}

impl FasterRcnn {
    /// Builds the model under `root` (variables `backbone.*`, `rpn.*`, `roi_heads.*`).
    pub fn new(root: &nn::Path, cfg: &ExperimentConfig, num_classes: usize) -> Result<Self> {
        let registry = QuantRegistry::default();
        let spec = cfg.quant_spec()?;
        let predictor_spec = if cfg.quant.float_predictors {
            None
        } else {
            spec
        };
        let layer_quant = LayerQuant {
            spec,
            float_first_conv: cfg.quant.float_first_conv,
        };
        let parts = build_backbone(&(root / "backbone"), &cfg.model, &layer_quant, &registry)?;
        let m = &cfg.model;
        let rpn = Rpn::new(
            &(root / "rpn"),
            &registry,
            spec,
            predictor_spec,
            parts.trunk_channels,
            &m.anchor_sizes,
            &m.anchor_ratios,
            m.feature_stride,
            &m.rpn,
        );
        let roi_head = RoiHead::new(
            &(root / "roi_heads"),
            &registry,
            predictor_spec,
            parts.head,
            parts.head_dim,
            parts.pool_size,
            m.feature_stride,
            num_classes as i64,
            &m.roi,
        );
        Ok(Self {
            trunk: parts.trunk,
            rpn,
            roi_head,
            registry,
            frozen_prefixes: parts.frozen_prefixes,
        })
    }

    /// Training losses for a batch.
    pub fn losses(&self, batch: &ImageBatch, targets: &[ImageTarget]) -> LossTerms {
        let features = self.trunk.forward_t(&batch.images, true);
        let (proposals, rpn_losses) =
            self.rpn
                .forward(&features, &batch.sizes, &batch.scales, Some(targets), true);
        let rpn_losses = rpn_losses.expect("targets were given");
        let head = self.roi_head.loss(&features, &proposals, targets);
        LossTerms {
            rpn_objectness: rpn_losses.objectness,
            rpn_box_reg: rpn_losses.box_reg,
            classifier: head.classifier,
            box_reg: head.box_reg,
        }
    }

    /// Detections per image, in network-input coordinates (divide by the scale for the
    /// original image's).
    pub fn detect(&self, batch: &ImageBatch, eval: &EvalConfig) -> Vec<Detections> {
        tch::no_grad(|| {
            let features = self.trunk.forward_t(&batch.images, false);
            let (proposals, _) =
                self.rpn
                    .forward(&features, &batch.sizes, &batch.scales, None, false);
            self.roi_head
                .detect(&features, &proposals, &batch.sizes, eval)
        })
    }
}
