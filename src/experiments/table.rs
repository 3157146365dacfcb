//! The sweep's table: one row per (bits, method, c), aggregated over seeds. Each row gives
//! every seed's mAP, their mean, sample standard deviation and 95% Student-t interval, the
//! difference to the float model paired per seed (each seed's cell minus the same seed's
//! float row) with its own interval, AP@[.5:.95], weight storage and compression, and how
//! far the cell's quantizer is from the exact optimum on the trained weights.
use crate::config::ExperimentConfig;
use crate::experiments::stats::SeedSummary;
use crate::quant::error::mean_squared_error;
use crate::quant::{packing::storage_bytes, quantize, Method, QuantSpec};
use crate::train::checkpoint;
use crate::train::curves::CURVES_FILE;
use crate::train::setup::build_model;
use crate::train::trainer::Timing;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// What one finished run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeasure {
    /// 32 for the float model.
    pub bits: u32,
    /// `float`, `lbw`, `ternary`, ...
    pub method: String,
    pub c: Option<f64>,
    pub seed: u64,
    /// The configured metric's mAP (`eval.metric`).
    pub map: f64,
    /// COCO-style AP@[.5:.95].
    pub coco_ap: f64,
    /// Bytes of all weights: b-bit codes plus one f32 alpha per quantized layer, f32 for
    /// everything kept in float (biases, norms, float layers).
    pub storage_bytes: u64,
    /// The float model's bytes divided by this run's.
    pub compression: f64,
    /// Mean over quantized layers of this quantizer's squared error divided by the exact
    /// optimum's, on the trained master weights (1 = optimal); none for float.
    pub error_vs_exact: Option<f64>,
    pub iterations: usize,
    pub train_seconds: f64,
    pub run_dir: PathBuf,
}

/// One cell of the sweep over all its seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    pub bits: u32,
    pub method: String,
    pub c: Option<f64>,
    /// The seeds, in the order of every per-seed list below.
    pub seeds: Vec<u64>,
    pub maps: Vec<f64>,
    /// Mean mAP over seeds.
    pub map: f64,
    /// Sample standard deviation over seeds (none with one seed).
    pub map_std: Option<f64>,
    pub map_ci95: Option<[f64; 2]>,
    /// Per seed: this cell's mAP minus the float row's of the same seed.
    pub delta_maps: Vec<f64>,
    /// Mean of `delta_maps`.
    pub delta_map: f64,
    pub delta_ci95: Option<[f64; 2]>,
    /// The Δ interval excludes 0.
    pub delta_significant: bool,
    /// AP@[.5:.95] per seed, mean and interval.
    pub coco_aps: Vec<f64>,
    pub coco_ap: f64,
    pub coco_ap_ci95: Option<[f64; 2]>,
    /// AP@[.5:.95] minus the float row's, paired per seed.
    pub delta_coco_ap: f64,
    pub delta_coco_ap_ci95: Option<[f64; 2]>,
    pub storage_bytes: u64,
    pub compression: f64,
    /// Mean over seeds of the per-run quantizer error ratio.
    pub error_vs_exact: Option<f64>,
    pub iterations: usize,
    /// Mean training seconds per seed.
    pub train_seconds: f64,
    pub run_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepTable {
    pub sweep: String,
    pub quick: bool,
    pub seeds: Vec<u64>,
    /// mAP per seed and length of the float training every row was retrained from.
    pub initial_float_maps: Vec<f64>,
    pub initial_float_iterations: usize,
    /// The retrained float row first, then the cells in sweep order.
    pub rows: Vec<SweepRow>,
    /// Jobs that had not finished when this table was written; rows average the seeds
    /// that did.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Wall-clock seconds of the sweep command that wrote this table.
    pub seconds: f64,
}

#[derive(Deserialize)]
struct RunMetrics {
    map: f64,
    iterations: usize,
    coco: Option<CocoAp>,
}

