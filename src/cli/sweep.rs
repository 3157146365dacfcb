//! `lbwnet sweep`: for each seed, train the float model, retrain every (bits, method, c)
//! cell from it, and write the tables (spread over seeds) and plots. The sweep is a graph
//! of jobs: `--plan` lists them with their commands, `--job` runs one, `--report` tables
//! whatever has finished, and `--executor` runs them here or on a Slurm cluster.
use crate::experiments::executor::local::{run_parallel, run_sweep, LocalOptions};
use crate::experiments::executor::slurm;
use crate::experiments::jobs::{JobState, SweepInvocation, SweepJobs};
use crate::experiments::report::write_report;
use crate::experiments::sweep::SweepConfig;
use crate::experiments::table::SweepTable;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("mode").args(["plan", "job", "report"])))]
pub struct SweepArgs {
    /// Sweep config (YAML), e.g. configs/sweeps/default.yaml.
    #[arg(long, default_value = "configs/sweeps/default.yaml")]
    pub config: PathBuf,
    /// A smoke run with tiny data and few iterations (results go to `<name>-quick/`).
    #[arg(long)]
    pub quick: bool,
    /// Print the paper-style table (best c per bit-width) instead of every cell.
    #[arg(long)]
    pub paper_table: bool,
    /// Train every run under seeds 0..N instead of the config's `seeds`.
    #[arg(long, value_name = "N")]
    pub seeds: Option<usize>,
    /// Override one sweep config value, e.g. `--set slurm.partition=gpu` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the jobs (id, state, the ids it waits for, its command) and exit.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: JSON instead of text.
    #[arg(long, requires = "plan")]
    pub json: bool,
    /// Run one job (an id from --plan, or seed-<s>/cell-<k>): a no-op when it finished,
    /// a resume when it was interrupted.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Write the tables and plots from whatever has finished and name what is missing.
    #[arg(long)]
    pub report: bool,
    /// Where the jobs run.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// local: jobs run at once, each its own process.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// local: CUDA devices the jobs take in turn, e.g. 0,1 (one job per device unless --jobs).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<String>,
    /// slurm: wait for the submitted jobs, then write the report.
    #[arg(long)]
    pub wait: bool,
    /// slurm: seconds between squeue polls while waiting.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub poll: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Executor {
    Local,
    Slurm,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let started = Instant::now();
    let mut sweep = SweepConfig::load(&args.config, &args.overrides)?;
    if let Some(count) = args.seeds {
        sweep.set_seed_count(count)?;
    }
    let jobs = SweepJobs::new(&sweep, args.quick)?;
    if args.plan {
        return print_plan(&jobs, &invocation(&args)?, args.json);
    }
    if let Some(id) = &args.job {
        return jobs.run(jobs.find(id)?);
    }
    if args.report {
        let table = write_report(&sweep, args.quick, started.elapsed().as_secs_f64())?;
        print_table(&args, &sweep, &table);
        return Ok(());
    }
    check_executor_flags(&args)?;
    let table = match args.executor {
        Executor::Local if args.jobs.unwrap_or(1) <= 1 && args.devices.is_empty() => {
            run_sweep(&sweep, args.quick)?
        }
        Executor::Local => {
            let options = LocalOptions {
                jobs: args.jobs.unwrap_or(args.devices.len()).max(1),
                devices: args.devices.clone(),
            };
            let ran = run_parallel(&jobs, &invocation(&args)?, &options);
            let table = write_report(&sweep, args.quick, started.elapsed().as_secs_f64())?;
            ran?;
            table
        }
        Executor::Slurm => {
            let invocation = invocation(&args)?;
            let submission = slurm::submit(&jobs, &invocation, &sweep.slurm, &sweep.name)?;
            if !args.wait {
                eprintln!(
                    "follow them with `squeue`; once they are done, this writes the tables:\n  {}",
                    invocation.report_command()?
                );
                return Ok(());
            }
            slurm::wait(&jobs, &submission, Duration::from_secs_f64(args.poll))?;
            write_report(&sweep, args.quick, started.elapsed().as_secs_f64())?
        }
    };
    print_table(&args, &sweep, &table);
    if !table.missing.is_empty() {
        bail!(
            "{} sweep jobs did not finish: {} (logs in {})",
            table.missing.len(),
            table.missing.join(", "),
            sweep.results_dir(args.quick).display()
        );
    }
    Ok(())
}

fn check_executor_flags(args: &SweepArgs) -> Result<()> {
    if args.jobs == Some(0) {
        bail!("--jobs: need at least 1");
    }
    if args.executor == Executor::Slurm && (args.jobs.is_some() || !args.devices.is_empty()) {
        bail!("--jobs and --devices are for --executor local; Slurm places the jobs (set slurm.gpus_per_job)");
    }
    if args.executor == Executor::Local && args.wait {
        bail!("--wait is for --executor slurm; the local executor always waits");
    }
    if !(args.poll.is_finite() && args.poll > 0.0) {
        bail!("--poll: need a positive number of seconds");
    }
    Ok(())
}

/// The command line every job of this invocation runs (same binary, config and flags).
fn invocation(args: &SweepArgs) -> Result<SweepInvocation> {
    Ok(SweepInvocation {
        exe: std::env::current_exe().context("locating the lbwnet binary")?,
        config: std::fs::canonicalize(&args.config)
            .with_context(|| format!("resolving {}", args.config.display()))?,
        quick: args.quick,
        seeds: args.seeds,
        sets: args.overrides.clone(),
    })
}

fn print_plan(jobs: &SweepJobs, invocation: &SweepInvocation, json: bool) -> Result<()> {
    let workdir = std::env::current_dir().context("reading the working directory")?;
    if json {
        let mut entries = Vec::new();
        for job in &jobs.jobs {
            entries.push(serde_json::json!({
                "id": job.id,
                "seed": job.seed,
                "cell_index": job.cell_index,
                "depends_on": job.depends_on.iter().collect::<Vec<_>>(),
                "state": jobs.state(job)?,
                "run_dir": job.config.run_dir(),
                "command": invocation.job_command(&job.id)?,
                "argv": invocation.job_argv(&job.id),
            }));
        }
        let plan = serde_json::json!({
            "results_dir": jobs.results_dir,
            "workdir": workdir,
            "jobs": entries,
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    println!(
        "# {} jobs; run each command in {} once the job it comes after has finished",
        jobs.jobs.len(),
        workdir.display()
    );
    for job in &jobs.jobs {
        let state = jobs.state(job)?;
        let why = match &state {
            JobState::Stale(why) => format!(" ({why})"),
            _ => String::new(),
        };
        println!(
            "{}  [{}{why}]  after: {}\n    {}",
            job.id,
            state.label(),
            job.depends_on.as_deref().unwrap_or("-"),
            invocation.job_command(&job.id)?
        );
    }
    Ok(())
}

fn print_table(args: &SweepArgs, sweep: &SweepConfig, table: &SweepTable) {
    let text = if args.paper_table {
        table.paper_table_markdown()
    } else {
        table.to_markdown()
    };
    println!("{text}");
    if !table.missing.is_empty() {
        eprintln!(
            "missing {} of the sweep's jobs: {}",
            table.missing.len(),
            table.missing.join(", ")
        );
    }
    eprintln!(
        "tables and plots in {}",
        sweep.results_dir(args.quick).display()
    );
}
