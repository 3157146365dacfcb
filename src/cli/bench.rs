//! `lbwnet bench <target>`: benchmarks, one subcommand per target.
use super::ConfigArgs;
use crate::bench::breakdown::bench_breakdown;
use crate::bench::detect::{bench_detect, DetectOptions, Int8BenchOptions};
use crate::bench::inference::{bench_inference, InferenceOptions};
use crate::bench::loader::bench_loader;
use crate::bench::quantizers::{bench_quantizers, BenchOptions};
use crate::bench::train_step::{bench_train_step, TrainStepOptions};
use crate::deploy::calibrate::CalibrationRule;
use anyhow::{ensure, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Every quantizer on a ResNet-50-shaped set of weight tensors (25.5M weights),
    /// against a plain copy and one sort of the same tensors.
    Quantize(QuantizeBenchArgs),
    /// Loader throughput (decode, resize, normalize on background threads) in images/s.
    Loader(LoaderBenchArgs),
    /// Median training-step time in float and at b bits, and their ratio.
    TrainStep(TrainStepBenchArgs),
    /// Median test-time forward in float and at b bits (same random weights, same input,
    /// Q(W) computed once beforehand as an evaluation does), their ratio, and the
    /// quantization pass.
    Inference(InferenceBenchArgs),
    /// Images/s of an exported model against the training-time model in evaluation mode,
    /// load times, the model file's size against the checkpoint, and the model exported
    /// as ONNX in onnxruntime (one thread and all) next to ours from decoded pixels.
    Detect(DetectBenchArgs),
}

#[derive(Args, Debug)]
pub struct DetectBenchArgs {
    /// The training run (its config, test images and latest checkpoint).
    #[arg(long, value_name = "RUN_DIR")]
    pub run: std::path::PathBuf,
    /// A checkpoint of that run instead of its latest.
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// The exported model (default: the checkpoint exported to a temporary file).
    #[arg(long, value_name = "MODEL.lbw")]
    pub model: Option<std::path::PathBuf>,
    /// Test images per timed pass (decoded beforehand).
    #[arg(long, default_value_t = 20)]
    pub images: usize,
    /// Timed passes per model (after one warm-up), alternating the two.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
    /// CPU threads (default: the run's `train.threads`, or torch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The Python with onnxruntime that times the ONNX export (default: the project's
    /// environment this binary was built against).
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<std::path::PathBuf>,
    /// Do not export to ONNX and time onnxruntime.
    #[arg(long, conflicts_with = "python")]
    pub no_onnxruntime: bool,
    /// Also export with --int8 and time it against the float export, whole and up to the
    /// backbone's features.
    #[arg(long, conflicts_with = "no_onnxruntime")]
    pub int8: bool,
    /// Training images that calibrate the int8 models.
    #[arg(long, value_name = "N", default_value_t = 20, requires = "int8")]
    pub calibration_images: usize,
    /// The int8 export's calibration rule.
    #[arg(long, value_enum, default_value_t = CalibrationRule::MeanMinMax, requires = "int8")]
    pub calibration_rule: CalibrationRule,
    /// With --int8: time onnxruntime's own `quantize_static` of the float export too (the
    /// generic route), calibrated on the same number of training images.
    #[arg(long, requires = "int8")]
    pub quantize_static: bool,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LoaderBenchArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Images to load.
    #[arg(long, default_value_t = 400)]
    pub images: usize,
}

/// What `bench train-step` and `bench inference` both take: the model, the input, the
/// float-against-b-bit comparison and where it runs.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// The model comes from this config (backbone, RPN and RoI settings, eval thresholds).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Input image size, HEIGHTxWIDTH (600x1000 is the VOC scale).
    #[arg(long, default_value = "240x320")]
    pub size: String,
    /// Quantized bit-width compared with float (lbw, default c).
    #[arg(long, default_value_t = 6)]
    pub bits: u32,
    /// Timed rounds (after one warm-up), each timing the float and the quantized model.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
    /// CPU threads (default: the config's `train.threads`, or torch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// [`ModelBenchArgs`] checked and applied: the config, the input size and the device, with
/// libtorch's threads set.
struct ModelBench {
    cfg: crate::config::ExperimentConfig,
    height: i64,
    width: i64,
    device: tch::Device,
}

impl ModelBenchArgs {
    fn prepare(&self) -> Result<ModelBench> {
        let cfg = self.config.load()?;
        let (height, width) = parse_size(&self.size)?;
        ensure!(self.repeats >= 1, "--repeats must be at least 1");
        let device = bench_device(self.device)?;
        set_threads(self.threads, Some(cfg.train.threads))?;
        Ok(ModelBench {
            cfg,
            height,
            width,
            device,
        })
    }
}

