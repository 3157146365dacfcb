//! The RoI head: proposal sampling against the ground truth, RoIAlign / RoIPool, the
//! backbone's box head, class-specific box regression, the head loss, and test-time
//! post-processing (score threshold, per-class NMS, detections cap).
use crate::config::{EvalConfig, Pooler, RoiConfig};
use crate::detect::box_coder::BoxCoder;
use crate::detect::box_ops::{box_iou, clip_boxes_to_image, remove_small_boxes};
use crate::detect::image_list::ImageTarget;
use crate::detect::matcher::{Matcher, BELOW_LOW, BETWEEN};
use crate::detect::nms::batched_nms;
use crate::detect::roi_align::roi_align;
use crate::detect::roi_pool::roi_pool;
use crate::detect::sampler::BalancedSampler;
use crate::nn::{qlinear, QLinear, QuantRegistry};
use crate::quant::QuantSpec;
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Reduction, Tensor};

/// Detections of one image, in the coordinates of the network input.
pub struct Detections {
    pub boxes: Tensor,
    pub scores: Tensor,
    /// 1..=num_classes (0 is background).
    pub labels: Tensor,
}

/// The head at test time: its raw outputs for every proposal (all images' proposals
/// concatenated) and the detections per image.
pub struct HeadPass {
    /// `[P, C+1]`.
    pub class_logits: Tensor,
    /// `[P, 4(C+1)]`.
    pub box_deltas: Tensor,
    pub detections: Vec<Detections>,
}

pub struct RoiHeadLosses {
    pub classifier: Tensor,
    pub box_reg: Tensor,
}

/// The RoIs sampled from a training batch's proposals, with their targets: what the head
/// loss is computed on. Image by image; within an image, the sampled foreground then the
/// background, each in sampling order.
pub struct SampledRois {
    /// `[K, 5]`: batch index, x1, y1, x2, y2.
    pub rois: Tensor,
    /// `[K]` (i64): each RoI's index among its image's candidates, which are the image's
    /// proposals followed by its ground-truth boxes.
    pub candidate_index: Tensor,
    /// `[K]` (i64): the matched gt class, or 0 for background.
    pub labels: Tensor,
    /// `[K, 4]`: the encoded matched gt box (meaningful for foreground RoIs only).
    pub regression_targets: Tensor,
}

pub struct RoiHead {
    box_head: Box<dyn ModuleT>,
    cls_score: QLinear,
    bbox_pred: QLinear,
    pool_size: i64,
    spatial_scale: f64,
    coder: BoxCoder,
    matcher: Matcher,
    sampler: BalancedSampler,
    cfg: RoiConfig,
    num_classes: i64,
}

