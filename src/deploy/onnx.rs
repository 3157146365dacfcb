//! `lbwnet export --onnx`: the whole detector as one ONNX graph (opset 17) in standard
//! operators, with genuinely low-bit weights.
//!
//! Inputs: `image`, the decoded RGB image, `uint8 [H, W, 3]`, any size; `score_thresh`
//! (optional, float32 scalar, default the config's `eval.score_thresh`). The graph resizes it
//! as our transforms do (bilinear, half-pixel centres), normalizes it, runs the backbone
//! and the RPN (decoding, clipping, top-n, NMS), pools the proposals (RoiAlign or
//! MaxRoiPool), runs the box head, decodes per class, thresholds, runs per-class NMS and
//! cuts to the detections per image, with the model config's `eval` settings.
//! Outputs: `boxes` (`float64 [D, 4]`, the original image's pixels, as `lbwnet detect`
//! computes them before rounding), `scores` (`float32 [D]`) and `labels` (`int64 [D]`,
//! 1-based indices into the `classes` metadata entry).
//!
//! A quantized weight is stored as the `.lbw` stores it: its b-bit codes packed back to
//! back in a `uint8` initializer, and its alpha. The graph looks every byte (b = 2, 4, 8)
//! or every 16-bit window of two bytes (b = 3, 5, 6, 7) up in a table of the levels of the
//! fields it holds, times alpha (the table is built in the graph from the `2^b`-entry
//! level table): exactly Q(W), which onnxruntime folds once at load. No float copy of a
//! quantized weight is stored.
use super::format::{ModelFile, ALPHA_SUFFIX, CODES_SUFFIX};
use crate::config::{ExperimentConfig, Normalization, Pooler};
use crate::data::transforms::{CAFFE_BGR_MEAN, TORCHVISION_MEAN, TORCHVISION_STD};
use crate::detect::architecture::{Architecture, Layer, Weighted};
use anyhow::{ensure, Context, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::BTreeMap;
use std::path::Path;

/// The operator set the graph is written for (checked with onnxruntime 1.32 in `make test`).
pub const OPSET: i64 = 17;
/// The graph input (with the config's `eval.score_thresh` as its default) that keeps
/// detections scoring above it.
pub const SCORE_THRESH: &str = "score_thresh";
/// The intermediates the graph names, as lbwnet's inference pass computes them (for
/// checking the graph stage by stage): the normalized `[1, 3, h, w]` network input, the
/// trunk's features, the RPN's objectness `[h*w*A]` and deltas `[h*w*A, 4]` in the
/// anchors' order, the proposals `[P, 4]`, the head's class logits `[P, C+1]` and box
/// deltas `[P, 4(C+1)]`. Each quantized weight's decoded value is named as its tensor
/// (`<layer>.weight`).
pub const STAGES: [&str; 7] = [
    "network_input",
    "features",
    "rpn_objectness",
    "rpn_deltas",
    "proposals",
    "class_logits",
    "box_deltas",
];
/// The IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;

/// An attribute value of a node.
pub enum Attr<'a> {
    Int(i64),
    Ints(&'a [i64]),
    Float(f32),
    Str(&'a str),
}

/// Builds one ONNX graph: nodes in order, initializers, unique value names.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl GraphBuilder {
    /// A fresh value name.
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Adds a node with `outputs` fresh outputs and returns their names.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs).map(|_| self.fresh(op)).collect();
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = names[0].clone();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = names.clone();
        node.attribute = attrs
            .iter()
            .map(|(name, value)| attribute(name, value))
            .collect();
        self.nodes.push(node);
        names
    }

    /// Adds a node with one output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    /// Gives `value`, the output of a node added last (before any node reads it), the
    /// stable `name`: the graph's outputs and the intermediates of [`STAGES`].
    fn rename(&mut self, value: &str, name: &str) -> String {
        let node = self
            .nodes
            .iter_mut()
            .rev()
            .find(|n| n.output.iter().any(|o| o == value))
            .expect("a value produced by a node");
        for output in &mut node.output {
            if output == value {
                *output = name.into();
            }
        }
        name.into()
    }

    fn initializer(
        &mut self,
        name: String,
        dims: &[i64],
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = dims.to_vec();
        t.data_type = data_type as i32;
        t.raw_data = raw;
        self.initializers.push(t);
        name
    }

    /// A float32 initializer named `name`.
    pub fn f32_named(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name.into(), dims, DataType::FLOAT, raw)
    }

    /// A float32 constant.
    pub fn f32s(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const_f32");
        self.f32_named(&name, dims, values)
    }

    pub fn f64s(&mut self, dims: &[i64], values: &[f64]) -> String {
        let name = self.fresh("const_f64");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::DOUBLE, raw)
    }

    pub fn i64s(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::INT64, raw)
    }

    pub fn i32s(&mut self, dims: &[i64], values: &[i32]) -> String {
        let name = self.fresh("const_i32");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::INT32, raw)
    }

    pub fn u8s_named(&mut self, name: &str, values: &[u8]) -> String {
        self.initializer(
            name.into(),
            &[values.len() as i64],
            DataType::UINT8,
            values.to_vec(),
        )
    }

    /// `x` converted to `to`.
    pub fn cast(&mut self, x: &str, to: DataType) -> String {
        self.node("Cast", &[x], &[("to", Attr::Int(to as i64))])
    }

    /// A 1-D int64 vector constant.
    pub fn vec_i64(&mut self, values: &[i64]) -> String {
        self.i64s(&[values.len() as i64], values)
    }

    /// The model: this graph with `inputs` and `outputs` (name, element type, dims; a
    /// negative dim is symbolic) and string metadata.
    pub fn finish(
        self,
        inputs: &[(&str, DataType, &[i64])],
        outputs: &[(&str, DataType, &[i64])],
        metadata: &BTreeMap<String, String>,
    ) -> ModelProto {
        let mut graph = GraphProto::new();
        graph.name = "lbwnet".into();
        graph.node = self.nodes;
        graph.initializer = self.initializers;
        graph.input = inputs
            .iter()
            .map(|(n, t, d)| value_info(n, *t, d))
            .collect();
        graph.output = outputs
            .iter()
            .map(|(n, t, d)| value_info(n, *t, d))
            .collect();
        let mut model = ModelProto::new();
        model.ir_version = IR_VERSION;
        model.producer_name = "lbwnet".into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        let mut opset = OperatorSetIdProto::new();
        opset.domain = String::new();
        opset.version = OPSET;
        model.opset_import = vec![opset];
        model.metadata_props = metadata
            .iter()
            .map(|(k, v)| {
                let mut entry = StringStringEntryProto::new();
                entry.key = k.clone();
                entry.value = v.clone();
                entry
            })
            .collect();
        model.graph = Some(graph).into();
        model
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    match value {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        Attr::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.to_vec();
        }
        Attr::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
        Attr::Str(s) => {
            a.type_ = AttributeType::STRING.into();
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

fn value_info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let mut dim = tensor_shape_proto::Dimension::new();
            if d >= 0 {
                dim.set_dim_value(d);
            } else {
                dim.set_dim_param(format!("{name}_{i}"));
            }
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}

/// What an ONNX export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OnnxSummary {
    pub path: std::path::PathBuf,
    pub file_bytes: u64,
    /// Bytes of the float32 / float64 initializers (float layers, norms, biases, alphas,
    /// level tables and constants).
    pub float_initializer_bytes: u64,
    /// Bytes of the packed codes.
    pub code_bytes: u64,
    pub nodes: usize,
    /// Every operator the graph uses, with its count.
    pub operators: BTreeMap<String, usize>,
}

