//! Bit-width and threshold sweeps, the paper's procedure made one command and repeated
//! over seeds: for each seed, train the float model, then retrain every (bits, method, c)
//! cell from that seed's float model. A finished run is reused only when its config is the
//! planned one and its float model has not changed since, so an interrupted sweep resumes
//! where it stopped and a changed sweep never reports stale cells.
use crate::config::ExperimentConfig;
use crate::experiments::plots::write_plots;
use crate::experiments::table::{measure_run, RunMeasure, SweepRow, SweepTable};
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
    /// Every run is trained once per seed (`train.seed`); rows report the spread.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Extra overrides applied to every run under `--quick` (a smoke run).
    #[serde(default)]
    pub quick: QuickSpec,
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

/// Why a finished run cannot be reused for `cfg`, if it cannot: its saved config differs
/// from the planned one, or the float model it was retrained from finished after it.
fn stale_reason(cfg: &ExperimentConfig, upstream: Option<&Path>) -> Result<Option<String>> {
    let run_dir = cfg.run_dir();
    let saved_path = run_dir.join("config.yaml");
    let saved = std::fs::read_to_string(&saved_path).unwrap_or_default();
    let planned = cfg.to_yaml()?;
    if saved != planned {
        let differs = planned
            .lines()
            .zip(saved.lines().chain(std::iter::repeat("<missing>")))
            .find(|(p, s)| p != s)
            .map(|(p, s)| format!("planned `{p}`, saved `{s}`"))
            .unwrap_or_else(|| "the saved config has extra lines".into());
        return Ok(Some(format!(
            "{} differs from the planned config ({differs})",
            saved_path.display()
        )));
    }
    if let Some(float_dir) = upstream {
        let finished =
            |dir: &Path| std::fs::metadata(dir.join("metrics.json")).and_then(|m| m.modified());
        if let (Ok(float), Ok(own)) = (finished(float_dir), finished(&run_dir)) {
            if float > own {
                return Ok(Some(format!(
                    "its float model {} was retrained after it finished",
                    float_dir.display()
                )));
            }
        }
    }
    Ok(None)
}

/// Trains `cfg` unless an up-to-date run of it finished; resumes it when it was
/// interrupted with the planned config. `upstream` is the float run it starts from.
fn run_job(cfg: &ExperimentConfig, upstream: Option<&Path>) -> Result<()> {
    let run_dir = cfg.run_dir();
    let stale = stale_reason(cfg, upstream)?;
    if run_dir.join("metrics.json").is_file() {
        match &stale {
            None => {
                tracing::info!("{}: finished earlier, reused", run_dir.display());
                return Ok(());
            }
            Some(why) => tracing::info!("{}: retraining: {why}", run_dir.display()),
        }
    }
    let resume = stale.is_none() && checkpoint::latest(&run_dir)?.is_some();
    if resume {
        tracing::info!("{}: resuming its latest checkpoint", run_dir.display());
    }
    let (metrics, _) = train(cfg, resume.then_some(run_dir.as_path()))?;
    tracing::info!("{}: mAP {:.4}", run_dir.display(), metrics.map);
    Ok(())
}

/// Runs the whole sweep (every seed's float model and cells) and writes `table.md`,
/// `table.json`, `paper_table.md` and the plots into the results directory.
pub fn run_sweep(sweep: &SweepConfig, quick: bool) -> Result<SweepTable> {
    let plans = sweep.plan(quick)?;
    let started = std::time::Instant::now();
    let jobs = plans.len() * (1 + plans.first().map_or(0, |p| p.cells.len()));
    let mut done = 0;
    for plan in &plans {
        for (cfg, upstream) in std::iter::once((&plan.float, None))
            .chain(plan.cells.iter().map(|c| (c, Some(plan.float.run_dir()))))
        {
            done += 1;
            tracing::info!(
                "sweep {}: job {done}/{jobs}: seed {}, {}",
                sweep.name,
                plan.seed,
                cfg.run_dir().display()
            );
            run_job(cfg, upstream.as_deref())
                .with_context(|| format!("sweep job {}", cfg.run_dir().display()))?;
        }
    }
    let table = measure_sweep(sweep, quick, &plans, started.elapsed().as_secs_f64())?;
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

/// Measures every finished run and aggregates each cell over the seeds.
fn measure_sweep(
    sweep: &SweepConfig,
    quick: bool,
    plans: &[SeedPlan],
    seconds: f64,
) -> Result<SweepTable> {
    let initial: Vec<RunMeasure> = plans
        .iter()
        .map(|p| measure_run(&p.float))
        .collect::<Result<_>>()?;
    let cell_count = plans.first().map_or(0, |p| p.cells.len());
    let per_cell: Vec<Vec<RunMeasure>> = (0..cell_count)
        .map(|j| plans.iter().map(|p| measure_run(&p.cells[j])).collect())
        .collect::<Result<_>>()?;
    let rows = per_cell
        .iter()
        .map(|runs| SweepRow::from_runs(runs, &per_cell[0]))
        .collect::<Result<Vec<_>>>()?;
    Ok(SweepTable {
        sweep: sweep.name.clone(),
        quick,
        seeds: sweep.seeds.clone(),
        initial_float_maps: initial.iter().map(|r| r.map).collect(),
        initial_float_iterations: initial.first().map_or(0, |r| r.iterations),
        rows,
        seconds,
    })
}
