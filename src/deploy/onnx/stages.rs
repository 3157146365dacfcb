//! The detector's stages around the layers: preprocessing, the RPN and its proposals,
//! RoI pooling and the box head, the detections; and the box operations they share.
use super::graph::{Attr, GraphBuilder};
use super::int8::Value;
use super::{Resized, Writer, SCORE_THRESH, STAGES};
use crate::config::{ExperimentConfig, Normalization, Pooler};
use crate::data::transforms::{CAFFE_BGR_MEAN, TORCHVISION_MEAN, TORCHVISION_STD};
use crate::detect::architecture::{Architecture, Layer};
use anyhow::{ensure, Result};
use onnx_protobuf::tensor_proto::DataType;

impl Writer<'_> {
    /// `image` (uint8 HWC) -> normalized float NCHW at the config's size.
    pub(super) fn preprocess(&mut self, cfg: &ExperimentConfig) -> Result<Resized> {
        let g = &mut self.g;
        let zero = g.vec_i64(&[0]);
        let one = g.vec_i64(&[1]);
        let two = g.vec_i64(&[2]);
        let shape = g.node("Shape", &["image"], &[]);
        let hw = g.node("Slice", &[&shape, &zero, &two], &[]);
        let hw = g.cast(&hw, DataType::DOUBLE);
        let h = g.node("Slice", &[&hw, &zero, &one], &[]);
        let w = g.node("Slice", &[&hw, &one, &two], &[]);
        let short = g.node("Min", &[&h, &w], &[]);
        let long = g.node("Max", &[&h, &w], &[]);
        let min_size = g.f64s(&[1], &[f64::from(cfg.data.min_size)]);
        let max_size = g.f64s(&[1], &[f64::from(cfg.data.max_size)]);
        let half = g.f64s(&[1], &[0.5]);
        // resize_scale: min_size / short, unless the long side would round past max_size.
        let scale = g.node("Div", &[&min_size, &short], &[]);
        let long_scaled = g.node("Mul", &[&scale, &long], &[]);
        let long_scaled = round_half_up(g, &long_scaled, &half);
        let too_long = g.node("Greater", &[&long_scaled, &max_size], &[]);
        let capped = g.node("Div", &[&max_size, &long], &[]);
        let scale = g.node("Where", &[&too_long, &capped, &scale], &[]);
        // scaled_size: each side rounded, at least one pixel.
        let sides = g.node("Mul", &[&hw, &scale], &[]);
        let sides = round_half_up(g, &sides, &half);
        let one_f = g.f64s(&[1], &[1.0]);
        let sides = g.node("Max", &[&sides, &one_f], &[]);
        let sides_i = g.cast(&sides, DataType::INT64);
        let batch_channels = g.vec_i64(&[1, 3]);
        let sizes = g.node(
            "Concat",
            &[&batch_channels, &sides_i],
            &[("axis", Attr::Int(0))],
        );
        let pixels = g.cast("image", DataType::FLOAT);
        let pixels = g.node("Transpose", &[&pixels], &[("perm", Attr::Ints(&[2, 0, 1]))]);
        let pixels = g.node("Unsqueeze", &[&pixels, &zero], &[]);
        let pixels = g.node(
            "Resize",
            &[&pixels, "", "", &sizes],
            &[
                ("mode", Attr::Str("linear")),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("pytorch_half_pixel"),
                ),
            ],
        );
        let (pixels, mul, add): (String, [f32; 3], [f32; 3]) = match cfg.data.normalization {
            Normalization::Torchvision => (
                pixels,
                std::array::from_fn(|c| 1.0 / (255.0 * TORCHVISION_STD[c])),
                std::array::from_fn(|c| -TORCHVISION_MEAN[c] / TORCHVISION_STD[c]),
            ),
            Normalization::Caffe => {
                let bgr = g.vec_i64(&[2, 1, 0]);
                (
                    g.node("Gather", &[&pixels, &bgr], &[("axis", Attr::Int(1))]),
                    [1.0; 3],
                    std::array::from_fn(|c| -CAFFE_BGR_MEAN[c]),
                )
            }
        };
        let mul = g.f32s(&[1, 3, 1, 1], &mul);
        let add = g.f32s(&[1, 3, 1, 1], &add);
        let pixels = g.node("Mul", &[&pixels, &mul], &[]);
        let pixels = g.node("Add", &[&pixels, &add], &[]);
        let pixels = g.rename(&pixels, STAGES[0]);
        // Clip limits [w, h, w, h] in the network's pixels and in the original's.
        let wh_order = g.vec_i64(&[1, 0, 1, 0]);
        let sides_f = g.cast(&sides, DataType::FLOAT);
        let limits = g.node("Gather", &[&sides_f, &wh_order], &[("axis", Attr::Int(0))]);
        let original_limits = g.node("Gather", &[&hw, &wh_order], &[("axis", Attr::Int(0))]);
        Ok(Resized {
            pixels,
            scale,
            limits,
            original_limits,
        })
    }

    /// The RPN and the proposal layer: `[P, 4]` proposals in network-input pixels.
    pub(super) fn proposals(
        &mut self,
        arch: &Architecture,
        cfg: &ExperimentConfig,
        features: &Value,
        input: &Resized,
    ) -> Result<String> {
        let rpn_conv = [arch.rpn_conv.clone(), Layer::Relu];
        let hidden = self.sequence(&rpn_conv, features.clone())?;
        let objectness = self.predictor(&arch.rpn_objectness, &hidden)?;
        let deltas = self.predictor(&arch.rpn_deltas, &hidden)?;
        let m = &cfg.model;
        let anchors_per_cell = (m.anchor_sizes.len() * m.anchor_ratios.len()) as i64;
        let cell = crate::detect::anchors::base_anchors(&m.anchor_sizes, &m.anchor_ratios);
        let cell = Vec::<f32>::try_from(cell.flatten(0, -1))?;
        let g = &mut self.g;
        // Location-major, anchor-minor, as `grid_anchors` and the RPN's reshapes.
        let objectness = g.node(
            "Transpose",
            &[&objectness],
            &[("perm", Attr::Ints(&[0, 2, 3, 1]))],
        );
        let flat = g.vec_i64(&[-1]);
        let objectness = g.node("Reshape", &[&objectness, &flat], &[]);
        let objectness = g.rename(&objectness, STAGES[2]);
        // The shape of the features in either form.
        let feature_values = match features {
            Value::Float(name) => name.clone(),
            Value::Quant(q) => q.name.clone(),
        };
        let feature_shape = g.node("Shape", &[&feature_values], &[]);
        let two = g.vec_i64(&[2]);
        let four = g.vec_i64(&[4]);
        let hw = g.node("Slice", &[&feature_shape, &two, &four], &[]);
        let head = g.vec_i64(&[1, anchors_per_cell, 4]);
        let split_shape = g.node("Concat", &[&head, &hw], &[("axis", Attr::Int(0))]);
        let deltas = g.node("Reshape", &[&deltas, &split_shape], &[]);
        let deltas = g.node(
            "Transpose",
            &[&deltas],
            &[("perm", Attr::Ints(&[0, 3, 4, 1, 2]))],
        );
        let rows = g.vec_i64(&[-1, 4]);
        let deltas = g.node("Reshape", &[&deltas, &rows], &[]);
        let deltas = g.rename(&deltas, STAGES[3]);
        let anchors = grid_anchors(g, &hw, &cell, anchors_per_cell, m.feature_stride);

        let pre_nms = g.vec_i64(&[i64::try_from(m.rpn.pre_nms_top_n_test)?]);
        let (scores, index) = top_k(g, &objectness, &pre_nms);
        let (scores, index) = (&scores, &index);
        let deltas = g.node("Gather", &[&deltas, index], &[("axis", Attr::Int(0))]);
        let anchors = g.node("Gather", &[&anchors, index], &[("axis", Attr::Int(0))]);
        let boxes = decode_boxes(g, &deltas, &anchors, [1.0; 4], false);
        let boxes = clip(g, &boxes, &input.limits);
        // remove_small_boxes at min_size times the scale, compared in float32.
        let min_size = g.f64s(&[1], &[m.rpn.min_size]);
        let min_size = g.node("Mul", &[&min_size, &input.scale], &[]);
        let min_size = g.cast(&min_size, DataType::FLOAT);
        let keep = large_enough(g, &boxes, &min_size);
        let boxes = g.node("Gather", &[&boxes, &keep], &[("axis", Attr::Int(0))]);
        let scores = g.node("Gather", &[scores, &keep], &[("axis", Attr::Int(0))]);
        let keep = nms(
            g,
            &boxes,
            &scores,
            m.rpn.nms_thresh,
            m.rpn.post_nms_top_n_test,
        )?;
        let proposals = g.node("Gather", &[&boxes, &keep], &[("axis", Attr::Int(0))]);
        Ok(g.rename(&proposals, STAGES[4]))
    }

    /// RoI pooling and the box head: class logits `[P, C+1]` and deltas `[P, 4(C+1)]`.
    pub(super) fn box_head(
        &mut self,
        arch: &Architecture,
        cfg: &ExperimentConfig,
        features: &Value,
        proposals: &str,
    ) -> Result<(String, String)> {
        let features = self.float_of(features);
        let features = features.as_str();
        let roi = &cfg.model.roi;
        let scale = 1.0 / cfg.model.feature_stride as f32;
        let g = &mut self.g;
        // Every proposal belongs to image 0: `[P]` (RoiAlign) or a `[P, 1]` column (MaxRoiPool).
        let shape = g.node("Shape", &[proposals], &[]);
        let (first, one) = (g.vec_i64(&[0]), g.vec_i64(&[1]));
        let count = g.node("Slice", &[&shape, &first, &one], &[]);
        let pooled = match roi.pooler {
            Pooler::RoiAlign => {
                let batch =
                    g.node_constant_of_shape(&count, DataType::INT64, 0i64.to_le_bytes().into());
                g.node(
                    "RoiAlign",
                    &[features, proposals, &batch],
                    &[
                        ("mode", Attr::Str("avg")),
                        ("output_height", Attr::Int(arch.pool_size)),
                        ("output_width", Attr::Int(arch.pool_size)),
                        ("sampling_ratio", Attr::Int(roi.sampling_ratio)),
                        ("spatial_scale", Attr::Float(scale)),
                        (
                            "coordinate_transformation_mode",
                            Attr::Str(if roi.aligned {
                                "half_pixel"
                            } else {
                                "output_half_pixel"
                            }),
                        ),
                    ],
                )
            }
            Pooler::RoiPool => {
                let column_shape = g.node("Concat", &[&count, &one], &[("axis", Attr::Int(0))]);
                let batch = g.node_constant_of_shape(
                    &column_shape,
                    DataType::FLOAT,
                    0f32.to_le_bytes().into(),
                );
                let rois = g.node("Concat", &[&batch, proposals], &[("axis", Attr::Int(1))]);
                g.node(
                    "MaxRoiPool",
                    &[features, &rois],
                    &[
                        (
                            "pooled_shape",
                            Attr::Ints(&[arch.pool_size, arch.pool_size]),
                        ),
                        ("spatial_scale", Attr::Float(scale)),
                    ],
                )
            }
        };
        let hidden = self.sequence(&arch.head, Value::Float(pooled))?;
        let logits = self.predictor(&arch.cls_score, &hidden)?;
        let logits = self.g.rename(&logits, STAGES[5]);
        let deltas = self.predictor(&arch.bbox_pred, &hidden)?;
        let deltas = self.g.rename(&deltas, STAGES[6]);
        Ok((logits, deltas))
    }

    /// Softmax, per-class decoding and clipping, threshold, small boxes, per-class NMS,
    /// the per-image cut; the graph's outputs in the original image's pixels.
    pub(super) fn detections(
        &mut self,
        cfg: &ExperimentConfig,
        logits: &str,
        deltas: &str,
        proposals: &str,
        input: &Resized,
        arch: &Architecture,
    ) -> Result<()> {
        let eval = &cfg.eval;
        let classes = self.file.meta.classes.len() as i64;
        let weights = cfg.model.roi.box_weights.map(|w| w as f32);
        ensure!(
            arch.head_dim > 0 && classes > 0,
            "a model without classes cannot be exported"
        );
        let g = &mut self.g;
        let scores = g.node("Softmax", &[logits], &[("axis", Attr::Int(-1))]);
        let per_class = g.vec_i64(&[0, classes + 1, 4]);
        let deltas = g.node("Reshape", &[deltas, &per_class], &[]);
        let one = g.vec_i64(&[1]);
        let proposals3 = g.node("Unsqueeze", &[proposals, &one], &[]);
        let boxes = decode_boxes(g, &deltas, &proposals3, weights, true);
        let boxes = clip(g, &boxes, &input.limits);
        // Drop the background column, flatten (proposal, class) pairs.
        let from = g.vec_i64(&[1]);
        let to = g.vec_i64(&[i64::MAX]);
        let axis1 = g.vec_i64(&[1]);
        let boxes = g.node("Slice", &[&boxes, &from, &to, &axis1], &[]);
        let rows = g.vec_i64(&[-1, 4]);
        let boxes = g.node("Reshape", &[&boxes, &rows], &[]);
        let scores = g.node("Slice", &[&scores, &from, &to, &axis1], &[]);
        let scores_shape = g.node("Shape", &[&scores], &[]);
        let flat = g.vec_i64(&[-1]);
        let scores = g.node("Reshape", &[&scores, &flat], &[]);
        let class_ids = g.i64s(&[1, classes], &(1..=classes).collect::<Vec<_>>());
        let labels = g.node("Expand", &[&class_ids, &scores_shape], &[]);
        let labels = g.node("Reshape", &[&labels, &flat], &[]);
        // Scores above the threshold (compared in float32, as the tensor comparison). The
        // threshold is an input whose default is the config's, as `detect --score-thresh`.
        let threshold = g.f32_named(SCORE_THRESH, &[], &[eval.score_thresh as f32]);
        let above = g.node("Greater", &[&scores, &threshold], &[]);
        let keep = g.node("NonZero", &[&above], &[]);
        let keep = g.node("Reshape", &[&keep, &flat], &[]);
        let select = |g: &mut GraphBuilder, t: &str, keep: &str| {
            g.node("Gather", &[t, keep], &[("axis", Attr::Int(0))])
        };
        let (boxes, scores, labels) = (
            select(g, &boxes, &keep),
            select(g, &scores, &keep),
            select(g, &labels, &keep),
        );
        let min_size = g.f32s(&[], &[1e-2]);
        let keep = large_enough(g, &boxes, &min_size);
        let (boxes, scores, labels) = (
            select(g, &boxes, &keep),
            select(g, &scores, &keep),
            select(g, &labels, &keep),
        );
        // Per-class NMS: one score row per class, -1 where a box is of another class
        // (below the score threshold of -0.5, so NMS never sees it in that class).
        let class_column = g.i64s(&[classes, 1], &(1..=classes).collect::<Vec<_>>());
        let mine = g.node("Equal", &[&class_column, &labels], &[]);
        let minus_one = g.f32s(&[], &[-1.0]);
        let class_scores = g.node("Where", &[&mine, &scores, &minus_one], &[]);
        let zero = g.vec_i64(&[0]);
        let class_scores = g.node("Unsqueeze", &[&class_scores, &zero], &[]);
        let boxes3 = g.node("Unsqueeze", &[&boxes, &zero], &[]);
        let max_out = g.vec_i64(&[i64::try_from(eval.detections_per_image)?]);
        let iou = g.f32s(&[1], &[eval.nms_thresh as f32]);
        let floor = g.f32s(&[1], &[-0.5]);
        let selected = g.node(
            "NonMaxSuppression",
            &[&boxes3, &class_scores, &max_out, &iou, &floor],
            &[],
        );
        let kept = selected_boxes(g, &selected);
        let kept_scores = select(g, &scores, &kept);
        // All classes together by descending score, cut to the detections per image.
        let (_, order) = top_k(g, &kept_scores, &max_out);
        let final_index = select(g, &kept, &order);
        let boxes = select(g, &boxes, &final_index);
        // In the original image's pixels, in float64 as `detect` computes them.
        let boxes = g.cast(&boxes, DataType::DOUBLE);
        let boxes = g.node("Div", &[&boxes, &input.scale], &[]);
        let zero_f = g.f64s(&[], &[0.0]);
        let boxes = g.node("Max", &[&boxes, &zero_f], &[]);
        let boxes = g.node("Min", &[&boxes, &input.original_limits], &[]);
        g.rename(&boxes, "boxes");
        let scores = select(g, &scores, &final_index);
        g.rename(&scores, "scores");
        let labels = select(g, &labels, &final_index);
        g.rename(&labels, "labels");
        Ok(())
    }
}

