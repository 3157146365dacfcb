//! The training loop: data, model, SGD, schedule, checkpoints and resume, Ctrl-C, progress,
//! and the final evaluation that writes `metrics.json`, `summary.md` and the comp4 files.
use crate::config::{DeviceChoice, ExperimentConfig};
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::synthetic::ensure_synthetic;
use crate::data::voc::VocDataset;
use crate::detect::faster_rcnn::{FasterRcnn, ImageBatch, ImageTarget};
use crate::eval::EvalReport;
use crate::fsutil::write_atomic;
use crate::train::checkpoint::{self, CheckpointState};
use crate::train::determinism::{seed_torch, set_deterministic, stream_seed};
use crate::train::evaluate::evaluate_model;
use crate::train::schedule::learning_rate;
use crate::train::sgd::Sgd;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tch::nn::VarStore;
use tch::Device;

/// What a finished training reports (written as `metrics.json`). Only what the config
/// determines lives here, so two runs of one config write the same bytes; wall-clock
/// figures go to `timing.json` ([`Timing`]).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// The configured metric's mean AP (`eval.metric`).
    pub map: f64,
    pub metric: String,
    /// Per-class AP under the configured metric.
    pub ap: serde_json::Value,
    /// COCO-style AP@[.5:.95], AP50, AP75, by size, and AR, whatever the metric.
    pub coco: serde_json::Value,
    pub bits: u32,
    pub method: String,
    pub c: Option<f64>,
    pub iterations: usize,
    pub seed: u64,
    pub run_dir: PathBuf,
}

/// Wall-clock figures of a finished training (`timing.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Timing {
    pub train_seconds: f64,
    pub images_per_second: f64,
}

/// Files a finished training writes into its run directory; a fresh training removes
/// them first so a stale result never outlives the run it described.
pub const RESULT_FILES: [&str; 4] = ["metrics.json", "timing.json", "summary.md", "detections"];

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
        ))
        .expect("valid progress template"),
    );
    bar
}

/// Applies `train.threads` to libtorch's CPU thread pool.
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("key `train.device`: cuda requested but no CUDA device is available");
            }
            Device::Cuda(0)
        }
    })
}

/// Set by Ctrl-C; the loop checkpoints and stops at the end of the current iteration.
fn interrupted() -> &'static AtomicBool {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        // A second handler cannot be installed (tests train several times in one process).
        let _ = ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst));
        flag
    })
}

/// A model with its variables on `device`. With `initialize`, pretrained backbone weights
/// and `train.init_from` are loaded (a resumed run or an evaluation loads its checkpoint
/// instead). Layers a pretrained backbone keeps fixed are frozen either way.
pub fn build_model(
    cfg: &ExperimentConfig,
    num_classes: usize,
    device: Device,
    initialize: bool,
) -> Result<(VarStore, FasterRcnn)> {
    let vs = VarStore::new(device);
    let model = FasterRcnn::new(&vs.root(), cfg, num_classes)?;
    if let Some(weights) = &cfg.model.backbone_weights {
        if initialize {
            crate::nn::weights::load_by_name(&vs, weights, "backbone.")?;
        }
        crate::nn::weights::freeze_by_prefix(&vs, &model.frozen_prefixes);
    }
    if let (true, Some(init)) = (initialize, &cfg.train.init_from) {
        let weights = checkpoint::resolve_weights(init)?;
        checkpoint::load_weights(&weights, &vs)?;
        tracing::info!("initialized from {}", weights.display());
    }
    Ok((vs, model))
}

/// Stream 0 seeds initialization; iteration i draws from stream i + 1, so a resumed run
/// samples what an uninterrupted one would.
fn seed_iteration(seed: u64, iteration: usize) {
    seed_torch(stream_seed(seed, iteration as u64 + 1));
}

