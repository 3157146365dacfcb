//! The embedded default data set (SPEC §4): shape images in the exact PASCAL VOC layout,
//! generated from a seed.
//!
//! By default each image has a textured, noisy background, a few distractor strokes that
//! belong to no class, and one to four objects of seven clearly distinct shape classes
//! with random colour (kept in contrast with what lies under them), scale, aspect,
//! rotation and some overlap. Boxes are the extent of each object's visible pixels.
//! Objects that end up tiny (a side under 14 px) or mostly hidden (truncated by the border
//! or occluded) are marked difficult. Image `i` draws from its own ChaCha8 stream of the
//! seed, so the output is byte-identical for a seed however many threads generate it.
//!
//! [`SyntheticConfig`]'s knobs make a harder set (look-alike shapes, smaller and more
//! objects, shape-part clutter, blur, noise, lower contrast); a knob left at its default
//! changes nothing, so the default set stays byte-identical.
//!
//! - `shapes`: the classes and their geometry;
//! - `raster`: the canvas, backgrounds, distractor strokes and blur;
//! - `scene`: placement, drawing, visible boxes and difficult flags;
//! - this file: the data set's lifecycle and the VOC files.
mod raster;
mod scene;
mod shapes;

pub use crate::config::synthetic::{Shape, SyntheticConfig, ALL_SHAPES, DEFAULT_SHAPES};

use super::voc::LABELS_FILE;
use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scene::{render_scene, SceneObject};
use std::fmt::Write as _;
use std::path::Path;

/// The default data set's classes, in `labels.txt` order (the names of
/// [`DEFAULT_SHAPES`]).
pub const SYNTHETIC_CLASSES: [&str; 7] = [
    "circle", "square", "triangle", "star", "cross", "ring", "heart",
];

/// Records the settings a folder was generated with, so a stale set is noticed.
pub const MARKER_FILE: &str = "lbwnet-synthetic.json";

/// Bumped whenever the drawing changes, so sets made by an older generator are redone.
const GENERATOR_VERSION: u32 = 1;
const JPEG_QUALITY: u8 = 90;

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
pub fn ensure_synthetic(root: &Path, spec: Option<&SyntheticConfig>) -> Result<()> {
    let Some(spec) = spec else {
        return Ok(());
    };
    match inspect(root, spec)? {
        Existing::Missing => {
            tracing::info!("generating the synthetic data set at {}", root.display());
            match generate(root, spec) {
                // Jobs of a sweep running at once may all find the set missing; generation
                // is deterministic, so the first one to finish serves them all.
                Err(_) if inspect(root, spec)? == Existing::Same => Ok(()),
                done => done,
            }
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

/// The splits a synthetic set has.
pub const SPLITS: [&str; 4] = ["trainval", "train", "val", "test"];

/// Writes the synthetic set at `root` in COCO format too, if not done yet:
/// `annotations/instances_<split>.json` for every split (the defaults of `data.coco.train`
/// and `data.coco.test` under `data.root`), converted from the VOC annotations by SPEC
/// §3's rule, so reading them back gives the same boxes. Image `<id>` is COCO image id
/// `<id>` as a number with `file_name` `JPEGImages/<id>.jpg` (relative to `root`, the
/// default `data.coco.images`), and class `c` category id `c + 1`. Each file is written
/// atomically and only when missing; a regenerated set starts without them.
pub fn ensure_coco(root: &Path) -> Result<()> {
    for split in SPLITS {
        let path = crate::config::DataConfig::default_coco_json(root, split);
        if path.is_file() {
            continue;
        }
        let dataset = super::dataset::Dataset::open(root, split, None)?;
        let images = dataset
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| super::coco::ImageEntry {
                // Synthetic ids are `000001`, ...: their number (unique, in order).
                id: id.parse().unwrap_or(i as i64 + 1),
                file_name: format!("JPEGImages/{id}.jpg"),
            })
            .collect::<Vec<_>>();
        let json = super::coco::instances_json(&dataset.annotations, &images, &dataset.classes)
            .with_context(|| format!("converting split `{split}` of {}", root.display()))?;
        crate::fsutil::write_atomic(&path, (serde_json::to_string(&json)? + "\n").as_bytes())?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}

/// The settings a set was made with. Knobs at their default are left out, so a default
/// set's marker reads as it always has.
fn marker_json(spec: &SyntheticConfig) -> serde_json::Value {
    let mut marker = serde_json::json!({
        "generator": GENERATOR_VERSION,
        "train": spec.train,
        "test": spec.test,
        "seed": spec.seed,
        "width": spec.width,
        "height": spec.height,
    });
    let defaults = serde_json::to_value(SyntheticConfig::default()).expect("serializable");
    let asked = serde_json::to_value(spec).expect("serializable");
    if let (Some(map), Some(asked), Some(defaults)) = (
        marker.as_object_mut(),
        asked.as_object(),
        defaults.as_object(),
    ) {
        for (key, value) in asked {
            if !map.contains_key(key) && defaults.get(key) != Some(value) {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    marker
}

fn check_spec(spec: &SyntheticConfig) -> Result<()> {
    spec.validate()?;
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
    let labels: String = spec
        .shapes
        .iter()
        .map(|s| format!("{}\n", s.name()))
        .collect();
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
    let scene = render_scene(&mut rng, spec);
    let id = image_id(i);
    let jpeg_path = root.join("JPEGImages").join(format!("{id}.jpg"));
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(&scene.rgb, spec.width, spec.height, ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding {}", jpeg_path.display()))?;
    std::fs::write(&jpeg_path, jpeg).with_context(|| format!("writing {}", jpeg_path.display()))?;
    let xml_path = root.join("Annotations").join(format!("{id}.xml"));
    std::fs::write(&xml_path, annotation_xml(&id, spec, &scene.objects))
        .with_context(|| format!("writing {}", xml_path.display()))?;
    Ok(())
}

fn annotation_xml(id: &str, spec: &SyntheticConfig, objects: &[SceneObject]) -> String {
    let (width, height) = (spec.width, spec.height);
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
            spec.shapes[o.class].name(),
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
