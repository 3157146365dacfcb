//! Fuzzing the model file (`.lbw`) as `lbwnet detect --model` reads it, under a memory
//! limit. A small exported model is mutated three ways, with a fixed seed:
//! - raw bytes anywhere in the file (the safetensors header and the tensor data);
//! - one value of the lbwnet metadata (sizes, shapes, names, the stored config), written
//!   back with a valid checksum so the checks behind the checksum are reached;
//! - one tensor (shape, dtype, name, values, presence), also with a valid checksum.
//!
//! Every case must end in detections (exit 0) or a clear error naming the file (exit 1):
//! never a panic, an abort or an allocation past the limit (`RLIMIT_DATA` at the intact
//! model's measured peak plus 1 GiB).
mod common;

use common::fuzz::mutate;
use lbwnet::config::ExperimentConfig;
use lbwnet::deploy::format::{checksum, ModelFile, RawTensor, METADATA_KEY};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Cases per kind of mutation (raw, metadata, tensor).
const CASES_PER_KIND: usize = 120;
/// Bound on the whole run, checked as it goes.
const TIME_LIMIT: Duration = Duration::from_secs(300);
/// Concurrent `lbwnet` processes (CI has 2 cores).
const WORKERS: usize = 2;
/// Headroom over the intact model's peak for each mutated one.
const HEADROOM: u64 = 1 << 30;

/// Pieces of safetensors header JSON, spliced into the header.
const HEADER_TOKENS: &[&str] = &[
    "\"",
    ":",
    ",",
    "[",
    "]",
    "{",
    "}",
    "\\\"",
    "0",
    "-1",
    "1e400",
    "18446744073709551615",
    "4294967296",
    "\"F64\"",
    "\"U8\"",
    "\"dtype\"",
    "\"shape\":[",
    "\"data_offsets\":[0,",
    "\"__metadata__\"",
    "null",
];

fn tiny_config(root: &Path) -> ExperimentConfig {
    let yaml = format!(
        r#"
name: fuzz
data:
  root: {data}
  min_size: 64
  max_size: 96
  loader_threads: 1
  synthetic: {{train: 2, test: 1, seed: 3, width: 96, height: 64}}
model:
  backbone: small
  small_width: 8
  anchor_sizes: [32]
  rpn: {{channels: 16, pre_nms_top_n_test: 50, post_nms_top_n_test: 10, min_size: 2}}
  roi: {{batch_size_per_image: 16, head_hidden: 32}}
quant: {{bits: 4, method: lbw}}
train: {{iterations: 1, warmup_iterations: 0, checkpoint_interval: 0, output_dir: {runs}, device: cpu, threads: 1}}
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    );
    ExperimentConfig::from_yaml_str(&yaml, &[], Path::new("fuzz.yaml")).unwrap()
}

/// JSON values a stranger's metadata could hold where a well-formed one has another.
fn replacement(rng: &mut ChaCha8Rng) -> Value {
    let choices: Vec<Value> = vec![
        0.into(),
        (-1).into(),
        1.into(),
        2.into(),
        8.into(),
        33.into(),
        8192.into(),
        65536.into(),
        100_000.into(),
        1_000_000_000.into(),
        u64::MAX.into(),
        i64::MIN.into(),
        1e308.into(),
        (-0.5).into(),
        "".into(),
        "../../x".into(),
        "/tmp/x".into(),
        "resnet50".into(),
        "vgg16".into(),
        "small".into(),
        "lbw".into(),
        "ternary".into(),
        Value::Null,
        Value::Bool(true),
        Value::Array(vec![]),
        Value::Array(vec![1.into(); 5]),
        Value::Object(Default::default()),
    ];
    choices.choose(rng).unwrap().clone()
}

/// Every JSON pointer below `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        _ => {}
    }
}

