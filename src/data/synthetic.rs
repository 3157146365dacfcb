//! The embedded default data set (SPEC §4): shape images in the exact PASCAL VOC layout,
//! generated from a seed.
//!
//! Each image has a textured, noisy background, a few distractor strokes that belong to no
//! class, and one to four objects of seven clearly distinct shape classes with random
//! colour (kept in contrast with what lies under them), scale, aspect, rotation and some
//! overlap. Boxes are the extent of each object's visible pixels. Objects that end up tiny
//! (a side under 14 px) or mostly hidden (truncated by the border or occluded) are marked
//! difficult. Image `i` draws from its own ChaCha8 stream of the seed, so the output is
//! byte-identical for a seed however many threads generate it.
use super::voc::LABELS_FILE;
use crate::config::{DataConfig, SyntheticConfig};
use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;
use std::fmt::Write as _;
use std::path::Path;

/// The synthetic data set's classes, in `labels.txt` order.
pub const SYNTHETIC_CLASSES: [&str; 7] = [
    "circle", "square", "triangle", "star", "cross", "ring", "heart",
];

/// Records the settings a folder was generated with, so a stale set is noticed.
pub const MARKER_FILE: &str = "lbwnet-synthetic.json";

/// Bumped whenever the drawing changes, so sets made by an older generator are redone.
const GENERATOR_VERSION: u32 = 1;
const JPEG_QUALITY: u8 = 90;
/// Objects with a visible side under this many pixels are difficult.
const MIN_EASY_SIDE: usize = 14;
/// Objects with less than this share of their pixels visible are difficult.
const MIN_EASY_VISIBLE: f32 = 0.4;
/// Minimum RGB distance between an object's colour and the mean colour under it.
const MIN_CONTRAST: f32 = 110.0;

/// Generates the data set described by `spec` at `out`, which must not exist yet. The set
/// is built in a temporary folder next to `out` and renamed into place at the end, so an
/// interrupted run never leaves a partial set behind.
pub fn generate(out: &Path, spec: &SyntheticConfig) -> Result<()> {
    if out.exists() {
        bail!("{} already exists; refusing to overwrite it", out.display());
    }
    let built = build(out, spec)?;
    std::fs::rename(built.path(), out).with_context(|| {
        format!(
            "moving the generated data set into place at {}",
            out.display()
        )
    })?;
    Ok(())
}

/// Like [`generate`], but replaces an existing synthetic set at `out` (never a folder
/// without the marker file: that could be someone's real data).
pub fn regenerate(out: &Path, spec: &SyntheticConfig) -> Result<()> {
    if !out.exists() {
        return generate(out, spec);
    }
    if !out.join(MARKER_FILE).is_file() {
        bail!("{} exists and is not a synthetic data set made by lbwnet (no {MARKER_FILE}); not replacing it", out.display());
    }
    let built = build(out, spec)?;
    let parent = built.path().parent().unwrap_or(Path::new("."));
    let old = tempfile::Builder::new()
        .prefix(".lbwnet-old-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let old_set = old.path().join("set");
    std::fs::rename(out, &old_set)
        .with_context(|| format!("moving the old data set {} aside", out.display()))?;
    if let Err(err) = std::fs::rename(built.path(), out) {
        // Put the old set back rather than lose both.
        let _ = std::fs::rename(&old_set, out);
        return Err(err).with_context(|| {
            format!(
                "moving the generated data set into place at {}",
                out.display()
            )
        });
    }
    Ok(())
}

/// What a folder holds, compared with the settings asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    Missing,
    /// A synthetic set made with the same settings and generator.
    Same,
    /// A synthetic set made with other settings (described).
    Different(String),
    /// Something else (no marker file).
    NotSynthetic,
}

/// Compares the folder at `root` with the set `spec` describes.
pub fn inspect(root: &Path, spec: &SyntheticConfig) -> Result<Existing> {
    if !root.exists() {
        return Ok(Existing::Missing);
    }
    let marker = root.join(MARKER_FILE);
    if !marker.is_file() {
        return Ok(Existing::NotSynthetic);
    }
    let text = std::fs::read_to_string(&marker)
        .with_context(|| format!("reading {}", marker.display()))?;
    let found: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", marker.display()))?;
    Ok(if found == marker_json(spec) {
        Existing::Same
    } else {
        Existing::Different(found.to_string())
    })
}

