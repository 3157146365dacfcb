//! COCO-format data sets (SPEC §3 "COCO-format input"): one instances JSON per split
//! (`images`, `annotations`, `categories`, as COCO's `instances_*.json` and the annotation
//! tools that export it), its images under a folder that each `file_name` is relative to.
//!
//! The conversion to the VOC terms the rest of lbwnet works in is one fixed rule:
//! - a box `[x, y, w, h]` (continuous pixels) is the VOC box `(x + 1, y + 1, x + w, y + h)`,
//!   the inverse of the COCO metric's conversion (`eval::coco`), so a VOC set written as
//!   COCO and read back keeps its boxes exactly; a box reaching past the image is clipped to
//!   it (with a warning) for training, as VOC reading does;
//! - `iscrowd: 1` is VOC's `difficult`: not trained on, neither hit nor false positive in
//!   evaluation (a crowd region in the COCO metric);
//! - classes are the `categories` in id order (ids may be any integers), or the data set's
//!   class list (`data.classes`) selecting some of them by name; annotations of the other
//!   categories are left out;
//! - images are taken in id order (pycocotools' order); image `id` N is image id `"N"` in
//!   comp4 files and messages; images without annotations are kept (evaluation) and skipped
//!   in training as VOC images without objects are.
//!
//! The COCO metric of such a set is computed against the file's own boxes and `area`s
//! ([`CocoBox`]), as pycocotools scores it.
//!
//! Everything a stranger's file could get wrong is an error naming the file and the entry
//! (`annotations[12] (id 7, image_id 3)`): invalid JSON, an unknown image or category, a
//! zero or negative box size, a box outside its image, a duplicate image or category id, a
//! `file_name` that is absolute or leaves the image folder, a missing image file. The file's
//! size and every image's width and height are bounded before anything is allocated for
//! them.
use super::voc::{check_class_list, VocAnnotation, VocObject};
use crate::fsutil::check_name;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// The largest instances file read (COCO 2017's train file, with every segmentation, is
/// 448 MB).
pub const MAX_JSON_BYTES: u64 = 1 << 30;

/// The largest width or height an image entry may give (JPEG's limit).
pub const MAX_IMAGE_SIDE: u64 = 65_535;

/// One ground-truth box as the COCO file gives it, for the COCO metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CocoBox {
    /// `[x, y, w, h]`, continuous pixels.
    pub bbox: [f64; 4],
    /// The annotation's `area` (pycocotools' area ranges read it), or `w * h` without one.
    pub area: f64,
}

/// What a COCO-format split keeps beside its VOC-terms annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoSource {
    /// The instances JSON.
    pub json: PathBuf,
    /// The folder `file_names` are relative to.
    pub images_dir: PathBuf,
    /// Per image (data set order): its `file_name`.
    pub file_names: Vec<PathBuf>,
    /// Per image: its COCO `id`.
    pub image_ids: Vec<i64>,
    /// Per class: its category's `id`.
    pub category_ids: Vec<i64>,
    /// `boxes[i][k]` is object `k` of image `i` as the file gives it.
    pub boxes: Vec<Vec<CocoBox>>,
}

/// A COCO-format split read into VOC terms.
#[derive(Debug, Clone)]
pub struct CocoSplit {
    pub classes: Vec<String>,
    pub ids: Vec<String>,
    pub annotations: Vec<VocAnnotation>,
    pub source: CocoSource,
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<RawImage>,
    annotations: Vec<RawAnnotation>,
    categories: Vec<RawCategory>,
}

#[derive(Deserialize)]
struct RawImage {
    id: i64,
    file_name: String,
    width: u64,
    height: u64,
}

#[derive(Deserialize)]
struct RawAnnotation {
    /// Only named in messages; any JSON value.
    #[serde(default)]
    id: Option<serde_json::Value>,
    image_id: i64,
    category_id: i64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: i64,
    #[serde(default)]
    area: Option<f64>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: i64,
    name: String,
}

