//! Image and box transforms of the detector's input (SPEC §2): decode to RGB (in the frame
//! the EXIF orientation shows, or the one an annotation's size describes, SPEC §3), resize the
//! shorter side to `min_size` with the longer side capped at `max_size`, horizontal flip,
//! and pixel normalization into a CHW float buffer.
//!
//! Resizing is bilinear with half-pixel centres and no antialiasing, as
//! `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` (torchvision's
//! detection transform) and cv2's `INTER_LINEAR` (py-faster-rcnn). It is fused with the
//! flip and the normalization into one pass that writes the float output directly.
use crate::config::Normalization;
use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};
use std::path::Path;

/// torchvision's ImageNet RGB mean and std (pixels in [0, 1]).
pub const TORCHVISION_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const TORCHVISION_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// py-faster-rcnn's Caffe pixel means, in BGR order (pixels in [0, 255]).
pub const CAFFE_BGR_MEAN: [f32; 3] = [102.9801, 115.9465, 122.7717];

/// Decodes an image file to 8-bit RGB in the frame a viewer shows: its EXIF orientation
/// (any of the 8) applied, as detectron2, Ultralytics and Pillow's `exif_transpose` do. A
/// file without one, or with one that cannot be read, is taken as stored.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    decode_rgb_in(path, None)
}

/// Decodes an annotated image file to 8-bit RGB in the frame whose size its annotation
/// gives (SPEC §3): as shown (EXIF orientation applied) when that is `width` x `height`,
/// else as stored when that is; a size matching neither is an error naming the file,
/// found before the pixels are decoded. Where both match (a turn by 180°, a mirror, a
/// square picture) the annotation cannot tell, and the shown frame is taken, as
/// detectron2 takes it.
pub fn decode_rgb_annotated(path: &Path, width: u32, height: u32) -> Result<RgbImage> {
    decode_rgb_in(path, Some((width, height)))
}

/// `(width, height)` of an image stored as `stored` once `orientation` is applied.
pub fn shown_size(stored: (u32, u32), orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (stored.1, stored.0),
        _ => stored,
    }
}