/// Generates the configured synthetic set at `data.root` when `data.synthetic` is set and
/// the folder is missing; checks that an existing one matches the settings.
pub fn ensure_synthetic(cfg: &DataConfig) -> Result<()> {
    let Some(spec) = &cfg.synthetic else {
        return Ok(());
    };
    let root = &cfg.root;
    match inspect(root, spec)? {
        Existing::Missing => {
            tracing::info!("generating the synthetic data set at {}", root.display());
            generate(root, spec)
        }
        Existing::Same => Ok(()),
        Existing::Different(found) => bail!(
            "key `data.root`: {} holds a synthetic data set made with {found}, but the config asks for {}; delete the folder or run `lbwnet gen-data --force` with this config",
            root.display(),
            marker_json(spec)
        ),
        Existing::NotSynthetic => bail!(
            "key `data.root`: {} exists but is not a synthetic data set made by lbwnet (no {MARKER_FILE}); point data.root elsewhere or drop data.synthetic from the config",
            root.display()
        ),
    }
}

fn marker_json(spec: &SyntheticConfig) -> serde_json::Value {
    serde_json::json!({
        "generator": GENERATOR_VERSION,
        "train": spec.train,
        "test": spec.test,
        "seed": spec.seed,
        "width": spec.width,
        "height": spec.height,
    })
}

fn check_spec(spec: &SyntheticConfig) -> Result<()> {
    if spec.width < 64 || spec.height < 64 || spec.width > 4096 || spec.height > 4096 {
        bail!(
            "image size {}x{} is not allowed; each side must be 64..=4096",
            spec.width,
            spec.height
        );
    }
    if spec.train + spec.test == 0 {
        bail!("the data set would have no images (train and test are both 0)");
    }
    Ok(())
}

