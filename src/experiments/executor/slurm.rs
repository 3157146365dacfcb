//! `--executor slurm`: every sweep job a Slurm job. For each seed, the float job is one
//! `sbatch` job and its unfinished cells one job array that starts `afterok` of it; each
//! task runs the job's `lbwnet sweep --job` command in the submitting directory. Jobs
//! share only the results directory. Submitting again skips jobs that finished or are
//! still queued (recorded in `<results>/slurm/submitted.json`), so a cancelled or failed
//! job is simply submitted again. `--wait` polls `squeue` until they have all left it.
use crate::experiments::jobs::{shell_join, SweepInvocation, SweepJob, SweepJobs};
use crate::experiments::sweep::SlurmSpec;
use crate::fsutil::write_atomic;
use crate::progress::progress_bar;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The `sbatch` flags a `slurm:` block asks for.
fn sbatch_flags(spec: &SlurmSpec) -> Vec<String> {
    let mut flags = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            flags.push(format!("--{name}={v}"));
        }
    };
    add("partition", spec.partition.clone());
    add("time", spec.time.clone());
    add("gpus", spec.gpus_per_job.map(|g| g.to_string()));
    add("cpus-per-task", spec.cpus_per_task.map(|c| c.to_string()));
    add("mem", spec.mem.clone());
    add("account", spec.account.clone());
    flags.extend(spec.extra.iter().cloned());
    flags
}

/// Our job id -> Slurm job id (`123`, or `124_3` for a task of an array), over every
/// submission of this sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Submitted {
    pub jobs: BTreeMap<String, String>,
}

impl Submitted {
    fn path(results_dir: &Path) -> PathBuf {
        results_dir.join("slurm").join("submitted.json")
    }