/// One edit of one metadata value: replaced, removed, or (a number) scaled.
fn mutate_metadata(meta: &mut Value, rng: &mut ChaCha8Rng) {
    let mut all = Vec::new();
    pointers(meta, String::new(), &mut all);
    let target = all.choose(rng).unwrap().clone();
    let (parent, key) = target.rsplit_once('/').unwrap();
    match rng.gen_range(0..4) {
        0 => {
            match meta.pointer_mut(parent).unwrap() {
                Value::Object(map) => {
                    map.shift_remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Value::Array(items) => {
                    items.remove(key.parse::<usize>().unwrap());
                }
                _ => unreachable!(),
            };
        }
        1 => {
            let v = meta.pointer_mut(&target).unwrap();
            if let Some(n) = v.as_i64() {
                *v = n
                    .saturating_mul(*[2i64, 16, 1024, -1].choose(rng).unwrap())
                    .into();
            } else {
                *v = replacement(rng);
            }
        }
        _ => *meta.pointer_mut(&target).unwrap() = replacement(rng),
    }
}

/// One edit of one tensor, its data kept consistent with its shape and dtype (the
/// container's own rule) unless the edit is about that.
fn mutate_tensors(tensors: &mut BTreeMap<String, RawTensor>, rng: &mut ChaCha8Rng) {
    let names: Vec<String> = tensors.keys().cloned().collect();
    let name = names.choose(rng).unwrap().clone();
    let t = tensors.get_mut(&name).unwrap();
    match rng.gen_range(0..7) {
        0 => {
            tensors.remove(&name);
        }
        1 => {
            let t = tensors.remove(&name).unwrap();
            let renamed = ["../evil", "rpn.head.conv.weight", "x", ""]
                .choose(rng)
                .unwrap();
            tensors.insert(format!("{renamed}{}", rng.gen_range(0..2)), t);
        }
        2 => {
            // The same bytes under another shape.
            let bytes = t.data.len() / dtype_size(t.dtype);
            t.shape = vec![bytes];
        }
        3 => {
            // Twice the data and a doubled leading dimension.
            let copy = t.data.clone();
            t.data.extend(copy);
            if t.shape.is_empty() {
                t.shape = vec![2];
            } else {
                t.shape[0] *= 2;
            }
        }
        4 => {
            // Another dtype of the same byte count.
            let (dtype, size) = *[
                (Dtype::U8, 1),
                (Dtype::F16, 2),
                (Dtype::I32, 4),
                (Dtype::F64, 8),
            ]
            .choose(rng)
            .unwrap();
            t.dtype = dtype;
            t.data.truncate(t.data.len() / size * size);
            t.shape = vec![t.data.len() / size];
        }
        5 => {
            // One value replaced by an extreme float (or an extreme byte).
            if t.dtype == Dtype::F32 && !t.data.is_empty() {
                let i = rng.gen_range(0..t.data.len() / 4) * 4;
                let v = *[f32::NAN, f32::INFINITY, -1.0, 1e38, 0.0]
                    .choose(rng)
                    .unwrap();
                t.data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            } else if !t.data.is_empty() {
                let i = rng.gen_range(0..t.data.len());
                t.data[i] = 0xff;
            }
        }
        _ => {
            // One element fewer.
            if let Some(last) = t.shape.last_mut() {
                if *last > 0 {
                    *last -= 1;
                    let keep = t.shape.iter().product::<usize>() * dtype_size(t.dtype);
                    t.data.truncate(keep);
                }
            }
        }
    }
}

fn dtype_size(dtype: Dtype) -> usize {
    match dtype {
        Dtype::U8 | Dtype::I8 | Dtype::BOOL => 1,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        _ => 4,
    }
}

/// The container of `tensors` with `meta` as its metadata, the checksum made valid.
fn encode_value(mut meta: Value, tensors: &BTreeMap<String, RawTensor>) -> Vec<u8> {
    if let Ok(crc) = checksum(&meta, tensors) {
        if let Some(map) = meta.as_object_mut() {
            map.insert("crc32".into(), crc.into());
        }
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data);
            (name.clone(), view.unwrap())
        })
        .collect();
    let info = HashMap::from([(METADATA_KEY.to_string(), meta.to_string())]);
    safetensors::tensor::serialize(views, &Some(info)).unwrap()
}

