//! The quick sweep through a real Slurm: `scripts/slurm-cluster.sh` brings up a
//! single-node cluster (munge, slurmctld, slurmd; installed when missing) in a temporary
//! directory, the sweep is submitted with `--executor slurm`, one cell task is cancelled
//! with `scancel`, `--report` names it missing, submitting again runs only that job, and
//! the table equals, value for value, the one the local executor writes (and every run's
//! weights, byte for byte: the quick sweep's mAPs alone are too small to tell runs apart).
//!
//! Needs root (or sudo) to install the packages and nothing else on the ports the kernel
//! hands out, so it is not part of `make test`: `make test-slurm` runs it (CI does).
mod common;
use common::{assert_success, QuickSweep};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The test cluster; its daemons are stopped when it goes out of scope, pass or fail.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn up(dir: &Path) -> Self {
        let out = Command::new(script())
            .args(["up", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the test cluster did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let conf = printed
            .trim()
            .strip_prefix("export SLURM_CONF=")
            .unwrap_or_else(|| panic!("unexpected output: {printed}"))
            .to_string();
        Self {
            dir: dir.to_path_buf(),
            conf,
        }
    }

    /// A Slurm client command against this cluster.
    fn client(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .env("SLURM_CONF", &self.conf)
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until the queue is empty (every job finished, failed or was cancelled).
    fn drain(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let out = assert_success(self.client("squeue", &["-h", "-r", "-o", "%i %T"]));
            let queue = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if queue.is_empty() {
                return;
            }
            assert!(started.elapsed() < limit, "jobs still queued: {queue}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", self.dir.to_str().unwrap()])
            .status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs a Slurm test cluster (root to install it): make test-slurm"]
fn quick_sweep_on_slurm_equals_the_local_table_and_survives_a_cancelled_job() {
    let sweep = QuickSweep::new();
    let cluster = Cluster::up(&sweep.workdir.path().join("cluster"));

    let started = Instant::now();
    assert_success(sweep.run("local", &[]));
    let local_seconds = started.elapsed().as_secs_f64();

    // Submit without waiting; cancel one cell task while it waits for its float job.
    let started = Instant::now();
    let submit = assert_success(
        sweep
            .command("slurm", &["--executor", "slurm"])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap(),
    );
    let printed = stdout(&submit);
    eprintln!("{printed}");
    assert!(printed.contains("submitted 14 jobs"), "{printed}");
    assert!(
        printed.contains("after job"),
        "cells must wait for their float job: {printed}"
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sweep.results("slurm").join("slurm/submitted.json")).unwrap(),
    )
    .unwrap();
    let victim = "seed-1/retrained/w4-lbw-c2.5";
    let task = record["jobs"][victim].as_str().unwrap().to_string();
    assert!(task.contains('_'), "cells run as array tasks: {task}");
    let state = assert_success(cluster.client("squeue", &["-h", "-r", "-o", "%T", "-j", &task]));
    assert_eq!(
        stdout(&state).trim(),
        "PENDING",
        "{task} should wait for its float job"
    );
    assert_success(cluster.client("scancel", &[&task]));
    cluster.drain(Duration::from_secs(600));

    // The report tables the rest and names the cancelled job.
    let report = assert_success(sweep.command("slurm", &["--report"]).output().unwrap());
    assert!(
        stderr(&report).contains(&format!("missing 1 of the sweep's jobs: {victim}")),
        "{}",
        stderr(&report)
    );
    let partial = sweep.comparable_table("slurm");
    assert_eq!(partial["missing"], serde_json::json!([victim]));

    // Submitting again runs only the cancelled job, waits, and completes the sweep.
    let resubmit = assert_success(
        sweep
            .command("slurm", &["--executor", "slurm", "--wait", "--poll", "0.5"])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap(),
    );
    let printed = stdout(&resubmit);
    eprintln!("{printed}");
    assert!(
        printed.contains("submitted 1 jobs, 0 still queued from before, 13 finished earlier"),
        "{printed}"
    );
    let slurm_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        sweep.comparable_table("slurm"),
        sweep.comparable_table("local")
    );
    sweep.assert_same_weights("slurm", "local");

    // Nothing left: a third submission submits nothing.
    let idle = assert_success(
        sweep
            .command("slurm", &["--executor", "slurm", "--wait"])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap(),
    );
    assert!(
        stdout(&idle).contains("submitted 0 jobs"),
        "{}",
        stdout(&idle)
    );
    let logs = std::fs::read_dir(sweep.results("slurm").join("slurm/logs"))
        .unwrap()
        .count();
    assert_eq!(
        logs, 14,
        "one log per job that ran (the cancelled task never started)"
    );
    eprintln!(
        "quick sweep, 2 seeds, 14 jobs: local (one process) {local_seconds:.1} s; \
         Slurm (submit, cancel, report, resubmit, wait) {slurm_seconds:.1} s"
    );
}