    pub fn load(results_dir: &Path) -> Result<Self> {
        let path = Self::path(results_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid; delete it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, results_dir: &Path) -> Result<()> {
        write_atomic(
            &Self::path(results_dir),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// What one submission did: the Slurm ids of the jobs it submitted and of those it found
/// still queued, which together are what `--wait` waits for.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub submitted: Vec<(String, String)>,
    pub queued: Vec<(String, String)>,
}

impl Submission {
    pub fn slurm_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .submitted
            .iter()
            .chain(&self.queued)
            .map(|(_, slurm)| slurm.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Submits every job that has neither finished nor is still queued, printing the ids.
pub fn submit(
    jobs: &SweepJobs,
    invocation: &SweepInvocation,
    spec: &SlurmSpec,
    name: &str,
) -> Result<Submission> {
    let dirs = SlurmDirs::create(&jobs.results_dir)?;
    let record = Submitted::load(&jobs.results_dir)?;
    let recorded: Vec<String> = record.jobs.values().cloned().collect();
    let active = active_slurm_ids(&recorded)?;
    let mut submitter = Submitter {
        jobs,
        invocation,
        spec,
        name,
        dirs,
        record,
        active,
        submission: Submission::default(),
    };
    for float in jobs.jobs.iter().filter(|j| j.cell_index.is_none()) {
        submitter.submit_seed(float)?;
    }
    submitter.record.save(&jobs.results_dir)?;
    submitter.print_summary();
    Ok(submitter.submission)
}

/// Where `sbatch` runs the jobs (the submitting directory) and where their scripts and
/// logs go (`<results>/slurm`, `<results>/slurm/logs`), as absolute paths.
struct SlurmDirs {
    workdir: PathBuf,
    slurm: PathBuf,
    logs: PathBuf,
}

impl SlurmDirs {
    /// The directories for `results_dir`, creating the log directory (and its parents).
    fn create(results_dir: &Path) -> Result<Self> {
        let workdir = std::env::current_dir().context("reading the working directory")?;
        let slurm = workdir.join(results_dir).join("slurm");
        let logs = slurm.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Self {
            workdir,
            slurm,
            logs,
        })
    }
}

/// One submission in progress: what it submits from, the record of earlier submissions
/// (updated as it goes), which recorded Slurm ids are still queued, and what it did.
struct Submitter<'a> {
    jobs: &'a SweepJobs,
    invocation: &'a SweepInvocation,
    spec: &'a SlurmSpec,
    name: &'a str,
    dirs: SlurmDirs,
    record: Submitted,
    active: HashSet<String>,
    submission: Submission,
}

impl Submitter<'_> {
    /// A seed's jobs: its float job unless finished, then its unfinished cells as one
    /// array that waits for the float job when that is queued or submitted.
    fn submit_seed(&mut self, float: &SweepJob) -> Result<()> {
        let cells: Vec<&SweepJob> = self
            .jobs
            .jobs
            .iter()
            .filter(|j| j.depends_on.as_ref() == Some(&float.id))
            .collect();
        let float_slurm = if self.jobs.is_finished(float)? {
            None
        } else {
            Some(self.submit_float(float)?)
        };
        let indices = self.pending_cells(&cells)?;
        if indices.is_empty() {
            return Ok(());
        }
        self.submit_cells(float.seed, &cells, &indices, float_slurm.as_deref())
    }

    /// The Slurm id recorded for `job_id` when that Slurm job is still queued.
    fn queued_id(&self, job_id: &str) -> Option<String> {
        self.record
            .jobs
            .get(job_id)
            .filter(|s| self.active.contains(*s))
            .cloned()
    }

    /// Notes a new Slurm job for `job_id` in the record and the submission.
    fn record_submitted(&mut self, job_id: &str, slurm_id: String) {
        self.record
            .jobs
            .insert(job_id.to_string(), slurm_id.clone());
        self.submission
            .submitted
            .push((job_id.to_string(), slurm_id));
    }

    /// The float job's Slurm id: the queued one, else that of a new `sbatch` job.
    fn submit_float(&mut self, float: &SweepJob) -> Result<String> {
        if let Some(queued) = self.queued_id(&float.id) {
            self.submission
                .queued
                .push((float.id.clone(), queued.clone()));
            return Ok(queued);
        }
        let (name, seed) = (self.name, float.seed);
        let script = self.dirs.slurm.join(format!("seed-{seed}-float.sbatch"));
        write_script(
            &script,
            &format!("sweep {name}, seed {seed}: the float model"),
            &self.invocation.job_command(&float.id)?,
        )?;
        let mut flags = vec![
            format!("--job-name=lbwnet-{name}-s{seed}-float"),
            output_flag(&self.dirs.logs, "%x-%j.out"),
        ];
        flags.extend(sbatch_flags(self.spec));
        let id = sbatch(&self.dirs.workdir, &flags, &script)?;
        println!("seed {seed}: float job {id} ({})", float.id);
        self.record_submitted(&float.id, id.clone());
        Ok(id)
    }

    /// The array indices of `cells` to submit: those neither finished nor still queued
    /// (the queued ones are noted in the submission).
    fn pending_cells(&mut self, cells: &[&SweepJob]) -> Result<Vec<usize>> {
        let mut indices = Vec::new();
        for cell in cells {
            if self.jobs.is_finished(cell)? {
                continue;
            }
            match self.queued_id(&cell.id) {
                Some(queued) => self.submission.queued.push((cell.id.clone(), queued)),
                None => indices.push(cell.cell_index.expect("a cell")),
            }
        }
        Ok(indices)
    }

    /// Submits the cells at `indices` as one job array (after `float_slurm` when given)
    /// and records each task as `<array>_<index>`.
    fn submit_cells(
        &mut self,
        seed: u64,
        cells: &[&SweepJob],
        indices: &[usize],
        float_slurm: Option<&str>,
    ) -> Result<()> {
        let name = self.name;
        let script = self.dirs.slurm.join(format!("seed-{seed}-cells.sbatch"));
        let command = self
            .invocation
            .array_job_command(&format!("seed-{seed}/cell-"), "SLURM_ARRAY_TASK_ID")?;
        write_script(
            &script,
            &format!("sweep {name}, seed {seed}: the cells, one per array task"),
            &command,
        )?;
        let list: Vec<String> = indices.iter().map(usize::to_string).collect();
        let mut flags = vec![
            format!("--job-name=lbwnet-{name}-s{seed}-cells"),
            output_flag(&self.dirs.logs, "%x-%A_%a.out"),
            format!("--array={}", list.join(",")),
        ];
        if let Some(float_id) = float_slurm {
            flags.push(format!("--dependency=afterok:{float_id}"));
            // A failed float job cancels its cells instead of leaving them pending forever.
            flags.push("--kill-on-invalid-dep=yes".into());
        }
        flags.extend(sbatch_flags(self.spec));
        let array = sbatch(&self.dirs.workdir, &flags, &script)?;
        println!(
            "seed {seed}: cells array job {array}, tasks {}{}",
            list.join(","),
            float_slurm
                .map(|f| format!(", after job {f}"))
                .unwrap_or_default()
        );
        for cell in cells {
            let index = cell.cell_index.expect("a cell");
            if indices.contains(&index) {
                self.record_submitted(&cell.id, format!("{array}_{index}"));
            }
        }
        Ok(())
    }

    /// The closing line: how many jobs were submitted, found queued, or had finished.
    fn print_summary(&self) {
        let (submitted, queued) = (
            self.submission.submitted.len(),
            self.submission.queued.len(),
        );
        println!(
            "submitted {submitted} jobs, {queued} still queued from before, {} finished earlier; logs in {}",
            self.jobs.jobs.len() - submitted - queued,
            self.dirs.logs.display()
        );
    }
}

/// Polls `squeue` until none of the submission's jobs is pending or running, showing how
/// many of the sweep's jobs have finished.
pub fn wait(jobs: &SweepJobs, submission: &Submission, poll: Duration) -> Result<()> {
    let ids = submission.slurm_ids();
    let bar = progress_bar(jobs.jobs.len() as u64, "sweep jobs (slurm)");
    loop {
        let active = active_slurm_ids(&ids)?;
        let mut finished = 0;
        for job in &jobs.jobs {
            finished += usize::from(jobs.is_finished(job)?);
        }
        bar.set_position(finished as u64);
        bar.set_message(format!("{} in the Slurm queue", active.len()));
        if active.is_empty() {
            break;
        }
        std::thread::sleep(poll);
    }
    bar.finish_and_clear();
    Ok(())
}

fn write_script(path: &Path, what: &str, command: &str) -> Result<()> {
    let text = format!("#!/bin/bash\n# lbwnet {what}\nset -euo pipefail\nexec {command}\n");
    write_atomic(path, text.as_bytes())
}

/// `sbatch --parsable`, run in `workdir`; returns the new job's id.
fn sbatch(workdir: &Path, flags: &[String], script: &Path) -> Result<String> {
    let mut argv = vec!["sbatch".to_string(), "--parsable".into()];
    argv.push(format!("--chdir={}", workdir.display()));
    argv.extend(flags.iter().cloned());
    argv.push(script.display().to_string());
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| {
            "running sbatch: the slurm executor needs Slurm's client commands (sbatch, squeue) on PATH"
        })?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shell_join(&argv)?,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    // `--parsable` prints `id` or `id;cluster`.
    let text = String::from_utf8_lossy(&output.stdout);
    let id = text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed `{}`, not a job id", text.trim());
    }
    Ok(id)
}

