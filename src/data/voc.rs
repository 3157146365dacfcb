//! PASCAL VOC reader (SPEC §3): `Annotations/<id>.xml`, `ImageSets/Main/<split>.txt`,
//! `JPEGImages/<id>.jpg`, and the class list (`labels.txt` or the 20 VOC classes).
//!
//! Boxes follow VOC's convention, one rule for every box: `xmin..=xmax` and `ymin..=ymax`
//! are 1-based inclusive pixels, so `xmin == xmax` is a box one pixel wide (annotation
//! tools write these; voc_eval counts them with its `+1`) and is accepted, while
//! `xmax < xmin` or `ymax < ymin` is an inverted box and refused with the file named. A
//! box reaching past the image is clipped to it with a warning; one wholly outside is
//! refused. (Training leaves out boxes with no area at the detector's scale; see
//! `loader::target_boxes`.) Every error names the file.
use crate::fsutil::check_name;
use anyhow::{bail, Context, Result};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The 20 PASCAL VOC classes in the order of the devkit (and of SPEC §3).
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// A data set's own class list, one name per line, in the root folder.
pub const LABELS_FILE: &str = "labels.txt";

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct VocObject {
    /// 0-based index into the data set's class list.
    pub class_index: usize,
    /// xmin, ymin, xmax, ymax exactly as in the XML: 1-based inclusive pixels, after
    /// clipping to the image.
    pub bbox: [f32; 4],
    pub difficult: bool,
    pub truncated: bool,
}

/// One image's annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct VocAnnotation {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<VocObject>,
}

/// One split of a data set (the name from before COCO-format sets; see
/// [`super::dataset::Dataset`], whose [`open`](super::dataset::Dataset::open) reads the VOC
/// layout).
pub type VocDataset = super::dataset::Dataset;

/// `Annotations/<id>.xml` under `root`.
pub fn annotation_path(root: &Path, id: &str) -> PathBuf {
    root.join("Annotations").join(format!("{id}.xml"))
}

/// `ImageSets/Main/<split>.txt` under `root`.
pub fn image_set_path(root: &Path, split: &str) -> PathBuf {
    root.join("ImageSets")
        .join("Main")
        .join(format!("{split}.txt"))
}

