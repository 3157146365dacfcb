//! One split of a data set, whatever its format: the images in order, their annotations in
//! VOC terms (SPEC §3: 1-based inclusive boxes, `difficult` flags) and the class list. The
//! loader, training and evaluation work on this alone; [`Dataset::open`] reads the VOC
//! layout and [`Dataset::open_coco`] a COCO instances file ([`super::coco`]), and
//! [`Dataset::from_config`] picks by `data.format`.
use super::coco::{CocoSource, CocoSplit};
use super::voc::{annotation_path, parse_annotation, read_image_set, read_labels, VOC_CLASSES};
use crate::config::{DataConfig, DataFormat, SplitRole};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// One split of a data set with every annotation parsed.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The VOC-layout root, or the COCO instances file.
    pub root: PathBuf,
    pub split: String,
    pub classes: Vec<String>,
    /// Image ids: VOC's `<id>`, or a COCO image's `id` as a decimal number.
    pub ids: Vec<String>,
    /// `annotations[i]` belongs to `ids[i]`.
    pub annotations: Vec<super::voc::VocAnnotation>,
    /// A COCO-format split's image files and original boxes; `None` for VOC.
    pub coco: Option<CocoSource>,
}

impl Dataset {
    /// A VOC-layout split: the image set `ImageSets/Main/<split>.txt` and all its
    /// annotations. Classes: `classes` when given, else `labels.txt` in `root`, else
    /// [`VOC_CLASSES`]. Images are not touched, so annotations alone are enough
    /// (evaluation).
    pub fn open(root: &Path, split: &str, classes: Option<&[String]>) -> Result<Self> {
        let classes = match classes {
            Some(list) => list.to_vec(),
            None => read_labels(root)?
                .unwrap_or_else(|| VOC_CLASSES.iter().map(|s| s.to_string()).collect()),
        };
        super::voc::check_class_list(&classes)
            .with_context(|| format!("class list of data set {}", root.display()))?;
        let ids = read_image_set(root, split)?;
        let annotations = ids
            .iter()
            .map(|id| parse_annotation(&annotation_path(root, id), id, &classes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            root: root.to_path_buf(),
            split: split.to_string(),
            classes,
            ids,
            annotations,
            coco: None,
        })
    }

    /// A COCO-format split: the instances file `json`, its images under `images_dir`
    /// (each must exist when `check_images`), named `split` in comp4 files. Classes:
    /// `classes` selecting categories by name, else every category in id order.
    pub fn open_coco(
        json: &Path,
        images_dir: &Path,
        split: &str,
        classes: Option<&[String]>,
        check_images: bool,
    ) -> Result<Self> {
        let read = CocoSplit::read(json, images_dir, classes, check_images)?;
        Ok(Self {
            root: json.to_path_buf(),
            split: split.to_string(),
            classes: read.classes,
            ids: read.ids,
            annotations: read.annotations,
            coco: Some(read.source),
        })
    }

    /// The split `role` of the configured data set (`data.format`), with `classes` as in
    /// [`Dataset::open`] / [`Dataset::open_coco`]. A synthetic set read as COCO gets its
    /// COCO files written first if they are missing (the VOC set must exist:
    /// `ensure_synthetic`).
    pub fn from_config(
        data: &DataConfig,
        role: SplitRole,
        classes: Option<&[String]>,
    ) -> Result<Self> {
        let split = data.split_name(role);
        match data.format {
            DataFormat::Voc => Self::open(&data.root, split, classes),
            DataFormat::Coco => {
                if data.synthetic.is_some() {
                    super::synthetic::ensure_coco(&data.root)?;
                }
                Self::open_coco(
                    &data.coco_json(role),
                    &data.coco_images(role),
                    split,
                    classes,
                    true,
                )
                .with_context(|| format!("key `{}`", data.coco_json_key(role)))
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The image file of image `index`: VOC's `JPEGImages/<id>.jpg`, or the COCO entry's
    /// `file_name` under the image folder.
    pub fn image_path(&self, index: usize) -> PathBuf {
        match &self.coco {
            Some(coco) => coco.images_dir.join(&coco.file_names[index]),
            None => self
                .root
                .join("JPEGImages")
                .join(format!("{}.jpg", self.ids[index])),
        }
    }

    /// Where image `index`'s annotation comes from, for messages: its VOC XML file, or
    /// the COCO file and image id.
    pub fn annotation_source(&self, index: usize) -> String {
        match &self.coco {
            Some(coco) => format!(
                "COCO file {} image id {}",
                coco.json.display(),
                coco.image_ids[index]
            ),
            None => annotation_path(&self.root, &self.ids[index])
                .display()
                .to_string(),
        }
    }
}