/// The largest values of the 1-D `values`, at most `limit` (`[1]` int64) of them, in
/// descending order, and their indices.
fn top_k(g: &mut GraphBuilder, values: &str, limit: &str) -> (String, String) {
    let count = g.node("Shape", &[values], &[]);
    let k = g.node("Min", &[&count, limit], &[]);
    let mut top = g.node_n(
        "TopK",
        &[values, &k],
        2,
        &[
            ("axis", Attr::Int(0)),
            ("largest", Attr::Int(1)),
            ("sorted", Attr::Int(1)),
        ],
    );
    let index = top.pop().expect("TopK's indices");
    (top.pop().expect("TopK's values"), index)
}

/// `floor(x + 0.5)`: Rust's `round` for the non-negative values it is used on (ONNX's
/// Round rounds halves to even).
fn round_half_up(g: &mut GraphBuilder, x: &str, half: &str) -> String {
    let shifted = g.node("Add", &[x, half], &[]);
    g.node("Floor", &[&shifted], &[])
}

/// `grid_anchors`: the cell anchors at every feature location `[h*w*A, 4]`, from the
/// feature map's `[h, w]`.
fn grid_anchors(g: &mut GraphBuilder, hw: &str, cell: &[f32], anchors: i64, stride: i64) -> String {
    let zero = g.i64s(&[], &[0]);
    let one = g.i64s(&[], &[1]);
    let axis0 = g.vec_i64(&[0]);
    let stride = g.f32s(&[], &[stride as f32]);
    let h = g.node("Gather", &[hw, &zero], &[("axis", Attr::Int(0))]);
    let w = g.node("Gather", &[hw, &one], &[("axis", Attr::Int(0))]);
    let shifts = |g: &mut GraphBuilder, n: &str| {
        let range = g.node("Range", &[&zero, n, &one], &[]);
        let range = g.cast(&range, DataType::FLOAT);
        g.node("Mul", &[&range, &stride], &[])
    };
    let sx = shifts(g, &w);
    let sy = shifts(g, &h);
    let sx = g.node("Unsqueeze", &[&sx, &axis0], &[]);
    let sx = g.node("Expand", &[&sx, hw], &[]);
    let axis1 = g.vec_i64(&[1]);
    let sy = g.node("Unsqueeze", &[&sy, &axis1], &[]);
    let sy = g.node("Expand", &[&sy, hw], &[]);
    let column = g.vec_i64(&[-1, 1]);
    let sx = g.node("Reshape", &[&sx, &column], &[]);
    let sy = g.node("Reshape", &[&sy, &column], &[]);
    let shifts = g.node("Concat", &[&sx, &sy, &sx, &sy], &[("axis", Attr::Int(1))]);
    let shifts = g.node("Unsqueeze", &[&shifts, &axis1], &[]);
    let cell = g.f32s(&[1, anchors, 4], cell);
    let all = g.node("Add", &[&shifts, &cell], &[]);
    let rows = g.vec_i64(&[-1, 4]);
    g.node("Reshape", &[&all, &rows], &[])
}

