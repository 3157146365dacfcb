//! `lbwnet quantize`: one float32 .npy tensor through one quantizer, written back as
//! float32 `alpha * q` of the same shape.
use crate::quant::error::{mean_square, mean_squared_error};
use crate::quant::{quantize_codes, Method, QuantSpec};
use anyhow::{ensure, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use tch::Tensor;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Float32 .npy weight tensor of any shape.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write `alpha * q` (float32 .npy, the input's shape).
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = Method::Lbw)]
    pub method: Method,
    /// Bit-width, 2..=8 (ternary and twn: 2).
    #[arg(long)]
    pub bits: u32,
    /// LBW's free parameter in `alpha = c * mean|W|` (default: per bit-width).
    #[arg(long, allow_negative_numbers = true)]
    pub c: Option<f64>,
    /// Print one JSON line instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Summary {
    method: Method,
    bits: u32,
    /// None for the methods that ignore c.
    c: Option<f64>,
    alpha: f64,
    mse: f64,
    nonzero_fraction: f64,
    level_counts: Vec<u64>,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let spec = QuantSpec::new(args.method, args.bits, args.c)?;
    let weights = crate::npy::read_f32_npy(&args.input)?;
    let finite = weights.isfinite().all().int64_value(&[]) != 0;
    ensure!(
        finite,
        "{} holds NaN or infinite values",
        args.input.display()
    );
    let quantized = tch::no_grad(|| quantize_codes(&weights, &spec));
    let output = quantized.dequantize();
    let mse = mean_squared_error(&weights, &output);
    crate::fsutil::write_atomic_via_path(&args.output, |tmp| {
        output.write_npy(tmp).map_err(Into::into)
    })?;
    let summary = Summary {
        method: spec.method,
        bits: spec.bits,
        c: (spec.method == Method::Lbw).then_some(spec.c),
        alpha: quantized.alpha(),
        mse,
        nonzero_fraction: quantized.nonzero_fraction(),
        level_counts: quantized.level_counts(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&args, &weights, &summary, &quantized.levels.magnitudes());
    }
    Ok(())
}

fn print_summary(args: &QuantizeArgs, weights: &Tensor, summary: &Summary, magnitudes: &[f64]) {
    let mean_square = mean_square(weights);
    println!(
        "{} {:?} ({} weights) -> {}",
        args.input.display(),
        weights.size(),
        weights.numel(),
        args.output.display()
    );
    let c = summary.c.map_or(String::new(), |c| format!(", c {c}"));
    println!(
        "{} at {} bits{c}: alpha {:.6e}, mse {:.4e} ({:.3}% of mean W^2), nonzero {:.2}%",
        summary.method,
        summary.bits,
        summary.alpha,
        summary.mse,
        if mean_square > 0.0 {
            100.0 * summary.mse / mean_square
        } else {
            0.0
        },
        100.0 * summary.nonzero_fraction
    );
    println!("weights per level |q|:");
    for (magnitude, count) in magnitudes.iter().zip(&summary.level_counts) {
        println!("  {magnitude:<12} {count}");
    }
}
