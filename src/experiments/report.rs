//! The sweep's report from whatever has finished: every finished run measured, each cell
//! aggregated over the seeds that finished it, the rest named as missing; written as
//! `table.json`, `table.md`, `paper_table.md` and the plots.
use crate::config::ExperimentConfig;
use crate::experiments::jobs::SweepJobs;
use crate::experiments::plots::write_plots;
use crate::experiments::sweep::{SeedPlan, SweepConfig};
use crate::experiments::table::{measure_run, RunMeasure, SweepRow, SweepTable};
use crate::fsutil::write_atomic;
use anyhow::{Context, Result};

/// Measures whatever has finished and writes `table.json`, `table.md`, `paper_table.md`
/// and the plots into the results directory. Unfinished jobs are listed in the table's
/// `missing`; a row averages the seeds whose cell and retrained float row both finished.
/// `seconds` is the wall-clock time of the command writing it.
pub fn write_report(sweep: &SweepConfig, quick: bool, seconds: f64) -> Result<SweepTable> {
    let jobs = SweepJobs::new(sweep, quick)?;
    let plans = sweep.plan(quick)?;
    let table = measure_sweep(sweep, quick, &jobs, &plans, seconds)?;
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
    if !table.rows.is_empty() {
        write_plots(&table, &dir)?;
    }
    Ok(table)
}

/// Measures every finished run and aggregates each cell over the seeds that finished it.
fn measure_sweep(
    sweep: &SweepConfig,
    quick: bool,
    jobs: &SweepJobs,
    plans: &[SeedPlan],
    seconds: f64,
) -> Result<SweepTable> {
    let mut missing = Vec::new();
    let mut finished = |cfg: &ExperimentConfig| -> Result<bool> {
        let job = jobs
            .jobs
            .iter()
            .find(|j| j.config.run_dir() == cfg.run_dir())
            .context("a planned run has no job")?;
        let done = jobs.is_finished(job)?;
        if !done {
            missing.push(job.id.clone());
        }
        Ok(done)
    };
    let mut initial = Vec::new();
    for plan in plans {
        if finished(&plan.float)? {
            initial.push(measure_run(&plan.float)?);
        }
    }
    // Per cell, per seed: the run when it finished.
    let cell_count = plans.first().map_or(0, |p| p.cells.len());
    let mut per_cell: Vec<Vec<Option<RunMeasure>>> = vec![Vec::new(); cell_count];
    for plan in plans {
        for (j, cell) in plan.cells.iter().enumerate() {
            let run = if finished(cell)? {
                Some(measure_run(cell)?)
            } else {
                None
            };
            per_cell[j].push(run);
        }
    }
    missing.sort_by_key(|id| jobs.jobs.iter().position(|j| &j.id == id));
    let float_row = per_cell.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for runs in &per_cell {
        let (cell, float): (Vec<RunMeasure>, Vec<RunMeasure>) = runs
            .iter()
            .zip(&float_row)
            .filter_map(|(r, f)| Some((r.clone()?, f.clone()?)))
            .unzip();
        if !cell.is_empty() {
            rows.push(SweepRow::from_runs(&cell, &float)?);
        }
    }
    Ok(SweepTable {
        sweep: sweep.name.clone(),
        quick,
        seeds: sweep.seeds.clone(),
        initial_float_maps: initial.iter().map(|r| r.map).collect(),
        initial_float_iterations: initial.first().map_or(0, |r| r.iterations),
        rows,
        missing,
        seconds,
    })
}
