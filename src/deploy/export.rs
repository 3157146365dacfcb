//! `lbwnet export`: a training run's checkpoint → one packed model file.
//!
//! Each quantized weight is quantized once more from the checkpoint's float master weight
//! with the run's own quantizer (the Q(W) every forward of the run used) and stored as its
//! b-bit codes and f32 alpha; every other tensor is stored as f32.
use super::format::{
    encode, InputMeta, LayerMeta, ModelFile, ModelMeta, Provenance, QuantizerMeta, RawTensor,
    ALPHA_SUFFIX, CODES_SUFFIX, FORMAT, FORMAT_VERSION,
};
use crate::config::ExperimentConfig;
use crate::detect::faster_rcnn::FasterRcnn;
use crate::quant::{pack, quantize_codes, storage_bytes, Method, QuantSpec, FLOAT_BITS};
use crate::train::checkpoint;
use crate::train::setup::build_model;
use anyhow::{bail, Context, Result};
use safetensors::tensor::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub checkpoint: PathBuf,
    pub iteration: Option<usize>,
    pub map: Option<f64>,
    pub quantized_layers: usize,
    pub params: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// The sweep table's storage figure for this model.
    pub storage_bytes: u64,
    /// All parameters as f32.
    pub float32_bytes: u64,
}

impl ExportSummary {
    /// File size over the table's storage figure (1 = no overhead).
    pub fn overhead_ratio(&self) -> f64 {
        self.file_bytes as f64 / self.storage_bytes as f64
    }
}

/// The class list a run trained with: the config's, else a COCO-format run's training
/// file's categories, else the data set's `labels.txt` (as `Dataset::open`), else the
/// synthetic data set's shapes when the data set is not at hand, else the 20 VOC classes;
/// and where it came from.
fn run_classes(cfg: &ExperimentConfig) -> Result<(Vec<String>, String)> {
    if let Some(classes) = &cfg.data.classes {
        return Ok((classes.clone(), "key `data.classes`".into()));
    }
    if cfg.data.format == crate::config::DataFormat::Coco {
        // The training file's categories, in id order (as training read them).
        let role = crate::config::SplitRole::Train;
        let json = cfg.data.coco_json(role);
        if json.is_file() {
            let split = crate::data::coco::CocoSplit::read(
                &json,
                &cfg.data.coco_images(role),
                None,
                false,
            )?;
            return Ok((
                split.classes,
                format!("the categories of {}", json.display()),
            ));
        }
    }
    if let Some(classes) = crate::data::voc::read_labels(&cfg.data.root)? {
        let from = cfg.data.root.join(crate::data::voc::LABELS_FILE);
        return Ok((classes, from.display().to_string()));
    }
    // A synthetic data set that is not there (yet) names its classes after its shapes.
    if let Some(synthetic) = &cfg.data.synthetic {
        let classes = synthetic
            .shapes
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        return Ok((classes, "key `data.synthetic.shapes`".into()));
    }
    Ok((
        crate::data::voc::VOC_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        format!(
            "the 20 VOC classes (no {} in {})",
            crate::data::voc::LABELS_FILE,
            cfg.data.root.display()
        ),
    ))
}

/// The checkpoint state belonging to a weights file, when there is one.
fn checkpoint_state(weights: &Path) -> Option<checkpoint::CheckpointState> {
    let state = weights.with_extension("json");
    state
        .is_file()
        .then(|| checkpoint::read_state(&state).ok())
        .flatten()
}

/// The part of a run's `metrics.json` the model file records.
#[derive(serde::Deserialize)]
struct RunMetrics {
    map: f64,
    metric: String,
    iterations: usize,
}

/// A run's model with a checkpoint's weights loaded, and where they came from.
struct LoadedRun {
    cfg: ExperimentConfig,
    /// The checkpoint's weights file.
    weights: PathBuf,
    /// The iteration the checkpoint was saved at, when its state file says.
    iteration: Option<usize>,
    classes: Vec<String>,
    vs: VarStore,
    model: FasterRcnn,
}

/// The tensors a model file stores, with the parameter count and the sweep table's
/// storage figure for them.
struct EncodedTensors {
    tensors: BTreeMap<String, RawTensor>,
    params: u64,
    storage: u64,
}

