//! Photos as cameras store them (SPEC §3): JPEGs with an EXIF orientation made here (every
//! one of the 8, both byte orders). `decode_rgb`, `lbwnet detect` and
//! `scripts/onnx-detect.py` take the frame a viewer shows, checked against the EXIF
//! definition written out below (not the decoders' own code); an annotated image is
//! taken in the frame its annotation's size gives, and a size matching neither is an
//! error naming the file.
mod common;

use common::onnx::run_python;
use common::{config_under, lbwnet_ok, path_arg};
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, Rgb, RgbImage};
use lbwnet::config::Normalization;
use lbwnet::data::loader::{load_sample, LoaderConfig};
use lbwnet::data::transforms::{decode_rgb, decode_rgb_annotated};
use lbwnet::data::voc::VocDataset;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::Device;

/// A TIFF block (what follows `Exif\0\0` in the APP1 segment) whose IFD0 holds one entry,
/// Orientation (tag 0x0112, SHORT) = `value`, in big- or little-endian byte order.
/// A test image: id, EXIF orientation, annotated size, 1-based inclusive box in that frame.
type AnnotatedImage = (&'static str, u16, (u32, u32), [u32; 4]);

fn exif_orientation(value: u16, big_endian: bool) -> Vec<u8> {
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut tiff = Vec::new();
    tiff.extend_from_slice(if big_endian { b"MM" } else { b"II" });
    tiff.extend_from_slice(&u16b(42));
    tiff.extend_from_slice(&u32b(8)); // IFD0 right after the header
    tiff.extend_from_slice(&u16b(1)); // one entry
    tiff.extend_from_slice(&u16b(0x0112));
    tiff.extend_from_slice(&u16b(3)); // SHORT
    tiff.extend_from_slice(&u32b(1)); // one value, in the entry's 4 bytes
    tiff.extend_from_slice(&u16b(value));
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&u32b(0)); // no IFD1
    tiff
}

/// `stored` as a JPEG (quality 95) with an APP1 EXIF segment giving `orientation`, or none.
/// The same pixels give the same entropy-coded data either way, so a file with and one
/// without decode to the same stored pixels.
fn write_jpeg(path: &Path, stored: &RgbImage, orientation: Option<u16>) {
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
    if let Some(value) = orientation {
        encoder
            .set_exif_metadata(exif_orientation(value, value % 2 == 0))
            .unwrap();
    }
    encoder
        .write_image(
            stored.as_raw(),
            stored.width(),
            stored.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    assert_eq!(
        bytes.windows(6).any(|w| w == b"Exif\0\0"),
        orientation.is_some()
    );
    std::fs::write(path, bytes).unwrap();
}

/// `stored` as a viewer shows it under EXIF `orientation`, from the tag's definition
/// (the stored row 0 / column 0 is the shown image's ...: 1 top / left, 2 top / right,
/// 3 bottom / right, 4 bottom / left, 5 left / top, 6 right / top, 7 right / bottom,
/// 8 left / bottom): 6 is turned 90° clockwise, 8 counter-clockwise, 5 transposed,
/// 7 transversed.
fn shown(stored: &RgbImage, orientation: u16) -> RgbImage {
    let (w, h) = stored.dimensions();
    let swapped = orientation >= 5;
    let (sw, sh) = if swapped { (h, w) } else { (w, h) };
    RgbImage::from_fn(sw, sh, |x, y| {
        let (sx, sy) = match orientation {
            1 => (x, y),
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            8 => (w - 1 - y, x),
            _ => unreachable!(),
        };
        *stored.get_pixel(sx, sy)
    })
}

/// A picture no rotation or mirroring maps onto itself: smooth gradients (JPEG keeps
/// them) and a bright block near one corner.
fn asymmetric(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let corner = x < width / 3 && y < height / 4;
        Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            if corner { 250 } else { 60 },
        ])
    })
}

