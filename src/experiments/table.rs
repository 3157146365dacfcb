//! One row per sweep cell: mAP, its difference to float, weight storage and compression,
//! and how far the cell's quantizer is from the exact optimum on the trained weights.
use crate::config::ExperimentConfig;
use crate::quant::{packing::storage_bytes, quantize, Method, QuantSpec};
use crate::train::checkpoint;
use crate::train::trainer::build_model;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    /// 32 for the float model.
    pub bits: u32,
    /// `float`, `lbw`, `ternary`, ...
    pub method: String,
    pub c: Option<f64>,
    pub map: f64,
    /// mAP minus the retrained float model's (0 for the float row).
    pub delta_map: f64,
    /// Bytes of all weights: b-bit codes plus one f32 alpha per quantized layer, f32 for
    /// everything kept in float (biases, norms, float layers).
    pub storage_bytes: u64,
    /// The float model's bytes divided by this row's.
    pub compression: f64,
    /// Mean over quantized layers of this quantizer's squared error divided by the exact
    /// optimum's, on the trained master weights (1 = optimal); none for float.
    pub error_vs_exact: Option<f64>,
    pub iterations: usize,
    pub train_seconds: f64,
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepTable {
    pub sweep: String,
    pub quick: bool,
    /// mAP and length of the float training every row was retrained from.
    pub initial_float_map: f64,
    pub initial_float_iterations: usize,
    /// The retrained float row first, then the cells in sweep order.
    pub rows: Vec<SweepRow>,
    /// Wall-clock seconds of the sweep command that wrote this table.
    pub seconds: f64,
}

#[derive(Deserialize)]
struct RunMetrics {
    map: f64,
    iterations: usize,
    train_seconds: f64,
}

/// Reads a finished run and measures its storage and quantizer error.
pub fn measure_cell(cfg: &ExperimentConfig, float_map: Option<f64>) -> Result<SweepRow> {
    let run_dir = cfg.run_dir();
    let metrics_path = run_dir.join("metrics.json");
    let metrics: RunMetrics = serde_json::from_str(
        &std::fs::read_to_string(&metrics_path)
            .with_context(|| format!("reading {}", metrics_path.display()))?,
    )
    .with_context(|| format!("{} is not a metrics file", metrics_path.display()))?;

    let classes = crate::data::voc::VocDataset::open(
        &cfg.data.root,
        &cfg.data.test_split,
        cfg.data.classes.as_deref(),
    )?
    .classes
    .len();
    let (vs, model) = build_model(cfg, classes, Device::Cpu, false)?;
    checkpoint::load_weights(&checkpoint::resolve_weights(&run_dir)?, &vs)?;

    let spec = cfg.quant_spec()?;
    let total_params: i64 = vs
        .variables()
        .values()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();
    let mut storage: u64 = 0;
    let mut quantized_params: i64 = 0;
    let mut ratios = Vec::new();
    model.registry.with_layers(|layers| -> Result<()> {
        for layer in layers {
            let Some(layer_spec) = layer.spec else {
                continue;
            };
            let numel = layer.weight.numel() as i64;
            quantized_params += numel;
            storage += storage_bytes(numel as u64, layer_spec.bits);
            let error = |s: &QuantSpec| -> f64 {
                tch::no_grad(|| {
                    (quantize(&layer.weight, s) - &layer.weight)
                        .square()
                        .mean(Kind::Double)
                        .double_value(&[])
                })
            };
            let optimum = error(&QuantSpec {
                method: Method::Exact,
                ..layer_spec
            });
            let own = error(&layer_spec);
            ratios.push(if optimum > 0.0 { own / optimum } else { 1.0 });
        }
        Ok(())
    })?;
    storage += 4 * (total_params - quantized_params) as u64;
    let float_bytes = 4 * total_params as u64;
    Ok(SweepRow {
        bits: cfg.quant.bits,
        method: spec
            .map(|s| s.method.name().to_string())
            .unwrap_or_else(|| "float".into()),
        c: spec.filter(|s| s.method == Method::Lbw).map(|s| s.c),
        map: metrics.map,
        delta_map: float_map.map(|f| metrics.map - f).unwrap_or(0.0),
        storage_bytes: storage,
        compression: float_bytes as f64 / storage as f64,
        error_vs_exact: (!ratios.is_empty())
            .then(|| ratios.iter().sum::<f64>() / ratios.len() as f64),
        iterations: metrics.iterations,
        train_seconds: metrics.train_seconds,
        run_dir,
    })
}

fn format_c(c: Option<f64>) -> String {
    c.map(|c| format!("{c}")).unwrap_or_else(|| "-".into())
}

fn format_bytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

impl SweepTable {
    /// Every cell, in sweep order.
    /// Which training every row had, for the tables' preambles.
    fn provenance(&self) -> String {
        format!(
            "Every row, the 32-bit one included, was retrained {} iterations from one float model \
             trained {} iterations (mAP {:.4}); Δ is against the retrained 32-bit row.\n\n",
            self.rows.first().map_or(0, |r| r.iterations),
            self.initial_float_iterations,
            self.initial_float_map
        )
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# Sweep `{}`{}\n\n{}| bits | method | c | mAP | Δ vs float | weights | compression | error / exact | iters | train s |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.sweep,
            if self.quick { " (quick smoke run: numbers are not meaningful)" } else { "" },
            self.provenance()
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {:.4} | {:+.4} | {} | {:.2}x | {} | {} | {:.0} |\n",
                r.bits,
                r.method,
                format_c(r.c),
                r.map,
                r.delta_map,
                format_bytes(r.storage_bytes),
                r.compression,
                r.error_vs_exact
                    .map(|e| format!("{e:.3}"))
                    .unwrap_or_else(|| "-".into()),
                r.iterations,
                r.train_seconds
            );
        }
        out
    }

    /// The best row per bit-width (highest mAP; the first on ties), float first, then
    /// bit-widths descending: the paper's table.
    pub fn best_per_bits(&self) -> Vec<&SweepRow> {
        let mut bits: Vec<u32> = self.rows.iter().map(|r| r.bits).collect();
        bits.sort_unstable_by(|a, b| b.cmp(a));
        bits.dedup();
        bits.iter()
            .filter_map(|&b| {
                self.rows
                    .iter()
                    .filter(|r| r.bits == b)
                    .fold(None, |best: Option<&SweepRow>, r| match best {
                        Some(x) if x.map >= r.map => Some(x),
                        _ => Some(r),
                    })
            })
            .collect()
    }

    pub fn paper_table_markdown(&self) -> String {
        let mut out = format!(
            "# LBW-Net table (sweep `{}`{})\n\n{}| bits | method | best c | mAP | Δ vs 32-bit | weights | compression |\n|---:|---|---:|---:|---:|---:|---:|\n",
            self.sweep,
            if self.quick { ", quick smoke run" } else { "" },
            self.provenance()
        );
        for r in self.best_per_bits() {
            out += &format!(
                "| {} | {} | {} | {:.4} | {:+.4} | {} | {:.2}x |\n",
                r.bits,
                r.method,
                format_c(r.c),
                r.map,
                r.delta_map,
                format_bytes(r.storage_bytes),
                r.compression
            );
        }
        out
    }
}
