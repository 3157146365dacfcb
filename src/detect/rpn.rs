//! Region proposal network: a 3x3 conv and two 1x1 predictors over the stride-16 features,
//! the proposal layer (decode, top-k, clip, min size, NMS) and the RPN loss (SPEC §2).
use crate::config::RpnConfig;
use crate::detect::anchors::{base_anchors, grid_anchors};
use crate::detect::box_coder::BoxCoder;
use crate::detect::box_ops::{box_iou, clip_boxes_to_image, remove_small_boxes};
use crate::detect::image_list::ImageTarget;
use crate::detect::matcher::Matcher;
use crate::detect::nms::nms_top_k_with;
use crate::detect::sampler::BalancedSampler;
use crate::nn::{qconv2d, QConv2d, QuantRegistry};
use crate::quant::QuantSpec;
use tch::nn::{self, Module};
use tch::{Kind, Reduction, Tensor};

/// torchvision's `rpn.head.{conv, cls_logits, bbox_pred}`.
pub struct RpnHead {
    conv: QConv2d,
    cls_logits: QConv2d,
    bbox_pred: QConv2d,
}

fn normal_init(std: f64) -> nn::ConvConfig {
    nn::ConvConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

impl RpnHead {
    pub fn new(
        path: &nn::Path,
        registry: &QuantRegistry,
        spec: Option<QuantSpec>,
        predictor_spec: Option<QuantSpec>,
        in_channels: i64,
        channels: i64,
        num_anchors: i64,
    ) -> Self {
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            ..normal_init(0.01)
        };
        Self {
            conv: qconv2d(
                &(path / "conv"),
                registry,
                spec,
                in_channels,
                channels,
                3,
                conv_cfg,
            ),
            cls_logits: qconv2d(
                &(path / "cls_logits"),
                registry,
                predictor_spec,
                channels,
                num_anchors,
                1,
                normal_init(0.01),
            ),
            bbox_pred: qconv2d(
                &(path / "bbox_pred"),
                registry,
                predictor_spec,
                channels,
                num_anchors * 4,
                1,
                normal_init(0.01),
            ),
        }
    }

    /// Objectness `[N, A, H, W]` and box deltas `[N, 4A, H, W]`.
    fn forward(&self, features: &Tensor) -> (Tensor, Tensor) {
        let hidden = self.conv.forward(features).relu();
        (
            self.cls_logits.forward(&hidden),
            self.bbox_pred.forward(&hidden),
        )
    }
}

pub struct Rpn {
    head: RpnHead,
    cell_anchors: Tensor,
    stride: i64,
    coder: BoxCoder,
    matcher: Matcher,
    sampler: BalancedSampler,
    cfg: RpnConfig,
}

/// RPN losses for one batch (already averaged), with the anchors they were computed on.
pub struct RpnLosses {
    pub objectness: Tensor,
    pub box_reg: Tensor,
    /// The sampled foreground anchors, in sampling order, as indices into the batch's
    /// anchors flattened image by image (`image * anchors_per_image + anchor`), the order of
    /// `RpnOutput::objectness.reshape([-1])`.
    pub sampled_positive: Tensor,
    /// The sampled background anchors, indexed likewise.
    pub sampled_negative: Tensor,
}

/// Everything the RPN computes for a batch: the proposals and losses the detector uses and
/// the intermediates behind them (for tests and inspection).
pub struct RpnOutput {
    /// `[H*W*A, 4]` anchors of the feature map, the same for every image, location-major
    /// (row-major cells) and anchor-minor.
    pub anchors: Tensor,
    /// `[N, H*W*A]` objectness logits, in the anchors' order.
    pub objectness: Tensor,
    /// `[N, H*W*A, 4]` box deltas relative to the anchors.
    pub deltas: Tensor,
    /// Per image, the proposals `[P, 4]` after NMS by descending objectness (detached,
    /// image coordinates).
    pub proposals: Vec<Tensor>,
    /// The losses, when targets were given.
    pub losses: Option<RpnLosses>,
}

