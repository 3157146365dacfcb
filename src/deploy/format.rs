//! The packed model file (`.lbw`): a safetensors container whose header carries one
//! metadata entry, `lbwnet`, a JSON object ([`ModelMeta`]) that says what the file holds.
//!
//! Tensors, by the model's VarStore names:
//! - a quantized conv / fc weight `W` is `W.codes` (U8, the b-bit codes packed back to
//!   back as [`crate::quant::packing`] writes them) and `W.alpha` (F32, a scalar);
//!   its shape and bit-width are in the metadata's `layers`;
//! - everything else (biases, norms, layers kept in float) is F32 with its shape.
//!
//! The metadata also holds the format version, the experiment config, the class names,
//! the input normalization and sizes, the quantizer, provenance (run, checkpoint,
//! iteration, mAP) and a CRC-32 over the metadata (with its own `crc32` field zero) and
//! every tensor's name, dtype, shape and bytes (in name order), so a truncated, corrupted
//! or edited file is refused with its name rather than loaded. Version 1 files, whose
//! CRC covered only the tensor bytes, still load, with a warning.
use crate::config::{ExperimentConfig, Normalization};
use crate::detect::architecture::Architecture;
use crate::quant::{LevelSet, Method, PackedTensor, QuantSpec};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// `format` of every lbwnet model file.
pub const FORMAT: &str = "lbwnet-packed";
/// The version this lbwnet writes.
pub const FORMAT_VERSION: u32 = 2;
/// The older version this lbwnet still reads (its checksum covers only the tensor bytes).
pub const LEGACY_FORMAT_VERSION: u32 = 1;
/// The safetensors `__metadata__` key holding [`ModelMeta`] as JSON.
pub const METADATA_KEY: &str = "lbwnet";
/// Suffixes of a quantized weight's two tensors.
pub const CODES_SUFFIX: &str = ".codes";
pub const ALPHA_SUFFIX: &str = ".alpha";

