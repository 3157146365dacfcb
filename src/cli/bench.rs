//! `lbwnet bench <target>`: benchmarks, one subcommand per target.
use super::ConfigArgs;
use crate::quant::bench::{bench_quantizers, BenchOptions};
use anyhow::{ensure, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

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
    /// Images/s of an exported model against the training-time model in evaluation mode,
    /// load times, and the model file's size against the checkpoint.
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

#[derive(Args, Debug)]
pub struct TrainStepBenchArgs {
    /// The model comes from this config (backbone, RPN and RoI settings).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Input image size, HEIGHTxWIDTH (600x1000 is the VOC scale).
    #[arg(long, default_value = "240x320")]
    pub size: String,
    /// Quantized bit-width compared with float (lbw, default c).
    #[arg(long, default_value_t = 6)]
    pub bits: u32,
    /// Timed steps per model (after one warm-up), alternating float and quantized.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
    /// CPU threads (default: the config's `train.threads`, or torch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
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
        BenchTarget::Detect(args) => run_detect(args),
    }
}

fn run_detect(args: DetectBenchArgs) -> Result<()> {
    let device = bench_device(args.device)?;
    match args.threads {
        Some(threads) => {
            ensure!(threads >= 1, "--threads must be at least 1");
            tch::set_num_threads(i32::try_from(threads)?);
        }
        None => {
            if let Ok(cfg) =
                crate::config::ExperimentConfig::load(&args.run.join("config.yaml"), &[])
            {
                crate::train::setup::configure_threads(cfg.train.threads);
            }
        }
    }
    let t = crate::train::bench::bench_detect(
        &args.run,
        args.checkpoint.as_deref(),
        args.model.as_deref(),
        args.images,
        args.repeats,
        device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&t)?);
        return Ok(());
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "detect on {} test images, {} ({} thread(s)), medians of {} passes:\n",
        t.images, t.device, t.threads, t.repeats
    );
    println!("| model | load ms | images/s | file |\n|:--|--:|--:|--:|");
    println!(
        "| training-time (checkpoint, quantize on forward) | {:.1} | {:.2} | {:.2} MB |",
        t.training_load_ms,
        t.training_images_per_s,
        mb(t.checkpoint_bytes)
    );
    println!(
        "| exported (packed codes, decoded at load) | {:.1} | {:.2} | {:.2} MB |",
        t.exported_load_ms,
        t.exported_images_per_s,
        mb(t.model_file_bytes)
    );
    println!(
        "\nexported / training-time: {:.3}x images/s; file {:.2}x smaller than the checkpoint, {:.2}x smaller than float32 weights ({:.2} MB); the table's storage figure {:.2} MB (file / figure {:.4}); identical detections: {}",
        t.speedup,
        t.checkpoint_bytes as f64 / t.model_file_bytes as f64,
        t.float32_bytes as f64 / t.model_file_bytes as f64,
        mb(t.float32_bytes),
        mb(t.storage_bytes),
        t.model_file_bytes as f64 / t.storage_bytes as f64,
        if t.identical_detections { "yes" } else { "no" }
    );
    Ok(())
}

fn run_loader(args: LoaderBenchArgs) -> Result<()> {
    let cfg = args.config.load()?;
    cfg.check_data_path()?;
    crate::data::synthetic::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let dataset = std::sync::Arc::new(crate::data::voc::VocDataset::open(
        &cfg.data.root,
        &cfg.data.train_split,
        cfg.data.classes.as_deref(),
    )?);
    let loader_cfg = crate::data::loader::LoaderConfig::from_data_config(&cfg.data, true, 0);
    let threads = loader_cfg.threads;
    let rate = crate::data::loader::bench_loader(dataset, loader_cfg, args.images)?;
    println!(
        "loader: {rate:.1} images/s ({} images of {}, {threads} decoding thread(s), min_size {}, max_size {})",
        args.images,
        cfg.data.root.display(),
        cfg.data.min_size,
        cfg.data.max_size
    );
    Ok(())
}