fn decode_rgb_in(path: &Path, annotated: Option<(u32, u32)>) -> Result<RgbImage> {
    let decoding = || format!("decoding image {}", path.display());
    let mut decoder = image::ImageReader::open(path)
        .with_context(|| format!("opening image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading image {}", path.display()))?
        .into_decoder()
        .with_context(decoding)?;
    // A damaged EXIF block is no reason to refuse pixels that decode: taken as stored.
    let found = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let stored = decoder.dimensions();
    let shown = shown_size(stored, found);
    let orientation = match annotated {
        None => found,
        Some(size) if size == shown => found,
        Some(size) if size == stored => Orientation::NoTransforms,
        Some((width, height)) if found == Orientation::NoTransforms => bail!(
            "image {} is {}x{} but its annotation says {width}x{height}",
            path.display(),
            stored.0,
            stored.1
        ),
        Some((width, height)) => bail!(
            "image {} is {}x{} as stored and {}x{} as shown (EXIF orientation {}), but its \
             annotation says {width}x{height}",
            path.display(),
            stored.0,
            stored.1,
            shown.0,
            shown.1,
            found.to_exif()
        ),
    };
    // `ImageReader::decode`'s allocation limit, which decoding through the decoder skips.
    image::Limits::default()
        .reserve(decoder.total_bytes())
        .with_context(decoding)?;
    let mut image = DynamicImage::from_decoder(decoder).with_context(decoding)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// py-faster-rcnn's scale: shorter side to `min_size`, unless the longer side would then
/// round to more than `max_size`, in which case the longer side becomes `max_size`.
pub fn resize_scale(width: u32, height: u32, min_size: u32, max_size: u32) -> f64 {
    let (short, long) = (width.min(height) as f64, width.max(height) as f64);
    let scale = min_size as f64 / short;
    if (scale * long).round() > max_size as f64 {
        max_size as f64 / long
    } else {
        scale
    }
}

/// Output size of an image scaled by `scale`: each side rounded, at least one pixel.
pub fn scaled_size(width: u32, height: u32, scale: f64) -> (u32, u32) {
    let side = |v: u32| ((v as f64 * scale).round() as u32).max(1);
    (side(width), side(height))
}

/// Mirrors 0-based pixel boxes `[x1, y1, x2, y2]` of an image `width` pixels wide, as
/// py-faster-rcnn: `x1' = width - 1 - x2`, `x2' = width - 1 - x1`.
pub fn flip_boxes(boxes: &mut [[f32; 4]], width: u32) {
    let last = width as f32 - 1.0;
    for b in boxes {
        let (x1, x2) = (b[0], b[2]);
        b[0] = last - x2;
        b[2] = last - x1;
    }
}

/// Converts an annotation box (1-based inclusive) to 0-based pixel coordinates.
pub fn voc_to_pixel_box(bbox: [f32; 4]) -> [f32; 4] {
    bbox.map(|v| v - 1.0)
}

/// Bilinear taps along one axis: for each output index, the two source indices and the
/// weight of the second (torch's `area_pixel_compute_source_index`, align_corners=False).
fn axis_taps(input: u32, output: u32) -> Vec<(usize, usize, f32)> {
    let ratio = input as f32 / output as f32;
    let last = input as usize - 1;
    (0..output)
        .map(|d| {
            let src = ((d as f32 + 0.5) * ratio - 0.5).max(0.0);
            let i0 = (src as usize).min(last);
            (i0, (i0 + 1).min(last), src - i0 as f32)
        })
        .collect()
}

/// Resizes `image` to `width` x `height` (bilinear), mirrors it when `flip`, and writes
/// normalized CHW floats to `out` (`3 * width * height` values): torchvision RGB
/// `(v/255 - mean)/std`, or Caffe BGR `v - mean`.
pub fn resize_normalize_into(
    image: &RgbImage,
    width: u32,
    height: u32,
    flip: bool,
    normalization: Normalization,
    out: &mut [f32],
) {
    let plane = width as usize * height as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer size");
    let mut xs = axis_taps(image.width(), width);
    if flip {
        xs.reverse();
    }
    let ys = axis_taps(image.height(), height);
    // Per output channel: which RGB source channel, then out = v * mul + add.
    let channels: [(usize, f32, f32); 3] = match normalization {
        Normalization::Torchvision => std::array::from_fn(|c| {
            let mul = 1.0 / (255.0 * TORCHVISION_STD[c]);
            (c, mul, -TORCHVISION_MEAN[c] / TORCHVISION_STD[c])
        }),
        Normalization::Caffe => std::array::from_fn(|c| (2 - c, 1.0, -CAFFE_BGR_MEAN[c])),
    };
    let raw = image.as_raw();
    let stride = 3 * image.width() as usize;
    for (y, &(y0, y1, wy)) in ys.iter().enumerate() {
        let (top, bottom) = (&raw[y0 * stride..][..stride], &raw[y1 * stride..][..stride]);
        for (c, &(src, mul, add)) in channels.iter().enumerate() {
            let row = &mut out[c * plane + y * width as usize..][..width as usize];
            for (value, &(x0, x1, wx)) in row.iter_mut().zip(&xs) {
                let at = |line: &[u8], x: usize| line[3 * x + src] as f32;
                let upper = (1.0 - wx) * at(top, x0) + wx * at(top, x1);
                let lower = (1.0 - wx) * at(bottom, x0) + wx * at(bottom, x1);
                *value = ((1.0 - wy) * upper + wy * lower) * mul + add;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_follows_py_faster_rcnn() {
        // VOC-like 500x375 at 600/1000: shorter side wins.
        assert_eq!(resize_scale(500, 375, 600, 1000), 1.6);
        assert_eq!(scaled_size(500, 375, 1.6), (800, 600));
        // A wide image hits the cap.
        let s = resize_scale(1000, 300, 600, 1000);
        assert_eq!(s, 1.0);
        assert_eq!(resize_scale(320, 240, 240, 400), 1.0);
        assert_eq!(scaled_size(3, 2, 0.1), (1, 1));
    }

    #[test]
    fn flip_mirrors_pixel_boxes() {
        let mut b = [[0.0, 2.0, 3.0, 4.0], [5.0, 0.0, 9.0, 1.0]];
        flip_boxes(&mut b, 10);
        assert_eq!(b, [[6.0, 2.0, 9.0, 4.0], [0.0, 0.0, 4.0, 1.0]]);
    }

    fn run(image: &RgbImage, w: u32, h: u32, flip: bool, norm: Normalization) -> Vec<f32> {
        let mut out = vec![0f32; 3 * (w * h) as usize];
        resize_normalize_into(image, w, h, flip, norm, &mut out);
        out
    }

    #[test]
    fn normalization_matches_both_conventions() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb(if x == 0 { [255, 0, 10] } else { [0, 128, 255] })
        });
        let tv = run(&img, 2, 1, false, Normalization::Torchvision);
        assert!((tv[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((tv[2 + 1] - (128.0 / 255.0 - 0.456) / 0.224).abs() < 1e-5);
        let caffe = run(&img, 2, 1, false, Normalization::Caffe);
        // Channel 0 is blue.
        assert_eq!(caffe[0], 10.0 - 102.9801);
        assert_eq!(caffe[1], 255.0 - 102.9801);
        assert_eq!(caffe[4], 255.0 - 122.7717);
        let flipped = run(&img, 2, 1, true, Normalization::Caffe);
        assert_eq!((flipped[0], flipped[1]), (caffe[1], caffe[0]));
    }

    #[test]
    fn bilinear_uses_half_pixel_centres() {
        // A 2x1 ramp 0..100 upscaled to 4x2: torch gives 0, 25, 75, 100 on every row.
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([100 * x as u8 + 102, 0, 0]));
        let caffe = run(&img, 4, 2, false, Normalization::Caffe);
        let red: Vec<f32> = caffe[16..].iter().map(|v| v + 122.7717 - 102.0).collect();
        for (got, want) in red
            .iter()
            .zip([0.0, 25.0, 75.0, 100.0, 0.0, 25.0, 75.0, 100.0])
        {
            assert!((got - want).abs() < 1e-3, "{red:?}");
        }
        // Downscaling 4 -> 2 samples between source pixels 0|1 and 2|3.
        let img = RgbImage::from_fn(4, 1, |x, _| {
            image::Rgb([[0, 40, 80, 200][x as usize], 0, 0])
        });
        let caffe = run(&img, 2, 1, false, Normalization::Caffe);
        assert!(
            (caffe[4] + 122.7717 - 20.0).abs() < 1e-3 && (caffe[5] + 122.7717 - 140.0).abs() < 1e-3
        );
    }
}
