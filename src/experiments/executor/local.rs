//! `--executor local`: by default every job in this process, one after another
//! ([`run_sweep`]); with `--jobs N [--devices 0,1]`, up to N jobs at once on this machine,
//! each a child `lbwnet sweep --job ID` process (the command `--plan` prints), started as soon
//! as its float job has finished. With devices, each of the N slots owns one
//! (`CUDA_VISIBLE_DEVICES`, slots taking them in turn); on the CPU, each child gets an
//! equal share of the cores unless `OMP_NUM_THREADS` is already set.
use crate::experiments::jobs::{SweepInvocation, SweepJobs};
use crate::experiments::report::write_report;
use crate::experiments::sweep::SweepConfig;
use crate::experiments::table::SweepTable;
use crate::progress::progress_bar;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs the whole sweep in this process, one job after another (every seed's float model,
/// then the cells), and writes the report.
pub fn run_sweep(sweep: &SweepConfig, quick: bool) -> Result<SweepTable> {
    let started = std::time::Instant::now();
    let jobs = SweepJobs::new(sweep, quick)?;
    let total = jobs.jobs.len();
    for (done, job) in jobs.jobs.iter().enumerate() {
        tracing::info!("sweep {}: job {}/{total}: {}", sweep.name, done + 1, job.id);
        jobs.run(job)?;
    }
    let table = write_report(sweep, quick, started.elapsed().as_secs_f64())?;
    if !table.missing.is_empty() {
        bail!("sweep jobs did not finish: {}", table.missing.join(", "));
    }
    Ok(table)
}

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Jobs run at once (at least 1).
    pub jobs: usize,
    /// CUDA device ordinals, given to the slots in turn; empty leaves devices alone.
    pub devices: Vec<String>,
}

struct Running {
    id: String,
    slot: usize,
    child: Child,
    log: PathBuf,
}

/// Runs every unfinished job; a job whose float job failed is not started. Errors name
/// each failed job and its log file once everything runnable has run.
pub fn run_parallel(
    jobs: &SweepJobs,
    invocation: &SweepInvocation,
    options: &LocalOptions,
) -> Result<()> {
    let slots = options.jobs.max(1);
    let logs = jobs.results_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let threads_per_job = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .div_ceil(slots)
        .max(1);

    let mut done: HashSet<String> = HashSet::new();
    for job in &jobs.jobs {
        if jobs.is_finished(job)? {
            done.insert(job.id.clone());
        }
    }
    let mut waiting: Vec<&str> = jobs
        .jobs
        .iter()
        .filter(|j| !done.contains(&j.id))
        .map(|j| j.id.as_str())
        .collect();
    let bar = progress_bar(jobs.jobs.len() as u64, "sweep jobs");
    bar.set_position(done.len() as u64);
    let mut failed: Vec<String> = Vec::new();
    let mut failed_ids: HashSet<String> = HashSet::new();
    let mut running: Vec<Running> = Vec::new();
    let mut free_slots: Vec<usize> = (0..slots).rev().collect();

    while !waiting.is_empty() || !running.is_empty() {
        // Jobs whose float job failed will never run.
        waiting.retain(|id| {
            let job = jobs.find(id).expect("planned job");
            match &job.depends_on {
                Some(up) if failed_ids.contains(up) => {
                    failed.push(format!("{id}: not run, its float job {up} failed"));
                    false
                }
                _ => true,
            }
        });
        while let Some(&slot) = free_slots.last() {
            let Some(pos) = waiting.iter().position(|id| {
                let job = jobs.find(id).expect("planned job");
                job.depends_on.as_ref().is_none_or(|up| done.contains(up))
            }) else {
                break;
            };
            free_slots.pop();
            let id = waiting.remove(pos).to_string();
            let log = logs.join(format!("{}.log", id.replace('/', "__")));
            let child = spawn_job(invocation, &id, &log, slot, options, threads_per_job)?;
            running.push(Running {
                id,
                slot,
                child,
                log,
            });
        }
        let names: Vec<&str> = running.iter().map(|r| r.id.as_str()).collect();
        bar.set_message(format!("running {}", names.join(", ")));

        std::thread::sleep(Duration::from_millis(100));
        let mut still = Vec::new();
        for mut run in running.drain(..) {
            match run.child.try_wait() {
                Ok(None) => still.push(run),
                Ok(Some(status)) => {
                    free_slots.push(run.slot);
                    bar.inc(1);
                    if status.success() {
                        tracing::info!("job {} finished", run.id);
                        done.insert(run.id);
                    } else {
                        bar.println(format!(
                            "job {} failed ({status}); log: {}",
                            run.id,
                            run.log.display()
                        ));
                        failed.push(format!("{}: {status}, log {}", run.id, run.log.display()));
                        failed_ids.insert(run.id);
                    }
                }
                Err(err) => bail!("waiting for job {}: {err}", run.id),
            }
        }
        running = still;
    }
    bar.finish_and_clear();
    if !failed.is_empty() {
        bail!(
            "{} sweep jobs failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

fn spawn_job(
    invocation: &SweepInvocation,
    id: &str,
    log: &std::path::Path,
    slot: usize,
    options: &LocalOptions,
    threads_per_job: usize,
) -> Result<Child> {
    let argv = invocation.job_argv(id);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    if !options.devices.is_empty() {
        command.env(
            "CUDA_VISIBLE_DEVICES",
            &options.devices[slot % options.devices.len()],
        );
    }
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        command.env("OMP_NUM_THREADS", threads_per_job.to_string());
    }
    tracing::info!("job {id} started (slot {slot}), log {}", log.display());
    command
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))
}