/// Writes the whole set into a fresh temporary folder next to `out`.
fn build(out: &Path, spec: &SyntheticConfig) -> Result<tempfile::TempDir> {
    check_spec(spec)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".lbwnet-gen-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let root = tmp.path();
    for dir in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(dir))
            .with_context(|| format!("creating {}", root.join(dir).display()))?;
    }
    let total = spec.train + spec.test;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(total);
    std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..total)
                        .step_by(threads)
                        .try_for_each(|i| write_image(root, spec, i))
                })
            })
            .collect();
        jobs.into_iter().try_for_each(|job| {
            job.join()
                .unwrap_or_else(|_| bail!("a generator thread panicked"))
        })
    })?;

    let trainval: Vec<usize> = (0..spec.train).collect();
    let splits = [
        ("trainval", trainval.clone()),
        (
            "train",
            trainval.iter().copied().filter(|i| i % 5 != 4).collect(),
        ),
        (
            "val",
            trainval.iter().copied().filter(|i| i % 5 == 4).collect(),
        ),
        ("test", (spec.train..total).collect::<Vec<_>>()),
    ];
    for (name, members) in splits {
        let text: String = members.into_iter().map(|i| image_id(i) + "\n").collect();
        let path = root.join("ImageSets/Main").join(format!("{name}.txt"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let labels: String = SYNTHETIC_CLASSES.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(root.join(LABELS_FILE), labels)
        .with_context(|| format!("writing {LABELS_FILE}"))?;
    // Written last: a folder with the marker is complete.
    let marker = serde_json::to_string_pretty(&marker_json(spec))? + "\n";
    std::fs::write(root.join(MARKER_FILE), marker)
        .with_context(|| format!("writing {MARKER_FILE}"))?;
    Ok(tmp)
}

/// `000001`, `000002`, ... as in VOC2007.
fn image_id(i: usize) -> String {
    format!("{:06}", i + 1)
}

fn write_image(root: &Path, spec: &SyntheticConfig, i: usize) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(i as u64);
    let scene = render_scene(&mut rng, spec.width as usize, spec.height as usize);
    let id = image_id(i);
    let jpeg_path = root.join("JPEGImages").join(format!("{id}.jpg"));
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(&scene.rgb, spec.width, spec.height, ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding {}", jpeg_path.display()))?;
    std::fs::write(&jpeg_path, jpeg).with_context(|| format!("writing {}", jpeg_path.display()))?;
    let xml_path = root.join("Annotations").join(format!("{id}.xml"));
    std::fs::write(
        &xml_path,
        annotation_xml(&id, spec.width, spec.height, &scene.objects),
    )
    .with_context(|| format!("writing {}", xml_path.display()))?;
    Ok(())
}

/// One annotated object of a rendered image: 0-based inclusive pixel box.
#[derive(Debug, Clone, PartialEq)]
struct SceneObject {
    class: usize,
    bbox: [usize; 4],
    truncated: bool,
    difficult: bool,
}

struct Scene {
    rgb: Vec<u8>,
    objects: Vec<SceneObject>,
}

fn annotation_xml(id: &str, width: u32, height: u32, objects: &[SceneObject]) -> String {
    let mut xml = String::new();
    let _ = write!(
        xml,
        "<annotation>\n\t<folder>lbwnet-synthetic</folder>\n\t<filename>{id}.jpg</filename>\n\
         \t<source>\n\t\t<database>lbwnet synthetic shapes</database>\n\t</source>\n\
         \t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n\
         \t<segmented>0</segmented>\n"
    );
    for o in objects {
        // VOC boxes are 1-based inclusive.
        let _ = write!(
            xml,
            "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{}</truncated>\n\
             \t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{}</xmin>\n\t\t\t<ymin>{}</ymin>\n\
             \t\t\t<xmax>{}</xmax>\n\t\t\t<ymax>{}</ymax>\n\t\t</bndbox>\n\t</object>\n",
            SYNTHETIC_CLASSES[o.class],
            u8::from(o.truncated),
            u8::from(o.difficult),
            o.bbox[0] + 1,
            o.bbox[1] + 1,
            o.bbox[2] + 1,
            o.bbox[3] + 1
        );
    }
    xml.push_str("</annotation>\n");
    xml
}

/// RGB float canvas plus, per pixel, which object (1-based; 0 = none) shows there.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<[f32; 3]>,
    owner: Vec<u16>,
}

impl Canvas {
    /// Blends `colour` over pixel (x, y) with `coverage`; a pixel at least half covered
    /// now shows `owner`.
    fn blend(&mut self, x: usize, y: usize, coverage: f32, colour: [f32; 3], owner: u16) {
        let k = y * self.width + x;
        let px = &mut self.pixels[k];
        for c in 0..3 {
            px[c] += (colour[c] - px[c]) * coverage;
        }
        if coverage >= 0.5 {
            self.owner[k] = owner;
        }
    }

    /// Mean colour over a rectangle (clipped to the canvas).
    fn mean_colour(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> [f32; 3] {
        let clamp_x = |v: f32| (v.max(0.0) as usize).min(self.width - 1);
        let clamp_y = |v: f32| (v.max(0.0) as usize).min(self.height - 1);
        let mut sum = [0f32; 3];
        let mut n = 0f32;
        for y in clamp_y(y0)..=clamp_y(y1) {
            for x in clamp_x(x0)..=clamp_x(x1) {
                let px = self.pixels[y * self.width + x];
                for c in 0..3 {
                    sum[c] += px[c];
                }
                n += 1.0;
            }
        }
        sum.map(|s| s / n)
    }

    /// Paints the pixels of `[x0, x1] x [y0, y1]` (clipped) for which `shade` gives a
    /// coverage and colour; pixel centres are at `x + 0.5`.
    fn paint(
        &mut self,
        bounds: [f32; 4],
        owner: u16,
        shade: impl Fn(f32, f32) -> Option<(f32, [f32; 3])>,
    ) {
        let (xs, ys) = self.clip(bounds);
        for y in ys {
            for x in xs.clone() {
                if let Some((coverage, colour)) = shade(x as f32 + 0.5, y as f32 + 0.5) {
                    if coverage > 0.0 {
                        self.blend(x, y, coverage.min(1.0), colour, owner);
                    }
                }
            }
        }
    }

    fn clip(&self, [x0, y0, x1, y1]: [f32; 4]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let lo = |v: f32, n: usize| (v.floor().max(0.0) as usize).min(n);
        let hi = |v: f32, n: usize| ((v.ceil() + 1.0).max(0.0) as usize).min(n);
        (
            lo(x0, self.width)..hi(x1, self.width),
            lo(y0, self.height)..hi(y1, self.height),
        )
    }
}

fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    std::array::from_fn(|c| a[c] + (b[c] - a[c]) * t)
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>().sqrt()
}

fn random_colour(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> [f32; 3] {
    std::array::from_fn(|_| rng.gen_range(lo..hi))
}

/// Textured background: a gradient, smooth value noise, or soft stripes between two
/// related colours.
fn paint_background(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let base = random_colour(rng, 30.0, 225.0);
    let other: [f32; 3] =
        std::array::from_fn(|c| (base[c] + rng.gen_range(-60.0..60.0)).clamp(0.0, 255.0));
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let angle = rng.gen_range(0.0..PI);
    let (dx, dy) = (angle.cos(), angle.sin());
    let texture = rng.gen_range(0..3);
    let grid_w = rng.gen_range(3..8);
    let grid_h = rng.gen_range(3..7);
    let grid: Vec<f32> = (0..(grid_w + 1) * (grid_h + 1))
        .map(|_| rng.gen::<f32>())
        .collect();
    let period = rng.gen_range(8.0..32.0);
    // Gradient coordinate: the projection on (dx, dy), spanning [0, 1] over the image.
    let (lowest, span) = ((w * dx).min(0.0), (w * dx).abs() + h * dy);
    for y in 0..canvas.height {
        for x in 0..canvas.width {
            let (fx, fy) = (x as f32, y as f32);
            let t = match texture {
                0 => (fx * dx + fy * dy - lowest) / span.max(1.0),
                1 => {
                    let gx = fx / w * grid_w as f32;
                    let gy = fy / h * grid_h as f32;
                    let (ix, iy) = (gx as usize, gy as usize);
                    let (tx, ty) = (gx - ix as f32, gy - iy as f32);
                    let at = |i: usize, j: usize| grid[j * (grid_w + 1) + i];
                    let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                    let bottom = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                    top * (1.0 - ty) + bottom * ty
                }
                _ => 0.5 + 0.5 * (2.0 * PI * (fx * dx + fy * dy) / period).sin(),
            };
            canvas.pixels[y * canvas.width + x] = lerp(base, other, t.clamp(0.0, 1.0));
        }
    }
}

/// Strokes that belong to no class: line segments, thin arcs and speckle clusters.
fn paint_distractor(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let colour = random_colour(rng, 0.0, 255.0);
    let (cx, cy) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
    match rng.gen_range(0..3) {
        0 => {
            let length = rng.gen_range(30.0..160.0);
            let angle = rng.gen_range(0.0..PI);
            let half = rng.gen_range(0.75..2.0);
            let (ux, uy) = (angle.cos(), angle.sin());
            let (ex, ey) = (ux * length / 2.0, uy * length / 2.0);
            let bounds = [
                cx - ex.abs() - 3.0,
                cy - ey.abs() - 3.0,
                cx + ex.abs() + 3.0,
                cy + ey.abs() + 3.0,
            ];
            canvas.paint(bounds, 0, |x, y| {
                let (px, py) = (x - cx, y - cy);
                let along = (px * ux + py * uy).clamp(-length / 2.0, length / 2.0);
                let d = ((px - along * ux).powi(2) + (py - along * uy).powi(2)).sqrt();
                Some(((half + 0.5 - d).clamp(0.0, 1.0), colour))
            });
        }
        1 => {
            let radius = rng.gen_range(12.0..50.0);
            let half = rng.gen_range(0.75..1.75);
            let start = rng.gen_range(-PI..PI);
            let sweep = rng.gen_range(1.0..3.8);
            let r = radius + 3.0;
            canvas.paint([cx - r, cy - r, cx + r, cy + r], 0, |x, y| {
                let (px, py) = (x - cx, y - cy);
                let along = (py.atan2(px) - start).rem_euclid(2.0 * PI);
                if along > sweep {
                    return None;
                }
                let d = ((px * px + py * py).sqrt() - radius).abs();
                Some(((half + 0.5 - d).clamp(0.0, 1.0), colour))
            });
        }
        _ => {
            for _ in 0..rng.gen_range(8..25) {
                let (dx, dy) = (
                    cx + rng.gen_range(-25.0..25.0),
                    cy + rng.gen_range(-25.0..25.0),
                );
                let radius = rng.gen_range(1.0..2.5);
                let r = radius + 1.0;
                canvas.paint([dx - r, dy - r, dx + r, dy + r], 0, |x, y| {
                    let d = ((x - dx).powi(2) + (y - dy).powi(2)).sqrt();
                    Some(((radius + 0.5 - d).clamp(0.0, 1.0), colour))
                });
            }
        }
    }
}

/// Whether local point (u, v) (frame [-1, 1]^2, v pointing down) lies inside the shape.
fn inside(class: usize, polygon: &[[f32; 2]], u: f32, v: f32) -> bool {
    match SYNTHETIC_CLASSES[class] {
        "circle" => u * u + v * v <= 1.0,
        "square" => u.abs() <= 1.0 && v.abs() <= 1.0,
        "cross" => (u.abs() <= 1.0 && v.abs() <= 0.34) || (u.abs() <= 0.34 && v.abs() <= 1.0),
        "ring" => (0.3025..=1.0).contains(&(u * u + v * v)),
        "heart" => {
            // (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in +-1.139, y in [-1, 1.236]: fit it to
            // the frame, y pointing up.
            let x = 1.139 * u;
            let y = 0.118 - 1.118 * v;
            (x * x + y * y - 1.0).powi(3) <= x * x * y * y * y
        }
        _ => inside_polygon(polygon, u, v),
    }
}

/// The outline of the polygon classes (triangle, five-pointed star); empty for the others.
fn polygon_of(class: usize) -> Vec<[f32; 2]> {
    match SYNTHETIC_CLASSES[class] {
        "triangle" => vec![[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]],
        "star" => (0..10)
            .map(|k| {
                let angle = -PI / 2.0 + k as f32 * PI / 5.0;
                let r = if k % 2 == 0 { 1.0 } else { 0.42 };
                [r * angle.cos(), r * angle.sin()]
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Even-odd point-in-polygon test.
fn inside_polygon(polygon: &[[f32; 2]], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let ([xi, yi], [xj, yj]) = (polygon[i], polygon[j]);
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Where and how an object is drawn: centre, frame half-extents and rotation.
#[derive(Debug, Clone, Copy)]
struct Placement {
    class: usize,
    cx: f32,
    cy: f32,
    half_w: f32,
    half_h: f32,
    angle: f32,
}

impl Placement {
    /// Half-extents of the rotated frame's axis-aligned box.
    fn extent(&self) -> (f32, f32) {
        let (c, s) = (self.angle.cos().abs(), self.angle.sin().abs());
        (
            c * self.half_w + s * self.half_h,
            s * self.half_w + c * self.half_h,
        )
    }

    fn bounds(&self) -> [f32; 4] {
        let (ex, ey) = self.extent();
        [self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey]
    }
}

fn box_area(b: [f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

fn intersection(a: [f32; 4], b: [f32; 4]) -> f32 {
    box_area([
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ])
}

/// Picks a placement that overlaps the earlier ones only moderately: some occlusion,
/// never an object mostly hidden by a later one.
fn place_object(
    rng: &mut ChaCha8Rng,
    width: f32,
    height: f32,
    earlier: &[Placement],
) -> Option<Placement> {
    for _ in 0..30 {
        let class = rng.gen_range(0..SYNTHETIC_CLASSES.len());
        let roll: f32 = rng.gen();
        let (tiny, truncated) = (roll < 0.06, (0.06..0.12).contains(&roll));
        let max_size = 100f32.min(0.6 * width.min(height));
        let size = if tiny {
            rng.gen_range(8.0..13.0)
        } else {
            (rng.gen_range(28f32.ln()..max_size.ln())).exp()
        };
        let aspect = rng.gen_range(0.8f32.ln()..1.25f32.ln()).exp();
        let angle = match SYNTHETIC_CLASSES[class] {
            // Hearts stay roughly upright; the rest turn freely.
            "heart" => rng.gen_range(-0.4..0.4),
            _ => rng.gen_range(-PI..PI),
        };
        let mut p = Placement {
            class,
            cx: 0.0,
            cy: 0.0,
            half_w: size / 2.0 * aspect.sqrt(),
            half_h: size / 2.0 / aspect.sqrt(),
            angle,
        };
        let (ex, ey) = p.extent();
        if 2.0 * ex >= width || 2.0 * ey >= height {
            continue;
        }
        p.cx = rng.gen_range(ex..width - ex);
        p.cy = rng.gen_range(ey..height - ey);
        if truncated {
            // Push the object across one border until 50-80% of its frame is outside.
            let outside = rng.gen_range(0.5..0.8);
            match rng.gen_range(0..4) {
                0 => p.cx = ex - 2.0 * ex * outside,
                1 => p.cx = width - ex + 2.0 * ex * outside,
                2 => p.cy = ey - 2.0 * ey * outside,
                _ => p.cy = height - ey + 2.0 * ey * outside,
            }
        }
        let b = p.bounds();
        let acceptable = earlier.iter().all(|q| {
            let qb = q.bounds();
            let inter = intersection(b, qb);
            inter <= 0.3 * box_area(qb) && inter <= 0.3 * box_area(b)
        });
        if acceptable {
            return Some(p);
        }
    }
    None
}

/// How much of an object was drawn: pixels at least half covered, in and out of the image.
struct Coverage {
    full_pixels: usize,
    /// Some of its pixels fell outside the image.
    truncated: bool,
}

/// Draws one object with 4x4 supersampled coverage, a solid colour in contrast with
/// what lies under it, and a mild shading gradient.
fn draw_object(canvas: &mut Canvas, rng: &mut ChaCha8Rng, p: &Placement, owner: u16) -> Coverage {
    const SUB: usize = 4;
    let b = p.bounds();
    let under = canvas.mean_colour(b[0], b[1], b[2], b[3]);
    let colour = (0..40)
        .map(|_| random_colour(rng, 0.0, 255.0))
        .find(|c| distance(*c, under) >= MIN_CONTRAST)
        .unwrap_or_else(|| under.map(|v| if v > 127.0 { 20.0 } else { 235.0 }));
    let shade_angle = rng.gen_range(-PI..PI);
    let shade_strength = rng.gen_range(0.0..0.15);
    let polygon = polygon_of(p.class);
    let (cos, sin) = (p.angle.cos(), p.angle.sin());
    let radius = p.half_w.max(p.half_h);
    // A pixel centre further than this outside the frame (in frame units) cannot be hit.
    let margin_u = 0.75 / p.half_w;
    let margin_v = 0.75 / p.half_h;
    let local = |x: f32, y: f32| {
        let (dx, dy) = (x - p.cx, y - p.cy);
        (
            (cos * dx + sin * dy) / p.half_w,
            (-sin * dx + cos * dy) / p.half_h,
        )
    };
    let mut full_pixels = 0;
    let mut truncated = false;
    let x_range = (b[0].floor() as i64)..=(b[2].ceil() as i64);
    for y in (b[1].floor() as i64)..=(b[3].ceil() as i64) {
        for x in x_range.clone() {
            let (uc, vc) = local(x as f32 + 0.5, y as f32 + 0.5);
            if uc.abs() > 1.0 + margin_u || vc.abs() > 1.0 + margin_v {
                continue;
            }
            let mut hits = 0;
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let (u, v) = local(
                        x as f32 + (sx as f32 + 0.5) / SUB as f32,
                        y as f32 + (sy as f32 + 0.5) / SUB as f32,
                    );
                    hits += usize::from(inside(p.class, &polygon, u, v));
                }
            }
            if hits == 0 {
                continue;
            }
            let coverage = hits as f32 / (SUB * SUB) as f32;
            let in_image =
                x >= 0 && y >= 0 && (x as usize) < canvas.width && (y as usize) < canvas.height;
            if coverage >= 0.5 {
                full_pixels += 1;
                truncated |= !in_image;
            }
            if in_image {
                let dx = x as f32 + 0.5 - p.cx;
                let dy = y as f32 + 0.5 - p.cy;
                let light = 1.0
                    + shade_strength * (dx * shade_angle.cos() + dy * shade_angle.sin()) / radius;
                canvas.blend(
                    x as usize,
                    y as usize,
                    coverage,
                    colour.map(|c| c * light),
                    owner,
                );
            }
        }
    }
    Coverage {
        full_pixels,
        truncated,
    }
}

/// Renders one image: background, distractors under the objects, objects, occasional
/// strokes over them, sensor noise; then reads each object's visible extent.
fn render_scene(rng: &mut ChaCha8Rng, width: usize, height: usize) -> Scene {
    let mut canvas = Canvas {
        width,
        height,
        pixels: vec![[0.0; 3]; width * height],
        owner: vec![0; width * height],
    };
    paint_background(&mut canvas, rng);
    let distractors = rng.gen_range(1..=3);
    let over: Vec<bool> = (0..distractors).map(|_| rng.gen_bool(0.25)).collect();
    for _ in over.iter().filter(|o| !**o) {
        paint_distractor(&mut canvas, rng);
    }
    let wanted = rng.gen_range(1..=4);
    let mut placements: Vec<Placement> = Vec::new();
    for _ in 0..wanted {
        if let Some(p) = place_object(rng, width as f32, height as f32, &placements) {
            placements.push(p);
        }
    }
    let coverages: Vec<Coverage> = placements
        .iter()
        .enumerate()
        .map(|(k, p)| draw_object(&mut canvas, rng, p, k as u16 + 1))
        .collect();
    for _ in over.iter().filter(|o| **o) {
        paint_distractor(&mut canvas, rng);
    }
    let noise = rng.gen_range(2.0..10.0);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for px in &canvas.pixels {
        for &v in px {
            // Sum of two uniforms: a cheap bell-shaped noise.
            let n = (rng.gen::<f32>() + rng.gen::<f32>() - 1.0) * noise;
            rgb.push((v + n).round().clamp(0.0, 255.0) as u8);
        }
    }

    let mut visible = vec![(usize::MAX, usize::MAX, 0usize, 0usize, 0usize); placements.len()];
    for (k, &owner) in canvas.owner.iter().enumerate() {
        if owner == 0 {
            continue;
        }
        let (x, y) = (k % width, k / width);
        let v = &mut visible[owner as usize - 1];
        *v = (v.0.min(x), v.1.min(y), v.2.max(x), v.3.max(y), v.4 + 1);
    }
    let objects = placements
        .iter()
        .zip(&coverages)
        .zip(&visible)
        .filter(|(_, v)| v.4 > 0)
        .map(|((p, cov), &(x0, y0, x1, y1, count))| {
            let short_side = (x1 - x0 + 1).min(y1 - y0 + 1);
            let visible_share = count as f32 / cov.full_pixels.max(1) as f32;
            SceneObject {
                class: p.class,
                bbox: [x0, y0, x1, y1],
                truncated: cov.truncated,
                difficult: short_side < MIN_EASY_SIDE || visible_share < MIN_EASY_VISIBLE,
            }
        })
        .collect();
    Scene { rgb, objects }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_inside_their_frame_and_distinct() {
        // Share of the frame each class fills, sampled on a grid: all differ clearly.
        let fills: Vec<f32> = (0..SYNTHETIC_CLASSES.len())
            .map(|class| {
                let polygon = polygon_of(class);
                let n = 100;
                let hits = (0..n * n)
                    .filter(|k| {
                        let u = -1.0 + 2.0 * ((k % n) as f32 + 0.5) / n as f32;
                        let v = -1.0 + 2.0 * ((k / n) as f32 + 0.5) / n as f32;
                        inside(class, &polygon, u, v)
                    })
                    .count();
                hits as f32 / (n * n) as f32
            })
            .collect();
        for (a, fa) in fills.iter().enumerate() {
            assert!(*fa > 0.2 && *fa <= 1.0, "{}: {fa}", SYNTHETIC_CLASSES[a]);
        }
        // Square fills the frame, circle pi/4, ring pi/4 * (1 - 0.3025).
        assert!((fills[1] - 1.0).abs() < 1e-6);
        assert!((fills[0] - PI / 4.0).abs() < 0.01);
        assert!((fills[5] - PI / 4.0 * 0.6975).abs() < 0.01);
    }

    #[test]
    fn scenes_have_sensible_objects() {
        let mut total = 0;
        let mut difficult = 0;
        for i in 0..40 {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            rng.set_stream(i);
            let scene = render_scene(&mut rng, 320, 240);
            assert_eq!(scene.rgb.len(), 320 * 240 * 3);
            assert!(!scene.objects.is_empty() && scene.objects.len() <= 4);
            for o in &scene.objects {
                assert!(o.bbox[0] <= o.bbox[2] && o.bbox[2] < 320 && o.bbox[3] < 240);
                let side = (o.bbox[2] - o.bbox[0] + 1).max(o.bbox[3] - o.bbox[1] + 1);
                assert!(o.difficult || (20..=160).contains(&side), "{o:?}");
                difficult += usize::from(o.difficult);
            }
            total += scene.objects.len();
        }
        assert!(difficult * 4 < total, "{difficult} of {total} difficult");
    }
}