/// Writes `file` as an ONNX model to `out`, atomically. `eval` overrides (`--set eval.*`)
/// are already in `cfg`.
pub fn export_onnx(file: &ModelFile, cfg: &ExperimentConfig, out: &Path) -> Result<OnnxSummary> {
    let model =
        build_model(file, cfg).with_context(|| format!("model file {}", file.path.display()))?;
    let bytes = model
        .write_to_bytes()
        .context("serializing the ONNX model")?;
    crate::fsutil::write_atomic(out, &bytes)?;
    let graph = &model.graph;
    let bytes_of = |types: &[DataType]| -> u64 {
        graph
            .initializer
            .iter()
            .filter(|t| types.iter().any(|&d| t.data_type == d as i32))
            .map(|t| t.raw_data.len() as u64)
            .sum()
    };
    let mut operators = BTreeMap::new();
    for node in &graph.node {
        *operators.entry(node.op_type.clone()).or_insert(0) += 1;
    }
    Ok(OnnxSummary {
        path: out.to_path_buf(),
        file_bytes: bytes.len() as u64,
        float_initializer_bytes: bytes_of(&[DataType::FLOAT, DataType::DOUBLE]),
        code_bytes: bytes_of(&[DataType::UINT8]),
        nodes: graph.node.len(),
        operators,
    })
}