/// `lbwnet detect` on `image` with `model`, its data segment limited to `limit` bytes.
fn detect(model: &Path, image: &Path, limit: Option<u64>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lbwnet"));
    command
        .args(["detect", "--device", "cpu", "--json", "--model"])
        .arg(model)
        .arg(image)
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null());
    if let Some(limit) = limit {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.output().expect("running lbwnet")
}

/// Peak resident memory of the finished children so far, in bytes.
fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn mutated_model_files_end_in_detections_or_a_clear_error_within_a_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    lbwnet::train::trainer::train(&cfg, None).unwrap();
    let model = dir.path().join("model.lbw");
    common::lbwnet_ok(&[
        "export",
        "--run",
        cfg.run_dir().to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    let image = lbwnet::data::voc::VocDataset::open(&cfg.data.root, "test", None)
        .unwrap()
        .image_path(0);

    let intact = detect(&model, &image, None);
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    let limit = children_peak_rss() + HEADROOM;
    let intact = detect(&model, &image, Some(limit));
    assert!(
        intact.status.success(),
        "the intact model fails under the limit: {}",
        String::from_utf8_lossy(&intact.stderr)
    );

    let bytes = std::fs::read(&model).unwrap();
    let file = ModelFile::read(&model).unwrap();
    let meta = serde_json::to_value(&file.meta).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0x1b3_0001);
    for i in 0..CASES_PER_KIND {
        // Mostly the header (where the sizes are), sometimes the whole file.
        let raw = if rng.gen_bool(0.7) {
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let mut head = mutate(&bytes[..header], HEADER_TOKENS, &mut rng);
            head.extend_from_slice(&bytes[header..]);
            head
        } else {
            mutate(&bytes, HEADER_TOKENS, &mut rng)
        };
        cases.push((format!("raw-{i}"), raw));
        let mut edited = meta.clone();
        for _ in 0..rng.gen_range(1..=2) {
            mutate_metadata(&mut edited, &mut rng);
        }
        cases.push((format!("meta-{i}"), encode_value(edited, &file.tensors)));
        let mut tensors = file.tensors.clone();
        mutate_tensors(&mut tensors, &mut rng);
        cases.push((format!("tensor-{i}"), encode_value(meta.clone(), &tensors)));
    }

    let start = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let outcomes = std::sync::Mutex::new([0usize; 2]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, data)) = cases.get(k) else {
                    break;
                };
                if start.elapsed() > TIME_LIMIT {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{name}: past the time limit"));
                    break;
                }
                let path: PathBuf = dir.path().join(format!("{name}.lbw"));
                std::fs::write(&path, data).unwrap();
                let out = detect(&path, &image, Some(limit));
                let stderr = String::from_utf8_lossy(&out.stderr);
                let verdict = match out.status.code() {
                    Some(0) => serde_json::from_slice::<Value>(&out.stdout)
                        .is_ok()
                        .then_some(0)
                        .ok_or("exit 0 without JSON"),
                    Some(1) if stderr.contains("panicked") => Err("a panic"),
                    Some(1) if !stderr.contains(path.to_str().unwrap()) => {
                        Err("an error that does not name the file")
                    }
                    Some(1) => Ok(1),
                    Some(_) => Err("an exit status other than 0 or 1"),
                    None => Err("killed by a signal"),
                };
                match verdict {
                    Ok(i) => outcomes.lock().unwrap()[i] += 1,
                    Err(why) => failures.lock().unwrap().push(format!(
                        "{name}: {why} ({:?}, signal {:?}): {}",
                        out.status.code(),
                        out.status.signal(),
                        stderr.lines().take(6).collect::<Vec<_>>().join(" | ")
                    )),
                }
                std::fs::remove_file(&path).unwrap();
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let [ok, refused] = outcomes.into_inner().unwrap();
    eprintln!(
        "{} model files in {:.0} s (limit {} MiB of data): {ok} detected, {refused} refused, {} failed",
        cases.len(),
        start.elapsed().as_secs_f64(),
        limit >> 20,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        refused > cases.len() / 2,
        "most mutations should be refused"
    );
}