#[test]
fn decoding_applies_every_exif_orientation_and_annotations_choose_their_frame() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jpg");
    let stored = asymmetric(48, 32);
    write_jpeg(&plain, &stored, None);
    let pixels = image::open(&plain).unwrap().to_rgb8();
    assert_eq!(decode_rgb(&plain).unwrap(), pixels);
    for orientation in 1..=8u16 {
        let path = dir.path().join(format!("o{orientation}.jpg"));
        write_jpeg(&path, &stored, Some(orientation));
        let want = shown(&pixels, orientation);
        assert_eq!(
            decode_rgb(&path).unwrap(),
            want,
            "orientation {orientation}"
        );
        assert_eq!(
            want == pixels,
            orientation == 1,
            "orientation {orientation}"
        );
        let (w, h) = want.dimensions();
        assert_eq!(decode_rgb_annotated(&path, w, h).unwrap(), want);
        if orientation >= 5 {
            // The stored size is the annotation's: the pixels as stored.
            assert_eq!(decode_rgb_annotated(&path, h, w).unwrap(), pixels);
        }
        let err = format!("{:#}", decode_rgb_annotated(&path, 40, 40).unwrap_err());
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("annotation says 40x40")
                && (orientation == 1 || err.contains(&format!("EXIF orientation {orientation}"))),
            "{err}"
        );
    }
    assert_eq!(
        decode_rgb(&dir.path().join("o1.jpg")).unwrap(),
        pixels,
        "1 is as stored"
    );
    // Values outside 1..=8 mean nothing: the pixels as stored.
    for value in [0, 9] {
        let path = dir.path().join(format!("bad{value}.jpg"));
        write_jpeg(&path, &stored, Some(value));
        assert_eq!(decode_rgb(&path).unwrap(), pixels, "orientation {value}");
    }
}

/// A one-class VOC set whose images are one JPEG, stored 60x90 with a bright rectangle,
/// under EXIF orientation 6 (shown 90x60) and 3, with annotations in either frame.
#[test]
fn training_and_evaluation_images_take_the_frame_their_annotation_gives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let (w, h) = (60u32, 90u32);
    // Stored: the rectangle at x 10..30, y 20..50 (0-based, exclusive ends).
    let stored = RgbImage::from_fn(w, h, |x, y| {
        Rgb(if (10..30).contains(&x) && (20..50).contains(&y) {
            [250, 250, 250]
        } else {
            [10, 10, 10]
        })
    });
    // Orientation 6 shows stored (x, y) at (h - 1 - y, x): x 40..70, y 10..30.
    // Orientation 3 shows it at (w - 1 - x, h - 1 - y): x 30..50, y 40..70.
    let images: [AnnotatedImage; 5] = [
        ("six_shown", 6, (h, w), [41, 11, 70, 30]),
        ("six_stored", 6, (w, h), [11, 21, 30, 50]),
        ("three", 3, (w, h), [31, 41, 50, 70]),
        ("plain", 1, (w, h), [11, 21, 30, 50]),
        ("neither", 6, (w + 1, h), [11, 21, 30, 50]),
    ];
    let mut ids = String::new();
    for (id, orientation, (aw, ah), [x1, y1, x2, y2]) in images {
        write_jpeg(
            &root.join(format!("JPEGImages/{id}.jpg")),
            &stored,
            Some(orientation),
        );
        std::fs::write(
            root.join(format!("Annotations/{id}.xml")),
            format!(
                "<annotation><size><width>{aw}</width><height>{ah}</height></size>\
                 <object><name>rect</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>\
                 <xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
            ),
        )
        .unwrap();
        ids += &format!("{id}\n");
    }
    std::fs::write(root.join("labels.txt"), "rect\n").unwrap();
    std::fs::write(root.join("ImageSets/Main/all.txt"), ids).unwrap();
    let dataset = VocDataset::open(root, "all", None).unwrap();
    let cfg = LoaderConfig {
        min_size: 60,
        max_size: 1000,
        flip: false,
        normalization: Normalization::Caffe,
        threads: 1,
        queue_size: 2,
        drop_difficult: true,
        shuffle: false,
        seed: 0,
    };
    for (index, (id, _, size, _)) in images.into_iter().enumerate() {
        assert_eq!(dataset.annotations[index].id, id);
        let result = load_sample(&dataset, index, false, &cfg);
        if id == "neither" {
            let err = format!("{:#}", result.unwrap_err());
            let file = root.join("JPEGImages/neither.jpg");
            assert!(
                err.contains(&file.display().to_string())
                    && err.contains("60x90 as stored and 90x60 as shown (EXIF orientation 6)")
                    && err.contains("annotation says 61x90"),
                "{err}"
            );
            continue;
        }
        let sample = result.unwrap();
        assert_eq!(sample.orig_size, size, "{id}");
        assert_eq!(sample.scale, 1.0);
        let shape = sample.image.size();
        assert_eq!(shape, [3, size.1 as i64, size.0 as i64], "{id}");
        // The annotated box frames the bright pixels (Caffe: bright > 0, dark < 0).
        let b = Vec::<Vec<f32>>::try_from(&sample.boxes).unwrap()[0].clone();
        let plane = sample.image.get(0);
        let at = |x: f32, y: f32| plane.double_value(&[y as i64, x as i64]);
        let (x1, y1, x2, y2) = (b[0], b[1], b[2], b[3]);
        for (x, y) in [(x1 + 2.0, y1 + 2.0), (x2 - 2.0, y2 - 2.0)] {
            assert!(at(x, y) > 100.0, "{id}: inside ({x}, {y}) is {}", at(x, y));
        }
        for (x, y) in [(x1 - 3.0, y1 + 5.0), (x2 + 3.0, y2 - 5.0)] {
            if x >= 0.0 && (x as u32) < size.0 {
                assert!(at(x, y) < -60.0, "{id}: outside ({x}, {y}) is {}", at(x, y));
            }
        }
    }
}