/// The detector's graph for `file`, with `cfg`'s eval settings.
pub fn build_model(file: &ModelFile, cfg: &ExperimentConfig) -> Result<ModelProto> {
    file.check_architecture(cfg)?;
    let arch = Architecture::of(cfg, file.meta.classes.len())?;
    let mut writer = Writer {
        g: GraphBuilder::default(),
        file,
        level_tables: BTreeMap::new(),
    };
    writer.detector(&arch, cfg)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("classes".into(), serde_json::to_string(&file.meta.classes)?);
    metadata.insert(
        "lbwnet_model".into(),
        serde_json::to_string(&file.meta.provenance)?,
    );
    metadata.insert("eval".into(), serde_json::to_string(&cfg.eval)?);
    Ok(writer.g.finish(
        &[
            ("image", DataType::UINT8, &[-1, -1, 3]),
            (SCORE_THRESH, DataType::FLOAT, &[]),
        ],
        &[
            ("boxes", DataType::DOUBLE, &[-1, 4]),
            ("scores", DataType::FLOAT, &[-1]),
            ("labels", DataType::INT64, &[-1]),
        ],
        &metadata,
    ))
}

struct Writer<'a> {
    g: GraphBuilder,
    file: &'a ModelFile,
    /// The level table per (bits, quantizer levels), shared by the layers that use it.
    level_tables: BTreeMap<String, String>,
}

/// The network input's size and scale, as graph values.
struct Resized {
    /// float32 `[1, 3, h, w]`.
    pixels: String,
    /// float64 scalar: resized / original.
    scale: String,
    /// float32 `[4]`: `[w, h, w, h]` of the resized image (the clip limits).
    limits: String,
    /// float64 `[4]`: `[W, H, W, H]` of the original image.
    original_limits: String,
}