/// One coordinate `i` of the last axis, kept as an axis of size 1.
fn coordinate(g: &mut GraphBuilder, t: &str, i: i64) -> String {
    let start = g.vec_i64(&[i]);
    let end = g.vec_i64(&[i + 1]);
    let axis = g.vec_i64(&[-1]);
    g.node("Slice", &[t, &start, &end, &axis], &[])
}

/// `BoxCoder::decode`: `deltas [..., 4]` against `boxes [..., 4]` (broadcastable), with the
/// coder's weights and the `ln(1000/16)` clamp on the size deltas. `weighted` divides by
/// the weights (the RPN's are all 1, a no-op the graph skips).
fn decode_boxes(
    g: &mut GraphBuilder,
    deltas: &str,
    boxes: &str,
    weights: [f32; 4],
    weighted: bool,
) -> String {
    let [x1, y1, x2, y2] = [0, 1, 2, 3].map(|i| coordinate(g, boxes, i));
    let widths = g.node("Sub", &[&x2, &x1], &[]);
    let heights = g.node("Sub", &[&y2, &y1], &[]);
    let half = g.f32s(&[], &[0.5]);
    let half_widths = g.node("Mul", &[&widths, &half], &[]);
    let half_heights = g.node("Mul", &[&heights, &half], &[]);
    let ctr_x = g.node("Add", &[&x1, &half_widths], &[]);
    let ctr_y = g.node("Add", &[&y1, &half_heights], &[]);
    let mut d: Vec<String> = (0..4).map(|i| coordinate(g, deltas, i)).collect();
    if weighted {
        for (i, w) in weights.iter().enumerate() {
            let w = g.f32s(&[], &[*w]);
            d[i] = g.node("Div", &[&d[i], &w], &[]);
        }
    }
    let clip = g.f32s(&[], &[(1000.0f64 / 16.0).ln() as f32]);
    let dw = g.node("Min", &[&d[2], &clip], &[]);
    let dh = g.node("Min", &[&d[3], &clip], &[]);
    let px = g.node("Mul", &[&d[0], &widths], &[]);
    let px = g.node("Add", &[&px, &ctr_x], &[]);
    let py = g.node("Mul", &[&d[1], &heights], &[]);
    let py = g.node("Add", &[&py, &ctr_y], &[]);
    let ew = g.node("Exp", &[&dw], &[]);
    let hw = g.node("Mul", &[&ew, &widths], &[]);
    let hw = g.node("Mul", &[&hw, &half], &[]);
    let eh = g.node("Exp", &[&dh], &[]);
    let hh = g.node("Mul", &[&eh, &heights], &[]);
    let hh = g.node("Mul", &[&hh, &half], &[]);
    let x1 = g.node("Sub", &[&px, &hw], &[]);
    let y1 = g.node("Sub", &[&py, &hh], &[]);
    let x2 = g.node("Add", &[&px, &hw], &[]);
    let y2 = g.node("Add", &[&py, &hh], &[]);
    g.node("Concat", &[&x1, &y1, &x2, &y2], &[("axis", Attr::Int(-1))])
}

