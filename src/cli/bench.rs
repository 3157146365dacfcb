//! `lbwnet bench <target>`: benchmarks, one subcommand per target.
use crate::quant::bench::{bench_quantizers, BenchOptions};
use anyhow::{ensure, Result};
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
    }
}

fn run_quantize(args: QuantizeBenchArgs) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        (2..=8).contains(&args.bits),
        "--bits {} is not allowed; use 2..=8",
        args.bits
    );
    let device = match args.device {
        BenchDevice::Cpu => tch::Device::Cpu,
        BenchDevice::Cuda => {
            ensure!(
                tch::Cuda::is_available(),
                "--device cuda: no CUDA device is available"
            );
            tch::Device::Cuda(0)
        }
    };
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
