//! The training loop, in four phases that read top to bottom: prepare the run (its
//! directory, config, data and device), build the model and optimizer (fresh or from the
//! run's latest checkpoint), run the iterations (checkpoints, Ctrl-C, progress, the log),
//! and finish (evaluate and write `metrics.json`, `timing.json`, `summary.md`, the comp4
//! files and the curves). Every logged iteration and evaluation goes to `log.jsonl` as it
//! happens, and `curves.png` is drawn from it at the end and on Ctrl-C
//! ([`crate::train::curves`]).
use crate::config::{ExperimentConfig, SplitRole};
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::synthetic::ensure_synthetic;
use crate::data::Dataset;
use crate::detect::faster_rcnn::FasterRcnn;
use crate::detect::image_list::{ImageBatch, ImageTarget};
use crate::eval::EvalReport;
use crate::fsutil::{remove_stale_temp_files, write_atomic};
use crate::machine::Machine;
use crate::nn::FlatParameters;
use crate::progress::progress_bar;
use crate::train::checkpoint::{self, CheckpointState};
use crate::train::curves::{
    draw_curves, EvaluationRecord, IterationRecord, Record, TrainingLog, CURVES_FILE, LOG_FILE,
};
use crate::train::determinism::{configure_numerics, seed_torch, stream_seed};
use crate::train::evaluate::evaluate_model;
use crate::train::schedule::learning_rate;
use crate::train::setup::{build_model, configure_threads, select_device};
use crate::train::sgd::Sgd;
use anyhow::{bail, Context, Result};
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
    /// What besides the config decided these numbers: CPU, instruction sets, threads,
    /// versions, device and its settings.
    pub machine: Machine,
}

/// Wall-clock figures of a finished training (`timing.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Timing {
    pub train_seconds: f64,
    pub images_per_second: f64,
}

/// Files a training writes into its run directory besides its config and checkpoints; a
/// fresh training removes them first so a stale result never outlives the run it described.
pub const RESULT_FILES: [&str; 6] = [
    "metrics.json",
    "timing.json",
    "summary.md",
    "detections",
    LOG_FILE,
    CURVES_FILE,
];

/// Set by Ctrl-C, SIGTERM or SIGHUP (kill, scancel, a Slurm time limit); the loop checkpoints and stops at the end of the current iteration.
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

/// Stream 0 seeds initialization; iteration i draws from stream i + 1, so a resumed run
/// samples what an uninterrupted one would.
fn seed_iteration(seed: u64, iteration: usize) {
    seed_torch(stream_seed(seed, iteration as u64 + 1));
}

