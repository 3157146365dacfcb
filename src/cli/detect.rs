//! `lbwnet detect`: run an exported model on image files and directories.
use crate::config::DeviceChoice;
use crate::deploy::images::{collect_inputs, draw_detections, output_names, write_png};
use crate::deploy::{DeployedModel, Detection};
use crate::train::setup::{configure_threads, select_device};
use anyhow::{bail, ensure, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DetectArgs {
    /// The model file (`lbwnet export`).
    #[arg(long, value_name = "MODEL.lbw")]
    pub model: PathBuf,
    /// Image files (JPEG or PNG, any size; grayscale and RGBA are converted; taken as a
    /// viewer shows them, their EXIF orientation applied) and directories (their .jpg,
    /// .jpeg and .png files).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output directory: detections.json and one PNG per image with the boxes drawn
    /// (default `detect-out`; with --json, nothing is written unless --out is given).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep detections scoring above this.
    #[arg(long, default_value_t = 0.5)]
    pub score_thresh: f64,
    #[arg(long, value_enum, default_value_t = DetectDevice::Auto)]
    pub device: DetectDevice,
    /// Print one JSON line per image to stdout instead of writing detections.json.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DetectDevice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// One processed image, as detections.json and `--json` write it.
#[derive(Debug, Serialize)]
struct ImageRecord {
    path: PathBuf,
    /// The size as shown (EXIF orientation applied), the frame of the boxes.
    width: u32,
    height: u32,
    detections: Vec<Detection>,
    /// The PNG with the boxes drawn, when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Failure {
    path: PathBuf,
    error: String,
}

#[derive(Serialize)]
struct DetectionsFile<'a> {
    model: &'a Path,
    score_thresh: f64,
    images: &'a [ImageRecord],
    failed: &'a [Failure],
}

pub fn run(args: DetectArgs) -> Result<()> {
    ensure!(
        (0.0..1.0).contains(&args.score_thresh),
        "--score-thresh {} is not in [0, 1)",
        args.score_thresh
    );
    let device = select_device(match args.device {
        DetectDevice::Auto => DeviceChoice::Auto,
        DetectDevice::Cpu => DeviceChoice::Cpu,
        DetectDevice::Cuda => DeviceChoice::Cuda,
    })?;
    let model = DeployedModel::load(&args.model, device, &[])?;
    configure_threads(model.config.train.threads);
    let out_dir = match (&args.out, args.json) {
        (Some(dir), _) => Some(dir.clone()),
        (None, false) => Some(PathBuf::from("detect-out")),
        (None, true) => None,
    };
    let mut eval = model.config.eval.clone();
    eval.score_thresh = args.score_thresh;

    let (files, refused) = collect_inputs(&args.inputs);
    let mut failed: Vec<Failure> = refused
        .into_iter()
        .map(|(path, error)| Failure { path, error })
        .collect();
    if args.json {
        for f in &failed {
            println!("{}", serde_json::to_string(f)?);
        }
    }
    let names = output_names(&files);
    let progress = crate::progress::progress_bar(files.len() as u64, "detect");
    let mut records = Vec::new();
    for (path, name) in files.iter().zip(&names) {
        let target = out_dir.as_ref().map(|dir| dir.join(name));
        match detect_one(&model, path, &eval, target.as_deref()) {
            Ok(record) => {
                if args.json {
                    progress.suspend(|| {
                        println!("{}", serde_json::to_string(&record).unwrap_or_default())
                    });
                }
                records.push(record);
            }
            Err(err) => {
                let failure = Failure {
                    path: path.clone(),
                    error: one_line(&format!("{err:#}")),
                };
                if args.json {
                    progress.suspend(|| {
                        println!("{}", serde_json::to_string(&failure).unwrap_or_default())
                    });
                }
                failed.push(failure);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(dir) = &out_dir {
        let file = DetectionsFile {
            model: &args.model,
            score_thresh: args.score_thresh,
            images: &records,
            failed: &failed,
        };
        let path = dir.join("detections.json");
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&file)?.as_bytes())?;
        if !args.json {
            let boxes: usize = records.iter().map(|r| r.detections.len()).sum();
            eprintln!(
                "{} images, {boxes} detections above {}: {} and {} PNGs in {}",
                records.len(),
                args.score_thresh,
                path.display(),
                records.len(),
                dir.display()
            );
        }
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("failed: {}", f.error);
        }
        bail!(
            "{} of {} inputs could not be processed: {}",
            failed.len(),
            failed.len() + records.len(),
            failed
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `text` with its line breaks and runs of blanks as single spaces (decoders' messages
/// span lines).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes one image (as shown: EXIF orientation applied), runs the model, and writes the
/// PNG when `png` is given.
fn detect_one(
    model: &DeployedModel,
    path: &Path,
    eval: &crate::config::EvalConfig,
    png: Option<&Path>,
) -> Result<ImageRecord> {
    let image = crate::data::transforms::decode_rgb(path)?;
    let detections = model
        .detect_image(&image, eval)
        .map_err(|e| e.context(format!("detecting on {}", path.display())))?;
    if let Some(png) = png {
        let drawn = draw_detections(&image, &detections, &model.meta.classes)?;
        write_png(&drawn, png)?;
    }
    Ok(ImageRecord {
        path: path.to_path_buf(),
        width: image.width(),
        height: image.height(),
        detections,
        image: png.map(Path::to_path_buf),
    })
}
