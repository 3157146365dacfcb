//! VOC detection result files (SPEC §3): `comp4_det_<split>_<class>.txt`, one line per
//! detection, `<image_id> <score> <xmin> <ymin> <xmax> <ymax>` in 1-based pixels.
use crate::fsutil::write_atomic;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One detection of one class. Values are f64 like numpy's, so scoring what a comp4 file
/// says gives py-faster-rcnn's result even for an IoU that lands exactly on 0.5.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub image_id: String,
    pub score: f64,
    /// xmin, ymin, xmax, ymax in the annotation's 1-based pixel coordinates.
    pub bbox: [f64; 4],
}

/// `dir/comp4_det_<split>_<class>.txt`.
pub fn comp4_path(dir: &Path, split: &str, class: &str) -> PathBuf {
    dir.join(format!("comp4_det_{split}_{class}.txt"))
}

fn check_lengths(classes: &[String], per_class: usize) -> Result<()> {
    if classes.len() != per_class {
        bail!("{} classes but detections for {}", classes.len(), per_class);
    }
    Ok(())
}

/// Writes one file per class (empty when it has no detections), each atomically, with
/// py-faster-rcnn's precision: score to 3 decimals, coordinates to 1.
pub fn write_comp4(
    dir: &Path,
    split: &str,
    classes: &[String],
    per_class: &[Vec<Detection>],
) -> Result<()> {
    check_lengths(classes, per_class.len())?;
    for (class, detections) in classes.iter().zip(per_class) {
        let mut text = String::new();
        for d in detections {
            let [x1, y1, x2, y2] = d.bbox;
            let _ = writeln!(
                text,
                "{} {:.3} {:.1} {:.1} {:.1} {:.1}",
                d.image_id, d.score, x1, y1, x2, y2
            );
        }
        write_atomic(&comp4_path(dir, split, class), text.as_bytes())?;
    }
    Ok(())
}

/// Reads every class's file; a missing file means no detections for that class. Errors
/// name the file and line.
pub fn read_comp4(dir: &Path, split: &str, classes: &[String]) -> Result<Vec<Vec<Detection>>> {
    classes
        .iter()
        .map(|class| {
            let path = comp4_path(dir, split, class);
            if !path.exists() {
                return Ok(Vec::new());
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading detections {}", path.display()))?;
            crate::data::voc::strip_bom(&text)
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(n, line)| {
                    parse_line(line)
                        .with_context(|| format!("detections {} line {}", path.display(), n + 1))
                })
                .collect()
        })
        .collect()
}

fn parse_line(line: &str) -> Result<Detection> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some((image_id, numbers)) = fields.split_first() else {
        bail!("the line is empty")
    };
    if numbers.len() != 5 {
        bail!(
            "expected `<image_id> <score> <xmin> <ymin> <xmax> <ymax>`, got {} fields",
            fields.len()
        );
    }
    let mut values = [0f64; 5];
    for (value, text) in values.iter_mut().zip(numbers) {
        *value = match text.parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => bail!("`{text}` is not a finite number"),
        };
    }
    let [score, x1, y1, x2, y2] = values;
    Ok(Detection {
        image_id: image_id.to_string(),
        score,
        bbox: [x1, y1, x2, y2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_names_the_file_and_line_of_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let det = Detection {
            image_id: "000001".into(),
            score: 0.5,
            bbox: [1.0, 2.0, 30.0, 40.0],
        };
        write_comp4(dir.path(), "test", &classes, &[vec![det.clone()], vec![]]).unwrap();
        let read = read_comp4(dir.path(), "test", &classes).unwrap();
        assert_eq!(read, vec![vec![det], vec![]]);
        // A byte-order mark and Windows line ends are tolerated.
        let dog = comp4_path(dir.path(), "test", "dog");
        std::fs::write(&dog, "\u{feff}000002 0.9 1 1 5 5\r\n\r\n").unwrap();
        let read = read_comp4(dir.path(), "test", &classes).unwrap();
        assert_eq!(read[1][0].image_id, "000002");
        for bad in [
            "000002 0.9 1 1 5\n",
            "000002 nan 1 1 5 5\n",
            "x 1 1 1 1 1e999\n",
        ] {
            std::fs::write(&dog, format!("000001 0.5 1 1 2 2\n{bad}")).unwrap();
            let err = format!(
                "{:#}",
                read_comp4(dir.path(), "test", &classes).unwrap_err()
            );
            assert!(
                err.contains(&dog.display().to_string()) && err.contains("line 2"),
                "{err}"
            );
        }
    }
}