/// Per input line of `detect --json` / `onnx-detect.py`: width, height and detections.
fn records(stdout: &str) -> Vec<(u64, u64, Value)> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            (
                v["width"].as_u64().unwrap_or_else(|| panic!("{line}")),
                v["height"].as_u64().unwrap(),
                v["detections"].clone(),
            )
        })
        .collect()
}

/// Writes, for each `o<k>-plain.jpg` in `dir`, `o<k>-pil.png`: Pillow's decoding of it
/// with orientation k applied by numpy from the EXIF definition (as `shown` above).
const PIL_REFERENCE: &str = r#"
import sys
import numpy as np
from PIL import Image
maps = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
        8: lambda a: np.rot90(a, 1)}
for k in range(1, 9):
    a = np.asarray(Image.open(f"{sys.argv[1]}/o{k}-plain.jpg").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(maps[k](a))).save(f"{sys.argv[1]}/o{k}-pil.png")
"#;

/// A random-weight small model (score threshold 0: its detections are many and fixed by
/// its pixels), exported as `.lbw` and ONNX. `lbwnet detect` on each oriented JPEG gives
/// the size shown and exactly the detections it gives on a PNG of the pixels turned by
/// the EXIF definition; `scripts/onnx-detect.py` the same against Pillow's pixels turned.
#[test]
fn detect_and_onnx_detect_see_photos_as_viewers_show_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config_under(
        root,
        r#"
name: exif
data:
  min_size: 120
  max_size: 160
  synthetic: {train: 2, test: 1, seed: 3, width: 160, height: 120}
model:
  backbone: small
  small_width: 16
  anchor_sizes: [32, 64]
  rpn: {channels: 32, pre_nms_top_n_test: 200, post_nms_top_n_test: 30}
  roi: {head_hidden: 64}
quant: {bits: 4, method: lbw}
train:
  device: cpu
  threads: 1
"#,
    );
    tch::manual_seed(5);
    let classes = cfg.data.synthetic.as_ref().unwrap().shapes.len();
    let (vs, _model) =
        lbwnet::train::setup::build_model(&cfg, classes, Device::Cpu, false).unwrap();
    let run = root.join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join("config.yaml"), cfg.to_yaml().unwrap()).unwrap();
    let weights = run.join("checkpoints").join("random.safetensors");
    vs.save(&weights).unwrap();
    let (lbw, onnx) = (root.join("m.lbw"), root.join("m.onnx"));
    lbwnet_ok(&[
        "-q",
        "export",
        "--run",
        path_arg(&run),
        "--checkpoint",
        path_arg(&weights),
        "--out",
        path_arg(&lbw),
        "--onnx",
        path_arg(&onnx),
        "--set",
        "eval.score_thresh=0",
    ]);

    // Every orientation shows a 160x120 picture: stored 120x160 for 5..=8.
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let at = |name: String| images.join(name);
    for k in 1..=8u16 {
        let stored = if k >= 5 {
            asymmetric(120, 160)
        } else {
            asymmetric(160, 120)
        };
        write_jpeg(&at(format!("o{k}.jpg")), &stored, Some(k));
        write_jpeg(&at(format!("o{k}-plain.jpg")), &stored, None);
        let pixels = image::open(at(format!("o{k}-plain.jpg")))
            .unwrap()
            .to_rgb8();
        shown(&pixels, k).save(at(format!("o{k}-ref.png"))).unwrap();
    }
    run_python(&["-c", PIL_REFERENCE, path_arg(&images)]);
    let names = |suffix: &str| -> Vec<PathBuf> {
        (1..=8)
            .map(|k| at(format!("o{k}{suffix}")))
            .collect::<Vec<_>>()
    };
    let (oriented, plain) = (names(".jpg"), names("-plain.jpg"));

    let mut args = vec!["-q", "detect", "--model", path_arg(&lbw), "--json"];
    args.extend(["--score-thresh", "0"]);
    let inputs: Vec<PathBuf> = [oriented.clone(), names("-ref.png"), plain.clone()].concat();
    args.extend(inputs.iter().map(|p| path_arg(p)));
    let ours = records(&String::from_utf8(lbwnet_ok(&args).stdout).unwrap());
    assert_eq!(ours.len(), 24);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnx-detect.py");
    let mut args = vec![path_arg(&script), "--model", path_arg(&onnx)];
    args.extend(["--score-thresh", "0", "--threads", "1"]);
    let inputs: Vec<PathBuf> = [oriented, names("-pil.png"), plain].concat();
    args.extend(inputs.iter().map(|p| path_arg(p)));
    let theirs = records(&run_python(&args));
    assert_eq!(theirs.len(), 24);

    for (tool, found) in [("lbwnet detect", &ours), ("onnx-detect.py", &theirs)] {
        for k in 0..8 {
            let (oriented, reference, plain) = (&found[k], &found[8 + k], &found[16 + k]);
            let orientation = k + 1;
            assert_eq!(
                (oriented.0, oriented.1),
                (160, 120),
                "{tool}, orientation {orientation}"
            );
            assert!(
                oriented.2.as_array().unwrap().len() >= 5,
                "{tool}, orientation {orientation}: {}",
                oriented.2
            );
            assert_eq!(
                oriented.2, reference.2,
                "{tool}, orientation {orientation}: the boxes of the turned pixels"
            );
            // As stored, the detections differ: the orientation was what made them equal.
            if orientation > 1 {
                assert_ne!(oriented.2, plain.2, "{tool}, orientation {orientation}");
            }
            let stored = if orientation >= 5 {
                (120, 160)
            } else {
                (160, 120)
            };
            assert_eq!(
                (plain.0, plain.1),
                stored,
                "{tool}, orientation {orientation}"
            );
        }
    }
}
