//! The sweep as jobs, through the binary: `--plan` lists every job with its dependencies
//! and the exact command that runs it; `--job` runs one (a no-op once finished, a resume
//! when partial, refused before its float job); `--report` tables whatever finished and
//! names the rest; `--jobs 2` runs them two at a time and writes the same table, value
//! for value, as the sequential run.
mod common;
use common::{assert_success, QuickSweep};
use serde_json::Value;
use std::process::Command;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn plan(sweep: &QuickSweep, out: &str) -> Value {
    let out = assert_success(sweep.run(out, &["--plan", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn states(plan: &Value) -> Vec<String> {
    plan["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"]["state"].as_str().unwrap().to_string())
        .collect()
}

/// Runs job `id` of the sweep under `jobs/`, which must succeed; its info-level log.
fn run_job_logged(sweep: &QuickSweep, id: &str) -> String {
    let out = sweep
        .command("jobs", &["--job", id])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    stderr(&assert_success(out))
}

/// Runs a job's command from the plan through the shell, as a user or a scheduler would.
fn run_planned(sweep: &QuickSweep, job: &Value) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(job["command"].as_str().unwrap())
        .current_dir(sweep.workdir.path())
        .output()
        .unwrap()
}

#[test]
fn plan_job_and_report_cover_the_sweep_piece_by_piece() {
    let sweep = QuickSweep::new();
    let plan0 = plan(&sweep, "jobs");
    let jobs = plan0["jobs"].as_array().unwrap();
    // Two seeds: each a float job and 6 cells (retrained float, 6/5/4/3 bits, ternary).
    assert_eq!(jobs.len(), 14);
    let ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(
        &ids[..3],
        &[
            "seed-0/initial/fp32",
            "seed-1/initial/fp32",
            "seed-0/retrained/fp32"
        ]
    );
    assert!(ids.contains(&"seed-1/retrained/w2-ternary"), "{ids:?}");
    for job in jobs {
        let id = job["id"].as_str().unwrap();
        let seed = job["seed"].as_u64().unwrap();
        let deps: Vec<&str> = job["depends_on"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        if id.contains("/initial/") {
            assert!(deps.is_empty() && job["cell_index"].is_null(), "{job}");
        } else {
            let float = format!("seed-{seed}/initial/fp32");
            assert_eq!(deps, vec![float.as_str()], "{job}");
        }
        let argv: Vec<&str> = job["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(argv[0], env!("CARGO_BIN_EXE_lbwnet"));
        assert_eq!(&argv[argv.len() - 2..], &["--job", id]);
        for flag in ["--quick", "--seeds", "--set", "output_dir=jobs"] {
            assert!(argv.contains(&flag), "{flag} missing from {argv:?}");
        }
        assert!(job["command"].as_str().unwrap().contains(id));
    }
    assert!(states(&plan0).iter().all(|s| s == "not_started"));

    // Nothing finished: the report says so and writes an empty table.
    let report = assert_success(sweep.run("jobs", &["--report"]));
    assert!(
        stderr(&report).contains("missing 14 of the sweep's jobs"),
        "{}",
        stderr(&report)
    );
    let table = sweep.comparable_table("jobs");
    assert_eq!(table["missing"].as_array().unwrap().len(), 14);
    assert!(table["rows"].as_array().unwrap().is_empty());

    // A cell before its float model is refused.
    let early = sweep.run("jobs", &["--job", "seed-0/cell-1"]);
    assert!(!early.status.success());
    assert!(
        stderr(&early).contains("seed-0/initial/fp32, which has not finished"),
        "{}",
        stderr(&early)
    );
    let unknown = sweep.run("jobs", &["--job", "seed-7/initial/fp32"]);
    assert!(
        !unknown.status.success() && stderr(&unknown).contains("has no job `seed-7/initial/fp32`")
    );

    // The planned command runs the job; again, it is a no-op.
    assert_success(run_planned(&sweep, &jobs[0]));
    let metrics = sweep
        .results("jobs")
        .join("seed-0/initial/fp32/metrics.json");
    let first = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    let again = run_job_logged(&sweep, "seed-0/initial/fp32");
    assert!(again.contains("finished earlier, reused"), "{again}");
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().modified().unwrap(),
        first
    );

    // Array form `seed-<s>/cell-<k>`: the retrained float row and the 6-bit cell of seed 0.
    for cell in ["seed-0/cell-0", "seed-0/cell-1"] {
        assert_success(sweep.run("jobs", &["--job", cell]));
    }
    let after = plan(&sweep, "jobs");
    let finished: Vec<&str> = after["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"]["state"] == "finished")
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        finished,
        vec![
            "seed-0/initial/fp32",
            "seed-0/retrained/fp32",
            "seed-0/retrained/w6-lbw-c4"
        ]
    );

    // A run that lost its results but kept its final checkpoint is partial and resumes
    // (here: nothing left to train, so it only evaluates) to the same metrics, byte for byte.
    let cell_dir = sweep.results("jobs").join("seed-0/retrained/w6-lbw-c4");
    let saved = std::fs::read(cell_dir.join("metrics.json")).unwrap();
    std::fs::remove_file(cell_dir.join("metrics.json")).unwrap();
    let partial = plan(&sweep, "jobs");
    let state_of = |plan: &Value, id: &str| {
        plan["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .map(|j| j["state"]["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state_of(&partial, "seed-0/retrained/w6-lbw-c4"), "partial");
    let resumed = run_job_logged(&sweep, "seed-0/retrained/w6-lbw-c4");
    assert!(
        resumed.contains("resuming its latest checkpoint"),
        "{resumed}"
    );
    assert_eq!(std::fs::read(cell_dir.join("metrics.json")).unwrap(), saved);

    // The report tables what finished: the float row and the 6-bit cell, seed 0 only.
    assert_success(sweep.run("jobs", &["--report"]));
    let partial_table = sweep.comparable_table("jobs");
    let rows = partial_table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["seeds"], serde_json::json!([0]));
    }
    assert_eq!(partial_table["missing"].as_array().unwrap().len(), 11);
    let markdown = std::fs::read_to_string(sweep.results("jobs").join("table.md")).unwrap();
    assert!(markdown.contains("**Incomplete:** 11 jobs"), "{markdown}");

    // Two at a time finishes the rest; the table equals the one-process sweep's.
    assert_success(sweep.run("jobs", &["--jobs", "2"]));
    assert_success(sweep.run("sequential", &[]));
    let parallel = sweep.comparable_table("jobs");
    assert!(parallel["missing"].as_array().unwrap().is_empty());
    assert_eq!(parallel, sweep.comparable_table("sequential"));
    sweep.assert_same_weights("jobs", "sequential");
    // The report measures the runs (quantizer errors on the weights) in its own process:
    // its numbers must not depend on the threads that process has.
    let report_at = |threads: &str| {
        let out = sweep
            .command("jobs", &["--report"])
            .env("OMP_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert_success(out);
        sweep.comparable_table("jobs")
    };
    assert_eq!(report_at("1"), parallel);
    assert_eq!(report_at("2"), parallel);
    assert!(sweep
        .results("jobs")
        .join("logs/seed-1__retrained__w2-ternary.log")
        .is_file());
    assert!(states(&plan(&sweep, "jobs"))
        .iter()
        .all(|s| s == "finished"));
}

#[test]
fn executor_flags_that_do_not_fit_are_refused() {
    let sweep = QuickSweep::new();
    for (args, needle) in [
        (vec!["--jobs", "0"], "--jobs: need at least 1"),
        (
            vec!["--executor", "slurm", "--jobs", "2"],
            "--jobs and --devices are for --executor local",
        ),
        (vec!["--wait"], "--wait is for --executor slurm"),
        (
            vec!["--set", "slurm.partitions=gpu"],
            "unknown field `partitions`",
        ),
        (vec!["--plan", "--report"], "cannot be used with"),
    ] {
        let out = sweep.run("refused", &args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert!(
        !sweep.results("refused").exists(),
        "a refused sweep wrote results"
    );
}
