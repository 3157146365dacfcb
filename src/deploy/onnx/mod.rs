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
mod graph;
mod int8;
mod layers;
mod stages;
mod weights;

pub use graph::{Attr, GraphBuilder};
pub use int8::check_int8;

use super::calibrate::Calibration;
use int8::{Int8State, Value};

use super::format::ModelFile;
use crate::config::ExperimentConfig;
use crate::detect::architecture::Architecture;
use anyhow::{Context, Result};
use onnx_protobuf::{tensor_proto::DataType, Message, ModelProto};
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
    write_model(&model, out)
}

/// Writes `file` as an int8 ONNX model ([`int8`]) to `out`, atomically, with the
/// activation ranges of `calibration`.
pub fn export_onnx_int8(
    file: &ModelFile,
    cfg: &ExperimentConfig,
    calibration: &Calibration,
    out: &Path,
) -> Result<OnnxSummary> {
    let model = build_int8_model(file, cfg, calibration)
        .with_context(|| format!("model file {}", file.path.display()))?;
    write_model(&model, out)
}

fn write_model(model: &ModelProto, out: &Path) -> Result<OnnxSummary> {
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
    build(file, cfg, None)
}

/// The int8 graph for `file`, with `cfg`'s eval settings and `calibration`'s ranges.
pub fn build_int8_model(
    file: &ModelFile,
    cfg: &ExperimentConfig,
    calibration: &Calibration,
) -> Result<ModelProto> {
    check_int8(file)?;
    build(file, cfg, Some(calibration))
}

fn build(
    file: &ModelFile,
    cfg: &ExperimentConfig,
    calibration: Option<&Calibration>,
) -> Result<ModelProto> {
    file.check_architecture(cfg)?;
    let arch = Architecture::of(cfg, file.meta.classes.len())?;
    let mut writer = Writer {
        g: GraphBuilder::default(),
        file,
        level_tables: BTreeMap::new(),
        int8: calibration.map(|c| Int8State::new(c.ranges.clone())),
    };
    writer.detector(&arch, cfg)?;
    let mut metadata = BTreeMap::new();
    if let Some(calibration) = calibration {
        metadata.insert(
            "int8".into(),
            serde_json::to_string(&calibration.summary())?,
        );
    }
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
    /// The int8 export's ranges and converted values; none for the float export.
    int8: Option<Int8State>,
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
        let features = self.sequence(&arch.trunk, Value::Float(input.pixels.clone()))?;
        let features = match features {
            Value::Float(name) => Value::Float(self.g.rename(&name, STAGES[1])),
            Value::Quant(q) => {
                // The float features (RoI pooling's input) carry the stage's name.
                let float = self.float_of(&Value::Quant(q.clone()));
                let float = self.g.rename(&float, STAGES[1]);
                self.set_float_of(&q, float);
                Value::Quant(q)
            }
        };
        let proposals = self.proposals(arch, cfg, &features, &input)?;
        let (logits, deltas) = self.box_head(arch, cfg, &features, &proposals)?;
        self.detections(cfg, &logits, &deltas, &proposals, &input, arch)
    }
}
