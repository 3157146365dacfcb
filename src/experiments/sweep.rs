//! Bit-width and threshold sweeps, the paper's procedure made one command: train the float
//! model once, then retrain every (bits, method, c) cell from it, skipping finished cells
//! so an interrupted sweep resumes where it stopped.
use crate::config::ExperimentConfig;
use crate::experiments::plots::write_plots;
use crate::experiments::table::{measure_cell, SweepRow, SweepTable};
use crate::fsutil::write_atomic;
use crate::quant::{Method, FLOAT_BITS};
use crate::train::checkpoint;
use crate::train::trainer::train;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    pub name: String,
    /// The experiment config every run starts from (relative paths: to the sweep file's
    /// directory, then to the working directory).
    pub base: PathBuf,
    /// Results land in `<output_dir>/<name>/`.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// `--set` overrides for the float run.
    #[serde(default)]
    pub float: Vec<String>,
    /// `--set` overrides for every retrained (quantized) cell, e.g. iterations and lr.
    #[serde(default)]
    pub retrain: Vec<String>,
    pub cells: Vec<CellSpec>,
    /// Extra overrides applied to every run under `--quick` (a smoke run).
    #[serde(default)]
    pub quick: QuickSpec,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("results")
}

/// One bit-width and method, with the c values to try (lbw) or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    pub bits: u32,
    pub method: Method,
    #[serde(default)]
    pub c: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickSpec {
    /// Overrides for every run under `--quick`.
    #[serde(default)]
    pub set: Vec<String>,
    /// Under `--quick`, only this many c values per bit-width (the first ones).
    #[serde(default)]
    pub max_c_per_bits: Option<usize>,
}

impl SweepConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sweep config {}", path.display()))?;
        let mut sweep: Self = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            &text,
        ))
        .map_err(|e| {
            anyhow::anyhow!(
                "sweep config {}: key `{}`: {}",
                path.display(),
                e.path(),
                e.inner()
            )
        })?;
        if !sweep.base.is_absolute() {
            let beside = path.parent().unwrap_or(Path::new(".")).join(&sweep.base);
            if beside.is_file() {
                sweep.base = beside;
            }
        }
        if !sweep.base.is_file() {
            bail!(
                "sweep config {}: key `base`: {} does not exist",
                path.display(),
                sweep.base.display()
            );
        }
        for cell in &sweep.cells {
            if cell.bits == FLOAT_BITS || !(2..=8).contains(&cell.bits) {
                bail!(
                    "sweep config {}: key `cells`: bits {} is not allowed (2..=8)",
                    path.display(),
                    cell.bits
                );
            }
            if cell.c.iter().any(|c| !crate::config::is_positive(*c)) {
                bail!(
                    "sweep config {}: key `cells`: every c must be positive",
                    path.display()
                );
            }
        }
        Ok(sweep)
    }

    /// `<output_dir>/<name>/`, or `<name>-quick/` for smoke runs (never mixed with real ones).
    pub fn results_dir(&self, quick: bool) -> PathBuf {
        let name = if quick {
            format!("{}-quick", self.name)
        } else {
            self.name.clone()
        };
        self.output_dir.join(name)
    }

    /// The experiment config of one run: base + sweep overrides + quick overrides. Runs
    /// land in `<results>/<name>/<quant tag>`.
    fn run_config(&self, sets: &[String], quick: bool, name: &str) -> Result<ExperimentConfig> {
        let mut all: Vec<String> = sets.to_vec();
        if quick {
            all.extend(self.quick.set.iter().cloned());
        }
        all.push(format!("name={name}"));
        all.push(format!(
            "train.output_dir={}",
            self.results_dir(quick).display()
        ));
        ExperimentConfig::load(&self.base, &all)
    }

    /// The float run every cell starts from, and the cells in table order: first the
    /// float model retrained as long as the others (the fair 32-bit row: every row then
    /// has had the same training), then each (bits, method, c).
    pub fn plan(&self, quick: bool) -> Result<(ExperimentConfig, Vec<ExperimentConfig>)> {
        let mut float_sets = self.float.clone();
        float_sets.push(format!("quant.bits={FLOAT_BITS}"));
        let float_cfg = self.run_config(&float_sets, quick, "initial")?;
        let init_from = format!("train.init_from={}", float_cfg.run_dir().display());
        let mut retrained_float = self.retrain.clone();
        retrained_float.push(format!("quant.bits={FLOAT_BITS}"));
        retrained_float.push(init_from.clone());
        let mut cells = vec![self.run_config(&retrained_float, quick, "retrained")?];
        for cell in &self.cells {
            let mut cs: Vec<Option<f64>> = if cell.method == Method::Lbw && !cell.c.is_empty() {
                cell.c.iter().copied().map(Some).collect()
            } else {
                vec![None]
            };
            if quick {
                if let Some(max) = self.quick.max_c_per_bits {
                    cs.truncate(max.max(1));
                }
            }
            for c in cs {
                let mut sets = self.retrain.clone();
                sets.push(format!("quant.bits={}", cell.bits));
                sets.push(format!("quant.method={}", cell.method));
                if let Some(c) = c {
                    sets.push(format!("quant.c={c}"));
                }
                sets.push(init_from.clone());
                cells.push(self.run_config(&sets, quick, "retrained")?);
            }
        }
        Ok((float_cfg, cells))
    }
}

/// Trains `cfg` unless its run already finished; resumes it when it was interrupted.
fn run_cell(cfg: &ExperimentConfig) -> Result<()> {
    let run_dir = cfg.run_dir();
    if run_dir.join("metrics.json").is_file() {
        tracing::info!("{}: finished earlier, skipped", run_dir.display());
        return Ok(());
    }
    let resume = checkpoint::latest(&run_dir)?.is_some();
    let (metrics, _) = train(cfg, resume.then_some(run_dir.as_path()))?;
    tracing::info!("{}: mAP {:.4}", run_dir.display(), metrics.map);
    Ok(())
}

/// Runs the whole sweep and writes `table.md`, `table.json`, `paper_table.md` and the
/// plots into the results directory. Returns the table.
pub fn run_sweep(sweep: &SweepConfig, quick: bool) -> Result<SweepTable> {
    let (float_cfg, cells) = sweep.plan(quick)?;
    let started = std::time::Instant::now();
    run_cell(&float_cfg)?;
    for cfg in &cells {
        run_cell(cfg)?;
    }
    let initial_float = measure_cell(&float_cfg, None)?;
    let reference = measure_cell(&cells[0], None)?;
    let mut rows: Vec<SweepRow> = vec![reference];
    for cfg in &cells[1..] {
        rows.push(measure_cell(cfg, Some(rows[0].map))?);
    }
    let table = SweepTable {
        sweep: sweep.name.clone(),
        quick,
        initial_float_map: initial_float.map,
        initial_float_iterations: initial_float.iterations,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    let dir = sweep.results_dir(quick);
    write_atomic(
        &dir.join("table.json"),
        serde_json::to_string_pretty(&table)?.as_bytes(),
    )?;
    write_atomic(&dir.join("table.md"), table.to_markdown().as_bytes())?;
    write_atomic(
        &dir.join("paper_table.md"),
        table.paper_table_markdown().as_bytes(),
    )?;
    write_plots(&table, &dir)?;
    Ok(table)
}