/// Removes a run directory's checkpoints and results before a fresh training.
fn clear_run(run_dir: &Path) -> Result<()> {
    checkpoint::clear(run_dir)?;
    for name in RESULT_FILES {
        let path = run_dir.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!("removed stale {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// The config a run was trained with (from its latest checkpoint), with `overrides` on
/// top (e.g. more iterations).
pub fn resume_config(run_dir: &Path, overrides: &[String]) -> Result<ExperimentConfig> {
    let state_path = checkpoint::latest(run_dir)?.with_context(|| {
        format!(
            "--resume {}: no finished checkpoint there",
            run_dir.display()
        )
    })?;
    let state = checkpoint::read_state(&state_path)?;
    ExperimentConfig::from_yaml_str(&state.config_yaml, overrides, &state_path)
}

/// Trains `cfg` from scratch, or, with `resume`, continues the run in that directory from
/// its latest checkpoint (`cfg` should then come from [`resume_config`]).
pub fn train(cfg: &ExperimentConfig, resume: Option<&Path>) -> Result<(Metrics, EvalReport)> {
    let (run_dir, resume_state) = match resume {
        Some(dir) => {
            let state_path = checkpoint::latest(dir)?.with_context(|| {
                format!("--resume {}: no finished checkpoint there", dir.display())
            })?;
            (
                dir.to_path_buf(),
                Some(checkpoint::read_state(&state_path)?),
            )
        }
        None => (cfg.run_dir(), None),
    };
    let cfg = cfg.clone();
    // Installed before anything is logged, so Ctrl-C is never the default kill from here on.
    let stop = interrupted();
    cfg.check_paths()?;
    ensure_synthetic(&cfg.data)?;
    set_deterministic(cfg.train.deterministic);
    let device = select_device(cfg.train.device)?;
    configure_threads(cfg.train.threads);
    let classes = cfg.data.classes.as_deref();
    let train_set = Arc::new(VocDataset::open(
        &cfg.data.root,
        &cfg.data.train_split,
        classes,
    )?);
    let num_classes = train_set.classes.len();
    tracing::info!(
        "training {} on {} ({} images, {} classes), {} on {:?}",
        cfg.name,
        cfg.data.root.display(),
        train_set.ids.len(),
        num_classes,
        cfg.quant_tag(),
        device
    );

    // libtorch seeds its generator randomly per process: seed it before any weight is drawn.
    seed_torch(stream_seed(cfg.train.seed, 0));
    // A resumed run's checkpoint already holds the initialized weights.
    let (vs, model) = build_model(&cfg, num_classes, device, resume_state.is_none())?;
    let mut sgd = Sgd::new(vs.variables(), cfg.train.momentum, cfg.train.weight_decay);
    let (start, mut train_seconds) = match &resume_state {
        Some(state) => {
            let momentum = checkpoint::load_weights(
                &checkpoint::checkpoint_dir(&run_dir).join(&state.weights),
                &vs,
            )?;
            sgd.load_state(momentum)?;
            tracing::info!(
                "resumed {} at iteration {}",
                run_dir.display(),
                state.iteration
            );
            (state.iteration, state.train_seconds)
        }
        None => {
            clear_run(&run_dir)?;
            write_atomic(&run_dir.join("config.yaml"), cfg.to_yaml()?.as_bytes())?;
            (0, 0.0)
        }
    };

    let t = &cfg.train;
    let loader_cfg = LoaderConfig::from_data_config(&cfg.data, true, t.seed);
    let mut loader = Loader::new(train_set.clone(), loader_cfg, start * t.batch_size, None)?;
    let save = |iteration: usize, seconds: f64, sgd: &Sgd| -> Result<()> {
        let state = CheckpointState {
            iteration,
            weights: String::new(),
            train_seconds: seconds,
            config_yaml: cfg.to_yaml()?,
        };
        checkpoint::save(&run_dir, &vs, &sgd.state(), state)?;
        Ok(())
    };

    let progress = progress_bar(t.iterations as u64, "train");
    progress.set_position(start as u64);
    let mut segment_start = Instant::now();
    for iteration in start..t.iterations {
        seed_iteration(t.seed, iteration);
        let mut images = Vec::with_capacity(t.batch_size);
        let mut scales = Vec::with_capacity(t.batch_size);
        let mut targets = Vec::with_capacity(t.batch_size);
        for _ in 0..t.batch_size {
            let sample = loader.next().context("training data loader ended")??;
            images.push(sample.image.to_device(device));
            scales.push(sample.scale);
            targets.push(ImageTarget {
                boxes: sample.boxes.to_device(device),
                labels: sample.labels.to_device(device),
            });
        }
        let batch = ImageBatch::new(&images, scales);
        let losses = model.losses(&batch, &targets);
        let total = losses.total();
        let total_value = total.double_value(&[]);
        if !total_value.is_finite() {
            bail!("training diverged at iteration {iteration}: loss is {total_value}; lower train.lr or set train.clip_grad_norm");
        }
        sgd.zero_grad();
        total.backward();
        if t.clip_grad_norm > 0.0 {
            sgd.clip_grad_norm(t.clip_grad_norm);
        }
        let lr = learning_rate(t, iteration);
        sgd.step(lr);

        let done = iteration + 1;
        progress.set_position(done as u64);
        if done % t.log_interval.max(1) == 0 || done == t.iterations {
            let terms: Vec<String> = losses
                .values()
                .iter()
                .map(|(name, v)| format!("{name} {v:.3}"))
                .collect();
            let message = format!("loss {total_value:.3} ({}) lr {lr:.2e}", terms.join(", "));
            progress.set_message(message.clone());
            progress.suspend(|| tracing::info!("iter {done}/{}: {message}", t.iterations));
        }
        let stopping = stop.load(Ordering::SeqCst);
        let periodic = t.checkpoint_interval > 0 && done % t.checkpoint_interval == 0;
        if periodic || stopping || done == t.iterations {
            train_seconds += segment_start.elapsed().as_secs_f64();
            segment_start = Instant::now();
            save(done, train_seconds, &sgd)?;
        }
        if stopping {
            progress.abandon();
            bail!(
                "interrupted at iteration {done}; checkpoint written, continue with `lbwnet train --resume {}`",
                run_dir.display()
            );
        }
    }
    progress.finish_and_clear();
    drop(loader);

    let test_set = Arc::new(VocDataset::open(
        &cfg.data.root,
        &cfg.data.test_split,
        Some(&train_set.classes),
    )?);
    let report = evaluate_model(
        &model,
        test_set,
        &cfg.data,
        &cfg.eval,
        device,
        &run_dir.join("detections"),
        0,
    )?;
    let images = (t.iterations * t.batch_size) as f64;
    let report_json = report.to_json();
    let metrics = Metrics {
        map: report.map,
        metric: cfg.eval.metric.name().to_string(),
        ap: report_json["ap"].clone(),
        coco: report_json["coco"].clone(),
        bits: cfg.quant.bits,
        method: if cfg.quant.is_float() {
            "float".into()
        } else {
            cfg.quant.method.name().into()
        },
        c: cfg
            .effective_c()
            .filter(|_| cfg.quant.method == crate::quant::Method::Lbw),
        iterations: t.iterations,
        seed: t.seed,
        run_dir: run_dir.clone(),
    };
    let timing = Timing {
        train_seconds,
        images_per_second: if train_seconds > 0.0 {
            images / train_seconds
        } else {
            0.0
        },
    };
    write_results(&run_dir, &metrics, &timing, &report)?;
    Ok((metrics, report))
}

/// `metrics.json`, `timing.json` and `summary.md` in the run directory; `metrics.json`
/// last, since its presence marks the run finished.
pub fn write_results(
    run_dir: &Path,
    metrics: &Metrics,
    timing: &Timing,
    report: &EvalReport,
) -> Result<()> {
    write_atomic(
        &run_dir.join("timing.json"),
        serde_json::to_string_pretty(timing)?.as_bytes(),
    )?;
    let summary = format!(
        "# {}\n\n- bits: {} ({}{}), seed {}\n- iterations: {}, {:.0} s, {:.2} images/s\n- mAP ({}): {:.4}\n\n{}",
        run_dir.display(),
        metrics.bits,
        metrics.method,
        metrics.c.map(|c| format!(", c = {c}")).unwrap_or_default(),
        metrics.seed,
        metrics.iterations,
        timing.train_seconds,
        timing.images_per_second,
        metrics.metric,
        metrics.map,
        report.to_markdown()
    );
    write_atomic(&run_dir.join("summary.md"), summary.as_bytes())?;
    write_atomic(
        &run_dir.join("metrics.json"),
        serde_json::to_string_pretty(metrics)?.as_bytes(),
    )
}