/// What a model file says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    /// Always [`FORMAT`].
    pub format: String,
    pub format_version: u32,
    /// The experiment config the model was trained with (JSON; `model.*` builds it).
    pub config: serde_json::Value,
    /// Class names, in label order (label `i + 1` is `classes[i]`; 0 is background).
    pub classes: Vec<String>,
    /// How an image becomes the network's input.
    pub input: InputMeta,
    /// The weights' quantizer; none for a float model.
    pub quantizer: Option<QuantizerMeta>,
    /// The quantized conv / fc weights, in the model's registration order.
    pub layers: Vec<LayerMeta>,
    pub provenance: Provenance,
    /// Parameters of the model (quantized and float).
    pub params: u64,
    /// Weight storage as the sweep table counts it: b-bit codes plus an f32 alpha per
    /// quantized layer, f32 for the rest.
    pub storage_bytes: u64,
    /// [`checksum`] of the file (version 1: [`legacy_checksum`]).
    pub crc32: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct InputMeta {
    pub normalization: Normalization,
    /// Shorter side after resizing.
    pub min_size: u32,
    /// Cap on the longer side after resizing.
    pub max_size: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct QuantizerMeta {
    pub method: Method,
    pub bits: u32,
    /// LBW's free parameter (none for the other methods).
    pub c: Option<f64>,
    pub float_first_conv: bool,
    pub float_predictors: bool,
}

impl QuantizerMeta {
    /// The level set a layer of `bits` bits decodes to.
    pub fn levels(&self, bits: u32) -> Result<LevelSet> {
        ensure!(
            (2..=8).contains(&bits),
            "a quantized layer has {bits} bits; 2..=8 are possible"
        );
        Ok(QuantSpec {
            method: self.method,
            bits,
            c: self.c.unwrap_or(1.0),
        }
        .levels())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerMeta {
    pub name: String,
    pub shape: Vec<i64>,
    pub bits: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// The run directory as given to `lbwnet export`.
    pub run: String,
    /// The checkpoint's weights file name.
    pub checkpoint: String,
    /// Iterations the checkpoint had trained (none when no state file was found).
    pub iteration: Option<usize>,
    /// The run's mAP (`metrics.json`), when it was measured on this checkpoint.
    pub map: Option<f64>,
    /// The metric of `map` (`voc07`, `area`, `coco`).
    pub metric: Option<String>,
    pub seed: u64,
    /// The lbwnet version that exported the file.
    pub lbwnet: String,
}

/// One tensor of the file, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(shape: &[i64], values: &[f32]) -> Self {
        RawTensor {
            dtype: Dtype::F32,
            shape: shape.iter().map(|&d| d as usize).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of an F32 tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        ensure!(
            self.dtype == Dtype::F32,
            "expected F32, found {:?}",
            self.dtype
        );
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Version 1's CRC-32: the tensors' bytes in name order (a BTreeMap iterates sorted).
pub fn legacy_checksum(tensors: &BTreeMap<String, RawTensor>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for tensor in tensors.values() {
        hasher.update(&tensor.data);
    }
    hasher.finalize()
}

/// The CRC-32 a file stores: its metadata as JSON with `crc32` set to 0 (the key keeps its
/// place), then per tensor in name order its name, dtype, shape and bytes. `metadata` is
/// the JSON as written or as parsed back; both serialize to the same text.
pub fn checksum(
    metadata: &serde_json::Value,
    tensors: &BTreeMap<String, RawTensor>,
) -> Result<u32> {
    let mut metadata = metadata.clone();
    let fields = metadata
        .as_object_mut()
        .context("the lbwnet metadata is not a JSON object")?;
    fields.insert("crc32".into(), 0.into());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&serde_json::to_vec(&metadata)?);
    for (name, tensor) in tensors {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(format!("{:?}", tensor.dtype).as_bytes());
        hasher.update(&(tensor.shape.len() as u64).to_le_bytes());
        for &d in &tensor.shape {
            hasher.update(&(d as u64).to_le_bytes());
        }
        hasher.update(&tensor.data);
    }
    Ok(hasher.finalize())
}

/// The file's bytes: the safetensors container of `tensors` with `meta` (whose `crc32`
/// is filled in here).
pub fn encode(meta: &ModelMeta, tensors: &BTreeMap<String, RawTensor>) -> Result<Vec<u8>> {
    let mut meta = meta.clone();
    meta.crc32 = checksum(&serde_json::to_value(&meta)?, tensors)?;
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|view| (name.clone(), view))
                .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(&meta)?)]);
    safetensors::tensor::serialize(views, &Some(info)).context("serializing the model")
}

/// A model file read and checked: its metadata and every tensor.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub path: PathBuf,
    pub meta: ModelMeta,
    pub tensors: BTreeMap<String, RawTensor>,
    /// Size of the whole file.
    pub file_bytes: u64,
    /// Size of the header (length prefix and JSON, metadata included).
    pub header_bytes: u64,
}

