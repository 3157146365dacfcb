//! `lbwnet export`: a training run's checkpoint as one packed low-bit model file, and a run or
//! a model file as one ONNX graph with the same low-bit weights.
use crate::deploy::calibrate::{calibrate_file, CalibrationRule};
use crate::deploy::export::run_model_file;
use crate::deploy::onnx::{check_int8, export_onnx, export_onnx_int8};
use crate::deploy::{export_run, ExportSummary, ModelFile};
use anyhow::{bail, ensure, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The training run directory (its config.yaml and latest checkpoint).
    #[arg(
        long,
        value_name = "RUN_DIR",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    pub run: Option<PathBuf>,
    /// A packed model file to convert (with --onnx) instead of a run.
    #[arg(long, value_name = "MODEL.lbw")]
    pub model: Option<PathBuf>,
    /// A checkpoint of that run to export instead of its latest (the .json state or the
    /// .safetensors weights).
    #[arg(long, requires = "run")]
    pub checkpoint: Option<PathBuf>,
    /// The packed model file to write (atomically).
    #[arg(long, value_name = "MODEL.lbw", requires = "run")]
    pub out: Option<PathBuf>,
    /// The ONNX model to write (atomically): the whole detector with low-bit weights.
    #[arg(long, value_name = "MODEL.onnx", required_unless_present = "out")]
    pub onnx: Option<PathBuf>,
    /// Overrides of the model's `eval.*` settings for the ONNX graph (`--set
    /// eval.score_thresh=0`).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "onnx")]
    pub overrides: Vec<String>,
    /// Write the ONNX graph with int8 weights and uint8 activations, on onnxruntime's
    /// integer kernels (quantized layers of at most 4 bits; activation scales calibrated
    /// on training images).
    #[arg(long, requires = "onnx")]
    pub int8: bool,
    /// Training images (evenly spaced over the split) whose activation ranges set the
    /// int8 graph's scales.
    #[arg(long, value_name = "N", default_value_t = 200, requires = "int8")]
    pub calibration_images: usize,
    /// How the calibration images' activations set each uint8 range.
    #[arg(long, value_enum, default_value_t = CalibrationRule::MeanMinMax, requires = "int8")]
    pub calibration_rule: CalibrationRule,
    /// The data set to calibrate on instead of the model config's `data.root` (same
    /// layout and classes).
    #[arg(long, value_name = "ROOT", requires = "int8")]
    pub calibration_data: Option<PathBuf>,
    /// Print the summaries as JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let file = match (&args.run, &args.model) {
        (Some(run), _) => match &args.out {
            Some(out) => {
                let summary = export_run(run, args.checkpoint.as_deref(), out)?;
                print_summary(&summary, args.json)?;
                ModelFile::read(out)?
            }
            None => run_model_file(run, args.checkpoint.as_deref())?,
        },
        (None, Some(model)) => ModelFile::read(model)?,
        (None, None) => bail!("give --run RUN_DIR or --model MODEL.lbw"),
    };
    let Some(onnx) = &args.onnx else {
        return Ok(());
    };
    for key in &args.overrides {
        ensure!(
            key.starts_with("eval."),
            "--set {key}: only `eval.*` settings can change in an export (the model's shape is the file's)"
        );
    }
    let cfg = file.config(&args.overrides)?;
    let summary = if args.int8 {
        // Refused before the calibration's passes, not after.
        check_int8(&file)?;
        let calibration = calibrate_file(
            &file,
            args.calibration_images,
            args.calibration_data.as_deref(),
            args.calibration_rule,
        )?;
        export_onnx_int8(&file, &cfg, &calibration, onnx)?
    } else {
        export_onnx(&file, &cfg, onnx)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "wrote {}: {} bytes ({:.2}x the model file's {} bytes), float initializers {} bytes",
            summary.path.display(),
            summary.file_bytes,
            summary.file_bytes as f64 / file.file_bytes as f64,
            file.file_bytes,
            summary.float_initializer_bytes
        );
    }
    Ok(())
}

fn print_summary(summary: &ExportSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
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