#[derive(Deserialize)]
struct CocoAp {
    ap: f64,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// Reads a finished run and measures its storage and quantizer error.
pub fn measure_run(cfg: &ExperimentConfig) -> Result<RunMeasure> {
    let run_dir = cfg.run_dir();
    let metrics_path = run_dir.join("metrics.json");
    let metrics: RunMetrics = read_json(&metrics_path)?;
    let Some(coco) = metrics.coco else {
        bail!(
            "{} has no `coco` metrics (written by an older lbwnet); delete the run to retrain it",
            metrics_path.display()
        );
    };
    // Wall-clock figures are informative only; a run copied without them still counts.
    let train_seconds = read_json::<Timing>(&run_dir.join("timing.json"))
        .map(|t| t.train_seconds)
        .unwrap_or(0.0);

    let classes = crate::data::Dataset::from_config(
        &cfg.data,
        crate::config::SplitRole::Test,
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
                tch::no_grad(|| mean_squared_error(&quantize(&layer.weight, s), &layer.weight))
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
    Ok(RunMeasure {
        bits: cfg.quant.bits,
        method: spec
            .map(|s| s.method.name().to_string())
            .unwrap_or_else(|| "float".into()),
        c: spec.filter(|s| s.method == Method::Lbw).map(|s| s.c),
        seed: cfg.train.seed,
        map: metrics.map,
        coco_ap: coco.ap,
        storage_bytes: storage,
        compression: float_bytes as f64 / storage as f64,
        error_vs_exact: (!ratios.is_empty()).then(|| mean(&ratios)),
        iterations: metrics.iterations,
        train_seconds,
        run_dir,
    })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

impl SweepRow {
    /// Aggregates one cell's runs (one per seed) against the float row's runs of the
    /// same seeds, in the same order.
    pub fn from_runs(runs: &[RunMeasure], float: &[RunMeasure]) -> Result<Self> {
        let first = runs.first().context("a sweep row needs at least one run")?;
        if runs.len() != float.len() || runs.iter().zip(float).any(|(r, f)| r.seed != f.seed) {
            bail!(
                "the runs of {} and the float row cover different seeds",
                first.run_dir.display()
            );
        }
        let collect = |f: fn(&RunMeasure) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let paired = |f: fn(&RunMeasure) -> f64| -> Vec<f64> {
            runs.iter().zip(float).map(|(r, fl)| f(r) - f(fl)).collect()
        };
        let maps = collect(|r| r.map);
        let coco_aps = collect(|r| r.coco_ap);
        let delta_maps = paired(|r| r.map);
        let (map, delta, coco, delta_coco) = (
            SeedSummary::of(&maps),
            SeedSummary::of(&delta_maps),
            SeedSummary::of(&coco_aps),
            SeedSummary::of(&paired(|r| r.coco_ap)),
        );
        let errors: Vec<f64> = runs.iter().filter_map(|r| r.error_vs_exact).collect();
        Ok(Self {
            bits: first.bits,
            method: first.method.clone(),
            c: first.c,
            seeds: runs.iter().map(|r| r.seed).collect(),
            maps,
            map: map.mean,
            map_std: map.std,
            map_ci95: map.ci95,
            delta_maps,
            delta_map: delta.mean,
            delta_ci95: delta.ci95,
            delta_significant: delta.excludes_zero(),
            coco_aps,
            coco_ap: coco.mean,
            coco_ap_ci95: coco.ci95,
            delta_coco_ap: delta_coco.mean,
            delta_coco_ap_ci95: delta_coco.ci95,
            storage_bytes: first.storage_bytes,
            compression: first.compression,
            error_vs_exact: (!errors.is_empty()).then(|| mean(&errors)),
            iterations: first.iterations,
            train_seconds: mean(&collect(|r| r.train_seconds)),
            run_dirs: runs.iter().map(|r| r.run_dir.clone()).collect(),
        })
    }
}

/// `[seed 0](…/curves.png), [seed 1](…)`: each of the row's runs that has drawn its
/// training curves, by its run directory (relative to `links_from` when under it);
/// `-` when none has.
fn curves_links(row: &SweepRow, links_from: Option<&Path>) -> String {
    let links: Vec<String> = row
        .seeds
        .iter()
        .zip(&row.run_dirs)
        .filter(|(_, dir)| dir.join(CURVES_FILE).is_file())
        .map(|(seed, dir)| {
            let shown = links_from
                .and_then(|base| dir.strip_prefix(base).ok())
                .unwrap_or(dir);
            let target = shown.join(CURVES_FILE).display().to_string();
            if target.contains([' ', '(', ')']) {
                format!("[seed {seed}](<{target}>)")
            } else {
                format!("[seed {seed}]({target})")
            }
        })
        .collect();
    if links.is_empty() {
        "-".into()
    } else {
        links.join(", ")
    }
}

fn format_c(c: Option<f64>) -> String {
    c.map(|c| format!("{c}")).unwrap_or_else(|| "-".into())
}

fn format_bytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn format_mean_std(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(s) => format!("{mean:.4} ± {s:.4}"),
        None => format!("{mean:.4}"),
    }
}

fn format_ci(ci: Option<[f64; 2]>, signed: bool) -> String {
    match (ci, signed) {
        (Some([lo, hi]), true) => format!("[{lo:+.4}, {hi:+.4}]"),
        (Some([lo, hi]), false) => format!("[{lo:.4}, {hi:.4}]"),
        (None, _) => "-".into(),
    }
}

/// `+0.0123 [-0.0050, +0.0296] *`: the paired mean difference, its interval, and a star
/// when the interval excludes 0.
fn format_delta(row: &SweepRow) -> String {
    let mark = if row.delta_significant { " *" } else { "" };
    match row.delta_ci95 {
        Some(_) => format!(
            "{:+.4} {}{mark}",
            row.delta_map,
            format_ci(row.delta_ci95, true)
        ),
        None => format!("{:+.4}", row.delta_map),
    }
}

impl SweepTable {
    /// Which training every row had and how to read the intervals: the tables' preamble.
    fn provenance(&self) -> String {
        if self.initial_float_maps.is_empty() {
            return "No float model has finished yet.\n\n".into();
        }
        let float = SeedSummary::of(&self.initial_float_maps);
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        format!(
            "Seeds {} ({} per row). For each seed, a float model was trained {} iterations (mAP {}), \
             and every row, the 32-bit one included, was retrained {} iterations from that seed's float model. \
             mAP is mean ± sample standard deviation over seeds with its 95% Student-t interval; \
             Δ is each seed's row minus the same seed's retrained 32-bit row, averaged, with its 95% interval; \
             `*` marks a Δ whose interval excludes 0.\n\n",
            seeds.join(", "),
            self.seeds.len(),
            self.initial_float_iterations,
            format_mean_std(float.mean, float.std),
            self.rows.first().map_or(0, |r| r.iterations),
        )
    }

    fn title(&self, what: &str) -> String {
        let incomplete = if self.missing.is_empty() {
            String::new()
        } else {
            format!(
                "**Incomplete:** {} jobs had not finished ({}); rows average the seeds that did.\n\n",
                self.missing.len(),
                self.missing.join(", ")
            )
        };
        format!(
            "# {what} `{}`{}\n\n{incomplete}{}",
            self.sweep,
            if self.quick {
                " (quick smoke run: numbers are not meaningful)"
            } else {
                ""
            },
            self.provenance()
        )
    }

    /// Every cell, in sweep order, each linking its runs' training curves by the paths
    /// of their run directories.
    pub fn to_markdown(&self) -> String {
        self.markdown(None)
    }

    /// [`Self::to_markdown`] for a file in `dir` (the results directory): the links to
    /// runs under `dir` are relative to it.
    pub fn to_markdown_in(&self, dir: &Path) -> String {
        self.markdown(Some(dir))
    }

    fn markdown(&self, links_from: Option<&Path>) -> String {
        let mut out = self.title("Sweep");
        out += "| bits | method | c | mAP | mAP 95% CI | Δ vs float [95% CI] | AP@[.5:.95] | weights | compression | error / exact | mAP per seed | iters | train s | curves |\n\
                |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n";
        for r in &self.rows {
            let per_seed: Vec<String> = r.maps.iter().map(|m| format!("{m:.4}")).collect();
            out += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2}x | {} | {} | {} | {:.0} | {} |\n",
                r.bits,
                r.method,
                format_c(r.c),
                format_mean_std(r.map, r.map_std),
                format_ci(r.map_ci95, false),
                format_delta(r),
                format_mean_std(r.coco_ap, SeedSummary::of(&r.coco_aps).std),
                format_bytes(r.storage_bytes),
                r.compression,
                r.error_vs_exact
                    .map(|e| format!("{e:.3}"))
                    .unwrap_or_else(|| "-".into()),
                per_seed.join(", "),
                r.iterations,
                r.train_seconds,
                curves_links(r, links_from)
            );
        }
        out
    }

