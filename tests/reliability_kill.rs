//! Durable checkpoints: a training SIGKILLed at random moments, again and again, always
//! resumes from its newest checkpoint (every checkpoint a kill leaves behind is complete)
//! or says clearly that none is complete, never loads a corrupt one and never panics; the
//! run it finally completes has the same weights, bit for bit, as an uninterrupted one. A
//! truncated or corrupted newest checkpoint is skipped with a warning for the previous
//! one. Outputs follow the umask.
use lbwnet::train::checkpoint;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Random SIGKILLs of the training.
const KILLS: usize = 20;
const ITERATIONS: usize = 40;

fn tiny_yaml(root: &Path, iterations: usize) -> String {
    format!(
        r#"
name: tiny
data:
  root: {data}
  min_size: 64
  max_size: 96
  loader_threads: 1
  queue_size: 2
  synthetic: {{train: 4, test: 2, seed: 7, width: 96, height: 64}}
model:
  backbone: small
  small_width: 2
  anchor_sizes: [32]
  anchor_ratios: [1.0]
  rpn: {{channels: 4, pre_nms_top_n_train: 50, post_nms_top_n_train: 10, pre_nms_top_n_test: 20, post_nms_top_n_test: 5, min_size: 2}}
  roi: {{batch_size_per_image: 8, head_hidden: 8}}
quant: {{bits: 6, method: lbw}}
train:
  iterations: {iterations}
  lr: 0.005
  lr_steps: [30]
  warmup_iterations: 5
  checkpoint_interval: 1
  log_interval: 10
  output_dir: {runs}
  device: cpu  # byte-identical runs are the CPU's guarantee (SPEC §3.5); CUDA kernels may not be
  threads: 1
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    )
}

