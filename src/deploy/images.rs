//! `lbwnet detect`'s inputs and pictures: image files gathered from paths and
//! directories, and detections drawn onto an image (boxes, class names, scores).
use super::model::Detection;
use crate::experiments::plots::{register_fonts, FONT, PALETTE};
use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

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

fn draw_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing detections: {err:?}")
}

/// `image` with every detection drawn: a box in its class's colour and a label
/// `class score` on a filled tag above it (inside, at the top edge of the image).
pub fn draw_detections(
    image: &RgbImage,
    detections: &[Detection],
    classes: &[String],
) -> Result<RgbImage> {
    register_fonts();
    let (width, height) = image.dimensions();
    let mut pixels = image.as_raw().clone();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let thickness = (width.min(height) / 200).clamp(1, 4);
        let font_size = f64::from((width.min(height) / 30).clamp(11, 28));
        // Lowest score first, so the best detections end up on top.
        let mut order: Vec<&Detection> = detections.iter().collect();
        order.sort_by(|a, b| a.score.total_cmp(&b.score));
        for det in order {
            let index = classes.iter().position(|c| *c == det.class).unwrap_or(0);
            let color = PALETTE[index % PALETTE.len()];
            let [x1, y1, x2, y2] = det.bbox.map(|v| v.round() as i32);
            let (x2, y2) = ((x2 - 1).max(x1), (y2 - 1).max(y1));
            root.draw(&Rectangle::new(
                [(x1, y1), (x2, y2)],
                color.stroke_width(thickness),
            ))
            .map_err(draw_error)?;
            let label = format!("{} {:.2}", det.class, det.score);
            let style = TextStyle::from((FONT, font_size).into_font()).color(&WHITE);
            let (text_w, text_h) = root
                .estimate_text_size(&label, &style)
                .map_err(draw_error)?;
            let (text_w, text_h) = (text_w as i32 + 4, text_h as i32 + 2);
            let top = if y1 - text_h >= 0 { y1 - text_h } else { y1 };
            root.draw(&Rectangle::new(
                [(x1, top), (x1 + text_w, top + text_h)],
                color.filled(),
            ))
            .map_err(draw_error)?;
            root.draw(&Text::new(label, (x1 + 2, top + 1), style))
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    RgbImage::from_raw(width, height, pixels).context("drawing detections: buffer size")
}

/// Writes `image` as a PNG at `path`, atomically.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic_with(path, |file| {
        let mut buffer = std::io::BufWriter::new(file);
        image.write_to(&mut buffer, image::ImageFormat::Png)?;
        use std::io::Write as _;
        buffer.flush()?;
        Ok(())
    })
}
