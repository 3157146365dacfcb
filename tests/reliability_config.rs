//! No config value makes `lbwnet train` panic (exit code 101). Every numeric key of the
//! config (found by walking the serialized config, so new keys are covered without editing
//! this test) is set in turn to -1, 0, 1e30, 2^64 - 1 and a string. Each case is first
//! validated in-process (the same `ExperimentConfig::from_yaml_str` the binary runs
//! before building anything); a refused value must name its key. Every accepted case is
//! then trained with the binary (tiny model, one iteration), grouped a few per process to
//! save libtorch's start-up, and must finish; a failing group is rerun case by case to
//! name the culprit. A sample of refused cases goes through the binary too, checking the
//! exit code and that the message names the key.
use lbwnet::config::ExperimentConfig;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VALUES: [&str; 5] = ["-1", "0", "1e30", "18446744073709551615", "abc"];
/// Accepted cases trained in one process.
const GROUP: usize = 4;
/// Refused cases also run through the binary.
const REFUSED_SAMPLE: usize = 12;
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

fn tiny_yaml(root: &Path) -> String {
    format!(
        r#"
name: tiny
data:
  root: {data}
  min_size: 64
  max_size: 96
  loader_threads: 1
  queue_size: 2
  synthetic: {{train: 3, test: 2, seed: 7, width: 96, height: 64}}
model:
  backbone: small
  small_width: 2
  anchor_sizes: [32]
  anchor_ratios: [1.0]
  rpn: {{channels: 4, pre_nms_top_n_train: 50, post_nms_top_n_train: 10, pre_nms_top_n_test: 20, post_nms_top_n_test: 5, min_size: 2}}
  roi: {{batch_size_per_image: 8, head_hidden: 8}}
quant: {{bits: 32, method: lbw, c: 7.2}}
train:
  iterations: 1
  lr: 0.005
  lr_steps: [4]
  warmup_iterations: 2
  checkpoint_interval: 0
  log_interval: 1
  output_dir: {runs}
  device: cpu
  threads: 1
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    )
}

/// One key set to one value: `key=value`, or for an element of a numeric list the whole
/// list with that element replaced.
#[derive(Debug, Clone)]
struct Case {
    key: String,
    set: String,
}

/// A numeric leaf: its dotted key, and for an element of a list of numbers, its index and
/// the whole list (as YAML texts).
type NumericKey = (String, Option<(usize, Vec<String>)>);

/// Numeric leaves of a YAML tree.
fn numeric_keys(value: &serde_yaml::Value, prefix: &str, out: &mut Vec<NumericKey>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                let k = k.as_str().unwrap();
                let key = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_keys(v, &key, out);
            }
        }
        serde_yaml::Value::Number(_) => out.push((prefix.to_string(), None)),
        serde_yaml::Value::Sequence(items) if items.iter().all(|v| v.is_number()) => {
            let texts: Vec<String> = items
                .iter()
                .map(|v| serde_yaml::to_string(v).unwrap().trim().to_string())
                .collect();
            for i in 0..items.len() {
                out.push((prefix.to_string(), Some((i, texts.clone()))));
            }
        }
        _ => {}
    }
}

fn cases(yaml: &str) -> Vec<Case> {
    let cfg = ExperimentConfig::from_yaml_str(yaml, &[], Path::new("tiny.yaml")).unwrap();
    let tree: serde_yaml::Value = serde_yaml::from_str(&cfg.to_yaml().unwrap()).unwrap();
    let mut keys = Vec::new();
    numeric_keys(&tree, "", &mut keys);
    let mut out = Vec::new();
    for (key, list) in keys {
        for value in VALUES {
            let set = match &list {
                None => format!("{key}={value}"),
                Some((i, items)) => {
                    let mut items = items.clone();
                    items[*i] = value.to_string();
                    format!("{key}=[{}]", items.join(", "))
                }
            };
            out.push(Case {
                key: key.clone(),
                set,
            });
        }
    }
    out
}