/// Exports `run_dir`'s latest checkpoint (or `checkpoint`: a state JSON or weights file
/// of that run) to `out`, atomically.
pub fn export_run(run_dir: &Path, checkpoint: Option<&Path>, out: &Path) -> Result<ExportSummary> {
    let (run, meta, encoded) = encode_run(run_dir, checkpoint)?;
    let file_bytes = write_model(&meta, &encoded.tensors, out)?;
    Ok(ExportSummary {
        path: out.to_path_buf(),
        checkpoint: run.weights,
        iteration: run.iteration,
        map: meta.provenance.map,
        quantized_layers: meta.layers.len(),
        params: encoded.params,
        file_bytes,
        storage_bytes: encoded.storage,
        float32_bytes: 4 * encoded.params,
    })
}

/// The model file `export_run` would write, in memory, read back and checked.
pub fn run_model_file(run_dir: &Path, checkpoint: Option<&Path>) -> Result<ModelFile> {
    let (_, meta, encoded) = encode_run(run_dir, checkpoint)?;
    let bytes = encode(&meta, &encoded.tensors)?;
    ModelFile::from_bytes(run_dir, &bytes)
}

/// The run's model as a model file's metadata and tensors.
fn encode_run(
    run_dir: &Path,
    checkpoint: Option<&Path>,
) -> Result<(LoadedRun, ModelMeta, EncodedTensors)> {
    let run = load_run(run_dir, checkpoint)?;
    let metrics = finished_metrics(run_dir, run.iteration);
    let specs = layer_specs(&run.model);
    let variables = run.vs.variables();
    let encoded = encode_tensors(&variables, &specs)?;
    let layers = layer_metas(&run.model, &specs, &variables);
    let meta = model_meta(run_dir, &run, metrics.as_ref(), layers, &encoded)?;
    Ok((run, meta, encoded))
}

/// Reads the run's config, resolves the checkpoint and builds the run's model (on the
/// CPU, for the run's classes) with the checkpoint's weights loaded.
fn load_run(run_dir: &Path, checkpoint: Option<&Path>) -> Result<LoadedRun> {
    let config_path = run_dir.join("config.yaml");
    if !config_path.is_file() {
        bail!(
            "{} is not a training run directory (no config.yaml)",
            run_dir.display()
        );
    }
    let cfg = ExperimentConfig::load(&config_path, &[])?;
    let weights = checkpoint::resolve_weights(checkpoint.unwrap_or(run_dir))?;
    let iteration = checkpoint_state(&weights).map(|s| s.iteration);
    let (classes, classes_from) = run_classes(&cfg)?;
    let (vs, model) = build_model(&cfg, classes.len(), Device::Cpu, false)?;
    checkpoint::load_weights(&weights, &vs).with_context(|| {
        format!(
            "the model was built for {} classes from {classes_from}",
            classes.len()
        )
    })?;
    Ok(LoadedRun {
        cfg,
        weights,
        iteration,
        classes,
        vs,
        model,
    })
}