/// Reads the JSON at `path` (size-checked first) into its raw entries; a syntax or type
/// error names the file and the entry (`annotations[3].bbox`).
fn read_raw(path: &Path) -> Result<RawFile> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading COCO file {}", path.display()))?
        .len();
    if size > MAX_JSON_BYTES {
        bail!(
            "COCO file {} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit",
            path.display()
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("reading COCO file {}", path.display()))?;
    let text = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut de = serde_json::Deserializer::from_slice(text);
    let raw: RawFile = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let at = err.path().to_string();
        let inner = err.into_inner();
        let place = if at == "." || at.is_empty() {
            String::new()
        } else {
            format!(" at `{at}`")
        };
        anyhow::anyhow!(
            "COCO file {}: not a valid instances file{place}: {inner}",
            path.display()
        )
    })?;
    de.end()
        .map_err(|err| anyhow::anyhow!("COCO file {}: not valid JSON: {err}", path.display()))?;
    Ok(raw)
}

/// `file_name` as a path inside the image folder: relative, with no `..`.
fn relative_file_name(name: &str) -> Result<PathBuf> {
    if name.is_empty() {
        bail!("`file_name` is empty");
    }
    let path = Path::new(name);
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => bail!(
                "`file_name` \"{}\" leaves the image folder (`..`); it must be a path inside it",
                name.escape_debug()
            ),
            Component::RootDir | Component::Prefix(_) => bail!(
                "`file_name` \"{}\" is absolute; it must be relative to the image folder",
                name.escape_debug()
            ),
        }
    }
    Ok(path.to_path_buf())
}