/// The class list of `root/labels.txt` (one name per line, blank lines ignored), or None
/// when the file does not exist.
pub fn read_labels(root: &Path) -> Result<Option<Vec<String>>> {
    let path = root.join(LABELS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading class list {}", path.display()))?;
    let text = strip_bom(&text);
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    check_class_list(&classes).with_context(|| format!("class list {}", path.display()))?;
    Ok(Some(classes))
}

/// The text without the UTF-8 byte-order mark some Windows editors put first (it would
/// otherwise become part of the first class name or image id, invisibly).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

pub(crate) fn check_class_list(classes: &[String]) -> Result<()> {
    if classes.is_empty() {
        bail!("the class list is empty");
    }
    let mut seen = HashSet::new();
    for name in classes {
        // Class names name the comp4 files.
        check_name(name).context("class name")?;
        if !seen.insert(name.as_str()) {
            bail!("class `{name}` is listed twice");
        }
    }
    Ok(())
}

/// Image ids of a split: the first token of each non-blank line.
pub fn read_image_set(root: &Path, split: &str) -> Result<Vec<String>> {
    let path = image_set_path(root, split);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading image set {} (split `{split}`)", path.display()))?;
    let text = strip_bom(&text);
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let Some(id) = line.split_whitespace().next() else {
            continue;
        };
        // Image ids name the image, annotation and drawn files.
        check_name(id).with_context(|| {
            format!(
                "image set {} line {}: image id",
                path.display(),
                line_no + 1
            )
        })?;
        if !seen.insert(id.to_string()) {
            bail!(
                "image set {} line {}: image `{id}` is listed twice",
                path.display(),
                line_no + 1
            );
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// Parses one annotation file. Errors name the file and the problem; a box reaching past
/// the image is clipped with a warning.
pub fn parse_annotation(path: &Path, id: &str, classes: &[String]) -> Result<VocAnnotation> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading annotation {}", path.display()))?;
    parse_annotation_str(&text, id, classes)
        .with_context(|| format!("annotation {}", path.display()))
}

/// An `<object>` while its children are being read.
#[derive(Default)]
struct RawObject {
    name: Option<String>,
    difficult: Option<String>,
    truncated: Option<String>,
    bndbox: [Option<String>; 4],
}

const BOX_TAGS: [&str; 4] = ["xmin", "ymin", "xmax", "ymax"];

/// Parses the text of one annotation file (errors without the file name; see
/// [`parse_annotation`]).
pub fn parse_annotation_str(text: &str, id: &str, classes: &[String]) -> Result<VocAnnotation> {
    let mut reader = Reader::from_str(strip_bom(text));
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut width = None;
    let mut height = None;
    let mut raw_objects: Vec<RawObject> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|err| {
            anyhow::anyhow!("malformed XML at byte {}: {err}", reader.error_position())
        })?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if stack.is_empty() && name != "annotation" {
                    bail!("the root element is <{name}>, expected <annotation>");
                }
                if stack.len() == 1 && name == "object" {
                    raw_objects.push(RawObject::default());
                }
                stack.push(name);
            }
            Event::Empty(empty) if stack.is_empty() => {
                let name = String::from_utf8_lossy(empty.local_name().as_ref()).into_owned();
                bail!("the root element is <{name}/>, expected <annotation>");
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(content) => {
                let value = content
                    .unescape()
                    .map_err(|err| {
                        anyhow::anyhow!("malformed XML at byte {}: {err}", reader.buffer_position())
                    })?
                    .into_owned();
                let path: Vec<&str> = stack.iter().map(String::as_str).collect();
                match path.as_slice() {
                    ["annotation", "size", "width"] => width = Some(value),
                    ["annotation", "size", "height"] => height = Some(value),
                    ["annotation", "object", field] => {
                        // The last <object> is the one being read (Start pushed it).
                        if let Some(obj) = raw_objects.last_mut() {
                            match *field {
                                "name" => obj.name = Some(value),
                                "difficult" => obj.difficult = Some(value),
                                "truncated" => obj.truncated = Some(value),
                                _ => {}
                            }
                        }
                    }
                    ["annotation", "object", "bndbox", coord] => {
                        if let (Some(obj), Some(k)) = (
                            raw_objects.last_mut(),
                            BOX_TAGS.iter().position(|t| t == coord),
                        ) {
                            obj.bndbox[k] = Some(value);
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        bail!("malformed XML: the file ends inside <{open}>");
    }
    let width = parse_size(width.as_deref(), "width")?;
    let height = parse_size(height.as_deref(), "height")?;
    let objects = raw_objects
        .into_iter()
        .enumerate()
        .map(|(k, raw)| {
            finish_object(raw, classes, width, height)
                .with_context(|| format!("object {} of image `{id}`", k + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VocAnnotation {
        id: id.to_string(),
        width,
        height,
        objects,
    })
}

fn parse_size(value: Option<&str>, tag: &str) -> Result<u32> {
    let value = value.with_context(|| format!("<size><{tag}> is missing"))?;
    match value.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => bail!("<size><{tag}> is `{value}`, not a positive integer"),
    }
}

fn parse_flag(value: Option<&str>, tag: &str) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => bail!("<{tag}> is `{other}`, expected 0 or 1"),
    }
}

fn finish_object(raw: RawObject, classes: &[String], width: u32, height: u32) -> Result<VocObject> {
    let name = raw.name.context("<name> is missing")?;
    let name = name.trim();
    let class_index = classes.iter().position(|c| c == name).with_context(|| {
        format!(
            "class `{name}` is not in the class list ({})",
            classes.join(", ")
        )
    })?;
    let mut bbox = [0f32; 4];
    for (k, tag) in BOX_TAGS.iter().enumerate() {
        let value = raw.bndbox[k]
            .as_deref()
            .with_context(|| format!("<bndbox><{tag}> is missing"))?;
        bbox[k] = match value.trim().parse::<f32>() {
            Ok(v) if v.is_finite() => v,
            _ => bail!("<bndbox><{tag}> is `{value}`, not a number"),
        };
    }
    let [xmin, ymin, xmax, ymax] = bbox;
    // VOC's inclusive pixels: xmin == xmax is one pixel wide; only a max below its min is
    // wrong.
    if xmax < xmin || ymax < ymin {
        bail!("degenerate box: xmin {xmin} ymin {ymin} xmax {xmax} ymax {ymax} (a max is below its min; boxes are inclusive pixels, so xmin == xmax is one pixel wide and allowed)");
    }
    let (w, h) = (width as f32, height as f32);
    let clipped = [xmin.max(1.0), ymin.max(1.0), xmax.min(w), ymax.min(h)];
    if clipped[2] < clipped[0] || clipped[3] < clipped[1] {
        bail!("box [{xmin}, {ymin}, {xmax}, {ymax}] lies outside the {width}x{height} image");
    }
    if clipped != bbox {
        tracing::warn!(
            "class `{name}`: box [{xmin}, {ymin}, {xmax}, {ymax}] reaches past the {width}x{height} image; clipped to [{}, {}, {}, {}]",
            clipped[0],
            clipped[1],
            clipped[2],
            clipped[3]
        );
    }
    Ok(VocObject {
        class_index,
        bbox: clipped,
        difficult: parse_flag(raw.difficult.as_deref(), "difficult")?,
        truncated: parse_flag(raw.truncated.as_deref(), "truncated")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["cat".into(), "dog".into()]
    }

    fn doc(objects: &str) -> String {
        format!(
            "<annotation><filename>a.jpg</filename><size><width>100</width><height>50</height><depth>3</depth></size>{objects}</annotation>"
        )
    }

    fn object(name: &str, b: [&str; 4], difficult: &str) -> String {
        format!(
            "<object><name>{name}</name><difficult>{difficult}</difficult><truncated>0</truncated>\
             <part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>\
             <bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
            b[0], b[1], b[2], b[3]
        )
    }

    #[test]
    fn parses_objects_and_ignores_parts() {
        let text = doc(&(object("dog", ["10", "5", "40", "30"], "1")
            + &object("cat", ["1", "1", "100", "50"], "0")));
        let ann = parse_annotation_str(&text, "x", &classes()).unwrap();
        assert_eq!((ann.width, ann.height), (100, 50));
        assert_eq!(ann.objects.len(), 2);
        assert_eq!(
            ann.objects[0],
            VocObject {
                class_index: 1,
                bbox: [10.0, 5.0, 40.0, 30.0],
                difficult: true,
                truncated: false
            }
        );
        assert_eq!(ann.objects[1].class_index, 0);
    }

    #[test]
    fn one_pixel_boxes_are_accepted() {
        // VOC's inclusive convention: xmin == xmax is one pixel wide.
        let text = doc(&object("cat", ["19", "5", "19", "30"], "0"));
        let ann = parse_annotation_str(&text, "x", &classes()).unwrap();
        assert_eq!(ann.objects[0].bbox, [19.0, 5.0, 19.0, 30.0]);
        let text = doc(&object("cat", ["3", "7", "3", "7"], "0"));
        assert!(parse_annotation_str(&text, "x", &classes()).is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LABELS_FILE), "\u{feff}cat\ndog\n").unwrap();
        assert_eq!(read_labels(dir.path()).unwrap().unwrap(), classes());
        let set = image_set_path(dir.path(), "train");
        std::fs::create_dir_all(set.parent().unwrap()).unwrap();
        std::fs::write(&set, "\u{feff}000001\n000002\n").unwrap();
        assert_eq!(
            read_image_set(dir.path(), "train").unwrap(),
            ["000001", "000002"]
        );
        let text = format!("\u{feff}{}", doc(&object("cat", ["1", "1", "5", "5"], "0")));
        assert!(parse_annotation_str(&text, "x", &classes()).is_ok());
    }

    #[test]
    fn clips_boxes_past_the_image() {
        let text = doc(&object("cat", ["-3", "0", "120", "50"], "0"));
        let ann = parse_annotation_str(&text, "x", &classes()).unwrap();
        assert_eq!(ann.objects[0].bbox, [1.0, 1.0, 100.0, 50.0]);
    }

    #[test]
    fn reports_problems() {
        let cases = [
            (
                doc(&object("cow", ["1", "1", "5", "5"], "0")),
                "class `cow`",
            ),
            (
                doc(&object("cat", ["10", "1", "5", "5"], "0")),
                "degenerate box",
            ),
            (
                doc(&object("cat", ["1", "9", "5", "8"], "0")),
                "degenerate box",
            ),
            (doc(&object("cat", ["1", "1", "x", "5"], "0")), "<xmax>"),
            (
                doc(&object("cat", ["150", "1", "160", "5"], "0")),
                "outside",
            ),
            (
                doc(&object("cat", ["1", "1", "5", "5"], "2")),
                "<difficult>",
            ),
            (
                "<annotation><size><width>3</width></size></annotation>".to_string(),
                "<height>",
            ),
            (
                "<annotation><size><width>3</width>".to_string(),
                "ends inside",
            ),
            (
                "<annotation><size></width></annotation>".to_string(),
                "malformed XML",
            ),
            ("<notes/>".to_string(), "expected <annotation>"),
        ];
        for (text, needle) in cases {
            let err = format!(
                "{:#}",
                parse_annotation_str(&text, "x", &classes()).unwrap_err()
            );
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