/// The run's final metrics, when the run finished on the exported checkpoint (its mAP
/// belongs to that checkpoint only); none when missing or unreadable.
fn finished_metrics(run_dir: &Path, iteration: Option<usize>) -> Option<RunMetrics> {
    let metrics: Option<RunMetrics> = std::fs::read_to_string(run_dir.join("metrics.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    metrics.filter(|m| Some(m.iterations) == iteration)
}

/// Each registered layer's quantizer (none for a layer kept in float), by name.
fn layer_specs(model: &FasterRcnn) -> BTreeMap<String, Option<QuantSpec>> {
    model
        .registry
        .with_layers(|layers| layers.iter().map(|l| (l.name.clone(), l.spec)).collect())
}

/// Every variable as the file stores it (see [`encode_variable`]), with the totals.
fn encode_tensors(
    variables: &HashMap<String, Tensor>,
    specs: &BTreeMap<String, Option<QuantSpec>>,
) -> Result<EncodedTensors> {
    let mut encoded = EncodedTensors {
        tensors: BTreeMap::new(),
        params: 0,
        storage: 0,
    };
    for (name, var) in variables {
        encoded.params += var.numel() as u64;
        let spec = specs.get(name).copied().flatten();
        encoded.storage += encode_variable(name, var, spec, &mut encoded.tensors)?;
    }
    Ok(encoded)
}

/// Adds one variable to `tensors`: a quantized weight as its packed b-bit codes and f32
/// alpha (quantized with `spec`), anything else as f32. Returns its storage figure.
fn encode_variable(
    name: &str,
    var: &Tensor,
    spec: Option<QuantSpec>,
    tensors: &mut BTreeMap<String, RawTensor>,
) -> Result<u64> {
    let numel = var.numel() as u64;
    let Some(spec) = spec else {
        let values = f32_values(var)?;
        tensors.insert(name.to_string(), RawTensor::f32(&var.size(), &values));
        return Ok(storage_bytes(numel, FLOAT_BITS));
    };
    let q = tch::no_grad(|| quantize_codes(var, &spec));
    let packed = pack(&q, spec.bits).with_context(|| format!("packing {name}"))?;
    tensors.insert(
        format!("{name}{CODES_SUFFIX}"),
        RawTensor {
            dtype: Dtype::U8,
            shape: vec![packed.data.len()],
            data: packed.data,
        },
    );
    tensors.insert(
        format!("{name}{ALPHA_SUFFIX}"),
        RawTensor::f32(&[], &[packed.alpha]),
    );
    Ok(storage_bytes(numel, spec.bits))
}

/// The quantized layers in registration order: name, weight shape and bits.
fn layer_metas(
    model: &FasterRcnn,
    specs: &BTreeMap<String, Option<QuantSpec>>,
    variables: &HashMap<String, Tensor>,
) -> Vec<LayerMeta> {
    let order: Vec<String> = model
        .registry
        .with_layers(|layers| layers.iter().map(|l| l.name.clone()).collect());
    order
        .into_iter()
        .filter_map(|name| match (specs.get(&name), variables.get(&name)) {
            (Some(Some(spec)), Some(var)) => Some(LayerMeta {
                shape: var.size(),
                bits: spec.bits,
                name,
            }),
            _ => None,
        })
        .collect()
}

/// The file's header: format, the run's config, classes, input and quantizer settings,
/// the quantized layers, provenance and totals (the checksum is filled in by `encode`).
fn model_meta(
    run_dir: &Path,
    run: &LoadedRun,
    metrics: Option<&RunMetrics>,
    layers: Vec<LayerMeta>,
    encoded: &EncodedTensors,
) -> Result<ModelMeta> {
    let cfg = &run.cfg;
    let spec = cfg.quant_spec()?;
    Ok(ModelMeta {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        config: serde_json::to_value(cfg)?,
        classes: run.classes.clone(),
        input: InputMeta {
            normalization: cfg.data.normalization,
            min_size: cfg.data.min_size,
            max_size: cfg.data.max_size,
        },
        quantizer: spec.map(|s| QuantizerMeta {
            method: s.method,
            bits: s.bits,
            c: (s.method == Method::Lbw).then_some(s.c),
            float_first_conv: cfg.quant.float_first_conv,
            float_predictors: cfg.quant.float_predictors,
        }),
        layers,
        provenance: provenance(run_dir, run, metrics),
        params: encoded.params,
        storage_bytes: encoded.storage,
        crc32: 0,
    })
}

/// Where the model came from: the run, the checkpoint's file name and iteration, the
/// run's final mAP when it belongs to this checkpoint, the seed and lbwnet's version.
fn provenance(run_dir: &Path, run: &LoadedRun, metrics: Option<&RunMetrics>) -> Provenance {
    Provenance {
        run: run_dir.display().to_string(),
        checkpoint: run
            .weights
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        iteration: run.iteration,
        map: metrics.map(|m| m.map),
        metric: metrics.map(|m| m.metric.clone()),
        seed: run.cfg.train.seed,
        lbwnet: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Encodes the file and writes it to `out` atomically; returns its size.
fn write_model(meta: &ModelMeta, tensors: &BTreeMap<String, RawTensor>, out: &Path) -> Result<u64> {
    let bytes = encode(meta, tensors)?;
    crate::fsutil::write_atomic(out, &bytes)?;
    Ok(bytes.len() as u64)
}

/// A tensor's values as f32, in row-major order, on the host.
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        &t.detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )?)
}
