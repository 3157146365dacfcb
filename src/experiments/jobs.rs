//! A sweep as a graph of jobs, so executors can spread it over processes, GPUs or a Slurm
//! cluster: one job per run (each seed's float model, then each seed's cells, which depend
//! on their seed's float job). A job's id is its run directory under the sweep's results
//! (`seed-0/initial/fp32`, `seed-0/retrained/w4-lbw-c3.7`); the k-th cell of a seed is
//! also `seed-<s>/cell-<k>`, the form a Slurm job array addresses. Jobs share nothing
//! but the results directory: whether a job has finished is read from its run directory.
use crate::config::ExperimentConfig;
use crate::experiments::sweep::SweepConfig;
use crate::train::checkpoint;
use crate::train::trainer::train;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SweepJob {
    pub id: String,
    pub seed: u64,
    /// Position among its seed's cells (the Slurm array index); none for a float job.
    pub cell_index: Option<usize>,
    pub config: ExperimentConfig,
    /// The float job this cell is retrained from.
    pub depends_on: Option<String>,
}

/// Where a job stands, read from its run directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum JobState {
    /// Finished with the planned config after its float model: nothing to do.
    Finished,
    /// Has a checkpoint of the planned config: running it resumes from there.
    Partial,
    /// Nothing usable yet.
    NotStarted,
    /// Finished, but with another config or before its float model changed: retrained.
    Stale(String),
}

impl JobState {
    pub fn label(&self) -> &'static str {
        match self {
            JobState::Finished => "finished",
            JobState::Partial => "partial",
            JobState::NotStarted => "not started",
            JobState::Stale(_) => "stale",
        }
    }
}

/// Every job of a sweep, float jobs first (seed order), then each seed's cells.
#[derive(Debug, Clone)]
pub struct SweepJobs {
    pub results_dir: PathBuf,
    pub jobs: Vec<SweepJob>,
}

impl SweepJobs {
    pub fn new(sweep: &SweepConfig, quick: bool) -> Result<Self> {
        let results_dir = sweep.results_dir(quick);
        let plans = sweep.plan(quick)?;
        let id_of = |cfg: &ExperimentConfig| -> Result<String> {
            let dir = cfg.run_dir();
            let relative = dir.strip_prefix(&results_dir).with_context(|| {
                format!(
                    "run {} lies outside the sweep's results {}",
                    dir.display(),
                    results_dir.display()
                )
            })?;
            Ok(relative.to_string_lossy().replace('\\', "/"))
        };
        let mut jobs = Vec::new();
        for plan in &plans {
            jobs.push(SweepJob {
                id: id_of(&plan.float)?,
                seed: plan.seed,
                cell_index: None,
                config: plan.float.clone(),
                depends_on: None,
            });
        }
        for plan in &plans {
            let float_id = id_of(&plan.float)?;
            for (index, cell) in plan.cells.iter().enumerate() {
                jobs.push(SweepJob {
                    id: id_of(cell)?,
                    seed: plan.seed,
                    cell_index: Some(index),
                    config: cell.clone(),
                    depends_on: Some(float_id.clone()),
                });
            }
        }
        Ok(Self { results_dir, jobs })
    }

    /// The job with this id, or `seed-<s>/cell-<k>`: the k-th cell of seed s.
    pub fn find(&self, id: &str) -> Result<&SweepJob> {
        if let Some(job) = self.jobs.iter().find(|j| j.id == id) {
            return Ok(job);
        }
        let by_index = id.split_once("/cell-").and_then(|(seed, index)| {
            let seed: u64 = seed.strip_prefix("seed-")?.parse().ok()?;
            let index: usize = index.parse().ok()?;
            self.jobs
                .iter()
                .find(|j| j.seed == seed && j.cell_index == Some(index))
        });
        by_index.with_context(|| {
            let ids: Vec<&str> = self.jobs.iter().map(|j| j.id.as_str()).collect();
            format!(
                "the sweep has no job `{id}`; its jobs are {} (or seed-<s>/cell-<k>; `--plan` lists them)",
                ids.join(", ")
            )
        })
    }