/// Removes a run directory's checkpoints and results before a fresh training.
fn clear_run(run_dir: &Path) -> Result<()> {
    checkpoint::clear(run_dir)?;
    remove_stale_temp_files(run_dir)?;
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

/// The checkpoint `--resume run_dir` continues from: the newest complete one (a corrupt
/// or truncated newer one is skipped with a warning).
fn resume_checkpoint(run_dir: &Path) -> Result<(PathBuf, CheckpointState)> {
    checkpoint::require_latest(run_dir).with_context(|| {
        format!(
            "--resume {}: cannot continue this run; train it afresh (without --resume)",
            run_dir.display()
        )
    })
}

/// The config a run was trained with (from its latest complete checkpoint), with
/// `overrides` on top (e.g. more iterations).
pub fn resume_config(run_dir: &Path, overrides: &[String]) -> Result<ExperimentConfig> {
    let (state_path, state) = resume_checkpoint(run_dir)?;
    ExperimentConfig::from_yaml_str(&state.config_yaml, overrides, &state_path)
}

/// Trains `cfg` from scratch, or, with `resume`, continues the run in that directory from
/// its latest checkpoint (`cfg` should then come from [`resume_config`]).
pub fn train(cfg: &ExperimentConfig, resume: Option<&Path>) -> Result<(Metrics, EvalReport)> {
    let run = prepare_run(cfg, resume)?;
    let mut state = build_training(&run)?;
    run_iterations(&run, &mut state)?;
    finish(&run, state)
}

/// Everything fixed before the model exists.
struct PreparedRun {
    cfg: ExperimentConfig,
    run_dir: PathBuf,
    /// The checkpoint a resumed run continues from.
    resume_state: Option<CheckpointState>,
    train_set: Arc<Dataset>,
    test_set: Arc<Dataset>,
    device: Device,
    /// Set by Ctrl-C.
    stop: &'static AtomicBool,
}

/// The model and optimizer, and where the loop starts.
struct TrainingState {
    vs: VarStore,
    model: FasterRcnn,
    /// The trainable variables in flat buffers: one quantization pass per step.
    params: FlatParameters,
    sgd: Sgd,
    start_iteration: usize,
    train_seconds: f64,
    /// `log.jsonl`, continued on resume.
    log: TrainingLog,
}

/// Resolves the run directory (and the checkpoint to resume), checks the config's paths,
/// generates synthetic data if needed, opens the training split and selects the device.
fn prepare_run(cfg: &ExperimentConfig, resume: Option<&Path>) -> Result<PreparedRun> {
    let (run_dir, resume_state) = match resume {
        Some(dir) => {
            let (_, state) = resume_checkpoint(dir)?;
            // Newer checkpoints skipped as incomplete would outrank the ones this run
            // writes; temporary files of a killed write are garbage.
            checkpoint::discard_newer(dir, state.iteration)?;
            for sub in [dir.to_path_buf(), dir.join("detections")] {
                remove_stale_temp_files(&sub)?;
            }
            (dir.to_path_buf(), Some(state))
        }
        None => (cfg.run_dir(), None),
    };
    // Installed before anything is logged, so Ctrl-C is never the default kill from here on.
    let stop = interrupted();
    cfg.check_paths()?;
    ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    // Deterministic algorithms and TF32 (recorded with the machine in metrics.json).
    configure_numerics(&cfg.train);
    let device = select_device(cfg.train.device)?;
    configure_threads(cfg.train.threads);
    let train_set = Arc::new(Dataset::from_config(
        &cfg.data,
        SplitRole::Train,
        cfg.data.classes.as_deref(),
    )?);
    // Read now, so a bad test split fails before anything is written, not after training.
    let test_set = Arc::new(Dataset::from_config(
        &cfg.data,
        SplitRole::Test,
        Some(&train_set.classes),
    )?);
    tracing::info!(
        "training {} on {} ({} images, {} classes), {} on {:?}",
        cfg.name,
        cfg.data.root.display(),
        train_set.ids.len(),
        train_set.classes.len(),
        cfg.quant_tag(),
        device
    );
    Ok(PreparedRun {
        cfg: cfg.clone(),
        run_dir,
        resume_state,
        train_set,
        test_set,
        device,
        stop,
    })
}

/// Builds the model and optimizer: a fresh run is seeded, initialized and its directory
/// cleared; a resumed one loads its checkpoint's weights and momentum.
fn build_training(run: &PreparedRun) -> Result<TrainingState> {
    let cfg = &run.cfg;
    // libtorch seeds its generator randomly per process: seed it before any weight is drawn.
    seed_torch(stream_seed(cfg.train.seed, 0));
    // A resumed run's checkpoint already holds the initialized weights.
    let (vs, model) = build_model(
        cfg,
        run.train_set.classes.len(),
        run.device,
        run.resume_state.is_none(),
    )?;
    // Weights are in place before they move into the flat buffers (frozen layers are
    // quantized once, from the loaded values).
    let (start_iteration, train_seconds, momentum, log) = match &run.resume_state {
        Some(state) => {
            let momentum = checkpoint::load_weights(
                &checkpoint::checkpoint_dir(&run.run_dir).join(&state.weights),
                &vs,
            )?;
            tracing::info!(
                "resumed {} at iteration {}",
                run.run_dir.display(),
                state.iteration
            );
            // Lines a kill left past the checkpoint are logged again from here.
            let log = TrainingLog::resume(&run.run_dir, state.iteration, cfg.train.iterations)?;
            (state.iteration, state.train_seconds, momentum, log)
        }
        None => {
            clear_run(&run.run_dir)?;
            write_atomic(&run.run_dir.join("config.yaml"), cfg.to_yaml()?.as_bytes())?;
            (0, 0.0, Vec::new(), TrainingLog::create(&run.run_dir)?)
        }
    };
    let params = FlatParameters::new(vs.variables(), &model.registry)?;
    let mut sgd = Sgd::new(&params, cfg.train.momentum, cfg.train.weight_decay);
    sgd.load_state(momentum)?;
    Ok(TrainingState {
        vs,
        model,
        params,
        sgd,
        start_iteration,
        train_seconds,
        log,
    })
}

/// Runs the iterations from `state.start_iteration`: one SGD step each, progress and logs
/// (each logged iteration appended to `log.jsonl` before its checkpoint), a checkpoint
/// every `train.checkpoint_interval`, at the end, and on Ctrl-C (then draws the curves and
/// stops with an error naming the resume command).
fn run_iterations(run: &PreparedRun, state: &mut TrainingState) -> Result<()> {
    let t = &run.cfg.train;
    let loader_cfg = LoaderConfig::from_data_config(&run.cfg.data, true, t.seed);
    let mut loader = Loader::new(
        run.train_set.clone(),
        loader_cfg,
        state.start_iteration * t.batch_size,
        None,
    )?;
    let progress = progress_bar(t.iterations as u64, "train");
    progress.set_position(state.start_iteration as u64);
    let mut segment_start = Instant::now();
    // Where images per second are counted from: the last logged iteration.
    let (mut logged_at, mut logged_iteration) = (Instant::now(), state.start_iteration);
    for iteration in state.start_iteration..t.iterations {
        seed_iteration(t.seed, iteration);
        let mut images = Vec::with_capacity(t.batch_size);
        let mut scales = Vec::with_capacity(t.batch_size);
        let mut targets = Vec::with_capacity(t.batch_size);
        let mut ids = Vec::with_capacity(t.batch_size);
        for _ in 0..t.batch_size {
            let sample = loader.next().context("training data loader ended")??;
            ids.push(format!("`{}`", sample.id));
            images.push(sample.image.to_device(run.device));
            scales.push(sample.scale);
            targets.push(ImageTarget {
                boxes: sample.boxes.to_device(run.device),
                labels: sample.labels.to_device(run.device),
            });
        }
        let batch = ImageBatch::new(&images, scales);
        let quantized = state.params.quantize_weights();
        let losses = state.model.losses(&batch, &targets);
        let total = losses.total();
        let total_value = total.double_value(&[]);
        if !total_value.is_finite() {
            // The curves up to here show whether the loss was growing.
            redraw_curves(run, state);
            bail!(
                "training stopped at iteration {iteration}: the loss is {total_value} on image(s) {} of {}. \
                 Check their annotations first (boxes, classes); if the loss was growing over \
                 the last iterations instead, the training diverged: lower train.lr or set \
                 train.clip_grad_norm",
                ids.join(", "),
                run.train_set.root.display()
            );
        }
        state.sgd.zero_grad();
        total.backward();
        drop(quantized);
        if t.clip_grad_norm > 0.0 {
            state.sgd.clip_grad_norm(t.clip_grad_norm);
        }
        let lr = learning_rate(t, iteration);
        state.sgd.step(lr);

        let done = iteration + 1;
        progress.set_position(done as u64);
        if done % t.log_interval.max(1) == 0 || done == t.iterations {
            let values = losses.values();
            let terms: Vec<String> = values
                .iter()
                .map(|(name, v)| format!("{name} {v:.3}"))
                .collect();
            let message = format!("loss {total_value:.3} ({}) lr {lr:.2e}", terms.join(", "));
            progress.set_message(message.clone());
            progress.suspend(|| tracing::info!("iter {done}/{}: {message}", t.iterations));
            let seconds = logged_at.elapsed().as_secs_f64();
            let images = ((done - logged_iteration) * t.batch_size) as f64;
            (logged_at, logged_iteration) = (Instant::now(), done);
            state.log.append(Record::Iteration(IterationRecord {
                iteration: done,
                loss: total_value,
                losses: values
                    .iter()
                    .map(|(name, v)| (name.to_string(), serde_json::json!(v)))
                    .collect(),
                lr,
                images_per_second: if seconds > 0.0 { images / seconds } else { 0.0 },
                elapsed_seconds: state.train_seconds + segment_start.elapsed().as_secs_f64(),
            }))?;
        }
        let stopping = run.stop.load(Ordering::SeqCst);
        let periodic = t.checkpoint_interval > 0 && done % t.checkpoint_interval == 0;
        if periodic || stopping || done == t.iterations {
            state.train_seconds += segment_start.elapsed().as_secs_f64();
            segment_start = Instant::now();
            save_checkpoint(run, state, done)?;
        }
        if stopping {
            progress.abandon();
            redraw_curves(run, state);
            bail!(
                "interrupted at iteration {done}; checkpoint written, continue with `lbwnet train --resume {}`",
                run.run_dir.display()
            );
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// Draws `curves.png` from the log so far, on the way out of an interrupted or failed
/// run; a drawing error is only a warning there.
fn redraw_curves(run: &PreparedRun, state: &TrainingState) {
    let path = run.run_dir.join(CURVES_FILE);
    if let Err(e) = draw_curves(state.log.records(), &curves_title(&run.cfg), &path) {
        tracing::warn!("{}: {e:#}", path.display());
    }
}

/// The curves' title: the experiment and its quantization.
fn curves_title(cfg: &ExperimentConfig) -> String {
    format!("{} ({})", cfg.name, cfg.quant_tag())
}

fn save_checkpoint(run: &PreparedRun, state: &TrainingState, iteration: usize) -> Result<()> {
    let checkpoint_state = CheckpointState {
        iteration,
        weights: String::new(),
        train_seconds: state.train_seconds,
        config_yaml: run.cfg.to_yaml()?,
        weights_bytes: None,
        weights_checksum: None,
    };
    checkpoint::save(
        &run.run_dir,
        &state.vs,
        &state.sgd.state(),
        checkpoint_state,
    )?;
    Ok(())
}

/// Evaluates the trained model on the test split, logs the evaluation, draws the curves
/// and writes the run's results.
fn finish(run: &PreparedRun, mut state: TrainingState) -> Result<(Metrics, EvalReport)> {
    let cfg = &run.cfg;
    let test_set = run.test_set.clone();
    let report = evaluate_model(
        &state.model,
        test_set,
        &cfg.data,
        &cfg.eval,
        run.device,
        &run.run_dir.join("detections"),
        0,
    )?;
    let t = &cfg.train;
    state.log.append(Record::Evaluation(EvaluationRecord {
        iteration: t.iterations,
        metric: report.metric.name().to_string(),
        map: report.map,
        coco_ap: report.coco.ap,
    }))?;
    draw_curves(
        state.log.records(),
        &curves_title(cfg),
        &run.run_dir.join(CURVES_FILE),
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
        run_dir: run.run_dir.clone(),
        machine: Machine::current(run.device),
    };
    let timing = Timing {
        train_seconds: state.train_seconds,
        images_per_second: if state.train_seconds > 0.0 {
            images / state.train_seconds
        } else {
            0.0
        },
    };
    write_results(&run.run_dir, &metrics, &timing, &report)?;
    Ok((metrics, report))
}

/// `summary.md`'s links to the log and the curves, both in the run directory.
const CURVES_SECTION: &str = "## Training curves\n\n\
    ![training curves](curves.png)\n\n\
    [curves.png](curves.png): the loss and its parts and the learning rate over iterations, \
    the mAP at the evaluations. [log.jsonl](log.jsonl): one JSON object per logged iteration \
    (loss and its parts, learning rate, speed, elapsed seconds) and per evaluation.\n\n";

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
        "# {}\n\n- bits: {} ({}{}), seed {}\n- iterations: {}, {:.0} s, {:.2} images/s\n- mAP ({}): {:.4}\n\n{}\n{}## Machine\n\n{}",
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
        report.to_markdown(),
        CURVES_SECTION,
        metrics.machine.to_markdown()
    );
    write_atomic(&run_dir.join("summary.md"), summary.as_bytes())?;
    write_atomic(
        &run_dir.join("metrics.json"),
        serde_json::to_string_pretty(metrics)?.as_bytes(),
    )
}
