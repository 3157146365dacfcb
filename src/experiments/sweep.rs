//! Bit-width and threshold sweeps, the paper's procedure made one command and repeated
//! over seeds: for each seed, train the float model, then retrain every (bits, method, c)
//! cell from that seed's float model. A finished run is reused only when its config is the
//! planned one and its float model has not changed since, so an interrupted sweep resumes
//! where it stopped and a changed sweep never reports stale cells.
use crate::config::{apply_override, ExperimentConfig};
use crate::quant::{Method, FLOAT_BITS};
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
    /// Every run is trained once per seed (`train.seed`); rows report the spread.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Extra overrides applied to every run under `--quick` (a smoke run).
    #[serde(default)]
    pub quick: QuickSpec,
    /// How `--executor slurm` submits the jobs (partition, time limit, GPUs, ...).
    #[serde(default)]
    pub slurm: SlurmSpec,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("results")
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One seed's runs: its float model and the cells retrained from it (the retrained float
/// row first, then the cells in sweep order).
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub seed: u64,
    pub float: ExperimentConfig,
    pub cells: Vec<ExperimentConfig>,
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
    /// Reads `path` and applies `--set key.path=value` overrides (e.g. `slurm.partition=gpu`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sweep config {}", path.display()))?;
        let mut value: serde_yaml::Value = serde_yaml::from_str(&text)
            .with_context(|| format!("sweep config {}: not valid YAML", path.display()))?;
        for item in overrides {
            apply_override(&mut value, item)
                .with_context(|| format!("sweep config {}: --set {item}", path.display()))?;
        }
        let mut sweep: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            anyhow::anyhow!(
                "sweep config {}: key `{}`: {}",
                path.display(),
                e.path(),
                e.inner()
            )
        })?;
        // The name is a directory under `output_dir` (and part of Slurm job names).
        crate::fsutil::check_name(&sweep.name)
            .with_context(|| format!("sweep config {}: key `name`", path.display()))?;
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
        let mut seeds = sweep.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.is_empty() || seeds.len() != sweep.seeds.len() {
            bail!(
                "sweep config {}: key `seeds`: need at least one seed, each once",
                path.display()
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

    /// Uses seeds `0..count` instead of the config's (`lbwnet sweep --seeds N`).
    pub fn set_seed_count(&mut self, count: usize) -> Result<()> {
        if count == 0 {
            bail!("--seeds: need at least one seed");
        }
        self.seeds = (0..count as u64).collect();
        Ok(())
    }

    /// The experiment config of one run: base + sweep overrides + quick overrides, with
    /// the seed. Runs land in `<results>/seed-<k>/<name>/<quant tag>`.
    fn run_config(
        &self,
        sets: &[String],
        quick: bool,
        name: &str,
        seed: u64,
    ) -> Result<ExperimentConfig> {
        let mut all: Vec<String> = sets.to_vec();
        if quick {
            all.extend(self.quick.set.iter().cloned());
        }
        all.push(format!("name={name}"));
        all.push(format!("train.seed={seed}"));
        all.push(format!(
            "train.output_dir={}",
            self.results_dir(quick)
                .join(format!("seed-{seed}"))
                .display()
        ));
        ExperimentConfig::load(&self.base, &all)
    }

    /// For every seed: the float run every cell starts from, and the cells in table
    /// order: first the float model retrained as long as the others (the fair 32-bit row:
    /// every row then has had the same training), then each (bits, method, c).
    pub fn plan(&self, quick: bool) -> Result<Vec<SeedPlan>> {
        self.seeds
            .iter()
            .map(|&seed| self.plan_seed(quick, seed))
            .collect()
    }

    fn plan_seed(&self, quick: bool, seed: u64) -> Result<SeedPlan> {
        let mut float_sets = self.float.clone();
        float_sets.push(format!("quant.bits={FLOAT_BITS}"));
        let float = self.run_config(&float_sets, quick, "initial", seed)?;
        let init_from = format!("train.init_from={}", float.run_dir().display());
        let mut retrained_float = self.retrain.clone();
        retrained_float.push(format!("quant.bits={FLOAT_BITS}"));
        retrained_float.push(init_from.clone());
        let mut cells = vec![self.run_config(&retrained_float, quick, "retrained", seed)?];
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
                cells.push(self.run_config(&sets, quick, "retrained", seed)?);
            }
        }
        Ok(SeedPlan { seed, float, cells })
    }
}

/// The `slurm:` block of a sweep config (each also settable with `--set slurm.KEY=VALUE`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, e.g. `"12:00:00"`.
    pub time: Option<String>,
    /// `--gpus` per job.
    pub gpus_per_job: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `"32G"`.
    pub mem: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Further `sbatch` flags, passed as given, e.g. `["--qos=normal"]`.
    #[serde(default)]
    pub extra: Vec<String>,
}