/// Which of `ids` (jobs `123` or array tasks `124_3`) are still in the queue (pending,
/// running, completing, ...). Jobs the controller has forgotten count as gone.
fn active_slurm_ids(ids: &[String]) -> Result<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let listed = match squeue(ids)? {
        Some(listed) => listed,
        // One id the controller no longer knows fails the whole query: ask one by one.
        None => {
            let mut all = Vec::new();
            for id in ids {
                all.extend(squeue(std::slice::from_ref(id))?.unwrap_or_default());
            }
            all
        }
    };
    // With `-r` every array task is listed on its own line as `124_3`, as recorded.
    let wanted: HashSet<&String> = ids.iter().collect();
    Ok(listed
        .into_iter()
        .filter(|entry| wanted.contains(entry))
        .collect())
}

/// `squeue` lines for `ids`, or none when it rejects an id as unknown.
fn squeue(ids: &[String]) -> Result<Option<Vec<String>>> {
    // squeue takes array tasks by their array job id.
    let mut jobs: Vec<&str> = ids
        .iter()
        .map(|id| id.split('_').next().unwrap_or(id))
        .collect();
    jobs.sort_unstable();
    jobs.dedup();
    let output = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i", "-j", &jobs.join(",")])
        .output()
        .context("running squeue: the slurm executor needs Slurm's client commands on PATH")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("Invalid job id") {
            return Ok(None);
        }
        bail!("squeue failed ({}): {}", output.status, stderr.trim());
    }
    Ok(Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    ))
}

