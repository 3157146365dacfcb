//! `lbwnet export`: a training run's checkpoint as one packed low-bit model file.
use crate::deploy::export_run;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The training run directory (its config.yaml and latest checkpoint).
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// A checkpoint of that run to export instead of its latest (the .json state or the
    /// .safetensors weights).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The model file to write (atomically).
    #[arg(long, value_name = "MODEL.lbw")]
    pub out: PathBuf,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let summary = export_run(&args.run, args.checkpoint.as_deref(), &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "wrote {}: {} bytes ({:.2} MB), {} quantized layers, {} parameters",
        summary.path.display(),
        summary.file_bytes,
        mb(summary.file_bytes),
        summary.quantized_layers,
        summary.params
    );
    println!(
        "float32 weights {:.2} MB ({:.2}x the file); the sweep table's storage figure {:.2} MB (file / figure = {:.4})",
        mb(summary.float32_bytes),
        summary.float32_bytes as f64 / summary.file_bytes as f64,
        mb(summary.storage_bytes),
        summary.overhead_ratio()
    );
    println!(
        "from {} (iteration {}), mAP {}",
        summary.checkpoint.display(),
        summary
            .iteration
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into()),
        summary
            .map
            .map(|m| format!("{m:.4}"))
            .unwrap_or_else(|| "not measured on this checkpoint".into())
    );
    Ok(())
}