impl Rpn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &nn::Path,
        registry: &QuantRegistry,
        spec: Option<QuantSpec>,
        predictor_spec: Option<QuantSpec>,
        in_channels: i64,
        anchor_sizes: &[f64],
        anchor_ratios: &[f64],
        stride: i64,
        cfg: &RpnConfig,
    ) -> Self {
        let cell_anchors = base_anchors(anchor_sizes, anchor_ratios).to_device(path.device());
        let num_anchors = cell_anchors.size()[0];
        Self {
            head: RpnHead::new(
                &(path / "head"),
                registry,
                spec,
                predictor_spec,
                in_channels,
                cfg.channels,
                num_anchors,
            ),
            cell_anchors,
            stride,
            coder: BoxCoder::new([1.0, 1.0, 1.0, 1.0]),
            matcher: Matcher {
                high: cfg.fg_iou,
                low: cfg.bg_iou,
                allow_low_quality_matches: true,
            },
            sampler: BalancedSampler {
                batch_size_per_image: cfg.batch_size_per_image,
                positive_fraction: cfg.positive_fraction,
            },
            cfg: cfg.clone(),
        }
    }

    /// Proposals per image (detached, image coordinates) and, with targets, the losses.
    /// `image_sizes` are (height, width) of each image before padding; `scales` the resize
    /// factors (the minimum proposal size is given at original image scale, as py-faster-rcnn);
    /// `train` picks the training or the test pre/post-NMS top-n.
    pub fn forward(
        &self,
        features: &Tensor,
        image_sizes: &[(i64, i64)],
        scales: &[f64],
        targets: Option<&[ImageTarget]>,
        train: bool,
    ) -> RpnOutput {
        let (objectness, deltas) = self.head.forward(features);
        let (n, a, h, w) = objectness.size4().expect("RPN objectness is 4-D");
        let anchors = grid_anchors(&self.cell_anchors, h, w, self.stride);
        // Location-major, anchor-minor: the order of `grid_anchors`.
        let objectness = objectness.permute([0, 2, 3, 1]).reshape([n, h * w * a]);
        let deltas = deltas
            .view([n, a, 4, h, w])
            .permute([0, 3, 4, 1, 2])
            .reshape([n, h * w * a, 4]);

        let (pre_nms, post_nms) = if train {
            (self.cfg.pre_nms_top_n_train, self.cfg.post_nms_top_n_train)
        } else {
            (self.cfg.pre_nms_top_n_test, self.cfg.post_nms_top_n_test)
        };
        let proposals = tch::no_grad(|| {
            (0..n)
                .map(|i| {
                    self.propose(
                        &objectness.get(i),
                        &deltas.get(i),
                        &anchors,
                        image_sizes[i as usize],
                        scales[i as usize],
                        pre_nms,
                        post_nms,
                    )
                })
                .collect::<Vec<_>>()
        });
        let losses = targets.map(|targets| self.loss(&objectness, &deltas, &anchors, targets));
        RpnOutput {
            anchors,
            objectness,
            deltas,
            proposals,
            losses,
        }
    }

    /// The settings, to change between passes (see `FasterRcnn::rpn_config_mut`).
    pub fn config_mut(&mut self) -> &mut RpnConfig {
        &mut self.cfg
    }

    /// The proposal layer for one image: top `pre_nms` anchors by objectness, decoded,
    /// clipped, small boxes (under `min_size` at original-image scale) removed, NMS down
    /// to `post_nms`. Public for the per-phase benchmark.
    #[allow(clippy::too_many_arguments)]
    pub fn propose(
        &self,
        objectness: &Tensor,
        deltas: &Tensor,
        anchors: &Tensor,
        (height, width): (i64, i64),
        scale: f64,
        pre_nms: usize,
        post_nms: usize,
    ) -> Tensor {
        let k = (pre_nms as i64).min(objectness.size()[0]);
        let (scores, top) = objectness.topk(k, 0, true, true);
        let boxes = self
            .coder
            .decode(
                &deltas.index_select(0, &top),
                &anchors.index_select(0, &top),
            )
            .view([-1, 4]);
        let boxes = clip_boxes_to_image(&boxes, height, width);
        let keep = remove_small_boxes(&boxes, self.cfg.min_size * scale);
        let (boxes, scores) = (boxes.index_select(0, &keep), scores.index_select(0, &keep));
        let keep = nms_top_k_with(
            &boxes,
            &scores,
            self.cfg.nms_thresh,
            Some(post_nms),
            self.cfg.nms_backend,
        );
        boxes.index_select(0, &keep)
    }

    fn loss(
        &self,
        objectness: &Tensor,
        deltas: &Tensor,
        anchors: &Tensor,
        targets: &[ImageTarget],
    ) -> RpnLosses {
        let mut sampled_pos = Vec::new();
        let mut sampled_neg = Vec::new();
        let mut regression_targets = Vec::new();
        let num_anchors = anchors.size()[0];
        for (i, target) in targets.iter().enumerate() {
            let offset = i as i64 * num_anchors;
            let (labels, matched_gt) = tch::no_grad(|| self.label_anchors(anchors, &target.boxes));
            let (pos, neg) = self.sampler.sample(&labels);
            regression_targets.push(tch::no_grad(|| {
                self.coder.encode(
                    &matched_gt.index_select(0, &pos),
                    &anchors.index_select(0, &pos),
                )
            }));
            sampled_pos.push(pos + offset);
            sampled_neg.push(neg + offset);
        }
        let pos = Tensor::cat(&sampled_pos, 0);
        let neg = Tensor::cat(&sampled_neg, 0);
        let sampled = Tensor::cat(&[&pos, &neg], 0);
        let num_sampled = (sampled.size()[0]).max(1) as f64;

        let flat_objectness = objectness.reshape([-1]);
        let flat_deltas = deltas.reshape([-1, 4]);
        let labels = Tensor::cat(
            &[
                Tensor::ones([pos.size()[0]], (Kind::Float, objectness.device())),
                Tensor::zeros([neg.size()[0]], (Kind::Float, objectness.device())),
            ],
            0,
        );
        let objectness_loss = flat_objectness
            .index_select(0, &sampled)
            .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean);
        let beta = 1.0 / (self.cfg.smooth_l1_sigma * self.cfg.smooth_l1_sigma);
        let box_loss = flat_deltas.index_select(0, &pos).smooth_l1_loss(
            &Tensor::cat(&regression_targets, 0),
            Reduction::Sum,
            beta,
        ) / num_sampled;
        RpnLosses {
            objectness: objectness_loss,
            box_reg: box_loss,
            sampled_positive: pos,
            sampled_negative: neg,
        }
    }

    /// Per anchor: 1 foreground, 0 background, -1 ignored; and the matched gt box.
    fn label_anchors(&self, anchors: &Tensor, gt_boxes: &Tensor) -> (Tensor, Tensor) {
        let n = anchors.size()[0];
        if gt_boxes.size()[0] == 0 {
            let labels = Tensor::zeros([n], (Kind::Int64, anchors.device()));
            return (
                labels,
                Tensor::zeros([n, 4], (Kind::Float, anchors.device())),
            );
        }
        let matches = self.matcher.matches(&box_iou(gt_boxes, anchors));
        let matched_gt = gt_boxes.index_select(0, &matches.clamp_min(0));
        let labels = matches.ge(0).to_kind(Kind::Int64);
        let labels = labels.where_self(
            &matches.ne(crate::detect::matcher::BETWEEN),
            &labels.full_like(-1),
        );
        (labels, matched_gt)
    }
}