impl Writer<'_> {
    fn detector(&mut self, arch: &Architecture, cfg: &ExperimentConfig) -> Result<()> {
        let input = self.preprocess(cfg)?;
        let mut features = input.pixels.clone();
        for layer in &arch.trunk {
            features = self.layer(layer, &features)?;
        }
        let features = self.g.rename(&features, STAGES[1]);
        let proposals = self.proposals(arch, cfg, &features, &input)?;
        let (logits, deltas) = self.box_head(arch, cfg, &features, &proposals)?;
        self.detections(cfg, &logits, &deltas, &proposals, &input, arch)
    }

    /// `image` (uint8 HWC) -> normalized float NCHW at the config's size.
    fn preprocess(&mut self, cfg: &ExperimentConfig) -> Result<Resized> {
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

    fn layer(&mut self, layer: &Layer, x: &str) -> Result<String> {
        Ok(match layer {
            Layer::Conv {
                weight,
                stride,
                padding,
            } => {
                let (w, b) = self.weights(weight)?;
                let mut inputs = vec![x, w.as_str()];
                if let Some(b) = &b {
                    inputs.push(b);
                }
                let k = weight.shape[2];
                self.g.node(
                    "Conv",
                    &inputs,
                    &[
                        ("kernel_shape", Attr::Ints(&[k, k])),
                        ("strides", Attr::Ints(&[*stride, *stride])),
                        ("pads", Attr::Ints(&[*padding; 4])),
                    ],
                )
            }
            Layer::Linear(weight) => {
                let (w, b) = self.weights(weight)?;
                let b = b.context("an fc layer without bias")?;
                self.g
                    .node("Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))])
            }
            Layer::GroupNorm {
                name,
                groups,
                channels,
            } => {
                // InstanceNormalization over [N, groups, -1], then the per-channel affine.
                let g = &mut self.g;
                let shape = g.node("Shape", &[x], &[]);
                let grouped_shape = g.vec_i64(&[0, *groups, -1]);
                let grouped = g.node("Reshape", &[x, &grouped_shape], &[]);
                let ones = g.f32s(&[*groups], &vec![1.0; *groups as usize]);
                let zeros = g.f32s(&[*groups], &vec![0.0; *groups as usize]);
                let normed = g.node(
                    "InstanceNormalization",
                    &[&grouped, &ones, &zeros],
                    &[("epsilon", Attr::Float(1e-5))],
                );
                let normed = g.node("Reshape", &[&normed, &shape], &[]);
                let weight = self.float_param(&format!("{name}.weight"), &[*channels, 1, 1])?;
                let bias = self.float_param(&format!("{name}.bias"), &[*channels, 1, 1])?;
                let scaled = self.g.node("Mul", &[&normed, &weight], &[]);
                self.g.node("Add", &[&scaled, &bias], &[])
            }
            Layer::FrozenBatchNorm { name, channels } => {
                let p: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|p| self.float_param(&format!("{name}.{p}"), &[*channels]))
                    .collect::<Result<_>>()?;
                self.g.node(
                    "BatchNormalization",
                    &[x, &p[0], &p[1], &p[2], &p[3]],
                    &[(
                        "epsilon",
                        Attr::Float(crate::nn::backbones::frozen_bn::EPS as f32),
                    )],
                )
            }
            Layer::Relu => self.g.node("Relu", &[x], &[]),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => self.g.node(
                "MaxPool",
                &[x],
                &[
                    ("kernel_shape", Attr::Ints(&[*kernel, *kernel])),
                    ("strides", Attr::Ints(&[*stride, *stride])),
                    ("pads", Attr::Ints(&[*padding; 4])),
                ],
            ),
            Layer::Flatten => self.g.node("Flatten", &[x], &[("axis", Attr::Int(1))]),
            Layer::SpatialMean => {
                let pooled = self.g.node("GlobalAveragePool", &[x], &[]);
                self.g
                    .node("Flatten", &[&pooled], &[("axis", Attr::Int(1))])
            }
            Layer::Residual { body, shortcut } => {
                let mut y = x.to_string();
                for l in body {
                    y = self.layer(l, &y)?;
                }
                let mut s = x.to_string();
                for l in shortcut {
                    s = self.layer(l, &s)?;
                }
                let sum = self.g.node("Add", &[&y, &s], &[]);
                self.g.node("Relu", &[&sum], &[])
            }
        })
    }

    /// A float tensor of the file as an initializer of its own name, reshaped to `dims`.
    fn float_param(&mut self, name: &str, dims: &[i64]) -> Result<String> {
        let tensor = self
            .file
            .tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing"))?;
        let values = tensor.to_f32().with_context(|| format!("tensor {name}"))?;
        ensure!(
            values.len() as i64 == dims.iter().product::<i64>(),
            "tensor {name} has {} values, {dims:?} expected",
            values.len()
        );
        Ok(self.g.f32_named(name, dims, &values))
    }

    /// A layer's weight (decoded in the graph when quantized) and bias.
    fn weights(&mut self, weight: &Weighted) -> Result<(String, Option<String>)> {
        let name = format!("{}.weight", weight.name);
        let w = if weight.quantized {
            self.quantized_weight(&name, &weight.shape)?
        } else {
            self.float_param(&name, &weight.shape)?
        };
        let b = if weight.bias {
            Some(self.float_param(&format!("{}.bias", weight.name), &[weight.shape[0]])?)
        } else {
            None
        };
        Ok((w, b))
    }

    /// `alpha * level(field)` for every packed field of `name`, reshaped to `shape`: the
    /// graph's copy of [`crate::quant::unpack`] followed by the dequantization.
    fn quantized_weight(&mut self, name: &str, shape: &[i64]) -> Result<String> {
        let layer = self
            .file
            .meta
            .layers
            .iter()
            .find(|l| l.name == name)
            .with_context(|| format!("layer {name} is not in the metadata's quantized layers"))?
            .clone();
        let packed = self.file.packed(&layer)?;
        let bits = i64::from(packed.bits);
        let numel: i64 = shape.iter().product();
        let layout = FieldLayout::new(bits);
        let groups = (numel + layout.fields - 1) / layout.fields;
        let group_bytes = usize::try_from(groups * layout.bytes)?;
        ensure!(
            packed.data.len() <= group_bytes,
            "layer {name}: {} bytes of codes for {numel} weights at {bits} bits",
            packed.data.len()
        );
        let table = self.field_table(&packed.levels, packed.bits);
        let g = &mut self.g;
        let codes = g.u8s_named(&format!("{name}{CODES_SUFFIX}"), &packed.data);
        let alpha = g.f32_named(&format!("{name}{ALPHA_SUFFIX}"), &[], &[packed.alpha]);
        // Zero bytes up to whole groups, and one more when fields straddle bytes, so that
        // the last byte has a next one.
        let padded = group_bytes + usize::from(!layout.byte_aligned());
        let pad_len = padded - packed.data.len();
        let bytes = if pad_len > 0 {
            let pad = g.fresh("pad");
            let pad = g.initializer(pad, &[pad_len as i64], DataType::UINT8, vec![0; pad_len]);
            g.node("Concat", &[&codes, &pad], &[("axis", Attr::Int(0))])
        } else {
            codes
        };
        // int32 indices: the folded intermediates are what loading costs.
        let bytes = g.cast(&bytes, DataType::INT32);
        let scaled = g.node("Mul", &[&table, &alpha], &[]);
        let values = if layout.byte_aligned() {
            // Each byte holds whole fields: its row of the table holds their levels.
            g.node("Gather", &[&scaled, &bytes], &[])
        } else {
            // Every byte with the next one as a 16-bit little-endian window; field j of
            // a group is read from the window at its first byte, in its row of the table.
            let (zero, last, one, end) = (
                g.vec_i64(&[0]),
                g.vec_i64(&[padded as i64 - 1]),
                g.vec_i64(&[1]),
                g.vec_i64(&[padded as i64]),
            );
            let low = g.node("Slice", &[&bytes, &zero, &last], &[]);
            let high = g.node("Slice", &[&bytes, &one, &end], &[]);
            let radix = g.i32s(&[], &[256]);
            let high = g.node("Mul", &[&high, &radix], &[]);
            let windows = g.node("Add", &[&low, &high], &[]);
            let grouped = g.vec_i64(&[groups, layout.bytes]);
            let windows = g.node("Reshape", &[&windows, &grouped], &[]);
            let first_byte = g.vec_i64(&layout.first_bytes());
            let windows = g.node(
                "Gather",
                &[&windows, &first_byte],
                &[("axis", Attr::Int(1))],
            );
            let rows = g.i32s(&[1, layout.fields], &layout.table_offsets());
            let index = g.node("Add", &[&windows, &rows], &[]);
            g.node("Gather", &[&scaled, &index], &[])
        };
        // (Each reshape of a folded weight is one more copy of it at load.)
        let values = if groups * layout.fields > numel {
            let flat = g.vec_i64(&[-1]);
            let values = g.node("Reshape", &[&values, &flat], &[]);
            let (zero, end) = (g.vec_i64(&[0]), g.vec_i64(&[numel]));
            g.node("Slice", &[&values, &zero, &end], &[])
        } else {
            values
        };
        let dims = g.vec_i64(shape);
        let weight = g.node("Reshape", &[&values, &dims], &[]);
        Ok(g.rename(&weight, name))
    }

    /// The levels of the fields a byte (fields that do not straddle bytes: `[256, 8/b]`)
    /// or a 16-bit window holds (`[fields * 65536]`, row j for the field starting at bit
    /// `j*b mod 8` of its first byte), computed in the graph from the `2^b`-entry level
    /// table: nothing this size is stored.
    fn field_table(&mut self, levels: &crate::quant::LevelSet, bits: u32) -> String {
        let key = format!("{levels:?}/{bits}/fields");
        if let Some(name) = self.level_tables.get(&key) {
            return name.clone();
        }
        let levels = self.level_table(levels, bits);
        let layout = FieldLayout::new(i64::from(bits));
        let g = &mut self.g;
        let windows = if layout.byte_aligned() { 256 } else { WINDOWS };
        let (start, end, step) = (
            g.i32s(&[], &[0]),
            g.i32s(&[], &[windows]),
            g.i32s(&[], &[1]),
        );
        let windows = g.node("Range", &[&start, &end, &step], &[]);
        let divisors: Vec<i32> = layout.shifts().iter().map(|s| 1 << s).collect();
        let fields = if layout.byte_aligned() {
            // [256, fields]: byte x, field j.
            let column = g.vec_i64(&[-1, 1]);
            let windows = g.node("Reshape", &[&windows, &column], &[]);
            let divisors = g.i32s(&[1, layout.fields], &divisors);
            g.node("Div", &[&windows, &divisors], &[])
        } else {
            // [fields, 65536] flattened: field j, window x.
            let divisors = g.i32s(&[layout.fields, 1], &divisors);
            let shifted = g.node("Div", &[&windows, &divisors], &[]);
            let flat = g.vec_i64(&[-1]);
            g.node("Reshape", &[&shifted, &flat], &[])
        };
        let modulus = g.i32s(&[], &[1 << bits]);
        let fields = g.node("Mod", &[&fields, &modulus], &[]);
        let table = g.node("Gather", &[&levels, &fields], &[]);
        self.level_tables.insert(key, table.clone());
        table
    }

    /// The float value of every b-bit field: a two's-complement code's signed level
    /// magnitude (fields outside the level set never occur; they map to 0).
    fn level_table(&mut self, levels: &crate::quant::LevelSet, bits: u32) -> String {
        let key = format!("{levels:?}/{bits}");
        if let Some(name) = self.level_tables.get(&key) {
            return name.clone();
        }
        let max_code = levels.max_code() as i64;
        let table: Vec<f32> = (0..1i64 << bits)
            .map(|field| {
                let code = if field >= 1 << (bits - 1) {
                    field - (1 << bits)
                } else {
                    field
                };
                if code.abs() > max_code {
                    return 0.0;
                }
                let magnitude = levels.magnitude(code.unsigned_abs() as u32) as f32;
                if code < 0 {
                    -magnitude
                } else {
                    magnitude
                }
            })
            .collect();
        let name = self.g.f32s(&[table.len() as i64], &table);
        self.level_tables.insert(key, name.clone());
        name
    }

    /// The RPN and the proposal layer: `[P, 4]` proposals in network-input pixels.
    fn proposals(
        &mut self,
        arch: &Architecture,
        cfg: &ExperimentConfig,
        features: &str,
        input: &Resized,
    ) -> Result<String> {
        let hidden = self.layer(&arch.rpn_conv, features)?;
        let hidden = self.g.node("Relu", &[&hidden], &[]);
        let objectness = self.layer(&arch.rpn_objectness, &hidden)?;
        let deltas = self.layer(&arch.rpn_deltas, &hidden)?;
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
        let feature_shape = g.node("Shape", &[features], &[]);
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
    fn box_head(
        &mut self,
        arch: &Architecture,
        cfg: &ExperimentConfig,
        features: &str,
        proposals: &str,
    ) -> Result<(String, String)> {
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
        let mut hidden = pooled;
        for layer in &arch.head {
            hidden = self.layer(layer, &hidden)?;
        }
        let logits = self.layer(&arch.cls_score, &hidden)?;
        let logits = self.g.rename(&logits, STAGES[5]);
        let deltas = self.layer(&arch.bbox_pred, &hidden)?;
        let deltas = self.g.rename(&deltas, STAGES[6]);
        Ok((logits, deltas))
    }

    /// Softmax, per-class decoding and clipping, threshold, small boxes, per-class NMS,
    /// the per-image cut; the graph's outputs in the original image's pixels.
    fn detections(
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

impl GraphBuilder {
    /// `ConstantOfShape(shape)` filled with the one `data_type` value whose little-endian
    /// bytes are `raw`.
    fn node_constant_of_shape(&mut self, shape: &str, data_type: DataType, raw: Vec<u8>) -> String {
        let mut value = TensorProto::new();
        value.data_type = data_type as i32;
        value.dims = vec![1];
        value.raw_data = raw;
        let name = self.fresh("ConstantOfShape");
        let mut node = NodeProto::new();
        node.op_type = "ConstantOfShape".into();
        node.name = name.clone();
        node.input = vec![shape.into()];
        node.output = vec![name.clone()];
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.type_ = AttributeType::TENSOR.into();
        a.t = Some(value).into();
        node.attribute = vec![a];
        self.nodes.push(node);
        name
    }
}

/// Distinct 16-bit windows.
const WINDOWS: i32 = 1 << 16;

/// How b-bit fields packed back to back (least significant bit first) fall into bytes:
/// groups of `fields` fields fill `bytes` whole bytes, and every field lies within the
/// two bytes from the one it starts in (b <= 8).
struct FieldLayout {
    bits: i64,
    fields: i64,
    bytes: i64,
}

impl FieldLayout {
    fn new(bits: i64) -> Self {
        let fields = 8 / gcd(bits, 8);
        FieldLayout {
            bits,
            fields,
            bytes: fields * bits / 8,
        }
    }

    /// Whether every field lies within one byte (b divides 8).
    fn byte_aligned(&self) -> bool {
        self.bytes == 1
    }

    /// The byte of its group each field starts in.
    fn first_bytes(&self) -> Vec<i64> {
        (0..self.fields).map(|j| j * self.bits / 8).collect()
    }

    /// The bit of that byte each field starts at (the byte-aligned layout's fields are
    /// all in the group's one byte).
    fn shifts(&self) -> Vec<i64> {
        (0..self.fields).map(|j| j * self.bits % 8).collect()
    }

    /// Each field's row in the window table, as an offset into it flattened.
    fn table_offsets(&self) -> Vec<i32> {
        (0..self.fields as i32).map(|j| j * WINDOWS).collect()
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
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
