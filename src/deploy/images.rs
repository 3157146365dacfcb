//! `lbwnet detect`'s inputs and pictures: image files gathered from paths and
//! directories, and detections drawn onto an image (boxes, class names, scores).
use super::model::Detection;
use crate::draw::{draw_labeled_boxes, LabeledBox};
use anyhow::{Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// `lbwnet detect` writes its pictures with this (kept here for its callers).
pub use crate::draw::write_png;

/// Extensions a directory is searched for (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The inputs to process and the ones refused outright (with why). A file is taken as
/// given (its content decides whether it is an image); a directory contributes its JPEG
/// and PNG files (not recursing), sorted by name; a directory without any, or a path
/// that does not exist, is refused.
pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut refused = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match list_images(input) {
                Ok(found) if found.is_empty() => refused.push((
                    input.clone(),
                    format!("directory {} holds no JPEG or PNG images", input.display()),
                )),
                Ok(found) => files.extend(found),
                Err(err) => refused.push((input.clone(), format!("{err:#}"))),
            }
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            refused.push((input.clone(), format!("{} does not exist", input.display())));
        }
    }
    (files, refused)
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing directory {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_name(p))
        .collect();
    found.sort();
    Ok(found)
}

/// Output file names for `inputs`: the file stem plus `.png`, with `-2`, `-3`, ... added
/// where two inputs share a stem.
pub fn output_names(inputs: &[PathBuf]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    inputs
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "image".into());
            let mut name = format!("{stem}.png");
            let mut k = 2;
            while !used.insert(name.clone()) {
                name = format!("{stem}-{k}.png");
                k += 1;
            }
            name
        })
        .collect()
}

/// `image` with every detection drawn: a box in its class's colour and a label
/// `class score` on a filled tag above it (inside, at the top edge of the image); the
/// lowest score first, so the best detections end up on top.
pub fn draw_detections(
    image: &RgbImage,
    detections: &[Detection],
    classes: &[String],
) -> Result<RgbImage> {
    let mut order: Vec<&Detection> = detections.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score));
    let boxes: Vec<LabeledBox> = order
        .into_iter()
        .map(|det| LabeledBox {
            corners: det.bbox,
            label: format!("{} {:.2}", det.class, det.score),
            color: classes.iter().position(|c| *c == det.class).unwrap_or(0),
        })
        .collect();
    draw_labeled_boxes(image, &boxes, "detections")
}