impl CocoSplit {
    /// Reads and checks the instances file `json`; `images_dir` is the folder its
    /// `file_name`s are relative to. `classes` selects categories by name (in its order);
    /// `None` takes every category in id order. With `check_images`, every image file
    /// must exist (evaluating detection files needs the annotations only).
    pub fn read(
        json: &Path,
        images_dir: &Path,
        classes: Option<&[String]>,
        check_images: bool,
    ) -> Result<Self> {
        let raw = read_raw(json)?;
        let file = json.display();

        // Categories: unique ids and names that pass the name rule.
        let mut by_id: HashMap<i64, usize> = HashMap::with_capacity(raw.categories.len());
        for (k, c) in raw.categories.iter().enumerate() {
            if by_id.insert(c.id, k).is_some() {
                bail!(
                    "COCO file {file}: categories[{k}]: category id {} is used twice",
                    c.id
                );
            }
            check_name(&c.name).with_context(|| {
                format!("COCO file {file}: categories[{k}] (id {}): name", c.id)
            })?;
        }
        let mut order: Vec<usize> = (0..raw.categories.len()).collect();
        order.sort_by_key(|&k| raw.categories[k].id);
        let all_names: Vec<String> = order
            .iter()
            .map(|&k| raw.categories[k].name.clone())
            .collect();
        check_class_list(&all_names).with_context(|| format!("COCO file {file}: categories"))?;
        let (class_names, category_ids): (Vec<String>, Vec<i64>) = match classes {
            None => order
                .iter()
                .map(|&k| (raw.categories[k].name.clone(), raw.categories[k].id))
                .unzip(),
            Some(list) => {
                check_class_list(list).context("class list")?;
                list.iter()
                    .map(|name| {
                        let c = raw
                            .categories
                            .iter()
                            .find(|c| &c.name == name)
                            .with_context(|| {
                                format!(
                                    "COCO file {file}: class `{name}` of the class list is not among its categories ({})",
                                    all_names.join(", ")
                                )
                            })?;
                        Ok((c.name.clone(), c.id))
                    })
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .unzip()
            }
        };
        let class_of: HashMap<i64, usize> = category_ids
            .iter()
            .enumerate()
            .map(|(class, &id)| (id, class))
            .collect();

        // Images: unique ids, bounded sizes, file names inside the folder; id order.
        let mut index_of: HashMap<i64, usize> = HashMap::with_capacity(raw.images.len());
        for (k, img) in raw.images.iter().enumerate() {
            let entry = || format!("COCO file {file}: images[{k}] (id {})", img.id);
            if index_of.insert(img.id, k).is_some() {
                bail!("{}: image id {} is used twice", entry(), img.id);
            }
            if img.id < 0 {
                bail!("{}: the image id must be a non-negative integer", entry());
            }
            for (name, side) in [("width", img.width), ("height", img.height)] {
                if !(1..=MAX_IMAGE_SIDE).contains(&side) {
                    bail!(
                        "{}: {name} {side} is not allowed; use 1..={MAX_IMAGE_SIDE}",
                        entry()
                    );
                }
            }
            relative_file_name(&img.file_name).with_context(entry)?;
        }
        let mut image_order: Vec<usize> = (0..raw.images.len()).collect();
        image_order.sort_by_key(|&k| raw.images[k].id);
        // Position in the data set of raw image k.
        let mut position = vec![0usize; raw.images.len()];
        for (p, &k) in image_order.iter().enumerate() {
            position[k] = p;
        }
        let mut annotations: Vec<VocAnnotation> = image_order
            .iter()
            .map(|&k| {
                let img = &raw.images[k];
                VocAnnotation {
                    id: img.id.to_string(),
                    width: img.width as u32,
                    height: img.height as u32,
                    objects: Vec::new(),
                }
            })
            .collect();
        let mut boxes: Vec<Vec<CocoBox>> = vec![Vec::new(); annotations.len()];

        // Annotations, in file order within each image.
        let mut left_out = 0usize;
        let mut clipped = 0usize;
        let mut clipped_example = None;
        for (k, a) in raw.annotations.iter().enumerate() {
            let entry = || {
                let id =
                    a.id.as_ref()
                        .map(|v| format!("id {v}, "))
                        .unwrap_or_default();
                format!(
                    "COCO file {file}: annotations[{k}] ({id}image_id {}, category_id {})",
                    a.image_id, a.category_id
                )
            };
            let Some(&raw_image) = index_of.get(&a.image_id) else {
                bail!(
                    "{}: image_id {} is not among the images",
                    entry(),
                    a.image_id
                );
            };
            let img = &raw.images[raw_image];
            if !by_id.contains_key(&a.category_id) {
                bail!(
                    "{}: category_id {} is not among the categories",
                    entry(),
                    a.category_id
                );
            }
            let crowd = match a.iscrowd {
                0 => false,
                1 => true,
                other => bail!("{}: iscrowd is {other}, expected 0 or 1", entry()),
            };
            let [x, y, w, h] = a.bbox;
            if !(w > 0.0 && h > 0.0) {
                bail!(
                    "{}: box [{x}, {y}, {w}, {h}] has a zero or negative width or height",
                    entry()
                );
            }
            let (width, height) = (img.width as f64, img.height as f64);
            if !(x < width && y < height && x + w > 0.0 && y + h > 0.0) {
                bail!(
                    "{}: box [{x}, {y}, {w}, {h}] lies outside the {}x{} image",
                    entry(),
                    img.width,
                    img.height
                );
            }
            let area = match a.area {
                None => w * h,
                Some(area) if area.is_finite() && area >= 0.0 => area,
                Some(area) => bail!("{}: area {area} is not a number >= 0", entry()),
            };
            let Some(&class_index) = class_of.get(&a.category_id) else {
                left_out += 1;
                continue;
            };
            // Continuous pixels clipped to the image, then SPEC §3's rule.
            let (x1, y1) = (x.max(0.0), y.max(0.0));
            let (x2, y2) = ((x + w).min(width), (y + h).min(height));
            if (x1, y1, x2, y2) != (x, y, x + w, y + h) {
                clipped += 1;
                clipped_example
                    .get_or_insert_with(|| format!("{} box [{x}, {y}, {w}, {h}]", entry()));
            }
            let p = position[raw_image];
            annotations[p].objects.push(VocObject {
                class_index,
                bbox: [(x1 + 1.0) as f32, (y1 + 1.0) as f32, x2 as f32, y2 as f32],
                difficult: crowd,
                truncated: false,
            });
            boxes[p].push(CocoBox { bbox: a.bbox, area });
        }
        if clipped > 0 {
            tracing::warn!(
                "{clipped} box(es) reach past their image and are clipped to it for training (e.g. {})",
                clipped_example.unwrap_or_default()
            );
        }
        if left_out > 0 {
            tracing::info!(
                "COCO file {file}: {left_out} annotation(s) of categories outside the class list ({}) are left out",
                class_names.join(", ")
            );
        }

        let file_names: Vec<PathBuf> = image_order
            .iter()
            .map(|&k| PathBuf::from(&raw.images[k].file_name))
            .collect();
        if check_images {
            for (p, name) in file_names.iter().enumerate() {
                let path = images_dir.join(name);
                if !path.is_file() {
                    let k = image_order[p];
                    bail!(
                        "COCO file {file}: images[{k}] (id {}): image file {} does not exist",
                        raw.images[k].id,
                        path.display()
                    );
                }
            }
        }
        Ok(Self {
            classes: class_names,
            ids: annotations.iter().map(|a| a.id.clone()).collect(),
            annotations,
            source: CocoSource {
                json: json.to_path_buf(),
                images_dir: images_dir.to_path_buf(),
                file_names,
                image_ids: image_order.iter().map(|&k| raw.images[k].id).collect(),
                category_ids,
                boxes,
            },
        })
    }
}