    /// The best row per bit-width by mean mAP (the first on ties), float first, then
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
        let mut out = self.title("LBW-Net table (best c per bit-width by mean mAP), sweep");
        out += "| bits | method | best c | mAP | Δ vs 32-bit [95% CI] | AP@[.5:.95] | Δ AP@[.5:.95] | weights | compression |\n\
                |---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in self.best_per_bits() {
            out += &format!(
                "| {} | {} | {} | {} | {} | {:.4} | {:+.4} {} | {} | {:.2}x |\n",
                r.bits,
                r.method,
                format_c(r.c),
                format_mean_std(r.map, r.map_std),
                format_delta(r),
                r.coco_ap,
                r.delta_coco_ap,
                format_ci(r.delta_coco_ap_ci95, true),
                format_bytes(r.storage_bytes),
                r.compression
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, bits: u32, map: f64, coco_ap: f64) -> RunMeasure {
        RunMeasure {
            bits,
            method: if bits == 32 { "float" } else { "lbw" }.into(),
            c: (bits != 32).then_some(7.2),
            seed,
            map,
            coco_ap,
            storage_bytes: 1000,
            compression: 1.0,
            error_vs_exact: (bits != 32).then_some(1.1),
            iterations: 10,
            train_seconds: 1.0,
            run_dir: PathBuf::from(format!("seed-{seed}")),
        }
    }