    /// The float job `job` depends on.
    pub fn upstream(&self, job: &SweepJob) -> Option<&SweepJob> {
        let id = job.depends_on.as_deref()?;
        self.jobs.iter().find(|j| j.id == id)
    }

    pub fn state(&self, job: &SweepJob) -> Result<JobState> {
        let upstream = self.upstream(job).map(|u| u.config.run_dir());
        let run_dir = job.config.run_dir();
        let stale = stale_reason(&job.config, upstream.as_deref())?;
        Ok(match stale {
            Some(why) if run_dir.join("metrics.json").is_file() => JobState::Stale(why),
            Some(_) => JobState::NotStarted,
            None if run_dir.join("metrics.json").is_file() => JobState::Finished,
            None if checkpoint::latest(&run_dir)?.is_some() => JobState::Partial,
            None => JobState::NotStarted,
        })
    }

    pub fn is_finished(&self, job: &SweepJob) -> Result<bool> {
        Ok(self.state(job)? == JobState::Finished)
    }

    /// Runs one job in this process: a finished job is left alone, a partial one resumes.
    /// A cell whose float job has not finished is refused (it would start from nothing).
    pub fn run(&self, job: &SweepJob) -> Result<()> {
        let upstream = self.upstream(job);
        if let Some(float) = upstream {
            if !self.is_finished(float)? {
                bail!(
                    "job {} retrains from job {}, which has not finished; run that first",
                    job.id,
                    float.id
                );
            }
        }
        let upstream_dir = upstream.map(|u| u.config.run_dir());
        run_job(&job.config, upstream_dir.as_deref())
            .with_context(|| format!("sweep job {}", job.id))
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

/// How this sweep was invoked, so every job's command reproduces it exactly: the same
/// binary, sweep config (absolute), `--quick`, `--seeds` and `--set` overrides.
#[derive(Debug, Clone)]
pub struct SweepInvocation {
    pub exe: PathBuf,
    pub config: PathBuf,
    pub quick: bool,
    pub seeds: Option<usize>,
    pub sets: Vec<String>,
}

impl SweepInvocation {
    /// The argument vector (program first) that runs job `id`.
    pub fn job_argv(&self, id: &str) -> Vec<String> {
        let mut argv = self.sweep_argv();
        argv.extend(["--job".into(), id.to_string()]);
        argv
    }

    /// The command that writes the report of this sweep.
    pub fn report_command(&self) -> Result<String> {
        let mut argv = self.sweep_argv();
        argv.push("--report".into());
        shell_join(&argv)
    }

    /// `lbwnet sweep` with this invocation's config and flags.
    fn sweep_argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.exe.display().to_string(),
            "sweep".into(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        if self.quick {
            argv.push("--quick".into());
        }
        if let Some(n) = self.seeds {
            argv.extend(["--seeds".into(), n.to_string()]);
        }
        for set in &self.sets {
            argv.extend(["--set".into(), set.clone()]);
        }
        argv
    }

    /// [`Self::job_argv`] as one line for a POSIX shell.
    pub fn job_command(&self, id: &str) -> Result<String> {
        shell_join(&self.job_argv(id))
    }

    /// The command of a job array's task: the job id is `id_prefix` followed by the shell
    /// variable `index_var` (expanded when the task runs); every other word is quoted, so
    /// nothing else in the command is substituted.
    pub fn array_job_command(&self, id_prefix: &str, index_var: &str) -> Result<String> {
        let mut argv = self.sweep_argv();
        argv.push("--job".into());
        let quoted_prefix = shlex::try_quote(id_prefix)
            .map_err(|e| anyhow::anyhow!("cannot quote {id_prefix:?} for a shell: {e}"))?;
        Ok(format!(
            "{} {quoted_prefix}\"${{{index_var}}}\"",
            shell_join(&argv)?
        ))
    }
}

/// Quotes each word for a POSIX shell where needed and joins them with spaces.
pub fn shell_join(words: &[String]) -> Result<String> {
    shlex::try_join(words.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("cannot quote {words:?} for a shell: {e}"))
}