impl RoiHead {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &nn::Path,
        registry: &QuantRegistry,
        predictor_spec: Option<QuantSpec>,
        box_head: Box<dyn ModuleT>,
        head_dim: i64,
        pool_size: i64,
        stride: i64,
        num_classes: i64,
        cfg: &RoiConfig,
    ) -> Self {
        let predictor = path / "box_predictor";
        let init = |std: f64| nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Self {
            box_head,
            cls_score: qlinear(
                &(&predictor / "cls_score"),
                registry,
                predictor_spec,
                head_dim,
                num_classes + 1,
                init(0.01),
            ),
            bbox_pred: qlinear(
                &(&predictor / "bbox_pred"),
                registry,
                predictor_spec,
                head_dim,
                4 * (num_classes + 1),
                init(0.001),
            ),
            pool_size,
            spatial_scale: 1.0 / stride as f64,
            coder: BoxCoder::new(cfg.box_weights),
            matcher: Matcher {
                high: cfg.fg_iou,
                low: cfg.bg_iou_hi,
                allow_low_quality_matches: false,
            },
            sampler: BalancedSampler {
                batch_size_per_image: cfg.batch_size_per_image,
                positive_fraction: cfg.positive_fraction,
            },
            cfg: cfg.clone(),
            num_classes,
        }
    }

    /// Class logits `[K, C+1]` and box deltas `[K, 4(C+1)]` of the RoIs `[K, 5]`.
    fn predict(&self, features: &Tensor, rois: &Tensor, train: bool) -> (Tensor, Tensor) {
        let size = (self.pool_size, self.pool_size);
        let pooled = match self.cfg.pooler {
            Pooler::RoiAlign => roi_align(
                features,
                rois,
                size,
                self.spatial_scale,
                self.cfg.sampling_ratio,
                self.cfg.aligned,
            ),
            Pooler::RoiPool => roi_pool(features, rois, size, self.spatial_scale),
        };
        let hidden = self.box_head.forward_t(&pooled, train);
        (
            self.cls_score.forward(&hidden),
            self.bbox_pred.forward(&hidden),
        )
    }

    /// The head losses on RoIs sampled by [`RoiHead::sample`].
    pub fn loss(&self, features: &Tensor, sampled: &SampledRois) -> RoiHeadLosses {
        let (logits, deltas) = self.predict(features, &sampled.rois, true);
        let classifier =
            logits.cross_entropy_loss::<Tensor>(&sampled.labels, None, Reduction::Mean, -100, 0.0);
        let num_rois = sampled.labels.size()[0].max(1) as f64;
        let positive = sampled.labels.gt(0).nonzero().squeeze_dim(1);
        let deltas = deltas.view([-1, self.num_classes + 1, 4]);
        // Class-specific regression: only the ground-truth class's deltas are trained.
        let positive_deltas = deltas
            .index_select(0, &positive)
            .gather(
                1,
                &sampled
                    .labels
                    .index_select(0, &positive)
                    .view([-1, 1, 1])
                    .expand([-1, 1, 4], false),
                false,
            )
            .squeeze_dim(1);
        let beta = 1.0 / (self.cfg.smooth_l1_sigma * self.cfg.smooth_l1_sigma);
        let box_reg = positive_deltas.smooth_l1_loss(
            &sampled.regression_targets.index_select(0, &positive),
            Reduction::Sum,
            beta,
        ) / num_rois;
        RoiHeadLosses {
            classifier,
            box_reg,
        }
    }

    /// Adds the gt boxes to each image's proposals, labels them by IoU (fg >= fg_iou,
    /// bg in [bg_iou_lo, bg_iou_hi)), and samples a balanced set per image (drawing from
    /// tch's global RNG). Not differentiable.
    pub fn sample(&self, proposals: &[Tensor], targets: &[ImageTarget]) -> SampledRois {
        tch::no_grad(|| self.sample_inner(proposals, targets))
    }

    fn sample_inner(&self, proposals: &[Tensor], targets: &[ImageTarget]) -> SampledRois {
        let mut rois = Vec::new();
        let mut candidate_index = Vec::new();
        let mut labels = Vec::new();
        let mut regression_targets = Vec::new();
        for (i, (props, target)) in proposals.iter().zip(targets).enumerate() {
            let props = Tensor::cat(&[props, &target.boxes], 0);
            let (image_labels, matched_gt) = self.label_proposals(&props, target);
            let (pos, neg) = self.sampler.sample(&image_labels);
            let keep = Tensor::cat(&[pos, neg], 0);
            let kept = props.index_select(0, &keep);
            regression_targets.push(self.coder.encode(&matched_gt.index_select(0, &keep), &kept));
            labels.push(image_labels.index_select(0, &keep));
            let batch_index =
                kept.new_full([kept.size()[0], 1], i as f64, (Kind::Float, kept.device()));
            rois.push(Tensor::cat(&[batch_index, kept], 1));
            candidate_index.push(keep);
        }
        SampledRois {
            rois: Tensor::cat(&rois, 0),
            candidate_index: Tensor::cat(&candidate_index, 0),
            labels: Tensor::cat(&labels, 0),
            regression_targets: Tensor::cat(&regression_targets, 0),
        }
    }

    /// Per proposal: gt class (fg), 0 (bg) or -1 (ignored); and its matched gt box.
    fn label_proposals(&self, props: &Tensor, target: &ImageTarget) -> (Tensor, Tensor) {
        let n = props.size()[0];
        if target.boxes.size()[0] == 0 {
            let labels = Tensor::zeros([n], (Kind::Int64, props.device()));
            return (labels, props.zeros_like());
        }
        let iou = box_iou(&target.boxes, props);
        let matches = self.matcher.matches(&iou);
        let clamped = matches.clamp_min(0);
        let mut labels = target.labels.index_select(0, &clamped);
        labels = labels.where_self(&matches.ne(BELOW_LOW), &labels.zeros_like());
        labels = labels.where_self(&matches.ne(BETWEEN), &labels.full_like(-1));
        if self.cfg.bg_iou_lo > 0.0 {
            let (max_iou, _) = iou.max_dim(0, false);
            let too_low = max_iou.lt(self.cfg.bg_iou_lo).logical_and(&labels.eq(0));
            labels = labels.where_self(&too_low.logical_not(), &labels.full_like(-1));
        }
        (labels, target.boxes.index_select(0, &clamped))
    }

    /// Test-time detections per image (boxes in network-input coordinates), with the
    /// class logits and box deltas they came from.
    pub fn detect(
        &self,
        features: &Tensor,
        proposals: &[Tensor],
        image_sizes: &[(i64, i64)],
        eval: &EvalConfig,
    ) -> HeadPass {
        let rois: Vec<Tensor> = proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let index = p.new_full([p.size()[0], 1], i as f64, (Kind::Float, p.device()));
                Tensor::cat(&[&index, p], 1)
            })
            .collect();
        let (logits, deltas) = self.predict(features, &Tensor::cat(&rois, 0), false);
        let scores = logits.softmax(-1, Kind::Float);
        let counts: Vec<i64> = proposals.iter().map(|p| p.size()[0]).collect();
        let all_boxes = self.coder.decode(&deltas, &Tensor::cat(proposals, 0));
        let mut start = 0;
        let detections = counts
            .iter()
            .zip(image_sizes)
            .map(|(&count, &(height, width))| {
                let boxes = all_boxes.narrow(0, start, count);
                let scores = scores.narrow(0, start, count);
                start += count;
                self.postprocess(&boxes, &scores, height, width, eval)
            })
            .collect();
        HeadPass {
            class_logits: logits,
            box_deltas: deltas,
            detections,
        }
    }

    fn postprocess(
        &self,
        boxes: &Tensor,
        scores: &Tensor,
        height: i64,
        width: i64,
        eval: &EvalConfig,
    ) -> Detections {
        let num_classes = self.num_classes;
        let device = boxes.device();
        let boxes =
            clip_boxes_to_image(&boxes.view([-1, 4]), height, width).view([-1, num_classes + 1, 4]);
        // Drop the background column, then flatten (proposal, class) pairs.
        let boxes = boxes.narrow(1, 1, num_classes).reshape([-1, 4]);
        let scores = scores.narrow(1, 1, num_classes).reshape([-1]);
        let labels = Tensor::arange_start(1, num_classes + 1, (Kind::Int64, device))
            .view([1, -1])
            .expand([boxes.size()[0] / num_classes, num_classes], false)
            .reshape([-1]);
        let keep = scores.gt(eval.score_thresh).nonzero().squeeze_dim(1);
        let (boxes, scores, labels) = (
            boxes.index_select(0, &keep),
            scores.index_select(0, &keep),
            labels.index_select(0, &keep),
        );
        let keep = remove_small_boxes(&boxes, 1e-2);
        let (boxes, scores, labels) = (
            boxes.index_select(0, &keep),
            scores.index_select(0, &keep),
            labels.index_select(0, &keep),
        );
        let keep = batched_nms(&boxes, &scores, &labels, eval.nms_thresh);
        let keep = keep.narrow(0, 0, keep.size()[0].min(eval.detections_per_image as i64));
        Detections {
            boxes: boxes.index_select(0, &keep),
            scores: scores.index_select(0, &keep),
            labels: labels.index_select(0, &keep),
        }
    }
}