/// The COCO box `[x, y, w, h]` of a VOC box `(xmin, ymin, xmax, ymax)` (SPEC §3): the
/// inverse of the reading rule above.
pub fn voc_to_coco_box(b: [f64; 4]) -> [f64; 4] {
    [b[0] - 1.0, b[1] - 1.0, b[2] - b[0] + 1.0, b[3] - b[1] + 1.0]
}

/// One image entry of [`instances_json`].
#[derive(Debug, Clone, Serialize)]
pub struct ImageEntry {
    pub id: i64,
    pub file_name: String,
}

/// A COCO instances document of VOC-terms annotations: `images[i]` names `annotations[i]`'s
/// image; classes are categories `1..=K` in order; each object's box by SPEC §3's rule,
/// area `w * h`, `difficult` as `iscrowd: 1`; annotation ids count from 1 in image order.
pub fn instances_json(
    annotations: &[VocAnnotation],
    images: &[ImageEntry],
    classes: &[String],
) -> Result<serde_json::Value> {
    if annotations.len() != images.len() {
        bail!(
            "{} annotations but {} image entries",
            annotations.len(),
            images.len()
        );
    }
    let mut seen = HashSet::new();
    let mut image_list = Vec::with_capacity(images.len());
    let mut annotation_list = Vec::new();
    for (a, img) in annotations.iter().zip(images) {
        if !seen.insert(img.id) {
            bail!("image id {} is used twice", img.id);
        }
        image_list.push(serde_json::json!({
            "id": img.id,
            "file_name": img.file_name,
            "width": a.width,
            "height": a.height,
        }));
        for o in &a.objects {
            let bbox = voc_to_coco_box(o.bbox.map(f64::from));
            annotation_list.push(serde_json::json!({
                "id": annotation_list.len() + 1,
                "image_id": img.id,
                "category_id": o.class_index + 1,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": u8::from(o.difficult),
            }));
        }
    }
    let categories: Vec<serde_json::Value> = classes
        .iter()
        .enumerate()
        .map(|(c, name)| serde_json::json!({"id": c + 1, "name": name}))
        .collect();
    Ok(serde_json::json!({
        "images": image_list,
        "annotations": annotation_list,
        "categories": categories,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_inside_the_folder() {
        assert!(relative_file_name("a/b.jpg").is_ok());
        assert!(relative_file_name("./b.jpg").is_ok());
        assert!(relative_file_name("").is_err());
        let up = format!("{:#}", relative_file_name("a/../../b.jpg").unwrap_err());
        assert!(up.contains("`..`"), "{up}");
        let abs = format!("{:#}", relative_file_name("/etc/passwd").unwrap_err());
        assert!(abs.contains("absolute"), "{abs}");
    }

    #[test]
    fn boxes_convert_both_ways() {
        assert_eq!(
            voc_to_coco_box([12.0, 5.0, 40.0, 30.0]),
            [11.0, 4.0, 29.0, 26.0]
        );
    }
}