impl ModelFile {
    /// Reads and checks `path`. Every error names the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading model file {}", path.display()))?;
        Self::from_bytes(path, &bytes)
    }

    /// Checks the bytes of a model file; errors name `path` (where they came from).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::parse(path, bytes).with_context(|| format!("model file {}", path.display()))
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let container = SafeTensors::deserialize(bytes).map_err(|e| {
            anyhow::anyhow!(
                "not a readable lbwnet model: the safetensors container is truncated or corrupted ({e:?})"
            )
        })?;
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("unreadable header ({e:?})"))?;
        let text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .context(
                "a safetensors file without lbwnet metadata (a training checkpoint? export one with `lbwnet export`)",
            )?;
        let value: serde_json::Value =
            serde_json::from_str(text).context("its lbwnet metadata is not valid JSON")?;
        let format = value.get("format").and_then(|v| v.as_str());
        ensure!(
            format == Some(FORMAT),
            "format {format:?} is not `{FORMAT}`"
        );
        let version = value.get("format_version").and_then(|v| v.as_u64());
        let legacy = match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => false,
            Some(v) if v == u64::from(LEGACY_FORMAT_VERSION) => true,
            Some(v) => bail!(
                "unknown format version {v}: this lbwnet reads versions {LEGACY_FORMAT_VERSION} and {FORMAT_VERSION} (export the model again, or use the lbwnet that wrote it)"
            ),
            None => bail!("the metadata has no format_version"),
        };
        let meta: ModelMeta =
            serde_json::from_value(value.clone()).context("its lbwnet metadata is incomplete")?;
        let tensors: BTreeMap<String, RawTensor> = container
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let tensor = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                (name, tensor)
            })
            .collect();
        if legacy {
            let crc = legacy_checksum(&tensors);
            ensure!(
                crc == meta.crc32,
                "corrupted: the tensor data's checksum is {crc:08x}, the header says {:08x}",
                meta.crc32
            );
            tracing::warn!(
                "model file {}: format version {LEGACY_FORMAT_VERSION}, whose checksum does not cover the metadata (an edit to it goes unnoticed); `lbwnet export` writes version {FORMAT_VERSION}",
                path.display()
            );
        } else {
            let crc = checksum(&value, &tensors)?;
            ensure!(
                crc == meta.crc32,
                "corrupted: the checksum of the metadata and tensors is {crc:08x}, the header says {:08x}",
                meta.crc32
            );
        }
        // The input sizes decide how large every decoded image becomes: the config's bounds.
        let input = meta.input;
        ensure!(
            (1..=crate::config::MAX_IMAGE_SIDE).contains(&input.min_size)
                && (input.min_size..=crate::config::MAX_IMAGE_SIDE).contains(&input.max_size),
            "the metadata's input sizes {} / {} are not allowed: need 1 <= min_size <= max_size <= {}",
            input.min_size,
            input.max_size,
            crate::config::MAX_IMAGE_SIDE
        );
        // Class names name the comp4 files `eval --model` writes.
        for class in &meta.classes {
            crate::fsutil::check_name(class).context("a class name in the metadata")?;
        }
        let file = ModelFile {
            path: path.to_path_buf(),
            meta,
            tensors,
            file_bytes: bytes.len() as u64,
            header_bytes: 8 + header_len as u64,
        };
        file.check_layers()?;
        file.check_architecture(&file.config(&[])?)?;
        Ok(file)
    }

    /// The tensors are exactly the parameters of the model `cfg` describes, shape for
    /// shape, with the same weights quantized: derived from the config without building
    /// the model, so a config cannot size an allocation that the file's tensors do not back.
    pub fn check_architecture(&self, cfg: &ExperimentConfig) -> Result<()> {
        let arch = Architecture::of(cfg, self.meta.classes.len())
            .context("the model its config describes")?;
        arch.parameter_count()
            .context("the model its config describes")?;
        let mut stored: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        let mut packed = std::collections::HashSet::new();
        for layer in &self.meta.layers {
            stored.insert(&layer.name, layer.shape.clone());
            packed.insert(format!("{}{CODES_SUFFIX}", layer.name));
            packed.insert(format!("{}{ALPHA_SUFFIX}", layer.name));
        }
        for (name, tensor) in &self.tensors {
            if !packed.contains(name) {
                let shape = tensor.shape.iter().map(|&d| d as i64).collect();
                stored.insert(name, shape);
            }
        }
        let described = arch.parameters();
        for (name, shape) in &described {
            match stored.remove(name.as_str()) {
                Some(found) if found == *shape => {}
                Some(found) => bail!(
                    "tensor {name} has shape {found:?}; the model its config describes ({:?} backbone) has {shape:?}",
                    cfg.model.backbone
                ),
                None => bail!(
                    "no tensor for parameter {name} of the model its config describes ({:?} backbone)",
                    cfg.model.backbone
                ),
            }
        }
        if let Some(name) = stored.keys().next() {
            bail!(
                "tensor {name} is not a parameter of the model its config describes ({:?} backbone)",
                cfg.model.backbone
            );
        }
        let mut quantized: Vec<&str> = self.meta.layers.iter().map(|l| l.name.as_str()).collect();
        let mut expected = arch.quantized_weights();
        quantized.sort_unstable();
        expected.sort_unstable();
        ensure!(
            quantized == expected,
            "the quantized layers {quantized:?} are not those of the config's quantizer ({expected:?})"
        );
        Ok(())
    }

    /// Every quantized layer has its codes and alpha, of the sizes its shape and bits need.
    fn check_layers(&self) -> Result<()> {
        if !self.meta.layers.is_empty() {
            ensure!(
                self.meta.quantizer.is_some(),
                "quantized layers but no quantizer in the metadata"
            );
        }
        let mut params = 0u64;
        let mut quantized_tensors = std::collections::HashSet::new();
        for layer in &self.meta.layers {
            let packed = self.packed(layer)?;
            params += packed.shape.iter().map(|&d| d as u64).product::<u64>();
            quantized_tensors.insert(format!("{}{CODES_SUFFIX}", layer.name));
            quantized_tensors.insert(format!("{}{ALPHA_SUFFIX}", layer.name));
        }
        // Every other tensor is a float variable; their sizes are bounded by the file's.
        for (name, tensor) in &self.tensors {
            if !quantized_tensors.contains(name) {
                params += tensor.shape.iter().map(|&d| d as u64).product::<u64>();
            }
        }
        ensure!(
            self.meta.params == params,
            "the metadata counts {} parameters, the tensors hold {params}",
            self.meta.params
        );
        Ok(())
    }

    /// The experiment config, with `--set` overrides applied.
    pub fn config(&self, overrides: &[String]) -> Result<ExperimentConfig> {
        let text = serde_json::to_string(&self.meta.config)?;
        ExperimentConfig::from_yaml_str(&text, overrides, &self.path)
    }

    fn tensor(&self, name: &str) -> Result<&RawTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing"))
    }

    /// A quantized layer's codes and alpha.
    pub fn packed(&self, layer: &LayerMeta) -> Result<PackedTensor> {
        let quantizer = self
            .meta
            .quantizer
            .context("quantized layers but no quantizer in the metadata")?;
        let levels = quantizer
            .levels(layer.bits)
            .with_context(|| format!("layer {}", layer.name))?;
        let codes = self.tensor(&format!("{}{CODES_SUFFIX}", layer.name))?;
        let alpha = self.tensor(&format!("{}{ALPHA_SUFFIX}", layer.name))?;
        ensure!(
            codes.dtype == Dtype::U8 && codes.shape.len() == 1,
            "tensor {}{CODES_SUFFIX} is not a U8 vector",
            layer.name
        );
        let alpha = alpha
            .to_f32()
            .ok()
            .filter(|v| v.len() == 1 && alpha.shape.is_empty())
            .with_context(|| format!("tensor {}{ALPHA_SUFFIX} is not an F32 scalar", layer.name))?
            [0];
        ensure!(
            alpha.is_finite() && alpha >= 0.0,
            "layer {}: alpha {alpha} is not a finite non-negative number",
            layer.name
        );
        ensure!(
            layer.shape.iter().all(|&d| d >= 0),
            "layer {}: shape {:?} has a negative dimension",
            layer.name,
            layer.shape
        );
        let numel = layer
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .with_context(|| {
                format!("layer {}: shape {:?} is too large", layer.name, layer.shape)
            })?;
        let expected = numel
            .checked_mul(u64::from(layer.bits))
            .with_context(|| format!("layer {}: shape {:?} is too large", layer.name, layer.shape))?
            .div_ceil(8);
        ensure!(
            codes.data.len() as u64 == expected,
            "layer {}: {} bytes of codes, {expected} expected for shape {:?} at {} bits",
            layer.name,
            codes.data.len(),
            layer.shape,
            layer.bits
        );
        Ok(PackedTensor {
            shape: layer.shape.clone(),
            bits: layer.bits,
            levels,
            alpha,
            data: codes.data.clone(),
        })
    }

    /// Bytes of tensor data (the file less its header).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data.len() as u64).sum()
    }
}