fn run_train_step(args: TrainStepBenchArgs) -> Result<()> {
    let cfg = args.config.load()?;
    let (height, width) = args
        .size
        .split_once('x')
        .and_then(|(h, w)| Some((h.parse::<i64>().ok()?, w.parse::<i64>().ok()?)))
        .filter(|&(h, w)| h > 0 && w > 0)
        .with_context(|| format!("--size {}: expected HEIGHTxWIDTH, e.g. 600x1000", args.size))?;
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        args.lr.is_finite() && args.lr >= 0.0,
        "--lr {} is not allowed; use a finite value >= 0",
        args.lr
    );
    let device = bench_device(args.device)?;
    match args.threads {
        Some(threads) => {
            ensure!(threads >= 1, "--threads must be at least 1");
            tch::set_num_threads(i32::try_from(threads)?);
        }
        None => crate::train::setup::configure_threads(cfg.train.threads),
    }
    if args.breakdown {
        let b = crate::train::bench::bench_breakdown(
            &cfg,
            args.bits,
            height,
            width,
            args.repeats,
            device,
            args.lr,
        )?;
        if args.json {
            println!("{}", serde_json::to_string(&b)?);
            return Ok(());
        }
        println!(
            "train-step breakdown, {} {}x{} on {:?}, {} thread(s), lr {}, medians of {} instrumented steps:\n",
            b.model, height, width, device, b.threads, b.lr, b.repeats
        );
        println!(
            "| phase | float ms | {}-bit ms | float % | {}-bit % |\n|:--|--:|--:|--:|--:|",
            b.bits, b.bits
        );
        for p in &b.phases {
            let share = |ms: f64, sum: f64| format!("{:.1}", 100.0 * ms / sum);
            println!(
                "| {}{} | {:.1} | {:.1} | {} | {} |",
                p.phase,
                if p.derived { " *" } else { "" },
                p.float_ms,
                p.quantized_ms,
                share(p.float_ms, b.float_sum_ms),
                share(p.quantized_ms, b.quantized_sum_ms)
            );
        }
        println!(
            "| sum of phases | {:.1} | {:.1} | 100 | 100 |",
            b.float_sum_ms, b.quantized_sum_ms
        );
        println!(
            "| ordinary step, same rounds | {:.1} | {:.1} | | |",
            b.float_step_ms, b.quantized_step_ms
        );
        println!(
            "\n* by difference of two timed sections (RPN head = RPN forward without targets - proposal layer; RPN loss = RPN forward with targets - without; box head = head loss - RoI pooling). Backward is timed in two parts only (heads, trunk): per-layer backward would need autograd hooks. The quantization pass runs before the forward, as in training, so the forward rows use its Q(W)."
        );
        return Ok(());
    }
    let timing = crate::train::bench::bench_train_step(
        &cfg,
        args.bits,
        height,
        width,
        args.repeats,
        device,
        args.lr,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&timing)?);
    } else {
        let spread = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{min:.1}-{max:.1}")
        };
        println!(
            "train step, {} {}x{} on {:?}, {} thread(s): float {:.1} ms ({}), {}-bit {:.1} ms ({}), ratio {:.3} (medians of {}, min-max in parentheses); RoIs per step float {:?}, {}-bit {:?}",
            timing.model,
            height,
            width,
            device,
            timing.threads,
            timing.float_ms,
            spread(&timing.float_steps_ms),
            timing.bits,
            timing.quantized_ms,
            spread(&timing.quantized_steps_ms),
            timing.ratio,
            timing.repeats,
            timing.float_rois,
            timing.bits,
            timing.quantized_rois
        );
    }
    Ok(())
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
    if let Some(threads) = args.threads {
        ensure!(threads >= 1, "--threads must be at least 1");
        tch::set_num_threads(i32::try_from(threads)?);
    }
    let options = BenchOptions {
        repeats: args.repeats,
        bits: args.bits,
        device,
        ..BenchOptions::default()
    };
    let report = bench_quantizers(&options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