/// sbatch's `--output` for logs named by `pattern` (sbatch's `%` codes) in `dir`: a `%` in
/// the directory itself is doubled, which sbatch reads as a literal `%`.
fn output_flag(dir: &Path, pattern: &str) -> String {
    format!(
        "--output={}/{pattern}",
        dir.display().to_string().replace('%', "%%")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `%` in the results path stays literal in `--output`; `@INDEX@` anywhere in the
    /// command (binary, config, `--set` values) stays literal, and only the job id takes
    /// the array index.
    #[test]
    fn only_the_job_id_takes_the_array_index_and_percent_stays_literal() {
        assert_eq!(
            output_flag(Path::new("/r/100%/logs"), "%x-%j.out"),
            "--output=/r/100%%/logs/%x-%j.out"
        );
        let invocation = crate::experiments::jobs::SweepInvocation {
            exe: "/opt/@INDEX@/lbwnet".into(),
            config: "sweeps/@INDEX@.yaml".into(),
            quick: true,
            seeds: Some(2),
            sets: vec!["name=run-@INDEX@".into()],
        };
        let command = invocation
            .array_job_command("seed-0/cell-", "SLURM_ARRAY_TASK_ID")
            .unwrap();
        assert_eq!(command.matches("@INDEX@").count(), 3, "{command}");
        let run = Command::new("sh")
            .args([
                "-c",
                &format!("set -- {command}; for a; do echo \"$a\"; done"),
            ])
            .env("SLURM_ARRAY_TASK_ID", "7")
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8(run.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(words[0], "/opt/@INDEX@/lbwnet");
        assert!(words.contains(&"name=run-@INDEX@".to_string()), "{words:?}");
        assert_eq!(words.last().unwrap(), "seed-0/cell-7");
    }

    #[test]
    fn a_slurm_block_becomes_sbatch_flags_in_a_fixed_order() {
        let spec: SlurmSpec = serde_yaml::from_str(
            "{partition: gpu, time: '2-00:00:00', gpus_per_job: 1, cpus_per_task: 8, mem: 48G, account: lab, extra: ['--qos=normal']}",
        )
        .unwrap();
        assert_eq!(
            sbatch_flags(&spec),
            [
                "--partition=gpu",
                "--time=2-00:00:00",
                "--gpus=1",
                "--cpus-per-task=8",
                "--mem=48G",
                "--account=lab",
                "--qos=normal"
            ]
        );
        assert!(sbatch_flags(&SlurmSpec::default()).is_empty());
        assert!(serde_yaml::from_str::<SlurmSpec>("{gpus: 1}").is_err());
    }
}
