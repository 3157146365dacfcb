//! Evaluation of a detector on a split: detections in VOC pixels, the comp4 files, the VOC
//! AP report, and optional PNGs with predicted and ground-truth boxes.
use crate::config::{DataConfig, EvalConfig};
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transforms::decode_rgb_annotated;
use crate::data::voc::VocDataset;
use crate::detect::faster_rcnn::FasterRcnn;
use crate::detect::image_list::ImageBatch;
use crate::eval::{write_and_evaluate, Detection, EvalReport};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use tch::Device;

/// Runs the detector over every image of `dataset`, writes `comp4_det_<split>_<class>.txt`
/// into `dets_dir`, and scores them with the VOC evaluator. With `save_images > 0`, that
/// many images with boxes drawn land in `dets_dir/../images/` as PNG.
///
/// The weights do not change during an evaluation, so every quantized layer's Q(W) is
/// computed once, up front ([`crate::nn::QuantRegistry::quantize_frozen`]), and reused by
/// every image's forward; the slots are emptied again on return, so training after it
/// quantizes its own weights. The detections are the same bits as quantizing per forward.
pub fn evaluate_model(
    model: &FasterRcnn,
    dataset: Arc<VocDataset>,
    data: &DataConfig,
    eval: &EvalConfig,
    device: Device,
    dets_dir: &Path,
    save_images: usize,
) -> Result<EvalReport> {
    let mut per_class: Vec<Vec<Detection>> = vec![Vec::new(); dataset.classes.len()];
    let loader_cfg = LoaderConfig::from_data_config(data, false, 0);
    let count = dataset.ids.len();
    let progress = crate::progress::progress_bar(count as u64, "eval");
    let mut drawn = 0;
    let quantized = model.registry.quantize_frozen();
    for sample in Loader::new(dataset.clone(), loader_cfg, 0, Some(count))? {
        let sample = sample?;
        let batch = ImageBatch::new(&[sample.image.to_device(device)], vec![sample.scale]);
        let dets = model
            .detect(&batch, eval)
            .into_iter()
            .next()
            .context("detector returned no image")?;
        let boxes = Vec::<Vec<f32>>::try_from(dets.boxes.to_device(Device::Cpu))?;
        let scores = Vec::<f32>::try_from(dets.scores.to_device(Device::Cpu))?;
        let labels = Vec::<i64>::try_from(dets.labels.to_device(Device::Cpu))?;
        let (width, height) = sample.orig_size;
        let mut image_dets = Vec::new();
        for ((b, score), label) in boxes.iter().zip(scores).zip(labels) {
            // Network-input 0-based pixels → original 1-based VOC pixels (py-faster-rcnn).
            let to_voc = |v: f32, limit: u32| {
                (f64::from(v) / sample.scale + 1.0).clamp(1.0, f64::from(limit))
            };
            let bbox = [
                to_voc(b[0], width),
                to_voc(b[1], height),
                to_voc(b[2], width),
                to_voc(b[3], height),
            ];
            let det = Detection {
                image_id: sample.id.clone(),
                score: f64::from(score),
                bbox,
            };
            image_dets.push((label as usize, det.clone()));
            per_class[label as usize - 1].push(det);
        }
        if drawn < save_images {
            let out = dets_dir
                .parent()
                .unwrap_or(dets_dir)
                .join("images")
                .join(format!("{}.png", sample.id));
            draw_boxes(&dataset, sample.index, &image_dets, &out)?;
            drawn += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    drop(quantized);
    write_and_evaluate(&dataset, dets_dir, &per_class, eval.metric)
}

/// Ground truth in green, detections with score >= 0.5 in red.
fn draw_boxes(
    dataset: &VocDataset,
    index: usize,
    dets: &[(usize, Detection)],
    out: &Path,
) -> Result<()> {
    let path = dataset.image_path(index);
    let annotation = &dataset.annotations[index];
    // The frame the boxes are in: the annotation's (shown or stored, as the loader decodes).
    let mut image = decode_rgb_annotated(&path, annotation.width, annotation.height)?;
    for object in &dataset.annotations[index].objects {
        draw_rectangle(&mut image, object.bbox.map(f64::from), [40, 220, 40]);
    }
    for (_, det) in dets.iter().filter(|(_, d)| d.score >= 0.5) {
        draw_rectangle(&mut image, det.bbox, [230, 30, 30]);
    }
    crate::fsutil::write_atomic_with(out, |file| {
        image
            .write_to(file, image::ImageFormat::Png)
            .map_err(Into::into)
    })
}

/// A two-pixel outline of a 1-based inclusive box.
fn draw_rectangle(image: &mut image::RgbImage, bbox: [f64; 4], color: [u8; 3]) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let clamp_x = |v: f64| (v.round() as i64 - 1).clamp(0, w - 1);
    let clamp_y = |v: f64| (v.round() as i64 - 1).clamp(0, h - 1);
    let (x1, y1, x2, y2) = (
        clamp_x(bbox[0]),
        clamp_y(bbox[1]),
        clamp_x(bbox[2]),
        clamp_y(bbox[3]),
    );
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            image.put_pixel(x as u32, y as u32, image::Rgb(color));
        }
    };
    for t in 0..2 {
        for x in x1..=x2 {
            put(x, y1 + t);
            put(x, y2 - t);
        }
        for y in y1..=y2 {
            put(x1 + t, y);
            put(x2 - t, y);
        }
    }
}