/// `clip_boxes_to_image`: each coordinate into `[0, limit]`, limits `[w, h, w, h]`.
fn clip(g: &mut GraphBuilder, boxes: &str, limits: &str) -> String {
    let zero = g.f32s(&[], &[0.0]);
    let low = g.node("Max", &[boxes, &zero], &[]);
    g.node("Min", &[&low, limits], &[])
}

/// `remove_small_boxes`: indices of the `[N, 4]` boxes at least `min_size` wide and high.
fn large_enough(g: &mut GraphBuilder, boxes: &str, min_size: &str) -> String {
    let [x1, y1, x2, y2] = [0, 1, 2, 3].map(|i| coordinate(g, boxes, i));
    let w = g.node("Sub", &[&x2, &x1], &[]);
    let h = g.node("Sub", &[&y2, &y1], &[]);
    let wide = g.node("GreaterOrEqual", &[&w, min_size], &[]);
    let high = g.node("GreaterOrEqual", &[&h, min_size], &[]);
    let both = g.node("And", &[&wide, &high], &[]);
    let flat = g.vec_i64(&[-1]);
    let both = g.node("Reshape", &[&both, &flat], &[]);
    let keep = g.node("NonZero", &[&both], &[]);
    g.node("Reshape", &[&keep, &flat], &[])
}

