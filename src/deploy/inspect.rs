//! `lbwnet inspect`: what a model file holds, per layer and in total.
use super::format::{InputMeta, ModelFile, Provenance, QuantizerMeta};
use crate::quant::unpack;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One conv / fc weight.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: Vec<i64>,
    pub numel: u64,
    /// 32 for a weight kept in float.
    pub bits: u32,
    /// None for a float weight.
    pub alpha: Option<f32>,
    pub nonzero_fraction: f64,
    /// Weights per code magnitude `|q|`, from 0 up to the largest level (empty for
    /// float).
    pub level_counts: Vec<u64>,
    /// Bytes of its tensors in the file (codes and alpha, or f32 values).
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub path: PathBuf,
    pub format_version: u32,
    pub classes: Vec<String>,
    pub input: InputMeta,
    pub quantizer: Option<QuantizerMeta>,
    pub provenance: Provenance,
    /// Quantized weights first (registration order), then float conv / fc weights.
    pub layers: Vec<LayerReport>,
    /// Biases, norms and other float tensors that are not conv / fc weights.
    pub other_float_tensors: usize,
    pub other_float_params: u64,
    pub params: u64,
    pub tensor_bytes: u64,
    /// Length prefix and JSON header, metadata included.
    pub header_bytes: u64,
    pub file_bytes: u64,
    /// Every parameter as f32.
    pub float32_bytes: u64,
    /// `float32_bytes / file_bytes`.
    pub compression: f64,
    /// The sweep table's storage figure for the model.
    pub storage_bytes: u64,
    /// `file_bytes / storage_bytes`.
    pub file_vs_storage: f64,
}

/// Reads every layer of `file` (the codes are decoded for the histograms).
pub fn inspect(file: &ModelFile) -> Result<InspectReport> {
    let mut layers = Vec::new();
    let mut quantized_names = std::collections::HashSet::new();
    for layer in &file.meta.layers {
        let packed = file.packed(layer)?;
        let q = unpack(&packed).with_context(|| format!("decoding layer {}", layer.name))?;
        let numel = q.codes.numel() as u64;
        quantized_names.insert(format!("{}{}", layer.name, super::format::CODES_SUFFIX));
        quantized_names.insert(format!("{}{}", layer.name, super::format::ALPHA_SUFFIX));
        layers.push(LayerReport {
            name: layer.name.clone(),
            shape: layer.shape.clone(),
            numel,
            bits: layer.bits,
            alpha: Some(packed.alpha),
            nonzero_fraction: q.nonzero_fraction(),
            level_counts: q.level_counts(),
            bytes: packed.storage_bytes(),
        });
    }
    let (mut other_tensors, mut other_params) = (0, 0u64);
    for (name, tensor) in &file.tensors {
        if quantized_names.contains(name) {
            continue;
        }
        let numel = tensor.shape.iter().product::<usize>() as u64;
        if name.ends_with(".weight") && tensor.shape.len() >= 2 {
            let values = tensor.to_f32().with_context(|| format!("tensor {name}"))?;
            let nonzero = values.iter().filter(|v| **v != 0.0).count();
            layers.push(LayerReport {
                name: name.clone(),
                shape: tensor.shape.iter().map(|&d| d as i64).collect(),
                numel,
                bits: crate::quant::FLOAT_BITS,
                alpha: None,
                nonzero_fraction: if numel == 0 {
                    0.0
                } else {
                    nonzero as f64 / numel as f64
                },
                level_counts: Vec::new(),
                bytes: tensor.data.len() as u64,
            });
        } else {
            other_tensors += 1;
            other_params += numel;
        }
    }
    let params = file.meta.params;
    let float32_bytes = 4 * params;
    Ok(InspectReport {
        path: file.path.clone(),
        format_version: file.meta.format_version,
        classes: file.meta.classes.clone(),
        input: file.meta.input,
        quantizer: file.meta.quantizer,
        provenance: file.meta.provenance.clone(),
        layers,
        other_float_tensors: other_tensors,
        other_float_params: other_params,
        params,
        tensor_bytes: file.tensor_bytes(),
        header_bytes: file.header_bytes,
        file_bytes: file.file_bytes,
        float32_bytes,
        compression: float32_bytes as f64 / file.file_bytes as f64,
        storage_bytes: file.meta.storage_bytes,
        file_vs_storage: file.file_bytes as f64 / file.meta.storage_bytes as f64,
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.2} MB", bytes as f64 / 1e6)
    } else if bytes >= 1_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{bytes} B")
    }
}

impl InspectReport {
    /// The report as Markdown: a summary, one table row per layer, and the totals.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("# {}\n\n", self.path.display());
        let _ = writeln!(out, "- format version {}", self.format_version);
        match &self.quantizer {
            Some(q) => {
                let c = q.c.map(|c| format!(", c = {c}")).unwrap_or_default();
                let _ = writeln!(out, "- quantizer: {} {} bits{c}", q.method, q.bits);
            }
            None => {
                let _ = writeln!(out, "- quantizer: none (float model)");
            }
        }
        let p = &self.provenance;
        let _ = writeln!(
            out,
            "- from run {} ({}, iteration {}, seed {}), mAP {}",
            p.run,
            p.checkpoint,
            p.iteration
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into()),
            p.seed,
            match (&p.map, &p.metric) {
                (Some(map), Some(metric)) => format!("{map:.4} ({metric})"),
                _ => "not measured on this checkpoint".into(),
            }
        );
        let _ = writeln!(
            out,
            "- {} classes: {}",
            self.classes.len(),
            self.classes.join(" ")
        );
        let _ = writeln!(
            out,
            "- input: shorter side {}, longer side at most {}, {:?} normalization\n",
            self.input.min_size, self.input.max_size, self.input.normalization
        );
        out.push_str(
            "| layer | shape | bits | alpha | nonzero | weights per level (q = 0, ±smallest, ..., ±1) | bytes |\n\
             |:--|:--|--:|--:|--:|:--|--:|\n",
        );
        for l in &self.layers {
            let shape = l
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x");
            let alpha = l.alpha.map(|a| format!("{a:.4e}")).unwrap_or("-".into());
            let levels = if l.level_counts.is_empty() {
                "-".to_string()
            } else {
                l.level_counts
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "| {} | {shape} | {} | {alpha} | {:.3} | {levels} | {} |",
                l.name, l.bits, l.nonzero_fraction, l.bytes
            );
        }
        let _ = writeln!(
            out,
            "| other float tensors (biases, norms): {} | {} params | 32 | - | - | - | {} |",
            self.other_float_tensors,
            self.other_float_params,
            4 * self.other_float_params
        );
        let _ = write!(
            out,
            "\n- parameters: {}\n- tensor data {} + header {} = file {} ({} bytes)\n\
             - float32: {} ({:.2}x the file)\n\
             - the sweep table's storage figure: {} (file / figure = {:.4})\n",
            self.params,
            human(self.tensor_bytes),
            human(self.header_bytes),
            human(self.file_bytes),
            self.file_bytes,
            human(self.float32_bytes),
            self.compression,
            human(self.storage_bytes),
            self.file_vs_storage
        );
        out
    }
}
