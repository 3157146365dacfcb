//! The synthetic data set's settings (`data.synthetic` in an experiment config).
//!
//! It lives with the configuration (and the shape classes with it) so that `config` needs
//! nothing from the data module it configures.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One shape class. The first seven are the default set; the others are look-alikes of
/// them for the harder benchmark preset (ellipse ~ circle, rounded square ~ square,
/// pentagon ~ hexagon ~ octagon, six- ~ five-pointed star, thick ring ~ ring, thin cross ~
/// cross).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    /// Five-pointed star.
    Star,
    /// Plus sign with arms a third of the frame wide.
    Cross,
    /// Disc with a hole of 0.55 times its radius.
    Ring,
    Heart,
    /// Axis ratio 0.6.
    Ellipse,
    /// Corner radius 0.4 of the half-side.
    RoundedSquare,
    Pentagon,
    Hexagon,
    Octagon,
    /// Six-pointed star.
    Star6,
    /// Disc with a hole of 0.35 times its radius.
    ThickRing,
    /// Plus sign with arms under a fifth of the frame wide.
    ThinCross,
}

/// The default data set's shapes, in `labels.txt` order.
pub const DEFAULT_SHAPES: [Shape; 7] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Cross,
    Shape::Ring,
    Shape::Heart,
];

/// Every shape, for tests and listings.
pub const ALL_SHAPES: [Shape; 15] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Cross,
    Shape::Ring,
    Shape::Heart,
    Shape::Ellipse,
    Shape::RoundedSquare,
    Shape::Pentagon,
    Shape::Hexagon,
    Shape::Octagon,
    Shape::Star6,
    Shape::ThickRing,
    Shape::ThinCross,
];

impl Shape {
    /// The class name written to `labels.txt` and the annotations.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Heart => "heart",
            Shape::Ellipse => "ellipse",
            Shape::RoundedSquare => "rounded_square",
            Shape::Pentagon => "pentagon",
            Shape::Hexagon => "hexagon",
            Shape::Octagon => "octagon",
            Shape::Star6 => "star6",
            Shape::ThickRing => "thick_ring",
            Shape::ThinCross => "thin_cross",
        }
    }
}

/// The synthetic data set (SPEC §4). Every knob's default reproduces the original
/// generator byte for byte; ranges are `[low, high]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub train: usize,
    pub test: usize,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// The shape classes, in `labels.txt` order (their names are the class names).
    pub shapes: Vec<Shape>,
    /// Objects attempted per image (fewer when they do not fit), inclusive.
    pub objects: [u32; 2],
    /// Object side in pixels, log-uniform (the top is capped at 0.6 of the image's short
    /// side); besides these, 6% of objects are tiny (8-13 px, difficult).
    pub object_size: [f32; 2],
    /// Distractor strokes (segments, arcs, speckles) per image, inclusive.
    pub distractors: [u32; 2],
    /// Pieces of shapes of the set (cut by a line; no object) per image, inclusive.
    pub part_distractors: [u32; 2],
    /// Gaussian blur sigma in pixels, uniform; `[0, 0]`: no blur.
    pub blur: [f32; 2],
    /// Sensor noise amplitude (sum of two uniforms, in 0-255 units), uniform.
    pub noise: [f32; 2],
    /// Least RGB distance between an object's colour and the mean colour under it.
    pub min_contrast: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train: 400,
            test: 100,
            seed: 0,
            width: 320,
            height: 240,
            shapes: DEFAULT_SHAPES.to_vec(),
            objects: [1, 4],
            object_size: [28.0, 100.0],
            distractors: [1, 3],
            part_distractors: [0, 0],
            blur: [0.0, 0.0],
            noise: [2.0, 10.0],
            min_contrast: 110.0,
        }
    }
}

impl SyntheticConfig {
    /// Value checks (keys relative to `data.synthetic`).
    pub fn validate(&self) -> Result<()> {
        let key = "data.synthetic";
        let (w, h) = (self.width, self.height);
        if !(64..=4096).contains(&w) || !(64..=4096).contains(&h) {
            bail!("keys `{key}.width`/`{key}.height`: image size {w}x{h} is not allowed; each side must be 64..=4096");
        }
        if self.shapes.is_empty() {
            bail!("key `{key}.shapes`: the shape list is empty");
        }
        for (i, s) in self.shapes.iter().enumerate() {
            if self.shapes[..i].contains(s) {
                bail!("key `{key}.shapes`: {} is listed twice", s.name());
            }
        }
        let ordered = |name: &str, [lo, hi]: [u32; 2], max: u32| -> Result<()> {
            if lo > hi || hi > max {
                bail!("key `{key}.{name}`: [{lo}, {hi}] is not allowed; need low <= high <= {max}");
            }
            Ok(())
        };
        ordered("objects", self.objects, 64)?;
        ordered("distractors", self.distractors, 64)?;
        ordered("part_distractors", self.part_distractors, 64)?;
        let [lo, hi] = self.object_size;
        let cap = 0.6 * w.min(h) as f32;
        if !(lo >= 4.0 && lo < hi && lo < cap) {
            bail!("key `{key}.object_size`: [{lo}, {hi}] is not allowed; need 4 <= low < high, and low under 0.6 of the image's short side ({cap})");
        }
        for (name, [lo, hi], max) in [("blur", self.blur, 10.0), ("noise", self.noise, 100.0)] {
            if !(lo >= 0.0 && lo <= hi && hi <= max) {
                bail!("key `{key}.{name}`: [{lo}, {hi}] is not allowed; need 0 <= low <= high <= {max}");
            }
        }
        if !(0.0..=400.0).contains(&self.min_contrast) {
            bail!(
                "key `{key}.min_contrast`: {} is not allowed; use 0..=400",
                self.min_contrast
            );
        }
        Ok(())
    }
}
