//! `lbwnet export`: a training run's checkpoint → one packed model file.
//!
//! Each quantized weight is quantized once more from the checkpoint's float master weight
//! with the run's own quantizer (the Q(W) every forward of the run used) and stored as its
//! b-bit codes and f32 alpha; every other tensor is stored as f32.
use super::format::{
    encode, InputMeta, LayerMeta, ModelMeta, Provenance, QuantizerMeta, RawTensor, ALPHA_SUFFIX,
    CODES_SUFFIX, FORMAT, FORMAT_VERSION,
};
use crate::config::ExperimentConfig;
use crate::quant::{pack, quantize_codes, storage_bytes, Method, FLOAT_BITS};
use crate::train::checkpoint;
use crate::train::setup::build_model;
use anyhow::{bail, Context, Result};
use safetensors::tensor::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// The class list a run trained with: the config's, else the data set's `labels.txt`
/// (as `VocDataset::open`), else the synthetic data set's shapes when the data set is not
/// at hand, else the 20 VOC classes; and where it came from.
fn run_classes(cfg: &ExperimentConfig) -> Result<(Vec<String>, String)> {
    if let Some(classes) = &cfg.data.classes {
        return Ok((classes.clone(), "key `data.classes`".into()));
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

#[derive(serde::Deserialize)]
struct RunMetrics {
    map: f64,
    metric: String,
    iterations: usize,
}

/// Exports `run_dir`'s latest checkpoint (or `checkpoint`: a state JSON or weights file
/// of that run) to `out`, atomically.
pub fn export_run(run_dir: &Path, checkpoint: Option<&Path>, out: &Path) -> Result<ExportSummary> {
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

    // The run's mAP belongs to this checkpoint only if the run finished on it.
    let metrics: Option<RunMetrics> = std::fs::read_to_string(run_dir.join("metrics.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let metrics = metrics.filter(|m| Some(m.iterations) == iteration);

    let specs: BTreeMap<String, Option<crate::quant::QuantSpec>> = model
        .registry
        .with_layers(|layers| layers.iter().map(|l| (l.name.clone(), l.spec)).collect());
    let order: Vec<String> = model
        .registry
        .with_layers(|layers| layers.iter().map(|l| l.name.clone()).collect());
    let mut tensors = BTreeMap::new();
    let mut layers = Vec::new();
    let mut params = 0u64;
    let mut storage = 0u64;
    let variables = vs.variables();
    for (name, var) in &variables {
        let numel = var.numel() as u64;
        params += numel;
        match specs.get(name).copied().flatten() {
            Some(spec) => {
                let q = tch::no_grad(|| quantize_codes(var, &spec));
                let packed = pack(&q, spec.bits).with_context(|| format!("packing {name}"))?;
                storage += storage_bytes(numel, spec.bits);
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
            }
            None => {
                storage += storage_bytes(numel, FLOAT_BITS);
                let values = f32_values(var)?;
                tensors.insert(name.clone(), RawTensor::f32(&var.size(), &values));
            }
        }
    }
    for name in &order {
        if let (Some(Some(spec)), Some(var)) = (specs.get(name), variables.get(name)) {
            layers.push(LayerMeta {
                name: name.clone(),
                shape: var.size(),
                bits: spec.bits,
            });
        }
    }
    let spec = cfg.quant_spec()?;
    let meta = ModelMeta {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        config: serde_json::to_value(&cfg)?,
        classes,
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
        provenance: Provenance {
            run: run_dir.display().to_string(),
            checkpoint: weights
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            iteration,
            map: metrics.as_ref().map(|m| m.map),
            metric: metrics.as_ref().map(|m| m.metric.clone()),
            seed: cfg.train.seed,
            lbwnet: env!("CARGO_PKG_VERSION").into(),
        },
        params,
        storage_bytes: storage,
        crc32: 0,
    };
    let bytes = encode(&meta, &tensors)?;
    crate::fsutil::write_atomic(out, &bytes)?;
    Ok(ExportSummary {
        path: out.to_path_buf(),
        checkpoint: weights,
        iteration,
        map: meta.provenance.map,
        quantized_layers: meta.layers.len(),
        params,
        file_bytes: bytes.len() as u64,
        storage_bytes: storage,
        float32_bytes: 4 * params,
    })
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