/// `lbwnet train <args>` under umask 022, its stderr to `log`.
fn spawn(args: &[String], log: &Path) -> Child {
    let mut script = format!("umask 022; exec '{}' train", env!("CARGO_BIN_EXE_lbwnet"));
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for `child`, killing it (SIGKILL) after `kill_after` if given; Some(exit code)
/// when it ended on its own. Fails the test past a minute (a hang).
fn wait(child: &mut Child, kill_after: Option<Duration>) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().expect("ended by a signal we did not send"));
        }
        if kill_after.is_some_and(|d| started.elapsed() >= d) {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "lbwnet train hung"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Iterations of the checkpoint markers in a run directory.
fn markers(run_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(checkpoint::checkpoint_dir(run_dir)) else {
        return Vec::new();
    };
    let mut its: Vec<usize> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("iter_")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    its.sort();
    its
}

fn weights(run_dir: &Path, iteration: usize) -> Vec<u8> {
    std::fs::read(
        checkpoint::checkpoint_dir(run_dir).join(format!("iter_{iteration:07}.safetensors")),
    )
    .unwrap()
}

/// The iteration a resume reported continuing from.
fn resumed_at(log: &str) -> Option<usize> {
    let at = log.find(" at iteration ")? + " at iteration ".len();
    log[..at].contains("resumed ").then_some(())?;
    log[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The run's `log.jsonl` after it finished, however often it was killed and resumed:
/// every logged iteration (each 10th) once, in order, then the one evaluation.
fn assert_complete_log(run_dir: &Path) {
    let records = lbwnet::train::curves::read_log(&run_dir.join("log.jsonl")).unwrap();
    let lines: Vec<(bool, usize)> = records
        .iter()
        .map(|r| {
            (
                matches!(r, lbwnet::train::curves::Record::Evaluation(_)),
                r.iteration(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (false, 10),
            (false, 20),
            (false, 30),
            (false, 40),
            (true, 40)
        ]
    );
}

fn no_complete(log: &str) -> bool {
    log.contains("no complete checkpoint in")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn sigkill_at_random_moments_never_loses_or_corrupts_a_checkpoint() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.yaml");
    std::fs::write(&config, tiny_yaml(dir.path(), ITERATIONS)).unwrap();
    let cfg = lbwnet::config::ExperimentConfig::load(&config, &[]).unwrap();
    lbwnet::data::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref()).unwrap();
    let run_dir = cfg.run_dir();
    let run_arg = run_dir.display().to_string();
    let fresh = vec!["--config".to_string(), config.display().to_string()];
    let resume = vec!["--resume".to_string(), run_arg.clone()];
    let log = dir.path().join("stderr.log");
    let read_log = || std::fs::read_to_string(&log).unwrap();

    // The uninterrupted reference, in a directory of its own.
    let reference_out = dir.path().join("reference");
    let mut args = fresh.clone();
    args.extend([
        "--set".to_string(),
        format!("train.output_dir={}", reference_out.display()),
    ]);
    assert_eq!(
        wait(&mut spawn(&args, &log), None),
        Some(0),
        "{}",
        read_log()
    );
    let reference_dir = reference_out.join("tiny").join(cfg.quant_tag());
    let reference = weights(&reference_dir, ITERATIONS);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut resumes, mut none_complete, mut fresh_starts, mut finished) = (0, 0, 0, 0);
    let (mut kills, mut resumes_since_fresh, mut finished_resumed) = (0, 0, 0);
    while kills < KILLS {
        let present = markers(&run_dir);
        // Every checkpoint a kill left behind is complete.
        for &it in &present {
            let marker = checkpoint::checkpoint_dir(&run_dir).join(format!("iter_{it:07}.json"));
            if let Err(e) = checkpoint::verify(&marker) {
                panic!("after a SIGKILL, checkpoint {it} is incomplete: {e:#}");
            }
        }
        let done = run_dir.join("metrics.json").exists();
        let args = if present.is_empty() {
            // Nothing to resume: the resume must say so (and exit 1), then start afresh.
            let code = wait(&mut spawn(&resume, &log), None);
            let text = read_log();
            assert!(
                code == Some(1) && no_complete(&text) && !text.contains("panicked"),
                "resume without a complete checkpoint: exit {code:?}: {text}"
            );
            none_complete += 1;
            fresh_starts += 1;
            resumes_since_fresh = 0;
            &fresh
        } else if done {
            // Finished (after however many kills and resumes): it ended on the uninterrupted
            // run's weights. Then start afresh, which clears them, to kill it in other
            // phases again.
            assert!(
                weights(&run_dir, ITERATIONS) == reference,
                "a run finished after {resumes_since_fresh} resumes ended on other weights \
                 than the uninterrupted one"
            );
            assert_complete_log(&run_dir);
            finished += 1;
            finished_resumed += usize::from(resumes_since_fresh > 0);
            resumes_since_fresh = 0;
            fresh_starts += 1;
            &fresh
        } else {
            resumes += 1;
            resumes_since_fresh += 1;
            &resume
        };
        let delay = Duration::from_millis(rng.gen_range(150..1500));
        let code = wait(&mut spawn(args, &log), Some(delay));
        let text = read_log();
        assert!(
            !text.contains("panicked") && code != Some(101),
            "exit {code:?}: {text}"
        );
        if args == &resume {
            if let Some(at) = resumed_at(&text) {
                assert_eq!(
                    Some(&at),
                    present.last(),
                    "resumed from {at}, but the newest checkpoint is {present:?}: {text}"
                );
            }
            assert!(!text.contains("skipping checkpoint"), "{text}");
        }
        match code {
            None => kills += 1,
            Some(0) => {}
            Some(c) => panic!("exit {c} before the kill: {text}"),
        }
    }
    // Whatever the random kills hit, one resume from a mid-run checkpoint is arranged: a
    // fresh run is killed once it has written a checkpoint before its last iteration, and
    // the resume must continue from exactly that one and finish.
    let mid_run = loop {
        std::fs::remove_dir_all(&run_dir).ok();
        let mut child = spawn(&fresh, &log);
        let started = Instant::now();
        let at = loop {
            if !markers(&run_dir).is_empty() {
                child.kill().unwrap();
                child.wait().unwrap();
                break markers(&run_dir)
                    .last()
                    .copied()
                    .filter(|&last| last < ITERATIONS);
            }
            if child.try_wait().unwrap().is_some() {
                break None; // finished before a checkpoint was seen: try again
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "lbwnet train hung"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        if let Some(at) = at {
            break at;
        }
    };
    assert_eq!(
        wait(&mut spawn(&resume, &log), None),
        Some(0),
        "{}",
        read_log()
    );
    assert_eq!(
        resumed_at(&read_log()),
        Some(mid_run),
        "the resume did not continue from the mid-run checkpoint {mid_run}: {}",
        read_log()
    );
    assert!(run_dir.join("metrics.json").exists());
    assert!(
        weights(&run_dir, ITERATIONS) == reference,
        "the killed and resumed run ended on other weights than the uninterrupted one"
    );
    assert_complete_log(&run_dir);
    // No temporary file of a killed write is left.
    for sub in [
        run_dir.clone(),
        checkpoint::checkpoint_dir(&run_dir),
        run_dir.join("detections"),
    ] {
        for entry in std::fs::read_dir(&sub).unwrap().flatten() {
            let name = entry.file_name().into_string().unwrap();
            assert!(
                !name.starts_with(".lbwnet-tmp-"),
                "{name} left in {}",
                sub.display()
            );
        }
    }
    // Outputs follow the umask (022 here): 0644, not a temporary file's 0600.
    #[cfg(unix)]
    for path in [
        run_dir.join("metrics.json"),
        run_dir.join("config.yaml"),
        checkpoint::checkpoint_dir(&run_dir).join(format!("iter_{ITERATIONS:07}.json")),
        checkpoint::checkpoint_dir(&run_dir).join(format!("iter_{ITERATIONS:07}.safetensors")),
    ] {
        assert_eq!(mode(&path), 0o644, "{}", path.display());
    }
    eprintln!(
        "{kills} SIGKILLs: {resumes} resumes, {none_complete} resumes with no complete checkpoint, {fresh_starts} fresh starts ({finished} after a finished run, {finished_resumed} of them resumed after kills, each on the uninterrupted run's weights); {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Trains a 3-iteration run (checkpoints 2 and 3 are kept) in-process.
fn trained_run(dir: &Path) -> PathBuf {
    let config = dir.join("tiny.yaml");
    std::fs::write(&config, tiny_yaml(dir, 3)).unwrap();
    let cfg = lbwnet::config::ExperimentConfig::load(&config, &[]).unwrap();
    lbwnet::train::trainer::train(&cfg, None).unwrap();
    cfg.run_dir()
}

fn marker(run_dir: &Path, it: usize) -> PathBuf {
    checkpoint::checkpoint_dir(run_dir).join(format!("iter_{it:07}.json"))
}

/// The newest complete checkpoint's iteration and the reasons the newer ones were skipped.
fn latest(run_dir: &Path) -> (Option<usize>, Vec<String>) {
    let found = checkpoint::find_latest(run_dir).unwrap();
    (
        found.complete.map(|(_, s)| s.iteration),
        found.incomplete.into_iter().map(|(_, why)| why).collect(),
    )
}

#[test]
fn a_corrupt_or_truncated_latest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    assert_eq!(markers(&run_dir), vec![2, 3]);
    let w3 = marker(&run_dir, 3).with_extension("safetensors");
    let (good_weights, good_marker) = (
        std::fs::read(&w3).unwrap(),
        std::fs::read(marker(&run_dir, 3)).unwrap(),
    );
    let restore = || {
        std::fs::write(&w3, &good_weights).unwrap();
        std::fs::write(marker(&run_dir, 3), &good_marker).unwrap();
    };
    assert_eq!(latest(&run_dir), (Some(3), vec![]));

    // Truncated weights.
    std::fs::write(&w3, &good_weights[..good_weights.len() / 2]).unwrap();
    let (at, why) = latest(&run_dir);
    assert_eq!(at, Some(2));
    assert!(why[0].contains("truncated"), "{why:?}");
    // A flipped bit in the tensor data (same length).
    let mut flipped = good_weights.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&w3, &flipped).unwrap();
    let (at, why) = latest(&run_dir);
    assert_eq!(at, Some(2));
    assert!(why[0].contains("checksum"), "{why:?}");
    // Missing weights; a truncated marker.
    std::fs::remove_file(&w3).unwrap();
    assert_eq!(latest(&run_dir).0, Some(2));
    restore();
    std::fs::write(marker(&run_dir, 3), &good_marker[..good_marker.len() / 2]).unwrap();
    assert_eq!(latest(&run_dir).0, Some(2));
    // A marker from before checksums: the file's framing still catches a truncation.
    let mut old: serde_json::Value = serde_json::from_slice(&good_marker).unwrap();
    let map = old.as_object_mut().unwrap();
    map.remove("weights_bytes");
    map.remove("weights_checksum");
    std::fs::write(marker(&run_dir, 3), serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(latest(&run_dir).0, Some(3));
    std::fs::write(&w3, &good_weights[..good_weights.len() - 100]).unwrap();
    assert_eq!(latest(&run_dir).0, Some(2));

    // The binary: resume skips the truncated newest checkpoint with a warning, continues
    // from the previous one and writes the same iteration-3 weights again.
    restore();
    std::fs::write(&w3, &good_weights[..good_weights.len() / 3]).unwrap();
    let log = dir.path().join("stderr.log");
    let resume = vec!["--resume".to_string(), run_dir.display().to_string()];
    let code = wait(&mut spawn(&resume, &log), None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("skipping checkpoint") && text.contains("iter_0000003.json"),
        "{text}"
    );
    assert_eq!(resumed_at(&text), Some(2), "{text}");
    assert_eq!(std::fs::read(&w3).unwrap(), good_weights);

    // Neither checkpoint complete: said clearly, with the reasons, exit 1.
    std::fs::write(&w3, b"").unwrap();
    let w2 = marker(&run_dir, 2).with_extension("safetensors");
    let bytes = std::fs::read(&w2).unwrap();
    std::fs::write(&w2, &bytes[..bytes.len() - 1]).unwrap();
    let code = wait(&mut spawn(&resume, &log), None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        no_complete(&text)
            && text.contains("2 incomplete")
            && text.contains("train it afresh")
            && !text.contains("panicked"),
        "{text}"
    );
    // Nothing at all: also said clearly.
    checkpoint::clear(&run_dir).unwrap();
    let err = format!(
        "{:#}",
        lbwnet::train::trainer::resume_config(&run_dir, &[]).unwrap_err()
    );
    assert!(err.contains("none was written yet"), "{err}");
}

/// `lbwnet quantize` (atomic output) under several umasks: the file gets 0666 minus the
/// umask, like any other tool's output.
#[cfg(unix)]
#[test]
fn outputs_follow_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for v in [0.5f32, -1.0, 0.25, 2.0] {
        npy.extend_from_slice(&v.to_le_bytes());
    }
    let input = dir.path().join("w.npy");
    std::fs::write(&input, npy).unwrap();
    for (umask, expected) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
        let output = dir.path().join(format!("q{umask}.npy"));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask}; exec '{}' quantize --input '{}' --output '{}' --method lbw --bits 4",
                env!("CARGO_BIN_EXE_lbwnet"),
                input.display(),
                output.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(mode(&output), expected, "umask {umask}");
    }
}
