//! Faster R-CNN: backbone trunk (stride 16) → RPN → RoI head, with every conv and fc
//! weight going through the quantize-on-forward layers (SPEC §1.5, §2).
use crate::config::{EvalConfig, ExperimentConfig};
use crate::detect::image_list::{ImageBatch, ImageTarget};
use crate::detect::roi_head::{Detections, RoiHead, SampledRois};
use crate::detect::rpn::{Rpn, RpnOutput};
use crate::nn::backbones::{build_backbone, LayerQuant};
use crate::nn::QuantRegistry;
use anyhow::Result;
use tch::nn::{self, ModuleT};
use tch::Tensor;

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

    /// The trunk, the RPN and the RoI head, borrowed: a timing hook for `lbwnet bench
    /// train-step --breakdown` (`bench::breakdown`), which runs the training
    /// pass phase by phase with wall-clock timers. Changes nothing.
    pub fn parts(&self) -> (&dyn ModuleT, &Rpn, &RoiHead) {
        (self.trunk.as_ref(), &self.rpn, &self.roi_head)
    }

    /// The RPN's settings, changeable between passes: `lbwnet bench train-step` makes two
    /// models with different random weights score the same number of proposals at test time.
    pub fn rpn_config_mut(&mut self) -> &mut crate::config::RpnConfig {
        self.rpn.config_mut()
    }

    /// Training losses for a batch.
    pub fn losses(&self, batch: &ImageBatch, targets: &[ImageTarget]) -> LossTerms {
        self.training_pass(batch, targets).losses
    }

    /// The training forward pass behind [`FasterRcnn::losses`], with its intermediates:
    /// the RPN's outputs (anchors, objectness, deltas, proposals, sampled anchors) and the
    /// RoIs sampled for the head. Sampling draws from tch's global RNG.
    pub fn training_pass(&self, batch: &ImageBatch, targets: &[ImageTarget]) -> TrainingPass {
        let features = self.trunk.forward_t(&batch.images, true);
        let rpn = self
            .rpn
            .forward(&features, &batch.sizes, &batch.scales, Some(targets), true);
        let rpn_losses = rpn.losses.as_ref().expect("targets were given");
        let rois = self.roi_head.sample(&rpn.proposals, targets);
        let head = self.roi_head.loss(&features, &rois);
        let losses = LossTerms {
            rpn_objectness: rpn_losses.objectness.shallow_clone(),
            rpn_box_reg: rpn_losses.box_reg.shallow_clone(),
            classifier: head.classifier,
            box_reg: head.box_reg,
        };
        TrainingPass { rpn, rois, losses }
    }

    /// Detections per image, in network-input coordinates (divide by the scale for the
    /// original image's).
    pub fn detect(&self, batch: &ImageBatch, eval: &EvalConfig) -> Vec<Detections> {
        self.inference_pass(batch, eval).detections
    }

    /// The test-time forward pass behind [`FasterRcnn::detect`], with the RPN's outputs.
    pub fn inference_pass(&self, batch: &ImageBatch, eval: &EvalConfig) -> InferencePass {
        tch::no_grad(|| {
            let features = self.trunk.forward_t(&batch.images, false);
            let rpn = self
                .rpn
                .forward(&features, &batch.sizes, &batch.scales, None, false);
            let head = self
                .roi_head
                .detect(&features, &rpn.proposals, &batch.sizes, eval);
            InferencePass {
                features,
                rpn,
                class_logits: head.class_logits,
                box_deltas: head.box_deltas,
                detections: head.detections,
            }
        })
    }
}

/// A training forward pass: the losses and how they came about.
pub struct TrainingPass {
    pub rpn: RpnOutput,
    pub rois: SampledRois,
    pub losses: LossTerms,
}

/// A test-time forward pass: the detections and how they came about (the trunk's
/// features, the RPN's outputs with the test-time top-n, the head's raw outputs).
pub struct InferencePass {
    pub features: Tensor,
    pub rpn: RpnOutput,
    /// `[P, C+1]` for all images' proposals in order.
    pub class_logits: Tensor,
    /// `[P, 4(C+1)]`.
    pub box_deltas: Tensor,
    pub detections: Vec<Detections>,
}