struct Outcome {
    /// None: killed by a signal, or by us after [`PROCESS_TIMEOUT`] (a hang).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `lbwnet train --config <config> --set ...` with a time bound.
fn run_train(config: &Path, sets: &[String]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbwnet"));
    cmd.arg("train").arg("--config").arg(config);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            return Outcome {
                code: None,
                stdout: String::new(),
                stderr: format!("did not finish in {PROCESS_TIMEOUT:?} (a hang)"),
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        stdout: std::fs::read_to_string(out_path).unwrap(),
        stderr: std::fs::read_to_string(err_path).unwrap(),
    }
}

/// Runs `jobs` on two threads (the binary is single-threaded here: `train.threads: 1`).
fn parallel<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((i, job)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let r = f(&job);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn is_synthetic(case: &Case) -> bool {
    case.key.starts_with("data.synthetic.")
}

#[test]
fn no_numeric_config_value_panics() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let yaml = tiny_yaml(dir.path());
    let config = dir.path().join("tiny.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let base = ExperimentConfig::load(&config, &[]).unwrap();
    lbwnet::data::ensure_synthetic(&base.data.root, base.data.synthetic.as_ref()).unwrap();

    let all = cases(&yaml);
    let keys: std::collections::BTreeSet<&str> = all.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.len() >= 50, "only {} numeric keys found", keys.len());
    // In-process validation: the same call the binary makes before building anything.
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for case in &all {
        let result = std::panic::catch_unwind(|| {
            ExperimentConfig::from_yaml_str(&yaml, std::slice::from_ref(&case.set), &config)
        })
        .unwrap_or_else(|_| panic!("validating --set {} panicked", case.set));
        match result {
            Ok(_) => accepted.push(case.clone()),
            Err(err) => {
                let msg = format!("{err:#}");
                assert!(
                    msg.contains(&case.key),
                    "--set {}: the error does not name the key: {msg}",
                    case.set
                );
                refused.push(case.clone());
            }
        }
    }

    // Accepted cases train, a few per process. Synthetic-data keys change the data set, so
    // their groups get a data root of their own.
    let mut groups: Vec<Vec<Case>> = Vec::new();
    for synthetic in [false, true] {
        let first = groups.len();
        for case in accepted.iter().filter(|c| is_synthetic(c) == synthetic) {
            // First fit: a group with room, without this key, still valid with the case.
            let slot = groups[first..].iter().position(|group| {
                group.len() < GROUP && group.iter().all(|c| c.key != case.key) && {
                    let mut sets: Vec<String> = group.iter().map(|c| c.set.clone()).collect();
                    sets.push(case.set.clone());
                    ExperimentConfig::from_yaml_str(&yaml, &sets, &config).is_ok()
                }
            });
            match slot {
                Some(k) => groups[first + k].push(case.clone()),
                None => groups.push(vec![case.clone()]),
            }
        }
    }
    let run_group = |(n, group): &(usize, Vec<Case>)| -> Outcome {
        let mut sets = vec![format!(
            "train.output_dir={}",
            dir.path().join(format!("runs-{n}")).display()
        )];
        if group.iter().any(is_synthetic) {
            sets.push(format!(
                "data.root={}",
                dir.path().join(format!("data-{n}")).display()
            ));
        }
        sets.extend(group.iter().map(|c| c.set.clone()));
        run_train(&config, &sets)
    };
    let jobs: Vec<(usize, Vec<Case>)> = groups.iter().cloned().enumerate().collect();
    let outcomes = parallel(jobs.clone(), run_group);
    let mut failures = Vec::new();
    for ((n, group), outcome) in jobs.iter().zip(outcomes) {
        if outcome.code == Some(0) && outcome.stdout.contains("mAP (") {
            continue;
        }
        // Pinpoint the case that fails on its own.
        let singles: Vec<(usize, Vec<Case>)> = group
            .iter()
            .enumerate()
            .map(|(k, c)| (1000 * (n + 1) + k, vec![c.clone()]))
            .collect();
        for ((_, single), o) in singles.iter().zip(parallel(singles.clone(), run_group)) {
            if !(o.code == Some(0) && o.stdout.contains("mAP (")) {
                failures.push(format!(
                    "--set {} passes validation but the run failed (exit {:?}):\n{}",
                    single[0].set,
                    o.code,
                    tail(&o.stderr)
                ));
            }
        }
        if failures.is_empty() {
            failures.push(format!(
                "group {:?} failed together (exit {:?}) though each case trains alone:\n{}",
                group.iter().map(|c| &c.set).collect::<Vec<_>>(),
                outcome.code,
                tail(&outcome.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A seeded sample of the refused cases through the binary: exit 1, the key named.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let sample: Vec<Case> = refused
        .choose_multiple(&mut rng, REFUSED_SAMPLE)
        .cloned()
        .collect();
    let outcomes = parallel(sample.clone(), |case| {
        run_train(&config, std::slice::from_ref(&case.set))
    });
    for (case, o) in sample.iter().zip(outcomes) {
        assert_eq!(o.code, Some(1), "--set {}: {}", case.set, o.stderr);
        assert!(
            o.stderr.contains(&case.key) && !o.stderr.contains("panicked"),
            "--set {}: {}",
            case.set,
            o.stderr
        );
    }
    eprintln!(
        "{} numeric keys x {} values = {} cases: {} refused (named key; {} through the binary), {} accepted and trained in {} processes; {:.1} s",
        keys.len(),
        VALUES.len(),
        all.len(),
        refused.len(),
        sample.len(),
        accepted.len(),
        groups.len(),
        started.elapsed().as_secs_f64()
    );
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// The shipped configs' numeric keys are covered by the walk above: a new key in any
/// section shows up in the serialized tree. This guards the walk itself.
#[test]
fn numeric_key_walk_finds_nested_and_list_keys() {
    let yaml = tiny_yaml(&PathBuf::from("/nonexistent"));
    let all = cases(&yaml);
    for key in [
        "model.rpn.channels",
        "model.roi.box_weights",
        "data.synthetic.objects",
        "train.lr_steps",
        "quant.c",
        "eval.detections_per_image",
    ] {
        assert!(all.iter().any(|c| c.key == key), "{key} not found");
    }
    assert!(all
        .iter()
        .any(|c| c.set == "model.roi.box_weights=[10.0, -1, 5.0, 5.0]"));
}