#[derive(Args, Debug)]
pub struct TrainStepBenchArgs {
    #[command(flatten)]
    pub model: ModelBenchArgs,
    /// SGD learning rate of the timed steps. 0 keeps the model fixed, so every step
    /// processes the same proposals and RoIs (what a comparison with another
    /// implementation needs).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Time each phase of the step (trunk forward/backward, RPN head, proposal layer,
    /// RPN loss, RoI sampling, RoI pooling, box head, head backward, optimizer,
    /// quantization) in an instrumented step, and print a table of medians.
    #[arg(long)]
    pub breakdown: bool,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InferenceBenchArgs {
    #[command(flatten)]
    pub model: ModelBenchArgs,
    /// Also time the quantized model quantizing every layer on every forward (no pass
    /// beforehand) and check that its detections are the same bits.
    #[arg(long)]
    pub per_forward: bool,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct QuantizeBenchArgs {
    /// Timed runs per method (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Bit-width for lbw, exact, pow2 and uniform (ternary and twn use 2).
    #[arg(long, default_value_t = 6)]
    pub bits: u32,
    /// Where the weight tensors live.
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
    /// CPU threads for torch and the quantizer kernels (default: torch's choice). One
    /// thread gives steadier numbers on a machine shared with other jobs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchDevice {
    Cpu,
    Cuda,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.target {
        BenchTarget::Quantize(args) => run_quantize(args),
        BenchTarget::Loader(args) => run_loader(args),
        BenchTarget::TrainStep(args) => run_train_step(args),
        BenchTarget::Inference(args) => run_inference(args),
        BenchTarget::Detect(args) => run_detect(args),
    }
}

/// Prints `result` as one JSON line, or as `text` renders it.
fn emit<T: Serialize>(result: &T, json: bool, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        print!("{}", text(result));
    }
    Ok(())
}

/// `--threads N` when given (at least 1), else `fallback` (a config's `train.threads`).
fn set_threads(explicit: Option<usize>, fallback: Option<usize>) -> Result<()> {
    match explicit {
        Some(threads) => {
            ensure!(threads >= 1, "--threads must be at least 1");
            tch::set_num_threads(i32::try_from(threads)?);
        }
        None => {
            if let Some(threads) = fallback {
                crate::train::setup::configure_threads(threads);
            }
        }
    }
    Ok(())
}

fn run_detect(args: DetectBenchArgs) -> Result<()> {
    let device = bench_device(args.device)?;
    let run_threads = crate::config::ExperimentConfig::load(&args.run.join("config.yaml"), &[])
        .ok()
        .map(|cfg| cfg.train.threads);
    set_threads(args.threads, run_threads)?;
    let options = DetectOptions {
        run: args.run,
        checkpoint: args.checkpoint,
        model: args.model,
        images: args.images,
        repeats: args.repeats,
        device,
        onnxruntime_python: (!args.no_onnxruntime).then(|| {
            args.python
                .unwrap_or_else(crate::bench::onnxruntime::default_python)
        }),
        int8: args.int8.then_some(Int8BenchOptions {
            calibration_images: args.calibration_images,
            calibration_rule: args.calibration_rule,
            quantize_static: args.quantize_static,
        }),
    };
    emit(&bench_detect(&options)?, args.json, |t| t.table())
}

fn run_loader(args: LoaderBenchArgs) -> Result<()> {
    let cfg = args.config.load()?;
    println!("{}", bench_loader(&cfg, args.images)?.summary());
    Ok(())
}

/// `HEIGHTxWIDTH`, both positive.
fn parse_size(size: &str) -> Result<(i64, i64)> {
    size.split_once('x')
        .and_then(|(h, w)| Some((h.parse::<i64>().ok()?, w.parse::<i64>().ok()?)))
        .filter(|&(h, w)| h > 0 && w > 0)
        .with_context(|| format!("--size {size}: expected HEIGHTxWIDTH, e.g. 600x1000"))
}

fn run_train_step(args: TrainStepBenchArgs) -> Result<()> {
    ensure!(
        args.lr.is_finite() && args.lr >= 0.0,
        "--lr {} is not allowed; use a finite value >= 0",
        args.lr
    );
    let ModelBench {
        cfg,
        height,
        width,
        device,
    } = args.model.prepare()?;
    let options = TrainStepOptions {
        bits: args.model.bits,
        height,
        width,
        repeats: args.model.repeats,
        device,
        lr: args.lr,
    };
    if args.breakdown {
        emit(&bench_breakdown(&cfg, &options)?, args.json, |b| {
            b.table(device)
        })
    } else {
        emit(&bench_train_step(&cfg, &options)?, args.json, |t| {
            t.summary(device) + "\n"
        })
    }
}

fn run_inference(args: InferenceBenchArgs) -> Result<()> {
    ensure!(
        (2..=8).contains(&args.model.bits),
        "--bits {} is not allowed; use 2..=8",
        args.model.bits
    );
    let ModelBench {
        cfg,
        height,
        width,
        device,
    } = args.model.prepare()?;
    let options = InferenceOptions {
        bits: args.model.bits,
        height,
        width,
        repeats: args.model.repeats,
        device,
        per_forward: args.per_forward,
    };
    emit(&bench_inference(&cfg, &options)?, args.json, |t| {
        t.summary(device)
    })
}

fn bench_device(choice: BenchDevice) -> Result<tch::Device> {
    Ok(match choice {
        BenchDevice::Cpu => tch::Device::Cpu,
        BenchDevice::Cuda => {
            ensure!(
                tch::Cuda::is_available(),
                "--device cuda: no CUDA device is available"
            );
            tch::Device::Cuda(0)
        }
    })
}

fn run_quantize(args: QuantizeBenchArgs) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        (2..=8).contains(&args.bits),
        "--bits {} is not allowed; use 2..=8",
        args.bits
    );
    let device = bench_device(args.device)?;
    set_threads(args.threads, None)?;
    let options = BenchOptions {
        repeats: args.repeats,
        bits: args.bits,
        device,
        ..BenchOptions::default()
    };
    emit(&bench_quantizers(&options)?, args.json, |r| r.table())
}