    #[test]
    fn the_table_links_the_curves_each_run_drew() {
        let results = tempfile::tempdir().unwrap();
        let run_dir = |seed: u64| results.path().join(format!("seed-{seed}/cell/w4-lbw-c7.2"));
        let mut runs = [run(0, 4, 0.6, 0.3), run(1, 4, 0.5, 0.2)];
        for r in &mut runs {
            r.run_dir = run_dir(r.seed);
        }
        // Seed 1's run drew none (an older lbwnet): no link to a missing file.
        std::fs::create_dir_all(run_dir(0)).unwrap();
        std::fs::write(run_dir(0).join(CURVES_FILE), b"png").unwrap();
        let float = [run(0, 32, 0.7, 0.4), run(1, 32, 0.6, 0.3)];
        let table = SweepTable {
            sweep: "s".into(),
            quick: true,
            seeds: vec![0, 1],
            initial_float_maps: vec![0.7, 0.6],
            initial_float_iterations: 10,
            rows: vec![SweepRow::from_runs(&runs, &float).unwrap()],
            missing: Vec::new(),
            seconds: 1.0,
        };
        let row = |markdown: String| markdown.lines().last().unwrap().to_string();
        assert!(
            row(table.to_markdown_in(results.path()))
                .ends_with("| [seed 0](seed-0/cell/w4-lbw-c7.2/curves.png) |"),
            "{}",
            table.to_markdown_in(results.path())
        );
        let absolute = run_dir(0).join(CURVES_FILE);
        assert!(
            row(table.to_markdown()).ends_with(&format!("| [seed 0]({}) |", absolute.display()))
        );
        std::fs::remove_file(&absolute).unwrap();
        assert!(row(table.to_markdown()).ends_with("| - |"));
    }

    #[test]
    fn rows_pair_each_seed_with_its_own_float_run() {
        let float = [
            run(0, 32, 0.70, 0.40),
            run(1, 32, 0.60, 0.30),
            run(2, 32, 0.65, 0.35),
        ];
        // Seeds disagree on the level by 10 points but agree the cell loses 2 to 4.
        let cell = [
            run(0, 4, 0.68, 0.36),
            run(1, 4, 0.57, 0.26),
            run(2, 4, 0.61, 0.31),
        ];
        let row = SweepRow::from_runs(&cell, &float).unwrap();
        assert_eq!(row.seeds, vec![0, 1, 2]);
        assert!((row.map - 0.62).abs() < 1e-12);
        let deltas = [-0.02, -0.03, -0.04];
        for (d, e) in row.delta_maps.iter().zip(deltas) {
            assert!((d - e).abs() < 1e-12);
        }
        assert!((row.delta_map + 0.03).abs() < 1e-12);
        // Paired: sd 0.01 over 3 seeds, t = 4.3027; unpaired the interval would span 0.
        let [lo, hi] = row.delta_ci95.unwrap();
        let half = 4.302652729911275 * 0.01 / 3f64.sqrt();
        assert!((lo - (-0.03 - half)).abs() < 1e-9 && (hi - (-0.03 + half)).abs() < 1e-9);
        assert!(row.delta_significant);
        let [map_lo, map_hi] = row.map_ci95.unwrap();
        assert!(map_lo < 0.5 && map_hi > 0.7, "unpaired spread is wide");
        assert!((row.delta_coco_ap + 0.04).abs() < 1e-12);
        assert!(
            !SweepRow::from_runs(&float, &float)
                .unwrap()
                .delta_significant
        );
        // Mismatched seeds are refused.
        assert!(SweepRow::from_runs(&cell[..2], &float[1..]).is_err());
    }
}
