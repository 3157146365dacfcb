//! The sweep's report from whatever has finished: every finished run measured, each cell
//! aggregated over the seeds that finished it, the rest named as missing; written as
//! `table.json`, `table.md` (which links each run's training curves), `paper_table.md` and
//! the plots.
use crate::experiments::jobs::SweepJobs;
use crate::experiments::plots::write_plots;
use crate::experiments::sweep::SweepConfig;
use crate::experiments::table::{measure_run, RunMeasure, SweepRow, SweepTable};
use crate::fsutil::write_atomic;
use anyhow::Result;

/// Measures whatever has finished and writes `table.json`, `table.md`, `paper_table.md`
/// and the plots into the results directory. Unfinished jobs are listed in the table's
/// `missing`; a row averages the seeds whose cell and retrained float row both finished.
/// `seconds` is the wall-clock time of the command writing it.
pub fn write_report(sweep: &SweepConfig, quick: bool, seconds: f64) -> Result<SweepTable> {
    let jobs = SweepJobs::new(sweep, quick)?;
    let table = measure_sweep(sweep, quick, &jobs, seconds)?;
    let dir = sweep.results_dir(quick);
    write_atomic(
        &dir.join("table.json"),
        serde_json::to_string_pretty(&table)?.as_bytes(),
    )?;
    write_atomic(&dir.join("table.md"), table.to_markdown_in(&dir).as_bytes())?;
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
    seconds: f64,
) -> Result<SweepTable> {
    // Jobs come float jobs first, then each seed's cells in order, seeds ascending as planned.
    let mut missing = Vec::new();
    let mut initial = Vec::new();
    let mut per_cell: Vec<Vec<Option<RunMeasure>>> = Vec::new();
    for job in &jobs.jobs {
        let run = if jobs.is_finished(job)? {
            Some(measure_run(&job.config)?)
        } else {
            missing.push(job.id.clone());
            None
        };
        match job.cell_index {
            None => initial.extend(run),
            Some(j) => {
                if per_cell.len() <= j {
                    per_cell.resize(j + 1, Vec::new());
                }
                per_cell[j].push(run);
            }
        }
    }
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