/// Single-class NMS of `[N, 4]` boxes by `[N]` scores, at most `max_keep` kept, by
/// descending score.
fn nms(
    g: &mut GraphBuilder,
    boxes: &str,
    scores: &str,
    threshold: f64,
    max_keep: usize,
) -> Result<String> {
    let zero = g.vec_i64(&[0]);
    let boxes = g.node("Unsqueeze", &[boxes, &zero], &[]);
    let scores_shape = g.vec_i64(&[1, 1, -1]);
    let scores = g.node("Reshape", &[scores, &scores_shape], &[]);
    let max_out = g.vec_i64(&[i64::try_from(max_keep)?]);
    let iou = g.f32s(&[1], &[threshold as f32]);
    let selected = g.node("NonMaxSuppression", &[&boxes, &scores, &max_out, &iou], &[]);
    Ok(selected_boxes(g, &selected))
}

/// The box indices (column 2) of NonMaxSuppression's `[K, 3]` (batch, class, box) rows.
fn selected_boxes(g: &mut GraphBuilder, selected: &str) -> String {
    let (two, three, axis) = (g.vec_i64(&[2]), g.vec_i64(&[3]), g.vec_i64(&[1]));
    let column = g.node("Slice", &[selected, &two, &three, &axis], &[]);
    let flat = g.vec_i64(&[-1]);
    g.node("Reshape", &[&column, &flat], &[])
}
